"""A database router that puts FluxGate on a database of its own (tests/test_routers.py).

Every model of ``fluxgate_django`` is read and written on the ``"fluxgate"`` alias; the
other apps (auth, sessions...) stay on ``"default"``.

``allow_migrate`` is what a site would use too: FluxGate's tables only in its database,
the other apps' tables wherever they are migrated — also in FluxGate's database, where
the foreign keys of events and memberships to the user model need the users' table
(PostgreSQL refuses the migration without it; ``migrate --database fluxgate`` creates
it, empty). An event of a user who is not in that table is stored without the user
link, with its ``end_user_id``. (Here the test databases are created before
``override_settings`` turns the router on, so both have every table, which lets the
tests check that ``"default"`` gets no FluxGate row.)
"""

from __future__ import annotations

from typing import Any

FLUXGATE_DB = "fluxgate"


class FluxGateRouter:
    """Routes ``fluxgate_django``'s models to :data:`FLUXGATE_DB`."""

    app_label = "fluxgate_django"

    def _route(self, model: Any) -> str | None:
        return FLUXGATE_DB if model._meta.app_label == self.app_label else None

    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        return self._route(model)

    def db_for_write(self, model: Any, **hints: Any) -> str | None:
        return self._route(model)

    def allow_migrate(
        self, db: str, app_label: str, model_name: str | None = None, **hints: Any
    ) -> bool | None:
        if app_label == self.app_label:
            return db == FLUXGATE_DB
        return None


ROUTERS = ["tests.routers.FluxGateRouter"]
