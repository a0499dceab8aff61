from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.db import models


class UserManager(BaseUserManager["User"]):
    def create_user(self, handle: str, password: str | None = None, **extra: Any) -> User:
        user = self.model(handle=handle, **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_superuser(self, handle: str, password: str | None = None, **extra: Any) -> User:
        extra.update(is_staff=True, is_superuser=True)
        return self.create_user(handle, password, **extra)


class User(AbstractBaseUser, PermissionsMixin):
    """No ``email`` field at all (and no EMAIL_FIELD)."""

    handle = models.CharField(max_length=40, unique=True)
    display_name = models.CharField(max_length=80)
    is_staff = models.BooleanField(default=False)
    is_active = models.BooleanField(default=True)

    USERNAME_FIELD = "handle"
    REQUIRED_FIELDS = ["display_name"]

    objects = UserManager()
