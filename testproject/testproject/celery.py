"""The test project's Celery app: ``celery -A testproject worker --beat`` (run from
``testproject/``), configured from Django settings (``CELERY_*``: the broker is
``REDIS_URL``), with FluxGate's tasks and periodic tasks.

Set ``FLUXGATE_RECORDER=celery`` to record through it (the recorder finds this app; a
site with several Celery apps sets ``FLUXGATE["CELERY_APP"]``).
"""

import os

from celery import Celery

from fluxgate_django.celery_support import beat_schedule, configure_celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")

app = Celery("testproject")
app.config_from_object("django.conf:settings", namespace="CELERY")
configure_celery(app)  # FluxGate's worker settings (README, "Running at scale": Celery)
app.autodiscover_tasks()


@app.on_after_configure.connect
def add_fluxgate_schedule(sender: Celery, **kwargs: object) -> None:
    sender.conf.beat_schedule = {**beat_schedule(), **(sender.conf.beat_schedule or {})}
