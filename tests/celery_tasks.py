"""Tasks the test workers run: a tracked LLM call inside a task (context propagation,
fail-open). The OpenAI client is built from ``FLUXGATE["PROVIDERS"]["openai"]``, which
tests/settings_celery.py points at the tests' fake provider."""

from __future__ import annotations

import contextlib
import logging
from typing import Any
from unittest import mock

from celery import shared_task


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@shared_task(name="tests.ask_llm")
def ask_llm(feature: str | None = None, break_recording: bool = False) -> dict[str, Any]:
    """One tracked chat completion; returns what the caller saw and the context in force.

    ``feature``: the task's own ``tracking_context(feature=...)`` (overrides the
    enqueuer's). ``break_recording``: the recorder raises (a FluxGate bug), with
    ``RAISE_ERRORS`` off as in production.
    """
    import openai
    from django.conf import settings
    from django.test import override_settings

    from fluxgate_django import current_context, track_openai, tracking_context
    from fluxgate_django.conf import fluxgate_settings
    from fluxgate_django.recording import get_recorder

    errors = _Collect()
    fluxgate_logger = logging.getLogger("fluxgate")
    fluxgate_logger.addHandler(errors)
    with contextlib.ExitStack() as stack:
        if break_recording:
            stack.enter_context(
                override_settings(FLUXGATE={**settings.FLUXGATE, "RAISE_ERRORS": False})
            )
            stack.enter_context(
                mock.patch.object(
                    get_recorder(), "record", side_effect=RuntimeError("recorder bug in worker")
                )
            )
        if feature:
            stack.enter_context(tracking_context(feature=feature))
        options = {k: v for k, v in fluxgate_settings.PROVIDERS["openai"].items() if v is not None}
        client = track_openai(openai.OpenAI(max_retries=0, **options))
        ctx = current_context()
        response = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi from a task"}]
        )
    fluxgate_logger.removeHandler(errors)
    user = ctx.user
    return {
        "content": response.choices[0].message.content,
        "status": str(response.fluxgate.status),
        "tracking_id": str(response.fluxgate.tracking_id),
        "context": {
            "feature": ctx.feature,
            "user": user if isinstance(user, (dict, str, int, type(None))) else str(user),
            "team": ctx.team if isinstance(ctx.team, (str, int, type(None))) else str(ctx.team),
            "request_id": ctx.request_id,
            "session_id": ctx.session_id,
            "metadata": dict(ctx.metadata),
        },
        "errors": errors.messages,
    }
