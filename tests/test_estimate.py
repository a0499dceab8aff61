"""What a budget reserves for a call is a bound on its cost: the whole request as sent
(tools and schemas included), images and PDFs by the provider's own formula, output up
to the call's cap or the model's limit, at the model's rate for that many tokens."""

from __future__ import annotations

import base64
import json
import struct
import zlib
from decimal import Decimal

import pytest

from fluxgate_django.estimate import (
    Calibration,
    choices,
    estimate_cost,
    input_tokens_bound,
    max_output_tokens,
    output_tokens_bound,
)
from fluxgate_django.media_tokens import image_size, image_tokens, pdf_pages

pytestmark = pytest.mark.django_db


def png(width: int, height: int) -> bytes:
    """A real (black, greyscale) PNG image of the given size."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + b"\x00" * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows, 9))
        + chunk(b"IEND", b"")
    )


def jpeg_header(width: int, height: int) -> bytes:
    """The start of a baseline JPEG (SOI, an APP0 segment, SOF0): what is read of it."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\x01\x22\x00" * 3
    return b"\xff\xd8" + app0 + sof0 + b"\xff\xda" + b"\x00" * 32


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def chat(*content: object, **options: object) -> dict[str, object]:
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": list(content)}], **options}


def test_every_text_of_the_request_counts_a_token_per_byte():
    text = "Résumé ünïcödé — 日本語 " * 20
    body = {
        "model": "gpt-4o",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}],
        "max_tokens": 10,
        "temperature": 0.2,
    }
    bound = input_tokens_bound(body, "openai", "gpt-4o")
    assert bound >= len(text.encode()) + len(b"Be brief.")  # (bytes, not characters)
    # Options are not text the model reads.
    assert input_tokens_bound({**body, "temperature": 1.5, "seed": 123456}, "openai") == (
        input_tokens_bound(body, "openai")
    )


def test_tools_and_their_schemas_are_part_of_the_input():
    body = chat({"type": "text", "text": "What is the weather?"})
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather of a city, in degrees and words. " * 10,
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "A city name"}},
                "required": ["city"],
            },
        },
    }
    without = input_tokens_bound(body, "openai", "gpt-4o")
    with_tool = input_tokens_bound({**body, "tools": [tool]}, "openai", "gpt-4o")
    assert with_tool - without >= len(json.dumps(tool, separators=(",", ":")))
    # Anthropic's and Responses' shapes: system blocks, instructions, input items.
    assert (
        input_tokens_bound(
            {"system": [{"type": "text", "text": "x" * 500}], "messages": []}, "anthropic"
        )
        >= 500
    )
    assert input_tokens_bound({"instructions": "y" * 300, "input": "z" * 200}, "openai") >= 500


@pytest.mark.parametrize(
    ("provider", "model", "size", "detail", "tokens"),
    [
        # 1024x1024: within 2048; short side to 768: 2 x 2 tiles.
        ("openai", "gpt-4o", (1024, 1024), "high", 85 + 170 * 4),
        ("openai", "gpt-4o", (1024, 1024), "low", 85),
        ("openai", "gpt-4o-mini", (1024, 1024), "auto", 2833 + 5667 * 4),
        # 4096x1024 -> 2048x512: already short side < 768: 4 x 1 tiles.
        ("openai", "gpt-4o", (4096, 1024), "", 85 + 170 * 4),
        ("openai", "gpt-4.1-mini", (1024, 1024), "", -(-(32 * 32 * 162) // 100)),
        ("anthropic", "claude-sonnet-4-5", (1024, 1024), "", -(-(1024 * 1024) // 750)),
        ("anthropic", "claude-sonnet-4-5", (4000, 4000), "", 1534),  # fitted to 1.15 MP
        ("gemini", "gemini-2.5-flash", (300, 200), "", 258),
        ("gemini", "gemini-2.5-flash", (1024, 1024), "", 258 * 4),
    ],
)
def test_images_cost_what_the_providers_formula_says(provider, model, size, detail, tokens):
    assert image_tokens(provider, model, size, detail) == tokens


def test_inline_images_are_read_for_their_size_not_counted_by_their_base64():
    image = png(1024, 1024)
    assert image_size(b64(image)) == (1024, 1024)
    assert image_size(b64(jpeg_header(1600, 900))) == (1600, 900)
    url = f"data:image/png;base64,{b64(image)}"
    part = {"type": "image_url", "image_url": {"url": url, "detail": "high"}}
    text_only = input_tokens_bound(chat({"type": "text", "text": "Describe"}), "openai", "gpt-4o")
    bound = input_tokens_bound(chat({"type": "text", "text": "Describe"}, part), "openai", "gpt-4o")
    assert bound - text_only == 765 + 1  # the formula (and a list separator), not len(url)
    # Anthropic's base64 source, Gemini's inline data (bytes).
    anthropic = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": b64(image)},
                    }
                ],
            }
        ]
    }
    assert input_tokens_bound(anthropic, "anthropic", "claude-sonnet-4-5") < 1399 + 100
    assert input_tokens_bound(anthropic, "anthropic", "claude-sonnet-4-5") >= 1399
    gemini = {"contents": [{"parts": [{"inline_data": {"mime_type": "image/png", "data": image}}]}]}
    assert 1032 <= input_tokens_bound(gemini, "gemini", "gemini-2.5-flash") < 1032 + 100


def test_an_image_by_url_is_reserved_as_the_largest_the_formula_allows():
    part = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    body = chat(part)
    assert input_tokens_bound(body, "openai", "gpt-4o") >= 85 + 170 * 8
    assert input_tokens_bound(body, "openai", "gpt-4o-mini") >= 2833 + 5667 * 8


def test_a_pdf_is_reserved_per_page():
    pages = b"".join(b"%d 0 obj << /Type /Page /Parent 1 0 R >> endobj\n" % i for i in range(3))
    pdf = b"%PDF-1.4\n1 0 obj << /Type /Pages /Count 3 >> endobj\n" + pages + b"%%EOF"
    assert pdf_pages(b64(pdf)) == 3
    document = {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": b64(pdf)},
    }
    body = {"messages": [{"role": "user", "content": [document]}]}
    assert input_tokens_bound(body, "anthropic", "claude-sonnet-4-5") >= 3 * (4000 + 1534)
    # An OpenAI file part, and a PDF whose pages hide in object streams: a page per 2 KB.
    file_part = {"type": "file", "file": {"file_data": f"data:application/pdf;base64,{b64(pdf)}"}}
    assert input_tokens_bound(chat(file_part), "openai", "gpt-4o") >= 3 * (4000 + 1445)
    assert pdf_pages(b"%PDF-1.7\n" + b"\x00" * 5000) == 3


def test_the_output_bound_is_the_cap_times_the_choices_else_the_models_limit():
    body = {"max_tokens": 200, "n": 3}
    assert max_output_tokens(body) == 200 and choices(body) == 3
    assert output_tokens_bound("openai", "gpt-4o", 200, 1000, choices=3) == 600
    assert output_tokens_bound("openai", "gpt-4o", None, 1000) == 16_384
    assert output_tokens_bound("openai", "gpt-4o-2024-08-06", None, 1000) == 16_384
    # Not listed: what the context window leaves after the input (deepseek-chat: 64,000).
    assert output_tokens_bound("deepseek", "deepseek-chat", None, 1000) == 63_000


def test_output_bound_falls_back_to_the_setting_for_an_unknown_model(settings):
    settings.FLUXGATE = {"BUDGET_DEFAULT_OUTPUT_TOKENS": 777}
    assert output_tokens_bound("acme", "acme-1", None, 10) == 777


def test_a_long_input_is_priced_at_the_models_long_context_rate():
    # claude-sonnet-4-5: $3/MTok input up to 200k tokens, $6/MTok above.
    short = estimate_cost("anthropic", "claude-sonnet-4-5", 100_000, 0)
    long = estimate_cost("anthropic", "claude-sonnet-4-5", 250_000, 0)
    assert short == Decimal("0.3")
    assert long == Decimal("1.5")


def test_calibration_scales_reservations_of_a_model_that_cost_more_than_its_bound():
    calibration = Calibration()
    assert calibration.scale("openai", "gpt-4o") == 1.0
    calibration.observe("openai", "gpt-4o", 100, 80)  # within its bound: nothing to learn
    assert calibration.scale("openai", "gpt-4o") == 1.0
    calibration.observe("openai", "gpt-4o", 100, 400)
    assert calibration.scale("openai", "gpt-4o") == 4.0
    assert calibration.scale("openai", "gpt-4o-mini") == 1.0
    for _ in range(Calibration.WINDOW):
        calibration.observe("openai", "gpt-4o", 100, 90)
    assert calibration.scale("openai", "gpt-4o") == 1.0  # (the window has moved on)


def test_enum_values_count_as_their_text():
    import enum

    class Role(str, enum.Enum):
        USER = "user-role-name"

    class Count(enum.IntEnum):
        MANY = 123456

    plain = input_tokens_bound({"messages": [{"role": "user-role-name", "n": 123456}]}, "openai")
    enums = input_tokens_bound({"messages": [{"role": Role.USER, "n": Count.MANY}]}, "openai")
    assert enums == plain
