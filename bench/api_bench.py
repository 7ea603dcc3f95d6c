"""HTTP API latency and CSV export throughput over a large store (default 10,000,000 CDRs).

    python bench/api_bench.py                      # 10M CDRs in a temporary store
    python bench/api_bench.py --rows 1000000 --keep /tmp/api-bench-store

The store is filled in SQL (``INSERT ... SELECT ... FROM numbers(N)``), not through the
pipeline: it is about reading, and building 10M CDRs through replay would take an hour. Rows
are spread evenly over the last 59 days (inside the two-month retention), 70% outbound and
30% inbound, over 200 accounts, 50 trunks, five statuses and three CDR types.

The service runs as `cdrpipe serve` would (uvicorn, in a thread of this process, since with
chDB the serving process must own the store); requests go over loopback HTTP with httpx.
Latency is the median of `--repeat` runs after one warm-up (min and max shown too). The
export is read in streaming mode and discarded; its peak memory is the process's peak RSS
during the export (VmHWM, reset just before through /proc/self/clear_refs), above the RSS
before it. Prints Markdown tables for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from pipeline.api.app import create_app
from pipeline.api.auth import create_key
from pipeline.api.store_access import encode_cursor
from pipeline.store.client import Client, connect

DAYS = 59
ACCOUNTS = 200
_COMMON = """
    concat('gw', toString(h % 4), '-b', toString(number)) AS id,
    concat('acc-', toString(1000 + h3 % {accounts})) AS account,
    concat('gw', toString(h % 4)) AS gateway,
    base + toIntervalMicrosecond(number * {step}) AS st,
    if(answered, st + toIntervalSecond(3), NULL) AS ct,
    st + toIntervalSecond(3 + dur) AS et,
    concat(['1', '44', '49', '33'][1 + h2 % 4], toString(2000000000 + h % 1000000000)) AS src
"""
_OUTCOMES = """
    (SELECT number, cityHash64(number) AS h, cityHash64(number, 7) AS h2,
            cityHash64(number, 3) AS h3,
            toDateTime64(now() - {span_s}, 6, 'UTC') AS base,
            multiIf(h % 100 < 55, 'answered', h % 100 < 65, 'busy', h % 100 < 75, 'no-answer',
                    h % 100 < 85, 'cancelled', 'failed') AS st_name,
            st_name = 'answered' AS answered,
            if(answered, toUInt32(5 + h2 % 600), toUInt32(0)) AS dur,
            multiIf(answered, 200, st_name = 'busy', 486, st_name = 'no-answer', 480,
                    st_name = 'cancelled', 487, h2 % 3 = 0, 603, 503) AS code,
            multiIf(answered, 'Bye', st_name = 'busy', 'Busy Here',
                    st_name = 'no-answer', 'Temporarily Unavailable',
                    st_name = 'cancelled', 'Request Terminated',
                    code = 603, 'Decline', 'Service Unavailable') AS reason,
            h % 40 != 0 AS is_rated, h % 500 = 0 AS is_timed_out
     FROM numbers({rows}))
"""
OUTBOUND_SQL = """
INSERT INTO cdr_outbound (id, account, gateway, start_time, connect_time, end_time, source, cli,
    destination, duration, billing_duration, disconnect_code, disconnect_reason,
    disconnect_initiator, status, rate, charged, cdr_type, country_name, network_name, trunk,
    rated, timed_out, revision)
SELECT id, account, gateway, st, ct, et, src, src,
    concat(['44', '1', '49', '33', '34'][1 + h2 % 5], toString(100000000 + h2 % 900000000)),
    dur, if(is_rated, toUInt32(if(dur = 0, 0, 60 * intDiv(dur + 59, 60))), NULL),
    if(is_timed_out, NULL, toUInt16(code)), if(is_timed_out, 'Timed out', reason),
    if(is_timed_out, NULL, if(h % 2 = 0, 'origination', 'destination')), st_name,
    if(is_rated, toDecimal64('0.0123', 9), NULL),
    if(is_rated, toDecimal64(intDiv(dur + 59, 60) * 12300, 6) / 1000000, NULL),
    ['International', 'Local', 'Origin based'][1 + h2 % 3],
    ['United Kingdom', 'United States', 'Germany', 'France', 'Spain'][1 + h2 % 5],
    ['Fixed', 'Mobile'][1 + h % 2], concat('Trunk ', toString(h3 % 50)),
    is_rated, is_timed_out, 1
FROM (SELECT *, {common} FROM {outcomes})
"""
INBOUND_SQL = """
INSERT INTO cdr_inbound (id, account, gateway, start_time, connect_time, end_time, source, did,
    destination, duration, disconnect_code, disconnect_reason, disconnect_initiator, status,
    toll_free_amount, termination_amount, metered_amount, cdr_type, country_name,
    network_name, trunk, rated, timed_out, revision)
SELECT concat('in-', id), account, gateway, st, ct, et, src,
    concat('1800555', toString(1000 + h2 % 9000)), 'sip:pbx@example.com', dur,
    toUInt16(code), reason, if(h % 2 = 0, 'origination', 'destination'), st_name,
    toDecimal64(dur * 25000 / 60, 6) / 1000000, NULL,
    toDecimal64(dur * 4000 / 60, 6) / 1000000,
    ['International', 'Local', 'Origin based'][1 + h2 % 3], 'United States', 'Toll-free', '',
    true, false, 1
FROM (SELECT *, {common} FROM {outcomes})
"""


def build_store(client: Client, rows: int) -> None:
    """`rows` CDRs, 70% outbound, evenly over the last `DAYS` days, inserted in SQL."""
    span_s = DAYS * 86_400
    for sql, n in ((OUTBOUND_SQL, rows * 7 // 10), (INBOUND_SQL, rows - rows * 7 // 10)):
        if n == 0:
            continue
        step = span_s * 1_000_000 // n
        common = _COMMON.format(accounts=ACCOUNTS, step=step)
        outcomes = _OUTCOMES.format(span_s=span_s, rows=n)
        client.command(
            sql.format(common=common, outcomes=outcomes), settings={"max_insert_threads": 2}
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, float, float, Any]:
    """(median, min, max) seconds over `repeat` runs after one warm-up, and the last result."""
    result = fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), max(times), result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="build (or reuse) the store in this directory and keep it",
    )
    parser.add_argument(
        "--skip-full-export",
        action="store_true",
        help="do not export every outbound row (the longest measurement)",
    )
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="cdrpipe-api-bench-"))
    store_dir = args.keep or tmp / "store"
    client = connect(f"chdb://{store_dir}")
    try:
        have = client.query(
            "SELECT (SELECT count() FROM cdr_outbound) + (SELECT count() FROM cdr_inbound)"
        ).result_rows[0][0]
        if have == 0:
            t0 = time.perf_counter()
            build_store(client, args.rows)
            print(f"built {args.rows:,} CDRs in {time.perf_counter() - t0:.1f} s -> {store_dir}")
        else:
            print(f"reusing {have:,} CDRs in {store_dir}")
        run(client, tmp, args)
    finally:
        client.close()
        shutil.rmtree(tmp, ignore_errors=True)


def run(client: Client, tmp: Path, args: argparse.Namespace) -> None:
    keys = tmp / "keys.json"
    admin, _ = create_key(keys, admin=True)
    account_key, _ = create_key(keys, account="acc-1042")
    app = create_app(client, keys)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    now = datetime.now(UTC).replace(microsecond=0)
    full = {"from": (now - timedelta(days=62)).isoformat(), "to": now.isoformat()}
    day = {
        "from": (now - timedelta(days=30)).isoformat(),
        "to": (now - timedelta(days=29)).isoformat(),
    }
    week = {
        "from": (now - timedelta(days=37)).isoformat(),
        "to": (now - timedelta(days=30)).isoformat(),
    }
    counts = {
        d: client.query(f"SELECT count() FROM cdr_{d}").result_rows[0][0]
        for d in ("outbound", "inbound")
    }
    print(
        f"\nstore: {counts['outbound']:,} outbound + {counts['inbound']:,} inbound CDRs,"
        f" {DAYS} days, {ACCOUNTS} accounts; {platform.machine()}, {os.cpu_count()} cores,"
        f" Python {platform.python_version()}"
    )

    http = httpx.Client(base_url=base, timeout=600)
    rows_out: list[str] = []

    def measure(label: str, path: str, key: str, params: dict[str, Any]) -> Any:
        def call() -> httpx.Response:
            r = http.get(path, params=params, headers={"X-API-Key": key})
            r.raise_for_status()
            return r

        med, lo, hi, r = timed(call, args.repeat)
        body = r.json()
        size = len(body["items"]) if "items" in body else body["totals"]["attempts"]
        rows_out.append(
            f"| {label} | {med * 1000:,.0f} | {lo * 1000:,.0f} | {hi * 1000:,.0f} | {size:,} |"
        )
        print(rows_out[-1], flush=True)
        return body

    print("\n| request (outbound unless said) | median ms | min ms | max ms | rows / attempts |")
    print("|---|---|---|---|---|")
    cdrs = "/api/v1/cdrs"
    first = measure(
        "list, admin, 62 days, first page of 100",
        cdrs,
        admin,
        {"direction": "outbound", **full, "limit": 100},
    )
    measure(
        "list, admin, 62 days, page of 1000",
        cdrs,
        admin,
        {"direction": "outbound", **full, "limit": 1000},
    )
    # deep pages: cursors taken from the store at 50% and 99% of the range
    for share in (0.5, 0.99):
        offset = int(counts["outbound"] * share)
        st, cid = client.query(
            "SELECT start_time, id FROM cdr_outbound ORDER BY start_time, id"
            " LIMIT 1 OFFSET {o:UInt64}",
            parameters={"o": offset},
            tz_mode="aware",
        ).result_rows[0]
        cursor = encode_cursor(st, cid)
        measure(
            f"list, admin, deep page at row {offset:,} (cursor)",
            cdrs,
            admin,
            {"direction": "outbound", **full, "limit": 100, "cursor": cursor},
        )
    assert first["next_cursor"]
    measure(
        "list, admin, 62 days, status=timed-out flag (sparse)",
        cdrs,
        admin,
        {"direction": "outbound", **full, "timed_out": "true", "limit": 100},
    )
    measure(
        "list, admin, 62 days, destination prefix 4930",
        cdrs,
        admin,
        {"direction": "outbound", **full, "destination": "4930", "limit": 100},
    )
    measure(
        "list, account key, 62 days, first page of 100",
        cdrs,
        account_key,
        {"direction": "outbound", **full, "limit": 100},
    )
    measure(
        "list, account key, 62 days, source prefix 44 + busy",
        cdrs,
        account_key,
        {"direction": "outbound", **full, "source": "44", "status": "busy", "limit": 100},
    )
    measure(
        "list, inbound, admin, 62 days, first page of 100",
        cdrs,
        admin,
        {"direction": "inbound", **full, "limit": 100},
    )
    kpis = "/api/v1/kpis"
    for group in ("none", "day", "trunk", "country", "cdr_type"):
        measure(
            f"KPIs, admin, 62 days, group_by={group}",
            kpis,
            admin,
            {"direction": "outbound", **full, "group_by": group},
        )
    measure(
        "KPIs, admin, 1 day, group_by=hour",
        kpis,
        admin,
        {"direction": "outbound", **day, "group_by": "hour"},
    )
    measure(
        "KPIs, account key, 62 days, group_by=day",
        kpis,
        account_key,
        {"direction": "outbound", **full, "group_by": "day"},
    )
    measure(
        "KPIs, inbound, admin, 62 days, group_by=day",
        kpis,
        admin,
        {"direction": "inbound", **full, "group_by": "day"},
    )

    print("\n| CSV export (outbound) | rows | seconds | rows/s | MB | peak RSS above start |")
    print("|---|---|---|---|---|---|")
    exports = [
        ("account key, 62 days", account_key, {"direction": "outbound", **full}),
        ("admin, 1 day", admin, {"direction": "outbound", **day}),
        ("admin, 7 days", admin, {"direction": "outbound", **week}),
    ]
    if not args.skip_full_export:
        exports.append(
            ("admin, 62 days (every outbound row)", admin, {"direction": "outbound", **full})
        )

    def export(key: str, params: dict[str, Any]) -> tuple[int, int]:
        size = lines = 0
        with http.stream("GET", "/api/v1/cdrs.csv", params=params, headers={"X-API-Key": key}) as r:
            r.raise_for_status()
            for chunk in r.iter_bytes(1 << 16):
                size += len(chunk)
                lines += chunk.count(b"\n")
        return lines - 1, size

    during: list[float] = []

    def probe(stop: threading.Event) -> None:
        """List requests while an export streams: the store lock is taken chunk by chunk."""
        with httpx.Client(base_url=base, timeout=600) as other:
            while not stop.wait(0.5):
                t0 = time.perf_counter()
                other.get(
                    "/api/v1/cdrs",
                    headers={"X-API-Key": account_key},
                    params={"direction": "outbound", **full, "limit": 100},
                )
                during.append(time.perf_counter() - t0)

    for label, key, params in exports:
        whole = "62 days (every" in label
        stop = threading.Event()
        prober = threading.Thread(target=probe, args=(stop,), daemon=True)
        probing = label == "admin, 1 day"
        if probing:
            prober.start()
        runs = 1 if whole else min(args.repeat, 3)
        if not whole:
            export(key, params)  # warm-up, as for the latencies
        before = rss_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (peak RSS)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            rows, size = export(key, params)
            times.append(time.perf_counter() - t0)
        seconds = statistics.median(times)
        peak = rss_kib("VmHWM")
        stop.set()
        if probing:
            prober.join()
        print(
            f"| {label} | {rows:,} | {seconds:.2f} | {rows / seconds:,.0f} |"
            f" {size / 1e6:,.1f} | {(peak - before) / 1024:,.0f} MiB"
            f" (RSS {before / 1024:,.0f} -> peak {peak / 1024:,.0f} MiB) |",
            flush=True,
        )
    if during:
        print(
            f"\nlist (account key, first page) while the 1-day export streams: median"
            f" {statistics.median(during) * 1000:,.0f} ms, max {max(during) * 1000:,.0f} ms"
            f" over {len(during)} requests"
        )
    http.close()
    server.should_exit = True
    thread.join(timeout=10)


if __name__ == "__main__":
    main()
