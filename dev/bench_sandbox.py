"""Sandbox cost per program: `execute_code` in the namespace mode vs the fallback mode, one run.

    python -m dev.bench_sandbox                 # 20 rounds of each program in each mode
    python -m dev.bench_sandbox --rounds 5      # quick look

The modes run interleaved, round by round, so a machine loaded by others slows both alike. The
programs: an empty one (pure start-up and tear-down) and a HumanEval-sized one (a function and its
asserts). Prints a table of median milliseconds, the namespace/basic ratio, and one JSON line.
"""

import argparse
import json
import statistics
import time

from nanochat import execution

PROGRAMS = {
    "empty": "pass",
    "humaneval-like": ("from typing import List\n\ndef below_zero(ops: List[int]) -> bool:\n    balance = 0\n"
                       "    for op in ops:\n        balance += op\n        if balance < 0:\n            return True\n"
                       "    return False\n\nassert below_zero([1, -2]) and not below_zero([1, 2, -3])\n"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description="Time execute_code in each sandbox mode.")
    parser.add_argument("--rounds", type=int, default=20, help="runs of each program in each mode")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    native = execution.isolation()
    modes = ["namespaces", "basic"] if native == "namespaces" else ["basic"]
    times = {(m, p): [] for m in modes for p in PROGRAMS}
    for _ in range(args.rounds):
        for mode in modes:
            execution.isolation = lambda mode=mode: mode  # the probe's answer, overridden per round
            for name, code in PROGRAMS.items():
                t0 = time.perf_counter()
                result = execution.execute_code(code)
                times[mode, name].append(time.perf_counter() - t0)
                assert result.passed, (mode, name, result.error)
    medians = {f"{m}/{p}": 1000 * statistics.median(v) for (m, p), v in times.items()}
    print(f"{'mode':12s} {'program':16s} {'median ms':>10s}")
    for (mode, name) in times:
        print(f"{mode:12s} {name:16s} {medians[f'{mode}/{name}']:10.1f}")
    ratios = {p: medians[f"namespaces/{p}"] / medians[f"basic/{p}"] for p in PROGRAMS if "namespaces" in modes}
    for name, r in ratios.items():
        print(f"namespaces / basic, {name}: {r:.2f}x")
    print(json.dumps({"rounds": args.rounds, "median_ms": medians, "ratio_namespaces_over_basic": ratios}))


if __name__ == "__main__":
    main()
