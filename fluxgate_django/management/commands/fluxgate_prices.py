"""``manage.py fluxgate_prices``: where a model's price comes from.

``--check MODEL...`` shows, for each model, the price every source gives — the
``ModelPrice`` override, FluxGate's supplement, genai-prices — at a date (``--at``, default
today) and tier (``--tier``), and the one FluxGate uses. ``--diff`` lists every supplement
row and override that differs from genai-prices, and the supplement rows that no longer
do (a refreshed genai-prices carries their fix).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from ...models import ModelPrice
from ...price_rates import (
    GENAI_PROVIDER_IDS,
    KINDS,
    MTOK,
    Corrected,
    ModelEntry,
    PriceSource,
    Rates,
    TieredRates,
    _money,
    describe,
    differences,
    find_genai_model,
    genai_rates,
    scaled,
)
from ...price_supplement import SUPPLEMENT_ROWS, Correction, corrections_for, in_force
from ...pricing import (
    _STANDARD_TIERS,
    _multiplier,
    _multiplier_label,
    price_book,
    rates_from_model_price,
)

_NAMES = dict(
    zip(KINDS, ("input", "output", "cache read", "cache write", "1h cache write"), strict=True)
)


def _when(text: str | None) -> dt.datetime:
    if not text:
        return dt.datetime.now(dt.timezone.utc)
    try:
        if len(text) == 10:
            day = dt.date.fromisoformat(text)
            return dt.datetime.combine(day, dt.time(), tzinfo=dt.timezone.utc)
        when = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise CommandError(f"--at: not a date (YYYY-MM-DD) or ISO 8601 time: {text!r}") from exc
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def _difference_text(fixed: PriceSource, baseline: PriceSource) -> list[str]:
    """What ``fixed`` changes from ``baseline``, per input band (empty: nothing)."""
    lines = []
    for start, mask in differences(fixed, baseline):
        if not mask:
            continue
        ours, theirs = fixed.rates_for(start + 1), baseline.rates_for(start + 1)
        changes = ", ".join(
            f"{_NAMES[kind]} ${_money(getattr(ours, kind) * MTOK)} "
            f"(genai-prices ${_money(getattr(theirs, kind) * MTOK)})"
            for i, kind in enumerate(KINDS)
            if mask & (1 << i)
        )
        where = "" if start < 0 else f"over {start:,} input tokens: "
        lines.append(where + changes)
    return lines


class _Sources:
    """The prices each source gives for one provider/model at one time and tier."""

    def __init__(self, provider: str, model: str, at: dt.datetime, tier: str) -> None:
        self.provider, self.model, self.at, self.tier = provider, model, at, tier
        found = find_genai_model(provider, model)
        self.genai_id = getattr(found[0], "id", "") if found else ""
        entry = ModelEntry.of(*found) if found else None
        self.genai = genai_rates(entry, at) if entry else None
        self.genai_tier = genai_rates(entry, at, tier) if entry and tier else None
        self.rows = corrections_for(provider, self.genai_id or model) or corrections_for(
            provider, model
        )
        self.row = in_force(self.rows, at)
        self.tier_row = in_force(self.rows, at, tier) if tier else None
        self.override = price_book.override(provider, model)

    def known(self) -> bool:
        return any(s is not None for s in (self.override, self.row, self.tier_row, self.genai))


def _guess_provider(model: str) -> str | None:
    from genai_prices import data_snapshot

    try:
        found = data_snapshot.get_snapshot().find_provider(model.lower(), None, None)
    except LookupError:
        found = None
    if found is not None:
        ours = {v: k for k, v in GENAI_PROVIDER_IDS.items()}
        return ours.get(found.id, found.id)
    row = ModelPrice.objects.filter(model=model).first()
    if row is not None:
        return row.provider
    rows = [r for r in SUPPLEMENT_ROWS if r.model == model]
    return rows[0].provider if rows else None


class Command(BaseCommand):
    help = (
        "Show where models' prices come from (--check MODEL...), or every supplement row "
        "and ModelPrice override that differs from genai-prices (--diff)."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--check",
            nargs="+",
            metavar="MODEL",
            help="Models to show, as MODEL or PROVIDER:MODEL (e.g. anthropic:claude-sonnet-4-0).",
        )
        parser.add_argument(
            "--diff",
            action="store_true",
            help="List every supplement row and override that differs from genai-prices.",
        )
        parser.add_argument(
            "--provider", help="FluxGate's provider name (openai, anthropic, gemini...)."
        )
        parser.add_argument(
            "--at", help="The prices in force on this date (YYYY-MM-DD, UTC) or time (ISO 8601)."
        )
        parser.add_argument("--tier", default="", help="A service tier (batch, flex, priority...).")

    def handle(self, *args: Any, **options: Any) -> None:
        if not options["check"] and not options["diff"]:
            raise CommandError("Give --check MODEL... or --diff.")
        at = _when(options["at"])
        tier = "" if options["tier"] in _STANDARD_TIERS | {""} else options["tier"]
        unknown = []
        for name in options["check"] or ():
            provider, _, model = name.rpartition(":")
            provider = provider or options["provider"] or _guess_provider(model)
            if not provider:
                self.stdout.write(f"{model}: no provider knows it (give --provider)")
                unknown.append(name)
                continue
            if not self._check(provider, model, at, tier):
                unknown.append(name)
        if options["diff"]:
            self._diff(at if options["at"] else None)
        if unknown:
            raise CommandError(
                f"No price for {', '.join(unknown)}: their events get cost_source='unknown'."
            )

    # -- --check ---------------------------------------------------------------------------

    def _check(self, provider: str, model: str, at: dt.datetime, tier: str) -> bool:
        s = _Sources(provider, model, at, tier)
        out = self.stdout.write
        out(f"{provider}/{model} at {at:%Y-%m-%d %H:%M} UTC, {tier or 'standard'} tier")
        out(f"  override:     {describe(s.override)}")
        for row in s.rows:
            state = "in force" if row in (s.row, s.tier_row) else "not in force then"
            out(f"  supplement:   {describe(row.price_source())}")
            out(f"                {self._row_heading(row)} ({state})")
        if not s.rows:
            out("  supplement:   none")
        named = f" (as {s.genai_id})" if s.genai_id and s.genai_id != model else ""
        out(f"  genai-prices: {describe(s.genai) if s.genai_id else 'unknown model'}{named}")
        if tier and s.genai_id:
            out(f"  genai-prices {tier}: {describe(s.genai_tier)}")
        out(f"  FluxGate uses: {self._uses(s)}")
        return s.known()

    @staticmethod
    def _row_heading(row: Correction) -> str:
        dates = (
            f"{row.valid_from or '…'} to {row.valid_to or '…'}"
            if row.valid_from or row.valid_to
            else "always"
        )
        tier = f"{row.tier} tier, " if row.tier else ""
        return f"{tier}{dates}: corrects {row.corrects}; source {row.source} ({row.source_date})"

    @staticmethod
    def _uses(s: _Sources) -> str:
        if s.override is not None:
            if s.tier:
                factor = _multiplier(s.tier)
                times = f" x {factor} ({s.tier} multiplier)" if factor is not None else ""
                return f"the override{times}"
            return "the override (ModelPrice)"
        source = price_book.data_price(s.provider, s.model, s.at, s.tier) if s.tier else None
        multiplied = ""
        if s.tier and source is None:
            factor = _multiplier(s.tier)
            multiplied = f" x {factor} ({s.tier} multiplier)" if factor is not None else ""
            if factor is None:
                multiplied = f" (no {s.tier} price or multiplier: the standard price)"
        if source is None:
            source = price_book.data_price(s.provider, s.model, s.at)
        if source is None:
            return "nothing: its events get cost_source='unknown'"
        if isinstance(source, Corrected):
            changes = []
            for start, mask in source.differs:
                kinds = ", ".join(_NAMES[k] for i, k in enumerate(KINDS) if mask & (1 << i))
                if not mask:
                    continue
                if start < 0:
                    changes.append(f"calls with {kinds}")
                elif mask == (1 << len(KINDS)) - 1:
                    changes.append(f"calls over {start:,} input tokens")
                else:
                    changes.append(f"calls over {start:,} input tokens with {kinds}")
            if not changes:
                return f"genai-prices{multiplied} (the supplement row agrees with it)"
            return (
                f"the supplement ({source.label}{multiplied}) for {'; '.join(changes)}; "
                f"otherwise {source.baseline_label}{multiplied}"
            )
        label = f"genai-prices {s.tier}" if s.tier and not multiplied else "genai-prices"
        return label + multiplied

    # -- --diff ----------------------------------------------------------------------------

    def _diff(self, at: dt.datetime | None) -> None:
        out = self.stdout.write
        agreeing = []
        out("Supplement rows that differ from genai-prices:")
        for row in SUPPLEMENT_ROWS:
            when = self._row_date(row, at)
            lines = self._row_differences(row, when)
            if lines is None:
                out(f"  {row.provider}/{row.model}: genai-prices does not know it")
                continue
            if not lines:
                agreeing.append(row)
                continue
            out(f"  {row.provider}/{row.model} {self._row_heading(row)}")
            for line in lines:
                out(f"    on {when:%Y-%m-%d}: {line}")
        out("Overrides (ModelPrice) that differ from genai-prices:")
        when = at or dt.datetime.now(dt.timezone.utc)
        for price in ModelPrice.objects.order_by("provider", "model"):
            found = find_genai_model(price.provider, price.model)
            genai = genai_rates(ModelEntry.of(*found), when) if found else None
            ours = rates_from_model_price(price)
            if genai is None:
                out(f"  {price.provider}/{price.model}: genai-prices has no price for it")
                continue
            lines = _difference_text(ours, genai)
            if lines:
                out(
                    f"  {price.provider}/{price.model}" + (f" ({price.note})" if price.note else "")
                )
                for line in lines:
                    out(f"    {line}")
        if agreeing:
            out("Supplement rows genai-prices now agrees with (they can be dropped):")
            for row in agreeing:
                tier = f" ({row.tier})" if row.tier else ""
                out(f"  {row.provider}/{row.model}{tier}: {row.corrects}")

    @staticmethod
    def _row_date(row: Correction, at: dt.datetime | None) -> dt.datetime:
        """A time the row is in force: ``at`` if it is then, else its first day (or last)."""
        if at is not None and row.applies(at):
            return at
        day = row.valid_from or (row.valid_to - dt.timedelta(days=1) if row.valid_to else None)
        if day is None:
            return dt.datetime.now(dt.timezone.utc)
        return dt.datetime.combine(day, dt.time(), tzinfo=dt.timezone.utc)

    @staticmethod
    def _row_differences(row: Correction, when: dt.datetime) -> list[str] | None:
        found = find_genai_model(row.provider, row.model)
        if found is None:
            return None
        entry = ModelEntry.of(*found)
        baseline: Rates | TieredRates | None = genai_rates(entry, when, row.tier)
        if baseline is None and row.tier:
            standard = genai_rates(entry, when)
            factor = _multiplier(row.tier)
            if standard is not None and factor is not None:
                baseline = scaled(
                    standard, factor, _multiplier_label("genai-prices", row.tier, factor)
                )
        if baseline is None:
            return ["genai-prices has no price for it then"]
        return _difference_text(row.price_source(), baseline)
