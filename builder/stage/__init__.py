"""The export stage: spec (JSON) in, model.onnx + stage.json + reproduce.sh out. Runs here or in a container.

    python -m builder.stage SPEC.json OUTPUT_DIR

The stage is the only part of a build that needs torch (and TensorRT): model loading, tracing,
quantization and the smoke run. What it learned about the model (signature, preprocessing, thresholds,
class names, the accuracy report) goes into stage.json for the host to render the bundle from. Paths
in the spec are the host's: the docker runner mounts each file at the same absolute path.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import platform
import sys
from dataclasses import dataclass
from typing import Optional

from builder.exporting.spec import ExportSpec

MODEL_FILE = "model.onnx"
PLAN_FILE = "model.plan"
STAGE_FILE = "stage.json"
REPRODUCE_FILE = "reproduce.sh"
STAGE_FORMAT = 1


@dataclass(frozen=True)
class StageOutcome:
    """What a stage left in its output folder, read back by the host."""

    model: pathlib.Path
    result: object  # builder.exporting.result.ExportResult
    versions: dict
    environment: dict  # where the stage ran: runner, python, image
    plan: Optional[pathlib.Path] = None  # the TensorRT engine, when one was asked for
    engine: Optional[dict] = None  # how it was built: TensorRT version, GPU, profile


def stage_request(spec: ExportSpec, engine: Optional[dict] = None) -> dict:
    """The stage's input: the export spec, and the engine profile when a TensorRT engine is to be built."""
    return {"stage_format": STAGE_FORMAT, "export": spec.model_dump(mode="json"), "engine": engine}


def run_stage(request: dict, output: pathlib.Path) -> None:
    """The stage's work, in this process: export and smoke-run the model, describe it in stage.json."""
    from builder.core.version import toolchain_versions
    from builder.stage.export import export_model, load_model, smoke_run
    from builder.core.errors import UserError
    from builder.core.files import atomic_file

    if request.get("stage_format") != STAGE_FORMAT:
        raise RuntimeError(f"stage request format {request.get('stage_format')!r}; this builder reads {STAGE_FORMAT}")
    spec = ExportSpec.model_validate(request["export"])
    output = pathlib.Path(output)
    engine = request.get("engine")
    if engine is not None:
        from builder.engines.tensorrt import tensorrt_version

        if tensorrt_version() is None:
            raise UserError("TensorRT is not installed where the export stage runs",
                            hint="build in the builder image: --runner docker --gpus")
    model = load_model(spec)
    result = export_model(model, output / MODEL_FILE, spec, report_file=False)
    built = None
    if spec.flavour.runs_on_onnxruntime:  # (TensorRT's NMS plugin does not run on ONNX Runtime)
        smoke_run(output / MODEL_FILE, result)
    if engine is not None:
        built = build_plan(output, engine)
    fields = dataclasses.asdict(result)
    fields["output"] = MODEL_FILE
    fields["export_seconds"] = 0.0  # timing is not a property of the model: the same build gives the same file
    description = {"stage_format": STAGE_FORMAT, "result": fields, "engine": built,
                   "versions": toolchain_versions(("builder", "torch", "onnx", "onnxruntime", "numpy", "pillow",
                                                   "tensorrt")),
                   "environment": environment()}
    with atomic_file(output / STAGE_FILE) as f:
        f.write((json.dumps(description, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    with atomic_file(output / REPRODUCE_FILE, mode=0o755) as f:
        f.write(reproduce_script(request).encode("utf-8"))


def build_plan(output: pathlib.Path, engine: dict) -> dict:
    """model.plan from model.onnx; the timing cache lives in builder's cache (per TensorRT version)."""
    from builder.engines.tensorrt import EngineBuildError, build_engine, tensorrt_version
    from builder.core.errors import UserError
    from builder.core.log import notice
    from builder.models.download import cache_dir

    cache = cache_dir().parent / "tensorrt" / f"timing-{tensorrt_version()}.cache"
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        cache = None
    notice(f"building the TensorRT {tensorrt_version()} engine (batch {engine['min_batch']}/{engine['opt_batch']}/"
           f"{engine['max_batch']}, workspace {engine['workspace_gb']:g} GiB) ...")
    try:
        return build_engine(str(output / MODEL_FILE), str(output / PLAN_FILE), engine["min_batch"],
                            engine["opt_batch"], engine["max_batch"], engine["workspace_gb"],
                            str(cache) if cache else None)
    except EngineBuildError as e:
        raise UserError(str(e)) from None


def environment() -> dict:
    """Where the stage ran, seen from inside: the Python, the user, and the network interfaces it had."""
    net = pathlib.Path("/sys/class/net")
    interfaces = sorted(p.name for p in net.iterdir()) if net.is_dir() else []
    return {"python": platform.python_version(), "uid": os.getuid(), "network_interfaces": interfaces}


def reproduce_script(request: dict) -> str:
    spec_json = json.dumps(request, indent=2, sort_keys=True)
    return ("#!/bin/sh\n"
            "# Reruns this export stage with the same spec: writes model.onnx and stage.json into OUTPUT_DIR.\n"
            "# Inside the builder image: docker run --rm --network none -v $PWD:/out IMAGE "
            "python -m builder.stage /out/spec.json /out\n"
            "set -eu\n"
            'out="${1:-.}"\n'
            "cat > \"$out/spec.json\" <<'SPEC'\n"
            f"{spec_json}\n"
            "SPEC\n"
            'exec python -m builder.stage "$out/spec.json" "$out"\n')


def read_outcome(output: pathlib.Path, runner_environment: dict) -> StageOutcome:
    from builder.stage.result import ExportResult

    description = json.loads((pathlib.Path(output) / STAGE_FILE).read_text())
    fields = description["result"]
    fields["output"] = pathlib.Path(output) / MODEL_FILE
    plan = pathlib.Path(output) / PLAN_FILE
    return StageOutcome(pathlib.Path(output) / MODEL_FILE, ExportResult(**fields), description["versions"],
                        {**runner_environment, **description["environment"]}, plan if plan.exists() else None,
                        description.get("engine"))


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point in the container: errors as one 'error:' line (the runner reports the last one).

    SIGTERM (docker stop; as the container's pid 1 the stage is otherwise deaf to it) and Ctrl-C unwind, so
    no temporary file is left in the output folder: `error: terminated` (143) or `error: interrupted` (130).
    """
    import signal

    from builder.core.errors import UserError
    from builder.core.signals import interrupting_signals
    from builder.core.log import configure

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m builder.stage SPEC.json OUTPUT_DIR", file=sys.stderr)
        return 2
    configure(quiet=False)
    with interrupting_signals() as interruptions:
        try:
            try:
                request = json.loads(pathlib.Path(args[0]).read_text())
                run_stage(request, pathlib.Path(args[1]))
            finally:
                interruptions.raising = False
        except (Exception, KeyboardInterrupt) as e:
            interrupted = interruptions.cause_of(e)
            if interrupted is not None:
                terminated = interrupted == signal.SIGTERM
                print(f"error: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
                return 143 if terminated else 130
            if isinstance(e, UserError):
                print(f"error: {e.one_line()}", file=sys.stderr)
                return 2
            # a bug: the traceback for the report, then one line for the runner to show
            import traceback

            traceback.print_exception(e)
            print(f"error: export stage crashed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                  file=sys.stderr)
            return 1
    return 0

