"""What every FluxGate API view shares, independent of the site's ``REST_FRAMEWORK`` settings.

A site may configure DRF for its own API (other authentication, a global permission,
versioning, pagination, a schema class); FluxGate's views set what they rely on
explicitly so they behave the same on every site. New FluxGate views (the LLM-service
endpoints too) should inherit :class:`FluxGateAPIView` or :class:`FluxGateViewSetMixin`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from django.apps import apps
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.authentication import SessionAuthentication
from rest_framework.exceptions import APIException, ParseError
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


def fluxgate_schema(**kwargs: Any) -> Callable[[F], F]:
    """drf-spectacular's ``extend_schema`` for a method of a FluxGate view.

    ``extend_schema`` on a method builds on the site's ``DEFAULT_SCHEMA_CLASS`` (DRF's own
    ``AutoSchema`` unless the site configured drf-spectacular), which drf-spectacular can't
    use; this builds on drf-spectacular's ``AutoSchema`` whatever the site's settings.
    Also usable as a value of ``extend_schema_view``.
    """

    def decorator(func: F) -> F:
        if not hasattr(func, "schema"):
            func.schema = AutoSchema  # type: ignore[attr-defined]
        return extend_schema(**kwargs)(func)

    return decorator


class FluxGateSchema(ViewInspector):
    """drf-spectacular's ``AutoSchema`` for each view, whatever the site's
    ``DEFAULT_SCHEMA_CLASS`` (a descriptor, like DRF's ``DefaultSchema``)."""

    def __get__(self, instance: Any, owner: Any) -> Any:
        result = super().__get__(instance, owner)
        if not isinstance(result, FluxGateSchema):
            return result  # a schema set on the view instance (extend_schema on a method)
        inspector = AutoSchema()
        inspector.view = instance
        return inspector


class PagePagination(PageNumberPagination):
    """``?page=2&page_size=50`` (at most 1000), for the small lists (teams, budgets, keys)."""

    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000


class EventCursorPagination(CursorPagination):
    """Newest first, stable while events keep arriving: ``?cursor=...&page_size=...``."""

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
