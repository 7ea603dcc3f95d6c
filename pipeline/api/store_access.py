"""Store access for the HTTP service: one shared client, pages, cursors and CSV chunks.

Built on `pipeline.store.queries` (the filter, its WHERE clause and `select_cdrs`), so the API,
the page and ``cdrpipe export`` select exactly the same rows in the same order.

Two things the service needs beyond a plain select:

* **Shared client.** chDB serves one process and one query at a time on a client, and an
  HTTP client's session refuses concurrent queries too, so every query runs under one lock, in
  a worker thread (never on the event loop). The lock is first come, first served, and short
  queries (a page, KPIs) go before waiting export chunks: an export takes the lock once per
  chunk, so other tenants' requests wait for at most the chunk being read, not for exports.
* **Pages that stay fast.** A page is the next `limit` rows after a keyset cursor
  ``(start_time, id)``. Instead of one query over the whole remaining range (which sorts every
  matching row of, say, 60 days to return 100), it asks growing time windows from the cursor
  on (1 h, 6 h, 1 day, ...) until the page is full: daily partitions and the sort key make a
  narrow window cheap, so the first page, a deep page and an export chunk all cost about the
  same, whatever the range.
* **Exports that share.** An export reads one window query at a time (`export_piece`), each
  under its own turn at the lock, and turns the rows into CSV after giving the lock back.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Concatenate, ParamSpec, TypeVar

from starlette.concurrency import run_in_threadpool

from pipeline.core.model import CDR
from pipeline.resources import data_path
from pipeline.store.client import Client
from pipeline.store.export import csv_bytes
from pipeline.store.queries import CdrFilter, select_cdrs

__all__ = [
    "CURSOR_MAX_LENGTH",
    "WINDOWS",
    "ExportPosition",
    "SharedStore",
    "StoreLock",
    "csv_header",
    "csv_lines",
    "decode_cursor",
    "encode_cursor",
    "export_piece",
    "export_start",
    "iter_page",
    "page_cdrs",
]

P = ParamSpec("P")
T = TypeVar("T")

#: Widths of the successive time windows a page is read from; the last one runs to the end.
WINDOWS: tuple[timedelta, ...] = (
    timedelta(hours=1),
    timedelta(hours=6),
    timedelta(days=1),
    timedelta(days=4),
    timedelta(days=16),
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CURSOR_MIN = datetime(2000, 1, 1, tzinfo=UTC)
_CURSOR_MAX = datetime(2100, 1, 1, tzinfo=UTC)
_MIN_EXPORT_WINDOW = timedelta(seconds=1)
_MICROS = struct.Struct(">q")  # the start in µs since the epoch, before the id's UTF-8
_SCHEMA_DEFS = json.loads(data_path("schemas", "common.schema.json").read_bytes())["definitions"]
#: The longest id the event schema allows, in characters (any Unicode, astral ones included).
_MAX_ID: int = _SCHEMA_DEFS["id"]["maxLength"]
#: The longest cursor `encode_cursor` makes: unpadded base64 of the start and 4 UTF-8 bytes
#: for each character of the longest id. The API's `cursor` parameter accepts this many.
CURSOR_MAX_LENGTH = -(-(_MICROS.size + 4 * _MAX_ID) * 4 // 3)

Key = tuple[datetime, str]


class StoreLock:
    """A lock granted in arrival order, short queries before bulk ones (export chunks).

    A plain `threading.Lock` lets whichever waiter the OS wakes first win, so a burst of
    export chunks could keep a page request waiting for many chunks in a row.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._busy = False
        self._short: deque[object] = deque()
        self._bulk: deque[object] = deque()

    def _head(self) -> object | None:
        if self._short:
            return self._short[0]
        return self._bulk[0] if self._bulk else None

    def acquire(self, *, bulk: bool = False) -> None:
        ticket = object()
        queue = self._bulk if bulk else self._short
        with self._cond:
            queue.append(ticket)
            try:
                while self._busy or self._head() is not ticket:
                    self._cond.wait()
            finally:
                queue.remove(ticket)
            self._busy = True

    def release(self) -> None:
        with self._cond:
            self._busy = False
            self._cond.notify_all()


class SharedStore:
    """One store client shared by all requests; queries are serialized by a `StoreLock`."""

    def __init__(self, client: Client, *, owned: bool) -> None:
        self.client = client
        self.owned = owned
        self._lock = StoreLock()
        # Bulk work (export chunks and their CSV) runs one piece at a time across all
        # exports: Python work of many exports at once would take the GIL from short requests.
        self._bulk_lane = threading.Lock()

    def _run(self, bulk: bool, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        if bulk:
            with self._bulk_lane:
                return self._locked(True, fn, *args, **kwargs)
        return self._locked(False, fn, *args, **kwargs)

    def _locked(self, bulk: bool, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        self._lock.acquire(bulk=bulk)
        try:
            return fn(self.client, *args, **kwargs)
        finally:
            self._lock.release()

    def _bulk_cpu(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        with self._bulk_lane:
            return fn(*args, **kwargs)

    async def bulk_work(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(...)`` (no store) in a worker thread in the bulk lane: for the CPU work
        of a long job, such as turning an export chunk into CSV."""
        return await run_in_threadpool(partial(self._bulk_cpu, fn, *args, **kwargs))

    def run(self, fn: Callable[Concatenate[Client, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(client, ...)`` in this thread, holding the lock."""
        return self._run(False, fn, *args, **kwargs)

    async def call(
        self, fn: Callable[Concatenate[Client, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run ``fn(client, ...)`` in a worker thread, holding the lock."""
        return await run_in_threadpool(partial(self._run, False, fn, *args, **kwargs))

    async def call_bulk(
        self, fn: Callable[Concatenate[Client, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """`call` for one piece of a long job (an export chunk): it waits behind short
        queries, so that they are not held up by the job."""
        return await run_in_threadpool(partial(self._run, True, fn, *args, **kwargs))

    def close(self) -> None:
        """Close the client if this store opened it."""
        if self.owned:
            self._lock.acquire()
            try:
                self.client.close()
            finally:
                self._lock.release()


def iter_page(
    client: Client, flt: CdrFilter, limit: int, after: Key | None = None
) -> Iterator[CDR]:
    """Up to `limit` CDRs matching `flt` after the keyset cursor `after`, in (start_time, id)
    order, read window by window (see the module doc). Without both time bounds: one query."""
    if limit < 1:
        return
    if flt.time_from is None or flt.time_to is None:
        yield from select_cdrs(client, flt, limit=limit, offset_after=after)
        return
    start = flt.time_from if after is None else max(flt.time_from, after[0])
    left = limit
    for width in (*WINDOWS, None):
        if start >= flt.time_to:
            return
        end = flt.time_to if width is None else min(flt.time_to, start + width)
        window = replace(flt, time_from=start, time_to=end)
        for cdr in select_cdrs(client, window, limit=left, offset_after=after):
            left -= 1
            yield cdr
        if left == 0:
            return
        start = end


def page_cdrs(client: Client, flt: CdrFilter, limit: int, after: Key | None = None) -> list[CDR]:
    """`iter_page` as a list (one API page)."""
    return list(iter_page(client, flt, limit, after))


def encode_cursor(start_time: datetime, call_id: str) -> str:
    """The opaque cursor that continues after the CDR (start_time, id): the start in µs as 8
    bytes and the id's UTF-8, unpadded base64url. Binary rather than text so that every id the
    schema allows fits in `CURSOR_MAX_LENGTH` characters."""
    micros = (start_time - _EPOCH) // timedelta(microseconds=1)
    raw = _MICROS.pack(micros) + call_id.encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(text: str) -> Key:
    """The (start_time, id) of a cursor made by `encode_cursor`; ValueError if it is not one.

    Strict: a cursor is accepted only if `encode_cursor` gives back exactly the same text, so
    a changed or truncated one is refused (a 400), never guessed at."""
    bad = ValueError("cursor is not one returned by this API (use next_cursor as given)")
    if not text or len(text) > CURSOR_MAX_LENGTH or not text.isascii():
        raise bad
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
        (micros,) = _MICROS.unpack_from(raw)
        call_id = raw[_MICROS.size :].decode("utf-8")
        when = _EPOCH + timedelta(microseconds=micros)
    except (binascii.Error, struct.error, UnicodeDecodeError, OverflowError, ValueError):
        raise bad from None
    if not (1 <= len(call_id) <= _MAX_ID and _CURSOR_MIN <= when < _CURSOR_MAX):
        raise bad
    if encode_cursor(when, call_id) != text:  # another spelling of the same bytes
        raise bad
    return when, call_id


def csv_header(flt: CdrFilter, *, excel: bool = False) -> bytes:
    """The start of the file as `cdrpipe export` writes it: the header line of the direction's
    seed layout (for Excel: after a byte order mark, ending in CRLF)."""
    return csv_bytes(flt.direction, (), excel=excel)[0]


@dataclass(frozen=True, slots=True)
class ExportPosition:
    """Where an export continues: the time window ``[start, start + width)`` it reads and the
    keyset cursor of the last row sent."""

    start: datetime
    width: timedelta
    after: Key | None = None


def export_start(flt: CdrFilter) -> ExportPosition:
    """The position before the first row of an export of `flt` (both time bounds set)."""
    if flt.time_from is None or flt.time_to is None:
        raise ValueError("an export needs both time bounds")
    return ExportPosition(flt.time_from, WINDOWS[0])


def export_piece(
    client: Client, flt: CdrFilter, rows: int, pos: ExportPosition
) -> tuple[list[CDR], ExportPosition | None]:
    """One store query of an export: up to `rows` CDRs of the window at `pos`, and where to go
    on (None: the export is complete). Bounded in rows and in time span, so that one query
    never holds the shared store long: after a full window the next one starts at the last
    row and spans what held `rows` rows; a window that gave less than half its limit is
    doubled for the next query, so that sparse data costs few queries.
    """
    if flt.time_to is None:
        raise ValueError("an export needs both time bounds")
    end = min(flt.time_to, pos.start + pos.width)
    window = replace(flt, time_from=pos.start, time_to=end)
    got = list(select_cdrs(client, window, limit=rows, offset_after=pos.after))
    if len(got) == rows:  # the window may hold more: go on from the last row
        last = got[-1].start_time
        width = max(_MIN_EXPORT_WINDOW, last - pos.start)
        return got, ExportPosition(last, width, (last, got[-1].id))
    after = (got[-1].start_time, got[-1].id) if got else pos.after
    if end >= flt.time_to:
        return got, None
    width = pos.width * 2 if len(got) < rows // 2 else pos.width
    return got, ExportPosition(end, width, after)


def csv_lines(flt: CdrFilter, cdrs: list[CDR], *, excel: bool = False) -> bytes:
    """`cdrs` as CSV lines of the direction's layout, without the header."""
    return csv_bytes(flt.direction, cdrs, excel=excel, header=False)[0]
