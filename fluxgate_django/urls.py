"""FluxGate's URLs. Mount them in the site's URLconf::

    path("fluxgate/", include("fluxgate_django.urls"))

which serves the REST API under ``fluxgate/api/`` (URL names ``fluxgate:api:...``) and
the LLM gateway: OpenAI's API under ``fluxgate/v1/`` (``fluxgate:openai:...``) and
Anthropic's under ``fluxgate/anthropic/`` (``fluxgate:anthropic:...``).
"""

from __future__ import annotations

from django.urls import include, path

from .gateway import urls as gateway_urls
from .prometheus import MetricsView

app_name = "fluxgate"

urlpatterns = [
    path("api/", include("fluxgate_django.api.urls")),
    path("v1/", include(gateway_urls.openai_urls)),
    path("anthropic/", include(gateway_urls.anthropic_urls)),
    path("metrics", MetricsView.as_view(), name="metrics"),
]
