"""Small helpers shared by the pricing and recording tests."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.test import override_settings

#: A minimal chat request.
MSGS = [{"role": "user", "content": "hi"}]


def fluxgate_overrides(**changes: Any) -> override_settings:
    """``override_settings(FLUXGATE=...)`` with ``changes`` merged onto the FLUXGATE in force.

    Use it as a context manager (the current settings are read when it is called).
    Entering and leaving it reloads FluxGate's settings, which also resets the price book
    and replaces the recorder (the old one is flushed and closed).
    """
    return override_settings(FLUXGATE={**settings.FLUXGATE, **changes})
