"""The gateway's URLs, mounted by ``fluxgate_django.urls`` beside the REST API:

* ``fluxgate/v1/`` — OpenAI's API (``openai.OpenAI(base_url=".../fluxgate/v1")``):
  ``chat/completions``, ``completions``, ``responses``, ``embeddings``, ``models``
  (URL names ``fluxgate:openai:...``);
* ``fluxgate/anthropic/`` — Anthropic's (``anthropic.Anthropic(base_url=
  ".../fluxgate/anthropic")``): ``v1/messages``, ``v1/messages/count_tokens``
  (``fluxgate:anthropic:...``).
"""

from __future__ import annotations

from django.urls import path

from . import views

openai_urls = (
    [
        path("chat/completions", views.endpoint_view("openai", "chat"), name="chat-completions"),
        path("completions", views.endpoint_view("openai", "completions"), name="completions"),
        path("responses", views.endpoint_view("openai", "responses"), name="responses"),
        path("embeddings", views.endpoint_view("openai", "embeddings"), name="embeddings"),
        path("models", views.models, name="models"),
    ],
    "openai",
)

anthropic_urls = (
    [
        path("v1/messages", views.endpoint_view("anthropic", "messages"), name="messages"),
        path(
            "v1/messages/count_tokens",
            views.endpoint_view("anthropic", "count_tokens"),
            name="count-tokens",
        ),
    ],
    "anthropic",
)
