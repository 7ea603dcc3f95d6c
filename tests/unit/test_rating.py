"""Billing duration, Charged arithmetic and rate-book lookup (SPEC section 3)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.core.rating import RateBook, RateRow, billing_duration, charge

D = Decimal


# --------------------------------------------------------------------------- billing duration


@pytest.mark.parametrize(
    ("duration", "initial", "recurring", "expected"),
    [
        # 60/60: per minute, every started minute is billed
        (0, 60, 60, 0),
        (1, 60, 60, 60),
        (60, 60, 60, 60),
        (61, 60, 60, 120),
        (3599, 60, 60, 3600),
        # 1/1: per second
        (1, 1, 1, 1),
        (37, 1, 1, 37),
        # 30/6: 30 s minimum, then 6 s steps
        (1, 30, 6, 30),
        (30, 30, 6, 30),
        (31, 30, 6, 36),
        (36, 30, 6, 36),
        (37, 30, 6, 42),
        # initial shorter than recurring
        (5, 1, 60, 1 + 60),
    ],
)
def test_billing_duration_worked(duration: int, initial: int, recurring: int, expected: int):
    assert billing_duration(duration, initial, recurring) == expected


durations = st.integers(min_value=1, max_value=200_000)
increments = st.integers(min_value=1, max_value=3600)


@given(durations, increments, increments)
def test_billing_duration_covers_the_call_in_whole_steps(d: int, i: int, r: int):
    b = billing_duration(d, i, r)
    assert b >= d and b >= i
    assert (b - i) % r == 0
    # tight: never a whole extra step more than needed
    assert b == i if d <= i else b - d < r


@given(st.integers(min_value=0, max_value=200_000), durations, increments, increments)
def test_billing_duration_monotonic(d1: int, delta: int, i: int, r: int):
    assert billing_duration(d1, i, r) <= billing_duration(d1 + delta, i, r)


@given(increments, increments)
def test_billing_duration_zero_for_unconnected(i: int, r: int):
    assert billing_duration(0, i, r) == 0


# --------------------------------------------------------------------------- charge


def test_charge_per_minute():
    # 61 s at 0.0100/min on 60/60 -> two minutes
    assert charge(61, 120, D("0"), D("0.0100"), D("0.0100"), 60) == D("0.020000")


def test_charge_per_second():
    # 37 s at 0.0120/min on 1/1 -> 37 * 0.012 / 60 = 0.0074
    assert charge(37, 37, D("0"), D("0.0120"), D("0.0120"), 1) == D("0.007400")


def test_charge_30_6_with_initial_rate_and_connection_fee():
    # 37 s on 30/6 -> billed 42 s: 0.0010 + 30 * 0.0600/60 + 12 * 0.0450/60
    #                                = 0.001 + 0.03 + 0.009
    assert charge(37, 42, D("0.0010"), D("0.0600"), D("0.0450"), 30) == D("0.040000")
    # exactly the initial increment: no recurring part
    assert charge(30, 30, D("0.0010"), D("0.0600"), D("0.0450"), 30) == D("0.031000")


def test_charge_zero_duration_is_zero_even_with_connection_fee():
    result = charge(0, 0, D("0.5"), D("1"), D("1"), 60)
    assert result == 0
    assert str(result) == "0.000000"


def test_charge_rounds_half_up_not_half_even():
    # 1 s at 0.00015/min = 0.0000025 exactly: half-up 0.000003 (half-even would give 0.000002)
    assert str(charge(1, 1, D("0"), D("0.00015"), D("0.00015"), 1)) == "0.000003"
    # 0.0000005 -> 0.000001 (half-even: 0.000000)
    assert str(charge(1, 1, D("0"), D("0.00003"), D("0.00003"), 1)) == "0.000001"
    # just under half rounds down
    assert str(charge(1, 1, D("0"), D("0.0000299"), D("0.0000299"), 1)) == "0.000000"


def test_charge_rounds_once_at_the_end():
    # fee 0.0000004 and initial part 1 * 0.000024/60 = 0.0000004: each rounds to 0 on its own,
    # their sum 0.0000008 rounds to 0.000001
    assert str(charge(1, 1, D("0.0000004"), D("0.000024"), D("0"), 1)) == "0.000001"


def test_charge_repeating_decimal():
    # 1 s at 0.01/min = 0.0001666... -> 0.000167
    assert str(charge(1, 1, D("0"), D("0.01"), D("0.01"), 1)) == "0.000167"


def test_charge_is_exact_with_many_digits():
    # more significant digits than the default 28-digit decimal context holds
    rate = D("0.1234567890123456789012345678901")
    expected = (Fraction(rate) * 3600) / 60
    got = charge(3600, 3600, D(0), rate, rate, 1)
    assert got == _exact_half_up(expected)


def _exact_half_up(x: Fraction) -> Decimal:
    """Reference rounding on rationals: no decimal context involved."""
    scaled = x * 1_000_000
    q, r = divmod(scaled.numerator, scaled.denominator)
    if 2 * r >= scaled.denominator:
        q += 1
    return D(q).scaleb(-6)


money = st.decimals(min_value=0, max_value=100, places=6, allow_nan=False, allow_infinity=False)


@given(
    st.integers(min_value=0, max_value=20_000),
    increments,
    increments,
    money,
    money,
    money,
)
def test_charge_matches_exact_rational_reference(d, i, r, fee, initial_rate, rate):
    b = billing_duration(d, i, r)
    got = charge(d, b, fee, initial_rate, rate, i)
    assert isinstance(got, Decimal)
    assert got.as_tuple().exponent == -6
    if d == 0:
        assert got == 0
        return
    exact = Fraction(fee) + Fraction(i) * Fraction(initial_rate) / 60
    exact += max(0, b - i) * Fraction(rate) / 60
    assert got == _exact_half_up(exact)


@given(
    st.integers(min_value=0, max_value=20_000),
    st.integers(min_value=0, max_value=20_000),
    increments,
    increments,
    money,
    money,
    money,
)
def test_charge_monotonic_in_duration(d1, delta, i, r, fee, initial_rate, rate):
    d2 = d1 + delta
    c1 = charge(d1, billing_duration(d1, i, r), fee, initial_rate, rate, i)
    c2 = charge(d2, billing_duration(d2, i, r), fee, initial_rate, rate, i)
    assert c1 <= c2


# --------------------------------------------------------------------------- rate book

T0 = datetime(2020, 1, 1, tzinfo=UTC)
SWITCH = datetime(2026, 11, 1, tzinfo=UTC)


def row(prefix: str, rate: str, category: str = "", eff: datetime = T0, deck: str = "d") -> RateRow:
    return RateRow(
        deck=deck,
        prefix=prefix,
        country="C",
        network="N",
        category=category,
        rate=D(rate),
        initial_rate=D(rate),
        connection_fee=D(0),
        initial_increment=1,
        recurring_increment=1,
        effective_from=eff,
    )


BOOK = RateBook(
    [
        row("1", "0.0100"),
        row("1", "0.0080", eff=SWITCH),
        row("1", "0.0060", "Local"),
        row("1201", "0.0090"),
        row("44", "0.0150"),
        row("447", "0.0450"),
        row("447", "0.0300", "Origin based"),
        row("33", "0.0110", "International"),
        row("4420", "0.5000", eff=SWITCH),  # only in the future
        row("44", "0.9999", deck="other"),
    ]
)
AT = datetime(2025, 6, 1, tzinfo=UTC)


def rate_of(digits: str, category: str, at: datetime = AT, deck: str = "d") -> Decimal | None:
    r = BOOK.lookup(deck, digits, category, at)
    return None if r is None else r.rate


def test_longest_prefix_wins():
    assert rate_of("447700900123", "International") == D("0.0450")
    assert rate_of("442079460123", "International") == D("0.0150")


def test_exact_category_beats_uncategorised_at_same_prefix():
    assert rate_of("447700900123", "Origin based") == D("0.0300")
    assert rate_of("12025550123", "Local") == D("0.0060")
    assert rate_of("12025550123", "International") == D("0.0100")


def test_category_first_then_longest_prefix():
    # a row of the call's category wins over a longer uncategorised prefix
    assert rate_of("12015550123", "Local") == D("0.0060")
    # without a row of its category, the longest uncategorised prefix
    assert rate_of("12015550123", "International") == D("0.0090")


def test_row_of_another_category_never_matches():
    assert rate_of("33142685300", "International") == D("0.0110")
    assert rate_of("33142685300", "Origin based") is None


def test_effective_date_switch_over():
    assert rate_of(
        "12025550123", "International", datetime(2026, 10, 31, 23, 59, 59, tzinfo=UTC)
    ) == D("0.0100")
    assert rate_of("12025550123", "International", SWITCH) == D("0.0080")  # at the instant
    assert rate_of("12025550123", "International", datetime(2027, 1, 1, tzinfo=UTC)) == D("0.0080")
    # the Local row has no newer version: still in force
    assert rate_of("12025550123", "Local", datetime(2027, 1, 1, tzinfo=UTC)) == D("0.0060")


def test_prefix_not_yet_in_force_falls_back_to_shorter():
    assert rate_of("442079460123", "International", AT) == D("0.0150")
    assert rate_of("442079460123", "International", SWITCH) == D("0.5000")


def test_nothing_before_first_effective_date():
    assert rate_of("12025550123", "International", datetime(2019, 12, 31, tzinfo=UTC)) is None


def test_decks_are_separate_and_unknown_deck_or_prefix_is_none():
    assert rate_of("447700900123", "International", deck="other") == D("0.9999")
    assert rate_of("12025550123", "International", deck="other") is None
    assert rate_of("12025550123", "International", deck="nope") is None
    assert rate_of("999", "International") is None
    assert rate_of("", "International") is None


def test_book_properties():
    assert BOOK.decks == {"d", "other"}
    assert len(BOOK) == 10


def test_remembered_charges_equal_fresh_ones_whatever_the_notation():
    """`charge` remembers sums by value: a rate written 0.0100 or 0.01 (equal keys) must give
    the very same result, digits and exponent, as computing afresh."""
    import random

    from pipeline.core.rating import _charged

    rnd = random.Random(3)
    rates = [Decimal(f"0.{rnd.randrange(10**6):06d}") for _ in range(20)]
    variants = [r for v in rates for r in (v, v.normalize(), Decimal(f"{v}000"))]
    for _ in range(20_000):
        fee, initial_rate, rate = (rnd.choice(variants) for _ in range(3))
        initial, recurring = rnd.choice([(1, 1), (30, 6), (60, 60)])
        duration = rnd.randrange(0, 4000)
        billed = billing_duration(duration, initial, recurring)
        got = charge(duration, billed, fee, initial_rate, rate, initial)
        if duration <= 0:
            continue
        extra = max(0, billed - initial)
        fresh = _charged.__wrapped__(extra, fee, initial_rate, rate, initial)
        assert (str(got), got.as_tuple()) == (str(fresh), fresh.as_tuple())
