"""Operator reference data (SPEC section 2): strict loading and versioned hot reload.

Loading is all-or-nothing: the first problem in any of the three files raises `RefDataError`
naming file, line and column, and nothing of the new set is used. Validation decisions:

* The header must equal the SPEC's column list exactly (a UTF-8 BOM, as written by
  spreadsheet tools, is ignored). Blank lines are skipped, and so are comment lines: lines
  whose first non-blank character is ``#`` (a row whose first cell starts with ``#`` is
  written quoted: ``"#5",...``). Line numbers in messages count every line, comments
  included, so they match the operator's editor. Every field is stripped of
  surrounding whitespace before it is checked. A cell must not hold a control character
  other than tab (NUL, a line break inside quotes, ...; see `_Table._refuse_control`).
* Money: plain decimal notation only (``0.0125``; no exponent, NaN or infinity), non-negative,
  below 1,000,000 and with at most 9 significant decimal places, parsed straight to `Decimal`.
  The bounds come from the store (SPEC is silent): a CDR's rate is a Decimal(18, 9) column and
  its amounts Decimal(18, 6), which the writer refuses to truncate, so a finer or bigger deck
  value would be accepted here and then fail every insert of the calls it rates.
  rates.csv: `rate` required, `initial_rate` empty = `rate`, `connection_fee` empty = 0.
  dids.csv: rates may be empty (= service not used).
* Increments: whole seconds 1..86400 (a day; the bound keeps billing durations within the
  store's UInt32); required in rates.csv, default ``1,1`` in dids.csv.
* `effective_from`: ISO 8601 date (midnight UTC) or datetime; a datetime without offset is
  UTC, one with an offset is converted to UTC.
* Names (deck, trunk, account) must be non-empty; prefix, DID and replace_cli are ASCII
  digits (prefix 1..15, DID/replace_cli 6..15 without a leading 0, like E.164); origin_country
  is empty or an ISO 3166-1 alpha-2 code as `pipeline.core.countries.check_alpha2` accepts it
  (``GB``; ``UK``, ``gb`` or ``GBR`` are refused with a hint), since it is compared with the
  country libphonenumber gives the called number; category is International, Local, Origin
  based or empty (exact spelling, as in CDR Type).
* Duplicates are refused: deck+prefix+category+effective_from (compared as instants), trunk
  name, DID. A trunk's deck and a DID's non-empty termination_deck must exist in rates.csv.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import re
import threading
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType

from pipeline.core.countries import check_alpha2
from pipeline.core.rating import RateBook, RateRow

__all__ = [
    "RATES_FILE",
    "TRUNKS_FILE",
    "DIDS_FILE",
    "RATES_HEADER",
    "TRUNKS_HEADER",
    "DIDS_HEADER",
    "CATEGORIES",
    "MAX_MONEY",
    "MONEY_PLACES",
    "MAX_INCREMENT",
    "RefDataError",
    "Trunk",
    "Did",
    "RefData",
    "RefDataVersion",
    "RefDataHolder",
    "load_refdata",
    "parse_refdata",
]

log = logging.getLogger(__name__)

RATES_FILE = "rates.csv"
TRUNKS_FILE = "trunks.csv"
DIDS_FILE = "dids.csv"
FILES = (RATES_FILE, TRUNKS_FILE, DIDS_FILE)

RATES_HEADER = (
    "deck", "prefix", "country", "network", "category", "rate", "initial_rate",
    "connection_fee", "initial_increment", "recurring_increment", "effective_from",
)  # fmt: skip
TRUNKS_HEADER = ("trunk", "account", "deck", "replace_cli", "origin_country")
DIDS_HEADER = (
    "did", "account", "toll_free_rate", "metered_rate", "termination_deck",
    "initial_increment", "recurring_increment",
)  # fmt: skip
CATEGORIES = frozenset({"International", "Local", "Origin based"})


class RefDataError(ValueError):
    """A problem in a reference-data file; ``str()`` is ``file:line:col (name): message``.

    `column` is 1-based (None for a whole-line or whole-file problem), `line` is the physical
    line where the CSV record starts (0 for a whole-file problem such as a missing file).
    """

    def __init__(
        self,
        file: str,
        line: int,
        column: int | None,
        message: str,
        column_name: str | None = None,
    ) -> None:
        self.file = file
        self.line = line
        self.column = column
        self.column_name = column_name
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.file if self.line == 0 else f"{self.file}:{self.line}"
        if self.column is not None:
            where += f":{self.column}"
            if self.column_name:
                where += f" ({self.column_name})"
        return f"{where}: {self.message}"

    def __reduce__(self):  # keep pickling (multiprocessing, logging handlers) working
        return (
            RefDataError,
            (self.file, self.line, self.column, self.message, self.column_name),
        )


@dataclass(frozen=True, slots=True)
class Trunk:
    """A trunks.csv row. `replace_cli`/`origin_country` are None when empty."""

    name: str
    account: str
    deck: str
    replace_cli: str | None
    origin_country: str | None


@dataclass(frozen=True, slots=True)
class Did:
    """A dids.csv row. Rates are None for services not used; increments already defaulted."""

    did: str
    account: str
    toll_free_rate: Decimal | None
    metered_rate: Decimal | None
    termination_deck: str | None
    initial_increment: int
    recurring_increment: int


@dataclass(frozen=True, slots=True, eq=False)
class RefData:
    """One complete, validated set of reference data. `fingerprint` is the SHA-256 of the
    three files' bytes, so equal content means an equal fingerprint whatever the mtimes."""

    rates: RateBook
    trunks: Mapping[str, Trunk]
    dids: Mapping[str, Did]
    fingerprint: str


# --------------------------------------------------------------------------- field parsers


class _FieldError(Exception):
    """Raised by a field parser; the row loop adds file/line/column."""


_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
_INT = re.compile(r"[+-]?[0-9]+")
_PREFIX = re.compile(r"[0-9]{1,15}")
_E164 = re.compile(r"[1-9][0-9]{5,14}")
_COMMENT = re.compile(r"[^\S\r\n]*#")  # matched at the start of a line
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")  # Unicode Cc but tab
_CONTROL_IN_LINE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # not CR, LF either


MAX_MONEY = Decimal(1_000_000)
MONEY_PLACES = 9
MAX_INCREMENT = 86_400


def _show(v: str) -> str:
    """`repr` of a cell for a message, shortened: a cell may be 128 KiB long."""
    r = repr(v)
    return r if len(r) <= 64 else f"{r[:60]}...{r[-1]} ({len(v)} characters)"


def _money(v: str) -> Decimal:
    if not _DECIMAL.fullmatch(v):
        raise _FieldError(f"not a decimal: {_show(v)}")
    d = Decimal(v)  # exact: the constructor never rounds
    if d.is_signed() and d:
        raise _FieldError(f"negative amount: {_show(v)}")
    if d >= MAX_MONEY:
        raise _FieldError(f"amount must be below {MAX_MONEY}: {_show(v)}")
    if len(v.partition(".")[2].rstrip("0")) > MONEY_PLACES:
        raise _FieldError(f"more than {MONEY_PLACES} decimal places: {_show(v)}")
    return abs(d)  # also normalises "-0"


def _increment(v: str) -> int:
    if not _INT.fullmatch(v):
        raise _FieldError(f"not a whole number of seconds: {_show(v)}")
    # Compare digit counts before int(): int() refuses strings over 4300 digits (ValueError).
    digits = v.lstrip("+-").lstrip("0")
    if v.startswith("-") or not digits:
        raise _FieldError(f"increment must be >= 1 second: {_show(v)}")
    if len(digits) > len(str(MAX_INCREMENT)) or int(digits) > MAX_INCREMENT:
        raise _FieldError(f"increment must be at most {MAX_INCREMENT} seconds: {_show(v)}")
    return int(digits)


def _when(v: str) -> datetime:
    try:
        if len(v) <= 10 and "T" not in v and " " not in v:
            d = date.fromisoformat(v)
            return datetime(d.year, d.month, d.day, tzinfo=UTC)
        t = datetime.fromisoformat(v)
    except ValueError:
        raise _FieldError(f"not an ISO date or datetime: {_show(v)}") from None
    if t.tzinfo is None:
        return t.replace(tzinfo=UTC)
    try:
        return t.astimezone(UTC)
    except OverflowError:  # the ends of the range: year 1 at +01:00, year 9999 at -01:00
        raise _FieldError(f"outside years 1..9999 once converted to UTC: {_show(v)}") from None


def _required(v: str) -> str:
    if not v:
        raise _FieldError("must not be empty")
    return v


def _prefix(v: str) -> str:
    if not _PREFIX.fullmatch(v):
        raise _FieldError(f"prefix must be 1..15 digits: {_show(v)}")
    return v


def _e164(v: str) -> str:
    if not _E164.fullmatch(v):
        raise _FieldError(f"not an E.164 number (6..15 digits, no leading 0 or +): {_show(v)}")
    return v


def _category(v: str) -> str:
    if v and v not in CATEGORIES:
        raise _FieldError(
            f"unknown category {_show(v)}: expected International, Local, Origin based or empty"
        )
    return v


def _country(v: str) -> str | None:
    if not v:
        return None
    try:
        check_alpha2(v)
    except ValueError as exc:
        raise _FieldError(str(exc)) from None
    return v


# --------------------------------------------------------------------------- CSV reading


def _skip_comments(lines: Iterable[str], at_record_start: list[bool]) -> Iterator[str]:
    """The lines for csv.reader with each comment line made blank (so that the lines after it
    keep their numbers). A line is a comment only where a record starts (`at_record_start`,
    set by the reading loop after each record): inside a quoted cell a line starting with
    ``#`` is part of the cell, and the cell is refused for its line break rather than
    silently cut short. The reader asks for a line only when it needs one, so the flag is
    exact."""
    for line in lines:
        if at_record_start[0] and _COMMENT.match(line):
            yield "\n"
        else:
            at_record_start[0] = False
            yield line


class _Table:
    """Rows of one CSV file with their starting line numbers, after header validation."""

    def __init__(self, name: str, data: bytes, header: tuple[str, ...]) -> None:
        self.name = name
        self.header = header
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise RefDataError(name, line, None, f"not UTF-8: {exc.reason}") from None
        # Lines end at CR, LF or CRLF, as csv's do.
        lines: Iterable[str] = io.StringIO(text, newline="")
        at_record_start = [True]
        if "#" in text:
            lines = _skip_comments(lines, at_record_start)
        reader = csv.reader(lines, strict=True)
        self.rows: list[tuple[int, list[str]]] = []
        prev_end = 0
        # One scan of the whole text, so that clean files (all of them, in practice) pay no
        # per-cell check; a record spanning several lines has a line break inside quotes.
        suspect = _CONTROL_IN_LINE.search(text) is not None
        try:
            for rec in reader:
                at_record_start[0] = True
                start, prev_end = prev_end + 1, reader.line_num
                if not rec or (len(rec) == 1 and not rec[0].strip()):
                    continue
                fields = [f.strip() for f in rec]
                if suspect or prev_end > start:
                    self._refuse_control(start, fields)
                self.rows.append((start, fields))
        except csv.Error as exc:
            raise RefDataError(name, reader.line_num, None, f"CSV syntax: {exc}") from None
        if not self.rows:
            raise RefDataError(name, 1, None, f"empty file: expected header {','.join(header)}")
        line, got = self.rows.pop(0)
        for i, want in enumerate(header):
            if i >= len(got):
                raise RefDataError(name, line, i + 1, f"header: missing column {want!r}", want)
            if got[i] != want:
                raise RefDataError(
                    name, line, i + 1, f"header: expected {want!r}, got {_show(got[i])}", want
                )
        if len(got) > len(header):
            raise RefDataError(
                name,
                line,
                len(header) + 1,
                f"header: unexpected extra column {_show(got[len(header)])}",
            )

    def _refuse_control(self, line: int, fields: list[str]) -> None:
        """Refuse a record with a control character (tab aside) in a cell, naming its column.

        No column has a use for one, and in a name (NUL, a line break inside quotes, an escape
        sequence) it is invisible to the operator yet makes the name match nothing."""
        for i, f in enumerate(fields):
            m = _CONTROL.search(f)
            if m is not None:
                ch = m.group()
                what = "line break" if ch in "\r\n" else "control character"
                raise RefDataError(
                    self.name,
                    line,
                    i + 1,
                    f"{what} U+{ord(ch):04X} in the cell: {_show(f)}",
                    self.header[i] if i < len(self.header) else None,
                )

    def records(self):
        """Yield (line, fields), refusing a line with the wrong number of fields."""
        n = len(self.header)
        for line, fields in self.rows:
            if len(fields) != n:
                col = min(len(fields), n) + 1
                raise RefDataError(
                    self.name,
                    line,
                    col,
                    f"expected {n} fields, got {len(fields)}",
                    self.header[col - 1] if col <= n else None,
                )
            yield line, fields

    def field(self, line: int, fields: list[str], col: str, parse: Callable[[str], object]):
        i = self.header.index(col)
        try:
            return parse(fields[i])
        except _FieldError as exc:
            raise RefDataError(self.name, line, i + 1, str(exc), col) from None

    def error(self, line: int, col: str, message: str) -> RefDataError:
        return RefDataError(self.name, line, self.header.index(col) + 1, message, col)


def _parse_rates(data: bytes) -> RateBook:
    t = _Table(RATES_FILE, data, RATES_HEADER)
    rows: list[RateRow] = []
    seen: dict[tuple[str, str, str, datetime], int] = {}
    for line, f in t.records():
        g = t.field
        rate = g(line, f, "rate", _money)
        initial_rate = g(line, f, "initial_rate", _money) if f[6] else rate
        row = RateRow(
            deck=g(line, f, "deck", _required),
            prefix=g(line, f, "prefix", _prefix),
            country=f[2],
            network=f[3],
            category=g(line, f, "category", _category),
            rate=rate,
            initial_rate=initial_rate,
            connection_fee=g(line, f, "connection_fee", _money) if f[7] else Decimal(0),
            initial_increment=g(line, f, "initial_increment", _increment),
            recurring_increment=g(line, f, "recurring_increment", _increment),
            effective_from=g(line, f, "effective_from", _when),
            line=line,
        )
        key = (row.deck, row.prefix, row.category, row.effective_from)
        if key in seen:
            raise t.error(
                line,
                "deck",
                f"duplicate of line {seen[key]} (same deck, prefix, category, effective_from)",
            )
        seen[key] = line
        rows.append(row)
    return RateBook(rows)


def _parse_trunks(data: bytes, decks: frozenset[str]) -> dict[str, Trunk]:
    t = _Table(TRUNKS_FILE, data, TRUNKS_HEADER)
    trunks: dict[str, Trunk] = {}
    lines: dict[str, int] = {}
    for line, f in t.records():
        g = t.field
        trunk = Trunk(
            name=g(line, f, "trunk", _required),
            account=g(line, f, "account", _required),
            deck=g(line, f, "deck", _required),
            replace_cli=g(line, f, "replace_cli", _e164) if f[3] else None,
            origin_country=g(line, f, "origin_country", _country),
        )
        if trunk.name in trunks:
            raise t.error(
                line, "trunk", f"duplicate trunk {trunk.name!r} (line {lines[trunk.name]})"
            )
        if trunk.deck not in decks:
            raise t.error(line, "deck", f"unknown rate deck {trunk.deck!r} (not in {RATES_FILE})")
        trunks[trunk.name] = trunk
        lines[trunk.name] = line
    return trunks


def _parse_dids(data: bytes, decks: frozenset[str]) -> dict[str, Did]:
    t = _Table(DIDS_FILE, data, DIDS_HEADER)
    dids: dict[str, Did] = {}
    lines: dict[str, int] = {}
    for line, f in t.records():
        g = t.field
        did = Did(
            did=g(line, f, "did", _e164),
            account=g(line, f, "account", _required),
            toll_free_rate=g(line, f, "toll_free_rate", _money) if f[2] else None,
            metered_rate=g(line, f, "metered_rate", _money) if f[3] else None,
            termination_deck=f[4] or None,
            initial_increment=g(line, f, "initial_increment", _increment) if f[5] else 1,
            recurring_increment=g(line, f, "recurring_increment", _increment) if f[6] else 1,
        )
        if did.did in dids:
            raise t.error(line, "did", f"duplicate DID {did.did} (line {lines[did.did]})")
        if did.termination_deck is not None and did.termination_deck not in decks:
            raise t.error(
                line,
                "termination_deck",
                f"unknown rate deck {did.termination_deck!r} (not in {RATES_FILE})",
            )
        dids[did.did] = did
        lines[did.did] = line
    return dids


def _fingerprint(contents: Mapping[str, bytes]) -> str:
    h = hashlib.sha256()
    for name in FILES:
        data = contents[name]
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def parse_refdata(contents: Mapping[str, bytes]) -> RefData:
    """Validate the three files given as bytes by file name; raise `RefDataError` on the
    first problem (files are checked in the order rates, trunks, dids)."""
    rates = _parse_rates(contents[RATES_FILE])
    trunks = _parse_trunks(contents[TRUNKS_FILE], rates.decks)
    dids = _parse_dids(contents[DIDS_FILE], rates.decks)
    return RefData(
        rates=rates,
        trunks=MappingProxyType(trunks),
        dids=MappingProxyType(dids),
        fingerprint=_fingerprint(contents),
    )


def _read_all(config_dir: Path) -> dict[str, bytes]:
    contents: dict[str, bytes] = {}
    for name in FILES:
        try:
            contents[name] = (config_dir / name).read_bytes()
        except FileNotFoundError:
            raise RefDataError(name, 0, None, f"file not found in {config_dir}") from None
        except OSError as exc:
            raise RefDataError(name, 0, None, f"cannot read: {exc.strerror or exc}") from None
    return contents


def load_refdata(config_dir: str | os.PathLike[str]) -> RefData:
    """Read and validate rates.csv, trunks.csv and dids.csv from `config_dir`."""
    return parse_refdata(_read_all(Path(config_dir)))


# --------------------------------------------------------------------------- hot reload


@dataclass(frozen=True, slots=True)
class RefDataVersion:
    """A reference-data set and the moment it was loaded (aware UTC)."""

    loaded_at: datetime
    data: RefData


_Signature = tuple[tuple[int, int, int] | None, ...]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class RefDataHolder:
    """The reference data in force, with history so each call is rated by the version that
    was loaded when it started (SPEC: "a change applies to calls that start after it is
    loaded").

    * The constructor loads once and raises `RefDataError` if that fails: there is no last
      good version to fall back on.
    * `reload_if_changed()` is cheap when nothing changed (three ``stat`` calls). When a file's
      (mtime, size, inode) changed it re-reads; identical content (same fingerprint) is not a
      new version. Malformed content raises `RefDataError` once, keeps the last good version in
      force, and is not re-reported until the files change again (`last_error` keeps it).
      A file modified while it is being read is not recorded as seen, so the next poll
      retries.
    * `for_call(start)` returns the newest version loaded at or before `start`, or the oldest
      if all are newer (e.g. replaying old events).
    * History is bounded by `max_versions` (oldest dropped first); `prune(before)` drops
      versions no call starting at or after `before` can need.

    Thread-safe for one reloader and many readers: readers see immutable snapshots.
    """

    def __init__(
        self,
        config_dir: str | os.PathLike[str],
        *,
        clock: Callable[[], datetime] = _utcnow,
        max_versions: int = 64,
    ) -> None:
        self.config_dir = Path(config_dir)
        self._clock = clock
        self._max_versions = max(1, max_versions)
        self._lock = threading.Lock()
        self.last_error: RefDataError | None = None
        sig = self._signature()
        data = load_refdata(self.config_dir)
        self._seen_sig: _Signature = sig if sig == self._signature() else ()
        first = RefDataVersion(clock(), data)
        # One tuple swapped atomically: readers never see versions and times out of step.
        self._state: tuple[tuple[RefDataVersion, ...], tuple[datetime, ...]] = (
            (first,),
            (first.loaded_at,),
        )

    @property
    def current(self) -> RefData:
        """The newest good version."""
        return self._state[0][-1].data

    @property
    def versions(self) -> tuple[RefDataVersion, ...]:
        """All remembered versions, oldest first."""
        return self._state[0]

    def _set_versions(self, versions: tuple[RefDataVersion, ...]) -> None:
        self._state = (versions, tuple(v.loaded_at for v in versions))

    def _signature(self) -> _Signature:
        sig: list[tuple[int, int, int] | None] = []
        for name in FILES:
            try:
                st = os.stat(self.config_dir / name)
            except OSError:
                sig.append(None)
            else:
                sig.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(sig)

    def reload_if_changed(self, now: datetime | None = None) -> bool:
        """Load the files if they changed since the last look; True if a new version is now in
        force (loaded at `now`, default the clock). Raises `RefDataError` for a malformed new
        set (the previous version stays in force)."""
        with self._lock:
            sig = self._signature()
            if sig == self._seen_sig:
                return False
            stable = False
            try:
                contents = _read_all(self.config_dir)
                stable = sig == self._signature()
                if _fingerprint(contents) == self.current.fingerprint:
                    if stable:
                        self._seen_sig = sig
                    self.last_error = None
                    return False
                data = parse_refdata(contents)
            except RefDataError as exc:
                if stable or sig == self._signature():  # same bad files: report them once
                    self._seen_sig = sig
                self.last_error = exc
                log.error("reference data refused, keeping the last good version: %s", exc)
                raise
            if stable:
                self._seen_sig = sig
            self.last_error = None
            versions = self._state[0]
            loaded_at = now if now is not None else self._clock()
            if loaded_at < versions[-1].loaded_at:  # a clock step back must not reorder history
                loaded_at = versions[-1].loaded_at
            self._set_versions((*versions, RefDataVersion(loaded_at, data))[-self._max_versions :])
            log.info("reference data loaded: %s", data.fingerprint[:12])
            return True

    def for_call(self, start_time: datetime) -> RefData:
        """The version in force for a call starting at `start_time` (aware)."""
        versions, loaded_ats = self._state
        if start_time >= loaded_ats[-1]:
            return versions[-1].data
        i = bisect_right(loaded_ats, start_time)
        return versions[i - 1].data if i else versions[0].data

    def prune(self, before: datetime) -> None:
        """Forget versions that only calls starting before `before` could use."""
        with self._lock:
            versions, loaded_ats = self._state
            keep_from = max(0, bisect_right(loaded_ats, before) - 1)
            if keep_from:
                self._set_versions(versions[keep_from:])
