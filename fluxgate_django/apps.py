from django.apps import AppConfig


class FluxGateConfig(AppConfig):
    name = "fluxgate_django"
    verbose_name = "FluxGate"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import (
            budgets,
            checks,  # noqa: F401  (registers the system checks)
            pricing,
        )

        pricing.connect_signals()
        budgets.connect_signals()
        try:
            import celery  # noqa: F401
        except ImportError:
            return
        from . import celery_support

        celery_support.connect_signals()
