"""The demo's second part: seed 000's four routed tasks through ``LLMService``.

summarize → OpenAI, code-review → Anthropic, chat → Gemini (when google-genai is
installed; else OpenAI), translation → an OpenAI-compatible endpoint named "openrouter";
plus a fallback (the first provider answers 503, the next model serves) and an A/B test
(``ab-test-gpt`` vs ``ab-test-claude``), all against the fake provider.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from django.conf import settings
from django.test.utils import override_settings

from .. import LLMService, tracking_context
from ..service import AllProvidersFailed
from ..testing import FakeReply

TASKS = {
    "summarize": "Summarise this release note for the changelog: ...",
    "code-review": "Review this diff for bugs: def add(a, b): return a - b",
    "chat": "How do I reset my password?",
    "translation": "Translate to French: Your order has shipped.",
}


def service_settings(base_url: str) -> dict[str, Any]:
    """The site's FLUXGATE with providers pointed at the fake and seed 000's routes."""
    has_gemini = importlib.util.find_spec("google.genai") is not None
    chat_model = "gemini/gemini-2.5-flash" if has_gemini else "openai/gpt-4o"
    return {
        **getattr(settings, "FLUXGATE", {}),
        "PROVIDERS": {
            "openai": {"api_key": "sk-fluxgate-demo", "base_url": f"{base_url}/v1"},
            "anthropic": {"api_key": "sk-ant-fluxgate-demo", "base_url": base_url},
            "gemini": {"api_key": "fluxgate-demo", "base_url": base_url},
            "openrouter": {"type": "openai", "api_key": "demo", "base_url": f"{base_url}/v1"},
        },
        "ROUTES": {
            "summarize": {"models": ["openai/gpt-4o-mini", "anthropic/claude-haiku-4-5"]},
            "code-review": {"models": ["anthropic/claude-sonnet-4-6", "openai/gpt-4o"]},
            "chat": {"models": [chat_model, "openai/gpt-4o-mini"]},
            "translation": {"models": ["openrouter/mistralai/mistral-small", "openai/gpt-4o-mini"]},
        },
        "RESPONSE_CACHE": {"alias": "default", "ttl": 0},
    }


def run_service_demo(base_url: str, fake: Any, users: list[Any], rounds: int) -> int:
    """Routed calls, a fallback and an A/B test; returns how many calls were made."""
    made = 0
    with override_settings(FLUXGATE=service_settings(base_url)):
        service = LLMService()
        for i in range(rounds):
            user = users[i % len(users)]
            for route, prompt in TASKS.items():
                if fake is not None and route == "summarize" and i == 0:
                    fake.enqueue(FakeReply(status=503))  # OpenAI is down: Anthropic serves
                with tracking_context(user=user):
                    try:
                        service.complete(prompt, route=route, feature=route, max_tokens=300)
                    except AllProvidersFailed:
                        pass
                made += 1
            # Seed 000's A/B test: the same feature on two models, compared in the report.
            arm, model = (
                ("ab-test-gpt", "openai/gpt-4o-mini")
                if i % 2 == 0
                else ("ab-test-claude", "anthropic/claude-haiku-4-5")
            )
            with tracking_context(user=user):
                service.complete(TASKS["summarize"], model=model, feature=arm, max_tokens=200)
            made += 1
    return made
