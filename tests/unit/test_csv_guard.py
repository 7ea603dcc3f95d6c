"""Formula guard of the CSV export: text that came from outside (a remote SIP party's reason, a
trunk name, numbers) never becomes a spreadsheet formula, whichever separator the spreadsheet
splits the file on: ``,`` (the file's own), ``;`` (German/French defaults) or a tab."""

from __future__ import annotations

import csv
import io
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.store.export import INBOUND_HEADER, OUTBOUND_HEADER, csv_bytes, csv_row
from tests.unit.test_export import inbound, outbound

FORMULA = ("=", "+", "-", "@")
DELIMITERS = (",", ";", "\t")

# Cells a caller or a carrier controls, and what the export must read back as under `,`.
HOSTILE: list[tuple[str, str]] = [
    ("Busy;=2+3;", "Busy;'=2+3;"),
    ("T;=1+1", "T;'=1+1"),
    ("\n=1", "'\n'=1"),
    (" =1", "' =1"),
    ("\uff1d1", "'\uff1d1"),  # full-width equals sign
    ("\uff0b1", "'\uff0b1"),  # full-width plus sign
    ("\ufe6b1", "'\ufe6b1"),  # small commercial at
    ("\u207c1", "'\u207c1"),  # superscript equals sign
    ("=\u0338", "'=\u0338"),  # NFKC composes it to a not-equal sign; the cell still starts "="
    ("@SUM(1)", "'@SUM(1)"),
    ("-1+1", "'-1+1"),
    ("+1", "'+1"),
    ("\t=1", "'\t'=1"),
    ("\r=1", "'\r'=1"),
    ("\u3000=1", "'\u3000=1"),  # ideographic space
    ("\uff1b=1", "\uff1b=1"),  # full-width semicolon: no spreadsheet splits on it
    ("x\uff1b=1", "x\uff1b=1"),
    ('"=1"', '\'"=1"'),
    ("=cmd|' /C calc'!A0", "'=cmd|' /C calc'!A0"),
    ("a\t=1", "a\t'=1"),
    ("a;\t=1", "a;'\t'=1"),
    ("a\r\n=1", "a\r'\n'=1"),
    ('x;"=1', "x;'\"=1"),
    ("x;\u200b=1", "x;'\u200b=1"),  # zero-width space (a format character)
    # plain signs and negative numbers from outside are neutralized too: a free-text column
    # never holds a number to calculate with, and the guard does not parse formulas
    ("-", "'-"),
    ("-12345", "'-12345"),
    ("+44 20 7123 4567", "'+44 20 7123 4567"),
    # left as they are
    ("Busy Here", "Busy Here"),
    ("Korea, Republic of", "Korea, Republic of"),
    ("sip:100@pbx.example.com", "sip:100@pbx.example.com"),
    ("a-b=c", "a-b=c"),
    ("'=1", "'=1"),
    ("x; y", "x; y"),
    ("\u00e9=1", "\u00e9=1"),
]

OUT_TRUNK = OUTBOUND_HEADER.index("Trunk Name")
IN_REASON = INBOUND_HEADER.index("Disconnect Response")


def hostile_cdrs(text: str) -> list:
    return [
        outbound(trunk=text, disconnect_reason=text, network_name=text),
        inbound(disconnect_reason=text, destination=text, source=text),
    ]


def read(data: bytes, delimiter: str) -> list[list[str]]:
    """The cells a spreadsheet splitting on `delimiter` makes of the file (quotes honoured)."""
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline=""), delimiter=delimiter))


def runs_as_formula(cell: str) -> bool:
    """True if a spreadsheet could take the cell for a formula: after leading whitespace and
    NFKC (both orders), it starts with = + - @ and not with the text mark '."""
    for text in (unicodedata.normalize("NFKC", cell.lstrip()), unicodedata.normalize("NFKC", cell)):
        text = text.lstrip()
        if text.startswith(FORMULA):
            return True
    return False


def assert_no_formula_under_any_separator(data: bytes) -> None:
    for delimiter in DELIMITERS:
        for row in read(data, delimiter):
            bad = [cell for cell in row if runs_as_formula(cell)]
            assert not bad, (delimiter, bad, data)


@pytest.mark.parametrize(("text", "want"), HOSTILE, ids=repr)
@pytest.mark.parametrize("excel", [False, True])
def test_hostile_text_is_neutralized_under_every_separator(text: str, want: str, excel: bool):
    out_cdr, in_cdr = hostile_cdrs(text)
    for direction, cdr, column in (
        ("outbound", out_cdr, OUT_TRUNK),
        ("inbound", in_cdr, IN_REASON),
    ):
        data, count = csv_bytes(direction, [cdr], excel=excel)  # type: ignore[arg-type]
        assert count == 1
        if excel:
            data = data.removeprefix(b"\xef\xbb\xbf")
        assert_no_formula_under_any_separator(data)
        header, row = read(data, ",")
        assert header == (OUTBOUND_HEADER if direction == "outbound" else INBOUND_HEADER)
        assert len(row) == len(header)
        assert row[column] == want
        assert row == csv_row(cdr)


def test_a_cell_holding_a_separator_is_quoted():
    """A `;` or tab keeps the cell in one piece for every reader that honours quotes."""
    for text in ("Busy;Here", "Busy\tHere"):
        data, _ = csv_bytes("outbound", [outbound(trunk=text)])
        assert f'"{text}"'.encode() in data


def test_plain_cells_keep_the_seed_layout():
    """Times, numbers and amounts are never quoted or marked; ordinary text is left alone."""
    data, _ = csv_bytes("outbound", [outbound(rate=None, charged=None), outbound()])
    lines = data.decode("utf-8").splitlines()
    assert lines[0] == ",".join(OUTBOUND_HEADER)
    assert lines[2] == (
        "2020-01-01 11:22:33,2020-01-01 11:22:35,2020-01-01 11:23:37,12345678901,44123456789,"
        "44123456789,62,120,487,Request Terminated,0.0123,0.002300,International,"
        "United States,Fixed,Outbound Trunk 1"
    )
    assert lines[1] == lines[2].replace(",0.0123,0.002300,", ",,,")


PIECES = ["=", "+", "-", "@", ";", ",", "\t", "\r", "\n", " ", '"', "'", "\u3000", "\uff1d",
          "\uff1b", "\ufe66", "\u200b", "\x00", "\x1f", "a", "1", "Busy"]  # fmt: skip
hostile_text = st.lists(st.sampled_from(PIECES), min_size=1, max_size=12).map("".join)


@settings(max_examples=500, deadline=None)
@given(texts=st.lists(hostile_text, min_size=3, max_size=3))
def test_no_mix_of_signs_separators_and_quotes_makes_a_formula(texts: list[str]):
    cdrs = [
        outbound(trunk=texts[0], disconnect_reason=texts[1], cli=texts[2]),
        outbound(country_name=texts[2], network_name=texts[0], destination=texts[1]),
    ]
    data, _ = csv_bytes("outbound", cdrs)
    assert_no_formula_under_any_separator(data)
    assert read(data, ",")[1:] == [csv_row(c) for c in cdrs]
