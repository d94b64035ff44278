"""How fast the command line answers before any model work: ``funcnet --help``, ``--version``, a bad
argument, a command's help and argument errors, each in a fresh process, against the alternative
of importing the library before parsing (what funcnet 0.1 did), in the same run.

    python benchmarks/cli_startup.py [--reps 5]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

CASES = {
    "funcnet --help": ["--help"],
    "funcnet --version": ["--version"],
    "funcnet bad-command": ["no-such-command"],
    "funcnet prune --help": ["prune", "--help"],
    "funcnet prune --ratio abc": ["prune", "--ratio", "abc"],
    "funcnet record --batch-size 0 --out x": ["record", "--batch-size", "0", "--out", "x"],
}
#: the alternative: the library imported before the arguments are parsed (what funcnet 0.1 did)
EAGER = ("import sys\nimport funcnet.core, funcnet.data, funcnet.networks, funcnet.evaluate, funcnet.prune, "
         "funcnet.fingerprint, funcnet.experiments, funcnet.export, funcnet.report, funcnet.explore\n"
         "from funcnet.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n")


def _time(cmd: list[str], reps: int) -> tuple[float, float]:
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, timeout=600)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), min(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}, python {platform.python_version()}, {a.reps} runs each (median / best)")
    print("| command | funcnet s | library imported first s |")
    print("|---|---|---|")
    for name, argv in CASES.items():
        lazy = _time([sys.executable, "-m", "funcnet", *argv], a.reps)
        eager = _time([sys.executable, "-c", EAGER, *argv], a.reps)
        print(f"| `{name}` | {lazy[0]:.2f} / {lazy[1]:.2f} | {eager[0]:.2f} / {eager[1]:.2f} |")


if __name__ == "__main__":
    main()
