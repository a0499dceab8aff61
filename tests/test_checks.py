"""System checks on the FLUXGATE setting, and reloading it under override_settings."""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings
from django.core.checks import run_checks
from django.test import override_settings

from fluxgate_django.conf import fluxgate_settings

BASE = {"RECORDER": "sync", "RAISE_ERRORS": True}


def fluxgate_messages(**fluxgate: Any) -> list[Any]:
    with override_settings(FLUXGATE={**BASE, **fluxgate}):
        return [m for m in run_checks() if (m.id or "").startswith("fluxgate.")]


def ids(messages: list[Any]) -> list[str]:
    return [m.id for m in messages]


def test_valid_config_has_no_messages() -> None:
    assert (
        fluxgate_messages(
            STORE_CONTENT=True,
            PROVIDERS={"openai": {"api_key": "sk-test", "timeout": 10}},
            MODELS={"fast": "openai/gpt-4o-mini", "claude-sonnet": "anthropic/claude-sonnet-4-6"},
            ROUTES={
                "summarize": {"strategy": "ordered", "models": ["fast", "claude-sonnet"]},
                "chat": {"strategy": "cost", "models": ["gpt-4o", "claude-haiku-4-5"]},
            },
            CIRCUIT_BREAKER={"failures": 5},
            RESPONSE_CACHE={"alias": "default", "ttl": 0},
            BATCH_SIZE=100,
            FLUSH_INTERVAL=0.5,
        )
        == []
    )


def test_test_settings_are_valid() -> None:
    assert [m for m in run_checks() if (m.id or "").startswith("fluxgate.")] == []


def test_not_a_dict() -> None:
    with override_settings(FLUXGATE=["RECORDER", "sync"]):
        messages = [m for m in run_checks() if (m.id or "").startswith("fluxgate.")]
    assert ids(messages) == ["fluxgate.E001"]


def test_unknown_recorder() -> None:
    messages = fluxgate_messages(RECORDER="carrier-pigeon")
    assert ids(messages) == ["fluxgate.E002"]
    assert "carrier-pigeon" in messages[0].msg


def test_recorder_that_is_not_a_recorder() -> None:
    assert ids(fluxgate_messages(RECORDER="decimal.Decimal")) == ["fluxgate.E002"]


def test_route_naming_unknown_model() -> None:
    messages = fluxgate_messages(
        ROUTES={"summarize": {"strategy": "ordered", "models": ["gpt-4o", "mystery-model"]}}
    )
    assert ids(messages) == ["fluxgate.E004"]
    assert "mystery-model" in messages[0].msg


def test_route_without_models() -> None:
    assert ids(fluxgate_messages(ROUTES={"empty": {"models": []}})) == ["fluxgate.E004"]


def test_unknown_strategy() -> None:
    messages = fluxgate_messages(ROUTES={"r": {"strategy": "vibes", "models": ["gpt-4o"]}})
    assert ids(messages) == ["fluxgate.E005"]


def test_bad_alias() -> None:
    assert ids(fluxgate_messages(MODELS={"fast": "nobody/knows/this"})) == ["fluxgate.E003"]


@pytest.mark.parametrize(
    "fluxgate",
    [
        {"BATCH_SIZE": -1},
        {"BATCH_SIZE": 0},
        {"BATCH_SIZE": "500"},
        {"FLUSH_INTERVAL": True},
        {"CIRCUIT_BREAKER": {"failures": 0}},
        {"RESPONSE_CACHE": {"ttl": -1}},
    ],
)
def test_bad_numbers(fluxgate: dict[str, Any]) -> None:
    assert ids(fluxgate_messages(**fluxgate)) == ["fluxgate.E006"]


def test_negative_batch_size_message() -> None:
    (message,) = fluxgate_messages(BATCH_SIZE=-1)
    assert message.id == "fluxgate.E006"
    assert "BATCH_SIZE" in message.msg


def test_cache_alias_missing() -> None:
    messages = fluxgate_messages(RESPONSE_CACHE={"alias": "nope"})
    assert ids(messages) == ["fluxgate.E007"]


def test_malformed_providers() -> None:
    assert ids(fluxgate_messages(PROVIDERS={"openai": "sk-key"})) == ["fluxgate.E008"]


def test_unknown_key_warns() -> None:
    messages = fluxgate_messages(RECORDR="thread")
    assert ids(messages) == ["fluxgate.W001"]
    assert "RECORDR" in messages[0].msg


# -- settings reload -----------------------------------------------------------------------


def test_settings_reload_on_override() -> None:
    assert fluxgate_settings.BATCH_SIZE == 2000  # the default
    assert fluxgate_settings.RECORDER == "sync"
    overrides = {**settings.FLUXGATE, "BATCH_SIZE": 7, "RECORDER": "thread"}
    with override_settings(FLUXGATE=overrides):
        assert fluxgate_settings.BATCH_SIZE == 7
        assert fluxgate_settings.RECORDER == "thread"
    assert fluxgate_settings.BATCH_SIZE == 2000  # the default
    assert fluxgate_settings.RECORDER == "sync"


def test_merged_dict_settings() -> None:
    with override_settings(FLUXGATE={**settings.FLUXGATE, "CIRCUIT_BREAKER": {"failures": 9}}):
        assert fluxgate_settings.CIRCUIT_BREAKER == {"failures": 9, "cooldown_seconds": 300}
    assert fluxgate_settings.CIRCUIT_BREAKER == {"failures": 3, "cooldown_seconds": 300}


def test_unknown_setting_attribute() -> None:
    with pytest.raises(AttributeError, match="NOPE"):
        fluxgate_settings.NOPE  # noqa: B018
