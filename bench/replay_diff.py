"""Differential check of the offline replay: dump everything a replay produces, compare dumps.

    python bench/replay_diff.py dump EVENTS.jsonl OUT.pickle [--jobs N]
    python bench/replay_diff.py compare A.pickle B.pickle

A dump holds, in order, every sink batch (every CDR field), every dead letter (line, kind,
reason, call id, source, raw bytes), the bad-line report and the summary counters, so two
versions of the code can be compared output for output: run `dump` with the old code (e.g. a
`git stash` or a worktree of the old commit), `dump` with the new, then `compare`.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from dataclasses import astuple
from datetime import timedelta
from pathlib import Path
from typing import Any

from pipeline.core.correlate import Deadlines
from pipeline.core.model import CDR
from pipeline.core.refdata import RefDataHolder
from pipeline.replay import replay_file

#: Deadlines short enough that calls time out, are orphaned and forgotten inside a test file.
SHORT = {
    "max_call_duration": timedelta(minutes=15),
    "orphan_wait": timedelta(minutes=2),
    "memory": timedelta(minutes=10),
}


def dump(events: Path, out: Path, jobs: int, config: Path, short: bool = False) -> None:
    refdata = RefDataHolder(config)
    batches: list[list[tuple[Any, ...]]] = []
    dead: list[tuple[Any, ...]] = []

    def sink(batch: list[CDR]) -> None:
        batches.append([astuple(cdr) for cdr in batch])

    def dead_letter(line: int, letter: Any) -> None:
        dead.append(
            (line, letter.kind, letter.reason, letter.call_id, astuple(letter.source), letter.raw)
        )

    kwargs: dict[str, Any] = {"settings": Deadlines(**SHORT)} if short else {}
    summary = replay_file(events, refdata, sink, jobs=jobs, dead_letter=dead_letter, **kwargs)
    counts = {
        k: getattr(summary, k)
        for k in (
            "lines",
            "events",
            "cdrs",
            "unrated",
            "timed_out",
            "dead_lettered",
            "dlq_by_kind",
            "duplicates",
            "still_open",
            "bad_lines",
        )
    }
    out.write_bytes(pickle.dumps({"batches": batches, "dead": dead, "summary": counts}))
    print(
        f"{summary.lines} lines, {sum(map(len, batches))} CDRs in {len(batches)} batches, "
        f"{len(dead)} dead letters, {summary.lines / summary.seconds:,.0f} lines/s"
    )


def compare(a: Path, b: Path) -> int:
    x, y = pickle.loads(a.read_bytes()), pickle.loads(b.read_bytes())
    bad = 0
    if x["summary"] != y["summary"]:
        print("summary differs:", x["summary"], y["summary"], sep="\n")
        bad += 1
    if len(x["batches"]) != len(y["batches"]):
        print(f"batch count differs: {len(x['batches'])} vs {len(y['batches'])}")
        bad += 1
    for i, (p, q) in enumerate(zip(x["batches"], y["batches"], strict=False)):
        if p != q:
            diff = next((j for j, (r, s) in enumerate(zip(p, q, strict=False)) if r != s), None)
            print(f"batch {i} differs (len {len(p)} vs {len(q)}), first at {diff}")
            if diff is not None:
                print(" ", p[diff], "\n ", q[diff])
            bad += 1
    if x["dead"] != y["dead"]:
        diff = next(
            (j for j, (r, s) in enumerate(zip(x["dead"], y["dead"], strict=False)) if r != s), None
        )
        print(f"dead letters differ ({len(x['dead'])} vs {len(y['dead'])}), first at {diff}")
        bad += 1
    print("identical" if not bad else f"{bad} differences")
    return 1 if bad else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump")
    d.add_argument("events", type=Path)
    d.add_argument("out", type=Path)
    d.add_argument("--jobs", type=int, default=1)
    d.add_argument("--config", type=Path, default=Path("deploy/config"))
    d.add_argument("--short", action="store_true", help="short deadlines (see SHORT)")
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    args = parser.parse_args()
    if args.cmd == "dump":
        dump(args.events, args.out, args.jobs, args.config, args.short)
        return 0
    return compare(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main())
