"""Test helpers for FluxGate: a loopback fake LLM provider (pure standard library).

Importing this package needs neither Django settings nor the LLM SDKs::

    from fluxgate_django.testing import FakeProvider, FakeReply

The names are loaded lazily: the fake provider package (``fake_provider/``; serve it by hand
with ``python -m fluxgate_django.testing.fake_provider``) is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .fake_provider import DEFAULT_TEXT, FakeProvider, FakeReply, FakeRequest

__all__ = ["DEFAULT_TEXT", "FakeProvider", "FakeReply", "FakeRequest"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import fake_provider

        return getattr(fake_provider, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
