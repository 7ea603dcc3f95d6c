"""Reference-data loading, validation messages and versioned reload (SPEC section 2)."""

from __future__ import annotations

import os
import pickle
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from pipeline.core.refdata import (
    RefDataError,
    RefDataHolder,
    load_refdata,
)

SAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "config"

RATES_HEADER = (
    "deck,prefix,country,network,category,rate,initial_rate,connection_fee,"
    "initial_increment,recurring_increment,effective_from"
)
RATES = [
    RATES_HEADER,
    "std,1,United States,Fixed,,0.0100,,0,60,60,2020-01-01",  # line 2
    "std,1,United States,Fixed,,0.0080,,0,60,60,2026-11-01",  # line 3
    "std,44,United Kingdom,Fixed,Local,0.0150,0.0200,0.0010,30,6,2020-01-01T00:00:00",  # 4
    "term,1,United States,Fixed,,0.0070,,0,1,1,2020-01-01",  # line 5
]
TRUNKS = [
    "trunk,account,deck,replace_cli,origin_country",
    "T1,acc-1,std,,",  # line 2
    "T2,acc-2,std,442079460000,DE",  # line 3
]
DIDS = [
    "did,account,toll_free_rate,metered_rate,termination_deck,initial_increment,recurring_increment",
    "18005550100,acc-1,0.0250,,term,,",  # line 2
    "442079460123,acc-2,,0.0060,,30,6",  # line 3
]


def write(path: Path, name: str, lines: list[str]) -> None:
    (path / name).write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_config(
    path: Path,
    rates: list[str] = RATES,
    trunks: list[str] = TRUNKS,
    dids: list[str] = DIDS,
) -> Path:
    write(path, "rates.csv", rates)
    write(path, "trunks.csv", trunks)
    write(path, "dids.csv", dids)
    return path


def replaced(lines: list[str], index: int, new: str) -> list[str]:
    out = list(lines)
    out[index] = new
    return out


def load_error(tmp_path: Path, **files: list[str]) -> RefDataError:
    write_config(tmp_path, **files)
    with pytest.raises(RefDataError) as info:
        load_refdata(tmp_path)
    return info.value


# --------------------------------------------------------------------------- good data


def test_samples_load():
    rd = load_refdata(SAMPLES)
    assert len(rd.rates) >= 20
    assert "Outbound Trunk 1" in rd.trunks
    assert rd.trunks["Outbound Trunk 2"].replace_cli == "442079460000"
    assert rd.trunks["Outbound Trunk 3"].origin_country == "DE"
    assert rd.dids["18005550100"].initial_increment == 1  # default 1,1
    assert rd.dids["18005550101"].recurring_increment == 60
    assert rd.dids["33142685300"].termination_deck is None
    assert len(rd.fingerprint) == 64


def test_typed_fields_and_defaults(tmp_path: Path):
    rd = load_refdata(write_config(tmp_path))
    at = datetime(2021, 1, 1, tzinfo=UTC)
    us = rd.rates.lookup("std", "12015550123", "International", at)
    assert us is not None
    assert us.rate == Decimal("0.0100") and isinstance(us.rate, Decimal)
    assert us.initial_rate == us.rate  # empty initial_rate = rate
    assert us.connection_fee == 0
    assert (us.initial_increment, us.recurring_increment) == (60, 60)
    assert us.effective_from == datetime(2020, 1, 1, tzinfo=UTC)
    assert us.line == 2
    uk = rd.rates.lookup("std", "442079460123", "Local", at)
    assert uk is not None and uk.initial_rate == Decimal("0.0200")
    assert uk.connection_fee == Decimal("0.0010") and uk.category == "Local"
    t1, t2 = rd.trunks["T1"], rd.trunks["T2"]
    assert t1.replace_cli is None and t1.origin_country is None
    assert (t2.replace_cli, t2.origin_country, t2.deck) == ("442079460000", "DE", "std")
    d1, d2 = rd.dids["18005550100"], rd.dids["442079460123"]
    assert (d1.toll_free_rate, d1.metered_rate, d1.termination_deck) == (
        Decimal("0.0250"),
        None,
        "term",
    )
    assert (d1.initial_increment, d1.recurring_increment) == (1, 1)
    assert (d2.initial_increment, d2.recurring_increment) == (30, 6)
    assert d2.termination_deck is None


def test_effective_from_forms_are_utc(tmp_path: Path):
    rates = [
        RATES_HEADER,
        "a,1,,,,1,,0,1,1,2026-11-01",
        "b,1,,,,1,,0,1,1,2026-11-01T12:30:00",  # naive = UTC
        "c,1,,,,1,,0,1,1,2026-11-01T12:30:00+02:00",  # converted
        "d,1,,,,1,,0,1,1,2026-11-01T10:30:00Z",
    ]
    rd = load_refdata(write_config(tmp_path, rates=rates, trunks=TRUNKS[:1], dids=DIDS[:1]))
    effs = {r.deck: r.effective_from for r in rd.rates.rows}
    assert effs["a"] == datetime(2026, 11, 1, tzinfo=UTC)
    assert effs["b"] == datetime(2026, 11, 1, 12, 30, tzinfo=UTC)
    assert effs["c"] == datetime(2026, 11, 1, 10, 30, tzinfo=UTC)
    assert effs["d"] == effs["c"]
    assert all(e.tzinfo is UTC for e in effs.values())


def test_bom_blank_lines_and_whitespace_tolerated(tmp_path: Path):
    write_config(tmp_path)
    (tmp_path / "trunks.csv").write_text(
        "\ufefftrunk,account,deck,replace_cli,origin_country\n\n T1 , acc-1 , std ,, \n\n",
        encoding="utf-8",
    )
    rd = load_refdata(tmp_path)
    assert rd.trunks["T1"].deck == "std"


def test_line_numbers_count_blank_lines(tmp_path: Path):
    err = load_error(tmp_path, trunks=[TRUNKS[0], "", "", "T1,acc-1,nope,,"])
    assert (err.file, err.line, err.column) == ("trunks.csv", 4, 3)


def test_comment_lines_are_ignored_in_every_file(tmp_path: Path):
    def commented(lines: list[str]) -> list[str]:
        # before the header, indented, between rows, holding commas, quotes and a BOM-less "#"
        return [
            '# operator notes: prices in USD, "UK" is GB',
            lines[0],
            "  # indented comment, with, commas",
            *lines[1:],
            '#"an unbalanced quote',
            "#",
        ]

    plain = load_refdata(write_config(tmp_path))
    rd = load_refdata(
        write_config(
            tmp_path, rates=commented(RATES), trunks=commented(TRUNKS), dids=commented(DIDS)
        )
    )
    assert [r.line for r in rd.rates.rows] == [r.line + 2 for r in plain.rates.rows]
    assert [(r.deck, r.prefix, r.rate) for r in rd.rates.rows] == [
        (r.deck, r.prefix, r.rate) for r in plain.rates.rows
    ]
    assert dict(rd.trunks) == dict(plain.trunks)
    assert dict(rd.dids) == dict(plain.dids)


def test_line_numbers_count_comment_lines(tmp_path: Path):
    trunks = ["# trunks of the carrier", TRUNKS[0], "# first", "T1,acc-1,std,,", "T2,acc-2,nope,,"]
    err = load_error(tmp_path, trunks=trunks)
    assert str(err) == "trunks.csv:5:3 (deck): unknown rate deck 'nope' (not in rates.csv)"
    crlf = "\r\n".join(["#a", TRUNKS[0], "#b", "T1,acc-1,nope,,"]) + "\r\n"
    write_config(tmp_path)
    (tmp_path / "trunks.csv").write_text(crlf, encoding="utf-8", newline="")
    with pytest.raises(RefDataError, match=r"^trunks\.csv:4:3 \(deck\)"):
        load_refdata(tmp_path)


def test_a_quoted_hash_is_a_row_not_a_comment(tmp_path: Path):
    rd = load_refdata(write_config(tmp_path, trunks=[*TRUNKS, '"#5",acc-5,std,,', "T6,#x,std,,"]))
    assert rd.trunks["#5"].account == "acc-5"
    assert rd.trunks["T6"].account == "#x"


def test_origin_country_is_an_iso_code(tmp_path: Path):
    rd = load_refdata(write_config(tmp_path, trunks=[*TRUNKS, "T3,acc-3,std,,XK", "T4,a,std,,AX"]))
    assert (rd.trunks["T3"].origin_country, rd.trunks["T4"].origin_country) == ("XK", "AX")
    err = load_error(tmp_path, trunks=[*TRUNKS, "T3,acc-3,std,,UK"])
    assert (err.file, err.line, err.column, err.column_name) == (
        "trunks.csv",
        4,
        5,
        "origin_country",
    )
    assert "'GB'" in err.message


def test_fingerprint_follows_content(tmp_path: Path):
    a = load_refdata(write_config(tmp_path)).fingerprint
    assert load_refdata(tmp_path).fingerprint == a
    write_config(tmp_path, dids=[*DIDS, "33142685300,acc-3,,0.0030,,,"])
    assert load_refdata(tmp_path).fingerprint != a


def test_refdata_is_read_only(tmp_path: Path):
    rd = load_refdata(write_config(tmp_path))
    with pytest.raises(TypeError):
        rd.trunks["X"] = rd.trunks["T1"]  # type: ignore[index]
    with pytest.raises(AttributeError):
        rd.fingerprint = "x"  # type: ignore[misc]


# --------------------------------------------------------------------------- malformed data

BAD_CASES = [
    # (file, line index, new line, expected message)
    ("rates", 2, "std,1,United States,Fixed,,abc,,0,60,60,2020-01-01",
     "rates.csv:3:6 (rate): not a decimal: 'abc'"),
    ("rates", 2, "std,1,United States,Fixed,,-0.01,,0,60,60,2020-01-01",
     "rates.csv:3:6 (rate): negative amount: '-0.01'"),
    ("rates", 2, "std,1,United States,Fixed,,NaN,,0,60,60,2020-01-01",
     "rates.csv:3:6 (rate): not a decimal: 'NaN'"),
    ("rates", 2, "std,1,United States,Fixed,,1e-3,,0,60,60,2020-01-01",
     "rates.csv:3:6 (rate): not a decimal: '1e-3'"),
    ("rates", 2, "std,1,United States,Fixed,,0.01,0.0.1,0,60,60,2020-01-01",
     "rates.csv:3:7 (initial_rate): not a decimal: '0.0.1'"),
    ("rates", 2, "std,1,United States,Fixed,,0.01,,-1,60,60,2020-01-01",
     "rates.csv:3:8 (connection_fee): negative amount: '-1'"),
    ("rates", 2, "std,1,United States,Fixed,,,,0,60,60,2020-01-01",
     "rates.csv:3:6 (rate): not a decimal: ''"),
    ("rates", 2, "std,1,United States,Fixed,,0.01,,0,0,60,2020-01-01",
     "rates.csv:3:9 (initial_increment): increment must be >= 1 second: '0'"),
    ("rates", 2, "std,1,United States,Fixed,,0.01,,0,60,1.5,2020-01-01",
     "rates.csv:3:10 (recurring_increment): not a whole number of seconds: '1.5'"),
    ("rates", 2, "std,1,United States,Fixed,,0.01,,0,60,60,2020-13-01",
     "rates.csv:3:11 (effective_from): not an ISO date or datetime: '2020-13-01'"),
    ("rates", 2, "std,1,United States,Fixed,,0.01,,0,60,60,01/11/2026",
     "rates.csv:3:11 (effective_from): not an ISO date or datetime: '01/11/2026'"),
    ("rates", 2, "std,1,United States,Fixed,,0.01,,0,60,60,",
     "rates.csv:3:11 (effective_from): not an ISO date or datetime: ''"),
    ("rates", 2, "std,1x,United States,Fixed,,0.01,,0,60,60,2020-01-01",
     "rates.csv:3:2 (prefix): prefix must be 1..15 digits: '1x'"),
    ("rates", 2, ",1,United States,Fixed,,0.01,,0,60,60,2020-01-01",
     "rates.csv:3:1 (deck): must not be empty"),
    ("rates", 2, "std,1,United States,Fixed,local,0.01,,0,60,60,2020-01-01",
     "rates.csv:3:5 (category): unknown category 'local': "
     "expected International, Local, Origin based or empty"),
    ("rates", 2, "std,1,United States,Fixed,,0.01,,0,60,60",
     "rates.csv:3:11 (effective_from): expected 11 fields, got 10"),
    ("rates", 2, "std,1,United States,Fixed,,0.01,,0,60,60,2020-01-01,x",
     "rates.csv:3:12: expected 11 fields, got 12"),
    # same deck+prefix+category+effective_from (a date and midnight datetime are one instant)
    ("rates", 2, "std,1,United States,Fixed,,0.0090,,0,60,60,2020-01-01T00:00:00Z",
     "rates.csv:3:1 (deck): duplicate of line 2 (same deck, prefix, category, effective_from)"),
    ("rates", 0, RATES_HEADER.replace("prefix", "prefx"),
     "rates.csv:1:2 (prefix): header: expected 'prefix', got 'prefx'"),
    ("rates", 0, RATES_HEADER.rsplit(",", 1)[0],
     "rates.csv:1:11 (effective_from): header: missing column 'effective_from'"),
    ("rates", 0, RATES_HEADER + ",comment",
     "rates.csv:1:12: header: unexpected extra column 'comment'"),
    ("trunks", 1, "T1,acc-1,nope,,",
     "trunks.csv:2:3 (deck): unknown rate deck 'nope' (not in rates.csv)"),
    ("trunks", 2, "T1,acc-2,std,,",
     "trunks.csv:3:1 (trunk): duplicate trunk 'T1' (line 2)"),
    ("trunks", 2, "T2,acc-2,std,+442079460000,",
     "trunks.csv:3:4 (replace_cli): "
     "not an E.164 number (6..15 digits, no leading 0 or +): '+442079460000'"),
    ("trunks", 2, "T2,acc-2,std,,de",
     "trunks.csv:3:5 (origin_country): not an ISO 3166-1 alpha-2 code: 'de'; "
     "use 'DE' for Germany (codes are two upper-case letters)"),
    # two upper-case letters, yet no country: the number's country is never "UK" or "ZZ"
    ("trunks", 2, "T2,acc-2,std,,UK",
     "trunks.csv:3:5 (origin_country): not an ISO 3166-1 alpha-2 code: 'UK'; "
     "use 'GB' for United Kingdom (UK is a common abbreviation, not its ISO code)"),
    ("trunks", 2, "T2,acc-2,std,,EL",
     "trunks.csv:3:5 (origin_country): not an ISO 3166-1 alpha-2 code: 'EL'; "
     "use 'GR' for Greece (EL is the EU's own code for it, not its ISO code)"),
    ("trunks", 2, "T2,acc-2,std,,ZZ",
     "trunks.csv:3:5 (origin_country): not an ISO 3166-1 alpha-2 code: 'ZZ'"),
    ("trunks", 2, "T2,acc-2,std,,DEU",
     "trunks.csv:3:5 (origin_country): not an ISO 3166-1 alpha-2 code: 'DEU'; "
     "use 'DE' for Germany (DEU is its alpha-3 code)"),
    ("trunks", 2, "T2,,std,,",
     "trunks.csv:3:2 (account): must not be empty"),
    ("trunks", 0, "trunk,account,deck,origin_country,replace_cli",
     "trunks.csv:1:4 (replace_cli): header: expected 'replace_cli', got 'origin_country'"),
    ("dids", 2, "18005550100,acc-2,,0.0060,,30,6",
     "dids.csv:3:1 (did): duplicate DID 18005550100 (line 2)"),
    ("dids", 2, "442079460123,acc-2,,0.0060,nope,30,6",
     "dids.csv:3:5 (termination_deck): unknown rate deck 'nope' (not in rates.csv)"),
    ("dids", 2, "442079460123,acc-2,,-0.0060,,30,6",
     "dids.csv:3:4 (metered_rate): negative amount: '-0.0060'"),
    ("dids", 2, "442079460123,acc-2,free,,,30,6",
     "dids.csv:3:3 (toll_free_rate): not a decimal: 'free'"),
    ("dids", 2, "442079460123,acc-2,,0.0060,,30,0",
     "dids.csv:3:7 (recurring_increment): increment must be >= 1 second: '0'"),
    ("dids", 2, "sip:foo,acc-2,,0.0060,,30,6",
     "dids.csv:3:1 (did): not an E.164 number (6..15 digits, no leading 0 or +): 'sip:foo'"),
    ("dids", 2, "442079460123,acc-2,,0.0060",
     "dids.csv:3:5 (termination_deck): expected 7 fields, got 4"),
]  # fmt: skip


@pytest.mark.parametrize(("file", "index", "line", "message"), BAD_CASES)
def test_malformed_refdata_names_file_line_column(
    tmp_path: Path, file: str, index: int, line: str, message: str
):
    base = {"rates": RATES, "trunks": TRUNKS, "dids": DIDS}[file]
    err = load_error(tmp_path, **{file: replaced(base, index, line)})
    assert str(err) == message
    assert err.file == f"{file}.csv"
    assert err.line == int(message.split(":")[1])


def test_error_attributes_and_pickling(tmp_path: Path):
    err = load_error(tmp_path, rates=replaced(RATES, 2, RATES[2].replace("0.0080", "abc")))
    assert (err.file, err.line, err.column, err.column_name) == ("rates.csv", 3, 6, "rate")
    assert err.message == "not a decimal: 'abc'"
    assert isinstance(err, ValueError)
    assert str(pickle.loads(pickle.dumps(err))) == str(err)


def test_empty_file(tmp_path: Path):
    write_config(tmp_path)
    (tmp_path / "dids.csv").write_text("")
    with pytest.raises(RefDataError, match=r"^dids\.csv:1: empty file: expected header did,"):
        load_refdata(tmp_path)


def test_missing_file(tmp_path: Path):
    write_config(tmp_path)
    (tmp_path / "trunks.csv").unlink()
    with pytest.raises(RefDataError, match=r"^trunks\.csv: file not found in "):
        load_refdata(tmp_path)


def test_not_utf8(tmp_path: Path):
    write_config(tmp_path)
    (tmp_path / "trunks.csv").write_bytes(TRUNKS[0].encode() + b"\nT\xe91,acc,std,,\n")
    with pytest.raises(RefDataError, match=r"^trunks\.csv:2: not UTF-8"):
        load_refdata(tmp_path)


def test_csv_syntax_error(tmp_path: Path):
    err = load_error(tmp_path, trunks=[*TRUNKS, '"T3"x,acc,std,,'])
    assert str(err).startswith("trunks.csv:4: CSV syntax:")


def test_quoted_fields_are_fine(tmp_path: Path):
    write_config(tmp_path, trunks=[*TRUNKS, '"Trunk, with comma",acc-3,"std",,'])
    assert load_refdata(tmp_path).trunks["Trunk, with comma"].account == "acc-3"


# --------------------------------------------------------------------------- holder

T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


def bump(path: Path) -> None:
    """Make a rewrite visible even on filesystems with coarse mtimes."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_holder_keeps_versions_and_picks_by_call_start(tmp_path: Path):
    clock = Clock(T0)
    holder = RefDataHolder(write_config(tmp_path), clock=clock)
    v1 = holder.current
    assert holder.reload_if_changed() is False  # nothing changed

    clock.now = T0 + timedelta(hours=1)
    write(tmp_path, "trunks.csv", [*TRUNKS, "T3,acc-3,term,,"])
    bump(tmp_path / "trunks.csv")
    assert holder.reload_if_changed() is True
    v2 = holder.current
    assert v2 is not v1 and "T3" in v2.trunks and "T3" not in v1.trunks
    assert [v.loaded_at for v in holder.versions] == [T0, T0 + timedelta(hours=1)]

    # a call that started before the change is rated with the old data ...
    assert holder.for_call(T0 + timedelta(minutes=59)) is v1
    # ... one starting at or after the load with the new
    assert holder.for_call(T0 + timedelta(hours=1)) is v2
    assert holder.for_call(T0 + timedelta(days=1)) is v2
    # older than every version (replaying old events): the oldest
    assert holder.for_call(datetime(2020, 1, 1, tzinfo=UTC)) is v1


def test_holder_keeps_last_good_version_on_error(tmp_path: Path):
    clock = Clock(T0)
    holder = RefDataHolder(write_config(tmp_path), clock=clock)
    good = holder.current

    clock.now = T0 + timedelta(minutes=5)
    write(tmp_path, "rates.csv", replaced(RATES, 3, RATES[3].replace("0.0150", "x")))
    bump(tmp_path / "rates.csv")
    with pytest.raises(RefDataError, match=r"^rates\.csv:4:6 \(rate\): not a decimal: 'x'$"):
        holder.reload_if_changed()
    assert holder.current is good
    assert holder.for_call(T0 + timedelta(minutes=6)) is good
    assert len(holder.versions) == 1
    assert holder.last_error is not None and holder.last_error.line == 4
    # the same bad files are reported once, not on every poll
    assert holder.reload_if_changed() is False
    assert holder.current is good

    # the operator fixes the file: a new version is taken up
    clock.now = T0 + timedelta(minutes=10)
    write(tmp_path, "rates.csv", replaced(RATES, 3, RATES[3].replace("0.0150", "0.0160")))
    bump(tmp_path / "rates.csv")
    assert holder.reload_if_changed() is True
    assert holder.last_error is None
    assert holder.current is not good
    row = holder.current.rates.lookup("std", "442079460123", "Local", T0)
    assert row is not None and row.rate == Decimal("0.0160")


def test_holder_ignores_touch_without_content_change(tmp_path: Path):
    holder = RefDataHolder(write_config(tmp_path), clock=Clock(T0))
    bump(tmp_path / "dids.csv")
    assert holder.reload_if_changed() is False
    assert len(holder.versions) == 1


def test_holder_deleted_file_keeps_last_good(tmp_path: Path):
    holder = RefDataHolder(write_config(tmp_path), clock=Clock(T0))
    good = holder.current
    (tmp_path / "dids.csv").unlink()
    with pytest.raises(RefDataError, match=r"^dids\.csv: file not found"):
        holder.reload_if_changed()
    assert holder.current is good
    assert holder.reload_if_changed() is False  # reported once
    write(tmp_path, "dids.csv", DIDS)
    assert holder.reload_if_changed() is False  # same content as the good version
    assert holder.last_error is None and holder.current is good


def test_holder_initial_failure_raises(tmp_path: Path):
    write_config(tmp_path, trunks=[*TRUNKS, "T9,acc,unknown-deck,,"])
    with pytest.raises(RefDataError, match=r"^trunks\.csv:4:3 \(deck\)"):
        RefDataHolder(tmp_path)


def test_holder_explicit_load_time_prune_and_bound(tmp_path: Path):
    holder = RefDataHolder(write_config(tmp_path), clock=Clock(T0), max_versions=3)
    for i in range(1, 5):
        write(tmp_path, "trunks.csv", [*TRUNKS, f"T{i + 10},acc,std,,"])
        bump(tmp_path / "trunks.csv")
        assert holder.reload_if_changed(now=T0 + timedelta(hours=i)) is True
    assert [v.loaded_at for v in holder.versions] == [T0 + timedelta(hours=h) for h in (2, 3, 4)]
    holder.prune(T0 + timedelta(hours=3, minutes=30))
    # the version loaded at 3h still serves calls starting between 3h30 and 4h
    assert [v.loaded_at for v in holder.versions] == [T0 + timedelta(hours=h) for h in (3, 4)]
    assert holder.for_call(T0 + timedelta(hours=3, minutes=45)) is holder.versions[0].data


def test_holder_clock_stepping_back_does_not_reorder(tmp_path: Path):
    clock = Clock(T0)
    holder = RefDataHolder(write_config(tmp_path), clock=clock)
    clock.now = T0 - timedelta(hours=1)
    write(tmp_path, "trunks.csv", [*TRUNKS, "T3,acc-3,term,,"])
    bump(tmp_path / "trunks.csv")
    assert holder.reload_if_changed() is True
    assert [v.loaded_at for v in holder.versions] == [T0, T0]
    assert holder.for_call(T0) is holder.current
