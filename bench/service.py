"""``LLMService.complete`` vs a direct tracked SDK call, in one run.

    python bench/service.py [--calls 1000]

The fake provider runs in its own process. Interleaved, alternating which goes first:
a tracked ``chat.completions.create`` and ``LLMService().complete(route=...)`` for the
same request with the response cache off (a miss: routing, breaker, one attempt). Then
the same request answered from the response cache (a hit). Prints medians and ratios
(targets: miss/direct <= 1.15, hit < 10% of a miss).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    args = parser.parse_args()

    from overhead import start_fake

    proc, url = start_fake()
    try:
        import django
        from django.conf import settings

        settings.configure(
            INSTALLED_APPS=[
                "django.contrib.auth",
                "django.contrib.contenttypes",
                "fluxgate_django",
            ],
            DATABASES={
                "default": {
                    "ENGINE": "django.db.backends.sqlite3",
                    "NAME": os.path.join(tempfile.mkdtemp(prefix="fluxgate-bench-"), "s.sqlite3"),
                }
            },
            USE_TZ=True,
            FLUXGATE={
                "PROVIDERS": {
                    "openai": {"api_key": "sk-bench", "base_url": f"{url}/v1"},
                    "anthropic": {"api_key": "sk-ant-bench", "base_url": url},
                },
                "ROUTES": {
                    "summarize": {"models": ["openai/gpt-4o-mini", "anthropic/claude-sonnet-4-6"]}
                },
                "RESPONSE_CACHE": {"alias": "default", "ttl": 0},
            },
        )
        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        import openai

        import fluxgate_django
        from fluxgate_django import LLMService, track_openai

        direct = track_openai(
            openai.OpenAI(api_key="sk-bench", base_url=f"{url}/v1", max_retries=0)
        )
        service = LLMService()
        msgs = [{"role": "user", "content": "Summarise this paragraph in one sentence."}]

        def direct_call() -> None:
            direct.chat.completions.create(model="gpt-4o-mini", messages=msgs, max_tokens=64)

        def service_call() -> None:
            service.complete(msgs, route="summarize", max_tokens=64, feature="bench")

        for _ in range(50):
            direct_call()
            service_call()
        a: list[float] = []
        b: list[float] = []
        clock = time.perf_counter
        for i in range(args.calls):
            first, second = (
                (direct_call, service_call) if i % 2 == 0 else (service_call, direct_call)
            )
            t0 = clock()
            first()
            t1 = clock()
            second()
            t2 = clock()
            (a if i % 2 == 0 else b).append(t1 - t0)
            (b if i % 2 == 0 else a).append(t2 - t1)
        direct_med, miss_med = statistics.median(a), statistics.median(b)

        service.complete(msgs, route="summarize", max_tokens=64, cache_ttl=600)  # fill the cache
        hits = []
        for _ in range(args.calls):
            t0 = clock()
            answer = service.complete(msgs, route="summarize", max_tokens=64, cache_ttl=600)
            hits.append(clock() - t0)
            assert answer.cache_hit
        hit_med = statistics.median(hits)
        fluxgate_django.flush()

        print(f"{args.calls} calls each, fake provider in a separate process")
        print(f"direct tracked SDK call   median {direct_med * 1e3:7.3f} ms")
        print(
            f"LLMService, cache miss    median {miss_med * 1e3:7.3f} ms   "
            f"ratio {miss_med / direct_med:5.3f} (target <= 1.15)"
        )
        print(
            f"LLMService, cache hit     median {hit_med * 1e3:7.3f} ms   "
            f"{hit_med / miss_med:6.1%} of a miss (target < 10%)"
        )
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
