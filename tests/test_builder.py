"""The one record builder (``make_record``) and pricing as a separate step."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import subprocess
import sys
import uuid
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pytest

from fluxgate_django.builder import (
    MAX_ERROR_MESSAGE,
    MAX_OBJECT_TEXT,
    MAX_TOKENS,
    REFUSED_KEY,
    TEXT_LIMITS,
    make_record,
)
from fluxgate_django.context import TrackingContext
from fluxgate_django.exceptions import (
    BudgetExceeded,
    BudgetStoreUnavailable,
    CallRefused,
    FluxGateError,
)
from fluxgate_django.models import Event
from fluxgate_django.money import MAX_EVENT_COST_USD, from_units, to_units
from fluxgate_django.pipeline import price_record
from fluxgate_django.records import CallInfo, CostSource, Status, Usage

GPT4O = CallInfo(provider="openai", operation="chat", requested_model="gpt-4o", model="gpt-4o")


def info(**fields):
    return CallInfo(**{"provider": "openai", "operation": "chat", "model": "gpt-4o", **fields})


def test_every_bounded_text_column_has_its_limit_in_the_builder():
    columns = {
        f.name: f.max_length
        for f in Event._meta.concrete_fields
        if f.get_internal_type() == "CharField" and f.name not in ("status", "source")
    }
    assert columns == TEXT_LIMITS


def test_text_is_cut_to_its_column_and_loses_nul_characters():
    record = make_record(
        info(model="m" * 500, finish_reason="stop\x00"),
        None,
        TrackingContext(feature="f" * 300, request_id="r\x00" * 400, step="s\x00tep"),
        error=RuntimeError("e\x00" * 5000),
    )
    assert record.model == "m" * 200
    assert record.feature == "f" * 100
    assert record.request_id == "r" * 255
    assert (record.step, record.finish_reason) == ("step", "stop")
    assert record.error_message == "e" * (MAX_ERROR_MESSAGE // 2)
    assert "\x00" not in record.error_message


def test_secrets_in_error_messages_are_masked():
    record = make_record(info(), None, error=ValueError("Incorrect API key: sk-abcdef123456"))
    assert record.error_message == "Incorrect API key: sk-***"
    assert record.error_type == "ValueError"


@pytest.mark.parametrize(
    ("fields", "ctx", "cost", "source"),
    [
        ({"status": Status.BUDGET_EXCEEDED}, {}, Decimal(0), CostSource.NOT_SENT),
        ({}, {"openrouter_cost": "0.5"}, Decimal("0.5"), CostSource.OPENROUTER),
        ({"reported_cost": Decimal("0.2")}, {}, Decimal("0.2"), CostSource.PROVIDER_REPORTED),
        ({"usage_reported": False}, {}, None, CostSource.USAGE_MISSING),
    ],
)
def test_costs_that_need_no_price_are_decided_by_the_builder(fields, ctx, cost, source):
    record = make_record(info(**fields), Usage(10, 10), TrackingContext().merge(**ctx))
    assert (record.cost_usd, record.cost_source) == (cost, source.value)
    assert price_record(record).cost_usd == cost  # pricing leaves a decided cost alone


def test_a_failed_call_without_usage_is_not_billed():
    record = make_record(info(status=Status.ERROR), None, error=RuntimeError("boom"))
    assert (record.cost_usd, record.cost_source) == (None, CostSource.NOT_BILLED.value)
    ingested = make_record(info(status=Status.ERROR), None, failed=True)
    assert ingested.cost_source == CostSource.NOT_BILLED.value


def test_pricing_fills_the_cost_only_where_it_is_not_decided():
    record = make_record(GPT4O, Usage(1000, 500, cache_read_tokens=200))
    assert (record.cost_usd, record.cost_source) == (None, "")
    price_record(record)
    # SDK-FACTS reference figure: 800 x 2.50 + 200 x 1.25 + 500 x 10 per million tokens.
    assert record.cost_usd == Decimal("0.00725")
    assert record.cost_source == CostSource.GENAI_PRICES.value
    assert record.cost_saved_usd == Decimal("0.00025")
    given = make_record(GPT4O, Usage(1000, 500), cost_usd=Decimal("0.3"))
    assert (price_record(given).cost_usd, given.cost_source) == (Decimal("0.3"), "client")


def test_one_hour_cache_writes_reach_the_record():
    usage = Usage(1000, 10, cache_write_tokens=600, cache_write_1h_tokens=400)
    record = make_record(info(provider="anthropic", model="claude-sonnet-4-6"), usage)
    assert (record.cache_write_tokens, record.cache_write_1h_tokens) == (600, 400)
    assert record.usage == usage
    assert record.tracking_result().usage == usage


def test_the_tracking_result_carries_usage_model_and_finish_reason():
    record = make_record(info(model="gpt-4o-2024-08-06", finish_reason="length"), Usage(3, 4))
    result = record.tracking_result()
    assert (result.model, result.finish_reason, result.usage) == (
        "gpt-4o-2024-08-06",
        "length",
        Usage(3, 4),
    )
    refused = make_record(info(status=Status.BUDGET_EXCEEDED)).tracking_result()
    assert refused.usage is None


def test_every_field_is_given_once_at_build_time():
    tracking_id = uuid.uuid4()
    record = make_record(
        GPT4O,
        Usage(),
        tracking_id=tracking_id,
        cache_hit=True,
        cost_usd=Decimal(0),
        cost_source=CostSource.RESPONSE_CACHE.value,
        cost_saved_usd=Decimal("0.01"),
        run_id="r" * 100,
        parent_run_id="p",
        fallback_attempt=2,
        budget_reservation={"counters": [1], "estimate_units": 5},
    )
    assert (record.tracking_id, record.cache_hit, record.fallback_attempt) == (tracking_id, True, 2)
    assert (record.cost_usd, record.cost_saved_usd) == (Decimal(0), Decimal("0.01"))
    assert (record.run_id, record.parent_run_id) == ("r" * 64, "p")
    assert record.budget_reservation == {"counters": [1], "estimate_units": 5}


def test_the_builder_works_without_a_configured_django():
    code = (
        "from fluxgate_django.builder import make_record\n"
        "from fluxgate_django.records import CallInfo, Usage\n"
        "r = make_record(CallInfo(provider='openai', operation='chat', model='gpt-4o'),"
        " Usage(1, 2))\n"
        "assert r.created_at.tzinfo is not None and r.cost_source == ''\n"
        "import sys; assert 'fluxgate_django.models' not in sys.modules\n"
    )
    env = {"PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


def test_refusals_share_one_base_and_an_outage_is_not_over_budget():
    assert issubclass(BudgetExceeded, CallRefused) and issubclass(CallRefused, FluxGateError)
    assert issubclass(BudgetStoreUnavailable, CallRefused)
    assert not issubclass(BudgetStoreUnavailable, BudgetExceeded)


@pytest.mark.parametrize(
    ("usd", "units"),
    [
        ("0.00000000005", 1),  # half a unit rounds away from zero, as numeric(20, 10) does
        ("0.00000000004", 0),
        ("0.00725", 72_500_000),
        ("1", 10_000_000_000),
    ],
)
def test_money_units_round_as_the_cost_column_does(usd, units):
    assert to_units(Decimal(usd)) == units
    assert from_units(units) == Decimal(usd).quantize(Decimal("1e-10"), ROUND_HALF_UP).normalize()


class Omit:
    """Shaped like the Anthropic SDK's sentinel (matched by its class name)."""

    def __bool__(self) -> bool:
        return False


class NotGiven(Omit):
    pass


def test_metadata_tags_and_content_are_plain_json_at_build_time():
    order = uuid.uuid4()
    ctx = TrackingContext(
        metadata={
            "order": order,
            "day": dt.date(2026, 2, 1),
            "amount": Decimal("1.10"),
            "inf": float("inf"),
            "status": Status.SUCCESS,
            "nested": {"k\x00": ["v\x00", b"bytes", (3,)]},
            7: "int key",
            "surrogate": "bad\ud800text",
            "gone": Omit(),
        },
        tags=("t\x00ag", Status.ERROR),
    )
    content = {"request": {"messages": [{"role": "user"}], "system": Omit(), "x": NotGiven()}}
    record = make_record(info(), Usage(1, 1), ctx, content=content)
    assert record.metadata == {
        "order": str(order),
        "day": "2026-02-01",
        "amount": "1.10",
        "inf": "inf",
        "status": "SUCCESS",
        "nested": {"k": ["v", "bytes", [3]]},
        "7": "int key",
        "surrogate": "bad?text",
    }
    assert record.tags == ["tag", "ERROR"]
    assert record.content == {"request": {"messages": [{"role": "user"}]}}
    json.dumps(record.metadata, allow_nan=False)  # plain JSON: no encoder needed


def test_deep_or_unknown_metadata_values_become_bounded_text():
    class Weird:
        def __str__(self) -> str:
            return "w" * 5000

    deep: Any = "leaf"
    for _ in range(100):
        deep = {"n": deep}
    loop: dict[str, Any] = {}
    loop["me"] = loop
    metadata = {"w": Weird(), "d": deep, "loop": loop}
    record = make_record(info(), Usage(1, 1), TrackingContext(metadata=metadata))
    assert record.metadata["w"] == "w" * MAX_OBJECT_TEXT
    assert len(json.dumps(record.metadata)) < 10_000


@pytest.mark.parametrize(
    ("fields", "usage", "refused"),
    [
        ({"reported_cost": Decimal("922337203.69")}, Usage(1, 1), "cost_usd"),
        ({"reported_cost": Decimal("-1")}, Usage(1, 1), "cost_usd"),
        ({"reported_cost": Decimal("NaN")}, Usage(1, 1), "cost_usd"),
        ({}, Usage(input_tokens=2**40, output_tokens=5), "input_tokens"),
        ({}, Usage(input_tokens=10, output_tokens=-3), "output_tokens"),
    ],
)
def test_costs_and_counts_no_column_or_counter_holds_are_refused_never_zero(
    fields, usage, refused, caplog
):
    with caplog.at_level(logging.WARNING, logger="fluxgate"):
        record = make_record(info(**fields), usage)
    assert (record.cost_usd, record.cost_source) == (None, CostSource.INVALID.value)
    assert price_record(record).cost_usd is None  # not priced from counts it refused
    assert refused in record.metadata[REFUSED_KEY]
    assert refused in caplog.text and str(record.tracking_id) in caplog.text
    assert all(0 <= n <= MAX_TOKENS for n in dataclasses.astuple(record.usage))


def test_a_given_cost_over_the_limit_is_refused_and_the_largest_allowed_is_kept():
    over = make_record(info(), Usage(1, 1), cost_usd=MAX_EVENT_COST_USD + Decimal("1e-10"))
    assert (over.cost_usd, over.cost_source) == (None, CostSource.INVALID.value)
    top = make_record(info(), Usage(1, 1), cost_usd=MAX_EVENT_COST_USD)
    assert (top.cost_usd, top.cost_source) == (MAX_EVENT_COST_USD, CostSource.CLIENT.value)
    saved = make_record(info(), Usage(1, 1), cost_saved_usd=Decimal("1e15"))
    assert saved.cost_saved_usd is None and "cost_saved_usd" in saved.metadata[REFUSED_KEY]
    # The largest event cost fits a budget counter (a 64-bit count of 1e-10 USD) hundreds
    # of times over, and the cost column (numeric(20, 10)).
    assert to_units(MAX_EVENT_COST_USD) * 900 < 2**63
    assert len(str(int(MAX_EVENT_COST_USD))) <= 20 - 10
