"""Ingest edge cases: repeated tracking ids in one batch, text fields that are not strings,
chunked request bodies, prices no counter holds, what the answer says — and the compiled
validator giving exactly the serializer's answer on generated input."""

from __future__ import annotations

import asyncio
import copy
import io
import json
import random
import uuid
from decimal import Decimal
from typing import Any

import pytest
from django.core.handlers.asgi import ASGIHandler
from django.test import override_settings
from django.test.client import ClientHandler
from rest_framework import serializers

from fluxgate_django.api.ingest import EventIngestSerializer, validate_event
from fluxgate_django.models import Event, ModelPrice
from tests.api_helpers import API, event_payload, make_world, post_json

pytestmark = pytest.mark.django_db

EVENTS = f"{API}events/"


@pytest.fixture
def w():
    return make_world()


@pytest.fixture
def api(w):
    return w.client("key_a")


# -- a tracking_id repeated in one batch --------------------------------------------------------


def test_a_repeated_tracking_id_with_another_payload_is_400_and_nothing_is_stored(api):
    first = event_payload(feature="a")
    other = {**first, "feature": "b"}
    response = post_json(api, EVENTS, {"events": [event_payload(), first, other]})
    assert response.status_code == 400
    errors = response.json()["events"]
    assert set(errors) == {"2"}
    assert "Repeats the tracking_id of event 1" in errors["2"]["tracking_id"][0]
    assert not Event.objects.exists()


def test_the_answer_says_what_was_stored_and_what_was_a_duplicate(api):
    old = event_payload()
    assert post_json(api, EVENTS, old).status_code == 202
    new = event_payload()
    response = post_json(api, EVENTS, {"events": [old, new, new]})
    assert response.status_code == 202
    body = response.json()
    assert (body["accepted"], body["duplicates"]) == (1, 2)
    assert [(e["tracking_id"], e["duplicate"]) for e in body["events"]] == [
        (old["tracking_id"], True),
        (new["tracking_id"], False),
        (new["tracking_id"], True),
    ]
    assert body["events"][1]["cost_usd"] is not None and body["events"][1]["cost_source"]
    assert (body["events"][2]["cost_usd"], body["events"][2]["cost_source"]) == (None, "")
    assert Event.objects.count() == 2


# -- text fields are strings ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"provider": 5},
        {"provider": {"name": "openai"}},
        {"model": 4.0},
        {"feature": ["search"]},
        {"session_id": True},
        {"end_user_id": 12345},
        {"tags": ["ok", 7]},
    ],
)
def test_text_fields_must_be_strings_not_numbers_or_objects(api, fields):
    response = post_json(api, EVENTS, event_payload(**fields))
    assert response.status_code == 400
    (field,) = fields
    assert field in response.json(), response.json()
    assert "Not a valid string" in str(response.json()[field])
    assert not Event.objects.exists()


# -- a price no counter holds ---------------------------------------------------------------------


def test_an_event_priced_over_the_limit_is_400_with_its_index(api):
    ModelPrice.objects.create(
        provider="openai",
        model="pricey",
        input_per_mtok=Decimal("99999999"),
        output_per_mtok=Decimal("0"),
    )
    pricey = event_payload(model="pricey", input_tokens=2_000_000_000, output_tokens=0)
    response = post_json(api, EVENTS, {"events": [event_payload(), pricey]})
    assert response.status_code == 400
    message = str(response.json()["events"]["1"]["cost_usd"])
    assert "MAX_EVENT_COST_USD" in message and "openai/pricey" in message
    single = post_json(api, EVENTS, pricey)
    assert single.status_code == 400 and "cost_usd" in single.json()
    # The same event with few tokens is priced and stored.
    assert post_json(api, EVENTS, {**pricey, "input_tokens": 10}).status_code == 202
    assert Event.objects.count() == 1


# -- chunked request bodies -----------------------------------------------------------------------


class _Dechunked(io.RawIOBase):
    """``wsgi.input`` as gunicorn gives it for a chunked body: decoded, read to its end
    in pieces (no Content-Length)."""

    def __init__(self, body: bytes, piece: int = 7) -> None:
        self._data, self._piece = body, piece

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        size = len(self._data) if size is None or size < 0 else size
        out, self._data = self._data[:size], self._data[size:]
        return out

    def readline(self, size: int = -1) -> bytes:  # (unused by JSON parsing)
        return self.read(size)


def _wsgi_post(secret: str, body: bytes, *, terminated: bool = True) -> tuple[int, Any]:
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": EVENTS,
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_TYPE": "application/json",
        "HTTP_TRANSFER_ENCODING": "chunked",
        "HTTP_AUTHORIZATION": f"Bearer {secret}",
        "wsgi.input": _Dechunked(body),
        "wsgi.input_terminated": terminated,
        "wsgi.url_scheme": "http",
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
    }
    # Django's WSGI handler as the test client runs it (a real WSGIRequest of this environ,
    # without closing the test's database connection at the end of the request).
    response = ClientHandler(enforce_csrf_checks=False)(environ)
    return response.status_code, json.loads(response.content or b"null")


def test_a_chunked_body_is_read_under_wsgi(w):
    events = [event_payload() for _ in range(3)]
    status, body = _wsgi_post(w.secret_a, json.dumps({"events": events}).encode())
    assert status == 202, body
    assert body["accepted"] == 3
    assert set(map(str, Event.objects.values_list("tracking_id", flat=True))) == {
        e["tracking_id"] for e in events
    }


def test_a_chunked_body_over_the_upload_limit_is_413(w):
    events = [event_payload() for _ in range(20)]
    with override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=2000):
        status, _ = _wsgi_post(w.secret_a, json.dumps({"events": events}).encode())
    assert status == 413
    assert not Event.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_chunked_body_is_read_under_asgi():
    """An ASGI server passes a chunked body as several ``http.request`` messages and no
    content-length header."""
    w = make_world()
    events = [event_payload() for _ in range(3)]
    raw = json.dumps({"events": events}).encode()
    messages = [
        {"type": "http.request", "body": raw[i : i + 50], "more_body": i + 50 < len(raw)}
        for i in range(0, len(raw), 50)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()  # the client stays connected until the response
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": EVENTS,
        "raw_path": EVENTS.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", b"application/json"),
            (b"transfer-encoding", b"chunked"),
            (b"authorization", f"Bearer {w.secret_a}".encode()),
        ],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
    }
    asyncio.run(ASGIHandler()(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert start["status"] == 202, body
    assert json.loads(body)["accepted"] == 3
    assert Event.objects.count() == 3


# -- the compiled validator is the serializer, faster ----------------------------------------------

#: Values that each field may meet: well-formed ones and every kind of wrong one.
ODD_VALUES: list[Any] = [
    None,
    "",
    "  padded  ",
    "x" * 300,
    "nul\x00",
    "surrogate\ud800",
    0,
    -1,
    7,
    2**31,
    2**40,
    1.5,
    float("nan"),
    1e300,
    True,
    False,
    "12",
    "1.5",
    "true",
    [],
    ["a"],
    ["a", 1],
    {},
    {"k": "v"},
    {"k": "nul\x00"},
    "SUCCESS",
    "ERROR",
    "api",
    "langchain",
    "sdk",
    "a",
    str(uuid.uuid4()),
    "2026-01-01T00:00:00Z",
    "2999-01-01T00:00:00Z",
    "1999-01-01T00:00:00Z",
    "0.25",
    "1000000.1",
]


def _serializer_answer(item: Any, context: dict[str, Any]) -> tuple[bool, Any]:
    serializer = EventIngestSerializer(data=item, context=context)
    if serializer.is_valid():
        return True, dict(serializer.validated_data)
    return False, serializer.errors


def test_the_compiled_validator_answers_as_the_serializer_on_generated_input(w):
    rng = random.Random(12)
    context = {"team": w.team_a}
    names = list(EventIngestSerializer().fields)
    base = event_payload(
        feature="search",
        metadata={"page": "home", "n": [1, 2.5, None, True]},
        tags=["a", "b"],
        cost_usd="0.01",
        latency_ms=120.5,
        created_at="2026-01-01T00:00:00Z",
        team="a",
    )
    compiled = 0
    for _ in range(1500):
        item = copy.deepcopy(base)
        for name in rng.sample(names, rng.randint(0, 3)):
            if rng.random() < 0.2:
                item.pop(name, None)
            else:
                item[name] = copy.deepcopy(rng.choice(ODD_VALUES))
        valid, expected = _serializer_answer(item, context)
        fast = validate_event(item, context)
        if fast is None:
            continue  # the serializer decides, as it did above
        compiled += 1
        assert valid, (item, expected)
        assert fast == expected, item
    assert compiled > 300  # the fast path is what most input takes


def test_the_compiled_validator_takes_the_common_event(w):
    context = {"team": w.team_a}
    item = event_payload(metadata={"k": "v"}, tags=["t"], latency_ms=3, team="a")
    assert validate_event(item, context) == _serializer_answer(item, context)[1]
    with pytest.raises(serializers.ValidationError):
        EventIngestSerializer(context=context).run_validation({**item, "provider": 5})
    assert validate_event({**item, "provider": 5}, context) is None


def test_the_answer_is_what_drf_fields_make_of_it(api):
    from fluxgate_django.api.ingest import IngestResultSerializer

    old = event_payload()
    post_json(api, EVENTS, old)
    events = [old, event_payload(cost_usd="0.1234567891"), event_payload(model="no-such")]
    response = post_json(api, EVENTS, {"events": events})
    result = {
        "accepted": 2,
        "duplicates": 1,
        "events": [
            {"tracking_id": uuid.UUID(e["tracking_id"]), "duplicate": i == 0,
             "cost_usd": Decimal("0.1234567891") if i == 1 else None,
             "cost_source": ["", "client", "unknown"][i],
             "counts_towards_budgets": i == 2}  # (1: the client's cost, a key without the flag)
            for i, e in enumerate(events)
        ],
    }  # fmt: skip
    serializer = IngestResultSerializer(result)
    assert serializer.data == serializers.Serializer.to_representation(serializer, result)
    assert response.json() == json.loads(json.dumps(serializer.data))


def test_the_rate_limit_is_a_sliding_window_of_fixed_size_counters(w, monkeypatch):
    from fluxgate_django.api.throttling import IngestRateThrottle

    clock = [6000.0]  # the start of a one-minute window
    monkeypatch.setattr(IngestRateThrottle, "timer", lambda self: clock[0])
    api = w.client("key_a")

    def status_at(moment: float) -> int:
        clock[0] = moment
        return post_json(api, EVENTS, event_payload()).status_code

    with override_settings(REST_FRAMEWORK={"DEFAULT_THROTTLE_RATES": {"fluxgate_ingest": "2/min"}}):
        assert [status_at(6000), status_at(6030), status_at(6059)] == [202, 202, 429]
        # Just past the window's end the last minute still holds three requests.
        assert status_at(6061) == 429
        # Two minutes on, the earlier ones no longer count.
        assert [status_at(6180), status_at(6181), status_at(6182)] == [202, 202, 429]
    assert Event.objects.count() == 4
