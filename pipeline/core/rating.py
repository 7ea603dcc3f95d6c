"""Rating arithmetic (SPEC section 3) and the rate book lookup.

Money is `Decimal` end to end. The sum inside Charged is computed exactly (a private context
with unbounded precision, so no silent rounding whatever the number of digits in the deck) and
divided by 60 with integer arithmetic rounding half-up at 6 decimal places, i.e. the result is
rounded exactly once, never twice. No thread-local decimal context is touched.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal
from functools import lru_cache

__all__ = [
    "RateRow",
    "RateBook",
    "billing_duration",
    "charge",
    "ZERO_MONEY",
]

ZERO_MONEY = Decimal("0.000000")

# Unbounded precision: + and * are exact; only divide_int is used for division (exact too).
_EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN)
_mul = _EXACT.multiply
_add = _EXACT.add
_SIXTY = Decimal(60)


def billing_duration(duration: int, initial: int, recurring: int) -> int:
    """Seconds billed: 0 if not connected, else ``I + (d > I) * ceil((d - I) / R) * R``.

    The result is >= duration, equals I for any 0 < d <= I, and then grows in steps of R.
    """
    if duration <= 0:
        return 0
    if duration <= initial:
        return initial
    return initial + -(-(duration - initial) // recurring) * recurring


def charge(
    duration: int,
    billing: int,
    connection_fee: Decimal,
    initial_rate: Decimal,
    rate: Decimal,
    initial: int,
) -> Decimal:
    """Charged (USD): 0 if duration is 0, else
    ``connection_fee + I * initial_rate / 60 + max(0, billing - I) * rate / 60``,
    computed exactly and rounded half-up (away from zero) to 6 decimal places once.

    Rates are USD per minute, so the whole sum is brought over 60 first
    (``fee*60 + I*initial_rate + extra*rate``) and divided once.
    """
    if duration <= 0:
        return ZERO_MONEY
    extra = billing - initial if billing > initial else 0
    return _charged(extra, connection_fee, initial_rate, rate, initial)


@lru_cache(maxsize=1 << 16)
def _charged(
    extra: int, connection_fee: Decimal, initial_rate: Decimal, rate: Decimal, initial: int
) -> Decimal:
    """`charge` of a connected call, remembered: a deck has few rows and billed seconds come
    in increments, so the same sums recur, and a lookup costs a fraction of the sum. Safe to share:
    the result (always 6 decimal places, its sign that of a non-zero value) depends only on
    the values of the arguments, not on how they are written (Decimal("0.010") and
    Decimal("0.01") are one key), and Decimals are immutable."""
    total60 = _add(
        _add(_mul(connection_fee, _SIXTY), _mul(initial_rate, initial)), _mul(rate, extra)
    )
    return _div60_half_up(total60)


def _div60_half_up(total60: Decimal) -> Decimal:
    """round_half_up(total60 / 60, 6 dp) without any intermediate rounding."""
    neg = total60.is_signed()
    micro = _EXACT.scaleb(_EXACT.copy_abs(total60), 6)  # value in millionths * 60
    q, r = _EXACT.divmod(micro, _SIXTY)  # integral quotient, exact remainder
    if _add(r, r) >= _SIXTY:
        q = _add(q, 1)
    result = _EXACT.scaleb(q, -6)
    return _EXACT.minus(result) if neg and result else result


@dataclass(frozen=True, slots=True)
class RateRow:
    """One row of rates.csv, typed. `initial_rate` already defaults to `rate`; `category` ""
    means any CDR type. `line` is the CSV line, kept so a CDR's rating can be traced back."""

    deck: str
    prefix: str
    country: str
    network: str
    category: str
    rate: Decimal
    initial_rate: Decimal
    connection_fee: Decimal
    initial_increment: int
    recurring_increment: int
    effective_from: datetime
    line: int = 0


class _Slot:
    """All versions of one deck+prefix+category, sorted by effective_from."""

    __slots__ = ("effs", "rows")

    def __init__(self, rows: list[RateRow]) -> None:
        rows.sort(key=lambda r: r.effective_from)
        self.rows = tuple(rows)
        self.effs = tuple(r.effective_from for r in rows)

    def at(self, when: datetime) -> RateRow | None:
        i = bisect_right(self.effs, when)
        return self.rows[i - 1] if i else None


class RateBook:
    """All rate decks, indexed deck -> category -> prefix -> versions by effective_from.

    Lookup rule (SPEC section 3, "Billing-grade rules": category first, then longest prefix):

    1. in force: for each deck+prefix+category, the newest row with ``effective_from <= at``;
       a prefix whose rows are all in the future does not match at all;
    2. the rows whose category equals the CDR type are searched first, longest prefix;
    3. only if none of them matches, the uncategorised rows, longest prefix. A row for another
       category never matches.

    So a Local call to 4915... pays "49, Local" rather than "4915, (any)": an operator who sets
    a Local price means every Local call it covers, and one who wants a finer Local price adds
    "4915, Local". Cost: at most twice `max_prefix_len` dict probes plus a bisect, independent
    of the deck size.
    """

    __slots__ = ("_index", "_max_len", "_rows")

    def __init__(self, rows: Iterable[RateRow]) -> None:
        grouped: dict[str, dict[str, dict[str, list[RateRow]]]] = {}
        all_rows: list[RateRow] = []
        max_len = 0
        for row in rows:
            all_rows.append(row)
            grouped.setdefault(row.deck, {}).setdefault(row.category, {}).setdefault(
                row.prefix, []
            ).append(row)
            max_len = max(max_len, len(row.prefix))
        self._index: dict[str, dict[str, dict[str, _Slot]]] = {
            deck: {
                category: {prefix: _Slot(rs) for prefix, rs in prefixes.items()}
                for category, prefixes in categories.items()
            }
            for deck, categories in grouped.items()
        }
        self._max_len = max_len
        self._rows = tuple(all_rows)

    @property
    def decks(self) -> frozenset[str]:
        return frozenset(self._index)

    @property
    def rows(self) -> tuple[RateRow, ...]:
        return self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def lookup(self, deck: str, digits: str, category: str, at: datetime) -> RateRow | None:
        """The row rating a call to `digits` of CDR type `category` starting at `at` (aware),
        or None if the deck is unknown or nothing matches (see the class docstring)."""
        categories = self._index.get(deck)
        if categories is None:
            return None
        longest = min(len(digits), self._max_len)
        for cat in (category, ""):
            slots = categories.get(cat)
            if slots is None:
                continue
            for n in range(longest, 0, -1):
                slot = slots.get(digits[:n])
                if slot is not None:
                    row = slot.at(at)
                    if row is not None:
                        return row
        return None
