"""Phone-number facts (country, country name, network type) from libphonenumber, cached.

`phonenumbers.parse` costs tens of microseconds, far too slow for a per-call hot path, and the
set of distinct numbers a carrier sees is small compared with its call volume, so both public
functions are memoised. Results are deterministic: they depend only on the digits and on the
installed `phonenumbers` metadata.

Decisions (SPEC is silent):

* Country: for a number libphonenumber considers valid, its own region (so +1 416... is CA).
  For an invalid but parseable number (e.g. the Ofcom drama range +44 7700 900123) the *main*
  region of its country calling code (GB for 44, US for 1, RU for 7): the calling code is what
  the network routes on, and "clearly GB" is better than unknown. Non-geographic calling codes
  (+800, +881, ...) have no ISO country: `country` is None, `country_name` a short description.
* Network: the libphonenumber number type, spelt as below; `FIXED_LINE_OR_MOBILE` (all of the
  NANP, among others) is reported as "Fixed or mobile" rather than guessed, and an invalid
  number's network is "Unknown" even when its country is known.
* Country names are libphonenumber's English region names ("United States",
  "United Kingdom", "Germany").
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

import phonenumbers
from phonenumbers import NumberParseException, PhoneMetadata, PhoneNumber, PhoneNumberType
from phonenumbers.geodata.locale import LOCALE_DATA
from phonenumbers.phonenumberutil import (
    _MAX_LENGTH_FOR_NSN,
    _MIN_LENGTH_FOR_NSN,
    ValidationResult,
    _extract_country_code,
    _maybe_strip_national_prefix_carrier_code,
    _number_type_helper,
    _set_italian_leading_zeros_for_phone_number,
    _test_number_length,
    national_significant_number,
    region_code_for_country_code,
    region_code_for_number,
)

__all__ = ["NumberInfo", "UNKNOWN", "describe", "digits_of", "country_name"]


class NumberInfo(NamedTuple):
    """What the number itself says: ISO alpha-2 country (or None), its English name, network."""

    country: str | None
    country_name: str
    network: str


UNKNOWN = NumberInfo(None, "", "Unknown")

_NETWORK: dict[int, str] = {
    PhoneNumberType.FIXED_LINE: "Fixed",
    PhoneNumberType.MOBILE: "Mobile",
    PhoneNumberType.FIXED_LINE_OR_MOBILE: "Fixed or mobile",
    PhoneNumberType.TOLL_FREE: "Toll-free",
    PhoneNumberType.PREMIUM_RATE: "Premium rate",
    PhoneNumberType.SHARED_COST: "Shared cost",
    PhoneNumberType.VOIP: "VoIP",
    PhoneNumberType.PERSONAL_NUMBER: "Personal",
    PhoneNumberType.PAGER: "Pager",
    PhoneNumberType.UAN: "UAN",
    PhoneNumberType.VOICEMAIL: "Voicemail",
    PhoneNumberType.UNKNOWN: "Unknown",
}

# ITU non-geographic country calling codes: no ISO country, but analysts still want a name.
_NON_GEO_NAMES: dict[int, str] = {
    800: "International Freephone",
    808: "International Shared Cost",
    870: "Inmarsat",
    878: "Universal Personal Telecommunications",
    881: "Global Mobile Satellite System",
    882: "International Networks",
    883: "International Networks",
    888: "OCHA",
    979: "International Premium Rate",
}

_CACHE_SIZE = 1 << 18


@lru_cache(maxsize=1024)
def country_name(region: str) -> str:
    """English name of an ISO alpha-2 region as libphonenumber spells it ("" if it has none)."""
    names = LOCALE_DATA.get(region)
    if not names:
        return ""
    name = names.get("en", "")
    if name.startswith("*"):  # "*aa": the name is stored under another language key
        name = names.get(name[1:], "")
    return str(name)


# Numbering plans decide country and number type on the leading digits and the length, so
# numbers sharing both share their description; caching on that key (not the whole number)
# keeps libphonenumber's ~100 us parse off the per-call path even when every number differs.
_PLAN_DIGITS = 7
_by_plan: dict[tuple[str, int], NumberInfo] = {}


def describe(digits: str) -> NumberInfo:
    """Facts about an E.164 number given as digits (a leading "+" is tolerated).

    Empty, non-digit or unparseable input gives `UNKNOWN`. See the module docstring for how
    invalid and non-geographic numbers are treated. Results are cached per leading
    `_PLAN_DIGITS` digits and length (see above).
    """
    d = digits[1:] if digits.startswith("+") else digits
    key = (d[:_PLAN_DIGITS], len(d))
    info = _by_plan.get(key)
    if info is None:
        if len(_by_plan) >= _CACHE_SIZE:
            _by_plan.clear()
        info = _by_plan[key] = _describe(d)
    return info


def _parse_e164(d: str) -> PhoneNumber | None:
    """``phonenumbers.parse("+" + d)`` for ASCII digits `d`, None where it raises.

    `parse` spends three quarters of its time on what E.164 digits do not need: finding a
    number in free text, extensions, international dialling prefixes. This keeps its steps
    for a "+" number - the calling code, the national prefix stripped only if what remains
    has a possible length, the NSN length limits, Italian leading zeros - with libphonenumber's
    own functions (4x faster). tests/unit/test_numbers.py checks it equals `parse`.
    """
    if not 3 <= len(d) <= 20:
        try:
            return phonenumbers.parse("+" + d, None)
        except NumberParseException:
            return None
    cc, national = _extract_country_code(d)
    if cc == 0:
        return None
    metadata = PhoneMetadata.metadata_for_region_or_calling_code(
        cc, region_code_for_country_code(cc)
    )
    if metadata is None or len(national) < _MIN_LENGTH_FOR_NSN:
        return None
    _carrier, stripped, _ = _maybe_strip_national_prefix_carrier_code(national, metadata)
    if _test_number_length(stripped, metadata) not in _KEEP_PREFIX:
        national = stripped
    if not _MIN_LENGTH_FOR_NSN <= len(national) <= _MAX_LENGTH_FOR_NSN:
        return None
    num = PhoneNumber(country_code=cc)
    _set_italian_leading_zeros_for_phone_number(national, num)
    num.national_number = int(national)
    return num


_KEEP_PREFIX = frozenset(
    {
        ValidationResult.TOO_SHORT,
        ValidationResult.IS_POSSIBLE_LOCAL_ONLY,
        ValidationResult.INVALID_LENGTH,
    }
)


def _describe(d: str) -> NumberInfo:
    if not (d.isascii() and d.isdigit()):
        return UNKNOWN
    num = _parse_e164(d)
    if num is None:
        return UNKNOWN
    cc = num.country_code or 0  # always set by `_parse_e164`; 0 has no region
    # `is_valid_number`, `number_type` and `region_code_for_number` each find the region and
    # match the type patterns again; this does it once (half the cost of a cache miss). A
    # region found from the calling code always belongs to it, so "valid" is exactly "has a
    # type" - tests/unit/test_numbers.py checks this against the public functions.
    region = region_code_for_number(num)
    metadata = PhoneMetadata.metadata_for_region_or_calling_code(cc, region) if region else None
    kind = (
        _number_type_helper(national_significant_number(num), metadata)
        if metadata is not None
        else PhoneNumberType.UNKNOWN
    )
    valid = kind != PhoneNumberType.UNKNOWN
    network = _NETWORK.get(kind, "Unknown")
    if cc in _NON_GEO_NAMES:
        return NumberInfo(None, _NON_GEO_NAMES[cc], network)
    if not valid:
        region = None
    if not region or len(region) != 2 or region == "ZZ":
        region = phonenumbers.region_code_for_country_code(cc)
    if not region or len(region) != 2 or region == "ZZ":
        return UNKNOWN
    return NumberInfo(region, country_name(region), network)


# E.164 shape used by the event schema: no leading zero, 6..15 digits. Shorter digit strings in
# a URI user part (sip:1001@pbx) are PBX extensions, not PSTN numbers.
_E164 = re.compile(r"[1-9][0-9]{5,14}")
# RFC 3966 visual separators allowed inside a tel: number.
_VISUAL = str.maketrans("", "", "-.()")


@lru_cache(maxsize=_CACHE_SIZE)
def digits_of(destination: str) -> str | None:
    """E.164 digits of an inbound destination if it is a PSTN number, else None.

    Accepted: plain digits (optionally "+"), ``tel:`` URIs (visual separators ``-.()`` ignored,
    parameters dropped; a local number with ``phone-context`` is refused because its digits are
    not E.164), and ``sip:``/``sips:`` URIs whose user part is digits with an optional "+".
    The digits must look like E.164 (6..15 digits, no leading 0), so extensions such as
    ``sip:1001@pbx.example.com`` are not PSTN numbers and incur no termination charge.
    """
    s = destination.strip()
    low = s[:5].lower()
    if low.startswith("tel:"):
        body, _, params = s[4:].partition(";")
        if not body.startswith("+") and "phone-context" in params.lower():
            return None
        candidate = body.translate(_VISUAL)
    elif low.startswith("sip:") or low.startswith("sips:"):
        rest = s[s.index(":") + 1 :]
        user, at, _host = rest.partition("@")
        if not at:
            return None
        candidate = user.partition(";")[0]
    else:
        candidate = s
    if candidate.startswith("+"):
        candidate = candidate[1:]
    if candidate.isascii() and _E164.fullmatch(candidate):
        return candidate
    return None
