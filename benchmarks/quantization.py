"""Benchmark: CPU latency, size and agreement with FP32 of builder's FP16 and INT8 end-to-end exports."""
from __future__ import annotations

import contextlib
import pathlib
import time
from dataclasses import dataclass

import numpy as np

# the latency benchmark's session settings and interleaved timing, so the numbers compare (importing
# common also puts tests/ on the path, for reference_weights)
from common import Timed, benchmark_parser, open_session, parse, print_table, time_sessions, work_folder

SIZE = (640, 640)
# fewer candidates than the latency benchmark's 300: the synthetic scores crowd just above the threshold,
# where INT8's ~0.5-logit error flips them either way, and more of them only measures that crowd
DEFAULT_COUNT = 100


@dataclass
class Row(Timed):
    label: str
    path: pathlib.Path
    export_s: float
    report: dict | None
    error: str | None = None  # the export failed: shown in the table, not timed
    timings_ms: list[float] | None = None

    @property
    def size_mb(self) -> float:
        return self.path.stat().st_size / 1e6


@dataclass
class Subject:
    """The weights one variant is benchmarked on, the images its INT8 export calibrates on and is judged on."""

    variant: str
    model: object
    description: str
    timing_image: np.ndarray  # uint8 RGB [1, 3, H, W]
    report_images: str | None = None  # the FP16/INT8 reports' held-out folder (default: builder's photos)
    calibration_images: str | None = None  # the INT8 calibration folder, unless --calibration-images names one
    truth: list | None = None  # held-out scenes with ground truth, for trained weights


def lively_subject(variant: str, args) -> Subject:
    import torch

    from builder.core.images import to_network_input
    from builder.models.registry import family_of
    from reference_weights import lively_model

    prep = family_of(variant).preprocessing
    batch = builtin_batch(prep)
    model = lively_model(variant, torch.from_numpy(to_network_input(batch, prep)), count=args.count)
    return Subject(variant, model, f"synthetic weights with >= {args.count} scores per built-in photo above the "
                   f"threshold", batch[:1])  # astronaut, as in the latency benchmark


def trained_subject(variant: str, checkpoint: pathlib.Path, args, workdir: pathlib.Path) -> Subject:
    """Weights trained on shape scenes (train_shapes.py): calibration on training-like scenes, the report on
    scenes drawn on the held-out photos, which neither training nor calibration saw."""
    from builder.models.registry import build
    from shapes import scenes, write_scenes

    model = build(variant, checkpoint_path=str(checkpoint))
    calibration = None
    if args.calibration_images is None:
        calibration = str(write_scenes(workdir / f"{variant}_calibration", scenes(
            args.calibration_count or 64, 1000, SIZE, held_out=False, objects=(2, 12))))
    held_out = scenes(args.held_out, 2000, SIZE, held_out=True, objects=(2, 12))
    folder = write_scenes(workdir / f"{variant}_held_out", held_out)
    return Subject(variant, model, f"weights trained on shape scenes ({checkpoint.name}); report on "
                   f"{len(held_out)} held-out scenes", held_out[0].nchw, str(folder), calibration, held_out)


def builtin_batch(prep) -> np.ndarray:
    """All seven built-in photos, uint8 RGB NCHW: the lively weights' batch norms and scores are set on them,
    so the photos held out from calibration get detections too."""
    from builder.core.images import CALIBRATION_PHOTOS, HELD_OUT_PHOTOS, builtin_photos
    from builder.quantize.calibration import fitted

    return np.concatenate(fitted(builtin_photos(CALIBRATION_PHOTOS + HELD_OUT_PHOTOS), SIZE, prep))


@contextlib.contextmanager
def prediction_convs_float(keep: bool):
    """Export with the class-logit convolutions left float32 or quantized: a module switch, not an option."""
    from builder.quantize import apply

    before = apply.KEEP_CLASS_CONVS_FLOAT
    apply.KEEP_CLASS_CONVS_FLOAT = keep
    try:
        yield
    finally:
        apply.KEEP_CLASS_CONVS_FLOAT = before


def int8_options(args) -> dict:
    # only what was asked for: the spec holds the defaults
    names = {"method": "calibration_method", "calibration_count": "calibration_count",
             "calibration_images": "calibration_images"}
    return {option: str(value) if isinstance(value, pathlib.Path) else value
            for flag, option in names.items() if (value := getattr(args, flag)) is not None}


def export_all(subject: Subject, args, workdir: pathlib.Path) -> list[Row]:
    import builder
    from builder.quantize.apply import KEEP_CLASS_CONVS_FLOAT as default_keep

    exports = [("fp32", default_keep), ("fp16", default_keep), ("int8", default_keep)]
    if args.both_prediction_convs:
        exports.append(("int8", not default_keep))
    rows = []
    for i, (precision, keep_float) in enumerate(exports):
        label = f"int8, class convs {'float32' if keep_float else 'int8'}" if precision == "int8" else precision
        path = workdir / f"{subject.variant}_{i}_{precision}.onnx"
        options = {}
        if precision != "fp32" and subject.report_images is not None:
            options["report_images"] = subject.report_images
        if precision == "int8":
            options.update(int8_options(args))
            if subject.calibration_images is not None:
                options["calibration_images"] = subject.calibration_images
        start = time.perf_counter()
        try:
            with prediction_convs_float(keep_float):
                result = builder.export(subject.model, path, precision=precision, input_image_shape=SIZE, **options)
        except Exception as e:  # one broken precision should not hide the others' numbers
            if precision == "fp32":
                raise
            rows.append(Row(label, path, time.perf_counter() - start, None, f"{type(e).__name__}: {e}"))
            continue
        rows.append(Row(label, path, time.perf_counter() - start, result.accuracy_report))
    return rows


def against_truth(path: pathlib.Path, truth: list) -> dict:
    """The FP32 export's detections on the held-out scenes against their ground truth boxes."""
    from builder.quantize.report import agreement
    from builder.exporting.outputs import detections_of

    session = open_session(path)
    found = [detections_of(session.run(None, {"images": scene.nchw}), "batch") for scene in truth]
    return agreement([scene.truth for scene in truth], found, [f"scene{i}" for i in range(len(truth))])


def benchmark(subject: Subject, args, workdir: pathlib.Path) -> None:
    rows = export_all(subject, args, workdir)
    feeds = {}
    for row in rows:
        if row.error is None:
            session = open_session(row.path)
            feeds[row.label] = (session, {session.get_inputs()[0].name: subject.timing_image})
    timings = time_sessions(feeds, args.warmup, args.runs)
    for row in rows:
        row.timings_ms = timings.get(row.label)

    print(f"\n### {subject.variant}: {SIZE[0]}x{SIZE[1]}, batch 1, ORT CPU 2 threads, median of {args.runs} runs "
          f"after {args.warmup} warm-ups; {subject.description}\n")
    print_results(rows)
    print()
    if subject.truth is not None:
        t = against_truth(rows[0].path, subject.truth)
        print(f"- fp32 against the ground truth of the held-out scenes: recall {t['recall']:.3f}, precision "
              f"{t['precision']:.3f} ({t['reference_detections']} objects, {t['quantized_detections']} detections)")
    for row in rows[1:]:
        if row.error is not None:
            print(f"- {row.label}: export failed: {row.error.splitlines()[0][:300]}")
            continue
        held_out = row.report["held_out"]["images"]
        detail = row.report.get("calibration", {}).get("description", "no calibration")
        shown = ", ".join(held_out) if len(held_out) <= 8 else f"{held_out[0]} ... {held_out[-1]}"
        print(f"- {row.label}: agreement on {len(held_out)} held-out images ({shown}); calibration: {detail}")


def print_results(rows: list[Row]) -> None:
    fp32 = rows[0].median
    header = ["precision", "median ms", "p90 ms", "speed-up", "size MB", "export s", "recall", "precision",
              "mean IoU", "matched", "calibration"]
    lines = []
    for row in rows:
        if row.error is not None:
            lines.append([row.label, "failed"] + ["-"] * (len(header) - 2))
            continue
        d = row.report["detections"] if row.report else None
        calibration = row.report.get("calibration") if row.report else None
        lines.append([
            row.label, f"{row.median:.1f}", f"{row.p90:.1f}", f"{fp32 / row.median:.2f}x", f"{row.size_mb:.1f}",
            f"{row.export_s:.0f}",
            *(["-"] * 4 if d is None else [f"{d['recall']:.3f}", f"{d['precision']:.3f}",
                                           "-" if d["mean_iou"] is None else f"{d['mean_iou']:.3f}",
                                           f"{d['matched']}/{d['reference_detections']}"]),
            "-" if calibration is None else f"{calibration['method']}, {calibration['images']} images "
                                            f"({calibration['augmented']} crops/flips)",
        ])
    print_table(header, lines)


def parse_args(argv: list[str] | None = None):
    from builder.quantize.int8 import METHODS

    parser = benchmark_parser(__doc__, DEFAULT_COUNT)
    parser.add_argument("--method", choices=METHODS, help="INT8 calibration method (default: builder's); entropy and "
                        "percentile hold every calibrated tensor in memory, ~0.4 GB per 640 px image")
    parser.add_argument("--calibration-count", type=int, metavar="N", help="INT8 calibration images (default: builder's)")
    parser.add_argument("--calibration-images", type=pathlib.Path, metavar="DIR",
                        help="calibrate on this folder instead of crops/flips of the built-in photos")
    parser.add_argument("--both-prediction-convs", action="store_true",
                        help="also time INT8 with the final class/box convolutions the other way from builder's "
                             "default (quantized or left float32)")
    parser.add_argument("--weights", action="append", default=[], metavar="VARIANT=CHECKPOINT",
                        help="trained weights of a variant (train_shapes.py): INT8 calibrates on shape scenes and "
                             "the report compares on scenes drawn on the held-out photos; other variants get "
                             "synthetic weights")
    parser.add_argument("--held-out", type=int, default=32, metavar="N",
                        help="held-out scenes for trained weights (default 32)")
    args = parse(parser, argv)
    if args.calibration_count is not None and args.calibration_count < 32:
        parser.error("--calibration-count: at least 32, or the INT8 row measures too small a calibration set")
    if args.calibration_images is not None and not args.calibration_images.is_dir():
        parser.error(f"--calibration-images '{args.calibration_images}': no such folder")
    checkpoints = {}
    for item in args.weights:
        variant, _, path = item.partition("=")
        if not path or not pathlib.Path(path).is_file():
            parser.error(f"--weights '{item}': give VARIANT=CHECKPOINT with an existing file")
        checkpoints[variant] = pathlib.Path(path)
    args.checkpoints = checkpoints
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with work_folder(args.workdir) as folder:
        for variant in args.models:
            if variant in args.checkpoints:
                subject = trained_subject(variant, args.checkpoints[variant], args, folder)
            else:
                subject = lively_subject(variant, args)
            benchmark(subject, args, folder)


if __name__ == "__main__":
    main()
