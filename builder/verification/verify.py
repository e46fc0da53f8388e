"""`builder verify`: a bundle's model against the PyTorch model it was built from, on real images.

The reference is rebuilt from the bundle's own build.yaml and the weights (checked against the sha256
the manifest recorded). Detections are compared per image in original-image pixels: matched at IoU >= 0.5
with the same class, recall and precision against the reference, and the largest box and score
deviations of the matches. A bundle below its precision's thresholds fails the gate (exit code 3).
"""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from builder.core.errors import UserError
from builder.core.extras import require
from builder.core.tables import text_table

#: per precision: least recall and precision against PyTorch, most box deviation (network-input pixels)
#: and score deviation of matched detections (None: not gated; INT8 moves boxes and scores by design)
GATES = {
    "fp32": {"recall": 0.99, "precision": 0.99, "box_px": 1.0, "score": 0.01},
    "fp16": {"recall": 0.99, "precision": 0.98, "box_px": 4.0, "score": 0.05},
    "int8": {"recall": 0.90, "precision": 0.85, "box_px": None, "score": None},
}
DEFAULT_IMAGE_COUNT = 32


@dataclass
class ImageResult:
    name: str
    path: str
    reference: list[tuple]  # (score, class, box) in original-image pixels
    bundle: list[tuple]
    pairs: list[tuple[int, int, float]]
    box_limit_px: Optional[float]

    @property
    def max_box_deviation(self) -> float:
        return max((float(np.abs(self.reference[i][2] - self.bundle[j][2]).max()) for i, j, _ in self.pairs), default=0.0)

    @property
    def max_score_deviation(self) -> float:
        return max((abs(self.reference[i][0] - self.bundle[j][0]) for i, j, _ in self.pairs), default=0.0)

    def as_dict(self) -> dict:
        return {"image": self.name, "reference": len(self.reference), "bundle": len(self.bundle),
                "matched": len(self.pairs), "recall": _ratio(len(self.pairs), len(self.reference)),
                "precision": _ratio(len(self.pairs), len(self.bundle)),
                "max_box_deviation_px": round(self.max_box_deviation, 4),
                "max_score_deviation": round(self.max_score_deviation, 6)}


@dataclass
class VerifyResult:
    bundle: pathlib.Path
    precision: str
    runtime: str
    images: list[ImageResult]
    gate: dict
    failures: list[str] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    report_path: Optional[pathlib.Path] = None  # the side-by-side report, when one was written

    @property
    def totals(self) -> dict:
        matched = sum(len(r.pairs) for r in self.images)
        reference = sum(len(r.reference) for r in self.images)
        found = sum(len(r.bundle) for r in self.images)
        return {"images": len(self.images), "reference": reference, "bundle": found, "matched": matched,
                "recall": _ratio(matched, reference), "precision": _ratio(matched, found),
                "max_box_deviation_px": round(max((r.max_box_deviation for r in self.images), default=0.0), 4),
                "max_score_deviation": round(max((r.max_score_deviation for r in self.images), default=0.0), 6)}

    @property
    def passed(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict:
        return {"bundle": str(self.bundle), "precision": self.precision, "runtime": self.runtime,
                "gate": self.gate, "passed": self.passed, "failures": self.failures, "overall": self.totals,
                "per_image": [r.as_dict() for r in self.images]}

    def table(self) -> str:
        rows = [("image", "reference", "bundle", "matched", "recall", "precision", "max box dev px", "max score dev")]
        for r in self.images + [None]:
            d = self.totals if r is None else r.as_dict()
            rows.append(("overall" if r is None else d["image"], str(d["reference"]), str(d["bundle"]),
                         str(d["matched"]), f"{d['recall']:.3f}", f"{d['precision']:.3f}",
                         f"{d['max_box_deviation_px']:.3f}", f"{d['max_score_deviation']:.4f}"))
        lines = text_table(rows, "lrrrrrrr")
        verdict = "PASSED" if self.passed else "FAILED: " + "; ".join(self.failures)
        return "\n".join([f"verify {self.bundle} ({self.precision}, {self.runtime} vs PyTorch)", *lines, verdict])


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else 1.0


def verify(bundle: str | pathlib.Path, images: Optional[str] = None, weights: Optional[str] = None,
           url: Optional[str] = None, protocol: str = "http", count: int = DEFAULT_IMAGE_COUNT) -> VerifyResult:
    require("export")
    from builder.core.manifest import check_against_spec, check_files
    from builder.targets.spec import BundleSpec, read_spec_file
    from builder.stage.export import load_model
    from builder.core.images import fit_to_input
    from builder.quantize.report import match_pairs
    from builder.verification.reference import reference_detections

    folder = pathlib.Path(bundle)
    manifest = check_files(folder)
    spec_data = read_spec_file(folder / "build.yaml")
    if weights is not None:
        spec_data.setdefault("export", {})["weights"] = weights
    spec = BundleSpec.create(spec_data)
    precision = _exported_precision(folder, spec, manifest)
    check_against_spec(manifest, spec, folder)
    if url is None:  # opened, and held against manifest.json, before PyTorch builds the reference
        from builder.verification.runtime import open_model

        run, runtime = open_model(folder, manifest)
    _check_weights(manifest, spec.export.weights, spec.export.model)
    model = load_model(spec.export).eval()
    photos = _images(folder, images, count)
    settings = manifest.postprocessing.model_dump()
    gate = GATES[precision]
    height, width = manifest.signature.inputs[0].shape[2:]
    prep = model.family.preprocessing

    if url is not None:
        if spec.target != "triton":
            raise UserError("--url verifies a Triton bundle through its client; this bundle is standalone")
        candidates, runtime = _through_client(folder, [p for _, p in photos], url, protocol), f"Triton at {url}"
    else:
        candidates = None
        fixed = manifest.signature.inputs[0].shape[0]
    results = []
    for index, (name, path) in enumerate(photos):
        image = _read(path)
        fitted, placement = fit_to_input(image, (height, width), prep)
        batch = fitted.transpose(2, 0, 1)[None].copy()
        if candidates is None:
            found_input = _run_model(run, batch, fixed, manifest)
            found = _to_original(found_input, placement, image.shape)
        else:
            found = candidates[index]
            found_input = [(s, c, placement.to_input(np.asarray(b)[None])[0]) for s, c, b in found]
        # the reference breaks score ties the way the bundle did (builder.verification.reference)
        reference = _to_original(reference_detections(model, batch, settings, prefer=found_input), placement,
                                 image.shape)
        limit = None if gate["box_px"] is None else gate["box_px"] / min(placement.scale_x, placement.scale_y)
        results.append(ImageResult(name, str(path), reference, found, match_pairs(reference, found), limit))
    result = VerifyResult(folder.resolve(), precision, runtime, results, gate, class_names=manifest.class_names)
    totals = result.totals
    if totals["recall"] < gate["recall"]:
        result.failures.append(f"recall {totals['recall']:.3f} < {gate['recall']}")
    if totals["precision"] < gate["precision"]:
        result.failures.append(f"precision {totals['precision']:.3f} < {gate['precision']}")
    for r in results:
        if r.box_limit_px is not None and r.max_box_deviation > r.box_limit_px:
            result.failures.append(f"{r.name}: boxes deviate by {r.max_box_deviation:.2f} px (> {r.box_limit_px:.2f})")
        if gate["score"] is not None and r.max_score_deviation > gate["score"]:
            result.failures.append(f"{r.name}: scores deviate by {r.max_score_deviation:.4f} (> {gate['score']})")
    if totals["reference"] == 0:
        result.failures.append("the reference finds nothing on these images, so nothing was verified (give --images "
                               "DIR: pictures of what the model detects)")
    return result


def _exported_precision(folder: pathlib.Path, spec, manifest) -> str:
    """The precision the gate is chosen by: the one the export wrote into the ONNX file's own metadata.

    manifest.json is not covered by its own file list, so a hand edit of its `precision` (fp32 -> int8)
    would loosen the gate; the ONNX file is covered (its sha256 is checked first), and build.yaml too.
    """
    import onnx
    from google.protobuf.message import DecodeError

    onnx_path = folder / spec.target_class(spec).model_file
    try:
        recorded = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    except (OSError, ValueError, DecodeError) as e:
        raise UserError(f"cannot read the bundle's model '{onnx_path}': {e}") from None
    precision = recorded.get("precision")
    if precision not in GATES:
        raise UserError(f"the bundle's model '{onnx_path.name}' records no precision builder knows ({precision!r})")
    if manifest.precision != precision or spec.export.precision != precision:
        raise UserError(f"precision mismatch: the model was exported as {precision}, but manifest.json says "
                        f"{manifest.precision} and build.yaml {spec.export.precision}: the bundle was edited")
    return precision


def _check_weights(manifest, weights: Optional[str], variant: str) -> None:
    """The reference must be built from the weights the bundle was built from."""
    from builder.targets.build import weights_record

    recorded = manifest.model.weights.model_dump(exclude_none=True)
    if weights is None and recorded.get("source") != "random":
        raise UserError(f"the bundle was built from weights '{recorded.get('source')}': give them with --weights")
    actual = weights_record(variant, weights)
    if actual.get("sha256") != recorded.get("sha256") or actual.get("seed") != recorded.get("seed"):
        raise UserError(f"weights '{weights}' are not the ones the bundle was built from "
                        f"(sha256 {str(actual.get('sha256'))[:12]}..., the manifest says {str(recorded.get('sha256'))[:12]}...)")


def _images(bundle: pathlib.Path, folder: Optional[str], count: int) -> list[tuple[str, pathlib.Path]]:
    """--images, else the bundle's own pictures of what its model detects (samples/), else builder's photos."""
    from builder.core.images import CALIBRATION_PHOTOS, HELD_OUT_PHOTOS, PHOTOS, image_files
    from builder.core.log import notice
    from builder.targets.base import SAMPLES_FOLDER

    if folder is None and (bundle / SAMPLES_FOLDER).is_dir():  # its files are the manifest's, checked already
        folder = bundle / SAMPLES_FOLDER
        found = image_files(folder)[:count]
        notice(f"no --images: verifying on the bundle's own {len(found)} sample image(s) in {SAMPLES_FOLDER}/")
        return [(p.relative_to(bundle).as_posix(), p) for p in found]
    if folder is None:
        notice("no --images: verifying on builder's 7 built-in photos")
        return [(name, PHOTOS / f"{name}.jpg") for name in CALIBRATION_PHOTOS + HELD_OUT_PHOTOS]
    return [(p.relative_to(folder).as_posix(), p) for p in image_files(folder)[:count]]


def _read(path: pathlib.Path) -> np.ndarray:
    from builder.core.images import read_image

    try:
        return read_image(path)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read image '{path}': {e}") from None


def _to_original(detections: list[tuple], placement, shape) -> list[tuple]:
    height, width = shape[:2]
    out = []
    for score, cls, box in detections:
        mapped = placement.to_original(np.asarray(box, dtype=np.float32)[None])[0]
        mapped[[0, 2]] = np.clip(mapped[[0, 2]], 0, width)
        mapped[[1, 3]] = np.clip(mapped[[1, 3]], 0, height)
        out.append((score, cls, mapped))
    return out


def _run_model(run, batch: np.ndarray, fixed, manifest) -> list[tuple]:
    from builder.exporting.outputs import detections_of

    if isinstance(fixed, int) and fixed > 1:  # a fixed batch: pad with blank images
        batch = np.concatenate([batch, np.zeros((fixed - 1,) + batch.shape[1:], np.uint8)])
    return detections_of(run(batch), manifest.postprocessing.output_format)


def _through_client(folder: pathlib.Path, paths: list[pathlib.Path], url: str, protocol: str) -> list[list[tuple]]:
    """The bundle's own generated client against a running server, as a user runs it."""
    done = subprocess.run([sys.executable, str(folder / "client" / "triton_client.py"), *map(str, paths), "--url", url,
                           "--protocol", protocol, "--json"], capture_output=True, text=True)
    if done.returncode != 0:
        raise UserError(f"the bundle's client failed against {url}: "
                        f"{(done.stderr.strip().splitlines() or ['no message'])[-1]}")
    return [[(d["score"], d["class_id"], np.asarray(d["box"], dtype=np.float32)) for d in result["detections"]]
            for result in json.loads(done.stdout)]


def write_report(result: VerifyResult, destination: pathlib.Path, force: bool = False) -> pathlib.Path:
    """Reference and bundle detections side by side per image: an HTML page, or a PNG grid. An existing file, or
    one that appears while it is drawn, is replaced only with `force`."""
    import base64
    import html
    import io

    from PIL import Image

    from builder.core.files import atomic_file

    destination = check_report_destination(destination, force)
    names = result.class_names
    pairs = [(_drawn(r.path, r.reference, "PyTorch", names), _drawn(r.path, r.bundle, result.runtime, names))
             for r in result.images]
    if destination.suffix.lower() == ".png":
        cell = 480
        grid = Image.new("RGB", (2 * cell, cell * len(pairs)), (255, 255, 255))
        for row, images in enumerate(pairs):
            for col, image in enumerate(images):
                image.thumbnail((cell, cell))
                grid.paste(image, (col * cell, row * cell))
        with atomic_file(destination, replace=force) as f:
            grid.save(f, format="PNG")
        return destination
    rows = []
    for r, images in zip(result.images, pairs):
        encoded = []
        for image in images:
            buffer = io.BytesIO()
            image.thumbnail((640, 640))
            image.save(buffer, format="PNG")
            encoded.append(base64.b64encode(buffer.getvalue()).decode())
        d = r.as_dict()
        rows.append(f"<h2>{html.escape(r.name)}</h2><p>reference {d['reference']}, bundle {d['bundle']}, matched "
                    f"{d['matched']}, recall {d['recall']:.3f}, precision {d['precision']:.3f}, max box deviation "
                    f"{d['max_box_deviation_px']:.3f} px</p>"
                    + "".join(f'<img src="data:image/png;base64,{e}">' for e in encoded))
    verdict = "PASSED" if result.passed else "FAILED: " + "; ".join(result.failures)
    page = (f"<!doctype html><meta charset=utf-8><title>builder verify</title><h1>{html.escape(str(result.bundle))}</h1>"
            f"<p>{html.escape(result.precision)}, {html.escape(result.runtime)} vs PyTorch: {html.escape(verdict)}</p>"
            f"<pre>{html.escape(result.table())}</pre>" + "".join(rows))
    with atomic_file(destination, replace=force) as f:
        f.write(page.encode("utf-8"))
    return destination


def check_report_destination(destination: pathlib.Path, force: bool) -> pathlib.Path:
    """Refuse an unusable report path, or an existing file without `force`, before the images are run."""
    destination = pathlib.Path(destination)
    if destination.suffix.lower() not in (".html", ".png"):
        raise UserError(f"report '{destination}' must end in .html or .png")
    if not destination.resolve().parent.is_dir():
        raise UserError(f"folder '{destination.resolve().parent}' does not exist")
    if destination.is_dir():
        raise UserError(f"report '{destination}' is a folder; give a file name such as report.html")
    if not force and (destination.exists() or destination.is_symlink()):
        raise UserError(f"'{destination}' already exists", hint="pass --force to replace it")
    return destination


def _label(draw, at: tuple[float, float], text: str) -> None:
    """White text on a dark box: legible on any photo (bare white text vanishes on light backgrounds)."""
    left, top, right, bottom = draw.textbbox(at, text)
    draw.rectangle((left - 2, top - 2, right + 2, bottom + 2), fill=(0, 0, 0))
    draw.text(at, text, fill=(255, 255, 255))


def _drawn(path: str, detections: list[tuple], title: str, names: list[str]):
    from PIL import Image, ImageDraw

    image = Image.fromarray(_read(pathlib.Path(path)))
    draw = ImageDraw.Draw(image)
    width = max(2, round(max(image.size) / 300))
    for score, cls, box in detections:
        draw.rectangle([float(v) for v in box], outline=(230, 25, 75), width=width)
        label = names[cls] if 0 <= cls < len(names) else str(cls)
        _label(draw, (float(box[0]) + width, float(box[1]) + width), f"{label} {score:.2f}")
    _label(draw, (8, 8), f"{title}: {len(detections)}")
    return image
