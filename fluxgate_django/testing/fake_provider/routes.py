"""URL routing: which endpoint, and which provider's dialect, a request addresses."""

from __future__ import annotations

import re
from typing import NamedTuple

_OPENAI_ROUTES = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/responses": "responses",
    "/v1/embeddings": "embeddings",
}
_ANTHROPIC_ROUTES = {
    "/v1/messages": "messages",
    "/v1/messages/count_tokens": "count_tokens",
}
_ROUTES = {**_OPENAI_ROUTES, **_ANTHROPIC_ROUTES}
#: Gemini API: ``POST /v1beta/models/{model}:{method}`` (also ``v1``, ``v1alpha``, tuned models).
_GEMINI_PATH = re.compile(
    r"^/v1(?:beta|alpha)?/(?:models|tunedModels)/(?P<model>[^/:]+):(?P<method>[A-Za-z]+)$"
)
_GEMINI_ROUTES = {
    "generateContent": "gemini",
    "streamGenerateContent": "gemini_stream",
    "countTokens": "gemini_count_tokens",
}
_HEALTH_PATHS = frozenset({"/health", "/healthz", "/v1/health"})


class _Route(NamedTuple):
    """Where a request goes."""

    #: ``chat``, ``completions``, ``responses``, ``embeddings``, ``messages``,
    #: ``count_tokens``, ``gemini``, ``gemini_stream``, ``gemini_count_tokens``; or None.
    name: str | None
    #: Whether the path is a Gemini ``models/{model}:{method}`` path.
    gemini: bool
    #: The model named in a Gemini path.
    path_model: str | None
    #: Errors are answered in Google's format.
    google: bool
    #: Errors are answered in Anthropic's format (else OpenAI's).
    anthropic: bool


def _resolve(method: str, raw_path: str, headers: dict[str, str]) -> _Route:
    """Route ``method raw_path``; ``headers`` (lowercased keys) pick the error dialect."""
    path = raw_path
    if path not in _ROUTES and "/v1" + path in _ROUTES:
        path = "/v1" + path
    gemini = _GEMINI_PATH.match(raw_path)
    if gemini is not None:
        route = _GEMINI_ROUTES.get(gemini.group("method")) if method == "POST" else None
    else:
        route = _ROUTES.get(path) if method == "POST" else None
    google = gemini is not None or (
        route is None and ("x-goog-api-key" in headers or raw_path.startswith("/v1beta/"))
    )
    anthropic = not google and (
        path.startswith("/v1/messages") or (route is None and "anthropic-version" in headers)
    )
    return _Route(
        name=route,
        gemini=gemini is not None,
        path_model=gemini.group("model") if gemini is not None else None,
        google=google,
        anthropic=anthropic,
    )
