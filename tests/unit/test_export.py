"""CSV export layouts: the seed's headers verbatim, and each cell's format."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from pipeline.core.model import CDR
from pipeline.store.export import INBOUND_HEADER, OUTBOUND_HEADER, csv_row, write_cdrs

# The shared folder sits beside the repository (in CI too).
SEED = Path(__file__).resolve().parents[2].parent / "shared" / "seed" / "call-logs.txt"


def seed_headers(title: str) -> list[str]:
    """The Header cells of one "... CDR Exported CSV File Description" table of the seed.

    The table is flattened to one cell per line ("cell |"), four cells per field row:
    number, header, sample value, description.
    """
    assert SEED.is_file(), f"seed file missing: {SEED}"
    text = SEED.read_text(encoding="utf-8")
    section = text.split(title, 1)[1]
    lines = section.splitlines()
    body = lines[next(i for i, line in enumerate(lines) if line.startswith("---|")) + 1 :]
    headers = []
    for row in range(0, len(body) - 3, 4):
        number, header = body[row], body[row + 1]
        if not re.fullmatch(rf"{len(headers) + 1} \|", number):
            break
        assert header.endswith(" |"), header
        headers.append(header[: -len(" |")])
    return headers


def test_headers_equal_the_seed_character_for_character() -> None:
    inbound = seed_headers("Inbound CDR Exported CSV File Description")
    outbound = seed_headers("Outbound CDR Exported CSV File Description")
    assert len(inbound) == 13 and len(outbound) == 16
    assert inbound == INBOUND_HEADER
    assert outbound == OUTBOUND_HEADER
    for direction, header in (("inbound", inbound), ("outbound", outbound)):
        out = io.StringIO()
        write_cdrs(direction, [], out)  # type: ignore[arg-type]
        assert out.getvalue() == ",".join(header) + "\n"


START = datetime(2020, 1, 1, 11, 22, 33, 987654, tzinfo=UTC)


def outbound(**changes: object) -> CDR:
    values: dict[str, object] = dict(
        id="gw1-1",
        direction="outbound",
        account="acc",
        gateway="gw1",
        start_time=START,
        connect_time=START + timedelta(seconds=2),
        end_time=START + timedelta(seconds=64),
        source="12345678901",
        destination="44123456789",
        duration=62,
        disconnect_code=487,
        disconnect_reason="Request Terminated",
        disconnect_initiator="origination",
        status="answered",
        cdr_type="International",
        country_name="United States",
        network_name="Fixed",
        trunk="Outbound Trunk 1",
        cli="44123456789",
        billing_duration=120,
        rate=Decimal("0.012300000"),
        charged=Decimal("0.0023"),
    )
    values.update(changes)
    return CDR(**values)  # type: ignore[arg-type]


def inbound(**changes: object) -> CDR:
    values: dict[str, object] = dict(
        id="gw2-1",
        direction="inbound",
        account="acc",
        gateway="gw2",
        start_time=START,
        connect_time=START + timedelta(seconds=2),
        end_time=START + timedelta(seconds=64),
        source="12345678901",
        destination="sip:100@pbx.example.com",
        duration=32,
        disconnect_code=487,
        disconnect_reason="Request Terminated",
        disconnect_initiator="destination",
        status="answered",
        cdr_type="Local",
        country_name="United Kingdom",
        network_name="Toll-free",
        trunk="",
        did="44123456789",
        toll_free_amount=Decimal("0.86"),
        termination_amount=Decimal("0.240000"),
        metered_amount=Decimal("0.330000"),
    )
    values.update(changes)
    return CDR(**values)  # type: ignore[arg-type]


def test_outbound_row_field_by_field() -> None:
    row = dict(zip(OUTBOUND_HEADER, csv_row(outbound()), strict=True))
    assert row == {
        "Date/Time Start (UTC)": "2020-01-01 11:22:33",  # sub-seconds cut, never rounded up
        "Date/Time Connect (UTC)": "2020-01-01 11:22:35",
        "Date/Time End (UTC)": "2020-01-01 11:23:37",
        "Source": "12345678901",
        "CLI*": "44123456789",
        "Destination": "44123456789",
        "Duration (secs)": "62",
        "Billing Duration": "120",
        "Disconnect Code": "487",
        "Disconnect Reason": "Request Terminated",
        "Rate (USD per minute)": "0.0123",
        "Charged (USD)": "0.002300",
        "CDR Type*": "International",
        "Country Name": "United States",
        "Network Name": "Fixed",
        "Trunk Name": "Outbound Trunk 1",
    }


def test_inbound_row_field_by_field() -> None:
    row = dict(zip(INBOUND_HEADER, csv_row(inbound()), strict=True))
    assert row == {
        "Date/Time Start (UTC)": "2020-01-01 11:22:33",
        "Date/Time Connect (UTC)": "2020-01-01 11:22:35",
        "Date/Time End (UTC)": "2020-01-01 11:23:37",
        "Source": "12345678901",
        "DID": "44123456789",
        "Destination": "sip:100@pbx.example.com",
        "Duration (secs)": "32",
        "Disconnect Initiator": "Destination",
        "Disconnect Code": "487",
        "Disconnect Response": "Request Terminated",
        "Toll-free Amount (USD)": "0.860000",
        "Termination Amount (USD)": "0.240000",
        "Metered Channels Amount (USD)": "0.330000",
    }
    assert csv_row(inbound(disconnect_initiator="origination"))[7] == "Origination"


def test_times_are_printed_in_utc() -> None:
    plus2 = timezone(timedelta(hours=2))
    row = csv_row(outbound(start_time=datetime(2020, 1, 1, 13, 22, 33, tzinfo=plus2)))
    assert row[0] == "2020-01-01 11:22:33"


def test_never_connected_unrated_and_timed_out_leave_cells_empty() -> None:
    row = dict(
        zip(
            OUTBOUND_HEADER,
            csv_row(
                outbound(
                    connect_time=None,
                    duration=0,
                    billing_duration=None,
                    rate=None,
                    charged=None,
                    rated=False,
                    disconnect_code=None,
                    disconnect_initiator=None,
                    disconnect_reason="",
                    timed_out=True,
                )
            ),
            strict=True,
        )
    )
    assert row["Date/Time Connect (UTC)"] == ""
    assert row["Duration (secs)"] == "0"
    assert row["Billing Duration"] == ""
    assert row["Rate (USD per minute)"] == ""
    assert row["Charged (USD)"] == ""
    assert row["Disconnect Code"] == ""
    assert row["Disconnect Reason"] == ""
    row = dict(
        zip(
            INBOUND_HEADER,
            csv_row(
                inbound(
                    disconnect_initiator=None,
                    disconnect_code=None,
                    toll_free_amount=None,
                    termination_amount=None,
                    metered_amount=None,
                )
            ),
            strict=True,
        )
    )
    assert row["Disconnect Initiator"] == row["Disconnect Code"] == ""
    assert row["Toll-free Amount (USD)"] == row["Metered Channels Amount (USD)"] == ""


@pytest.mark.parametrize(
    ("rate", "charged", "rate_cell", "charged_cell"),
    [
        (Decimal("0E-9"), Decimal("0E-6"), "0", "0.000000"),
        (Decimal("10.000000000"), Decimal("1E+1"), "10", "10.000000"),
        (Decimal("0.000000100"), Decimal("0.000001"), "0.0000001", "0.000001"),
        (Decimal("123"), Decimal("123456.789"), "123", "123456.789000"),
    ],
)
def test_amounts_are_plain_decimals(
    rate: Decimal, charged: Decimal, rate_cell: str, charged_cell: str
) -> None:
    row = csv_row(outbound(rate=rate, charged=charged))
    assert (row[10], row[11]) == (rate_cell, charged_cell)


def test_formula_like_text_is_neutralized_and_quoting_round_trips() -> None:
    cdr = outbound(
        disconnect_reason='=HYPERLINK("x"), "quoted"',
        trunk="@trunk",
        network_name="-Mobile",
        country_name="Korea, Republic of",
    )
    out = io.StringIO()
    assert write_cdrs("outbound", [cdr], out) == 1
    (header, row) = list(csv.reader(io.StringIO(out.getvalue())))
    cells = dict(zip(header, row, strict=True))
    assert cells["Disconnect Reason"] == '\'=HYPERLINK("x"), "quoted"'
    assert cells["Trunk Name"] == "'@trunk"
    assert cells["Network Name"] == "'-Mobile"
    assert cells["Country Name"] == "Korea, Republic of"


def test_rows_of_the_other_direction_are_refused() -> None:
    with pytest.raises(ValueError, match="is inbound, not outbound"):
        write_cdrs("outbound", [inbound()], io.StringIO())
    with pytest.raises(ValueError, match="direction must be"):
        write_cdrs("sideways", [], io.StringIO())  # type: ignore[arg-type]
