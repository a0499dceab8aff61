"""tracking_context(): how context fields combine, nest and propagate."""

from __future__ import annotations

import contextvars
import threading
from decimal import Decimal
from typing import Any

import pytest

from fluxgate_django import current_context, tracking_context
from fluxgate_django.context import EMPTY_CONTEXT, TrackingContext, reset_context, set_context


def test_empty_by_default() -> None:
    assert current_context() is EMPTY_CONTEXT
    assert current_context().as_dict() == {}


def test_inner_wins_and_outer_is_restored() -> None:
    with tracking_context(feature="outer", user="u1", team="t1") as outer:
        with tracking_context(feature="inner", step="retrieve") as inner:
            assert current_context() is inner
            assert inner.feature == "inner"
            assert inner.step == "retrieve"
            # fields the inner block does not set are inherited
            assert (inner.user, inner.team) == ("u1", "t1")
        assert current_context() is outer
        assert outer.feature == "outer"
        assert outer.step is None
    assert current_context() is EMPTY_CONTEXT


def test_none_does_not_clear_an_outer_value() -> None:
    with tracking_context(feature="outer"), tracking_context(feature=None, step="s"):
        assert current_context().feature == "outer"


def test_metadata_is_merged_inner_wins() -> None:
    with (
        tracking_context(metadata={"a": 1, "b": 1}),
        tracking_context(metadata={"b": 2, "c": 3}),
    ):
        assert current_context().metadata == {"a": 1, "b": 2, "c": 3}
    assert current_context().metadata == {}


def test_tags_are_combined_without_duplicates() -> None:
    with tracking_context(tags=["a", "b"]):
        with tracking_context(tags=["b", "c"]):
            assert current_context().tags == ("a", "b", "c")
        with tracking_context(tags="single"):
            assert current_context().tags == ("a", "b", "single")
        assert current_context().tags == ("a", "b")


def test_openrouter_cost_becomes_decimal() -> None:
    with tracking_context(openrouter_cost=0.0125):
        assert current_context().openrouter_cost == Decimal("0.0125")


def test_unknown_field_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="featur") as info, tracking_context(featur="typo"):
        pass  # pragma: no cover
    assert "feature" in str(info.value)  # the known fields are listed
    assert current_context() is EMPTY_CONTEXT


def test_context_is_frozen() -> None:
    with tracking_context(feature="f") as ctx, pytest.raises(AttributeError):
        ctx.feature = "other"  # type: ignore[misc]


def test_decorator_use() -> None:
    calls: list[TrackingContext] = []

    @tracking_context(feature="decorated", tags=["d"])
    def work(step: str) -> str:
        with tracking_context(step=step):
            calls.append(current_context())
        return "done"

    assert work("one") == "done"
    with tracking_context(user="u1"):
        work("two")
    assert current_context() is EMPTY_CONTEXT
    assert [(c.feature, c.step, c.tags, c.user) for c in calls] == [
        ("decorated", "one", ("d",), None),
        ("decorated", "two", ("d",), "u1"),  # merged onto the caller's context per call
    ]


def test_reset_when_block_raises() -> None:
    with pytest.raises(ValueError), tracking_context(feature="f"):
        raise ValueError
    assert current_context() is EMPTY_CONTEXT


def test_set_and_reset_context() -> None:
    token = set_context(TrackingContext(feature="set"))
    try:
        assert current_context().feature == "set"
    finally:
        reset_context(token)
    assert current_context() is EMPTY_CONTEXT


def test_threads_start_empty_unless_given_a_copy() -> None:
    seen: dict[str, Any] = {}

    def read(name: str) -> None:
        seen[name] = current_context().feature

    with tracking_context(feature="main"):
        plain = threading.Thread(target=read, args=("plain",))
        copied = threading.Thread(target=contextvars.copy_context().run, args=(read, "copied"))
        for t in (plain, copied):
            t.start()
            t.join()
    assert seen == {"plain": None, "copied": "main"}


def test_overlay_and_as_dict() -> None:
    base = EMPTY_CONTEXT.merge(feature="f", metadata={"a": 1}, tags=["x"])
    bound = EMPTY_CONTEXT.merge(user="u", metadata={"b": 2}, tags=["y"])
    combined = base.overlay(bound)
    assert combined.as_dict() == {
        "feature": "f",
        "user": "u",
        "metadata": {"a": 1, "b": 2},
        "tags": ("x", "y"),
    }
    assert base.overlay(EMPTY_CONTEXT) is base
    assert EMPTY_CONTEXT.overlay(bound) is bound


def test_tracking_context_decorates_async_functions() -> None:
    import asyncio
    import inspect

    from fluxgate_django import current_context, tracking_context

    @tracking_context(feature="report")
    async def build(step: str) -> tuple[str | None, str | None]:
        await asyncio.sleep(0)
        with tracking_context(step=step):
            await asyncio.sleep(0.001)
            ctx = current_context()
            return ctx.feature, ctx.step

    assert inspect.iscoroutinefunction(build)  # Django still sees an async view

    async def main():
        return await asyncio.gather(build("a"), build("b"))

    assert asyncio.run(main()) == [("report", "a"), ("report", "b")]
    assert current_context().feature is None
