"""``python -m fluxgate_django.testing.fake_provider``: serve a fake provider until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from typing import Any

from .provider import FakeProvider
from .replies import DEFAULT_TEXT, FakeReply


def main(argv: list[str] | None = None) -> int:
    """Serve a fake provider until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m fluxgate_django.testing.fake_provider",
        description="Fake OpenAI/Anthropic/Gemini API server for tests and demos.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--text", default=DEFAULT_TEXT, help="reply text")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each reply")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between SSE events")
    args = parser.parse_args(argv)
    reply = FakeReply(text=args.text, delay=args.delay, chunk_delay=args.chunk_delay)

    def _on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # Before announcing the URL: a caller may send SIGTERM as soon as it has read it.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_term)
    fake = FakeProvider(args.host, args.port, default_reply=reply).start()
    try:  # (from here: a SIGTERM may come while the lines below are still being printed)
        print(f"Fake LLM provider listening on {fake.url}", flush=True)
        print(f"  OpenAI base_url:    {fake.openai_base_url}", flush=True)
        print(f"  Anthropic base_url: {fake.anthropic_base_url}", flush=True)
        print(f"  Gemini base_url:    {fake.gemini_base_url}", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
