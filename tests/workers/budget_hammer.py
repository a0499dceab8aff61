"""A worker process for the budget concurrency test: N threads calling through a tracked
client against one team's budget until told to stop. Prints a JSON summary.

    python -m tests.workers.budget_hammer FAKE_URL TEAM_SLUG THREADS CALLS
"""

from __future__ import annotations

import json
import os
import sys
import threading


def main() -> None:
    fake_url, team, threads, calls = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    import openai
    from django.db import connection

    from fluxgate_django import BudgetExceeded, track_openai, tracking_context

    client = track_openai(
        openai.OpenAI(api_key="sk-test", base_url=f"{fake_url}/v1", max_retries=0)
    )
    counts = {"ok": 0, "blocked": 0, "errors": 0}
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def worker() -> None:
        start.wait()
        try:
            for _ in range(calls):
                try:
                    with tracking_context(team=team, feature="hammer"):
                        client.chat.completions.create(
                            model="gpt-4o",
                            messages=[{"role": "user", "content": "x" * 60}],
                            max_tokens=50,
                        )
                    outcome = "ok"
                except BudgetExceeded:
                    outcome = "blocked"
                except Exception:
                    outcome = "errors"
                with lock:
                    counts[outcome] += 1
        finally:
            connection.close()

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
