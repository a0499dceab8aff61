"""URLs of the test project: the admin, FluxGate's API and two demo views; ``/`` goes to
the admin."""

from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from . import views

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="admin:index", permanent=False), name="home"),
    path("admin/", admin.site.urls),
    path("fluxgate/", include("fluxgate_django.urls")),
    path("chat/", views.chat, name="chat"),
    path("summarize/", views.summarize, name="summarize"),
]
