"""Re-rating: recompute stored CDRs with the reference data now in force.

Operators fix a rate deck (a wrong price, a missing prefix that left calls unrated, a trunk on
the wrong deck) after calls were already stored. ``cdrpipe rerate`` reads the stored CDRs of a
time window, rebuilds each call's start/connect/end events from the CDR (a CDR keeps every fact
the events carried: times, numbers, DID, trunk, disconnect code/reason/initiator) and runs the
same `build_cdr` the workers and the replay run, with the current files. So a re-rated CDR is
exactly what the pipeline would store today for the same events; `effective_from` still applies
to the call's start time, so a deck row scheduled for later does not reach back.

Every field `build_cdr` derives from reference data is recomputed: rate, charged and billing
duration (outbound), the three inbound amounts, country and network names, CDR type, the CLI
(it is the trunk's `replace_cli`, itself reference data) and the rated flag. A CDR whose
recomputation differs in any field is written again with ``revision + 1``; the tables are
ReplacingMergeTree(revision), so readers (FINAL) see the new version only and nothing is
duplicated. Unchanged CDRs are not written, so a second run changes nothing.

A caveat the CLI warns about: a call still remembered by the workers (completed less than
`CDRPIPE_MEMORY_S` ago, 24 h by default) can still get a late-event correction, which the
worker rates with the reference data that was in force when the call started and numbers from
its own revision count. Re-rate such a window again after the memory window has passed.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from decimal import Decimal

from clickhouse_connect.driver.client import Client

from pipeline import config
from pipeline.core.cdr import build_cdr, call_duration
from pipeline.core.model import CDR, Direction, Event
from pipeline.core.refdata import RefData, RefDataHolder
from pipeline.store.queries import DIRECTIONS, CdrFilter, FlagCounts, Kind, select_cdrs
from pipeline.store.writer import CdrWriter

__all__ = [
    "AccountRerate",
    "RerateSummary",
    "add_rerate_parser",
    "cmd_rerate",
    "events_of",
    "money",
    "rerate",
    "rerated",
]

PAGE_SIZE = 20_000
_ZERO = Decimal(0)
_MICRO = Decimal("0.000001")
_COMPARED = tuple(f.name for f in fields(CDR) if f.name != "revision")


def events_of(cdr: CDR) -> tuple[Event, Event | None, Event | None, datetime | None]:
    """The (start, connect, end, timed_out_at) that `build_cdr` turns into `cdr` again.

    A call closed as timed out had no end event: it gets ``timed_out_at`` = its end time.
    The stored times stop at microseconds; where the stored duration shows that the real
    difference was a little longer (sub-microsecond digits), the rebuilt end is that little
    later, so the duration comes out the same.
    """
    start = Event(
        kind="start",
        id=cdr.id,
        ts=cdr.start_time,
        gateway=cdr.gateway,
        direction=cdr.direction,
        account=cdr.account,
        source=cdr.source,
        destination=cdr.destination,
        did=cdr.did,
        trunk=cdr.trunk or None,
    )
    connect = None
    later = ""  # sub-microsecond digits for the end, see above
    if cdr.connect_time is not None:
        connect = Event(kind="connect", id=cdr.id, ts=cdr.connect_time)
        if call_duration(cdr.connect_time, cdr.end_time) < cdr.duration:
            later = "1"
    if cdr.timed_out:
        return replace(start, ts_sub_us=later), connect, None, cdr.end_time
    end = Event(
        kind="end",
        id=cdr.id,
        ts=cdr.end_time,
        ts_sub_us=later,
        disconnect_code=cdr.disconnect_code,
        disconnect_reason=cdr.disconnect_reason,
        disconnect_initiator=cdr.disconnect_initiator,
    )
    return start, connect, end, None


def rerated(cdr: CDR, refdata: RefData, *, bill_timed_out: bool = False) -> CDR | None:
    """`cdr` recomputed with `refdata` as revision + 1, or None if nothing would change.

    Re-rating changes money, never attribution: the account stays the stored one (it is part
    of the stored row's key, and the event's own account is no longer known), and so does an
    ``account_mismatch`` flag found when the call was first rated."""
    start, connect, end, timed_out_at = events_of(cdr)
    new = build_cdr(
        start,
        connect,
        end,
        refdata,
        timed_out_at=timed_out_at,
        revision=cdr.revision + 1,
        bill_timed_out=bill_timed_out,
    )
    new.account = cdr.account
    mismatch = {"account_mismatch"} & set(cdr.flags)
    new.flags = tuple(sorted((set(new.flags) - {"account_mismatch"}) | mismatch))
    if all(getattr(new, name) == getattr(cdr, name) for name in _COMPARED):
        return None
    return new


def money(cdr: CDR) -> Decimal:
    """What the call costs the account: Charged (outbound) or the three amounts (inbound)."""
    if cdr.direction == "outbound":
        return cdr.charged or _ZERO
    return (
        (cdr.toll_free_amount or _ZERO)
        + (cdr.termination_amount or _ZERO)
        + (cdr.metered_amount or _ZERO)
    )


@dataclass(slots=True)
class AccountRerate:
    """Before/after of one account's CDRs in one direction: `FlagCounts` (as `totals` and the
    KPIs count them) and money, exact (Decimal)."""

    direction: Direction
    account: str
    count: int = 0
    changed: int = 0
    charged_before: Decimal = _ZERO
    charged_after: Decimal = _ZERO
    # {FlagCounts.kind(cdr): CDRs}, before and after (`FlagCounts.tally`)
    kinds_before: Counter[Kind] = field(default_factory=Counter, repr=False)
    kinds_after: Counter[Kind] = field(default_factory=Counter, repr=False)

    @property
    def before(self) -> FlagCounts:
        return FlagCounts.tally(self.kinds_before)

    @property
    def after(self) -> FlagCounts:
        return FlagCounts.tally(self.kinds_after)

    @property
    def unrated_before(self) -> int:
        return self.before.unrated

    @property
    def unrated_after(self) -> int:
        return self.after.unrated

    def add(self, before: CDR, after: CDR | None) -> None:
        now = before if after is None else after
        self.count += 1
        self.changed += after is not None
        self.kinds_before[FlagCounts.kind(before)] += 1
        self.kinds_after[FlagCounts.kind(now)] += 1
        self.charged_before += money(before)
        self.charged_after += money(now)

    def __iadd__(self, other: AccountRerate) -> AccountRerate:
        """Another account's figures added (for the totals of a direction)."""
        self.count += other.count
        self.changed += other.changed
        self.charged_before += other.charged_before
        self.charged_after += other.charged_after
        self.kinds_before.update(other.kinds_before)
        self.kinds_after.update(other.kinds_after)
        return self


@dataclass(slots=True)
class RerateSummary:
    """What a re-rating run found and wrote, per (direction, account)."""

    time_from: datetime
    time_to: datetime
    dry_run: bool = False
    written: int = 0
    accounts: dict[tuple[str, str], AccountRerate] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return sum(a.count for a in self.accounts.values())

    @property
    def changed(self) -> int:
        return sum(a.changed for a in self.accounts.values())

    def account(self, direction: Direction, account: str) -> AccountRerate:
        key = (direction, account)
        entry = self.accounts.get(key)
        if entry is None:
            entry = self.accounts[key] = AccountRerate(direction, account)
        return entry

    def render(self) -> str:
        """A plain-text table, one line per direction and account, then the totals."""
        header = (
            "direction", "account", "CDRs", "changed", "unrated before", "unrated after",
            "charged before", "charged after", "difference",
        )  # fmt: skip
        rows: list[tuple[str, ...]] = []
        for (direction, account), a in sorted(self.accounts.items()):
            rows.append(_row(direction, account or "(none)", a))
        for direction in DIRECTIONS:
            part = [a for (d, _), a in self.accounts.items() if d == direction]
            if part:
                total = AccountRerate(direction, "")  # type: ignore[arg-type]
                for a in part:
                    total += a
                rows.append(_row(direction, "TOTAL", total))
        widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
        lines = [
            f"re-rating CDRs started {self.time_from:%Y-%m-%d %H:%M:%S}"
            f" .. {self.time_to:%Y-%m-%d %H:%M:%S} UTC"
        ]
        for r in (header, *rows):
            cells = [
                c.ljust(w) if i < 2 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            ]
            lines.append("  ".join(cells).rstrip())
        if not rows:
            lines.append("(no stored CDRs in this window)")
        verb = "would be written (dry run)" if self.dry_run else "written"
        lines.append(
            f"{self.count} CDRs read, {self.changed} changed, {self.written} new revisions {verb}"
        )
        return "\n".join(lines)


def _amount(value: Decimal) -> str:
    return format(value.quantize(_MICRO), "f")


def _row(direction: str, account: str, a: AccountRerate) -> tuple[str, ...]:
    return (
        direction,
        account,
        str(a.count),
        str(a.changed),
        str(a.unrated_before),
        str(a.unrated_after),
        _amount(a.charged_before),
        _amount(a.charged_after),
        _amount(a.charged_after - a.charged_before),
    )


def rerate(
    client: Client,
    refdata: RefData | RefDataHolder,
    time_from: datetime,
    time_to: datetime,
    account: str | None = None,
    *,
    dry_run: bool = False,
    page_size: int = PAGE_SIZE,
    bill_timed_out: bool = False,
) -> RerateSummary:
    """Re-rate the stored CDRs (both directions) that started in [time_from, time_to).

    Reads page by page (keyset on start time and id, so memory stays flat and the rows written
    meanwhile are never read twice), writes the changed CDRs of each page as revision + 1
    unless `dry_run`, and returns the per-account summary.
    """
    data = refdata.current if isinstance(refdata, RefDataHolder) else refdata
    summary = RerateSummary(time_from, time_to, dry_run=dry_run)
    writer = CdrWriter(client)
    for direction in DIRECTIONS:
        flt = CdrFilter(
            direction=direction,  # type: ignore[arg-type]  # from get_args(Direction)
            time_from=time_from,
            time_to=time_to,
            account=account,
        )
        after: tuple[datetime, str] | None = None
        while True:
            # list(): a chDB client serves one result stream at a time, and we write below
            page = list(select_cdrs(client, flt, limit=page_size, offset_after=after))
            if not page:
                break
            changed: list[CDR] = []
            for old in page:
                new = rerated(old, data, bill_timed_out=bill_timed_out)
                summary.account(old.direction, old.account).add(old, new)
                if new is not None:
                    changed.append(new)
            summary.written += len(changed) if dry_run else writer.write(changed)
            if len(page) < page_size:
                break
            after = (page[-1].start_time, page[-1].id)
    return summary


# --------------------------------------------------------------------------- command line


def add_rerate_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Register ``cdrpipe rerate`` on the CLI's subparsers (``parser.add_subparsers()``)."""
    p = subparsers.add_parser(
        "rerate",
        help="recompute stored CDRs with the reference data now in force",
        description="Recompute the charges of the CDRs stored for calls that started in "
        "[--from, --to) with the reference data in --config, write corrected versions "
        "(revision + 1, no duplicates) and print a before/after summary per account.",
    )
    p.add_argument(
        "--from",
        dest="time_from",
        metavar="TIME",
        required=True,
        help="call start from (inclusive), UTC",
    )
    p.add_argument(
        "--to", dest="time_to", metavar="TIME", required=True, help="call start to (exclusive), UTC"
    )
    p.add_argument("--account", help="only this account")
    p.add_argument(
        "--config",
        default=None,
        help="reference data directory (default: $CDRPIPE_CONFIG, else the bundled samples)",
    )
    p.add_argument(
        "--store",
        default=None,
        help="ClickHouse DSN (default: $CDRPIPE_STORE, else the embedded chDB store in ./data)",
    )
    p.add_argument("--dry-run", action="store_true", help="compute and report, write nothing")
    p.set_defaults(func=cmd_rerate)
    return p


def cmd_rerate(args: argparse.Namespace) -> int:
    """Run ``cdrpipe rerate``; exit 0 done, 1 store failure, 2 bad arguments or reference data."""
    from pipeline.core.refdata import RefDataError, load_refdata
    from pipeline.store.client import StoreError, connect

    try:
        window = CdrFilter.from_strings(
            direction="outbound", time_from=args.time_from, time_to=args.time_to
        )
    except ValueError as exc:
        print(f"cdrpipe rerate: {exc}", file=sys.stderr)
        return 2
    assert window.time_from is not None and window.time_to is not None  # both required
    try:
        refdata = load_refdata(args.config or config.config_dir())
    except RefDataError as exc:
        print(f"cdrpipe rerate: reference data refused: {exc}", file=sys.stderr)
        return 2
    _warn_if_recent(window.time_to)
    try:
        client = connect(args.store)
    except StoreError as exc:
        print(f"cdrpipe rerate: {exc}", file=sys.stderr)
        return 1
    try:
        summary = rerate(
            client,
            refdata,
            window.time_from,
            window.time_to,
            args.account or None,
            dry_run=args.dry_run,
            bill_timed_out=config.deadlines().bill_timed_out,
        )
    except StoreError as exc:
        print(f"cdrpipe rerate: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    print(summary.render())
    return 0


def _warn_if_recent(time_to: datetime, now: datetime | None = None) -> bool:
    """Warn when workers may still correct calls of the window (see the module doc)."""
    deadlines = config.deadlines()
    horizon = deadlines.max_call_duration + deadlines.memory
    if time_to <= (now or datetime.now(UTC)) - horizon:
        return False
    print(
        "cdrpipe rerate: warning: calls of this window may still be corrected by late events"
        " in the workers (maximum call duration + memory window ="
        f" {horizon.total_seconds() / 3600:g} h), rated with the reference data in force at"
        " their start; run this re-rating again once they are older than that.",
        file=sys.stderr,
    )
    return True
