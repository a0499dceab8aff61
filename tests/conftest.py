"""Shared fixtures: a loopback fake provider and real SDK clients pointed at it."""

from __future__ import annotations

import pytest

from fluxgate_django.testing import FakeProvider


@pytest.fixture(scope="session")
def fake_provider():
    with FakeProvider() as fake:
        yield fake


@pytest.fixture
def fake(fake_provider):
    fake_provider.reset()
    yield fake_provider
    fake_provider.reset()


@pytest.fixture
def openai_client(fake):
    import openai

    return openai.OpenAI(api_key="sk-test-key", base_url=fake.openai_base_url, max_retries=0)


@pytest.fixture
def async_openai_client(fake):
    import openai

    return openai.AsyncOpenAI(api_key="sk-test-key", base_url=fake.openai_base_url, max_retries=0)


@pytest.fixture
def anthropic_client(fake):
    import anthropic

    return anthropic.Anthropic(
        api_key="sk-ant-test-key", base_url=fake.anthropic_base_url, max_retries=0
    )


@pytest.fixture
def async_anthropic_client(fake):
    import anthropic

    return anthropic.AsyncAnthropic(
        api_key="sk-ant-test-key", base_url=fake.anthropic_base_url, max_retries=0
    )


@pytest.fixture
def gemini_client(fake):
    """A real ``google.genai.Client`` on the fake (``.aio`` for async), SDK retries off."""
    pytest.importorskip("google.genai", reason="google-genai is not installed")
    from google import genai
    from google.genai import types

    options = types.HttpOptions(
        base_url=fake.gemini_base_url, retry_options=types.HttpRetryOptions(attempts=1)
    )
    client = genai.Client(api_key="test-gemini-key", http_options=options)
    yield client
    client.close()


@pytest.fixture(autouse=True)
def _clear_cache():
    """Rate counters, breakers and blocks live in the cache, teams and budgets in memory:
    start every test clean."""
    from django.core.cache import cache

    from fluxgate_django import ledger, teams
    from fluxgate_django.api.throttling import forget_counts
    from fluxgate_django.service.routing import forget_local_state

    def forget() -> None:
        cache.clear()
        forget_local_state()
        forget_counts()
        # (a rolled-back test's teams and budgets, whose ids the next test's may reuse)
        ledger.clear_cache()
        teams.forget()

    forget()
    yield
    forget()


@pytest.fixture(autouse=True)
def _fresh_price_overrides():
    """A ModelPrice saved in a rolled-back test must not price the next test's calls, nor
    a model's learned calibration scale its reservations."""
    from fluxgate_django.estimate import calibration
    from fluxgate_django.pricing import price_book

    price_book.reset_overrides()
    calibration.clear()  # (nor what one test's fake usage taught the budget estimates)
    yield
    price_book.reset_overrides()
    calibration.clear()


@pytest.fixture
def spool_dir(tmp_path, monkeypatch):
    """A private spool (never the shared /tmp one) and fresh per-process recorder caches:
    the pending-spool flag, the drop count, team slugs and budgets. The recording, Celery
    and fault tests use it for every test."""
    from fluxgate_django import budgets, teams
    from fluxgate_django.recording import spool

    from .helpers import fluxgate_overrides

    path = tmp_path / "spool"
    monkeypatch.setattr(spool, "_pending", None)
    monkeypatch.setattr(spool, "dropped", 0)
    teams.forget()
    budgets.clear_cache()
    with fluxgate_overrides(SPOOL_DIR=str(path)):
        yield path
    budgets.clear_cache()
