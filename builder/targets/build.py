"""`builder bundle`: spec -> export -> rendered files -> checks -> manifest -> atomic move into place."""
from __future__ import annotations

import contextlib
import copy
import json
import os
import pathlib
import shutil
import stat
import tempfile
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from builder.targets.spec import (BundleSpec, TensorRTOptions, TritonOptions, check_bundle_inputs, merge,
                                  read_spec_file)
from builder.core.errors import UserError, did_you_mean
from builder.targets.base import sample_image
from builder.core.log import notice, warn
from builder.exporting.spec import ExportSpec

if TYPE_CHECKING:
    from builder.core.manifest import BundleManifest

DEFAULT_OUTPUT_ROOT = "bundles"
MAX_LABEL_LENGTH = 200
REQUEST_BATCH_UNBATCHED = 8  # images per request when the model takes any batch but Triton does not batch


@dataclass(frozen=True)
class BundleResult:
    destination: pathlib.Path
    spec: BundleSpec
    manifest: "BundleManifest"
    archive: Optional[pathlib.Path]
    usage: str

    def __str__(self) -> str:
        return self.usage

    __repr__ = __str__


def resolve_spec(spec_file: str | pathlib.Path | None = None, **options: Any) -> BundleSpec:
    """A BundleSpec from a build.yaml (optional) with `options` on top; flat options are routed by name."""
    base = read_spec_file(spec_file) if spec_file is not None else {}
    return BundleSpec.create(merge(base, route_options(options)))


def route_options(options: dict[str, Any]) -> dict[str, Any]:
    """Flat keyword options (as the CLI and `builder.bundle()` take them) -> the nested spec layout."""
    from builder.targets.spec import target_sections

    sections = {"export": ExportSpec, "triton": TritonOptions, "tensorrt": TensorRTOptions}
    sections.update({target.options[0]: target.options[1] for target in target_sections().values()})
    top = set(BundleSpec.model_fields) - set(sections)
    routed: dict[str, Any] = {}
    for key, value in options.items():
        if key in sections and isinstance(value, dict):
            routed[key] = {**routed.get(key, {}), **value}
        elif key in top:
            routed[key] = value
        elif key == "engine":  # SuperGradients' shorthand for nms + runtime (see ExportSpec)
            routed.setdefault("export", {})[key] = value
        else:
            section = next((name for name, model in sections.items() if key in model.model_fields), None)
            if section is None:
                known = sorted(top | {"engine"} | {f for model in sections.values() for f in model.model_fields})
                raise UserError(f"unknown option '{key}'", hint=did_you_mean(key, known))
            routed.setdefault(section, {})[key] = value
    return routed


def bundle(output: str | pathlib.Path | None = None, spec_file: str | pathlib.Path | None = None,
           force: bool = False, archive: bool = False, runner: str = "auto", image: Optional[str] = None,
           gpus: bool = False, pull: bool = False, **options: Any) -> BundleResult:
    """Build a bundle (the Python side of `builder bundle`); options are the spec's fields, flat or nested.

    `runner`, `image`, `gpus` and `pull` say where the export stage runs (see builder.runners).
    """
    from builder.core.files import check_folder_destination
    from builder.runners import select_runner

    spec = resolve_spec(spec_file, **options)
    check_bundle_inputs(spec)  # a missing input is one line now, not after choosing a runner and exporting
    destination = pathlib.Path(output) if output is not None else pathlib.Path(DEFAULT_OUTPUT_ROOT) / spec.model_name
    check_folder_destination(destination, force)
    archive_path = destination.with_name(destination.name + ".tar.gz") if archive else None
    if archive_path is not None:
        check_archive_destination(archive_path, force)
    chosen = select_runner(runner, image, gpus, pull, needs_gpu=spec.export.serving.builds_plan)
    return build_bundle(spec, destination, force, archive_path, chosen)


def build_bundle(spec: BundleSpec, destination: pathlib.Path, force: bool,
                 archive_path: Optional[pathlib.Path], runner) -> BundleResult:
    """Build into a staging folder and move it into place; with `archive_path` the archive follows the folder, so
    the two land together or not at all (a folder whose archive cannot follow it is taken back)."""
    from builder.core.archive import write_archive
    from builder.core.files import parents_made, scratch_folder, staged_folder
    from builder.targets.render import Renderer

    target = spec.target_class(spec)
    renderer = Renderer(spec.templates)  # a bad override folder fails before the (slow) export
    labels = read_labels(spec.labels) if spec.labels is not None else None
    with contextlib.ExitStack() as stack:
        archive_file = None
        if archive_path is not None:  # made in a scratch folder of its own, which outlives the folder's staging
            stack.enter_context(parents_made(archive_path))
            archive_file = stack.enter_context(scratch_folder(archive_path, "tmp")) / archive_path.name
        with staged_folder(destination, force) as staging:
            manifest = _fill(spec, target, renderer, labels, runner, staging)
            if archive_file is not None:  # its top folder is named like the destination, not the staging folder
                write_archive(staging, archive_file, root=destination.name)
                check_archive_destination(archive_path, force)  # the last look before the folder lands
                landed = os.stat(staging)
        if archive_file is not None:
            _place_archive(archive_file, archive_path, force, destination, landed)
    notice(f"bundle written to {destination}" + (f" (archive {archive_path})" if archive_path else ""))
    return BundleResult(destination.resolve(), spec, manifest, archive_path, target.usage(destination))


def _fill(spec: BundleSpec, target, renderer, labels: Optional[list[str]], runner,
          staging: pathlib.Path) -> "BundleManifest":
    """Export the model and render the bundle's files into `staging`; returns the manifest written there."""
    from builder.core.manifest import write_manifest

    stage_dir = pathlib.Path(tempfile.mkdtemp(prefix=f".{staging.name}.", suffix=".stage", dir=staging.parent))
    try:
        notice(f"exporting {spec.export.model} ({spec.export.precision}) with the {runner.name} runner ...")
        engine = spec.engine_profile if spec.export.serving.builds_plan else None
        outcome = runner.run(spec.export, stage_dir, engine)
        for produced, relative in target.stage_files(outcome).items():
            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(produced, staging / relative)
    finally:
        shutil.rmtree(stage_dir, ignore_errors=True)
    result = outcome.result
    class_names = resolve_class_names(spec, result, labels)
    context = template_context(spec, result, class_names, target.model_file, outcome.versions)
    target.render(renderer, copy.deepcopy(context), staging)  # what rendering does stays out of the manifest
    if context["sample_image"]:
        from builder.models.demo import IMAGE

        (staging / context["sample_image"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(IMAGE, staging / context["sample_image"])
    _write(staging / "build.yaml", spec.to_yaml())
    if result.accuracy_report is not None:
        report = {k: v for k, v in result.accuracy_report.items() if k != "path"}
        _write(staging / "accuracy.json", json.dumps(report, indent=2) + "\n")
    description = manifest_description(spec, result, class_names, context["versions"])
    description["stage"] = outcome.environment
    if outcome.engine is not None:
        description["tensorrt"] = outcome.engine
    return write_manifest(staging, description)


def check_archive_destination(archive_path: pathlib.Path, force: bool) -> None:
    """Refuse what is at the archive's path: anything without `force`; with it, a folder (a file never replaces
    one)."""
    try:
        mode = os.lstat(archive_path).st_mode
    except FileNotFoundError:
        return
    if not force:
        raise UserError(f"'{archive_path}' already exists", hint="pass --force to replace it")
    if stat.S_ISDIR(mode):
        raise UserError(f"'{archive_path}' exists and is not a file")


def _place_archive(archive_file: pathlib.Path, archive_path: pathlib.Path, force: bool, destination: pathlib.Path,
                   landed: os.stat_result) -> None:
    """Move the archive beside the bundle folder that has just landed. Where it cannot go (its name was taken at
    the last moment), the folder is taken back, so that no folder is left without the archive asked for."""
    from builder.core.renames import move_file

    try:
        try:
            move_file(archive_file, archive_path, replace=force)
        except IsADirectoryError:  # with --force: a folder appeared there at the last moment
            raise UserError(f"'{archive_path}' exists and is not a file") from None
    except BaseException:
        _take_back(destination, landed, archive_file.parent)
        raise


def _take_back(destination: pathlib.Path, landed: os.stat_result, scratch: pathlib.Path) -> None:
    """Remove the folder this build placed at `destination` (the one whose identity is `landed`); a folder that
    another process put there meanwhile is given back its place."""
    from builder.core.renames import rename_no_replace

    taken = scratch / "taken-back"
    try:
        rename_no_replace(destination, taken)
    except OSError:
        return  # gone, or not a folder of ours to move
    now = os.lstat(taken)
    if (now.st_dev, now.st_ino) != (landed.st_dev, landed.st_ino):
        with contextlib.suppress(OSError):
            rename_no_replace(taken, destination)
        return
    shutil.rmtree(taken, ignore_errors=True)


def read_labels(path: str) -> list[str]:
    try:
        text = pathlib.Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read labels file '{path}': {e}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def resolve_class_names(spec: BundleSpec, result, labels: Optional[list[str]]) -> list[str]:
    """--labels, else the checkpoint's names, else COCO's for 80 classes, else class_<i> (with a warning)."""
    from builder.models.coco import COCO_CLASS_NAMES

    num_classes = result.num_classes
    if labels is not None:
        names, source = labels, f"labels file '{spec.labels}'"
    elif result.class_names:
        names, source = list(result.class_names), "the checkpoint"
    elif num_classes == len(COCO_CLASS_NAMES):
        names, source = list(COCO_CLASS_NAMES), "COCO"
        if spec.export.weights not in (None, "coco"):
            warn("the checkpoint has no class names: using COCO's 80 (give --labels FILE if they are not)")
    else:
        names, source = [f"class_{i}" for i in range(num_classes)], "class_<index>"
        warn(f"the checkpoint has no class names: labelling them class_0..class_{num_classes - 1} "
             f"(give --labels FILE)")
    if len(names) != num_classes:
        raise UserError(f"{source} has {len(names)} class names; the model has {num_classes} classes")
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name or len(name) > MAX_LABEL_LENGTH:
            raise UserError(f"class name {i} from {source} must be text of 1-{MAX_LABEL_LENGTH} characters")
        if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in name):
            raise UserError(f"class name {i} from {source} ({name!r}) holds control characters")
    return names


def template_context(spec: BundleSpec, result, class_names: list[str], model_file: str, stage_versions: dict) -> dict:
    from builder.core.version import __version__
    from builder.core.version import toolchain_versions
    from builder.models.registry import family_of

    prep = family_of(result.model).preprocessing
    height, width = result.input_shape[2:]
    fixed_batch = result.batch_size
    if spec.target_class.triton_options and spec.max_batch_size > 0:
        request_batch = spec.max_batch_size
    else:
        request_batch = fixed_batch or REQUEST_BATCH_UNBATCHED
    # copies: templates and targets get values of their own, never the lists and dicts the manifest is built from
    return copy.deepcopy({
        "name": spec.model_name, "model": result.model, "version": spec.version, "target": spec.target,
        "precision": result.precision, "builder_version": __version__,
        "output_format": result.output_predictions_format,
        "input": result.inputs[0], "input_height": height, "input_width": width,
        "outputs": result.outputs, "output_names": result.output_names,
        "batch_size": fixed_batch, "request_batch": request_batch, "max_batch_size": spec.max_batch_size,
        "class_names": class_names, "preprocessing": dict(prep.__dict__), "resize": result.resize,
        "nms": nms_settings(result), "model_file": model_file,
        "sample_image": sample_image(spec),
        # what built the model (the stage's toolchain), plus the host's client library the Triton client pins
        "versions": {**stage_versions, **toolchain_versions(("tritonclient",))},
    })


def nms_settings(result) -> dict:
    return {"confidence_threshold": result.confidence_threshold, "iou_threshold": result.nms_threshold,
            "pre_nms_top_k": result.num_pre_nms_predictions, "max_detections": result.max_predictions_per_image,
            "class_aware": True, "output_format": result.output_predictions_format}


def manifest_description(spec: BundleSpec, result, class_names: list[str], versions: dict) -> dict:
    from builder.models.registry import family_of

    family = family_of(result.model)
    description = {
        "name": spec.model_name, "version": spec.version, "target": spec.target,
        "model": {"variant": result.model, "family": family.name, "num_classes": len(class_names),
                  "weights": weights_record(result.model, spec.export.weights)},
        "precision": result.precision,
        "nms": result.nms,
        "runtime": result.runtime,
        "signature": {"inputs": result.inputs, "outputs": result.outputs},
        "preprocessing": {**family.preprocessing.__dict__, "in_graph": result.preprocessing_steps,
                          "resize_description": result.resize},
        "postprocessing": nms_settings(result),
        "class_names": class_names,
        "versions": versions,
    }
    if result.accuracy_report is not None:
        description["accuracy"] = {"report": "accuracy.json", "recall": result.accuracy_report["detections"]["recall"],
                                   "meets_target": result.accuracy_report["meets_target"]}
    return description


def weights_record(variant: str, weights: Optional[str]) -> dict:
    """Where the weights came from and their sha256: the bundle names exactly what it was built from."""
    if weights is None:
        from builder.models.registry import RANDOM_WEIGHTS_SEED

        return {"source": "random", "seed": RANDOM_WEIGHTS_SEED}
    from builder.core.hashing import sha256_of
    from builder.models.registry import resolve_weights

    return {"source": weights, "sha256": sha256_of(resolve_weights(variant, weights))}


def _write(path: pathlib.Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
