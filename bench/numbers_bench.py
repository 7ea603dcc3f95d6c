"""Cost of a number lookup (`numbers.describe`): cache miss and cache hit, for two versions of
the code alternating in one run (this machine's speed drifts, so only figures of one run
compare).

    python bench/numbers_bench.py --base 2a374bc --numbers 20000 --rounds 3

The numbers: half the simulator's destinations and caller IDs, half uniformly random digits
after a random calling code. "once per process" is what the code computes once for every calling
code (reading the decisive depth off libphonenumber's patterns; nothing in the base), "first
pass" the lookup of each number with empty caches (about half of them misses: new plan keys),
"second pass" the same numbers again (all hits); "plan keys" is how many numbering-plan entries
the numbers needed (fewer = more hits in a long run).
Both sides run from source (CDRPIPE_PURE_PYTHON=1) or, if built, compiled (--compiled).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

from ab import ROOT, base_worktree, run_side  # bench/ is on sys.path when run as a script

DRIVER = """
import sys, time
import pipeline.core.numbers as numbers
assert numbers.__file__.startswith(sys.argv[2]), numbers.__file__
nums = open(sys.argv[1]).read().split()
getattr(numbers, "clear_caches", numbers._by_plan.clear)()
w0 = time.perf_counter()
if hasattr(numbers, "_calling_code_plan"):  # once per process: every calling code's patterns
    for cc in numbers.COUNTRY_CODE_TO_REGION_CODE:
        numbers._calling_code_plan(cc)
t0 = time.perf_counter()
for d in nums:
    numbers.describe(d)
t1 = time.perf_counter()
for d in nums:
    numbers.describe(d)
t2 = time.perf_counter()
n = len(nums)
print(
    f"{1e3 * (t0 - w0):.0f} | {1e6 * (t1 - t0) / n:.2f} | {1e6 * (t2 - t1) / n:.3f}"
    f" | {len(numbers._by_plan):,}"
)
"""


def sample_numbers(count: int, seed: int = 7) -> list[str]:
    """Half the simulator's numbers (destinations and caller IDs of a generated batch), half
    uniformly random digits after a random calling code."""
    from phonenumbers import COUNTRY_CODE_TO_REGION_CODE

    from pipeline.simulate import SimConfig, generate

    out: list[str] = []
    sim = generate(SimConfig(calls=count, seed=seed))
    import orjson

    for message in sim.messages:
        try:
            data = orjson.loads(message.value)
        except orjson.JSONDecodeError:
            continue
        if isinstance(data, dict) and data.get("event") == "start":
            for name in ("source", "destination"):
                value = data.get(name)
                if isinstance(value, str) and value.isdigit():
                    out.append(value)
        if len(out) >= count // 2:
            break
    rng = random.Random(seed)
    codes = sorted(COUNTRY_CODE_TO_REGION_CODE)
    while len(out) < count:
        tail = "".join(rng.choice("0123456789") for _ in range(rng.randint(6, 11)))
        out.append(f"{rng.choice(codes)}{tail}")
    rng.shuffle(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", required=True, help="git revision to compare against")
    parser.add_argument("--numbers", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compiled", action="store_true", help="run each side's compiled build")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cdrpipe-numbers-"))
    with base_worktree(args.base, tmp, compiled=args.compiled) as base:
        numbers_file = tmp / "numbers.txt"
        numbers_file.write_text("\n".join(sample_numbers(args.numbers)))
        print(f"{args.numbers:,} numbers, base {args.base} vs the working tree\n")
        print(
            "| round | code | once per process (ms) | first pass (µs per number)"
            " | second pass (µs per number) | plan keys |"
        )
        print("|---|---|---|---|---|---|")
        for n in range(1, args.rounds + 1):
            for name, code in (("base", base), ("new", ROOT)):
                argv = [sys.executable, "-c", DRIVER, str(numbers_file), str(code)]
                out = run_side(code, argv, tmp, pure=not args.compiled)
                print(f"| {n} | {name} | {out} |", flush=True)


if __name__ == "__main__":
    main()
