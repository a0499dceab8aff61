"""A serializer compiled into plain functions: the ingest API's per-event validation
without DRF's per-field machinery (which costs ~40 µs a field, ~1.5 ms an event).

:func:`compile_serializer` reads a ``Serializer``'s fields once and makes one small
function per field for the values that are common and unambiguous: a JSON string for a
text field, an integer for an integer field, a listed string for a choice... Such a value
is converted exactly as the DRF field converts it. Anything else (a wrong type, a value
out of range, a string to be coerced to a number, a NUL character) makes the compiled
validator give up on the object and return ``None``; the caller then runs the serializer
itself, which decides, and gives the field errors. So the outcome is always the
serializer's, field errors included: only the time differs. ``tests/test_api_ingest_edges.py``
checks that on generated input.

Fields of a type not known here are validated by the field's own ``run_validation``;
``overrides`` gives a field its own function (for one that reads the serializer's context,
such as the team, or that can be checked faster as a whole).
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import (
    MaxLengthValidator,
    MaxValueValidator,
    MinLengthValidator,
    MinValueValidator,
    ProhibitNullCharactersValidator,
)
from rest_framework import serializers
from rest_framework.fields import SkipField, empty
from rest_framework.validators import ProhibitSurrogateCharactersValidator

#: A converter: the value of one field (present in the input) and the serializer context →
#: the validated value; raises :class:`Fallback` when the serializer must decide.
Converter = Callable[[Any, Mapping[str, Any]], Any]

#: Characters no text field stores (``ProhibitNullCharactersValidator``,
#: ``ProhibitSurrogateCharactersValidator``).
UNSTORABLE_TEXT = re.compile("[\x00\ud800-\udfff]")
_TEXT_VALIDATORS = (
    MaxLengthValidator,
    MinLengthValidator,
    ProhibitNullCharactersValidator,
    ProhibitSurrogateCharactersValidator,
)
_NUMBER_VALIDATORS = (MaxValueValidator, MinValueValidator)


class Fallback(Exception):
    """The compiled validator can't decide this value: the serializer must."""


FALLBACK = Fallback()


def _bounds(field: Any) -> tuple[Any, Any]:
    return getattr(field, "min_value", None), getattr(field, "max_value", None)


def _only_validators(field: Any, kinds: tuple[type, ...]) -> bool:
    return all(type(v) in kinds for v in field.validators)


def compile_text(field: serializers.CharField) -> Converter | None:
    if not _only_validators(field, _TEXT_VALIDATORS):
        return None
    trim, allow_blank, allow_null = field.trim_whitespace, field.allow_blank, field.allow_null
    max_length, min_length = field.max_length, field.min_length

    def convert(value: Any, context: Mapping[str, Any]) -> Any:
        if type(value) is str:
            if trim:
                value = value.strip()
            if not value:
                if allow_blank:
                    return ""
                raise FALLBACK
            if (
                "\x00" in value
                or (not value.isascii() and UNSTORABLE_TEXT.search(value))
                or (max_length is not None and len(value) > max_length)
                or (min_length is not None and len(value) < min_length)
            ):
                raise FALLBACK
            return value
        if value is None and allow_null:
            return None
        raise FALLBACK

    return convert


def compile_integer(field: serializers.IntegerField) -> Converter | None:
    low, high = _bounds(field)
    if not _only_validators(field, _NUMBER_VALIDATORS):
        return None
    allow_null = field.allow_null

    def convert(value: Any, context: Mapping[str, Any]) -> Any:
        if type(value) is int:
            if (low is not None and value < low) or (high is not None and value > high):
                raise FALLBACK
            return value
        if value is None and allow_null:
            return None
        raise FALLBACK

    return convert


def compile_float(field: serializers.FloatField) -> Converter | None:
    low, high = _bounds(field)
    if not _only_validators(field, _NUMBER_VALIDATORS):
        return None
    allow_null = field.allow_null

    def convert(value: Any, context: Mapping[str, Any]) -> Any:
        kind = type(value)
        if kind is float or kind is int:
            try:
                number = float(value)
            except OverflowError:
                raise FALLBACK from None
            if (
                not math.isfinite(number)
                or (low is not None and number < low)
                or (high is not None and number > high)
            ):
                raise FALLBACK
            return number
        if value is None and allow_null:
            return None
        raise FALLBACK

    return convert


def compile_boolean(field: serializers.BooleanField) -> Converter | None:
    if field.validators:
        return None
    allow_null = field.allow_null

    def convert(value: Any, context: Mapping[str, Any]) -> Any:
        if type(value) is bool:
            return value
        if value is None and allow_null:
            return None
        raise FALLBACK

    return convert


def _choice(field: serializers.ChoiceField) -> Converter | None:
    if field.validators:
        return None
    choices = dict(field.choice_strings_to_values)
    allow_null = field.allow_null

    def convert(value: Any, context: Mapping[str, Any]) -> Any:
        if type(value) is str:
            try:
                return choices[value]
            except KeyError:
                raise FALLBACK from None
        if value is None and allow_null:
            return None
        raise FALLBACK

    return convert


#: A UUID in its canonical form (8-4-4-4-12 hex digits), as JSON Schema's ``uuid`` format.
CANONICAL_UUID = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)


def compile_uuid(field: serializers.UUIDField, *, canonical: bool = False) -> Converter | None:
    """``canonical``: only the 8-4-4-4-12 form (``uuid.UUID`` takes others too)."""
    if field.validators:
        return None
    allow_null = field.allow_null

    def convert(value: Any, context: Mapping[str, Any]) -> Any:
        if type(value) is str:
            if canonical and not CANONICAL_UUID.fullmatch(value):
                raise FALLBACK
            try:
                return uuid.UUID(value)
            except ValueError:
                raise FALLBACK from None
        if value is None and allow_null:
            return None
        raise FALLBACK

    return convert


def _list(field: serializers.ListField) -> Converter | None:
    child = _field_converter(field.child)
    if child is None:
        return None
    if not _only_validators(field, (MaxLengthValidator, MinLengthValidator)):
        return None
    max_length, min_length, allow_empty = field.max_length, field.min_length, field.allow_empty
    allow_null = field.allow_null

    def convert(value: Any, context: Mapping[str, Any]) -> Any:
        if type(value) is list:
            n = len(value)
            if (
                (not n and not allow_empty)
                or (max_length is not None and n > max_length)
                or (min_length is not None and n < min_length)
            ):
                raise FALLBACK
            return [child(item, context) for item in value]
        if value is None and allow_null:
            return None
        raise FALLBACK

    return convert


#: Exact field classes (not subclasses, which may convert otherwise) → their compiler.
_COMPILERS: dict[type, Callable[[Any], Converter | None]] = {
    serializers.CharField: compile_text,
    serializers.IntegerField: compile_integer,
    serializers.FloatField: compile_float,
    serializers.BooleanField: compile_boolean,
    serializers.ChoiceField: _choice,
    serializers.UUIDField: compile_uuid,
    serializers.ListField: _list,
}


def register(field_class: type, compiler: Callable[[Any], Converter | None]) -> None:
    """Compile fields of ``field_class`` (exactly) with ``compiler``."""
    _COMPILERS[field_class] = compiler


def _field_converter(field: Any) -> Converter | None:
    compiler = _COMPILERS.get(type(field))
    return compiler(field) if compiler is not None else None


def _converter(field: Any) -> Converter:
    """The fast converter of ``field``, else its own ``run_validation`` (context-free)."""
    fast = _field_converter(field)
    if fast is not None:
        return fast

    def convert(value: Any, context: Mapping[str, Any]) -> Any:
        try:
            return field.run_validation(value)
        except (serializers.ValidationError, SkipField):
            raise FALLBACK from None

    return convert


def compile_serializer(
    serializer_class: type[serializers.Serializer],
    overrides: Mapping[str, Converter] | None = None,
) -> Callable[[Any, Mapping[str, Any]], dict[str, Any] | None]:
    """A function ``(data, context) → validated data``, or ``None`` where the serializer
    must decide (see the module's docstring).

    An override replaces both the field's conversion and its ``validate_<field>`` method
    (an absent value still gets the field's default).
    The serializer's ``validate_<field>`` methods and ``validate()`` are called on a
    serializer made without context, so they must not read it.

    The work is done once here: the defaults of absent fields are computed up front (a
    callable default is called per object, and a ``validate_<field>`` method still sees
    the default, as in DRF), so validating an object costs one converter call per field
    it holds.
    """
    overrides = dict(overrides or {})
    prototype = serializer_class()
    plan: dict[str, tuple[Converter, Any]] = {}
    required: list[str] = []
    constant_defaults: dict[str, Any] = {}
    dynamic_defaults: list[tuple[str, Any, Any]] = []  # (name, field, validate method)
    factories: list[tuple[str, Callable[[], Any]]] = []  # (name, callable default)
    for name, field in prototype.fields.items():
        if field.read_only:
            continue
        if field.source != name or getattr(field, "partial", False):
            raise TypeError(f"{serializer_class.__name__}.{name}: only plain fields compile")
        validate_method = (
            None if name in overrides else getattr(prototype, f"validate_{name}", None)
        )
        if field.required:
            required.append(name)  # absent: the serializer says "required"
        elif field.default is not empty:
            default = field.default
            if (
                callable(default)
                and validate_method is None
                and not getattr(default, "requires_context", False)
            ):
                factories.append((name, default))  # (what field.get_default() calls)
            elif callable(default) or validate_method is not None:
                dynamic_defaults.append((name, field, validate_method))
            else:
                constant_defaults[name] = field.get_default()
        plan[name] = (overrides.get(name) or _converter(field), validate_method)
    validate_all = prototype.validate
    calls_validate = type(prototype).validate is not serializers.Serializer.validate

    def validate(data: Any, context: Mapping[str, Any]) -> dict[str, Any] | None:
        if type(data) is not dict:
            return None
        for name in required:
            if name not in data:
                return None
        out = constant_defaults.copy()
        for name, factory in factories:
            if name not in data:
                out[name] = factory()
        try:
            for name, field, validate_method in dynamic_defaults:
                if name not in data:
                    value = field.get_default()
                    out[name] = value if validate_method is None else validate_method(value)
            for name, value in data.items():
                step = plan.get(name)
                if step is None:
                    continue  # not a field: ignored, as the serializer ignores it
                convert, validate_method = step
                value = convert(value, context)
                out[name] = value if validate_method is None else validate_method(value)
            return validate_all(out) if calls_validate else out
        except (Fallback, serializers.ValidationError, DjangoValidationError, SkipField):
            return None

    return validate
