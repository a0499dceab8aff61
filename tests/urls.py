from django.contrib import admin
from django.urls import include, path

from tests import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("fluxgate/", include("fluxgate_django.urls")),
    # middleware tests
    path("ctx/echo/", views.echo, name="echo"),
    path("ctx/aecho/", views.aecho, name="aecho"),
    path("ctx/boom/", views.boom, name="boom"),
    path("ctx/chat/", views.chat, name="chat"),
    path("ctx/achat/", views.achat, name="achat"),
    path("ctx/stream/", views.stream, name="stream"),
    path("ctx/astream/", views.astream, name="astream"),
    # LLMService in async views, one event loop per request (tests/test_service_loops.py)
    path("svc/acomplete/", views.service_acomplete, name="svc_acomplete"),
    path("svc/astream/", views.service_astream, name="svc_astream"),
    # Celery context propagation (tests/test_celery.py)
    path("celery/enqueue/", views.enqueue_llm_task, name="enqueue_llm_task"),
]
