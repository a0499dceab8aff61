"""A logged-in user of a UUID-pk user model makes tracked calls on a site recording
through Celery; prints (JSON) each call's tracking id and the user key its stored event
got. ``DJANGO_SETTINGS_MODULE=tests.settings_celery_uuid python -m tests.uuid_users.drive``
with the environment of a test worker (tests/services.py ``Worker``); run by
tests/test_celery.py."""

from __future__ import annotations

import json
import os
import time

import django


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings_celery_uuid")
    django.setup()
    import openai
    from django.contrib.auth import get_user_model
    from django.http import HttpResponse
    from django.test import RequestFactory

    import fluxgate_django
    from fluxgate_django import track_openai, tracking_context
    from fluxgate_django.conf import fluxgate_settings
    from fluxgate_django.middleware import FluxGateContextMiddleware
    from fluxgate_django.models import Event

    user = get_user_model().objects.create_user("uuid-ann", "ann@example.com", "pw")
    options = {k: v for k, v in fluxgate_settings.PROVIDERS["openai"].items() if v is not None}
    client = track_openai(openai.OpenAI(max_retries=0, **options))
    messages = [{"role": "user", "content": "hi"}]
    ids = []

    def view(request: object) -> HttpResponse:
        response = client.chat.completions.create(model="gpt-4o-mini", messages=messages)
        ids.append(str(response.fluxgate.tracking_id))
        return HttpResponse("ok")

    middleware = FluxGateContextMiddleware(view)
    for _ in range(2):  # a logged-in request: the middleware's user
        request = RequestFactory().get("/chat/")
        request.user = user
        assert middleware(request).status_code == 200
    with tracking_context(user=user):  # a task or a script: a user instance
        view(None)
    assert fluxgate_django.flush(timeout=10)
    deadline = time.monotonic() + 30
    while Event.objects.filter(tracking_id__in=ids).count() < len(ids):
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    stored = dict(Event.objects.filter(tracking_id__in=ids).values_list("tracking_id", "user_id"))
    print(
        json.dumps(
            {
                "user": str(user.pk),
                "sent": ids,
                "stored": {str(k): str(v) if v is not None else None for k, v in stored.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
