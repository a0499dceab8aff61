"""What tracking adds to an LLM call: raw SDK client vs tracked client, in one run.

    python bench/overhead.py [--calls 2000] [--recorder thread] [--journal on|off]

The fake provider runs in its own process (as a real provider would be elsewhere), the
raw and the tracked client make the same chat completions against it, interleaved call
by call (alternating which goes first) so that drift hits both alike, and it prints the
median (and p95) time per call of each, the ratio and the time added per call. Events go
to a throwaway SQLite database through the chosen recorder (default: the default, ``thread``); the
script checks afterwards that every tracked call was stored.

With ``opentelemetry-sdk`` installed it prints what FluxGate's spans cost
(``fluxgate_django.otel``: each call also a GenAI span): the same tracked call with no
tracer provider (FluxGate's spans off, as on a site without OpenTelemetry) and with an SDK
tracer provider whose processor hands each ended span to an exporter that drops it,
interleaved call by call, and the span alone (a ``BatchSpanProcessor``, as a site sets it
up: spans are queued, exported off the caller's thread). (Target: at most 30 µs a call
when on.)

With the thread recorder it also prints what the journal costs (``FLUXGATE["JOURNAL"]``:
each record appended to the process's journal before the call returns): the same
tracked call with the journal off and on, interleaved call by call, and the append alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def setup_django(recorder: str, db_path: str, journal: bool) -> None:
    import django
    from django.conf import settings

    settings.configure(
        INSTALLED_APPS=[
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "fluxgate_django",
        ],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": db_path}},
        USE_TZ=True,
        SECRET_KEY="fluxgate-bench",  # (the journal's lines carry a MAC keyed by it)
        FLUXGATE={
            "RECORDER": recorder,
            "JOURNAL": journal,
            "SPOOL_DIR": os.path.join(os.path.dirname(db_path), "spool"),
        },
    )
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def start_fake() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fluxgate_django.testing.fake_provider", "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if "http://" in line:
            url = line[line.index("http://") :].split()[0].rstrip("/")
            # The fake prints its base URL; strip a provider suffix if present.
            for suffix in ("/v1",):
                url = url.removesuffix(suffix)
            return proc, url
    raise RuntimeError("the fake provider did not start")


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1]


def measure(
    name: str, raw_call, tracked_call, calls: int, labels: tuple[str, str] = ("raw", "tracked")
) -> tuple[float, float]:
    for _ in range(50):  # warm up connections, imports and price lookups
        raw_call()
        tracked_call()
    raw: list[float] = []
    tracked: list[float] = []
    raw_cpu: list[float] = []
    tracked_cpu: list[float] = []
    clock, cpu = time.perf_counter, time.thread_time
    for i in range(calls):
        # Alternate which goes first: the second call of a pair runs on a warmer path.
        first, second = (raw_call, tracked_call) if i % 2 == 0 else (tracked_call, raw_call)
        t0, c0 = clock(), cpu()
        first()
        t1, c1 = clock(), cpu()
        second()
        t2, c2 = clock(), cpu()
        pair = ((t1 - t0, c1 - c0), (t2 - t1, c2 - c1))
        (a, a_cpu), (b, b_cpu) = pair if i % 2 == 0 else pair[::-1]
        raw.append(a)
        raw_cpu.append(a_cpu)
        tracked.append(b)
        tracked_cpu.append(b_cpu)
    raw_med, tr_med = statistics.median(raw), statistics.median(tracked)
    cpu_added = statistics.median(tracked_cpu) - statistics.median(raw_cpu)
    print(
        f"{name:<28} {labels[0]} median {raw_med * 1e3:7.3f} ms (p95 {pct(raw, 95) * 1e3:6.3f})   "
        f"{labels[1]} median {tr_med * 1e3:7.3f} ms (p95 {pct(tracked, 95) * 1e3:6.3f})   "
        f"ratio {tr_med / raw_med:5.3f}   added {(tr_med - raw_med) * 1e6:+7.1f} µs/call "
        f"(calling thread's CPU {cpu_added * 1e6:+6.1f} µs)"
    )
    return raw_med, tr_med


def measure_journal(tracked_openai, msgs, calls: int) -> int:
    """The journal's cost: tracked calls with it off vs on, interleaved; then the append
    of one record alone. Returns how many tracked calls it made."""
    import timeit

    from fluxgate_django.recording import journal

    def with_journal(on: bool):
        def call():
            # (The setting as the journal reads it, switched call by call: the bench's
            # own shortcut, so that both sides of a pair run in the same conditions.)
            journal._enabled = on
            return tracked_openai.chat.completions.create(model="gpt-4o", messages=msgs)

        return call

    # The append itself, as the pipeline calls it during the "on" calls: the calling
    # thread's CPU inside it (a direct figure, less noisy than a difference of medians).
    inside: list[float] = []
    real_append = journal.append_one

    def timed_append(record):
        if not journal._enabled:
            return real_append(record)
        started = time.thread_time()
        try:
            return real_append(record)
        finally:
            inside.append(time.thread_time() - started)

    journal.append_one = timed_append
    try:
        measure(
            "openai, journal off vs on",
            with_journal(False),
            with_journal(True),
            calls,
            labels=("off", "on"),
        )
    finally:
        journal._enabled = None  # (read from the settings again)
        journal.append_one = real_append
    inside = inside[50:]  # (the warm-up's)
    print(
        f"{'journal append in the call':<28} median {statistics.median(inside) * 1e6:7.2f} µs "
        f"(p95 {pct(inside, 95) * 1e6:6.2f}) of the calling thread's CPU per tracked call "
        f"(encoding, MAC, copy; {len(inside)} calls)"
    )
    fluxgate_django_flush()
    record = _sample_record(tracked_openai, msgs)
    j = journal.Journal(journal.journal_dir() / "bench")
    n = 20_000
    best = min(timeit.repeat(lambda: j.append((record,)), number=n, repeat=5)) / n
    j.release([record])
    j.close()
    print(
        f"{'journal append alone':<28} {best * 1e6:7.2f} µs/record (one copy of "
        f"{len(journal.private.encode_row(record))} bytes into the mapped segment, MAC included; "
        "best of 5)"
    )
    return (calls + 50) * 2 + 1


def measure_spans(tracked_openai, msgs, calls: int) -> int:
    """What FluxGate's spans cost: tracked calls with no tracer provider vs an SDK one
    (spans made, ended and handed to an exporter that drops them), interleaved; then one
    span alone. Returns how many tracked calls it made (0 without the SDK)."""
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
    except ImportError:
        print("spans: skipped (pip install opentelemetry-sdk)")
        return 0
    import timeit

    from fluxgate_django import otel

    class Dropped(SpanExporter):
        def export(self, spans):  # (what an exporter gets; none of its own I/O)
            from opentelemetry.sdk.trace.export import SpanExportResult

            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Dropped()))  # (as a site sets it up)
    none = trace.ProxyTracerProvider()
    current = [none]
    real = otel.trace.get_tracer_provider
    otel.trace.get_tracer_provider = lambda: current[0]  # (switched call by call)

    def with_spans(on: bool):
        def call():
            current[0] = provider if on else none
            return tracked_openai.chat.completions.create(model="gpt-4o", messages=msgs)

        return call

    try:
        measure(
            "openai, spans off vs on",
            with_spans(False),
            with_spans(True),
            calls,
            labels=("off", "on"),
        )
        current[0] = provider
        record = _sample_record(tracked_openai, msgs)
        best = min(timeit.repeat(lambda: otel.emit(record), number=2000, repeat=5)) / 2000
        attrs = min(timeit.repeat(lambda: otel.span_attributes(record), number=2000, repeat=5))
        print(
            f"{'span alone':<28} {best * 1e6:7.2f} µs/call (of which FluxGate's attributes "
            f"{attrs / 2000 * 1e6:.2f} µs; the rest the SDK's span start, end and queue)"
        )
    finally:
        otel.trace.get_tracer_provider = real
        provider.shutdown()
    return 2 * (calls + 50) + 1


def fluxgate_django_flush() -> None:
    import fluxgate_django

    fluxgate_django.flush()


def _sample_record(tracked_openai, msgs):
    """The record of one tracked call, as the journal gets it."""
    from fluxgate_django.recording import get_recorder

    recorder = get_recorder()
    seen = []
    real = recorder.record
    recorder.record = lambda record: (seen.append(record), real(record))  # type: ignore[method-assign]
    try:
        tracked_openai.chat.completions.create(model="gpt-4o", messages=msgs)
    finally:
        del recorder.record
    return seen[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--recorder", default="thread", choices=["thread", "sync"])
    parser.add_argument("--journal", default="on", choices=["on", "off"])
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="fluxgate-bench-")
    setup_django(args.recorder, os.path.join(tmp, "bench.sqlite3"), args.journal == "on")

    import anthropic
    import openai

    import fluxgate_django
    from fluxgate_django import track_anthropic, track_openai, tracking_context
    from fluxgate_django.models import Event

    proc, url = start_fake()
    try:
        oa = dict(api_key="sk-bench", base_url=f"{url}/v1", max_retries=0)
        raw_openai, tracked_openai = openai.OpenAI(**oa), track_openai(openai.OpenAI(**oa))
        an = dict(api_key="sk-ant-bench", base_url=url, max_retries=0)
        raw_anth, tracked_anth = (
            anthropic.Anthropic(**an),
            track_anthropic(anthropic.Anthropic(**an)),
        )
        msgs = [{"role": "user", "content": "Summarise this paragraph in one sentence."}]

        print(
            f"{args.calls} calls each, fake provider in a separate process, "
            f"recorder={args.recorder}, journal={args.journal}, Python {sys.version.split()[0]}, "
            f"openai {openai.__version__}, anthropic {anthropic.__version__}"
        )
        with tracking_context(feature="bench", user={"id": "u1"}):
            measure(
                "openai chat.completions",
                lambda: raw_openai.chat.completions.create(model="gpt-4o", messages=msgs),
                lambda: tracked_openai.chat.completions.create(model="gpt-4o", messages=msgs),
                args.calls,
            )
            measure(
                "anthropic messages",
                lambda: raw_anth.messages.create(
                    model="claude-sonnet-4-6", max_tokens=64, messages=msgs
                ),
                lambda: tracked_anth.messages.create(
                    model="claude-sonnet-4-6", max_tokens=64, messages=msgs
                ),
                args.calls,
            )

            def consume(client):
                stream = client.chat.completions.create(
                    model="gpt-4o",
                    messages=msgs,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                for _ in stream:
                    pass

            measure(
                "openai chat stream",
                lambda: consume(raw_openai),
                lambda: consume(tracked_openai),
                args.calls // 2,
            )
            expected = (args.calls + 50) * 2 + (args.calls // 2 + 50)
            expected += measure_spans(tracked_openai, msgs, args.calls)
            if args.recorder == "thread":
                expected += measure_journal(tracked_openai, msgs, args.calls)
        fluxgate_django.flush()
        stored = Event.objects.count()
        print(f"events stored: {stored} of {expected} tracked calls")
        if stored != expected:
            raise SystemExit("some tracked calls were not stored")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
