"""Country codes and names (ISO 3166-1): current names, and codes refused with a hint."""

from __future__ import annotations

import phonenumbers
import pytest

from pipeline.core.countries import check_alpha2, country_name


@pytest.mark.parametrize(
    ("code", "name"),
    [
        ("CZ", "Czechia"),
        ("TR", "Türkiye"),
        ("MK", "North Macedonia"),
        ("AX", "Åland Islands"),
        ("CW", "Curaçao"),
        ("KR", "South Korea"),
        ("IR", "Iran"),
        ("BO", "Bolivia"),
        ("VN", "Vietnam"),
        ("TW", "Taiwan"),
        ("GB", "United Kingdom"),
        ("XK", "Kosovo"),
    ],
)
def test_current_names(code: str, name: str) -> None:
    assert country_name(code) == name


@pytest.mark.parametrize("code", ["", "UK", "EL", "ZZ", "cz", "CZE", "001", " CZ"])
def test_unknown_code_has_no_name(code: str) -> None:
    assert country_name(code) == ""


def test_every_region_of_libphonenumber_has_a_name_and_is_accepted() -> None:
    for region in phonenumbers.SUPPORTED_REGIONS:
        assert country_name(region), region
        check_alpha2(region)


@pytest.mark.parametrize("code", ["GB", "DE", "GR", "AX", "XK"])
def test_accepted_codes(code: str) -> None:
    check_alpha2(code)


@pytest.mark.parametrize(
    ("code", "hint"),
    [
        ("UK", "use 'GB' for United Kingdom"),
        ("uk", "use 'GB' for United Kingdom"),
        ("EL", "use 'GR' for Greece"),
        ("gb", "use 'GB' for United Kingdom (codes are two upper-case letters)"),
        ("De", "use 'DE' for Germany"),
        ("DEU", "use 'DE' for Germany (DEU is its alpha-3 code)"),
        ("826", "use 'GB' for United Kingdom (826 is its numeric code)"),
        ("Czechia", "use 'CZ' for Czechia"),
    ],
)
def test_common_mistakes_get_a_hint(code: str, hint: str) -> None:
    with pytest.raises(ValueError, match="not an ISO 3166-1 alpha-2 code") as info:
        check_alpha2(code)
    assert hint in str(info.value)


@pytest.mark.parametrize("code", ["", "ZZ", "EU", "G", "GBR1", "ÅL"])
def test_other_codes_are_refused_without_a_hint(code: str) -> None:
    with pytest.raises(ValueError, match="not an ISO 3166-1 alpha-2 code") as info:
        check_alpha2(code)
    assert "use" not in str(info.value)


def test_a_long_value_is_shortened_in_the_message() -> None:
    with pytest.raises(ValueError) as info:
        check_alpha2("X" * 10_000)
    assert len(str(info.value)) < 100
