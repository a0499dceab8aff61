"""The demo workload behind ``manage.py fluxgate_demo``.

Real ``openai.OpenAI`` and ``anthropic.Anthropic`` clients, wrapped with
``track_openai`` / ``track_anthropic``, talk HTTP to a loopback fake provider, so nothing
is spent. Modules: ``users`` (demo teams, users and the admin login), ``workload`` (the
planned SDK calls per feature and running them), ``service`` (routed calls through
``LLMService``), ``runner`` (one whole demo run) and ``report`` (the cost table).
"""
