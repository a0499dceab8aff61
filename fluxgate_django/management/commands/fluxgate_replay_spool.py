"""``manage.py fluxgate_replay_spool``: write the events spooled during a database outage.

Spooled events are also replayed by the next successful write of the process that
spooled them and by the ``fluxgate.replay_spool`` periodic task; this command is for a
process that is gone (a stopped server, a crashed worker) or to empty the spool by hand.
Replaying is idempotent by ``tracking_id`` and settles the budget reservations the
events carry exactly once. Exits with status 1 if events remain spooled (the database is
still unreachable).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from fluxgate_django.recording import spool
from fluxgate_django.recording.base import write_events


class Command(BaseCommand):
    help = "Write the events FluxGate spooled while the database was unreachable."

    def handle(self, *args: Any, **options: Any) -> None:
        directory = spool.spool_dir()
        written = spool.replay(write_events)
        left = sorted(directory.glob("*.jsonl"))
        self.stdout.write(f"Replayed {written} spooled events from {directory}.")
        if left:
            raise CommandError(
                f"{len(left)} spool file(s) ({spool.size_bytes(directory)} bytes) are still in "
                f"{directory}: the database is unreachable, or another process is replaying "
                "them. Run the command again later."
            )
