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
        # invalid per libphonenumber (Ofcom drama range) but clearly GB by calling code
        ("447700900123", NumberInfo("GB", "United Kingdom", "Unknown")),
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
    numbers._by_plan.clear()
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
    valid = phonenumbers.is_valid_number(num)
    kind = phonenumbers.number_type(num)
    network = numbers._NETWORK.get(kind, "Unknown") if valid else "Unknown"
    if cc in numbers._NON_GEO_NAMES:
        return NumberInfo(None, numbers._NON_GEO_NAMES[cc], network)
    region = phonenumbers.region_code_for_number(num) if valid else None
    if not region or len(region) != 2 or region == "ZZ":
        region = phonenumbers.region_code_for_country_code(cc)
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
        ("sip:+442079460123@carrier.example;user=phone", "442079460123"),
        ("sip:442079460123@carrier.example", "442079460123"),
        ("sips:442079460123;isub=1@carrier.example", "442079460123"),
        ("SIP:+12015550199@gw", "12015550199"),
        ("sip:1001@pbx.example.com", None),  # an extension, not a PSTN number
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
