"""How many input tokens an image or a document in a request can cost, by the provider's
own formula: what a budget reserves for media (:mod:`.estimate`).

An image sent inline (base64) is read for its size (the PNG, GIF, WebP or JPEG header:
a few bytes decoded, never the whole image) and costed by the formula; an image sent by
URL or file id, whose size isn't known before the provider fetches it, is costed as the
largest image the formula allows. Each result is an upper bound, not a guess.

* OpenAI (tiles: GPT-4o, GPT-4.1, GPT-5, o1/o3): ``detail="low"`` costs the base; else
  the image is fitted within 2048x2048, its short side scaled to 768, and it costs
  base + per-tile x 512-pixel tiles. GPT-4o mini's base and tile are 2,833 and 5,667.
  Models priced by 32-pixel patches (GPT-4.1 mini/nano, o4-mini, GPT-5 mini/nano) cost
  up to 1,536 patches times the model's multiplier. A model not listed is costed at the
  most any listed one charges (GPT-4o mini's scale excepted), so as not to fall short.
* Anthropic: width x height / 750, after fitting the long side within 1568 pixels and
  the image within 1.15 megapixels (so at most ~1,600 tokens).
* Gemini: 258 tokens for an image within 384x384, else 258 per 768x768 tile (an image is
  at most 3072x3072: 16 tiles).

A PDF is costed per page as its text and its page image: pages are counted in the
decoded file (or, where they can't be, one page per 2 KB of it); one by URL or file id
as ``UNSEEN_DOCUMENT_PAGES`` pages.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")

#: OpenAI tile models by model-name prefix: (base, per tile) tokens.
_OPENAI_TILES = {
    "gpt-4o-mini": (2833, 5667),
    "gpt-4o": (85, 170),
    "chatgpt-4o": (85, 170),
    "gpt-4.1": (85, 170),
    "gpt-4-turbo": (85, 170),
    "gpt-4-vision": (85, 170),
    "gpt-4.5": (85, 170),
    "gpt-5": (70, 140),
    "o1": (75, 150),
    "o3": (75, 150),
}
#: OpenAI patch models by model-name prefix: the multiplier of their 32-pixel patches.
_OPENAI_PATCHES = {
    "gpt-4.1-mini": 1.62,
    "gpt-4.1-nano": 2.46,
    "o4-mini": 1.72,
    "gpt-5-mini": 1.62,
    "gpt-5-nano": 2.46,
}
_MAX_PATCHES = 1536
#: An OpenAI model in neither table: the most a listed model charges for one image
#: (GPT-4.1 nano's 1,536 patches), GPT-4o mini's own scale apart.
_OPENAI_UNLISTED = math.ceil(_MAX_PATCHES * 2.46)
_ANTHROPIC_LONG_EDGE = 1568
_ANTHROPIC_MAX_PIXELS = 1_150_000
_GEMINI_TILE_TOKENS = 258
_GEMINI_MAX_TILES = 16
#: Text tokens a PDF page may add beside its page image (a dense page holds ~3,000).
PDF_PAGE_TEXT_TOKENS = 4000
#: Pages assumed for a document the request only names (a URL, a file id).
UNSEEN_DOCUMENT_PAGES = 20

_DATA_URL = re.compile(r"data:([\w.+/-]*);base64,", re.ASCII)
_PAGE = re.compile(rb"/Type\s*/Page(?![a-zA-Z])")


def _prefixed(table: Mapping[str, T], model: str) -> T | None:
    """The entry of the longest prefix of ``model`` (after any ``provider/``)."""
    name = model.rsplit("/", 1)[-1].lower()
    best = max((p for p in table if name.startswith(p)), key=len, default=None)
    return None if best is None else table[best]


def image_tokens(
    provider: str, model: str, size: tuple[int, int] | None = None, detail: str = ""
) -> int:
    """At most what one image of ``size`` (width, height; None: unknown) costs."""
    if provider == "anthropic":
        return _anthropic_image(size)
    if provider == "gemini":
        return _gemini_image(size)
    patch = _prefixed(_OPENAI_PATCHES, model)
    if patch is not None:
        return _patch_image(size, patch)
    tiles = _prefixed(_OPENAI_TILES, model)
    if tiles is not None:
        return _tile_image(size, tiles[0], tiles[1], detail)
    if provider == "openai":
        return max(_OPENAI_UNLISTED, _tile_image(size, 85, 170, detail))
    # An OpenAI-compatible provider (OpenRouter...) serving another vendor's model: the
    # most of any formula here.
    return max(_OPENAI_UNLISTED, _anthropic_image(size), _gemini_image(size))


def _tile_image(size: tuple[int, int] | None, base: int, tile: int, detail: str) -> int:
    if detail == "low":
        return base
    if size is None:
        return base + tile * 8  # 768 x 2048 at most: 2 x 4 tiles
    w, h = float(size[0]), float(size[1])
    if max(w, h) > 2048:
        scale = 2048 / max(w, h)
        w, h = w * scale, h * scale
    if min(w, h) > 768:
        scale = 768 / min(w, h)
        w, h = w * scale, h * scale
    return base + tile * math.ceil(w / 512) * math.ceil(h / 512)


def _patch_image(size: tuple[int, int] | None, multiplier: float) -> int:
    patches = _MAX_PATCHES
    if size is not None:
        patches = min(_MAX_PATCHES, math.ceil(size[0] / 32) * math.ceil(size[1] / 32))
    return math.ceil(patches * multiplier)


def _anthropic_image(size: tuple[int, int] | None) -> int:
    if size is None:
        return math.ceil(_ANTHROPIC_MAX_PIXELS / 750)
    w, h = float(size[0]), float(size[1])
    if max(w, h) > _ANTHROPIC_LONG_EDGE:
        scale = _ANTHROPIC_LONG_EDGE / max(w, h)
        w, h = w * scale, h * scale
    if w * h > _ANTHROPIC_MAX_PIXELS:
        scale = math.sqrt(_ANTHROPIC_MAX_PIXELS / (w * h))
        w, h = w * scale, h * scale
    return math.ceil(w * h / 750)


def _gemini_image(size: tuple[int, int] | None) -> int:
    if size is None:
        return _GEMINI_TILE_TOKENS * _GEMINI_MAX_TILES
    w, h = size
    if w <= 384 and h <= 384:
        return _GEMINI_TILE_TOKENS
    tiles = min(_GEMINI_MAX_TILES, math.ceil(w / 768) * math.ceil(h / 768))
    return _GEMINI_TILE_TOKENS * tiles


def document_tokens(provider: str, model: str, pages: int) -> int:
    """At most what a PDF of ``pages`` pages costs: each page's text and page image."""
    if provider == "gemini":
        return pages * _GEMINI_TILE_TOKENS + pages * PDF_PAGE_TEXT_TOKENS
    return pages * (PDF_PAGE_TEXT_TOKENS + image_tokens(provider, model))


# -- reading inline media --------------------------------------------------------------


def split_data_url(value: str) -> tuple[str, str] | None:
    """``(media type, base64 data)`` of a ``data:...;base64,`` URL, else None."""
    match = _DATA_URL.match(value)
    if match is None:
        return None
    return match.group(1), value[match.end() :]


def _head(data: str | bytes, limit: int) -> bytes:
    """The first ``limit`` bytes of base64 ``data`` (or of raw bytes)."""
    if isinstance(data, bytes):
        return data[:limit]
    chunk = data[: (limit // 3 + 1) * 4]
    chunk = chunk[: len(chunk) - len(chunk) % 4]
    try:
        return base64.b64decode(chunk)
    except (binascii.Error, ValueError):
        return b""


def image_size(data: str | bytes) -> tuple[int, int] | None:
    """(width, height) from the header of a base64 (or raw) PNG, GIF, WebP or JPEG."""
    head = _head(data, 64 * 1024)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24:
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        return int.from_bytes(head[6:8], "little"), int.from_bytes(head[8:10], "little")
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP" and len(head) >= 30:
        return _webp_size(head)
    if head[:2] == b"\xff\xd8":
        return _jpeg_size(head)
    return None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    kind = head[12:16]
    if kind == b"VP8X":
        return 1 + int.from_bytes(head[24:27], "little"), 1 + int.from_bytes(head[27:30], "little")
    if kind == b"VP8 ":
        return int.from_bytes(head[26:28], "little") & 0x3FFF, int.from_bytes(
            head[28:30], "little"
        ) & 0x3FFF
    if kind == b"VP8L" and len(head) >= 25:
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _jpeg_size(head: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 < len(head):
        if head[i] != 0xFF:
            return None
        marker = head[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = int.from_bytes(head[i + 2 : i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return int.from_bytes(head[i + 7 : i + 9], "big"), int.from_bytes(
                head[i + 5 : i + 7], "big"
            )
        i += 2 + length
    return None


def pdf_pages(data: str | bytes) -> int:
    """Pages of a base64 (or raw) PDF: its page objects, or one per 2 KB where they are
    hidden in compressed object streams."""
    raw = data if isinstance(data, bytes) else _head(data, len(data))
    pages = len(_PAGE.findall(raw))
    return pages if pages else max(1, math.ceil(len(raw) / 2048))
