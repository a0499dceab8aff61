"""System check for the spool's and journal's directory (registered from ``checks.py``).

* ``fluxgate.E009`` the spool directory (``SPOOL_DIR``, or the site's default) or its
  ``journal`` folder is owned by another user, or other users can write to it: they
  could delete events, or plant lines (which the MAC check refuses, but the directory
  must be the site's own).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.checks import Error, Tags, register


@register(Tags.compatibility)
def check_spool_dir(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    from django.conf import settings

    from .recording import private

    if not isinstance(getattr(settings, "FLUXGATE", {}), Mapping):
        return []  # (fluxgate.E001)
    directory = private.configured_dir()
    errors = []
    for path in (directory, directory / "journal"):
        problem = private.unsafe_dir(path)
        if problem:
            errors.append(
                Error(
                    f"FluxGate's spool directory {path} {problem}.",
                    hint=(
                        "Give FLUXGATE['SPOOL_DIR'] a directory of the site's own user with "
                        "mode 0700 (or leave it unset: FluxGate then creates one)."
                    ),
                    obj="settings.FLUXGATE",
                    id="fluxgate.E009",
                )
            )
    return errors
