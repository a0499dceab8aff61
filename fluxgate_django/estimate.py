"""What a call may cost, before it is sent: what a budget reserves.

The reservation is a bound, not a guess (:func:`input_tokens_bound`,
:func:`output_tokens_bound`, :func:`estimate_cost`):

* input: the whole request as sent — messages, system prompt, tools and their schemas,
  response formats, documents — at one token per UTF-8 byte of its JSON (no tokenizer
  makes more tokens than a text has bytes, and the JSON's own syntax covers what a
  provider adds per message); images and PDFs by the provider's own formula
  (:mod:`.media_tokens`), not by the size of their base64;
* output: ``max_tokens`` (``max_completion_tokens``, ``max_output_tokens``; times ``n``
  choices), else the model's own output limit, else what its context window leaves
  after the input, else ``BUDGET_DEFAULT_OUTPUT_TOKENS``;
* both at the model's price for that many tokens (so a long-context tier applies when
  the input crosses it).

What the bound can't see: the conversation a provider keeps for the call (OpenAI's
``previous_response_id``, a cached prompt referenced by id) and server-side tools'
own calls. :class:`.ledger` settles every call at its real cost when it ends.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from . import media_tokens
from .conf import fluxgate_settings
from .money import to_units
from .pricing import price_book
from .records import EventRecord, Usage

#: Characters per input token of a typical text (tokenizers average ~4 for English prose,
#: fewer for code and many languages): the routing heuristics' estimate, not a bound.
CHARS_PER_TOKEN = 3

#: Request keys that are options, not text the model reads.
_OPTION_KEYS = frozenset(
    {
        "model", "stream", "stream_options", "max_tokens", "max_completion_tokens",
        "max_output_tokens", "temperature", "top_p", "top_k", "n", "seed", "stop",
        "stop_sequences", "logprobs", "top_logprobs", "presence_penalty",
        "frequency_penalty", "logit_bias", "user", "metadata", "store", "service_tier",
        "parallel_tool_calls", "timeout", "extra_headers", "extra_query", "reasoning_effort",
        "reasoning", "prompt_cache_key", "safety_identifier", "modalities", "thinking",
        "betas", "truncation", "include", "background", "verbosity", "candidate_count",
    }
)  # fmt: skip

#: Output limits of models whose limit is far below their context window (by name
#: prefix; the longest prefix wins). Others: what their context window leaves.
MAX_OUTPUT_TOKENS = {
    "gpt-4o": 16_384,
    "chatgpt-4o": 16_384,
    "gpt-4-turbo": 4_096,
    "gpt-4.1": 32_768,
    "gpt-4.5": 16_384,
    "gpt-3.5-turbo": 4_096,
    "o1": 100_000,
    "o3": 100_000,
    "o4-mini": 100_000,
    "gpt-5": 128_000,
    "claude-3-haiku": 4_096,
    "claude-3-5": 8_192,
    "claude-3-7-sonnet": 64_000,
    "claude-sonnet-4": 64_000,
    "claude-opus-4": 32_000,
    "claude-haiku-4": 64_000,
    "gemini-1.5": 8_192,
    "gemini-2.0": 8_192,
    "gemini-2.5": 65_536,
    "gemini-3": 65_536,
}


def input_tokens_bound(body: Mapping[str, Any], provider: str = "", model: str = "") -> int:
    """At most how many input tokens the request ``body`` (an SDK call's keyword
    arguments) can be billed for (see the module's docstring)."""
    return sum(
        len(key) + 3 + _bound(value, provider, model)
        for key, value in body.items()
        if key not in _OPTION_KEYS
    )


def _bound(value: Any, provider: str, model: str) -> int:
    cls = value.__class__
    if cls is str:
        if value.startswith("data:"):
            inline = media_tokens.split_data_url(value)
            if inline is not None:
                return _inline_media(inline[0], inline[1], provider, model, "")
        # (The text's bytes, and its quotes: the bound is at least the request's JSON.)
        return 2 + (len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass")))
    if cls is dict:
        media = _media_part(value, provider, model)
        if media is not None:
            return media
        return sum(len(str(k)) + 4 + _bound(v, provider, model) for k, v in value.items())
    if cls is list or cls is tuple:
        return sum(_bound(v, provider, model) + 1 for v in value) + 2
    if value is None or cls is bool or cls is int or cls is float:
        return len(str(value))
    if isinstance(value, (bytes, bytearray)):  # inline media (Gemini's Part.inline_data)
        return _inline_media("", bytes(value), provider, model, "")
    if isinstance(value, str):  # a str subclass (a str enum): its text
        return _bound(str.__str__(value), provider, model)
    if isinstance(value, (int, float)):  # (an int or float enum...)
        return len(str(float(value) if isinstance(value, float) else int(value)))
    if isinstance(value, type):  # a pydantic model as a response format: its schema
        schema = getattr(value, "model_json_schema", None)
        return _bound(schema(), provider, model) if callable(schema) else len(str(value))
    dump = getattr(value, "model_dump", None)  # an SDK's pydantic type
    if callable(dump):
        try:
            dumped = dump(exclude_none=True, by_alias=True)
        except (TypeError, ValueError):
            return len(str(value))
        return _bound(dumped, provider, model)
    content = getattr(value, "content", None)  # a LangChain message
    if content is not None:
        return _bound(content, provider, model)
    if isinstance(value, Mapping):
        return _bound(dict(value), provider, model)
    return 0  # (not something an SDK sends: a NotGiven sentinel...)


def _media_part(part: dict[str, Any], provider: str, model: str) -> int | None:
    """The bound of an image or document part of a message, else None (text)."""
    kind = part.get("type")
    if kind in ("image_url", "input_image"):  # OpenAI chat / Responses
        image = part.get("image_url")
        detail = part.get("detail") or ""
        if isinstance(image, dict):
            detail = image.get("detail") or detail
            image = image.get("url")
        return _referenced(image, provider, model, str(detail), "image/")
    if kind in ("image", "document") and isinstance(part.get("source"), dict):  # Anthropic
        source = part["source"]
        if source.get("type") == "base64":
            return _inline_media(
                str(source.get("media_type") or ""), source.get("data") or "", provider, model, ""
            )
        if source.get("type") in ("text", "content"):
            return _bound(source.get("data") or source.get("content"), provider, model)
        return _unseen(provider, model, "image/" if kind == "image" else "")
    if kind in ("file", "input_file"):  # OpenAI files
        file = part["file"] if isinstance(part.get("file"), dict) else part
        data = file.get("file_data")
        if isinstance(data, str):
            inline = media_tokens.split_data_url(data)
            if inline is not None:
                return _inline_media(inline[0], inline[1], provider, model, "")
            return _inline_media("application/pdf", data, provider, model, "")
        return _unseen(provider, model, "")
    for key in ("inline_data", "inlineData"):  # Gemini, as a dict
        blob = part.get(key)
        if isinstance(blob, dict):
            mime = str(blob.get("mime_type") or blob.get("mimeType") or "")
            return _inline_media(mime, blob.get("data") or b"", provider, model, "")
    for key in ("file_data", "fileData"):
        blob = part.get(key)
        if isinstance(blob, dict):
            mime = str(blob.get("mime_type") or blob.get("mimeType") or "")
            return _unseen(provider, model, mime)
    if isinstance(kind, str) and "/" in kind and len(part) == 1:
        # FluxGate's own view of a Gemini media part (the data left out): its type only.
        return _unseen(provider, model, kind)
    return None


def _referenced(ref: Any, provider: str, model: str, detail: str, mime: str) -> int:
    if isinstance(ref, str):
        inline = media_tokens.split_data_url(ref)
        if inline is not None:
            return _inline_media(inline[0], inline[1], provider, model, detail)
    if mime.startswith("image/"):
        return media_tokens.image_tokens(provider, model, None, detail)
    return _unseen(provider, model, mime)


def _inline_media(mime: str, data: Any, provider: str, model: str, detail: str) -> int:
    if mime == "application/pdf" or (not mime and _is_pdf(data)):
        return media_tokens.document_tokens(provider, model, media_tokens.pdf_pages(data))
    if mime.startswith("image/") or not mime:
        size = media_tokens.image_size(data) if isinstance(data, (str, bytes)) else None
        if size is not None or mime:
            return media_tokens.image_tokens(provider, model, size, detail)
    # Audio, video or an unknown file: its bytes, as text would be (no formula here).
    return len(data) if isinstance(data, (str, bytes)) else 0


def _is_pdf(data: Any) -> bool:
    return (isinstance(data, bytes) and data[:5] == b"%PDF-") or (
        isinstance(data, str) and data.startswith("JVBERi")
    )


def _unseen(provider: str, model: str, mime: str) -> int:
    """A medium the request only names (a URL, a file id)."""
    if mime.startswith("image/"):
        return media_tokens.image_tokens(provider, model)
    return media_tokens.document_tokens(provider, model, media_tokens.UNSEEN_DOCUMENT_PAGES)


def output_tokens_bound(
    provider: str, model: str, cap: int | None, input_tokens: int, choices: int = 1
) -> int:
    """At most how many output tokens a call can be billed for: its ``cap``
    (:func:`max_output_tokens`) times its ``choices``, else the model's output limit,
    else what its context window leaves after ``input_tokens``, else
    ``BUDGET_DEFAULT_OUTPUT_TOKENS``."""
    if cap is None:
        name = model.rsplit("/", 1)[-1].lower()
        best = max((p for p in MAX_OUTPUT_TOKENS if name.startswith(p)), key=len, default="")
        if best:
            cap = MAX_OUTPUT_TOKENS[best]
        else:
            window = price_book.context_window(provider, model) if model else None
            if window is not None and window > input_tokens:
                cap = window - input_tokens
            else:
                cap = int(fluxgate_settings.BUDGET_DEFAULT_OUTPUT_TOKENS)
    return cap * max(1, choices)


def max_output_tokens(body: Mapping[str, Any], operation: str = "") -> int | None:
    """The output cap a request sets (0 for embeddings; None when it sets none)."""
    if operation == "embeddings":
        return 0
    for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = body.get(key)
        if isinstance(value, int) and value >= 0:
            return value
    return None


def choices(body: Mapping[str, Any]) -> int:
    """How many answers a request asks for (OpenAI's ``n``, Gemini's ``candidate_count``)."""
    for key in ("n", "candidate_count"):
        value = body.get(key)
        if isinstance(value, int) and value > 1:
            return value
    return 1


def estimate_cost(
    provider: str, model: str, input_tokens: int, output_tokens: int
) -> Decimal | None:
    """What ``input_tokens`` and ``output_tokens`` cost at the model's price (its tier
    for that many tokens). None when the model has no price (the reservation is then 0,
    but an exhausted budget still blocks)."""
    source = price_book.price_source(provider, model) if model else None
    if source is None:
        return None
    return source.cost(Usage(input_tokens=input_tokens, output_tokens=output_tokens))


class Calibration:
    """Where the bound fell short, learned from settled calls: per model, the largest
    ratio of a call's real cost to its bound among the last ``WINDOW`` calls (at least 1),
    by which the next reservations are scaled.

    The bound covers what a request shows; this covers what it can't (history a provider
    keeps, server-side tools, a formula that changed), so that concurrent calls of a
    model that costs more than its bound still can't overspend a budget by more than the
    first such calls. Per process, in memory; thread-safe (appends to a ``deque``)."""

    WINDOW = 50
    MAX_MODELS = 4096

    def __init__(self) -> None:
        self._ratios: dict[tuple[str, str], deque[float]] = {}

    def scale(self, provider: str, model: str) -> float:
        ratios = self._ratios.get((provider, model))
        return max(1.0, max(ratios, default=1.0)) if ratios else 1.0

    def observe(self, provider: str, model: str, bound_units: int, real_units: int) -> None:
        """A settled call of ``model``: ``real_units`` against its unscaled bound."""
        if bound_units <= 0 or real_units < 0:
            return
        key = (provider, model)
        ratios = self._ratios.get(key)
        if ratios is None:
            if real_units <= bound_units:
                return  # (nothing to learn of a model that keeps to its bound)
            if len(self._ratios) >= self.MAX_MODELS:
                self._ratios.clear()
            ratios = self._ratios.setdefault(key, deque(maxlen=self.WINDOW))
        ratios.append(real_units / bound_units)

    def observe_record(self, record: EventRecord) -> None:
        """:meth:`observe` the call ``record`` is the event of (when it reserved a bound
        and has a cost)."""
        reservation = record.budget_reservation
        if reservation and reservation.get("bound_units") and record.cost_usd is not None:
            self.observe(
                record.provider,
                record.requested_model or record.model,
                int(reservation["bound_units"]),
                to_units(record.cost_usd),
            )

    def clear(self) -> None:
        self._ratios.clear()


calibration = Calibration()
