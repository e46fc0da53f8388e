"""Benchmark: CPU latency of the raw network against builder's end-to-end ONNX export (and SuperGradients')."""
from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # reference_weights: detector-like scores without downloading weights

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")  # bundled with scikit-image, so no download
SIZE = (640, 640)
# a few hundred (anchor, class) scores above the threshold on each photo, so NMS has real work to do
DEFAULT_COUNT = 300


@dataclass
class Row:
    label: str
    timings_ms: list[float]
    nodes: int
    size_mb: float
    export_s: float | None
    detections: int | None

    @property
    def median(self) -> float:
        return float(np.median(self.timings_ms))

    @property
    def p90(self) -> float:
        return float(np.percentile(self.timings_ms, 90))


def photo_batch(prep) -> np.ndarray:
    """The photos fitted into the input the family's way: uint8 RGB NCHW, the benchmark image first."""
    import skimage.data

    from builder.core.images import fit_to_input

    return np.stack([fit_to_input(getattr(skimage.data, n)(), SIZE, prep)[0].transpose(2, 0, 1) for n in PHOTOS])


def open_session(path: pathlib.Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    # two cores, one stream of work: a small CPU inference server, and stable numbers on a shared host
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def graph_stats(path: pathlib.Path) -> tuple[int, float]:
    import onnx

    return len(onnx.load(str(path)).graph.node), path.stat().st_size / 1e6


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


def benchmark(variant: str, args, workdir: pathlib.Path, sg_onnx: pathlib.Path | None) -> None:
    import torch

    import builder
    from builder.core.images import to_network_input
    from builder.models.registry import family_of
    from reference_weights import lively_model

    family = family_of(variant)
    pixels = photo_batch(family.preprocessing)
    x = torch.from_numpy(to_network_input(pixels, family.preprocessing))
    model = lively_model(variant, x, count=args.count)
    if args.save_weights:
        # training form, before any fuse: the keys are SuperGradients', so its models.get() loads it strictly
        args.save_weights.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), args.save_weights / f"{variant}.pt")

    with torch.no_grad():
        scores = model(x[:1])[1]
    passing = int((scores > family.default_confidence).sum())

    paths = {"raw": workdir / f"{variant}_raw.onnx", "e2e": workdir / f"{variant}_e2e.onnx"}
    export_s = {}  # the first export of the process also pays for loading torch's exporter
    for kind, path in paths.items():
        options = {"preprocessing": False, "postprocessing": False} if kind == "raw" else {}
        start = time.perf_counter()
        builder.export(model, path, **options)
        export_s[kind] = time.perf_counter() - start
    if sg_onnx is not None:
        paths["sg"] = sg_onnx

    image = pixels[:1]
    network_input = to_network_input(image, family.preprocessing)
    feeds, detections = {}, {}
    for kind, path in paths.items():
        session = open_session(path)
        name = session.get_inputs()[0].name  # SuperGradients names its uint8 input differently
        feed = {name: network_input if kind == "raw" else image}
        feeds[kind] = (session, feed)
        # batch format, ours and SG's: num_predictions [B, 1] comes first
        detections[kind] = None if kind == "raw" else int(session.run(None, feed)[0].reshape(-1)[0])
    timings = time_sessions(feeds, args.warmup, args.runs)

    labels = {"raw": "raw network (float in, all anchors)", "e2e": "builder end-to-end",
              "sg": "SuperGradients 3.7.1 end-to-end"}
    rows = [Row(labels[k], timings[k], *graph_stats(p), export_s.get(k), detections[k]) for k, p in paths.items()]
    print(f"\n### {variant}: {SIZE[0]}x{SIZE[1]}, batch 1, ORT CPU 2 threads, median of {args.runs} runs "
          f"after {args.warmup} warm-ups; astronaut: {passing} (anchor, class) scores > "
          f"{family.default_confidence:g} before NMS\n")
    print_results(rows)


def print_results(rows: list[Row]) -> None:
    raw = rows[0].median
    header = ["model", "median ms", "p90 ms", "overhead %", "nodes", "size MB", "export s", "detections"]
    lines = [header]
    for row in rows:
        overhead = "-" if row is rows[0] else f"{100 * (row.median - raw) / raw:+.1f}"
        lines.append([row.label, f"{row.median:.1f}", f"{row.p90:.1f}", overhead, str(row.nodes),
                      f"{row.size_mb:.1f}", "-" if row.export_s is None else f"{row.export_s:.1f}",
                      "-" if row.detections is None else str(row.detections)])
    print_markdown(lines)


def print_markdown(lines: list[list[str]]) -> None:
    """A markdown table, columns padded; the first line is the header."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for i, line in enumerate(lines):
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def parse_args(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=["yolo_nas_s", "ppyoloe_s"], metavar="VARIANT")
    parser.add_argument("--runs", type=int, default=50, help="timed runs per model (default 50)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs first (default 10)")
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT,
                        help=f"(anchor, class) scores per photo above the threshold (default {DEFAULT_COUNT})")
    parser.add_argument("--sg-onnx", action="append", default=[], metavar="VARIANT=PATH",
                        help="a SuperGradients end-to-end export of the same weights to time alongside (repeatable)")
    parser.add_argument("--save-weights", type=pathlib.Path, metavar="DIR",
                        help="write each variant's weights as DIR/VARIANT.pt, to export with SuperGradients")
    parser.add_argument("--workdir", type=pathlib.Path, help="keep the exported ONNX files here (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or args.count < 1:
        parser.error("--runs and --count must be at least 1, --warmup at least 0")
    args.sg = {}
    for item in args.sg_onnx:
        variant, sep, path = item.partition("=")
        if not sep or variant not in args.models:
            parser.error(f"--sg-onnx '{item}': expected VARIANT=PATH with VARIANT one of {', '.join(args.models)}")
        if not pathlib.Path(path).is_file():
            parser.error(f"--sg-onnx '{item}': no such file")
        args.sg[variant] = pathlib.Path(path)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or pathlib.Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for variant in args.models:
            benchmark(variant, args, workdir, args.sg.get(variant))


if __name__ == "__main__":
    main()
