"""Issue 15, item 10: ``manage.py check`` catches the typos that do damage quietly."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from tests.test_checks import BASE, fluxgate_messages, ids

ROOT = Path(__file__).resolve().parent.parent


def only(messages: list[Any], id: str) -> Any:
    found = [m for m in messages if m.id == id]
    assert len(found) == 1, [(m.id, m.msg) for m in messages]
    return found[0]


# -- unknown nested keys: fluxgate.E012 ------------------------------------------------------


def test_a_mistyped_base_url_is_an_error_saying_where_calls_would_go():
    messages = fluxgate_messages(
        PROVIDERS={"openai": {"api_key": "sk-test", "base_ulr": "http://127.0.0.1:9/v1"}}
    )
    assert ids(messages) == ["fluxgate.E012"]
    error = messages[0]
    assert error.is_serious()
    assert "'base_ulr'" in error.msg and "'openai'" in error.msg
    assert "provider's own API" in error.msg
    assert "Did you mean 'base_url'?" in error.hint


@pytest.mark.parametrize(
    ("setting", "typo", "meant"),
    [
        ({"RUNAWAY_DETECTION": {"enable": False}}, "enable", "enabled"),
        ({"CIRCUIT_BREAKER": {"failure": 5}}, "failure", "failures"),
        ({"RESPONSE_CACHE": {"tll": 60}}, "tll", "ttl"),
        (
            {"ROUTES": {"chat": {"models": ["gpt-4o"], "timout": 5}}},
            "timout",
            "timeout",
        ),
        ({"PROVIDERS": {"anthropic": {"time_out": 5}}}, "time_out", "timeout"),
    ],
)
def test_unknown_nested_keys_are_errors_with_the_nearest_key(setting, typo, meant):
    error = only(fluxgate_messages(**setting), "fluxgate.E012")
    assert f"'{typo}'" in error.msg
    assert f"Did you mean '{meant}'?" in error.hint


def test_every_real_nested_option_is_accepted():
    assert (
        fluxgate_messages(
            PROVIDERS={
                "openai": {"api_key": "k", "base_url": None, "timeout": 10, "max_retries": 1},
                "anthropic": {"api_key": "k", "base_url": "http://localhost:1", "timeout": 5},
                "gemini": {"api_key": "k", "vertexai": False, "project": "p", "location": "l"},
                "vllm": {"type": "openai", "base_url": "http://localhost:8000/v1"},
            },
            CIRCUIT_BREAKER={
                "failures": 3,
                "cooldown_seconds": 60,
                "window_seconds": 30,
                "cache_alias": "default",
            },
            RESPONSE_CACHE={"alias": "default", "ttl": 0},
            RUNAWAY_DETECTION={
                "enabled": True,
                "window_minutes": 5,
                "baseline_minutes": 60,
                "factor": 5,
                "min_spend_usd": "1",
                "block_minutes": 0,
                "cache_alias": "default",
            },
            ROUTES={
                "smart": {
                    "models": ["gpt-4o-mini", "claude-sonnet-4-6"],
                    "strategy": "priority",
                    "timeout": 20,
                    "small_request_chars": 400,
                    "small_request_tokens": 300,
                }
            },
        )
        == []
    )


def test_gemini_client_options_belong_to_gemini_only():
    error = only(fluxgate_messages(PROVIDERS={"openai": {"vertexai": True}}), "fluxgate.E012")
    assert "'vertexai'" in error.msg


# -- models the price data doesn't know: fluxgate.W004 ---------------------------------------


def test_a_mistyped_model_in_a_route_suggests_the_nearest_name():
    messages = fluxgate_messages(
        ROUTES={"chat": {"models": ["openai/gpt-4o-mni", "claude-sonnet-4-6"]}}
    )
    warning = only(messages, "fluxgate.W004")
    assert not warning.is_serious()
    assert "'openai/gpt-4o-mni'" in warning.msg and "route 'chat'" in warning.msg
    assert "unpriced" in warning.msg
    assert "Did you mean 'openai/gpt-4o-mini'" in warning.hint
    assert "ModelPrice" in warning.hint and "SILENCED_SYSTEM_CHECKS" in warning.hint


def test_a_mistyped_model_alias_is_warned_about_once():
    messages = fluxgate_messages(
        MODELS={"fast": "anthropic/claude-haiku-4-6-typo"},
        ROUTES={"chat": {"models": ["fast"]}, "other": {"models": ["fast", "gpt-4o"]}},
    )
    warning = only(messages, "fluxgate.W004")
    assert "model alias 'fast'" in warning.msg
    assert "anthropic/claude-haiku" in warning.hint


def test_known_and_self_hosted_models_are_not_warned_about():
    assert (
        fluxgate_messages(
            PROVIDERS={"vllm": {"type": "openai", "base_url": "http://localhost:8000/v1"}},
            MODELS={"fast": "openai/gpt-4o-mini", "dated": "openai/gpt-4o-2024-08-06"},
            ROUTES={
                "chat": {"models": ["fast", "gemini-2.5-flash", "vllm/my-own-llama"]},
            },
        )
        == []
    )


def test_silencing_the_model_warning_works(capsys):
    fluxgate = {**BASE, "ROUTES": {"chat": {"models": ["openai/gpt-4o-mni"]}}}
    with override_settings(FLUXGATE=fluxgate, SILENCED_SYSTEM_CHECKS=["fluxgate.W004"]):
        call_command("check")
    silenced = capsys.readouterr()
    assert "fluxgate.W004" not in silenced.out + silenced.err
    with override_settings(FLUXGATE=fluxgate):
        call_command("check")
    shown = capsys.readouterr()
    assert "fluxgate.W004" in shown.out + shown.err


# -- values: fluxgate.E013, E014, E015, W005 -------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "name"),
    [
        ({"BUDGET_FAIL_OPEN": "false"}, "BUDGET_FAIL_OPEN"),
        ({"STORE_CONTENT": "False"}, "STORE_CONTENT"),
        ({"JOURNAL": "off"}, "JOURNAL"),
        ({"RAISE_ERRORS": 1}, "RAISE_ERRORS"),
        ({"WEBHOOK_ALLOW_HTTP": "false"}, "WEBHOOK_ALLOW_HTTP"),  # (would allow http)
        ({"RUNAWAY_DETECTION": {"enabled": "no"}}, "'enabled'"),
    ],
)
def test_a_string_where_a_boolean_is_meant_is_an_error(setting, name):
    error = only(fluxgate_messages(**setting), "fluxgate.E013")
    assert error.is_serious() and name in error.msg and "True or False" in error.msg


def test_budget_fail_open_false_as_a_string_says_it_reads_as_true():
    error = only(fluxgate_messages(BUDGET_FAIL_OPEN="false"), "fluxgate.E013")
    assert "reads as true" in error.msg


@pytest.mark.parametrize("days", [-5, "30", 7.5, True])
def test_a_bad_retention_is_an_error(days):
    error = only(fluxgate_messages(RETENTION_DAYS=days), "fluxgate.E014")
    assert error.is_serious() and repr(days) in error.msg
    assert "delete every event" in error.hint


@pytest.mark.parametrize("days", [None, 0, 30])
def test_a_good_retention_is_fine(days):
    assert fluxgate_messages(RETENTION_DAYS=days) == []


def test_unknown_team_takes_three_values():
    for mode in ("warn", "error", "ignore"):
        assert fluxgate_messages(UNKNOWN_TEAM=mode) == []
    error = only(fluxgate_messages(UNKNOWN_TEAM="raise"), "fluxgate.E015")
    assert "'raise'" in error.msg


def test_a_provider_name_like_a_built_in_one_without_a_base_url_is_warned_about():
    warning = only(fluxgate_messages(PROVIDERS={"opneai": {"api_key": "k"}}), "fluxgate.W005")
    assert "'opneai'" in warning.msg and "Did you mean 'openai'?" in warning.hint
    custom = {"openrouter": {"base_url": "https://openrouter.ai/api/v1"}}
    assert fluxgate_messages(PROVIDERS=custom) == []


def test_manage_py_check_fails_on_the_dangerous_typos():
    with (
        override_settings(FLUXGATE={**BASE, "BUDGET_FAIL_OPEN": "false", "RETENTION_DAYS": -5}),
        pytest.raises(SystemCheckError) as failed,
    ):
        call_command("check")
    assert "fluxgate.E013" in str(failed.value) and "fluxgate.E014" in str(failed.value)


def test_the_new_ids_are_used_by_no_other_check():
    """Each id is raised in one place only (an id names one problem)."""
    source = (ROOT / "fluxgate_django" / "checks_settings.py").read_text()
    new_ids = set(re.findall(r'id="(fluxgate\.[EW]\d{3})"', source)) | set(
        re.findall(r'"(fluxgate\.[EW]\d{3})"', source)
    )
    assert new_ids == {f"fluxgate.E0{n}" for n in range(12, 19)} | {
        "fluxgate.W004",
        "fluxgate.W005",
    }
    for path in (ROOT / "fluxgate_django").rglob("*.py"):
        if path.name == "checks_settings.py":
            continue
        raised = set(re.findall(r'"(fluxgate\.[EW]\d{3})"', path.read_text()))
        assert not raised & new_ids, (path, raised & new_ids)


@pytest.mark.parametrize(
    "fluxgate, error",
    [
        ({"AUTH_FAILURE_RATE": "20 per minute"}, "fluxgate.E016"),
        ({"AUTH_FAILURE_RATE": "x/min"}, "fluxgate.E016"),
        ({"WEBHOOK_ALLOWED_HOSTS": "hooks.internal"}, "fluxgate.E017"),
        ({"WEBHOOK_ALLOWED_HOSTS": [10]}, "fluxgate.E017"),
        ({"METRICS_ALLOWED_IPS": "10.0.0.5"}, "fluxgate.E018"),
        ({"METRICS_ALLOWED_IPS": ["10.0.0.5", "prometheus.internal"]}, "fluxgate.E018"),
    ],
)
def test_bad_auth_rate_and_webhook_hosts_are_errors(fluxgate, error):
    from django.core.checks import run_checks
    from django.test import override_settings

    with override_settings(FLUXGATE=fluxgate):
        ids = {message.id for message in run_checks()}
    assert error in ids
    good = {
        "AUTH_FAILURE_RATE": "5/min",
        "WEBHOOK_ALLOWED_HOSTS": [],
        "METRICS_ALLOWED_IPS": ["10.0.0.5", "10.1.0.0/16", "::1"],
    }
    with override_settings(FLUXGATE=good):
        ids = {message.id for message in run_checks()}
    assert not ids & {"fluxgate.E016", "fluxgate.E017", "fluxgate.E018"}
