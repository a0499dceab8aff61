from typing import Any

from django.apps import AppConfig


class FluxGateConfig(AppConfig):
    name = "fluxgate_django"
    verbose_name = "FluxGate"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import (
            alerts,
            checks,  # noqa: F401  (registers the system checks)
            ledger,
            pricing,
            runaway,
            teams,
        )
        from .recording import hooks
        from .reports import rollups

        pricing.connect_signals()
        ledger.connect_signals()
        teams.connect_signals()

        # What a write does besides storing events: registered here, so that the
        # recorder imports none of it (see recording/hooks.py).
        def settle_and_alert(batch: Any) -> None:
            counters = ledger.settle_batch(batch.records)
            if counters:
                alerts.check_thresholds(counters)

        hooks.on_prepare("budgets", ledger.note_estimate_charges)
        hooks.on_write("budgets", settle_and_alert)
        hooks.on_write("rollups", rollups.save_written)
        hooks.after_write("runaway", runaway.count_written)
        try:
            import celery  # noqa: F401
        except ImportError:
            return
        from . import celery_support

        celery_support.connect_signals()
