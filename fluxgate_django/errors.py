"""FluxGate's own failures never reach the caller's LLM call.

Only the provider call sits in a try/re-raise; everything FluxGate does around it runs
inside :func:`capture_internal_exceptions`, which logs and swallows the error — or
re-raises it when ``FLUXGATE["RAISE_ERRORS"]`` is on, so the test suite sees bugs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from .conf import fluxgate_settings

logger = logging.getLogger("fluxgate")


@contextlib.contextmanager
def capture_internal_exceptions(what: str = "tracking") -> Iterator[None]:
    try:
        yield
    except Exception:
        try:
            raise_errors = fluxgate_settings.RAISE_ERRORS
        except Exception:
            raise_errors = False
        if raise_errors:
            raise
        logger.exception("FluxGate internal error during %s (the LLM call is unaffected)", what)
