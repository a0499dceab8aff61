"""URLs of the test project: the admin, FluxGate's API and two demo views."""

from django.contrib import admin
from django.urls import include, path

from . import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("fluxgate/", include("fluxgate_django.urls")),
    path("chat/", views.chat, name="chat"),
    path("summarize/", views.summarize, name="summarize"),
]
