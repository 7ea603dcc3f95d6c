"""Store access for the HTTP service: one shared client, pages, cursors and CSV chunks.

Built on `pipeline.store.queries` (the filter, its WHERE clause and `select_cdrs`), so the API,
the page and ``cdrpipe export`` select exactly the same rows in the same order.

Two things the service needs beyond a plain select:

* **Shared client.** chDB serves one process and one query at a time on a client, and an
  HTTP client's session refuses concurrent queries too, so every query runs under one lock, in
  a worker thread (never on the event loop).
* **Pages that stay fast.** A page is the next `limit` rows after a keyset cursor
  ``(start_time, id)``. Instead of one query over the whole remaining range (which sorts every
  matching row of, say, 60 days to return 100), it asks growing time windows from the cursor
  on (1 h, 6 h, 1 day, ...) until the page is full: daily partitions and the sort key make a
  narrow window cheap, so the first page, a deep page and an export chunk all cost about the
  same, whatever the range.
"""

from __future__ import annotations

import base64
import binascii
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Concatenate, ParamSpec, TypeVar

from starlette.concurrency import run_in_threadpool

from pipeline.core.model import CDR
from pipeline.store.client import Client
from pipeline.store.export import csv_bytes
from pipeline.store.queries import CdrFilter, select_cdrs

__all__ = [
    "WINDOWS",
    "CsvChunk",
    "SharedStore",
    "csv_chunk",
    "csv_header",
    "decode_cursor",
    "encode_cursor",
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
_MAX_ID = 128

Key = tuple[datetime, str]


class SharedStore:
    """One store client shared by all requests; queries are serialized by a lock."""

    def __init__(self, client: Client, *, owned: bool) -> None:
        self.client = client
        self.owned = owned
        self._lock = threading.Lock()

    def run(self, fn: Callable[Concatenate[Client, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(client, ...)`` in this thread, holding the lock."""
        with self._lock:
            return fn(self.client, *args, **kwargs)

    async def call(
        self, fn: Callable[Concatenate[Client, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run ``fn(client, ...)`` in a worker thread, holding the lock."""
        return await run_in_threadpool(partial(self.run, fn, *args, **kwargs))

    def close(self) -> None:
        """Close the client if this store opened it."""
        if self.owned:
            with self._lock:
                self.client.close()


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
    """The opaque cursor that continues after the CDR (start_time, id): start in µs and id,
    base64url."""
    micros = (start_time - _EPOCH) // timedelta(microseconds=1)
    raw = f"{micros}.{call_id}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(text: str) -> Key:
    """The (start_time, id) of a cursor made by `encode_cursor`; ValueError if it is not one."""
    bad = ValueError("cursor is not one returned by this API (use next_cursor as given)")
    if not text or len(text) > 512 or not text.isascii():
        raise bad
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("utf-8")
        micros_text, _, call_id = raw.partition(".")
        if not micros_text.isdigit() or not 1 <= len(call_id) <= _MAX_ID:
            raise bad
        when = _EPOCH + timedelta(microseconds=int(micros_text))
    except (binascii.Error, UnicodeDecodeError, OverflowError, ValueError):
        raise bad from None
    if not _CURSOR_MIN <= when < _CURSOR_MAX:
        raise bad
    return when, call_id


def csv_header(flt: CdrFilter, *, excel: bool = False) -> bytes:
    """The start of the file as `cdrpipe export` writes it: the header line of the direction's
    seed layout (for Excel: after a byte order mark, ending in CRLF)."""
    return csv_bytes(flt.direction, (), excel=excel)[0]


CsvChunk = tuple[bytes, int, Key | None]


def csv_chunk(
    client: Client, flt: CdrFilter, rows: int, after: Key | None, *, excel: bool = False
) -> CsvChunk:
    """The next up to `rows` CSV lines after `after`: (bytes, row count, cursor of the last
    row). Rows become text as they stream in, so only the chunk's text is held, not CDRs.

    The lines come from `csv_bytes` itself, the writer of ``cdrpipe export``, so the two
    cannot drift apart.
    """
    last: list[CDR] = []

    def tracked() -> Iterator[CDR]:
        for cdr in iter_page(client, flt, rows, after):
            yield cdr
            last[:] = [cdr]

    data, count = csv_bytes(flt.direction, tracked(), excel=excel, header=False)
    key = (last[0].start_time, last[0].id) if last else None
    return data, count, key
