"""What a call may cost, before it is sent: the estimate a budget reserves.

Input is estimated from the request's text, output from ``max_tokens`` (or
``BUDGET_DEFAULT_OUTPUT_TOKENS``), both at the model's price.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from .conf import fluxgate_settings
from .pricing import price_book
from .records import Usage

_TEXT_KEYS = ("messages", "input", "prompt", "system", "instructions", "contents")

#: Characters per input token assumed when estimating. Tokenizers average ~4 for English
#: prose but fewer for code and many other languages; 3 errs on the side of reserving
#: too much, so that estimates rarely fall short of the real cost.
CHARS_PER_TOKEN = 3


def prompt_chars(body: dict[str, Any]) -> int:
    """Characters of text in a request body (messages, input, prompt, system...)."""
    return sum(_text_len(body[k]) for k in _TEXT_KEYS if k in body)


def _text_len(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_text_len(v) for k, v in value.items() if k not in ("role", "type"))
    if isinstance(value, (list, tuple)):
        return sum(_text_len(v) for v in value)
    return len(getattr(value, "content", "") or "") if hasattr(value, "content") else 0


def max_output_tokens(body: dict[str, Any], operation: str = "") -> int:
    """The output cap a request sets (``BUDGET_DEFAULT_OUTPUT_TOKENS`` when it sets none)."""
    if operation == "embeddings":
        return 0
    for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = body.get(key)
        if isinstance(value, int) and value >= 0:
            return value
    return int(fluxgate_settings.BUDGET_DEFAULT_OUTPUT_TOKENS)


def estimate_cost(provider: str, model: str, chars: int, output_tokens: int) -> Decimal | None:
    """Estimated cost: input from the request's text, ``output_tokens`` at the output rate.

    None when the model has no price (the reservation is then 0, but an exhausted budget
    still blocks)."""
    source = price_book.price_source(provider, model) if model else None
    if source is None:
        return None
    input_tokens = -(-chars // CHARS_PER_TOKEN)
    return source.cost(Usage(input_tokens=input_tokens, output_tokens=output_tokens))
