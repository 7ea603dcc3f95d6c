"""CSV export layouts: the seed's headers verbatim, and each cell's format."""

from __future__ import annotations

import csv
import dataclasses
import io
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from pipeline.core.model import CDR
from pipeline.store.export import (
    INBOUND_HEADER,
    OUTBOUND_HEADER,
    csv_bytes,
    csv_row,
    write_cdrs,
)

# The Header cells of the Call Logs page's two "CDR Exported CSV File Description" tables,
# copied character for character (the asterisks are the page's).
SEED_INBOUND = [
    "Date/Time Start (UTC)", "Date/Time Connect (UTC)", "Date/Time End (UTC)", "Source", "DID",
    "Destination", "Duration (secs)", "Disconnect Initiator", "Disconnect Code",
    "Disconnect Response", "Toll-free Amount (USD)", "Termination Amount (USD)",
    "Metered Channels Amount (USD)",
]  # fmt: skip
SEED_OUTBOUND = [
    "Date/Time Start (UTC)", "Date/Time Connect (UTC)", "Date/Time End (UTC)", "Source", "CLI*",
    "Destination", "Duration (secs)", "Billing Duration", "Disconnect Code", "Disconnect Reason",
    "Rate (USD per minute)", "Charged (USD)", "CDR Type*", "Country Name", "Network Name",
    "Trunk Name",
]  # fmt: skip


def test_headers_equal_the_seed_character_for_character() -> None:
    assert len(SEED_INBOUND) == 13 and len(SEED_OUTBOUND) == 16
    assert SEED_INBOUND == INBOUND_HEADER
    assert SEED_OUTBOUND == OUTBOUND_HEADER
    for direction, header in (("inbound", SEED_INBOUND), ("outbound", SEED_OUTBOUND)):
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


# --- the Excel form: byte order mark and CRLF; same cells -------------------------------------

UTF8_BOM = b"\xef\xbb\xbf"


def names_sample() -> list[CDR]:
    """CDRs whose cells need UTF-8, a comma and quotes: what a code-page reader would garble."""
    return [
        outbound(id="gw1-1", country_name="Åland Islands"),
        outbound(id="gw1-2", country_name="Curaçao", network_name="Mobile"),
        outbound(id="gw1-3", country_name="Türkiye", disconnect_reason='Bye, "normal"'),
    ]


def test_excel_form_has_a_bom_crlf_and_the_same_rows() -> None:
    cdrs = names_sample()
    data, count = csv_bytes("outbound", cdrs, excel=True)
    assert count == 3
    assert data.startswith(UTF8_BOM) and not data.startswith(UTF8_BOM * 2)
    lines = data.split(b"\r\n")
    assert lines[-1] == b"" and len(lines) == 1 + 3 + 1  # header, rows, after the last CRLF
    assert all(b"\n" not in line and b"\r" not in line for line in lines)
    text = data.decode("utf-8-sig")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows == [OUTBOUND_HEADER, *(csv_row(c) for c in cdrs)]
    assert [row[13] for row in rows[1:]] == ["Åland Islands", "Curaçao", "Türkiye"]
    assert rows[3][9] == 'Bye, "normal"'


def test_default_form_is_plain_utf8_with_lf() -> None:
    cdrs = names_sample()
    data, count = csv_bytes("outbound", cdrs)
    assert count == 3
    assert not data.startswith(UTF8_BOM) and b"\r" not in data
    assert data.count(b"\n") == 4 and data.endswith(b"\n")
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    assert rows == [OUTBOUND_HEADER, *(csv_row(c) for c in cdrs)]
    assert "Åland Islands" in data.decode("utf-8")
    # the two forms differ in the mark and the line ends only
    excel, _ = csv_bytes("outbound", cdrs, excel=True)
    assert excel == UTF8_BOM + data.replace(b"\n", b"\r\n")


@pytest.mark.parametrize("excel", [False, True])
def test_chunks_without_header_add_up_to_the_whole_export(excel: bool) -> None:
    """A streamed export: header chunk, then chunks of rows; the mark comes once, first."""
    cdrs = [*names_sample(), outbound(id="gw1-4"), outbound(id="gw1-5")]
    whole, _ = csv_bytes("outbound", cdrs, excel=excel)
    head, none = csv_bytes("outbound", [], excel=excel)
    first, n1 = csv_bytes("outbound", cdrs[:2], excel=excel, header=False)
    rest, n2 = csv_bytes("outbound", cdrs[2:], excel=excel, header=False)
    assert (none, n1, n2) == (0, 2, 3)
    assert head + first + rest == whole
    assert not first.startswith(UTF8_BOM) and not rest.startswith(UTF8_BOM)


def test_excel_form_into_a_file(tmp_path: Path) -> None:
    """A file opened as write_cdrs asks: the mark is one EF BB BF, and no CR is doubled."""
    path = tmp_path / "out.csv"
    cdr = inbound(source="Åland")
    with path.open("w", encoding="utf-8", newline="") as out:
        assert write_cdrs("inbound", [cdr], out, excel=True) == 1
    header, row = ",".join(INBOUND_HEADER), ",".join(csv_row(cdr))
    assert path.read_bytes() == UTF8_BOM + f"{header}\r\n{row}\r\n".encode()


# --- cdrpipe export against an embedded store --------------------------------------------------


@pytest.fixture
def store_dsn(tmp_path: Path) -> str:
    """An embedded store holding `names_sample()` (recent: older rows expire), closed again so
    that `cdrpipe export` can open it."""
    from pipeline.store.client import connect
    from pipeline.store.writer import CdrWriter

    dsn = f"chdb://{tmp_path / 'store'}"
    recent = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    cdrs = [
        dataclasses.replace(
            c,
            start_time=recent + timedelta(minutes=i),
            connect_time=recent + timedelta(minutes=i, seconds=2),
            end_time=recent + timedelta(minutes=i, seconds=64),
        )
        for i, c in enumerate(names_sample())
    ]
    cdrs[1] = dataclasses.replace(cdrs[1], flags=("account_mismatch",))
    client = connect(dsn)
    try:
        assert CdrWriter(client).write(cdrs) == 3
    finally:
        client.close()
    return dsn


def test_cli_export_excel_and_plain(
    store_dsn: str, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    from pipeline.cli import main

    excel, plain = tmp_path / "excel.csv", tmp_path / "plain.csv"
    args = ["export", "--direction", "outbound", "--store", store_dsn]
    assert main([*args, "--excel", "-o", str(excel)]) == 0
    assert main([*args, "-o", str(plain)]) == 0
    assert main([*args, "--excel"]) == 0
    stdout = capsysbinary.readouterr().out
    data = excel.read_bytes()
    assert stdout == data
    assert data.startswith(UTF8_BOM)
    assert data.count(b"\r\n") == 4 and data.count(b"\n") == 4
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"), newline="")))
    assert rows[0] == OUTBOUND_HEADER
    assert [row[13] for row in rows[1:]] == ["Åland Islands", "Curaçao", "Türkiye"]
    text = plain.read_bytes()
    assert not text.startswith(UTF8_BOM) and b"\r" not in text
    assert UTF8_BOM + text.replace(b"\n", b"\r\n") == data


def test_cli_export_by_flag(store_dsn: str, tmp_path: Path) -> None:
    from pipeline.cli import main

    out = tmp_path / "flagged.csv"
    args = ["export", "--direction", "outbound", "--store", store_dsn, "-o", str(out)]
    assert main([*args, "--flag", "account_mismatch"]) == 0
    rows = list(csv.reader(io.StringIO(out.read_text(encoding="utf-8"), newline="")))
    assert [row[13] for row in rows[1:]] == ["Curaçao"]
    assert main([*args, "--flag", "no_such_flag"]) == 2
