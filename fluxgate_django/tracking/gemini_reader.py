"""Gemini (``google-genai``): how a request and its usage are read.

The usage reader of the Gemini transport (``gemini.py``), and the view of a request that
budget estimates and ``STORE_CONTENT`` read.

Usage: ``prompt_token_count`` includes cached tokens and ``candidates_token_count``
excludes thinking tokens, which are billed as output; tool-use prompt tokens (results of
built-in tools fed back to the model) are billed as input. Statuses from finish reasons:

=====================================================================  =================
``STOP``, ``CONTINUATION`` (an intermediate hop), unspecified          SUCCESS
``MAX_TOKENS``                                                         MAX_TOKENS
``SAFETY``, ``BLOCKLIST``, ``PROHIBITED_CONTENT``, ``SPII``,           CONTENT_FILTER
``LANGUAGE``, ``IMAGE_SAFETY``, ``IMAGE_PROHIBITED_CONTENT``,
``MODEL_ARMOR``, ``ESCALATION``
``RECITATION``, ``IMAGE_RECITATION``                                   RECITATION
``prompt_feedback.block_reason`` (prompt refused), ``PUP_LIMITED_...`` BLOCKED
``MISSING_THOUGHT_SIGNATURE`` (the request omitted them)               MALFORMED_REQUEST
``MALFORMED_FUNCTION_CALL``, ``UNEXPECTED_TOOL_CALL``,                 ERROR
``TOO_MANY_TOOL_CALLS``, ``MALFORMED_RESPONSE``, ``NO_IMAGE``,
``OTHER``, ``IMAGE_OTHER``
=====================================================================  =================

``MALFORMED_FUNCTION_CALL`` is ERROR, not MALFORMED_REQUEST: the request was accepted and
billed and it is the *model's* output that is unusable (a retry may well succeed), whereas
MALFORMED_REQUEST means "the provider rejected what you sent" (HTTP 400). The finish
reason is kept on the event for finer filtering. A blocked prompt's finish reason is
``BLOCKED:<block_reason>``.
"""

from __future__ import annotations

from typing import Any

from ..outcomes import error_status, set_finish
from ..records import CallInfo, Status, Usage

OPERATION = "generate_content"
#: The REST methods of a model call (``models/{model}:generateContent``...).
ENDPOINTS = frozenset({"generateContent", "streamGenerateContent"})


def normalise_gemini_usage(usage: Any) -> Usage | None:
    """``usage_metadata`` in FluxGate's convention (total input, total output)."""
    if usage is None:
        return None
    thoughts = getattr(usage, "thoughts_token_count", None) or 0
    return Usage(
        input_tokens=(usage.prompt_token_count or 0)
        + (getattr(usage, "tool_use_prompt_token_count", None) or 0),
        output_tokens=(usage.candidates_token_count or 0) + thoughts,
        reasoning_tokens=thoughts,
        cache_read_tokens=usage.cached_content_token_count or 0,
    )


def _name(value: Any) -> str:
    """An SDK enum member (or an unknown value passed through as a string) → its name."""
    return str(getattr(value, "value", value))


def model_name(model: Any) -> str:
    """``models/gemini-2.5-flash``, ``publishers/google/models/...`` → ``gemini-2.5-flash``."""
    name = str(model or "")
    if "/" in name and not name.startswith("tunedModels/"):
        name = name.rsplit("/", 1)[-1]
    return name


class _Chunks:
    """Reads model, finish reason, block reason and usage off responses or stream chunks.

    Within one streamed request every chunk's ``usage_metadata`` is the running total
    (google-genai's ``StreamContinuation`` relies on the same), so the last one is final.
    """

    __slots__ = ("block_reason", "finish_reason", "model", "usage")

    def __init__(self) -> None:
        self.model = ""
        self.finish_reason: Any = None
        self.block_reason: Any = None
        self.usage: Any = None

    def observe(self, chunk: Any) -> None:
        if not self.model:
            self.model = chunk.model_version or ""
        if chunk.usage_metadata is not None:
            self.usage = chunk.usage_metadata
        candidates = chunk.candidates
        if candidates and candidates[0].finish_reason is not None:
            self.finish_reason = candidates[0].finish_reason
        feedback = chunk.prompt_feedback
        if feedback is not None and feedback.block_reason is not None:
            self.block_reason = feedback.block_reason

    def result(self, info: CallInfo) -> Usage | None:
        info.model = model_name(self.model) or info.requested_model
        if self.block_reason is not None:
            info.finish_reason = f"BLOCKED:{_name(self.block_reason)}"
            info.status = Status.BLOCKED
        elif self.finish_reason is not None:
            set_finish(info, "gemini", _name(self.finish_reason))
        return normalise_gemini_usage(self.usage)


class GeminiReader:
    """The :class:`~fluxgate_django.tracking.core.UsageReader` for google-genai."""

    provider = "gemini"

    def operation(self, method: str, url: str) -> str | None:
        return OPERATION if url in ENDPOINTS else None

    def read_response(self, operation: str, response: Any, info: CallInfo) -> Usage | None:
        chunks = _Chunks()
        chunks.observe(response)
        return chunks.result(info)

    def stream_accumulator(self, operation: str) -> _Chunks:
        return _Chunks()

    def status_for_error(self, error: BaseException) -> Status:
        return error_status("gemini", error)


#: The name this had before.
GeminiAdapter = GeminiReader


# -- request view: for budget estimates and STORE_CONTENT only ----------------------------


def _get(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def _part_view(part: Any) -> dict[str, Any]:
    if isinstance(part, str):
        return {"text": part}
    text = _get(part, "text")
    if text is not None:
        return {"text": text}
    call = _get(part, "function_call")
    if call is not None:
        return {"function_call": {"name": _get(call, "name"), "args": _get(call, "args")}}
    response = _get(part, "function_response")
    if response is not None:
        return {
            "function_response": {
                "name": _get(response, "name"),
                "response": _get(response, "response"),
            }
        }
    # Media and files: their kind only (never their bytes, which are not text to count).
    blob = _get(part, "inline_data") or _get(part, "file_data")
    kind = _get(blob, "mime_type") if blob is not None else _get(part, "mime_type")
    return {"type": str(kind or type(part).__name__)}


def _contents_view(contents: Any) -> list[dict[str, Any]]:
    """``contents`` in any form the SDK takes, as JSON: roles and text parts, media kinds."""
    items = contents if isinstance(contents, (list, tuple)) else [contents]
    view: list[dict[str, Any]] = []
    loose: list[dict[str, Any]] = []  # bare parts: the SDK makes them one user turn
    for item in items:
        parts = None if isinstance(item, str) else _get(item, "parts")
        if parts is None:
            loose.append(_part_view(item))
            continue
        if loose:
            view.append({"role": "user", "parts": loose})
            loose = []
        view.append({"role": _get(item, "role") or "user", "parts": [_part_view(p) for p in parts]})
    if loose:
        view.append({"role": "user", "parts": loose})
    return view


def _config_value(config: Any, name: str) -> Any:
    return None if config is None else _get(config, name)


def request_body(model: str, contents: Any, config: Any, *, full: bool) -> dict[str, Any]:
    """What TrackedCall reads of a request: model, output cap and candidates, and
    (``full``) what the model reads: the text, the system instruction, the tools and a
    response schema (a budget's bound counts them all)."""
    body: dict[str, Any] = {"model": model}
    for name in ("max_output_tokens", "candidate_count"):
        value = _config_value(config, name)
        if isinstance(value, int):
            body[name] = value
    if full:
        body["contents"] = _contents_view(contents)
        system = _config_value(config, "system_instruction")
        if system is not None:
            body["system"] = [p for c in _contents_view(system) for p in c["parts"]]
        for name in ("tools", "tool_config", "response_schema", "response_json_schema"):
            value = _config_value(config, name)
            if value is not None:
                body[name] = value
    return body
