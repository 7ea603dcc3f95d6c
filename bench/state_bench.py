"""Call states in memory or on disk: what a replay of N calls costs in memory, disk and time.

    python bench/state_bench.py --calls 1000000 3000000 --paths memory disk

For each N, generates the simulator's events of N calls at the rate of 10M calls a day (so
every call is still remembered at the end of the file: the memory window is 24 h) with the
trouble mix of bench/replay_bench.py, then replays the file once per path, each in a fresh
interpreter (`replay_file(events, refdata, sink, jobs=J, state_dir=...)`; the sink discards,
or is a fresh embedded store with `--store`). Prints per run: peak RSS of the replaying
process and of its largest worker, peak bytes of the state store on disk (sampled every
0.2 s), events/s and CPU per event (of all threads and workers, which includes RocksDB's
background flushes and compactions, and of the replaying thread); then, per path, the RSS
each remembered call adds (the peak RSS difference between two sizes over the difference in
calls). The summaries of the two paths must be equal (checked), and the store gone after.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "deploy" / "config"
DAY_RATE = 10_000_000 / 86_400  # calls a second in a day of 10M calls

#: One replay in a fresh interpreter: argv events, jobs, state dir ("" = memory), store dir
#: ("" = discard). Prints one JSON object.
DRIVER = """
import json, os, resource, sys, threading, time
from pathlib import Path
from pipeline import _accel
from pipeline.core.refdata import RefDataHolder
from pipeline.replay import replay_file
import pipeline.replay.parallel

events, jobs, state_dir, store = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
config = Path(sys.argv[5])


class Discard:
    def write(self, batch):
        pass

    def write_rows(self, direction, rows):
        pass


peak_disk = 0
done = threading.Event()


def du(path):
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


def sample():
    global peak_disk
    while not done.wait(0.2):
        peak_disk = max(peak_disk, du(state_dir))


client = None
if store:
    from pipeline.store.client import connect
    from pipeline.store.writer import CdrWriter

    client = connect(f"chdb://{store}")
    sink = CdrWriter(client)
else:
    sink = Discard()
if state_dir:
    threading.Thread(target=sample, daemon=True).start()
cpu = lambda: sum(
    getattr(resource.getrusage(w), f) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    for f in ("ru_utime", "ru_stime")
)
before, thread_before = cpu(), time.thread_time()
summary = replay_file(events, RefDataHolder(config), sink, jobs=jobs, state_dir=state_dir or None)
used, thread = cpu() - before, time.thread_time() - thread_before
done.set()
if client is not None:
    client.close()
left = du(state_dir) if state_dir else 0
own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
fields = ("lines", "events", "cdrs", "unrated", "timed_out", "account_mismatch",
          "dead_lettered", "dlq_by_kind", "duplicates", "still_open")
print(json.dumps({
    "summary": {f: getattr(summary, f) for f in fields},
    "bad_lines": len(summary.bad_lines),
    "seconds": summary.seconds,
    "cpu": used,
    "thread_cpu": thread,
    "rss_mb": own / 1024,
    "worker_rss_mb": kids / 1024,
    "disk_mb": peak_disk / 2**20,
    "left_on_disk": left,
    "compiled": len(_accel.compiled()),
}))
"""


def sim_config(calls: int, rate: float):
    """N calls at `rate` a second, ending an hour ago, with bench/replay_bench.py's trouble mix:
    2% reordered, 2% duplicated, 1% late, 0.5% orphans, 0.5% never ending, 0.2% malformed."""
    from pipeline.simulate import SimConfig

    span = timedelta(seconds=calls / rate)
    start = datetime.now(UTC).replace(second=0, microsecond=0) - span - timedelta(hours=1)
    return SimConfig(
        calls=calls,
        seed=7,
        config_dir=str(CONFIG),
        start=start,
        call_rate=rate,
        reorder=0.02,
        duplicate=0.02,
        late=0.01,
        orphan=0.005,
        never_ending=0.005,
        malformed=0.002,
    )


def write_events(calls: int, rate: float, path: Path) -> None:
    from pipeline.simulate import iter_messages, write_jsonl

    write_jsonl(iter_messages(sim_config(calls, rate)), path)  # streaming: bounded memory


def generate(calls: int, rate: float, path: Path) -> None:
    """In a child: the simulator's heap would otherwise stay in this process."""
    child = mp.get_context("fork").Process(target=write_events, args=(calls, rate, path))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise SystemExit(f"generating the events failed (exit code {child.exitcode})")


def replay(events: Path, jobs: int, state_dir: Path | None, store: Path | None) -> dict:
    argv = [sys.executable, "-c", DRIVER, str(events), str(jobs)]
    argv += [str(state_dir or ""), str(store or ""), str(CONFIG)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(argv, env=env, cwd=ROOT, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, nargs="+", default=[1_000_000, 3_000_000])
    parser.add_argument(
        "--paths", nargs="+", choices=("memory", "disk"), default=["memory", "disk"]
    )
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--rate", type=float, default=DAY_RATE, help="calls a second")
    parser.add_argument("--store", action="store_true", help="into a fresh embedded store")
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: tmp)")
    parser.add_argument(
        "--only", default=None, help="path:calls pairs to skip the others of (e.g. disk:10000000)"
    )
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cdrpipe-state-bench-", dir=args.dir))
    print(f"work directory {tmp}; jobs {args.jobs}; {args.rate:.2f} calls/s", flush=True)
    print(
        "| calls | events | path | events/s | CPU µs/event: all threads (main thread) |"
        " peak RSS (MB) | largest worker (MB) | state on disk, peak (MB) |",
        flush=True,
    )
    print("|---|---|---|---|---|---|---|---|", flush=True)
    results: dict[tuple[str, int], dict] = {}
    for calls in args.calls:
        events = tmp / f"events-{calls}.jsonl"
        t = time.perf_counter()
        generate(calls, args.rate, events)
        size = events.stat().st_size
        print(
            f"<!-- {calls:,} calls: {size / 2**20:,.0f} MiB of events generated in"
            f" {time.perf_counter() - t:.0f} s -->",
            flush=True,
        )
        for path in args.paths:
            if args.only and f"{path}:{calls}" not in args.only.split(","):
                continue
            state_dir = tmp / "state" if path == "disk" else None
            store = tmp / f"store-{path}-{calls}" if args.store else None
            r = replay(events, args.jobs, state_dir, store)
            results[path, calls] = r
            lines = r["summary"]["lines"]
            assert r["left_on_disk"] == 0, "the state store was left behind"
            print(
                f"| {calls:,} | {lines:,} | {path} | {lines / r['seconds']:,.0f} |"
                f" {1e6 * r['cpu'] / lines:.1f} ({1e6 * r['thread_cpu'] / lines:.1f}) |"
                f" {r['rss_mb']:,.0f} |"
                f" {r['worker_rss_mb']:,.0f} | {r['disk_mb']:,.0f} |",
                flush=True,
            )
        events.unlink()
        same = [results[p, calls]["summary"] for p in args.paths if (p, calls) in results]
        if len(same) == 2 and same[0] != same[1]:
            raise SystemExit(f"the summaries differ at {calls} calls: {same}")
        if same:
            print(f"<!-- summary at {calls:,} calls: {json.dumps(same[0])} -->", flush=True)
    for path in args.paths if args.jobs == 1 else ():  # a worker remembers a share of them
        sizes = sorted(c for p, c in results if p == path)
        for small, large in zip(sizes, sizes[1:], strict=False):
            grow = results[path, large]["rss_mb"] - results[path, small]["rss_mb"]
            print(
                f"{path}: {grow * 2**20 / (large - small):,.0f} bytes of peak RSS per remembered"
                f" call ({small:,} -> {large:,} calls)",
                flush=True,
            )


if __name__ == "__main__":
    main()
