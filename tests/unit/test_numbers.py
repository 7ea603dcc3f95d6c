"""Number facts and URI digit extraction."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from phonenumbers import COUNTRY_CODE_TO_REGION_CODE

from pipeline.core.numbers import UNKNOWN, NumberInfo, country_name, describe, digits_of


@pytest.mark.parametrize(
    ("digits", "expected"),
    [
        ("442079460123", NumberInfo("GB", "United Kingdom", "Fixed")),
        ("4915112345678", NumberInfo("DE", "Germany", "Mobile")),
        ("493012345678", NumberInfo("DE", "Germany", "Fixed")),
        ("33612345678", NumberInfo("FR", "France", "Mobile")),
        ("33142685300", NumberInfo("FR", "France", "Fixed")),
        # NANP numbers cannot be told apart: reported as such, not guessed
        ("12015550123", NumberInfo("US", "United States", "Fixed or mobile")),
        ("14165550100", NumberInfo("CA", "Canada", "Fixed or mobile")),
        # toll-free: libphonenumber gives no geocoded name for NANP toll-free; we still do
        ("18005550100", NumberInfo("US", "United States", "Toll-free")),
        # invalid per libphonenumber (Ofcom drama range): no country of its own
        ("447700900123", UNKNOWN),
        ("4912", UNKNOWN),  # a short CLI is not a German number
        ("33000000000", UNKNOWN),
        # the EU's outermost regions and Åland have region codes of their own
        ("262262123456", NumberInfo("RE", "Réunion", "Fixed")),
        ("358181234567", NumberInfo("AX", "Åland Islands", "Fixed")),
        # ISO 3166 current names, not libphonenumber's dated ones
        ("420212345678", NumberInfo("CZ", "Czechia", "Fixed")),
        ("902123456789", NumberInfo("TR", "Türkiye", "Fixed")),
        ("38922012345", NumberInfo("MK", "North Macedonia", "Fixed")),
        # non-geographic calling code: no ISO country, but a name
        ("80012345678", NumberInfo(None, "International Freephone", "Toll-free")),
        # a leading + is tolerated
        ("+442079460123", NumberInfo("GB", "United Kingdom", "Fixed")),
    ],
)
def test_describe(digits: str, expected: NumberInfo):
    assert describe(digits) == expected


@pytest.mark.parametrize("digits", ["", "+", "abc", "44 20 7946 0123", "0", "1", "٤٤٢٠٧٩٤٦٠١٢٣"])
def test_describe_unknown(digits: str):
    assert describe(digits) == UNKNOWN == NumberInfo(None, "", "Unknown")


def test_describe_is_cached_per_numbering_plan_prefix(monkeypatch):
    from pipeline.core import numbers

    calls = []
    real = numbers._describe
    monkeypatch.setattr(numbers, "_describe", lambda d: calls.append(d) or real(d))
    numbers.clear_caches()
    first = describe("442079460123")
    assert describe("442079460999") == first  # same leading digits and length: no re-parse
    assert describe("+442079460123") == first
    assert calls == ["442079460123"]
    assert describe("4420794601") != first  # another length is looked up on its own
    assert len(calls) == 2


@pytest.mark.parametrize(
    "digits",
    [
        "12015550123",
        "14165550123",
        "447700900123",
        "447911123456",
        "4915123456789",
        "493012345678",
        "33612345678",
        "81312345678",
        "8008001234",
        "79161234567",
        "77011234567",
    ],
)
def test_plan_cache_agrees_with_a_full_parse(digits: str):
    from pipeline.core import numbers

    assert describe(digits) == numbers._describe(digits)


def _describe_with_public_functions(d: str) -> NumberInfo:
    """The straightforward version `numbers._describe` shortcuts: the reference it must equal."""
    import phonenumbers

    from pipeline.core import numbers

    if not (d.isascii() and d.isdigit()):
        return UNKNOWN
    try:
        num = phonenumbers.parse("+" + d, None)
    except phonenumbers.NumberParseException:
        return UNKNOWN
    cc = num.country_code
    if not phonenumbers.is_valid_number(num):
        return UNKNOWN
    network = numbers._NETWORK.get(phonenumbers.number_type(num), "Unknown")
    if cc in numbers._NON_GEO_NAMES:
        return NumberInfo(None, numbers._NON_GEO_NAMES[cc], network)
    region = phonenumbers.region_code_for_number(num)
    if not region or len(region) != 2 or region == "ZZ":
        return UNKNOWN
    return NumberInfo(region, country_name(region), network)


def _digits(max_rest: int) -> st.SearchStrategy[str]:
    """A calling code (every known one, and two unknown) followed by up to `max_rest` digits."""
    return st.builds(
        "{}{}".format,
        st.sampled_from(sorted({*COUNTRY_CODE_TO_REGION_CODE, 999, 0})),
        st.text("0123456789", min_size=0, max_size=max_rest),
    )


@settings(max_examples=3000, deadline=None)
@given(digits=_digits(14))
def test_describe_equals_libphonenumber_public_functions(digits: str):
    from pipeline.core import numbers

    assert numbers._describe(digits) == _describe_with_public_functions(digits)


@settings(max_examples=3000, deadline=None)
@given(digits=_digits(20))
def test_e164_parse_equals_libphonenumber_parse(digits: str):
    import phonenumbers

    from pipeline.core import numbers

    try:
        expected = phonenumbers.parse("+" + digits, None)
    except phonenumbers.NumberParseException:
        expected = None
    assert numbers._parse_e164(digits) == expected


def test_describe_equals_public_functions_on_example_numbers():
    """Every region's example numbers of every type: valid ones of each kind, all regions."""
    import phonenumbers

    from pipeline.core import numbers

    checked = 0
    for region in phonenumbers.SUPPORTED_REGIONS:
        for kind in numbers._NETWORK:
            example = phonenumbers.example_number_for_type(region, kind)
            if example is None:
                continue
            digits = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164)[1:]
            assert numbers._describe(digits) == _describe_with_public_functions(digits), digits
            national = str(example.national_number)
            with_prefix = f"{example.country_code}0{national}"  # a national prefix kept in
            assert numbers._describe(with_prefix) == _describe_with_public_functions(with_prefix)
            checked += 1
    assert checked > 1000


def test_answer_is_a_function_of_the_number_alone():
    """590 590 2x... is Guadeloupe and 590 590 27... Saint Barthélemy: sharing seven leading
    digits and the length, the second must not get the first one's answer from the cache."""
    from pipeline.core import numbers

    gp, bl = "590590201234", "590590271234"
    for first, second in ((gp, bl), (bl, gp)):
        numbers.clear_caches()
        describe(first)
        assert describe(second) == numbers._describe(second)
    assert describe(gp).country == "GP" and describe(bl).country == "BL"


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_digits(13), min_size=2, max_size=40).flatmap(
        lambda base: st.lists(
            st.tuples(st.sampled_from(base), st.text("0123456789", max_size=13)).map(
                lambda p: p[0][: max(3, len(p[0]) - len(p[1]))] + p[1]
            ),
            min_size=1,
            max_size=60,
        )
    )
)
def test_cached_answers_equal_a_fresh_parse_in_any_order(numbers_seen: list[str]):
    """Neighbouring numbers (shared prefixes, other tails) asked in any order: each cached
    answer is the one a parse of that very number gives."""
    from pipeline.core import numbers

    numbers.clear_caches()
    for d in numbers_seen:
        assert describe(d) == numbers._describe(d), d


def test_decisive_depth_bounds_the_patterns():
    from pipeline.core import numbers

    assert numbers._pattern_depth(r"7[1-57-9]\d{8}") == 2
    assert numbers._pattern_depth(r"\d{3}5\d") == 4
    assert numbers._pattern_depth(r"(?:12|3)\d{2}4") == 5
    assert numbers._pattern_depth(r"[0-9]{2}(?:1\d)?") == 3
    assert numbers._pattern_depth(r"\d+5") >= 1 << 20  # unbounded: the whole number


def test_country_name():
    assert country_name("US") == "United States"
    assert country_name("GB") == "United Kingdom"
    assert country_name("DE") == "Germany"
    assert country_name("ZZ") == ""


@pytest.mark.parametrize(
    ("destination", "expected"),
    [
        ("442079460123", "442079460123"),
        ("+442079460123", "442079460123"),
        ("tel:+442079460123", "442079460123"),
        ("tel:+1-201-555-0199", "12015550199"),  # RFC 3966 visual separators
        ("tel:+1.201.555.0199;ext=12", "12015550199"),  # parameters dropped
        ("TEL:+12015550199", "12015550199"),
        ("tel:12015550199", "12015550199"),
        ("tel:5550199;phone-context=example.com", None),  # local number, not E.164
        ("00442079460123", "442079460123"),
        ("tel:00442079460123", "442079460123"),
        # a SIP URI is delivery to a SIP endpoint, whatever its user part looks like
        ("sip:+442079460123@carrier.example;user=phone", None),
        ("sip:442079460123@pbx.customer.example", None),
        ("sips:442079460123;isub=1@carrier.example", None),
        ("SIP:+12015550199@gw", None),
        ("sip:+33142685300@10.0.0.5", None),
        ("sip:1001@pbx.example.com", None),
        ("sip:alice@example.com", None),
        ("sip:example.com", None),  # no user part
        ("sip:+44abc@x", None),
        ("0123456789", None),  # leading zero: national format, not E.164
        ("1234567890123456", None),  # 16 digits: too long for E.164
        ("12345", None),  # too short
        ("", None),
        ("http://example.com", None),
    ],
)
def test_digits_of(destination: str, expected: str | None):
    assert digits_of(destination) == expected
