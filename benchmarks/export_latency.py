"""Benchmark: CPU latency of the raw network against builder's end-to-end ONNX export (and SuperGradients')."""
from __future__ import annotations

import pathlib
import time
from dataclasses import dataclass

import numpy as np

from common import Timed, benchmark_parser, open_session, parse, print_table, time_sessions, work_folder

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")  # bundled with scikit-image, so no download
SIZE = (640, 640)
# a few hundred (anchor, class) scores above the threshold on each photo, so NMS has real work to do
DEFAULT_COUNT = 300


@dataclass
class Row(Timed):
    label: str
    timings_ms: list[float]
    nodes: int
    size_mb: float
    export_s: float | None
    detections: int | None


def photo_batch(prep) -> np.ndarray:
    """The photos fitted into the input the family's way: uint8 RGB NCHW, the benchmark image first."""
    import skimage.data

    from builder.core.images import fit_to_input

    return np.stack([fit_to_input(getattr(skimage.data, n)(), SIZE, prep)[0].transpose(2, 0, 1) for n in PHOTOS])


def graph_stats(path: pathlib.Path) -> tuple[int, float]:
    import onnx

    return len(onnx.load(str(path)).graph.node), path.stat().st_size / 1e6


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
    lines = []
    for row in rows:
        overhead = "-" if row is rows[0] else f"{100 * (row.median - raw) / raw:+.1f}"
        lines.append([row.label, f"{row.median:.1f}", f"{row.p90:.1f}", overhead, str(row.nodes),
                      f"{row.size_mb:.1f}", "-" if row.export_s is None else f"{row.export_s:.1f}",
                      "-" if row.detections is None else str(row.detections)])
    print_table(header, lines)


def parse_args(argv: list[str] | None = None):
    parser = benchmark_parser(__doc__, DEFAULT_COUNT)
    parser.add_argument("--sg-onnx", action="append", default=[], metavar="VARIANT=PATH",
                        help="a SuperGradients end-to-end export of the same weights to time alongside (repeatable)")
    parser.add_argument("--save-weights", type=pathlib.Path, metavar="DIR",
                        help="write each variant's weights as DIR/VARIANT.pt, to export with SuperGradients")
    args = parse(parser, argv)
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
    with work_folder(args.workdir) as folder:
        for variant in args.models:
            benchmark(variant, args, folder, args.sg.get(variant))


if __name__ == "__main__":
    main()
