"""What a LangChain chat model reports about a call, in FluxGate's terms.

LangChain normalises usage into ``message.usage_metadata`` with ``input_tokens`` *including*
cache reads and writes for every provider (LangChain adds Anthropic's separately reported
cache counts in), which is FluxGate's own convention, so only the cache and reasoning
subsets need picking out here. The served model, finish reason and service tier come from
``response_metadata`` / ``generation_info`` / ``llm_output``.

FluxGate's modules are imported inside functions: ``import fluxgate_langchain`` must not
import Django or the Django app.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fluxgate_django.records import CallInfo, Status, Usage

#: LangChain ``ls_provider`` / ``model_provider`` values → FluxGate provider names.
_PROVIDER_NAMES = {"google_genai": "gemini", "google": "gemini"}

#: Anthropic's per-TTL cache-write counts; LangChain zeroes its generic ``cache_creation``
#: when it reports these, so a write is never counted twice.
_WRITE_5M = "ephemeral_5m_input_tokens"
_WRITE_1H = "ephemeral_1h_input_tokens"

#: Anthropic's cache TTL when a ``cache_control`` names none.
_DEFAULT_TTL = "5m"
#: How deep :func:`cache_write_ttls` looks into a request (content blocks sit at depth ~4).
_MAX_TTL_DEPTH = 12


def provider_name(value: Any, base_url: Any = None) -> str:
    """FluxGate's provider name for a LangChain ``ls_provider``; for an OpenAI-format model
    at ``base_url``, the gateway it talks to (``openrouter``), named as the tracked SDK
    client's events are (one helper for both paths)."""
    name = str(value or "").lower()
    name = _PROVIDER_NAMES.get(name, name)
    if name == "openai" and base_url:
        from fluxgate_django.outcomes import openai_compatible_provider

        return openai_compatible_provider(base_url, name)
    return name


def cache_write_ttls(*parts: Any) -> frozenset[str]:
    """The TTLs (``"5m"``, ``"1h"``) of every ``cache_control`` breakpoint in a request's
    messages and parameters (a breakpoint without one is ``5m``). Anthropic writes the
    cache only at breakpoints, so when they all have one TTL, every cache write has it."""
    found: set[str] = set()
    stack = [(part, 0) for part in parts]
    while stack:
        value, depth = stack.pop()
        if depth > _MAX_TTL_DEPTH:
            continue
        content = getattr(value, "content", None)  # a BaseMessage
        if content is not None and not isinstance(value, (Mapping, str)):
            stack.append((content, depth + 1))
            stack.append((getattr(value, "additional_kwargs", None), depth + 1))
        elif isinstance(value, Mapping):
            control = value.get("cache_control")
            if isinstance(control, Mapping):
                found.add(str(control.get("ttl") or _DEFAULT_TTL))
            stack.extend((v, depth + 1) for k, v in value.items() if k != "cache_control")
        elif isinstance(value, (list, tuple)):
            stack.extend((v, depth + 1) for v in value)
    return frozenset(found)


def write_ttls_reported(response: Any) -> bool:
    """Did the model report its cache writes per TTL? (A streamed ChatAnthropic does not:
    langchain-anthropic builds a stream's usage from ``message_delta``, which has no
    breakdown, and passes ``message_start``'s usage to no callback.)"""
    message = getattr(first_generation(response), "message", None)
    usage = _mapping(getattr(message, "usage_metadata", None))
    details = _mapping(usage.get("input_token_details"))
    return _WRITE_5M in details or _WRITE_1H in details


def usage_from_metadata(usage_metadata: Mapping[str, Any] | None) -> Usage | None:
    """FluxGate ``Usage`` from a LangChain ``UsageMetadata`` dict (None: nothing reported).

    Service-tier prefixed keys (``flex_cache_read``, ``priority_reasoning``) count too.
    """
    if not usage_metadata:
        return None
    from fluxgate_django.records import Usage

    details = usage_metadata.get("input_token_details") or {}
    out_details = usage_metadata.get("output_token_details") or {}
    writes_1h = _int(details.get(_WRITE_1H))
    by_ttl = _int(details.get(_WRITE_5M)) + writes_1h
    return Usage(
        input_tokens=_int(usage_metadata.get("input_tokens")),
        output_tokens=_int(usage_metadata.get("output_tokens")),
        reasoning_tokens=_sum_keys(out_details, "reasoning"),
        cache_read_tokens=_sum_keys(details, "cache_read"),
        cache_write_tokens=max(_sum_keys(details, "cache_creation"), by_ttl),
        cache_write_1h_tokens=writes_1h,
    )


def usage_from_llm_output(llm_output: Mapping[str, Any]) -> Usage | None:
    """Usage from ``llm_output`` for models that set no ``usage_metadata`` (plain LLMs):
    OpenAI-style ``token_usage`` or a raw Anthropic ``usage``."""
    from fluxgate_django.records import Usage

    token_usage = llm_output.get("token_usage") or llm_output.get("usage")
    if not isinstance(token_usage, Mapping):
        return None
    if "prompt_tokens" in token_usage:  # OpenAI: prompt_tokens include cached tokens
        prompt_details = token_usage.get("prompt_tokens_details") or {}
        completion_details = token_usage.get("completion_tokens_details") or {}
        return Usage(
            input_tokens=_int(token_usage.get("prompt_tokens")),
            output_tokens=_int(token_usage.get("completion_tokens")),
            reasoning_tokens=_int(completion_details.get("reasoning_tokens")),
            cache_read_tokens=_int(prompt_details.get("cached_tokens")),
            cache_write_tokens=_int(prompt_details.get("cache_write_tokens")),
        )
    if "input_tokens" in token_usage:  # Anthropic: input_tokens exclude cache tokens
        write = _int(token_usage.get("cache_creation_input_tokens"))
        read = _int(token_usage.get("cache_read_input_tokens"))
        breakdown = token_usage.get("cache_creation") or {}
        return Usage(
            input_tokens=_int(token_usage.get("input_tokens")) + write + read,
            output_tokens=_int(token_usage.get("output_tokens")),
            cache_read_tokens=read,
            cache_write_tokens=write,
            cache_write_1h_tokens=_int(breakdown.get(_WRITE_1H)) if breakdown else 0,
        )
    return None


def read_llm_result(response: Any, info: CallInfo) -> Usage | None:
    """Fill ``info`` (served model, finish reason, status, service tier) from a LangChain
    ``LLMResult`` and return its usage (None when the model reported none).

    With ``n > 1`` every generation carries the whole call's usage: only the first is read.
    """
    generation = first_generation(response)
    message = getattr(generation, "message", None)
    meta = _mapping(getattr(message, "response_metadata", None))
    gen_info = _mapping(getattr(generation, "generation_info", None))
    llm_output = _mapping(getattr(response, "llm_output", None))
    raw_usage = _mapping(meta.get("usage")) or _mapping(llm_output.get("usage"))

    info.model = (
        _text(meta.get("model_name"), meta.get("model"), gen_info.get("model_name"))
        or _text(llm_output.get("model_name"), llm_output.get("model"))
        or info.requested_model
    )
    if not info.provider:
        info.provider = provider_name(
            meta.get("model_provider") or llm_output.get("model_provider")
        )
    info.service_tier = _text(
        meta.get("service_tier"),
        gen_info.get("service_tier"),
        llm_output.get("service_tier"),
        raw_usage.get("service_tier"),
    )
    if meta.get("object") == "response":  # ChatOpenAI on the Responses API
        _read_responses_status(meta, info)
    else:
        reason = _text(
            meta.get("finish_reason"),
            meta.get("stop_reason"),
            gen_info.get("finish_reason"),
            llm_output.get("stop_reason"),
        )
        if reason:
            info.finish_reason = reason
            info.status = finish_status(info.provider, reason)
    if (getattr(message, "additional_kwargs", None) or {}).get("refusal"):
        info.status = _status("CONTENT_FILTER")
    usage = usage_from_metadata(getattr(message, "usage_metadata", None))
    if usage is None and llm_output:
        usage = usage_from_llm_output(llm_output)
    token_usage = _mapping(meta.get("token_usage")) or _mapping(llm_output.get("token_usage"))
    if "cost" in token_usage:  # OpenRouter's own cost, used as the tracked SDK client does
        from fluxgate_django.outcomes import reported_cost

        info.reported_cost = reported_cost(token_usage)
    return usage


def _read_responses_status(meta: Mapping[str, Any], info: CallInfo) -> None:
    """Status and finish reason of a Responses API call, read as the tracked client does."""
    from types import SimpleNamespace

    from fluxgate_django.outcomes import read_responses_outcome

    info.operation = "responses"
    details = meta.get("incomplete_details")
    read_responses_outcome(
        SimpleNamespace(
            status=meta.get("status"),
            incomplete_details=SimpleNamespace(**details) if isinstance(details, Mapping) else None,
        ),
        info,
    )


def first_generation(response: Any) -> Any:
    generations = getattr(response, "generations", None)
    if generations and generations[0]:
        return generations[0][0]
    return None


def finish_status(provider: str, reason: str) -> Status:
    """The status of a call that finished with ``reason``, with the same mapping as the
    tracked SDK clients (OpenAI ``length`` / Anthropic ``max_tokens`` → ``MAX_TOKENS``...)."""
    from fluxgate_django.outcomes import finish_status as status_of

    return status_of(provider, reason)


def status_for_error(provider: str, error: BaseException) -> Status:
    """The status of a call that raised ``error`` (the tracked clients' own mapping)."""
    from fluxgate_django.outcomes import error_status

    return error_status(provider, error)


def _status(name: str) -> Status:
    from fluxgate_django.records import Status

    return Status(name)


def _sum_keys(details: Mapping[str, Any], kind: str) -> int:
    suffix = "_" + kind
    return sum(_int(v) for k, v in details.items() if k == kind or k.endswith(suffix))


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _text(*values: Any) -> str:
    for value in values:
        if isinstance(value, str) and value:
            return value
    return ""


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
