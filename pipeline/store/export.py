"""CSV exports in the seed's two layouts (``seed/call-logs.txt``), one per direction.

Headers are the seed's Header cells verbatim and in order, asterisks included ("CLI*",
"CDR Type*"). Cell formats:

* times ``YYYY-MM-DD HH:MM:SS`` in UTC, sub-seconds cut off; Connect empty when the call never
  connected;
* Disconnect Initiator ``Origination`` / ``Destination``; it and the disconnect code are empty
  when unknown (a call closed as timed out);
* money (Charged and the three inbound amounts) with exactly 6 decimals, the precision it is
  computed and stored at: ``0.024600``; the Rate as in the deck, trailing zeros dropped:
  ``0.0123``. Never an exponent. Unrated calls (and services not used) leave the cell empty;
* free text (numbers, reasons, names: what callers, carriers and the reference data supply)
  never starts a spreadsheet formula, see `neutralize_formulas`; times and amounts are produced
  here and never start that way.

Output is UTF-8 with lines ending in ``\\n``. A text cell is quoted when it holds a ``,``, ``"``
or line break (as the csv module's minimal quoting does) and also when it holds a ``;`` or a
tab, the separators of the other common spreadsheet locales; other cells are never quoted, so
ordinary rows are exactly the seed's. The Excel form (``excel=True``, ``cdrpipe export
--excel``) starts with a UTF-8 byte order mark and ends lines in ``\\r\\n``: without the mark
Excel reads the file in the machine's ANSI code page ("Curaçao" comes out as "CuraÃ§ao"), and
CRLF is what Windows tools expect. The cells are the same in both forms.
"""

from __future__ import annotations

import io
import re
import unicodedata
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import TextIO

from clickhouse_connect.driver.client import Client

from pipeline.core.model import CDR, Direction
from pipeline.store.queries import CdrFilter, select_cdrs

__all__ = [
    "BOM",
    "HEADERS",
    "INBOUND_HEADER",
    "OUTBOUND_HEADER",
    "csv_bytes",
    "csv_row",
    "neutralize_formulas",
    "write_cdrs",
    "write_csv",
]

INBOUND_HEADER: list[str] = [
    "Date/Time Start (UTC)",
    "Date/Time Connect (UTC)",
    "Date/Time End (UTC)",
    "Source",
    "DID",
    "Destination",
    "Duration (secs)",
    "Disconnect Initiator",
    "Disconnect Code",
    "Disconnect Response",
    "Toll-free Amount (USD)",
    "Termination Amount (USD)",
    "Metered Channels Amount (USD)",
]

OUTBOUND_HEADER: list[str] = [
    "Date/Time Start (UTC)",
    "Date/Time Connect (UTC)",
    "Date/Time End (UTC)",
    "Source",
    "CLI*",
    "Destination",
    "Duration (secs)",
    "Billing Duration",
    "Disconnect Code",
    "Disconnect Reason",
    "Rate (USD per minute)",
    "Charged (USD)",
    "CDR Type*",
    "Country Name",
    "Network Name",
    "Trunk Name",
]

HEADERS: dict[str, list[str]] = {"inbound": INBOUND_HEADER, "outbound": OUTBOUND_HEADER}

BOM = "\ufeff"  # U+FEFF, the bytes EF BB BF in UTF-8

_MICRO = Decimal("0.000001")
_FORMULA = frozenset("=+-@")
# Where a spreadsheet splitting on ";" or tab, or a reader stopping at a line break inside a
# quoted cell, starts a new cell in the middle of ours.
_CELL_BREAK = re.compile(r"[;\t\r\n]")
# ASCII text without any of these can never be taken for a formula (the fast path).
_ASCII_RISK = re.compile(r"[=+\-@\t\r]")
# A cell needs quotes if it holds one of these (our "," and the other locales' separators).
_QUOTE = re.compile(r'[,;"\t\r\n]')
_LINE_QUOTE = re.compile(r'[;"\t\r\n]')  # _QUOTE without ",": tested on a whole line
# NFKC may compose a character with the combining marks after it; this many are plenty.
_NFKC_HEAD = 16


def _time(value: datetime | None) -> str:
    if value is None:
        return ""
    if value.tzinfo is not UTC and value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.isoformat(" ", "seconds")[:19]  # about twice as fast as strftime


def _blank(ch: str) -> bool:
    """Whether a spreadsheet may skip `ch` before deciding that a cell is a formula: white
    space, control and format characters, and the quote a ";" reader may take as the start of a
    quoted cell."""
    return ch.isspace() or ch == '"' or unicodedata.category(ch)[0] in "CZ"


def _formula_at(text: str, start: int) -> bool:
    """Whether a cell starting at `start` of `text` could be run as a formula."""
    if text.startswith(("\t", "\r"), start):  # OWASP's list: a leading tab or CR on its own
        return True
    end = len(text)
    while start < end and _blank(text[start]):
        start += 1
    if start == end:
        return False
    if text[start] in _FORMULA:
        return True
    if text[start].isascii():
        return False
    # full-width and small forms (U+FF1D, U+FE66, ...) are signs to some spreadsheets
    head = unicodedata.normalize("NFKC", text[start : start + _NFKC_HEAD])
    for ch in head:
        if not _blank(ch):
            return ch in _FORMULA
    return False


def neutralize_formulas(text: str) -> str:
    """`text` with a ``'`` put before every place a spreadsheet could start a cell that runs as
    a formula; everything else left as it is.

    Such places are the start of the text and every position after a ``;``, tab or line break:
    a spreadsheet splitting on ``;`` (German and French defaults) or on tabs, or reading line by
    line, starts a new cell there whatever the quotes of our ``,`` layout say, so quoting alone
    cannot protect ``Busy;=2+3``. A cell is taken for a formula if, after leading white space,
    control and format characters and quotes, it starts with ``= + - @``, either as written or
    NFKC-normalized (full-width ``＝`` too), or if it starts with a tab or carriage return.
    A sign alone or a negative number is marked as well: free text never holds a number to
    calculate with, and telling ``-1`` from ``-1+A1`` is the parsing a guard must not attempt.
    The ``'`` makes a spreadsheet take what follows as text.
    """
    if not text or (text.isascii() and _ASCII_RISK.search(text) is None):
        return text
    marks = [m.end() for m in _CELL_BREAK.finditer(text) if _formula_at(text, m.end())]
    if _formula_at(text, 0):
        marks.insert(0, 0)
    if not marks:
        return text
    parts: list[str] = []
    prev = 0
    for mark in marks:
        parts += (text[prev:mark], "'")
        prev = mark
    parts.append(text[prev:])
    return "".join(parts)


def _text(value: str | None) -> str:
    return neutralize_formulas(value) if value else ""


def _int(value: int | None) -> str:
    return "" if value is None else str(value)


def _money(value: Decimal | None) -> str:
    return "" if value is None else format(value.quantize(_MICRO), "f")


def _rate(value: Decimal | None) -> str:
    # normalize() may give an exponent form (1E+1); the 'f' format writes it out plainly
    return "" if value is None else format(value.normalize(), "f")


def _initiator(value: str | None) -> str:
    return value.capitalize() if value else ""


def _outbound(c: CDR) -> list[str]:
    return [
        _time(c.start_time),
        _time(c.connect_time),
        _time(c.end_time),
        _text(c.source),
        _text(c.cli),
        _text(c.destination),
        str(c.duration),
        _int(c.billing_duration),
        _int(c.disconnect_code),
        _text(c.disconnect_reason),
        _rate(c.rate),
        _money(c.charged),
        c.cdr_type,
        _text(c.country_name),
        _text(c.network_name),
        _text(c.trunk),
    ]


def _inbound(c: CDR) -> list[str]:
    return [
        _time(c.start_time),
        _time(c.connect_time),
        _time(c.end_time),
        _text(c.source),
        _text(c.did),
        _text(c.destination),
        str(c.duration),
        _initiator(c.disconnect_initiator),
        _int(c.disconnect_code),
        _text(c.disconnect_reason),
        _money(c.toll_free_amount),
        _money(c.termination_amount),
        _money(c.metered_amount),
    ]


_ROW: dict[str, Callable[[CDR], list[str]]] = {"outbound": _outbound, "inbound": _inbound}


def _quoted(cell: str) -> str:
    return '"' + cell.replace('"', '""') + '"' if _QUOTE.search(cell) else cell


def _line(cells: list[str], end: str) -> str:
    """One CSV line: cells joined by ``,``, those holding a separator, quote or line break
    quoted (quotes doubled). Most lines need no quotes: one test on the joined line."""
    line = ",".join(cells)
    if _LINE_QUOTE.search(line) is None and line.count(",") == len(cells) - 1:
        return line + end
    return ",".join(map(_quoted, cells)) + end


def csv_row(cdr: CDR) -> list[str]:
    """The cells of one CDR in its direction's layout (same order as the header)."""
    return _ROW[cdr.direction](cdr)


def write_cdrs(
    direction: Direction,
    cdrs: Iterable[CDR],
    out: TextIO,
    *,
    excel: bool = False,
    header: bool = True,
) -> int:
    """Write the header of `direction` and one line per CDR; returns the number of CDRs.

    `excel`: the byte order mark before the header and ``\\r\\n`` line ends (module doc).
    `header=False` writes only the CDRs' lines (no mark either): the later chunks of an export
    streamed in pieces. Open a file target with ``encoding="utf-8", newline=""`` so that the
    line ends are written as they are.
    """
    if direction not in HEADERS:
        raise ValueError(f"direction must be 'inbound' or 'outbound'; got {direction!r}")
    end = "\r\n" if excel else "\n"
    if header:
        if excel:
            out.write(BOM)
        out.write(_line(HEADERS[direction], end))
    to_row = _ROW[direction]
    count = 0
    for cdr in cdrs:
        if cdr.direction != direction:
            raise ValueError(f"CDR {cdr.id!r} is {cdr.direction}, not {direction}")
        out.write(_line(to_row(cdr), end))
        count += 1
    return count


def csv_bytes(
    direction: Direction, cdrs: Iterable[CDR], *, excel: bool = False, header: bool = True
) -> tuple[bytes, int]:
    """`write_cdrs` into UTF-8 bytes: (the bytes, the number of CDRs). For a response streamed
    in chunks: the first with ``header=True``, every later one with ``header=False``."""
    buf = io.StringIO(newline="")
    count = write_cdrs(direction, cdrs, buf, excel=excel, header=header)
    return buf.getvalue().encode("utf-8"), count


def write_csv(client: Client, flt: CdrFilter, out: TextIO, *, excel: bool = False) -> int:
    """Export the CDRs matching `flt` as CSV to `out`, streamed; returns rows written."""
    return write_cdrs(flt.direction, select_cdrs(client, flt), out, excel=excel)
