"""Country codes and names: ISO 3166-1 alpha-2 codes and their current English names.

The names come from pycountry's copy of the ISO 3166 data, so they follow ISO's renamings
("Czechia", "Türkiye", "North Macedonia"); where pycountry has a common name beside the formal
short name it is used ("South Korea" rather than "Korea, Republic of", "Iran", "Vietnam").

Besides the codes ISO 3166-1 assigns, three codes that libphonenumber gives numbers are known
(`EXTRA_NAMES`), so that every country a number can have also has a name and may appear in
reference data:

* ``XK`` Kosovo: a user-assigned code (ISO 3166-1 leaves XA..XZ to users) that the European
  Commission, the IMF, CLDR and libphonenumber all use, as Kosovo has no assigned code;
* ``AC`` Ascension Island and ``TA`` Tristan da Cunha: codes ISO 3166-1 reserves exceptionally
  (at the ITU's and UPU's request); ISO's own entry covers them under ``SH``, but their numbers
  have numbering plans of their own.
"""

from __future__ import annotations

import functools

import pycountry

__all__ = ["EXTRA_NAMES", "check_alpha2", "country_name"]

EXTRA_NAMES: dict[str, str] = {
    "XK": "Kosovo",
    "AC": "Ascension Island",
    "TA": "Tristan da Cunha",
}

# Codes people use for a country that ISO 3166-1 gives another code.
_MISTAKES: dict[str, tuple[str, str]] = {
    "UK": ("GB", "UK is a common abbreviation, not its ISO code"),
    "EL": ("GR", "EL is the EU's own code for it, not its ISO code"),
}


@functools.cache
def _names() -> dict[str, str]:
    """Every known alpha-2 code and its name, built on first use."""
    names = {c.alpha_2: getattr(c, "common_name", None) or c.name for c in pycountry.countries}
    names.update(EXTRA_NAMES)
    return names


def country_name(alpha2: str) -> str:
    """The current English name of an alpha-2 code (``"CZ"`` -> ``"Czechia"``); ``""`` for a
    code that is not known (codes are upper case: ``"cz"`` is not known either)."""
    return _names().get(alpha2, "")


def _show(code: str) -> str:
    return repr(code) if len(code) <= 24 else f"{code[:20]!r}... ({len(code)} characters)"


def check_alpha2(code: str) -> None:
    """Raise ValueError unless `code` is an ISO 3166-1 alpha-2 code in upper case (or one of
    `EXTRA_NAMES`), with a hint for the usual mistakes: ``UK`` (GB), ``EL`` (GR), lower case,
    an alpha-3 or numeric code or a country's name."""
    if not isinstance(code, str):
        raise ValueError(f"not an ISO 3166-1 alpha-2 code: {code!r}")
    names = _names()
    if code in names:
        return
    message = f"not an ISO 3166-1 alpha-2 code: {_show(code)}"
    folded = code.strip().upper()
    if folded in _MISTAKES:
        right, why = _MISTAKES[folded]
    elif folded in names:
        right, why = folded, "codes are two upper-case letters"
    else:
        try:  # an alpha-3 or numeric code, or a name; in any case
            match = pycountry.countries.lookup(code.strip())
        except LookupError:
            raise ValueError(message) from None
        right = match.alpha_2
        if folded == match.alpha_3:
            why = f"{folded} is its alpha-3 code"
        elif folded == match.numeric:
            why = f"{folded} is its numeric code"
        else:
            why = ""
    why = f" ({why})" if why else ""
    raise ValueError(f"{message}; use {right!r} for {names[right]}{why}")
