"""System check for where ``DATABASE_ROUTERS`` put FluxGate (registered from ``checks.py``).

* ``fluxgate.E011`` FluxGate's models are written to more than one database. One write
  stores a batch's events, settles its budget counters, adds its rollups and raises its
  alerts in one transaction, and the models reference each other by foreign key: they
  must share a database (their reads may still go to a replica of it).
"""

from __future__ import annotations

from typing import Any

from django.core.checks import Error, Tags, register


@register(Tags.compatibility)
def check_database_routing(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    from django.apps import apps
    from django.db import router

    where: dict[str, list[str]] = {}
    for model in apps.get_app_config("fluxgate_django").get_models():
        where.setdefault(str(router.db_for_write(model)), []).append(model.__name__)
    if len(where) <= 1:
        return []
    placed = "; ".join(
        f"{alias}: {', '.join(sorted(names))}" for alias, names in sorted(where.items())
    )
    return [
        Error(
            f"FluxGate's models are written to more than one database ({placed}).",
            hint=(
                "A write stores events, settles budget counters and adds rollups in one "
                "transaction: route every model of the fluxgate_django app to one database "
                "(db_for_write, and allow_migrate)."
            ),
            obj="settings.DATABASE_ROUTERS",
            id="fluxgate.E011",
        )
    ]
