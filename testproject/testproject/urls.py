"""URLs of the test project: the admin and two demo views."""

from django.contrib import admin
from django.urls import path

from . import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("chat/", views.chat, name="chat"),
    path("summarize/", views.summarize, name="summarize"),
]
