"""``manage.py fluxgate_replay_spool``: write the events spooled during a database outage,
and the journals of processes that died.

Spooled events are also replayed by the next successful write of the process that
spooled them and by the ``fluxgate.replay_spool`` periodic task; this command is for a
process that is gone (a stopped server, a crashed worker) or to empty the spool by hand.
Replaying is idempotent by ``tracking_id`` and settles the budget reservations the
events carry exactly once. A line without a valid MAC (planted, another site's) is
never stored: it is counted as rejected and kept aside in ``rejected.jsonl``.

It prints what it did — events written, lines rejected, events still in the spool — and
exits with status 1 if events remain spooled, saying why (the database error that
stopped the replay, or another process replaying them).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from fluxgate_django.recording import spool
from fluxgate_django.recording.write import write_events


class Command(BaseCommand):
    help = "Write the events FluxGate spooled while the database was unreachable."

    def handle(self, *args: Any, **options: Any) -> None:
        directory = spool.spool_dir()
        result = spool.replay_all(write_events)
        pending = spool.pending_events(directory)
        self.stdout.write(
            f"Replayed the spool in {directory}: {result.written} events written, "
            f"{result.rejected} lines rejected, {pending} events still pending."
        )
        if result.rejected:
            self.stdout.write(
                f"Rejected lines (no valid MAC, or unreadable) were not stored; they are "
                f"kept in {directory / spool.REJECTED_FILE}."
            )
        if pending:
            if result.error:
                why = f"the database failed: {result.error}"
            else:
                why = "another process is replaying them"
            raise CommandError(
                f"{pending} events are still in the spool ({why}). Run the command again later."
            )
