"""FluxGate's URLs. Mount them in the site's URLconf::

    path("fluxgate/", include("fluxgate_django.urls"))

which serves the REST API under ``fluxgate/api/`` (URL names ``fluxgate:api:...``).
"""

from __future__ import annotations

from django.urls import include, path

app_name = "fluxgate"

urlpatterns = [
    path("api/", include("fluxgate_django.api.urls")),
]
