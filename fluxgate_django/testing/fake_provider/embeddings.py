"""The OpenAI embeddings endpoint: deterministic vectors (float lists or base64 float32)."""

from __future__ import annotations

import base64
import struct
import zlib
from typing import TYPE_CHECKING, Any

from .turn import _ceil4

if TYPE_CHECKING:
    from .replies import FakeReply


def _embedding_inputs(value: Any) -> list[tuple[str, int]]:
    """(seed text, token count) for each embedding input."""
    if isinstance(value, str):
        return [(value, max(1, _ceil4(len(value))))]
    if isinstance(value, list):
        if not value:
            return []
        if all(isinstance(x, int) for x in value):
            return [(repr(value), max(1, len(value)))]
        out: list[tuple[str, int]] = []
        for item in value:
            if isinstance(item, str):
                out.append((item, max(1, _ceil4(len(item)))))
            elif isinstance(item, list):
                out.append((repr(item), max(1, len(item))))
        return out
    return [("", 1)]


def _embedding_vector(seed_text: str, dims: int) -> list[float]:
    """A deterministic vector in [-1, 1); values are exact in float32."""
    state = zlib.crc32(seed_text.encode("utf-8")) or 1
    vec = []
    for _ in range(dims):
        state = (state * 1103515245 + 12345) & 0x7FFFFFFF
        vec.append(((state >> 10) % 2048) / 1024.0 - 1.0)
    return vec


def _embeddings_json(reply: FakeReply, body: dict[str, Any], dimensions: int) -> dict[str, Any]:
    """The reply to ``POST /v1/embeddings``; ``dimensions`` unless the request names some."""
    dims = body.get("dimensions")
    if not isinstance(dims, int) or dims <= 0:
        dims = dimensions
    b64 = body.get("encoding_format") == "base64"
    data = []
    total = 0
    for index, (seed, tokens) in enumerate(_embedding_inputs(body.get("input"))):
        total += tokens
        vec = _embedding_vector(seed, dims)
        emb: Any = base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode() if b64 else vec
        data.append({"object": "embedding", "index": index, "embedding": emb})
    prompt = reply.input_tokens if reply.input_tokens is not None else max(1, total)
    return {
        "object": "list",
        "data": data,
        "model": reply.served_model or body.get("model") or "fake-embedding",
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
    }
