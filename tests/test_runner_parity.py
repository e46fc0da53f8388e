"""One export path for every runner: `builder export` by name runs the export stage whichever runner runs it, so
the local runner and the pinned image give the same file for every option (precision x preprocessing x
postprocessing x format x the NMS flavours that run on a CPU)."""
from __future__ import annotations

import dataclasses
import itertools
import pathlib

import numpy as np
import pytest

import builder
from builder.exporting.nms import flavours

SHAPE = (64, 64)
#: NMS flavours whose graph ONNX Runtime runs (the stage smoke-runs those; the others need TensorRT)
CPU_FLAVOURS = sorted(name for name, flavour in flavours().items() if flavour.runs_on_onnxruntime)
#: the output side: NMS in a format, or no postprocessing (then the format means nothing and is refused)
OUTPUTS = [(True, "batch"), (True, "flat"), (False, None)]
MATRIX = [(precision, preprocessing, postprocessing, fmt, nms)
          for precision, preprocessing, (postprocessing, fmt), nms
          in itertools.product(("fp32", "fp16", "int8"), (True, False), OUTPUTS, CPU_FLAVOURS)]


def _id(case) -> str:
    precision, preprocessing, postprocessing, fmt, nms = case
    return "-".join([precision, "uint8" if preprocessing else "float", fmt or "raw", nms])


def _options(case) -> dict:
    precision, preprocessing, postprocessing, fmt, nms = case
    options = dict(input_image_shape=SHAPE, precision=precision, preprocessing=preprocessing,
                   postprocessing=postprocessing, nms=nms)
    if fmt is not None:
        options["output_predictions_format"] = fmt
    if precision == "int8":
        options["calibration_count"] = 4  # a few crops of the built-in photos: enough to prove the path
    return options


@pytest.fixture(scope="module")
def local_exports(tmp_path_factory) -> dict[str, object]:
    """Every case exported once through the local runner."""
    root = tmp_path_factory.mktemp("local")
    return {_id(case): builder.export("ppyoloe_s", root / f"{_id(case)}.onnx", runner="local", **_options(case))
            for case in MATRIX}


@pytest.mark.parametrize("case", MATRIX, ids=_id)
def test_the_local_runner_exports_every_option_through_the_stage_and_the_file_runs(case, local_exports):
    import onnxruntime as ort

    from builder.core.images import sample_input, to_network_input
    from builder.models.registry import family_of

    result = local_exports[_id(case)]
    precision, preprocessing, postprocessing, fmt, _nms = case
    assert result.precision == precision and result.input_dtype == ("uint8" if preprocessing else "float32")
    assert result.output_predictions_format == fmt
    prep = family_of("ppyoloe_s").preprocessing
    images = sample_input(prep, SHAPE)
    if not preprocessing:
        images = to_network_input(images, prep)
    session = ort.InferenceSession(str(result.output), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {result.input_name: images})
    assert [o.name for o in session.get_outputs()] == result.output_names
    assert all(np.all(np.isfinite(o)) for o in outputs if o.dtype.kind == "f")


def test_builder_export_by_name_runs_the_export_stage_as_the_docker_runner_does(tmp_path, monkeypatch):
    """The local runner used to call the export directly and never reached the stage's smoke run, which fed
    uint8 to a float input: `--no-preprocessing` crashed only in the pinned image."""
    import builder.stage

    calls = []
    real = builder.stage.run_stage
    monkeypatch.setattr(builder.stage, "run_stage", lambda request, output: calls.append(request) or real(request,
                                                                                                          output))
    from builder.cli import main

    assert main(["export", "--model", "ppyoloe_s", "--input-shape", "64x64", "--no-preprocessing", "--runner",
                 "local", "--output", str(tmp_path / "m.onnx")]) == 0
    assert len(calls) == 1 and calls[0]["export"]["preprocessing"] is False
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


@pytest.mark.docker
@pytest.mark.parametrize("case", MATRIX, ids=_id)
def test_the_pinned_image_exports_every_option_to_the_same_file_as_the_local_runner(case, local_exports, tmp_path):
    from docker_engine import IMAGE, engine_with_image

    engine_with_image()
    local = local_exports[_id(case)]
    in_docker = builder.export("ppyoloe_s", tmp_path / "d.onnx", runner="docker", image=IMAGE, **_options(case))
    assert in_docker.output.read_bytes() == pathlib.Path(local.output).read_bytes()
    ignored = {"output", "export_seconds", "accuracy_report"}
    fields = [{k: v for k, v in dataclasses.asdict(r).items() if k not in ignored} for r in (in_docker, local)]
    assert fields[0] == fields[1]
    if local.accuracy_report is not None:  # FP16/INT8: the same comparison against FP32, made in the image
        reports = [{k: v for k, v in r.accuracy_report.items() if k != "path"} for r in (in_docker, local)]
        assert reports[0] == reports[1]
