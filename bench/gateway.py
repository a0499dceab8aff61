"""What FluxGate's gateway and LiteLLM's proxy add to an OpenAI call, in one run.

    python bench/gateway.py [--workers 1 2] [--calls 1000] [--stream-calls 500]
        [--concurrency 64] [--duration 8] [--warmup 2] [--rounds 3] [--client raw|sdk]
        [--middleware site|none] [--no-litellm] [--litellm-venv DIR] [--start-timeout 600]
        [--keep]

The same requests go to the fake provider direct, through FluxGate's gateway and through
LiteLLM's proxy. Everything runs on loopback, each server in its own process group (all
stopped at the end, on Ctrl-C and on errors too):

* the bundled fake provider (``python -m fluxgate_django.testing.fake_provider``, no
  artificial delay): the upstream of all three, and the baseline when called **direct**;
* **FluxGate**: the test project's settings (``bench/gateway_settings.py``: its middleware
  and URLs, ``fluxgate/`` mounted as a site mounts it; DEBUG off, a throwaway SQLite file,
  the thread recorder) served by uvicorn, called at ``/fluxgate/v1`` with a FluxGate API key
  (``--middleware none``: the same without any middleware, a project that is only a gateway);
* **LiteLLM**: ``litellm --config`` with the equivalent config (``gpt-4o-mini`` routed to
  the fake provider as an OpenAI-compatible ``api_base``; a master key, no database),
  installed into its own venv (``--litellm-venv``, created with ``python3 -m venv`` and
  ``pip install 'litellm[proxy]'`` on first use; never into the project's venv). If that
  fails its column is skipped, with the reason, and the rest still runs.

For each ``--workers`` count (both servers get the same; default 1, then 2), with the same
requests from the stock ``openai`` SDK (``chat.completions.create``, ``gpt-4o-mini``):

* plain completions, one at a time, the three targets interleaved call by call (rotating
  which goes first): p50/p99 of each, added over direct, and the ratio;
* streamed completions the same way: time to first token (first content delta), added;
* requests/s at ``--concurrency`` concurrent clients (keep-alive connections, each sending
  its next request when the last is answered), ``--rounds`` rounds of ``--warmup`` +
  ``--duration`` s per target, rotating the order each round: median (and range)
  requests/s, p50/p99 latency, and the CPU the target's server processes spent per
  request (what a request costs whatever else the machine runs; for the gateways the fake
  provider's own CPU is not in it).

The load generator (``--client raw``, the default) sends the SDK's request (its body, auth
and content headers) on plain asyncio connections, at a fraction of a millisecond of CPU
per request, so that the servers get the cores. ``httpx.AsyncClient`` is not fit for it
here: with 64 connections in one pool (httpx 0.29, httpcore 1.0) it managed under
100 requests/s against a server a plain asyncio client gets 2,400/s from, and one client
per connection ~300-500/s. ``--client sdk`` uses the stock ``openai.AsyncOpenAI`` (httpx2
underneath; ~1.4 ms of CPU per request in the client, which the servers then lack).

Then it checks that FluxGate stored an event for every completion it answered, and prints
the targets: FluxGate's added p50 <= 2 ms, FluxGate's requests/s >= LiteLLM's (exit status 1
if one is missed). Load generator, fake provider and servers share this machine's cores,
so the absolute figures are those of a crowded box; the interleaving is there so that
drift hits every target alike, and the CPU per request does not depend on it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.util
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Summarise this paragraph in one sentence."}]
MAX_TOKENS = 64
FAKE_KEY = "sk-fake-bench"
LITELLM_KEY = "sk-litellm-bench"
DEFAULT_LITELLM_VENV = "~/.cache/fluxgate-bench/litellm-venv"
TARGET_ADDED_P50_MS = 2.0
#: A target that has failed this many calls is dropped from the sequential measurements.
MAX_ERRORS = 20

LITELLM_CONFIG = """\
# Written by bench/gateway.py: the fake provider as an OpenAI-compatible upstream.
model_list:
  - model_name: {model}
    litellm_params:
      model: openai/{model}
      api_base: {fake_url}/v1
      api_key: {fake_key}
general_settings:
  master_key: {master_key}
"""

GATEWAY_SETUP = """\
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from fluxgate_django.models import ApiKey, Team
team = Team.objects.create(name="Bench", slug="bench")
print(ApiKey.objects.create_key(team=team, name="bench gateway")[1])
"""


# -- servers ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class NotReady(RuntimeError):
    pass


class Server:
    """A command in its own session (so its process group, workers included, can be
    stopped as one), logging to a file, on a loopback port."""

    def __init__(
        self,
        name: str,
        command: list[str],
        *,
        port: int,
        log_dir: Path,
        env: dict[str, str] | None = None,
        cwd: Path = ROOT,
    ) -> None:
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log_dir / f"{name}.log"
        self.log_file = self.log.open("wb")
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_ready(self, path: str, headers: dict[str, str], timeout: float) -> float:
        """Until ``GET path`` answers 200; returns the seconds since the start. Raises
        :class:`NotReady` if the process exits, the time is up, or it keeps answering
        something else for 5 s."""
        import http.client

        deadline = self.started + timeout
        other: tuple[float, str] | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise NotReady(
                    f"{self.name} exited with status {self.process.returncode}; its log:\n"
                    + self.log_tail()
                )
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", path, headers=headers)
                response = conn.getresponse()
                body = response.read()
                conn.close()
            except OSError:
                time.sleep(0.2)
                continue
            if response.status == 200:
                return time.monotonic() - self.started
            if other is None:
                other = (time.monotonic(), f"{response.status} {body[:200]!r}")
            elif time.monotonic() - other[0] > 5:
                raise NotReady(f"GET {path} answered {other[1]}")
            time.sleep(0.2)
        raise NotReady(
            f"{self.name} did not answer GET {path} within {timeout:g} s; its log:\n"
            + self.log_tail()
        )

    def pids(self) -> list[int]:
        """The processes of the server's process group (its workers included)."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == self.process.pid:  # pgrp
                    found.append(int(entry.name))
        return found

    def cpu_seconds(self) -> float:
        """CPU time (user + system, all threads) the server's live processes used so far."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for pid in self.pids():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        return total

    def stop(self) -> None:
        """SIGTERM to the group (graceful: recorders flush), SIGKILL whatever is left."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            pass
        for _ in range(50):  # workers may outlive the leader for a moment
            if not self.pids():
                break
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        self.log_file.close()


@dataclass
class Target:
    """Something that answers ``POST {base_url}/chat/completions`` like OpenAI."""

    name: str
    base_url: str
    api_key: str
    server: Server | None = None
    #: Completions it answered successfully (FluxGate: each should be an event).
    answered: int = 0
    errors: int = 0
    first_error: str = ""
    results: dict[str, Any] = field(default_factory=dict)


# -- LiteLLM: its own venv --------------------------------------------------------------


def litellm_install(venv: Path) -> tuple[Path | None, str]:
    """The ``litellm`` CLI in ``venv`` (made and installed on first use) and its version,
    or ``(None, why not)``."""
    exe, python = venv / "bin" / "litellm", venv / "bin" / "python"
    if not exe.exists():
        base = shutil.which("python3") or sys.executable
        print(
            f"LiteLLM: not found in {venv}; creating it ({base} -m venv) and installing "
            "'litellm[proxy]' there (once; a minute or two; the project's venv is not touched)",
            flush=True,
        )
        try:
            subprocess.run([base, "-m", "venv", str(venv)], check=True)
            subprocess.run(
                [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                 "litellm[proxy]"],
                check=True,
            )  # fmt: skip
        except (OSError, subprocess.CalledProcessError) as exc:
            return None, f"install into {venv} failed ({exc})"
        if not exe.exists():
            return None, f"no litellm command in {venv}/bin after the install"
    try:
        out = subprocess.run(
            [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"litellm in {venv} does not import ({exc}); remove the venv to reinstall"
    return exe, out.stdout.strip()


def start_litellm(exe: Path, fake: Server, workers: int, tmp: Path) -> Server:
    config = tmp / f"litellm-{workers}w.yaml"
    config.write_text(
        LITELLM_CONFIG.format(
            model=MODEL, fake_url=fake.url, fake_key=FAKE_KEY, master_key=LITELLM_KEY
        )
    )
    env = {
        k: v
        for k, v in os.environ.items()
        # No database, no Redis, nothing of the project's environment.
        if k not in ("DATABASE_URL", "DIRECT_URL", "PYTHONPATH", "VIRTUAL_ENV")
        and not k.startswith(("REDIS_", "LITELLM_", "DJANGO_"))
    }
    env.update(
        PATH=f"{exe.parent}{os.pathsep}{env.get('PATH', '')}",
        LITELLM_LOG="ERROR",  # (uvicorn's access log too)
        LITELLM_LOCAL_MODEL_COST_MAP="True",  # offline: the bundled price map
    )
    port = free_port()
    command = [str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
               "--num_workers", str(workers)]  # fmt: skip
    return Server(f"litellm-{workers}w", command, port=port, log_dir=tmp, env=env, cwd=tmp)


# -- FluxGate's gateway -----------------------------------------------------------------


def gateway_missing() -> str:
    """Why the gateway can't be benched here, or ``""``."""
    if importlib.util.find_spec("fluxgate_django.gateway") is None:
        return "fluxgate_django.gateway missing"
    if importlib.util.find_spec("uvicorn") is None:
        return f"uvicorn missing: {Path(sys.executable).parent}/pip install uvicorn"
    return ""


def gateway_env(fake: Server, tmp: Path, middleware: str) -> dict[str, str]:
    paths = [str(ROOT / "bench"), str(ROOT / "testproject"), str(ROOT)]
    paths += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(
        DJANGO_SETTINGS_MODULE="gateway_settings",
        PYTHONPATH=os.pathsep.join(paths),
        FLUXGATE_BENCH_DB=str(tmp / "gateway.sqlite3"),
        FLUXGATE_BENCH_FAKE_URL=fake.url,
        FLUXGATE_BENCH_SPOOL=str(tmp / "spool"),
        FLUXGATE_BENCH_MIDDLEWARE=middleware,
    )
    return env


def gateway_setup(env: dict[str, str]) -> str:
    """Migrate the bench database, make a team and a key; returns the key's secret."""
    out = subprocess.run(
        [sys.executable, "-c", GATEWAY_SETUP],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if out.returncode:
        raise NotReady(f"migrating the bench database failed:\n{out.stderr[-3000:]}")
    return out.stdout.strip().splitlines()[-1]


def start_gateway(env: dict[str, str], workers: int, tmp: Path) -> Server:
    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", "testproject.asgi:application",
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
        "--no-access-log", "--log-level", "warning", "--timeout-graceful-shutdown", "20",
    ]  # fmt: skip
    return Server(f"fluxgate-{workers}w", command, port=port, log_dir=tmp, env=env)


def stored_events(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
        return int(conn.execute("SELECT count(*) FROM fluxgate_django_event").fetchone()[0])


def wait_stored(db: Path, expected: int, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    stored = stored_events(db)
    while stored < expected and time.monotonic() < deadline:
        time.sleep(0.25)
        stored = stored_events(db)
    return stored


# -- measurements -----------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rotated(items: list[Target], i: int) -> list[Target]:
    k = i % len(items)
    return items[k:] + items[:k]


def plain_call(client: Any, clock: Callable[[], float]) -> tuple[float, str]:
    """(seconds for the call, the answer's text)."""
    t0 = clock()
    response = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=MAX_TOKENS)
    return clock() - t0, response.choices[0].message.content or ""


def stream_call(client: Any, clock: Callable[[], float]) -> tuple[float, str]:
    """(seconds to the first content delta, the streamed text), the stream read to its end."""
    t0 = clock()
    first = None
    parts = []
    stream = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=MAX_TOKENS,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            if first is None:
                first = clock() - t0
            parts.append(chunk.choices[0].delta.content)
    if first is None:
        raise RuntimeError("the stream had no content")
    return first, "".join(parts)


def _failed(target: Target, message: str) -> None:
    target.errors += 1
    if not target.first_error:
        target.first_error = message


def sequential(targets: list[Target], calls: int, streamed: bool) -> dict[str, list[float]]:
    """Per target: seconds per call (plain) or to the first token (streamed), one call at a
    time, the targets interleaved call by call (rotating which goes first) after 50 rounds
    of warm-up. Every answer must be the fake provider's text."""
    import openai

    from fluxgate_django.testing.fake_provider.replies import DEFAULT_TEXT

    clock = time.perf_counter
    call = stream_call if streamed else plain_call
    clients = {
        t.name: openai.OpenAI(api_key=t.api_key, base_url=t.base_url, max_retries=0, timeout=30)
        for t in targets
    }
    live = list(targets)
    times: dict[str, list[float]] = {t.name: [] for t in targets}
    for i in range(50 + calls):
        for target in rotated(live, i):
            try:
                seconds, text = call(clients[target.name], clock)
            except Exception as exc:
                _failed(target, f"{type(exc).__name__}: {str(exc)[:300]}")
                if target.errors >= MAX_ERRORS:
                    live.remove(target)
                continue
            if text != DEFAULT_TEXT:
                _failed(target, f"answered {text[:200]!r}, not {DEFAULT_TEXT!r}")
                continue
            target.answered += 1
            if i >= 50:
                times[target.name].append(seconds)
        if not live:
            break
    for client in clients.values():
        client.close()
    return times


class RawClient:
    """One keep-alive HTTP/1.1 connection on asyncio streams, sending the request the
    ``openai`` SDK sends for ``chat.completions.create`` (its body, auth and content
    headers). The load generator's own cost per request stays a fraction of a
    millisecond, so that the servers get the cores (httpx's pool is not fit for this
    here: see ``--client``)."""

    def __init__(self, base_url: str, api_key: str, body: bytes) -> None:
        from urllib.parse import urlsplit

        import openai

        url = urlsplit(base_url)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        self.request = (
            f"POST {url.path}/chat/completions HTTP/1.1\r\n"
            f"Host: {self.host}:{self.port}\r\n"
            "Accept: application/json\r\n"
            "Content-Type: application/json\r\n"
            f"User-Agent: AsyncOpenAI/Python {openai.__version__}\r\n"
            f"Authorization: Bearer {api_key}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        try:
            self.writer.write(self.request)
            head = (await self.reader.readuntil(b"\r\n\r\n")).lower()
            status = int(head[9:12])
            if b"\r\ntransfer-encoding: chunked" in head:
                parts = []
                while size := int((await self.reader.readline()).split(b";")[0], 16):
                    parts.append(await self.reader.readexactly(size + 2))
                while await self.reader.readline() not in (b"\r\n", b""):
                    pass  # (trailers)
                body = b"".join(p[:-2] for p in parts)
            else:
                length = head.split(b"\r\ncontent-length:", 1)[1].split(b"\r\n", 1)[0]
                body = await self.reader.readexactly(int(length))
            if b"\r\nconnection: close" in head:
                await self.close()
            return status, body
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        writer, self.writer, self.reader = self.writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def _load(target: Target, args: Any) -> tuple[list[float], int, int]:
    """``args.concurrency`` clients, each sending the next request as soon as its previous
    one is answered. Returns (latencies of the completions that finished in the measured
    window, completions in all, errors)."""
    body = json.dumps(
        {"messages": MESSAGES, "model": MODEL, "max_tokens": MAX_TOKENS}, separators=(",", ":")
    ).encode()
    sdk = None
    if args.client == "sdk":
        import openai

        sdk = openai.AsyncOpenAI(
            api_key=target.api_key, base_url=target.base_url, max_retries=0, timeout=60
        )
    clock = time.perf_counter
    start = clock()
    measure_at, end_at = start + args.warmup, start + args.warmup + args.duration
    latencies: list[float] = []
    counts = {"answered": 0, "errors": 0}

    async def worker() -> None:
        raw = RawClient(target.base_url, target.api_key, body) if sdk is None else None
        try:
            while clock() < end_at:
                t0 = clock()
                try:
                    if raw is not None:
                        status, data = await raw.post()
                        ok = status == 200 and b'"choices"' in data
                        if not ok and not target.first_error:
                            target.first_error = f"{status} {data[:300]!r}"
                    else:
                        assert sdk is not None
                        await sdk.chat.completions.create(
                            model=MODEL, messages=MESSAGES, max_tokens=MAX_TOKENS
                        )
                        ok = True
                except (
                    OSError,
                    EOFError,
                    ValueError,
                    IndexError,
                    asyncio.IncompleteReadError,
                ) as exc:
                    ok = False
                    if not target.first_error:
                        target.first_error = f"{type(exc).__name__}: {exc}"
                except Exception as exc:  # (the SDK's errors)
                    ok = False
                    if not target.first_error:
                        target.first_error = f"{type(exc).__name__}: {str(exc)[:300]}"
                t1 = clock()
                counts["answered" if ok else "errors"] += 1
                if ok and measure_at <= t1 <= end_at:
                    latencies.append(t1 - t0)
                if not ok:
                    await asyncio.sleep(0.01)  # (a refusing server: don't spin)
        finally:
            if raw is not None:
                await raw.close()

    try:
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    finally:
        if sdk is not None:
            await sdk.close()
    return latencies, counts["answered"], counts["errors"]


def throughput(target: Target, fake: Server, args: Any) -> dict[str, float]:
    server = target.server or fake  # (direct: the fake provider is the server)
    server_cpu, fake_cpu, own_cpu = server.cpu_seconds(), fake.cpu_seconds(), time.process_time()
    latencies, answered, errors = asyncio.run(_load(target, args))
    total = max(1, answered + errors)  # (warm-up included, as in the CPU times)
    target.answered += answered
    target.errors += errors
    return {
        "rps": len(latencies) / args.duration,
        "p50": pct(latencies, 0.50),
        "p99": pct(latencies, 0.99),
        "errors": errors,
        "cpu_ms": (server.cpu_seconds() - server_cpu) * 1e3 / total,
        "fake_cpu_ms": (fake.cpu_seconds() - fake_cpu) * 1e3 / total,
        "client_cpu_ms": (time.process_time() - own_cpu) * 1e3 / total,
    }


# -- reporting --------------------------------------------------------------------------


def latency_table(
    targets: list[Target], times: dict[str, list[float]], what: str, key: str
) -> None:
    """p50/p99 per target, and added over direct (``targets[0]``); keeps the added p50 in
    ``target.results[key]``."""
    direct = times[targets[0].name]
    d50, d99 = pct(direct, 0.50), pct(direct, 0.99)
    print(
        f"  {'':<10}{what + ' p50 ms':>16}{'p99 ms':>9}{'added p50':>11}{'added p99':>11}"
        f"{'p50 x direct':>14}"
    )
    for target in targets:
        values = times[target.name]
        if not values:
            print(f"  {target.name:<10} no answer: {target.first_error}")
            continue
        p50, p99 = pct(values, 0.50), pct(values, 0.99)
        line = f"  {target.name:<10}{p50 * 1e3:>16.3f}{p99 * 1e3:>9.3f}"
        if target is not targets[0]:
            target.results[key] = (p50 - d50) * 1e3
            line += f"{(p50 - d50) * 1e3:>+11.3f}{(p99 - d99) * 1e3:>+11.3f}{p50 / d50:>14.2f}"
        print(line)
        if target.errors:
            print(f"    {target.errors} errors so far, e.g. {target.first_error}")


def throughput_table(targets: list[Target], runs: dict[str, list[dict[str, float]]], key: str):
    print(
        f"  {'':<10}{'req/s median (range)':>24}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'x direct':>10}{'server CPU ms/req':>19}"
    )
    direct_rps = statistics.median(x["rps"] for x in runs[targets[0].name])
    for target in targets:
        rows = runs[target.name]
        rps = statistics.median(x["rps"] for x in rows)
        target.results[key] = rps
        spread = f"({min(x['rps'] for x in rows):,.0f}-{max(x['rps'] for x in rows):,.0f})"
        p50 = statistics.median(x["p50"] for x in rows) * 1e3
        p99 = statistics.median(x["p99"] for x in rows) * 1e3
        cpu = statistics.median(x["cpu_ms"] for x in rows)
        note = "  (the fake provider's)" if target is targets[0] else ""
        print(
            f"  {target.name:<10}{rps:>9,.0f} {spread:>14}{p50:>9.2f}{p99:>9.2f}"
            f"{rps / direct_rps:>10.2f}{cpu:>19.3f}{note}"
        )
        if target.errors:
            print(f"    {target.errors} errors so far, e.g. {target.first_error}")
    every = [x for t in targets for x in runs[t.name]]
    print(
        f"  (CPU per request, all runs: fake provider "
        f"{statistics.median(x['fake_cpu_ms'] for x in every):.3f} ms, this load generator "
        f"{statistics.median(x['client_cpu_ms'] for x in every):.3f} ms)"
    )


def run_phase(targets: list[Target], fake: Server, args: Any, workers: int) -> None:
    print(
        f"\n== {workers} worker process{'es' if workers > 1 else ''} per server: "
        + ", ".join(t.name for t in targets)
        + " ==",
        flush=True,
    )
    print(f"plain chat completions: {args.calls} calls each, one at a time, interleaved")
    latency_table(targets, sequential(targets, args.calls, False), "latency", f"added{workers}")
    print(f"streamed chat completions: {args.stream_calls} calls each, time to first token")
    latency_table(targets, sequential(targets, args.stream_calls, True), "TTFT", f"ttft{workers}")
    client = "openai.AsyncOpenAI" if args.client == "sdk" else "raw asyncio HTTP/1.1"
    print(
        f"throughput: {args.concurrency} concurrent clients ({client}, keep-alive), "
        f"{args.rounds} rounds of {args.warmup:g} s warm-up + {args.duration:g} s per target"
    )
    runs: dict[str, list[dict[str, float]]] = {t.name: [] for t in targets}
    for r in range(args.rounds):
        line = []
        for target in rotated(targets, r):
            result = throughput(target, fake, args)
            runs[target.name].append(result)
            errors = f" ({result['errors']:.0f} errors)" if result["errors"] else ""
            line.append(f"{target.name} {result['rps']:,.0f}/s{errors}")
        print(f"  round {r + 1}: " + ", ".join(line), flush=True)
    throughput_table(targets, runs, f"rps{workers}")
    by_name = {t.name: t.results for t in targets}
    if "fluxgate" in by_name and "litellm" in by_name:
        ratio = by_name["fluxgate"][f"rps{workers}"] / by_name["litellm"][f"rps{workers}"]
        print(f"  fluxgate / litellm requests/s: {ratio:.2f}")


def summary(
    fluxgate: Target | None, litellm: Target | None, worker_counts: list[int], missed: list[str]
) -> None:
    print("\ntargets:")
    if fluxgate is None:
        print("  gateway: not measured (see above)")
        return
    for n in worker_counts:
        added = fluxgate.results.get(f"added{n}")
        if added is None:
            print(f"  {n} worker(s): fluxgate not measured")
            continue
        ok = added <= TARGET_ADDED_P50_MS
        if not ok:
            missed.append(f"fluxgate added p50, {n} worker(s)")
        print(
            f"  {n} worker(s): fluxgate added p50 {added:+.2f} ms   "
            f"(target <= {TARGET_ADDED_P50_MS:g} ms: {'ok' if ok else 'MISSED'})"
        )
        theirs = litellm.results.get(f"rps{n}") if litellm is not None else None
        ours = fluxgate.results.get(f"rps{n}")
        if theirs and ours:
            ok = ours >= theirs
            if not ok:
                missed.append(f"fluxgate requests/s vs litellm, {n} worker(s)")
            print(
                f"  {n} worker(s): fluxgate {ours:,.0f} req/s / litellm {theirs:,.0f} req/s = "
                f"{ours / theirs:.2f}   (target >= 1: {'ok' if ok else 'MISSED'})"
            )
        else:
            print(f"  {n} worker(s): fluxgate vs litellm requests/s: not measured (no LiteLLM)")


# -- main -------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--calls", type=int, default=1000, help="plain calls per target")
    parser.add_argument("--stream-calls", type=int, default=500, help="streamed calls per target")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per run")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds per target")
    parser.add_argument(
        "--client",
        choices=["raw", "sdk"],
        default="raw",
        help="throughput load generator: raw asyncio HTTP/1.1 (default) or openai.AsyncOpenAI",
    )
    parser.add_argument(
        "--middleware",
        choices=["site", "none"],
        default="site",
        help="FluxGate behind the test project's middleware (a site that mounts it) or none",
    )
    parser.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM column")
    parser.add_argument("--litellm-venv", default=DEFAULT_LITELLM_VENV)
    parser.add_argument(
        "--start-timeout",
        type=float,
        default=600,
        help="seconds a server may take to answer (LiteLLM with 2 workers: minutes on a busy box)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the servers' logs and the bench database"
    )
    args = parser.parse_args()

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)  # (stop everything as on Ctrl-C)
    tmp = Path(tempfile.mkdtemp(prefix="fluxgate-bench-gateway-"))
    servers: list[Server] = []
    missed: list[str] = []
    keep = True
    try:
        keep = run(args, tmp, servers, missed) or args.keep
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the servers", file=sys.stderr)
        missed.append("interrupted")
        keep = args.keep
    finally:
        for server in reversed(servers):
            server.stop()
        if keep:
            print(f"(the servers' logs and the bench database are kept in {tmp})")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if missed:
        sys.exit(1)


def run(args: Any, tmp: Path, servers: list[Server], missed: list[str]) -> bool:
    """The whole bench; returns whether something failed to start (keep the logs)."""
    import openai

    failed = False

    litellm_exe, litellm_note = None, "--no-litellm"
    if not args.no_litellm:
        litellm_exe, litellm_note = litellm_install(Path(args.litellm_venv).expanduser())
    gateway_note = gateway_missing()

    fake_port = free_port()
    fake = Server(
        "fake-provider",
        [sys.executable, "-m", "fluxgate_django.testing.fake_provider", "--port", str(fake_port)],
        port=fake_port,
        log_dir=tmp,
    )
    servers.append(fake)
    fake.wait_ready("/health", {}, 30)

    env: dict[str, str] = {}
    secret = ""
    if not gateway_note:
        env = gateway_env(fake, tmp, args.middleware)
        try:
            secret = gateway_setup(env)
        except (NotReady, subprocess.SubprocessError) as exc:
            gateway_note = str(exc)

    print(
        f"Python {sys.version.split()[0]}, openai {openai.__version__}, "
        f"{os.cpu_count()} CPUs, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; fake provider (no delay) at {fake.url}"
    )
    if gateway_note:
        print(f"gateway: not available ({gateway_note})")
    else:
        import uvicorn

        loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
        middleware = (
            "no middleware" if args.middleware == "none" else "the test project's middleware"
        )
        print(
            f"fluxgate: uvicorn {uvicorn.__version__} ({loop} loop), bench/gateway_settings.py "
            f"({middleware}), thread recorder, SQLite"
        )
    if litellm_exe is None:
        print(f"litellm:  not available ({litellm_note})")
    else:
        print(
            f"litellm:  litellm {litellm_note} from {litellm_exe.parent.parent} (its CLI: "
            "uvicorn, uvloop loop), master key, no database, LITELLM_LOG=ERROR"
        )

    direct = Target("direct", f"{fake.url}/v1", FAKE_KEY)
    fluxgate = None if gateway_note else Target("fluxgate", "", secret)
    litellm = None if litellm_exe is None else Target("litellm", "", LITELLM_KEY)
    for workers in args.workers:
        started: list[tuple[Target, Server, str]] = []
        if fluxgate is not None:
            started.append((fluxgate, start_gateway(env, workers, tmp), "/fluxgate/v1"))
            servers.append(started[-1][1])
        if litellm is not None and litellm_exe is not None:
            started.append((litellm, start_litellm(litellm_exe, fake, workers, tmp), "/v1"))
            servers.append(started[-1][1])
        targets = [direct]
        for target, server, prefix in started:
            try:
                auth = {"Authorization": f"Bearer {target.api_key}"}
                seconds = server.wait_ready(f"{prefix}/models", auth, args.start_timeout)
                print(f"({server.name} answered after {seconds:.0f} s)", flush=True)
            except NotReady as exc:
                print(f"{target.name}: not available ({exc})", flush=True)
                failed = True
                servers.remove(server)
                server.stop()
                continue
            target.server, target.base_url = server, server.url + prefix
            targets.append(target)
        run_phase(targets, fake, args, workers)
        if fluxgate is not None and fluxgate.server is not None:
            stored = wait_stored(Path(env["FLUXGATE_BENCH_DB"]), fluxgate.answered)
            print(f"  fluxgate events stored: {stored} of {fluxgate.answered} completions answered")
            if stored < fluxgate.answered:
                missed.append(f"events missing, {workers} worker(s)")
        for target, server, _ in started:
            if server in servers:
                servers.remove(server)
                server.stop()
            target.server = None
    summary(fluxgate, litellm, args.workers, missed)
    print(f"\n(timed on {dt.datetime.now().isoformat(timespec='seconds')})")
    return failed


if __name__ == "__main__":
    main()
