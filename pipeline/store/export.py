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
* text cells that a spreadsheet would run as a formula (first character ``= + - @`` or a tab or
  carriage return) get a leading ``'``. Only free text is touched (numbers, reasons, names);
  times and amounts are produced here and never start that way.

Output is UTF-8 with lines ending in ``\\n``; cells are quoted only when needed (the csv module's
minimal quoting). The Excel form (``excel=True``, ``cdrpipe export --excel``) starts with a UTF-8
byte order mark and ends lines in ``\\r\\n``: without the mark Excel reads the file in the
machine's ANSI code page ("Curaçao" comes out as "CuraÃ§ao"), and CRLF is what Windows tools
expect. The cells are the same in both forms.
"""

from __future__ import annotations

import csv
import io
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
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _time(value: datetime | None) -> str:
    if value is None:
        return ""
    if value.tzinfo is not UTC and value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.isoformat(" ", "seconds")[:19]  # about twice as fast as strftime


def _text(value: str | None) -> str:
    if not value:
        return ""
    return "'" + value if value.startswith(_FORMULA_START) else value


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
    streamed in pieces. Open a file target with ``encoding="utf-8", newline=""`` so the csv
    module controls line ends.
    """
    if direction not in HEADERS:
        raise ValueError(f"direction must be 'inbound' or 'outbound'; got {direction!r}")
    writer = csv.writer(out, lineterminator="\r\n" if excel else "\n")
    if header:
        if excel:
            out.write(BOM)
        writer.writerow(HEADERS[direction])
    to_row = _ROW[direction]
    count = 0
    for cdr in cdrs:
        if cdr.direction != direction:
            raise ValueError(f"CDR {cdr.id!r} is {cdr.direction}, not {direction}")
        writer.writerow(to_row(cdr))
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
