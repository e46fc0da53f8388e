"""Benchmark: what `builder --help` and `builder COMMAND --help` cost to start, against a 0.15 s CPU budget.

`python benchmarks/cli_startup.py [--runs 15] [--builder PATH]`

Each command runs `--runs` times in a fresh subprocess; the table gives the median CPU seconds (user + sys of
the child, from getrusage(RUSAGE_CHILDREN) before and after it) and the median wall time, plus
`python -c "import builder"` and a bare `python -c pass` for scale. The budget is for CPU, which does not
depend on how busy the machine is as much as wall time does.
"""
from __future__ import annotations

import argparse
import pathlib
import resource
import shutil
import statistics
import subprocess
import sys
import time

BUDGET_S = 0.15


def timed(argv: list[str]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one run of argv; a failing command stops the benchmark."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr.decode()[-2000:]}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def builder_argv(given: str | None) -> list[str]:
    """The installed console script next to this Python (what a user runs), else `python -m builder`."""
    if given:
        return [given]
    script = pathlib.Path(sys.executable).parent / "builder"
    if script.exists():
        return [str(script)]
    found = shutil.which("builder")
    return [found] if found else [sys.executable, "-m", "builder"]


def command_names(builder: list[str]) -> list[str]:
    """The subcommands, read from `builder --help` (so that this also measures an older or installed CLI)."""
    text = subprocess.run([*builder, "--help"], capture_output=True, text=True, check=True).stdout
    lines = text.split("Commands:", 1)[1].splitlines()[1:]
    return [line.split()[0] for line in lines if line.startswith("  ") and line.split()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="Runs per command (the median is reported).")
    parser.add_argument("--builder", help="The builder executable. [default: the one beside this Python]")
    args = parser.parse_args()

    builder = builder_argv(args.builder)
    cases = [("python -c pass", [sys.executable, "-c", "pass"]),
             ('python -c "import builder"', [sys.executable, "-c", "import builder"]),
             ("builder --help", [*builder, "--help"])]
    cases += [(f"builder {name} --help", [*builder, name, "--help"]) for name in command_names(builder)]

    rows = []
    for label, argv in cases:
        timed(argv)  # warm the file cache and .pyc files first
        samples = [timed(argv) for _ in range(args.runs)]
        cpu = statistics.median(s[0] for s in samples)
        wall = statistics.median(s[1] for s in samples)
        rows.append((label, cpu, wall))
        print(f"{label}: {cpu:.3f} s CPU, {wall:.3f} s wall", file=sys.stderr)

    print(f"\n`{' '.join(builder)}`, Python {sys.version.split()[0]}, median of {args.runs} runs each\n")
    print(f"| command | CPU s (user+sys) | wall s | within {BUDGET_S} s CPU |")
    print("| --- | ---: | ---: | --- |")
    for label, cpu, wall in rows:
        within = "" if label.startswith("python") else ("yes" if cpu <= BUDGET_S else "NO")
        print(f"| `{label}` | {cpu:.3f} | {wall:.3f} | {within} |")


if __name__ == "__main__":
    main()
