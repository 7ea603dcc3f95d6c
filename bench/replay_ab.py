"""Replay throughput of two versions of the code, alternating in one run (this machine's speed
drifts, so only figures of one run compare).

    python bench/replay_ab.py --base 733e274 --events 1000000 --jobs 2 --rounds 2

Checks the `--base` revision out into a temporary git worktree and compiles it as
scripts/setup.sh does, if it has the compiled build (setup.py); the working tree runs as it is
built (build it first: its stale modules would run from source). `--pure` runs both sides from
source. Generates one events file (the mix of bench/replay_bench.py), then per round replays it
into a fresh embedded store with the base code and with the working tree's code, each in a
fresh process (`replay_file(events, refdata, sink, jobs=N)`, the sink being the store's
`CdrWriter`, or its `write` for code that predates `RowSink`). Prints events/s, CPU per event
(the process and its replay workers), the rows stored and how many modules ran compiled. Both
sides read the base's sample reference data (deploy/config), which every later version reads.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from ab import ROOT, base_worktree, run_side  # bench/ is on sys.path when run as a script

#: Run in a fresh interpreter whose `pipeline` is the code under test (PYTHONPATH).
DRIVER = """
import resource, sys, tempfile
from pathlib import Path
import pipeline.replay as replay
assert replay.__file__.startswith(sys.argv[4]), replay.__file__
from pipeline.core.refdata import RefDataHolder
from pipeline.store.client import connect
from pipeline.store.writer import CdrWriter

events, config, jobs = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
refdata = RefDataHolder(config)
client = connect(f"chdb://{tempfile.mkdtemp(prefix='cdrpipe-ab-')}")
writer = CdrWriter(client)
sink = writer if hasattr(replay, "RowSink") else writer.write
usage = lambda: [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
before = usage()
summary = replay.replay_file(events, refdata, sink, jobs=jobs)
after = usage()
own, kids = (a.ru_utime + a.ru_stime - b.ru_utime - b.ru_stime for a, b in zip(after, before))
rows = client.query(
    "SELECT (SELECT count() FROM cdr_outbound FINAL) + (SELECT count() FROM cdr_inbound FINAL)"
).result_rows[0][0]
client.close()
n = summary.lines
compiled = [m for m, f in sys.modules.items() if m.startswith("pipeline.")
            and str(getattr(f, "__file__", "")).endswith(".so")]
print(
    f"{n / summary.seconds:,.0f} | {1e6 * own / n:.2f} + {1e6 * kids / n:.2f}"
    f" = {1e6 * (own + kids) / n:.2f} µs | {rows:,} | {len(compiled)}"
)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", required=True, help="git revision to compare against")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--pure", action="store_true", help="both sides from source (CDRPIPE_PURE_PYTHON=1)"
    )
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cdrpipe-ab-"))
    with base_worktree(args.base, tmp, compiled=not args.pure) as base:
        from replay_bench import bench_events  # bench/ is on sys.path when run as a script

        from pipeline.simulate import generate, write_jsonl

        events = tmp / "events.jsonl"
        cfg = bench_events(args.events)
        lines = write_jsonl(generate(cfg).messages, events)
        print(f"{lines:,} events, --jobs {args.jobs}, base {args.base} vs the working tree\n")
        print(
            "| round | code | end to end (events/s) | CPU per event: parent + workers | rows"
            " | modules compiled |"
        )
        print("|---|---|---|---|---|---|")
        # The base's sample reference data for both sides: a version older than a config
        # feature (comment lines, say) could not read the working tree's.
        config = base / "deploy" / "config"
        for n in range(1, args.rounds + 1):
            for name, code in (("base", base), ("new", ROOT)):
                argv = [sys.executable, "-c", DRIVER, str(events), str(config), str(args.jobs)]
                out = run_side(code, [*argv, str(code)], tmp, pure=args.pure)
                print(f"| {n} | {name} | {out} |", flush=True)


if __name__ == "__main__":
    main()
