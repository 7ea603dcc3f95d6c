"""Hostile reference data: the loaders accept a file or refuse it, nothing else.

Whatever bytes are in rates.csv, trunks.csv or dids.csv, loading either succeeds with values
inside the documented bounds or raises `RefDataError` naming the file, the line, and the column
when one cell is to blame (SPEC section 2); never another exception, never a hang. A refused
reload leaves the last good version in force.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.countries import country_name
from pipeline.core.refdata import (
    DIDS_FILE,
    DIDS_HEADER,
    MAX_INCREMENT,
    MAX_MONEY,
    MONEY_PLACES,
    RATES_FILE,
    RATES_HEADER,
    TRUNKS_FILE,
    TRUNKS_HEADER,
    RefData,
    RefDataError,
    RefDataHolder,
    load_refdata,
)

TIME_BOUND = 1.0  # seconds a load may take, however hostile the files

RATES = [
    ",".join(RATES_HEADER),
    "std,1,United States,Fixed,,0.0100,,0,60,60,2020-01-01",  # line 2
    "std,44,United Kingdom,Fixed,Local,0.0150,0.0200,0.0010,30,6,2020-01-01T00:00:00",  # 3
    "term,1,United States,Fixed,,0.0070,,0,1,1,2020-01-01",  # line 4
]
TRUNKS = [
    ",".join(TRUNKS_HEADER),
    "T1,acc-1,std,,",  # line 2
    "T2,acc-2,std,442079460000,DE",  # line 3
]
DIDS = [
    ",".join(DIDS_HEADER),
    "18005550100,acc-1,0.0250,,term,,",  # line 2
    "442079460123,acc-2,,0.0060,,30,6",  # line 3
]
GOOD = {RATES_FILE: RATES, TRUNKS_FILE: TRUNKS, DIDS_FILE: DIDS}
HEADERS = {RATES_FILE: RATES_HEADER, TRUNKS_FILE: TRUNKS_HEADER, DIDS_FILE: DIDS_HEADER}
MONEY = {
    RATES_FILE: ("rate", "initial_rate", "connection_fee"),
    DIDS_FILE: ("toll_free_rate", "metered_rate"),
}
INCREMENTS = ("initial_increment", "recurring_increment")


def encode(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def write_all(directory: Path, **override: bytes) -> Path:
    """The good files, with some replaced by the given bytes (keyed by file stem)."""
    for name, lines in GOOD.items():
        (directory / name).write_bytes(override.get(name.removesuffix(".csv"), encode(lines)))
    return directory


def check_refdata(rd: RefData) -> None:
    """What an accepted set guarantees to rating and to the store."""
    amounts: list[Decimal | None] = []
    increments: list[int] = []
    for row in rd.rates.rows:
        amounts += [row.rate, row.initial_rate, row.connection_fee]
        increments += [row.initial_increment, row.recurring_increment]
        assert row.effective_from.tzinfo is UTC
        assert row.prefix.isascii() and row.prefix.isdigit() and len(row.prefix) <= 15
    for did in rd.dids.values():
        amounts += [did.toll_free_rate, did.metered_rate]
        increments += [did.initial_increment, did.recurring_increment]
    quantum = Decimal(1).scaleb(-MONEY_PLACES)
    for amount in amounts:
        if amount is not None:
            assert type(amount) is Decimal and amount.is_finite()
            assert 0 <= amount < MAX_MONEY and not amount.is_signed()
            assert amount == amount.quantize(quantum)
    assert all(type(n) is int and 1 <= n <= MAX_INCREMENT for n in increments)
    for trunk in rd.trunks.values():
        assert trunk.deck in rd.rates.decks
        # a country code the classifier can ever match: one a number can have
        assert trunk.origin_country is None or country_name(trunk.origin_country)


def load_checked(directory: Path, blame: str | None = None) -> RefData | RefDataError:
    """Load; a refusal must be a RefDataError that names a file and a line (and the column in
    the ``file:line:col`` form when it has one). `blame` = the only file that may be named."""
    began = time.perf_counter()
    try:
        rd = load_refdata(directory)
    except RefDataError as err:
        assert time.perf_counter() - began < TIME_BOUND
        assert err.file in GOOD and (blame is None or err.file == blame), str(err)
        assert err.line >= 1 and err.message.strip()
        where = f"{err.file}:{err.line}"
        if err.column is not None:
            assert 1 <= err.column <= len(HEADERS[err.file]) + 1
            where += f":{err.column}"
        assert str(err).startswith(where + (" " if err.column_name else ":")), str(err)
        return err
    assert time.perf_counter() - began < TIME_BOUND
    check_refdata(rd)
    return rd


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory) -> Iterator[Path]:
    """One directory for every hypothesis example (tmp_path is per test, not per example)."""
    yield tmp_path_factory.mktemp("hostile-refdata")


# --------------------------------------------------------------------------- fuzzing

FILE_NAMES = st.sampled_from(sorted(GOOD))
CSVISH = st.lists(
    st.sampled_from(
        list('std1092.,-+"#\r\n \t\x00\ufeffé;eE') + ["NaN", "Local", "2020-01-01", "UK"]
    ),
    max_size=150,
).map("".join)
CELL_GARBAGE = st.sampled_from(
    [
        "", " ", "NaN", "nan", "sNaN", "Infinity", "-Infinity", "inf", "1e999999", "1E5",
        "-0.01", "-0", "+1", "0x10", "1_000", "\u0661", "\uff19", "9" * 5000, "9" * 30,
        "0.0000000001", "0.000000001", "999999.999999999", "1000000", "\x00", "abc",
        "2020-02-30", "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00", "20200101",
        "2020-01-01T25:00", "Local", "local", "DE", "de", "442079460000", "+442079460000",
        "std", "term", "nope", "86400", "86401", "0", "-1", "UK", "EL", "ZZ", "gb", "DEU",
        "#", "# note", " #1", '#"',
    ]
) | st.text(st.characters(blacklist_characters=',"\r\n', blacklist_categories=["Cs"]))  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(FILE_NAMES, st.binary(max_size=300))
def test_random_bytes(config_dir, name, data):
    load_checked(write_all(config_dir, **{name.removesuffix(".csv"): data}))


@settings(max_examples=200, deadline=None)
@given(FILE_NAMES, st.booleans(), CSVISH)
def test_random_csvish_text(config_dir, name, with_header, text):
    head = ",".join(HEADERS[name]) + "\n" if with_header else ""
    data = (head + text).encode()
    result = load_checked(write_all(config_dir, **{name.removesuffix(".csv"): data}))
    if name != RATES_FILE and isinstance(result, RefDataError):
        assert result.file == name  # the other two files are fine


@settings(max_examples=300, deadline=None)
@given(FILE_NAMES, st.data())
def test_one_cell_mutated(config_dir, name, data):
    lines = GOOD[name]
    index = data.draw(st.integers(1, len(lines) - 1), label="line index")
    header = HEADERS[name]
    column = data.draw(st.integers(0, len(header) - 1), label="column")
    value = data.draw(CELL_GARBAGE, label="value")
    cells = lines[index].split(",")
    cells[column] = value
    mutated = [*lines[:index], ",".join(cells), *lines[index + 1 :]]
    result = load_checked(write_all(config_dir, **{name.removesuffix(".csv"): encode(mutated)}))
    if isinstance(result, RefDataError) and result.file == name and result.line == index + 1:
        # the mutated cell is to blame, or it made its row a duplicate of another
        assert result.column == column + 1 or "duplicate" in result.message, str(result)
        assert result.column_name == header[result.column - 1]


# --------------------------------------------------------------------------- money cells

HOSTILE_MONEY = [
    ("NaN", "not a decimal"),
    ("sNaN", "not a decimal"),
    ("Infinity", "not a decimal"),
    ("-Infinity", "not a decimal"),
    ("1e999999", "not a decimal"),
    ("1E5", "not a decimal"),
    ("0x10", "not a decimal"),
    ("\u0661", "not a decimal"),  # ARABIC-INDIC DIGIT ONE: Decimal() would take it
    ("-0.01", "negative amount"),
    ("-1", "negative amount"),
    ("1000000", f"below {MAX_MONEY}"),
    ("9" * 5000, f"below {MAX_MONEY}"),
    ("0.0000000001", f"more than {MONEY_PLACES} decimal places"),
    ("0.1234567891", f"more than {MONEY_PLACES} decimal places"),
]
MONEY_CELLS = [(name, col) for name, cols in MONEY.items() for col in cols]


@pytest.mark.parametrize(("name", "column"), MONEY_CELLS)
@pytest.mark.parametrize(("value", "problem"), HOSTILE_MONEY)
def test_hostile_money_is_refused_at_its_cell(tmp_path, name, column, value, problem):
    col = HEADERS[name].index(column)
    cells = GOOD[name][1].split(",")
    cells[col] = value
    lines = [GOOD[name][0], ",".join(cells), *GOOD[name][2:]]
    err = load_checked(write_all(tmp_path, **{name.removesuffix(".csv"): encode(lines)}), name)
    assert isinstance(err, RefDataError)
    assert (err.line, err.column, err.column_name) == (2, col + 1, column)
    assert problem in err.message
    assert str(err).startswith(f"{name}:2:{col + 1} ({column}): ")
    assert len(str(err)) < 200  # a 5000-digit cell is shortened in the message


@pytest.mark.parametrize(
    ("value", "amount"),
    [
        ("0", Decimal(0)),
        ("-0", Decimal(0)),
        (".5", Decimal("0.5")),
        ("5.", Decimal(5)),
        ("+1", Decimal(1)),
        ("999999.999999999", Decimal("999999.999999999")),
        ("0.010000000000000", Decimal("0.01")),  # trailing zeros are not precision
    ],
)
def test_money_edges_accepted(tmp_path, value, amount):
    lines = [RATES[0], RATES[1].replace("0.0100", value), *RATES[2:]]
    rd = load_checked(write_all(tmp_path, rates=encode(lines)))
    assert isinstance(rd, RefData)
    row = rd.rates.rows[0]
    assert row.rate == amount and row.initial_rate == amount and not row.rate.is_signed()


HOSTILE_INCREMENTS = [
    ("0", ">= 1 second"),
    ("-1", ">= 1 second"),
    ("-" + "9" * 5000, ">= 1 second"),
    ("86401", f"at most {MAX_INCREMENT}"),
    ("9" * 5000, f"at most {MAX_INCREMENT}"),  # int() alone would raise ValueError
    ("1.5", "whole number"),
    ("1e3", "whole number"),
]


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [(RATES_FILE, v, p) for v, p in [*HOSTILE_INCREMENTS, ("", "whole number")]]
    + [(DIDS_FILE, v, p) for v, p in HOSTILE_INCREMENTS],  # empty in dids.csv = default 1
)
def test_hostile_increments_are_refused_at_their_cell(tmp_path, name, value, problem):
    col = HEADERS[name].index("recurring_increment")
    lines = list(GOOD[name])
    cells = lines[2].split(",")
    cells[col] = value
    lines[2] = ",".join(cells)
    err = load_checked(write_all(tmp_path, **{name.removesuffix(".csv"): encode(lines)}), name)
    assert isinstance(err, RefDataError)
    assert (err.line, err.column, err.column_name) == (3, col + 1, "recurring_increment")
    assert problem in err.message


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("9999-12-31T23:59:59-01:00", "years 1..9999"),  # astimezone: OverflowError
        ("0001-01-01T00:00:00+01:00", "years 1..9999"),
        ("2020-02-30", "not an ISO date"),
        ("2020-01-01T25:00", "not an ISO date"),
        ("2020-01-01\x00", "control character U+0000"),
    ],
)
def test_hostile_effective_from_is_refused_at_its_cell(tmp_path, value, problem):
    lines = [RATES[0], RATES[1].replace("2020-01-01", value), *RATES[2:]]
    err = load_checked(write_all(tmp_path, rates=encode(lines)), RATES_FILE)
    assert isinstance(err, RefDataError)
    assert (err.line, err.column, err.column_name) == (2, 11, "effective_from")
    assert problem in err.message


# --------------------------------------------------------------------------- file shapes

LONG = "x" * 200_000


@pytest.mark.parametrize(
    ("data", "line", "column", "problem"),
    [
        (b"\xef\xbb\xbf\xef\xbb\xbf" + encode(TRUNKS), 1, 1, "header"),  # two BOMs
        (encode(TRUNKS).upper(), 1, 1, "header"),
        (encode(["trunk,account,deck,replace_cli", *TRUNKS[1:]]), 1, 5, "missing column"),
        (encode(TRUNKS).replace(b"T2,acc-2", b"T2\x00,acc-2"), 3, 1, "control character U+0000"),
        (encode(TRUNKS).replace(b"acc-2", b"acc\x1b[2J"), 3, 2, "control character U+001B"),
        (encode(TRUNKS).replace(b"acc-2", b"ac\xc2\x85c"), 3, 2, "control character U+0085"),
        (encode(TRUNKS).replace(b"acc-2", b"acc-\xff"), 3, None, "not UTF-8"),
        (encode(TRUNKS).replace(b"acc-2", b"acc-\xed\xa0\x80"), 3, None, "not UTF-8"),
        (encode(TRUNKS).replace(b"acc-2", b"acc-\xc0\xaf"), 3, None, "not UTF-8"),
        ("\n".join(TRUNKS).encode("utf-16"), 1, None, "not UTF-8"),
        (encode([*TRUNKS, f"T3,acc-3,std,,{LONG}"]), 4, None, "field limit"),
        (encode([*TRUNKS, f'T3,"{LONG}",std,,']), 4, None, "field limit"),
        (encode([*TRUNKS, ",".join(["x"] * 100_000)]), 4, 6, "expected 5 fields"),
        (encode([*TRUNKS, 'T3,"acc-3,std,,']), 4, None, "CSV syntax"),
        (encode([*TRUNKS, "T3,acc-3,std,,", "T4,acc-4,nope,,"]), 5, 3, "unknown rate deck"),
        (encode([*TRUNKS, 'T3,"acc\n3",std,,', "T4,acc-4,nope,,"]), 4, 2, "line break U+000A"),
        (encode([*TRUNKS, 'T3,acc-3,"st\r\nd",,']), 4, 3, "line break U+000D"),
        (encode([*TRUNKS, '"\nT3\n",acc-3,std,,', "T4,acc-4,nope,,"]), 7, 3, "unknown rate deck"),
        (b"", 1, None, "empty file"),
        (b" \n\r\n\t\n", 1, None, "empty file"),
        (b"# only a comment\n#\n", 1, None, "empty file"),
        # lines after comments keep their numbers, whatever the comments hold
        (encode(['#"unbalanced', "# a,b,c", *TRUNKS, "T4,acc-4,nope,,"]), 6, 3, "unknown rate"),
        (encode(["#\x00\x1b[2J", *TRUNKS, "T4,acc-4,nope,,"]), 5, 3, "unknown rate deck"),
        # inside a quoted cell a line starting with # is the cell's, not a comment
        (encode([*TRUNKS, 'T3,"acc', '#3",std,,', "T4,acc-4,nope,,"]), 4, 2, "line break U+000A"),
        (encode([*TRUNKS, 'T3,"acc', "#3", '",std,,']), 4, 2, "line break U+000A"),
        (encode([*TRUNKS, 'T3,"acc', "#3,std,,"]), 5, None, "CSV syntax"),
        # a header commented out is no header
        (encode(["#" + TRUNKS[0], *TRUNKS[1:]]), 2, 1, "header"),
    ],
)
def test_hostile_file_shapes_are_refused_with_a_location(tmp_path, data, line, column, problem):
    err = load_checked(write_all(tmp_path, trunks=data), TRUNKS_FILE)
    assert isinstance(err, RefDataError)
    assert (err.line, err.column) == (line, column), str(err)
    assert problem in str(err)


@pytest.mark.parametrize(
    "data",
    [
        b"\xef\xbb\xbf" + encode(TRUNKS),  # spreadsheet BOM
        encode(TRUNKS).replace(b"\n", b"\r\n"),
        encode(TRUNKS).replace(b"\n", b"\r"),
        encode(TRUNKS)[:-1],  # no final newline
        encode(["", *TRUNKS, "", "  ", "\t", ""]),  # blank lines
        encode([TRUNKS[0], '"T1\r\n",acc-1,"\tstd",,', *TRUNKS[2:]]),  # stripped to T1, std
        encode(TRUNKS).replace(b"T1,", b'"T1",'),  # quoted
        encode(TRUNKS[:1]),  # header only
        encode(["# trunks", TRUNKS[0], "  # T9,acc-9,nope,,", " \t#", *TRUNKS[1:], "#end"]),
        b"\xef\xbb\xbf# after a BOM\r\n" + encode(TRUNKS).replace(b"\n", b"\r\n"),
        encode(["#\x00 \x85 \u2028 comments may hold anything", *TRUNKS]),
        encode([*TRUNKS, '#"T3,acc-3,std,,'])[:-1],  # no final newline after a comment
        encode(["#", *TRUNKS]).replace(b"\n", b"\r"),  # CR line ends
    ],
)
def test_tolerated_file_shapes(tmp_path, data):
    rd = load_checked(write_all(tmp_path, trunks=data))
    assert isinstance(rd, RefData)
    assert set(rd.trunks) <= {"T1", "T2"}


# --------------------------------------------------------------------------- country codes


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        ("UK", "'GB'"),
        ("uk", "'GB'"),
        ("EL", "'GR'"),
        ("gb", "'GB'"),
        ("DEU", "'DE'"),
        ("276", "'DE'"),
        ("Germany", "'DE'"),
        ("ZZ", None),  # user-assigned, no country
        ("EU", None),  # exceptionally reserved, not a country
        ("FX", None),  # transitionally reserved
        ("AN", None),  # withdrawn (Netherlands Antilles)
        ("ＤＥ", None),  # full-width letters
        ("D", None),
        ("\u0130T", None),  # dotted capital I: not "IT"
        ("X" * 5000, None),
    ],
)
def test_hostile_country_codes_are_refused_at_their_cell(tmp_path, value, hint):
    lines = [*TRUNKS, f"T3,acc-3,std,,{value}"]
    err = load_checked(write_all(tmp_path, trunks=encode(lines)), TRUNKS_FILE)
    assert isinstance(err, RefDataError)
    assert (err.line, err.column, err.column_name) == (4, 5, "origin_country")
    assert "not an ISO 3166-1 alpha-2 code" in err.message
    if hint is None:
        assert "use " not in err.message
    else:
        assert f"use {hint}" in err.message
    assert len(str(err)) < 200


@pytest.mark.parametrize("value", ["GB", "GR", "AX", "RE", "XK", "AC", "TA", " DE "])
def test_country_codes_of_numbers_are_accepted(tmp_path, value):
    rd = load_checked(write_all(tmp_path, trunks=encode([*TRUNKS, f"T3,acc-3,std,,{value}"])))
    assert isinstance(rd, RefData)
    assert rd.trunks["T3"].origin_country == value.strip()


# --------------------------------------------------------------------------- hot reload

T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


def bump(path: Path) -> None:
    """Make a rewrite visible even on filesystems with coarse mtimes."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10_000_000))


BAD_RELOADS = {
    "random bytes": ("rates", b"\x00\xff\xfe garbage \x80"),
    "5000-digit increment": ("rates", encode([RATES[0], RATES[1].replace(",60,60,", ",9" + "9" * 4999 + ",60,"), *RATES[2:]])),  # noqa: E501
    "date past year 9999": ("rates", encode([RATES[0], RATES[1].replace("2020-01-01", "9999-12-31T23:59:59-01:00"), *RATES[2:]])),  # noqa: E501
    "NaN rate": ("dids", encode([DIDS[0], DIDS[1].replace("0.0250", "NaN"), *DIDS[2:]])),
    "huge rate": ("dids", encode([DIDS[0], DIDS[1].replace("0.0250", "9" * 100), *DIDS[2:]])),
    "header only rates": ("rates", encode(RATES[:1])),  # trunks.csv names a missing deck
    "unterminated quote": ("trunks", encode([*TRUNKS, '"T3,acc,std,,'])),
    "NUL in a name": ("trunks", encode([*TRUNKS, "T3\x00,acc,std,,"])),
    "UK for GB": ("trunks", encode([*TRUNKS, "T3,acc,std,,UK"])),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_RELOADS))
def test_holder_keeps_last_good_version_on_hostile_reload(tmp_path, case):
    stem, data = BAD_RELOADS[case]
    holder = RefDataHolder(write_all(tmp_path), clock=lambda: T0)
    good = holder.current
    path = tmp_path / f"{stem}.csv"
    path.write_bytes(data)
    bump(path)
    with pytest.raises(RefDataError) as info:
        holder.reload_if_changed(now=T0 + timedelta(minutes=1))
    blamed = TRUNKS_FILE if case == "header only rates" else path.name
    assert info.value.file == blamed and info.value.line >= 1
    assert holder.current is good and len(holder.versions) == 1
    assert holder.for_call(T0 + timedelta(hours=1)) is good
    assert holder.last_error is info.value
    assert holder.reload_if_changed() is False  # reported once, not on every poll
    # the operator puts the good file back: same content as the version in force
    path.write_bytes(encode(GOOD[path.name]))
    bump(path)
    assert holder.reload_if_changed() is False
    assert holder.current is good and holder.last_error is None
