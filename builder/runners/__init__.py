"""Where the export stage runs: in this process (local) or in the pinned builder image (docker)."""
from __future__ import annotations

import pathlib
from typing import Optional

from builder.core.errors import UserError
from builder.core.extras import require
from builder.exporting.spec import ExportSpec

RUNNERS = ("auto", "docker", "local")


class LocalRunner:
    name = "local"

    def run(self, spec: ExportSpec, output: pathlib.Path, engine: Optional[dict] = None):
        require("export")
        from builder.stage import read_outcome, run_stage, stage_request

        run_stage(stage_request(spec, engine), output)
        return read_outcome(output, {"runner": "local"})


def select_runner(runner: str = "auto", image: Optional[str] = None, gpus: bool = False, pull: bool = False,
                  needs_gpu: bool = False):
    """`auto`: docker when an engine answers and a builder image is there (or --pull), else local, with a notice.

    Without --image the image fits the work: the CPU image (model-bundle-builder-cpu) unless the GPU is asked
    for (--gpus) or needed (a TensorRT engine), else the CUDA/TensorRT one (model-bundle-builder); a CPU job
    also runs in the CUDA image when only that one is there.
    """
    from builder.core.log import notice

    if runner not in RUNNERS:
        raise UserError(f"unknown runner '{runner}'", hint="auto, docker or local")
    if runner == "local":
        if image or gpus or pull:
            raise UserError("--image, --gpus and --pull apply to the docker runner: drop them or use --runner docker")
        return LocalRunner()
    from builder.runners.docker_runner import DockerRunner, engine, fitting_images, image_info

    candidates = [image] if image else fitting_images(gpus or needs_gpu)
    if runner == "docker":
        client = engine()
        present = next((c for c in candidates if image_info(client, c)), None)
        if present is None and not pull:  # said now, before any work is announced
            raise UserError(f"image '{candidates[0]}' is not on this Docker engine",
                            hint="build it (containers/README.md) or pass --pull")
        return DockerRunner(present or candidates[0], gpus, pull, client=client)
    try:
        client = engine()
    except UserError as e:
        notice(f"export stage runs here (local): {e.one_line()}")
        return LocalRunner()
    present = next((c for c in candidates if image_info(client, c)), None)
    if present is None and pull:
        present = candidates[0]
    if present is not None:
        notice(f"export stage runs in the docker image {present} (--runner auto)")
        return DockerRunner(present, gpus, pull, client=client)
    named = " or ".join(f"'{c}'" for c in candidates)
    notice(f"export stage runs here (local): no image {named} on the Docker engine")
    return LocalRunner()


def export_with_runner(runner, output: str | pathlib.Path, spec: ExportSpec, replace: bool = True):
    """An export by name through the export stage, on any runner: the stage's ONNX file, moved into place when it
    is whole (`replace=False`: never onto a file that appeared meanwhile), and its accuracy report beside it."""
    import dataclasses
    import time

    from builder.core.files import check_model_destination, parents_made, scratch_folder
    from builder.core.renames import move_file
    from builder.stage.result import save_report

    output = check_model_destination(pathlib.Path(output))
    started = time.monotonic()
    with parents_made(output), scratch_folder(output, "stage") as scratch:  # swept if this process is killed
        stage_dir = scratch / "stage"  # a folder of its own: a runner may keep files beside it (the docker spec)
        stage_dir.mkdir()
        outcome = runner.run(spec, stage_dir)
        move_file(outcome.model, output, replace)
    result = dataclasses.replace(outcome.result, output=output.resolve(), export_seconds=time.monotonic() - started)
    if result.accuracy_report is not None:
        save_report(result.accuracy_report, output)
    return result
