"""CDR Type and Status rules (SPEC section 3)."""

from __future__ import annotations

import pytest

from pipeline.core.classify import EEA, call_status, cdr_type


def test_eea_is_eu27_plus_iceland_liechtenstein_norway():
    assert len(EEA - {"RE", "GP", "MQ", "GF", "YT", "MF", "AX"}) == 30
    assert {"IS", "LI", "NO", "DE", "FR", "IE", "CY"} <= EEA
    assert not {"GB", "CH", "US", "TR"} & EEA


def test_eea_includes_the_eu_regions_with_region_codes_of_their_own():
    """The EU's outermost regions and the Åland Islands are EU territory under their own
    region codes; Svalbard, Gibraltar, Greenland, the Faroes and the Channel Islands are not."""
    assert {"RE", "GP", "MQ", "GF", "YT", "MF", "AX"} <= EEA
    assert not {"SJ", "GI", "GL", "FO", "GG", "JE", "IM"} & EEA
    assert cdr_type("DE", "RE") == "Origin based"
    assert cdr_type("AX", "FI") == "Origin based"
    assert cdr_type("DE", "GI") == "International"


@pytest.mark.parametrize(
    ("origin", "destination", "expected"),
    [
        ("US", "US", "Local"),
        ("DE", "DE", "Local"),
        ("GB", "GB", "Local"),  # same country outside the EEA
        ("US", "GB", "International"),  # the seed's own example
        ("DE", "FR", "Origin based"),
        ("NO", "DE", "Origin based"),  # EEA, not EU
        ("IS", "LI", "Origin based"),
        ("GB", "FR", "International"),  # GB is no longer in the EEA
        ("CH", "DE", "International"),
        ("DE", "US", "International"),
        (None, "US", "International"),  # unknown origin
        ("", "US", "International"),
        ("US", None, "International"),  # unknown destination
        (None, None, "International"),
    ],
)
def test_cdr_type(origin, destination, expected):
    assert cdr_type(origin, destination) == expected


@pytest.mark.parametrize(
    ("connected", "code", "initiator", "expected"),
    [
        (True, 200, "origination", "answered"),
        (True, 200, "destination", "answered"),
        (True, 486, "destination", "answered"),  # connected wins over a later code
        (True, None, None, "answered"),  # timed out after connecting
        (False, 486, "destination", "busy"),
        (False, 600, "destination", "busy"),
        (False, 408, "destination", "no-answer"),
        (False, 480, "destination", "no-answer"),
        (False, 487, "origination", "cancelled"),
        (False, 487, "destination", "failed"),  # 487 not from the caller
        (False, 487, None, "failed"),
        (False, 503, "destination", "failed"),
        (False, 404, "destination", "failed"),
        (False, 200, "origination", "failed"),  # 200 without a connect: spec's "anything else"
        (False, None, None, "failed"),  # timed out before connecting
    ],
)
def test_call_status(connected, code, initiator, expected):
    assert call_status(connected, code, initiator) == expected
