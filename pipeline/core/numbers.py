"""Phone-number facts (country, country name, network type) from libphonenumber, cached,
and the normalisation of numbers at the edge.

`phonenumbers.parse` costs tens of microseconds, far too slow for a per-call hot path, and the
numbers a carrier sees share numbering-plan prefixes, so `describe` is memoised per *decisive
prefix* (see `_plan_key`): the answer is a function of the number alone, whatever was asked
before, and the same for replay, workers and re-rating (SPEC section 3, "Billing-grade rules").

Decisions (SPEC section 3, "Billing-grade rules"):

* Country: only a number libphonenumber considers *valid* has one (its own region, so
  +1 416... is CA and +1 876... is JM). An invalid number (the Ofcom drama range, a CLI such as
  4912 or 33000000000) has none: as a caller ID it is an unknown origin (International), as a
  destination it takes its Country Name only from a matched rate row. Valid numbers of a
  non-geographic calling code (+800, +881, ...) have no ISO country but a short description.
* Network: the libphonenumber number type, spelt as below; `FIXED_LINE_OR_MOBILE` (all of the
  NANP, among others) is reported as "Fixed or mobile" rather than guessed; "Unknown" for an
  invalid number.
* Country names are ISO 3166's current English names (`pipeline.core.countries`).
* Normalisation (SPEC section 1): a leading "+" or "00" is stripped from source, destination
  and DID (`national_digits`); a caller ID that is not digits after that is withheld
  (`caller_id` gives ""). Only plain digits and ``tel:`` URIs are PSTN numbers (`digits_of`);
  a ``sip:`` URI is delivery to a SIP endpoint whatever its user part looks like.
"""

from __future__ import annotations

import re
import re._constants as _sre  # the parsed form of libphonenumber's patterns, see _plan
import re._parser as _sre_parse
from collections.abc import Callable
from functools import cache, lru_cache
from typing import Any, NamedTuple

import phonenumbers
from phonenumbers import NumberParseException, PhoneMetadata, PhoneNumber, PhoneNumberType
from phonenumbers.phonenumberutil import (
    _MAX_LENGTH_FOR_NSN,
    _MIN_LENGTH_FOR_NSN,
    COUNTRY_CODE_TO_REGION_CODE,
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

from pipeline.core.countries import country_name

__all__ = [
    "NumberInfo",
    "UNKNOWN",
    "caller_id",
    "country_name",
    "describe",
    "digits_of",
    "national_digits",
]


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


_by_plan: dict[tuple[str, int], NumberInfo] = {}
_by_number: dict[str, NumberInfo] = {}  # the numbers seen most recently, as given


def clear_caches() -> None:
    """Forget every cached answer (tests, benchmarks)."""
    _by_plan.clear()
    _by_number.clear()


def describe(digits: str) -> NumberInfo:
    """Facts about an E.164 number given as digits (a leading "+" is tolerated).

    Empty, non-digit, unparseable or invalid input gives no country (`UNKNOWN`, or a
    non-geographic description). Cached per number, and per decisive prefix and length
    (`_plan_key`) for numbers not seen before.
    """
    info = _by_number.get(digits)
    if info is not None:
        return info
    d = digits[1:] if digits.startswith("+") else digits
    key = (d[: _plan_key(d)], len(d))
    info = _by_plan.get(key)
    if info is None:
        if len(_by_plan) >= _CACHE_SIZE:
            _by_plan.clear()
        info = _by_plan[key] = _describe(d)
    if len(_by_number) >= _CACHE_SIZE:
        _by_number.clear()
    _by_number[digits] = info
    return info


# --------------------------------------------------------------------------- decisive prefix
# libphonenumber decides a number's region and type by matching regular expressions against
# its national number, and most of them constrain only the leading digits ("7[1-57-9]\d{8}"):
# past a certain depth every pattern accepts any digit, and only the length still counts. So
# for each calling code the depth is read off the parsed patterns (`_pattern_depth`) of all its
# regions; two numbers with the same calling code, the same digits up to that depth and the
# same length get the same answer from every step `_describe` takes, and share a cache entry.
# The depth is an upper bound (a construct it cannot bound makes the whole number the key), so
# a cached answer is always the one `_describe` gives for that very number
# (tests/unit/test_numbers.py compares the two on random numbers in random orders).

_INF = 1 << 30
_ANY_DIGIT = frozenset("0123456789")


def _accepts_any_digit(items: Any) -> bool:
    """Whether a character class (the items of an IN node) accepts every ASCII digit."""
    chars: set[str] = set()
    for op, arg in items:
        if op is _sre.CATEGORY and arg is _sre.CATEGORY_DIGIT:
            return True
        if op is _sre.LITERAL:
            chars.add(chr(arg))
        elif op is _sre.RANGE:
            chars.update(map(chr, range(arg[0], arg[1] + 1)))
        else:  # a negated class or another category: take it as a constraint
            return False
    return chars >= _ANY_DIGIT


def _walk(nodes: Any, lo: int, hi: int) -> tuple[int, int, int]:
    """(min end, max end, depth) of a parsed sequence starting at a position in [lo, hi]:
    depth is one past the furthest position where a character must be other than any digit."""
    depth = 0
    for op, arg in nodes:
        if op is _sre.AT:  # ^ $ \b: no character consumed
            continue
        if op is _sre.IN and _accepts_any_digit(arg):
            lo, hi = lo + 1, hi + 1
        elif op in (_sre.IN, _sre.LITERAL, _sre.NOT_LITERAL, _sre.ANY):
            depth = max(depth, hi + 1)
            lo, hi = lo + 1, hi + 1
        elif op is _sre.SUBPATTERN:
            lo, hi, d = _walk(arg[-1], lo, hi)
            depth = max(depth, d)
        elif op is _sre.BRANCH:
            ends = [_walk(alt, lo, hi) for alt in arg[1]]
            depth = max(depth, *(e[2] for e in ends))
            lo, hi = min(e[0] for e in ends), max(e[1] for e in ends)
        elif op in (_sre.MAX_REPEAT, _sre.MIN_REPEAT, _sre.POSSESSIVE_REPEAT):
            rmin, rmax, sub = arg
            slo, shi, sdepth = _walk(sub, 0, 0)
            unbounded = rmax is _sre.MAXREPEAT
            if sdepth:
                if unbounded:
                    return lo, _INF, _INF
                depth = max(depth, hi + (rmax - 1) * shi + sdepth)
            lo += rmin * slo
            hi = _INF if unbounded else hi + rmax * shi
        else:  # a construct not bounded here (backreference, lookaround, ...)
            return lo, _INF, _INF
    return lo, min(hi, _INF), min(depth, _INF)


def _pattern_depth(pattern: str | None) -> int:
    return _walk(_sre_parse.parse(pattern), 0, 0)[2] if pattern else 0


_DESCS = (
    "general_desc", "fixed_line", "mobile", "toll_free", "premium_rate", "shared_cost",
    "personal_number", "voip", "pager", "uan", "voicemail",
)  # fmt: skip


_Plan = tuple[int, int, Callable[[str, int], Any] | None]


@cache
def _plan(head: str) -> _Plan:
    """For numbers starting with the digits `head` (three of them): (length of their calling
    code, 0 if they have none; the depth of the national number that decides region and type;
    the main region's national prefix pattern's ``match``, or None)."""
    cc, national = _extract_country_code(head)
    if cc == 0:
        return 0, 0, None
    return (len(head) - len(national), *_calling_code_plan(cc))


@cache
def _calling_code_plan(cc: int) -> tuple[int, Callable[[str, int], Any] | None]:
    """(the depth of the national number that decides region and type, over every region of
    calling code `cc`; the main region's national prefix pattern's ``match``, or None)."""
    depth = 0
    for region in COUNTRY_CODE_TO_REGION_CODE.get(cc, ()):
        md = PhoneMetadata.metadata_for_region_or_calling_code(cc, region)
        if md is None:
            continue
        depth = max(depth, _pattern_depth(md.leading_digits))
        for name in _DESCS:
            desc = getattr(md, name, None)
            if desc is not None:
                depth = max(depth, _pattern_depth(desc.national_number_pattern))
    md0 = PhoneMetadata.metadata_for_region_or_calling_code(cc, region_code_for_country_code(cc))
    prefix = md0.national_prefix_for_parsing if md0 is not None else None
    if prefix:
        return max(depth, _pattern_depth(prefix)), re.compile(prefix).match
    return depth, None


def _plan_key(d: str) -> int:
    """How many leading digits of `d` (with its length) decide `_describe(d)`."""
    n = len(d)
    if not 3 <= n <= 20 or not (d.isascii() and d.isdigit()):
        return n  # the slow, general path or no number at all: the whole text is the key
    cc_len, depth, prefix = _plan(d[:3])
    if cc_len == 0:
        return 3  # no calling code in the first three digits: UNKNOWN, whatever follows
    if prefix is not None and prefix(d, cc_len):
        return n  # a national prefix after the calling code: rare, and may be rewritten
    return min(n, max(3, cc_len + depth))


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
    if kind == PhoneNumberType.UNKNOWN:  # not a valid number: no country of its own
        return UNKNOWN
    network = _NETWORK.get(kind, "Unknown")
    if cc in _NON_GEO_NAMES:
        return NumberInfo(None, _NON_GEO_NAMES[cc], network)
    if not region or len(region) != 2 or region == "ZZ":
        return UNKNOWN
    return NumberInfo(region, country_name(region), network)


# E.164 shape used by the event schema: no leading zero, 6..15 digits.
_E164 = re.compile(r"[1-9][0-9]{5,14}")
# RFC 3966 visual separators allowed inside a tel: number.
_VISUAL = str.maketrans("", "", "-.()")


def national_digits(number: str) -> str:
    """`number` without a leading "+" or "00" international prefix (SPEC section 1)."""
    if number.startswith("+"):
        return number[1:]
    if number.startswith("00"):
        return number[2:]
    return number


def caller_id(source: str) -> str:
    """The caller ID as digits, or "" if it is withheld: anything that is not ASCII digits
    once a leading "+" or "00" is gone ("anonymous", "Restricted", "unknown", empty)."""
    digits = national_digits(source)
    return digits if digits.isascii() and digits.isdigit() else ""


@lru_cache(maxsize=_CACHE_SIZE)
def digits_of(destination: str) -> str | None:
    """The digits of an inbound destination if it is a PSTN number, else None.

    A PSTN number is plain digits (a leading "+" or "00" dropped) or a ``tel:`` URI (visual
    separators ``-.()`` ignored, parameters dropped; a local number with ``phone-context`` is
    refused because its digits are not E.164). A ``sip:``/``sips:`` URI is never one: it is
    delivery to a SIP endpoint (a customer's PBX), whatever its user part looks like.
    """
    s = destination.strip()
    if s[:4].lower() == "tel:":
        body, _, params = s[4:].partition(";")
        if not body.startswith("+") and "phone-context" in params.lower():
            return None
        candidate = national_digits(body.translate(_VISUAL))
    elif ":" in s:
        return None
    else:
        candidate = national_digits(s)
    if candidate.isascii() and _E164.fullmatch(candidate):
        return candidate
    return None
