"""What every benchmark shares, so their numbers compare: the session settings, timing, the machine line, tables."""
from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import platform
import sys
import tempfile
import time

import numpy as np

from builder.core.tables import markdown_table

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # reference_weights: detector-like scores without downloading weights

#: the x86 extensions INT8 speed depends on (VNNI: int8 dot products; AMX: int8 matrix tiles), as
#: /proc/cpuinfo spells them; "amx" stands for amx_int8
EXTENSIONS = {"avx2": "avx2", "avx512f": "avx512f", "avx512_vnni": "avx512_vnni", "avx_vnni": "avx_vnni",
              "amx": "amx_int8"}


def benchmark_parser(description: str, default_count: int) -> argparse.ArgumentParser:
    """The options every model benchmark takes; `parse` checks them."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--models", nargs="+", default=["yolo_nas_s", "ppyoloe_s"], metavar="VARIANT")
    parser.add_argument("--runs", type=int, default=50, help="timed runs per model (default 50)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs first (default 10)")
    parser.add_argument("--count", type=int, default=default_count,
                        help=f"(anchor, class) scores per photo above the threshold (default {default_count})")
    parser.add_argument("--workdir", type=pathlib.Path, help="keep the exported ONNX files here (default: a temp dir)")
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str] | None):
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or args.count < 1:
        parser.error("--runs and --count must be at least 1, --warmup at least 0")
    return args


def open_session(path: pathlib.Path):
    from builder.exporting.sessions import inference_session

    # two cores, one stream of work: a small CPU inference server, and stable numbers on a shared host
    return inference_session(path, threads=2)


class Timed:
    """A benchmark row's statistics of its `timings_ms`."""

    timings_ms: list[float] | None

    @property
    def median(self) -> float:
        return float(np.median(self.timings_ms))

    @property
    def p90(self) -> float:
        return float(np.percentile(self.timings_ms, 90))


def time_sessions(feeds: dict[str, tuple], warmup: int, runs: int, block: int = 5) -> dict[str, list[float]]:
    """Milliseconds per run for each (session, feed), in blocks of `block` runs taken in turn.

    Taking turns spreads drift in the host's load or clock over every model instead of favouring the one
    timed first; blocks (each after one untimed run) keep a model's weights in the caches while it is
    timed, as on a server that runs one model. Turn by turn single runs measured cold caches instead:
    every model looked up to 1.5x slower than it runs on its own.
    """
    for session, feed in feeds.values():
        for _ in range(warmup):
            session.run(None, feed)
    timings: dict[str, list[float]] = {label: [] for label in feeds}
    while any(len(t) < runs for t in timings.values()):
        for label, (session, feed) in feeds.items():
            session.run(None, feed)
            for _ in range(min(block, runs - len(timings[label]))):
                start = time.perf_counter()
                session.run(None, feed)
                timings[label].append((time.perf_counter() - start) * 1e3)
    return timings


def machine(cpuinfo: str | None = None) -> str:
    """One line: the CPU's model name, logical cores and which of EXTENSIONS it has (INT8 speed-ups need VNNI)."""
    if cpuinfo is None:
        try:
            cpuinfo = pathlib.Path("/proc/cpuinfo").read_text()
        except OSError:  # not Linux: no flags to show
            cpuinfo = ""
    fields = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())  # the first processor speaks for all
    name = fields.get("model name") or platform.processor() or platform.machine() or "unknown CPU"
    flags = set(fields.get("flags", "").split())
    have = ", ".join(f"{label} {'yes' if flag in flags else 'no'}" for label, flag in EXTENSIONS.items())
    return f"CPU: {name}, {os.cpu_count()} logical cores; {have}"


def print_table(header, rows) -> None:
    """A markdown table with the machine line above it: CPU numbers mean little without the CPU."""
    print(machine() + "\n")
    print(markdown_table(header, rows))
    sys.stdout.flush()


@contextlib.contextmanager
def work_folder(keep: pathlib.Path | None):
    """`keep` (made if missing) for the exported files, or a temporary folder removed afterwards."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = keep or pathlib.Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        yield folder
