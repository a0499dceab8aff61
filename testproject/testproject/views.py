"""Two demo views that call LLMs through FluxGate-tracked SDK clients.

The clients are built once per process from ``FLUXGATE["PROVIDERS"]`` (``track_openai()``
with no argument does that) and rebuilt if the setting changes. The middleware attributes
each call to the logged-in user, their team and the request; the views name the feature.

A call FluxGate refuses before sending it (``CallRefused``: nothing was spent) is answered
as such: a budget used up is a 402 with its limit and spend, the budget store down a 503
with ``Retry-After``, any other refusal a 429.

GET is used so the views can be tried from a browser: ``/chat/?q=Hello``.
"""

from __future__ import annotations

import functools
from typing import Any

import anthropic
import openai
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from fluxgate_django import (
    BudgetExceeded,
    BudgetStoreUnavailable,
    CallRefused,
    track_anthropic,
    track_openai,
    tracking_context,
)

CHAT_MODEL = "gpt-4o-mini"
SUMMARY_MODEL = "claude-haiku-4-5"


# Typed Any: track_*() add with_context() to the client, which the SDK types do not declare.
@functools.cache
def openai_client() -> Any:
    return track_openai()


@functools.cache
def anthropic_client() -> Any:
    return track_anthropic()


@receiver(setting_changed)
def _forget_clients(*, setting: str, **kwargs: Any) -> None:
    if setting == "FLUXGATE":
        openai_client.cache_clear()
        anthropic_client.cache_clear()


@require_GET
def chat(request: HttpRequest) -> JsonResponse:
    """One chat turn with OpenAI: ``/chat/?q=...``."""
    question = request.GET.get("q") or "Say hello in five words."
    try:
        client = openai_client().with_context(feature="chat")
        response = client.chat.completions.create(
            model=CHAT_MODEL, messages=[{"role": "user", "content": question}]
        )
    except CallRefused as exc:
        return _refused(exc)
    except openai.OpenAIError as exc:
        return _provider_error(exc)
    return _answer(response.choices[0].message.content or "", response.model, response)


@require_GET
def summarize(request: HttpRequest) -> JsonResponse:
    """A one-paragraph summary with Anthropic: ``/summarize/?text=...``."""
    text = request.GET.get("text") or "FluxGate records every LLM call with its cost."
    try:
        with tracking_context(feature="summarize", step="summary"):
            message = anthropic_client().messages.create(
                model=SUMMARY_MODEL,
                max_tokens=300,
                system="Summarise the user's text in one paragraph.",
                messages=[{"role": "user", "content": text}],
            )
    except CallRefused as exc:
        return _refused(exc)
    except anthropic.AnthropicError as exc:
        return _provider_error(exc)
    reply = "".join(block.text for block in message.content if block.type == "text")
    return _answer(reply, message.model, message)


def _answer(reply: str, model: str, response: Any) -> JsonResponse:
    tracked = response.fluxgate
    return JsonResponse(
        {
            "reply": reply,
            "model": model,
            "fluxgate": {
                "status": str(tracked.status),
                "cost_usd": None if tracked.cost is None else str(tracked.cost),
                "tracking_id": str(tracked.tracking_id),
            },
        }
    )


def _refused(exc: CallRefused) -> JsonResponse:
    """FluxGate refused the call before sending it (a ``BUDGET_EXCEEDED`` event is
    recorded for a budget refusal); nothing reached the provider."""
    if isinstance(exc, BudgetExceeded):
        # 402 Payment Required: the team's budget for this window is used up.
        return JsonResponse(
            {
                "error": "budget_exceeded",
                "detail": str(exc),
                "limit_usd": None if exc.limit is None else str(exc.limit),
                "spent_usd": None if exc.spent is None else str(exc.spent),
                "until": exc.window[1].isoformat() if exc.window else None,
            },
            status=402,
        )
    if isinstance(exc, BudgetStoreUnavailable):
        # Budgets fail closed (BUDGET_FAIL_OPEN=False): try again shortly.
        response = JsonResponse({"error": "budget_unavailable", "detail": str(exc)}, status=503)
        response["Retry-After"] = "30"
        return response
    return JsonResponse({"error": "refused", "detail": str(exc)}, status=429)


def _provider_error(exc: Exception) -> JsonResponse:
    # The failed call is recorded as an ERROR event; the client gets a 502.
    return JsonResponse({"error": f"{type(exc).__name__}: {exc}"}, status=502)
