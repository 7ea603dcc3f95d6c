"""Number facts and URI digit extraction."""

from __future__ import annotations

import pytest

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


def test_describe_is_cached():
    describe.cache_clear()
    describe("442079460123")
    describe("442079460123")
    info = describe.cache_info()
    assert info.hits == 1 and info.misses == 1
    assert info.maxsize is not None and info.maxsize >= 100_000


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
