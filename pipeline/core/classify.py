"""CDR Type and call Status (SPEC section 3)."""

from __future__ import annotations

from pipeline.core.model import CdrType, Initiator, Status

__all__ = ["EEA", "cdr_type", "call_status"]

# EU-27 plus Iceland, Liechtenstein and Norway (ISO 3166 alpha-2), plus the parts of the EU
# that have region codes of their own in numbering plans: the outermost regions Réunion,
# Guadeloupe, Martinique, French Guiana, Mayotte and Saint-Martin, and the Åland Islands (EU
# territory; Canarias, Madeira and the Azores number as ES and PT). Outside: Svalbard (SJ),
# Gibraltar, Greenland, the Faroes and the Channel Islands; GB left the EEA in 2020.
EEA: frozenset[str] = frozenset(
    {
        "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE",
        "IT", "LV", "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE",
        "IS", "LI", "NO",
        "RE", "GP", "MQ", "GF", "YT", "MF", "AX",
    }
)  # fmt: skip


def cdr_type(origin_country: str | None, destination_country: str | None) -> CdrType:
    """Local if both countries are the same, Origin based if both are in the EEA, else
    International. An unknown side (None/empty) makes the call International: we cannot
    prove it is domestic, and International is the conservative (dearest) category."""
    if not origin_country or not destination_country:
        return "International"
    if origin_country == destination_country:
        return "Local"
    if origin_country in EEA and destination_country in EEA:
        return "Origin based"
    return "International"


def call_status(connected: bool, code: int | None, initiator: Initiator | None) -> Status:
    """answered if connected; else 486/600 busy, 408/480 no-answer, 487 cancelled when the
    origination side ended it, anything else (including no code: a call closed as timed out
    before connecting, or 487 sent by the destination side) failed."""
    if connected:
        return "answered"
    if code == 486 or code == 600:
        return "busy"
    if code == 408 or code == 480:
        return "no-answer"
    if code == 487 and initiator == "origination":
        return "cancelled"
    return "failed"
