"""Streaming throughput of two versions of the code, alternating in one run (this machine's
speed drifts, so only figures of one run compare).

    python bench/stream_ab.py --base 2a374bc --calls 100000 --workers 2 --rounds 2

Checks the `--base` revision out into a temporary git worktree (compiled, as scripts/setup.sh
builds it) and runs each side's own bench/stream_bench.py with its own code, simulator and sample
reference data (the workers it starts import the same code: PYTHONPATH), `--rounds` times each,
alternating. Prints stream_bench's row for each run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from ab import ROOT, base_worktree, run_side  # bench/ is on sys.path when run as a script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", required=True, help="git revision to compare against")
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--engine", default="batch", choices=["batch", "faust"])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cdrpipe-stream-ab-"))
    with base_worktree(args.base, tmp, compiled=True) as base:
        print(f"base {args.base} vs the working tree, {args.engine}, {args.workers} workers\n")
        for n in range(1, args.rounds + 1):
            for name, code in (("base", base), ("new", ROOT)):
                argv = [sys.executable, str(code / "bench" / "stream_bench.py")]
                argv += ["--calls", str(args.calls), "--workers", str(args.workers)]
                argv += ["--engines", args.engine, "--rate", "10000"]
                out = run_side(code, argv, tmp, pure=False)
                print(f"round {n}, {name}:\n{out}\n", flush=True)


if __name__ == "__main__":
    main()
