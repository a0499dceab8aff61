"""What every FluxGate API view shares, independent of the site's ``REST_FRAMEWORK`` settings.

A site may configure DRF for its own API (other authentication, a global permission,
versioning, pagination, a schema class); FluxGate's views set what they rely on
explicitly so they behave the same on every site. New FluxGate views (the LLM-service
endpoints too) should inherit :class:`FluxGateAPIView` or :class:`FluxGateViewSetMixin`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar

from django.apps import apps
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.validators import (
    EmailValidator,
    MaxValueValidator,
    MinValueValidator,
    RegexValidator,
)
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import force_instance, is_list_serializer
from drf_spectacular.utils import PolymorphicProxySerializer, extend_schema
from rest_framework import status
from rest_framework.authentication import SessionAuthentication
from rest_framework.exceptions import APIException, ParseError, ValidationError
from rest_framework.fields import CharField, DecimalField
from rest_framework.pagination import CursorPagination, PageNumberPagination
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.renderers import BrowsableAPIRenderer, JSONRenderer
from rest_framework.schemas.inspectors import ViewInspector
from rest_framework.views import APIView

from .authentication import ApiKeyAuthentication

F = TypeVar("F", bound=Callable[..., Any])


class RequestTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "Request body too large."
    default_code = "request_too_large"


class BoundedJSONParser(JSONParser):
    """DRF's JSON parser, bounded: a body over ``DATA_UPLOAD_MAX_MEMORY_SIZE`` is a 413 and
    JSON nested too deeply for Python's parser a 400 (both would otherwise be 500s).

    DRF reads the body as a stream, past Django's own size check of ``request.body``.
    """

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        body = stream.read() if limit is None else stream.read(limit + 1)
        if limit is not None and len(body) > limit:
            raise RequestTooLarge(
                f"Request body larger than {limit} bytes (DATA_UPLOAD_MAX_MEMORY_SIZE); "
                "send fewer events per batch."
            )
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            text = body.decode(encoding)
            if self.strict:
                return json.loads(text, parse_constant=_refuse_constant)
            return json.loads(text)
        except RecursionError as exc:
            raise ParseError("JSON parse error - nested too deeply.") from exc
        except (ValueError, LookupError) as exc:  # UnicodeDecodeError is a ValueError
            raise ParseError(f"JSON parse error - {exc}") from exc


def _refuse_constant(value: str) -> Any:
    raise ValueError(f"Out of range float value: {value}")


def renderer_classes() -> list[type]:
    """JSON, plus the browsable API when ``rest_framework`` is installed (its templates)."""
    if apps.is_installed("rest_framework"):
        return [JSONRenderer, BrowsableAPIRenderer]
    return [JSONRenderer]


def decimal_pattern(field: DecimalField) -> str:
    """The pattern of the decimal strings ``field`` takes: at most its whole digits
    (leading zeros aside) and decimal places, a sign only if it takes negative values, and
    nothing over its maximum when that is a power of ten (a cost's 1000000).
    drf-spectacular's also matches ``""``, ``"."`` and, for a field with ``min_value=0``,
    ``"-1"``."""
    places, whole = field.decimal_places, field.max_whole_digits
    minimum, maximum = field.min_value, field.max_value
    for validator in field.validators:
        limit = getattr(validator, "limit_value", None)
        limit = limit() if callable(limit) else limit
        if isinstance(validator, MinValueValidator):
            minimum = limit if minimum is None else max(minimum, limit)
        elif isinstance(validator, MaxValueValidator):
            maximum = limit if maximum is None else min(maximum, limit)
    sign = "" if minimum is not None and minimum >= 0 else "-?"
    fraction = rf"(?:\.\d{{0,{places}}})?" if places else ""
    only_fraction = rf"|\.\d{{1,{places}}}" if places else ""
    digits = whole
    top = ""  # the maximum itself, when the whole digits stop below it
    if maximum is not None and maximum > 0:
        exponent = Decimal(maximum).log10()
        if exponent == exponent.to_integral_value() and (whole is None or exponent < whole):
            digits = int(exponent)
            zeros = rf"(?:\.0{{0,{places}}})?" if places else ""
            top = "|1" + "0" * digits + zeros
    whole_part = r"\d+" if digits is None else rf"\d{{1,{digits}}}" if digits else "0"
    return rf"^{sign}0*(?:{whole_part}{fraction}{top}{only_fraction})$"


class FluxGateAutoSchema(AutoSchema):
    """drf-spectacular's ``AutoSchema``, more exact about what requests take: a nested
    list's (``many=True``) ``minItems`` / ``maxItems`` from its ``allow_empty``,
    ``min_length`` and ``max_length`` (drf-spectacular leaves them out; ``ListField``'s are
    there), a decimal string's pattern (:func:`decimal_pattern`), that a text which must
    not be blank needs more than whitespace (it is trimmed), and a required body when it
    is one of several serializers that each have a required field."""

    def _map_serializer_field(
        self, field: Any, direction: Any, bypass_extensions: bool = False
    ) -> Any:
        schema = super()._map_serializer_field(field, direction, bypass_extensions)
        if (
            isinstance(field, DecimalField)
            and isinstance(schema, dict)
            and schema.get("format") == "decimal"
            and "pattern" in schema
        ):
            schema["pattern"] = decimal_pattern(field)
        if (
            isinstance(field, CharField)
            and field.trim_whitespace
            and not field.allow_blank
            and isinstance(schema, dict)
            and schema.get("type") == "string"
            and not {"pattern", "format", "enum"} & set(schema)
            and not any(isinstance(v, (RegexValidator, EmailValidator)) for v in field.validators)
            and direction == "request"
        ):
            schema["pattern"] = r"\S"  # (trimmed first: blank is refused)
        if is_list_serializer(field) and isinstance(schema, dict) and direction == "request":
            if getattr(field, "min_length", None) is not None:
                schema["minItems"] = field.min_length
            elif not getattr(field, "allow_empty", True):
                schema["minItems"] = 1
            if getattr(field, "max_length", None) is not None:
                schema["maxItems"] = field.max_length
        return schema

    def _get_request_for_media_type(self, serializer: Any, direction: str = "request") -> Any:
        # A body that is one of several serializers (ingest: one event or a batch) is
        # required when each of them has a required field (drf-spectacular: never).
        schema, required = super()._get_request_for_media_type(serializer, direction)
        proxy = force_instance(serializer)
        if isinstance(proxy, PolymorphicProxySerializer) and not required and schema:
            choices = proxy.serializers
            choices = list(choices.values()) if isinstance(choices, dict) else list(choices)
            required = all(
                super(FluxGateAutoSchema, self)._get_request_for_media_type(choice, direction)[1]
                for choice in choices
            )
        return schema, required


def fluxgate_schema(**kwargs: Any) -> Callable[[F], F]:
    """drf-spectacular's ``extend_schema`` for a method of a FluxGate view.

    ``extend_schema`` on a method builds on the site's ``DEFAULT_SCHEMA_CLASS`` (DRF's own
    ``AutoSchema`` unless the site configured drf-spectacular), which drf-spectacular can't
    use; this builds on :class:`FluxGateAutoSchema` whatever the site's settings.
    Also usable as a value of ``extend_schema_view``.
    """

    def decorator(func: F) -> F:
        if not hasattr(func, "schema"):
            func.schema = FluxGateAutoSchema  # type: ignore[attr-defined]
        return extend_schema(**kwargs)(func)

    return decorator


class FluxGateSchema(ViewInspector):
    """:class:`FluxGateAutoSchema` for each view, whatever the site's
    ``DEFAULT_SCHEMA_CLASS`` (a descriptor, like DRF's ``DefaultSchema``)."""

    def __get__(self, instance: Any, owner: Any) -> Any:
        result = super().__get__(instance, owner)
        if not isinstance(result, FluxGateSchema):
            return result  # a schema set on the view instance (extend_schema on a method)
        inspector = FluxGateAutoSchema()
        inspector.view = instance
        return inspector


class _StrictPageSize:
    """``page_size``: a whole number from 1, larger ones giving ``max_page_size``; anything
    else is a 400 (DRF's paginators silently use their default page size instead)."""

    page_size: int
    page_size_query_param: str
    max_page_size: int

    def get_page_size(self, request: Any) -> int:
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        try:
            size = int(raw)
        except ValueError:
            size = 0
        if size < 1:
            raise ValidationError(
                {self.page_size_query_param: [f"A whole number from 1 to {self.max_page_size}."]}
            )
        return min(size, self.max_page_size)

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)  # type: ignore[misc]
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"]["minimum"] = 1
                parameter["description"] = (
                    f"Results per page (default {self.page_size}; larger than "
                    f"{self.max_page_size} gives {self.max_page_size})."
                )
            elif parameter["schema"].get("type") == "integer":  # page
                parameter["schema"]["minimum"] = 1
        return parameters


class PagePagination(_StrictPageSize, PageNumberPagination):
    """``?page=2&page_size=50`` (at most 1000), for the small lists (teams, budgets, keys).
    A page past the last is a 404."""

    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000


class EventCursorPagination(_StrictPageSize, CursorPagination):
    """Newest first, stable while events keep arriving: ``?cursor=...&page_size=...``.
    A cursor that is not one the API gave is a 404."""

    ordering = ("-created_at", "-id")
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000


class FluxGateViewSetMixin:
    """Authentication, permission, parsing, rendering and schema settings of FluxGate views.

    Session writes keep DRF's CSRF check (``SessionAuthentication`` enforces it).
    """

    authentication_classes = [ApiKeyAuthentication, SessionAuthentication]
    permission_classes = [IsAuthenticated]
    parser_classes = [BoundedJSONParser, FormParser, MultiPartParser]
    pagination_class = PagePagination
    versioning_class = None
    schema = FluxGateSchema()
    #: A detail URL takes any id (``budgets/1.5/``, ``events/not-a-uuid/``): the view
    #: answers the JSON 404 its schema documents, not the site's HTML one for an unknown URL.
    lookup_value_regex = "[^/]+"

    def get_renderers(self) -> list[Any]:
        return [renderer() for renderer in renderer_classes()]

    def handle_exception(self, exc: Exception) -> Any:
        if isinstance(exc, RequestDataTooBig):
            # DRF reads request.body (Django's size check) before our parser: answer the
            # same JSON 413 as the parser does, not Django's HTML 400.
            exc = RequestTooLarge(
                "Request body larger than DATA_UPLOAD_MAX_MEMORY_SIZE; send fewer events per batch."
            )
        return super().handle_exception(exc)  # type: ignore[misc]


class FluxGateAPIView(FluxGateViewSetMixin, APIView):
    """Base class for FluxGate's plain (non-viewset) API views."""
