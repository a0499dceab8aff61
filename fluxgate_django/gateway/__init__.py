"""FluxGate's LLM gateway: the company's one endpoint for OpenAI's and Anthropic's APIs.

``openai.OpenAI(base_url="https://site/fluxgate/v1", api_key="fg_live_...")`` and
``anthropic.Anthropic(base_url="https://site/fluxgate/anthropic", api_key="fg_live_...")``
work unchanged: the key's team pays, each call is an event with its exact cost, budgets
and allowed models are enforced before anything is sent, and ``model`` may name a model,
a ``FLUXGATE["MODELS"]`` alias or ``route:NAME`` (the LLM service's routes, with their
fallback, circuit breakers and response cache).

Modules: ``urls`` and ``views`` (thin async views), ``core`` (what every endpoint shares:
key, attribution, model or route, the attempts), ``attempt`` (one attempt: budget,
upstream request, event, stream relay), ``callers`` (key and attribution), ``targets``
(models, aliases, routes, allowed models), ``protocols`` (what differs between the two
APIs), ``upstream`` (pooled HTTP clients per event loop), ``wire`` (JSON read by the
tracked clients' usage readers, SSE framing), ``crossing`` (a fallback across protocols,
through ``translate``).
"""
