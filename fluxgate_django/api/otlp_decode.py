"""OTLP/HTTP trace export bodies, decoded into plain :class:`Span` values, and the answers.

Both encodings OTLP/HTTP defines for ``ExportTraceServiceRequest``: binary protobuf
(``application/x-protobuf``, decoded with ``opentelemetry-proto``: the ``otlp`` extra)
and OTLP's JSON mapping (``application/json``, read here without that package): lower
camelCase keys (snake_case ones are read too, as protobuf's own JSON parser does), trace
and span ids as hex strings, 64-bit integers as JSON numbers or strings, enums as numbers
or names. A body gzip-compressed (``Content-Encoding: gzip``, what OTLP exporters send
with ``compression=gzip``) is decompressed within the same size bound as the body.

Django- and DRF-free: :mod:`.otlp` turns the spans into events and the errors into HTTP
answers. A body that is not an ``ExportTraceServiceRequest`` raises
:class:`OTLPDecodeError`; what is wrong with one span only (an id that is not hex, a time
that is not a number...) is noted on that span (``Span.problems``), so that one bad span
is rejected alone.
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from collections.abc import Callable, Iterator
from typing import Any

#: OTLP's span status code for an error (``STATUS_CODE_ERROR``).
STATUS_ERROR = 2
_STATUS_CODES = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}
#: Deepest nesting of array / key-value list attribute values read (deeper: dropped).
MAX_VALUE_DEPTH = 8


class InvalidValue:
    """An attribute value that is not what its type says (``{"intValue": "abc"}``): a
    span is refused for it only if FluxGate reads that attribute."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


class OTLPDecodeError(ValueError):
    """The body is not an OTLP ``ExportTraceServiceRequest`` (answered 400)."""


class BodyTooLarge(ValueError):
    """The body, once decompressed, is over the size limit (answered 413)."""


class UnsupportedEncoding(ValueError):
    """A ``Content-Encoding`` other than gzip, deflate or identity (answered 415)."""


@dataclasses.dataclass(slots=True)
class Span:
    """One span of an export, with its resource's and scope's attributes."""

    trace_id: str = ""  #: 32 lower-case hex digits ("" if absent or invalid)
    span_id: str = ""  #: 16 lower-case hex digits
    parent_span_id: str = ""
    name: str = ""
    start_ns: int = 0
    end_ns: int = 0
    attributes: dict[str, Any] = dataclasses.field(default_factory=dict)
    status_code: int = 0
    status_message: str = ""
    resource: dict[str, Any] = dataclasses.field(default_factory=dict)
    scope: str = ""
    #: What could not be read of this span (it is refused if it is an LLM call).
    problems: list[str] = dataclasses.field(default_factory=list)

    def attribute(self, *names: str) -> Any:
        """The first of ``names`` set on the span, else on its resource (None if neither)."""
        for source in (self.attributes, self.resource):
            for name in names:
                value = source.get(name)
                if value is not None and value != "":
                    return value
        return None


# -- bodies ----------------------------------------------------------------------------


def decompress(body: bytes, encoding: str, limit: int | None) -> bytes:
    """``body`` decoded from its ``Content-Encoding`` (gzip, deflate or none), at most
    ``limit`` bytes once decompressed (a small bomb must not fill the memory)."""
    codings = [c.strip().lower() for c in encoding.split(",") if c.strip()]
    for coding in reversed(codings):  # (applied in order: undone in reverse)
        if coding == "identity":
            continue
        if coding not in ("gzip", "x-gzip", "deflate"):
            raise UnsupportedEncoding(
                f"Content-Encoding {coding!r} is not supported (gzip, deflate or none)."
            )
        # gzip: a gzip header; deflate: zlib's (or, as some clients send it, raw).
        wbits = 16 + zlib.MAX_WBITS if coding != "deflate" else zlib.MAX_WBITS
        if coding == "deflate" and body[:1] and (body[0] & 0x0F) != 8:
            wbits = -zlib.MAX_WBITS
        inflater = zlib.decompressobj(wbits)
        try:
            out = inflater.decompress(body, limit + 1 if limit is not None else 0)
            if limit is not None and (len(out) > limit or inflater.unconsumed_tail):
                raise BodyTooLarge(
                    f"Body larger than {limit} bytes once decompressed "
                    "(DATA_UPLOAD_MAX_MEMORY_SIZE): export fewer spans per request."
                )
            out += inflater.flush()
        except zlib.error as exc:
            raise OTLPDecodeError(f"Body is not valid {coding} data: {exc}.") from exc
        if not inflater.eof:
            raise OTLPDecodeError(f"Body is not valid {coding} data: it is truncated.")
        body = out
    return body


def decode_protobuf(body: bytes) -> list[Span]:
    """The spans of a protobuf-encoded ``ExportTraceServiceRequest``."""
    from google.protobuf.message import DecodeError
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    try:
        request = ExportTraceServiceRequest.FromString(body)
    except (DecodeError, RecursionError, ValueError) as exc:
        raise OTLPDecodeError(
            f"Body is not a protobuf ExportTraceServiceRequest: {exc or 'invalid data'}."
        ) from exc
    spans = []
    for resource_spans in request.resource_spans:
        resource = _pb_attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope.name
            for pb in scope_spans.spans:
                span = Span(
                    name=pb.name,
                    start_ns=pb.start_time_unix_nano,
                    end_ns=pb.end_time_unix_nano,
                    status_code=int(pb.status.code),
                    status_message=pb.status.message,
                    resource=resource,
                    scope=scope,
                )
                span.trace_id = _binary_id(pb.trace_id, 16, "traceId", span.problems)
                span.span_id = _binary_id(pb.span_id, 8, "spanId", span.problems)
                if pb.parent_span_id:
                    span.parent_span_id = _binary_id(pb.parent_span_id, 8, "parentSpanId", [])
                span.attributes = _pb_attributes(pb.attributes)
                spans.append(span)
    return spans


def _binary_id(value: bytes, size: int, name: str, problems: list[str]) -> str:
    if len(value) != size or not any(value):
        problems.append(f"{name} must be {size} bytes, not all zero.")
        return ""
    return value.hex()


def _pb_attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: _pb_value(kv.value, 0) for kv in pairs}


def _pb_value(value: Any, depth: int) -> Any:
    kind = value.WhichOneof("value")
    if kind is None or kind == "bytes_value":
        return None
    if kind == "array_value":
        if depth >= MAX_VALUE_DEPTH:
            return None
        return [_pb_value(v, depth + 1) for v in value.array_value.values]
    if kind == "kvlist_value":
        if depth >= MAX_VALUE_DEPTH:
            return None
        return {kv.key: _pb_value(kv.value, depth + 1) for kv in value.kvlist_value.values}
    return getattr(value, kind)


def decode_json(body: bytes) -> list[Span]:
    """The spans of an ``ExportTraceServiceRequest`` in OTLP's JSON encoding."""
    try:
        data = json.loads(body)
    except RecursionError as exc:
        raise OTLPDecodeError("Body is not OTLP JSON: nested too deeply.") from exc
    except ValueError as exc:  # (UnicodeDecodeError too)
        raise OTLPDecodeError(f"Body is not JSON: {exc}.") from exc
    spans = []
    for r_index, resource_spans in _items(data, "", ("resourceSpans", "resource_spans")):
        resource_data = _object(resource_spans.get("resource"), f"{r_index}.resource")
        resource = _json_attributes(resource_data, f"{r_index}.resource")
        scopes = ("scopeSpans", "scope_spans", "instrumentationLibrarySpans")
        for s_index, scope_spans in _items(resource_spans, r_index, scopes):
            scope_data = scope_spans.get("scope") or scope_spans.get("instrumentationLibrary")
            scope = _object(scope_data, f"{s_index}.scope").get("name")
            for path, item in _items(scope_spans, s_index, ("spans",)):
                spans.append(_json_span(item, path, resource, scope))
    return spans


def _items(data: Any, path: str, keys: tuple[str, ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The objects of the list ``data[key]`` (the first key present), with their paths."""
    if not isinstance(data, dict):
        raise OTLPDecodeError(f"{path or 'Body'}: expected an object.")
    key = next((k for k in keys if k in data), keys[0])
    items = data.get(key)
    if items is None:
        return
    where = f"{path}.{key}" if path else key
    if not isinstance(items, list):
        raise OTLPDecodeError(f"{where}: expected a list.")
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise OTLPDecodeError(f"{where}[{index}]: expected an object.")
        yield f"{where}[{index}]", item


def _object(value: Any, path: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise OTLPDecodeError(f"{path}: expected an object.")
    return value


def _json_span(data: dict[str, Any], path: str, resource: dict[str, Any], scope: Any) -> Span:
    span = Span(resource=resource, scope=scope if isinstance(scope, str) else "")
    problems = span.problems
    get = _getter(data)
    span.trace_id = _hex_id(get("traceId", "trace_id"), 16, "traceId", problems)
    span.span_id = _hex_id(get("spanId", "span_id"), 8, "spanId", problems)
    parent = get("parentSpanId", "parent_span_id")
    if parent:
        span.parent_span_id = _hex_id(parent, 8, "parentSpanId", [])
    name = get("name")
    span.name = name if isinstance(name, str) else ""
    span.start_ns = _nanos(get("startTimeUnixNano", "start_time_unix_nano"), "start", problems)
    span.end_ns = _nanos(get("endTimeUnixNano", "end_time_unix_nano"), "end", problems)
    span.attributes = _json_attributes(data, path)
    status = _object(get("status"), f"{path}.status")
    code = status.get("code", 0)
    if isinstance(code, str):
        code = _STATUS_CODES.get(code, int(code) if code.isdigit() else 0)
    span.status_code = code if isinstance(code, int) and not isinstance(code, bool) else 0
    message = status.get("message")
    span.status_message = message if isinstance(message, str) else ""
    return span


def _getter(data: dict[str, Any]) -> Callable[..., Any]:
    def get(*keys: str) -> Any:
        for key in keys:
            if key in data:
                return data[key]
        return None

    return get


def _hex_id(value: Any, size: int, name: str, problems: list[str]) -> str:
    text = value.lower() if isinstance(value, str) else ""
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != size or not any(raw):
        problems.append(f"{name} must be {2 * size} hex digits, not all zero; got {value!r}.")
        return ""
    return text


def _nanos(value: Any, which: str, problems: list[str]) -> int:
    if value is None:
        return 0
    number = _integer(value)
    if number is None or number < 0:
        problems.append(f"{which}TimeUnixNano must be a whole number of nanoseconds.")
        return 0
    return number


def _integer(value: Any) -> int | None:
    """A JSON int64: a number or a decimal string (proto3's JSON mapping)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def _json_attributes(data: dict[str, Any], path: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    for where, pair in _items(data, path, ("attributes",)):
        key = pair.get("key")
        if not isinstance(key, str):
            raise OTLPDecodeError(f"{where}.key: expected a string.")
        attributes[key] = _json_value(pair.get("value"), 0)
    return attributes


def _json_value(value: Any, depth: int) -> Any:
    """An ``AnyValue`` in JSON (``{"stringValue": ...}``...), as a Python value."""
    if not isinstance(value, dict) or not value:
        return None
    kind, raw = next(iter(value.items()))
    if kind in ("stringValue", "string_value"):
        return raw if isinstance(raw, str) else None
    if kind in ("boolValue", "bool_value"):
        return raw if isinstance(raw, bool) else None
    if kind in ("intValue", "int_value"):
        number = _integer(raw)
        return InvalidValue(f"intValue {raw!r}") if number is None else number
    if kind in ("doubleValue", "double_value"):
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return float(raw)
        try:
            return float(raw)  # ("NaN", "Infinity", or a number as a string)
        except (TypeError, ValueError):
            return InvalidValue(f"doubleValue {raw!r}")
    if kind in ("arrayValue", "array_value", "kvlistValue", "kvlist_value"):
        if depth >= MAX_VALUE_DEPTH or not isinstance(raw, dict):
            return None
        items = raw.get("values") or []
        if not isinstance(items, list):
            return None
        if kind.startswith("array"):
            return [_json_value(v, depth + 1) for v in items]
        return {
            kv["key"]: _json_value(kv.get("value"), depth + 1)
            for kv in items
            if isinstance(kv, dict) and isinstance(kv.get("key"), str)
        }
    return None  # (bytesValue: no attribute FluxGate reads is bytes)


# -- answers -----------------------------------------------------------------------------


def export_response(rejected: int, message: str, *, protobuf: bool) -> bytes:
    """An ``ExportTraceServiceResponse``: empty, or with ``partial_success``."""
    if protobuf:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceResponse,
        )

        response = ExportTraceServiceResponse()
        if rejected or message:
            response.partial_success.rejected_spans = rejected
            response.partial_success.error_message = message
        return response.SerializeToString()
    if not (rejected or message):
        return b"{}"
    partial = {"rejectedSpans": str(rejected), "errorMessage": message}
    return json.dumps({"partialSuccess": partial}).encode()


#: ``google.rpc.Code.INVALID_ARGUMENT``
INVALID_ARGUMENT = 3


def status_body(code: int, message: str, *, protobuf: bool) -> bytes:
    """A ``google.rpc.Status`` (what OTLP/HTTP answers a failed request with), encoded
    by hand: ``googleapis-common-protos`` is not needed for two fields."""
    if not protobuf:
        return json.dumps({"code": code, "message": message}).encode()
    text = message.encode()
    return b"\x08" + _varint(code) + b"\x12" + _varint(len(text)) + text


def _varint(number: int) -> bytes:
    out = bytearray()
    while True:
        byte = number & 0x7F
        number >>= 7
        if number:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
