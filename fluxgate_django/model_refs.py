"""Model references: an alias from ``FLUXGATE["MODELS"]``, ``"provider/model"``, or a bare name."""

from __future__ import annotations

from typing import NamedTuple

from .conf import fluxgate_settings

KNOWN_PROVIDERS = ("openai", "anthropic", "gemini")

_PREFIXES: tuple[tuple[str, str], ...] = (
    ("gpt-", "openai"),
    ("chatgpt-", "openai"),
    ("o1", "openai"),
    ("o3", "openai"),
    ("o4", "openai"),
    ("text-embedding-", "openai"),
    ("davinci", "openai"),
    ("babbage", "openai"),
    ("claude-", "anthropic"),
    ("gemini-", "gemini"),
)


class ModelRef(NamedTuple):
    provider: str
    model: str

    def __str__(self) -> str:
        return f"{self.provider}/{self.model}"


class UnknownModel(ValueError):
    """A model reference that names no alias, no known provider and no known model family."""


def infer_provider(model: str) -> str | None:
    """The provider a bare model name belongs to, or ``None`` when it cannot be told."""
    name = model.lower()
    for prefix, provider in _PREFIXES:
        if name.startswith(prefix):
            return provider
    return None


def resolve_model(ref: str, aliases: dict[str, str] | None = None) -> ModelRef:
    """Turn ``ref`` into ``(provider, model)``; raise :class:`UnknownModel` if it can't be."""
    if aliases is None:
        aliases = fluxgate_settings.MODELS
    seen = set()
    while ref in aliases:
        if ref in seen:
            raise UnknownModel(f"Model alias {ref!r} refers to itself")
        seen.add(ref)
        ref = aliases[ref]
    if "/" in ref:
        provider, _, model = ref.partition("/")
        if not provider or not model:
            raise UnknownModel(f"Model reference {ref!r} must look like 'provider/model'")
        if provider not in KNOWN_PROVIDERS and provider not in fluxgate_settings.PROVIDERS:
            raise UnknownModel(f"Model reference {ref!r} names unknown provider {provider!r}")
        return ModelRef(provider, model)
    inferred = infer_provider(ref)
    if inferred is None:
        raise UnknownModel(
            f"Cannot tell the provider of model {ref!r}: use 'provider/{ref}' or an alias "
            "in FLUXGATE['MODELS']"
        )
    return ModelRef(inferred, ref)
