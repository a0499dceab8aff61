"""The LLM service's normalised request and response."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from decimal import Decimal
from typing import Any

from ..records import Usage


@dataclasses.dataclass(frozen=True, slots=True)
class ServiceRequest:
    """One request, independent of provider: history, system prompt and documents.

    ``documents`` are long reference texts (a manual, a codebase...) sent before the
    history in a stable order so providers' prompt caches can reuse them.
    """

    messages: tuple[dict[str, str], ...]
    system: str = ""
    documents: tuple[str, ...] = ()
    max_tokens: int | None = None
    temperature: float | None = None
    tools: tuple[dict[str, Any], ...] = ()

    @classmethod
    def build(
        cls,
        messages: Any,
        *,
        system: str | None = None,
        documents: Any = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        tools: Any = None,
    ) -> ServiceRequest:
        """Accepts a string (one user message) or ``[{"role", "content"}, ...]``; system
        messages in the list are joined into ``system``."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        if not messages:
            raise ValueError("messages must not be empty")
        systems = [system] if system else []
        history = []
        for message in messages:
            role, content = message.get("role"), message.get("content")
            if role not in ("system", "user", "assistant") or not isinstance(content, str):
                raise ValueError(
                    "each message needs a role (system, user or assistant) and text content"
                )
            if role == "system":
                systems.append(content)
            else:
                history.append({"role": role, "content": content})
        if not history:
            raise ValueError("messages need at least one user message")
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens <= 0):
            raise ValueError("max_tokens must be a positive integer")
        if temperature is not None and not 0 <= temperature <= 2:
            raise ValueError("temperature must be between 0 and 2")
        return cls(
            messages=tuple(history),
            system="\n\n".join(systems),
            documents=tuple(documents or ()),
            max_tokens=max_tokens,
            temperature=temperature,
            tools=tuple(tools or ()),
        )

    @property
    def prompt_chars(self) -> int:
        return (
            len(self.system)
            + sum(len(d) for d in self.documents)
            + sum(len(m["content"]) for m in self.messages)
        )

    def cache_key(self, target: str, scope: str) -> str:
        """A key for the response cache: the normalised request, its model or route, and
        whose calls the entry may answer (``scope``: a team, or the whole site)."""
        payload = json.dumps(
            {
                "scope": scope,
                "target": target,
                "messages": self.messages,
                "system": self.system,
                "documents": self.documents,
                "max_tokens": self.max_tokens,
                "temperature": self.temperature,
                "tools": self.tools,
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        return "fluxgate:response:" + hashlib.sha256(payload.encode()).hexdigest()


@dataclasses.dataclass(slots=True)
class Attempt:
    """One try at one model, as the caller can inspect it afterwards."""

    provider: str
    model: str
    outcome: str  # "success", "error", "skipped-open-circuit", "timeout"...
    latency_ms: float | None = None
    error: str = ""
    tracking_id: uuid.UUID | None = None


@dataclasses.dataclass(slots=True)
class Completion:
    """A normalised answer from whichever provider served it."""

    content: str
    provider: str
    model: str
    usage: Usage
    cost: Decimal | None
    latency_ms: float
    cache_hit: bool
    fallback_used: bool
    attempts: list[Attempt]
    tracking_id: uuid.UUID | None
    finish_reason: str = ""

    def to_cache(self) -> dict[str, Any]:
        return {
            "content": self.content,
            "provider": self.provider,
            "model": self.model,
            "usage": dataclasses.asdict(self.usage),
            "cost": None if self.cost is None else str(self.cost),
            "finish_reason": self.finish_reason,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            **self.to_cache(),
            "latency_ms": self.latency_ms,
            "cache_hit": self.cache_hit,
            "fallback_used": self.fallback_used,
            "tracking_id": str(self.tracking_id) if self.tracking_id else None,
            "attempts": [
                {**dataclasses.asdict(a), "tracking_id": str(a.tracking_id or "") or None}
                for a in self.attempts
            ],
        }
