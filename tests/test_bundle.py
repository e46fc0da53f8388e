"""`builder bundle`: layout, manifest, determinism, rebuild from build.yaml, configs, overrides and refusals."""
from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
import yaml

import builder
from builder.targets.render import SHIPPED, Renderer, pbtxt_string, python_literal
from builder.targets.spec import BundleSpec
from builder.targets.triton import check_config, parse_config, render_config
from builder.core.errors import UserError
from bundle_helpers import (PYTHON, SIZE, assert_same_detections, direct_detections, lively_weights, photo_paths,
                            run_json)

GOLDEN = pathlib.Path(__file__).parent / "data" / "golden"
SHAPE = f"{SIZE[0]}x{SIZE[1]}"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return lively_weights(tmp_path_factory.mktemp("weights") / "yolo_nas_s_lively.pth")


@pytest.fixture(scope="module")
def triton_bundle(weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("b") / "detector"
    result = builder.bundle(out, target="triton", model="yolo_nas_s", weights=str(weights), name="detector",
                            input_image_shape=SIZE, dynamic_batch=True, preferred_batch_sizes=(2, 4), archive=True)
    return result


def _files(folder: pathlib.Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_triton_bundle_has_the_repository_client_and_a_manifest_of_every_file(triton_bundle):
    root = triton_bundle.destination
    assert sorted(_files(root)) == [
        "Dockerfile", "README.md", "build.yaml", "client/requirements.txt", "client/triton_client.py", "manifest.json",
        "model_repository/detector/1/model.onnx", "model_repository/detector/config.pbtxt",
        "model_repository/detector/labels.txt"]
    manifest = json.loads((root / "manifest.json").read_text())
    import hashlib

    for entry in manifest["files"]:
        data = (root / entry["path"]).read_bytes()
        assert (hashlib.sha256(data).hexdigest(), len(data)) == (entry["sha256"], entry["size"])
    assert len(manifest["files"]) == 8
    assert (root / "Dockerfile").read_text().splitlines()[5] == "FROM nvcr.io/nvidia/tritonserver:24.08-py3"
    model = onnx.load(root / "model_repository/detector/1/model.onnx")
    assert [i.name for i in model.graph.input] == [t["name"] for t in manifest["signature"]["inputs"]]
    assert [o.name for o in model.graph.output] == [t["name"] for t in manifest["signature"]["outputs"]]
    assert manifest["model"]["weights"]["sha256"] == hashlib.sha256(pathlib.Path(
        triton_bundle.spec.export.weights).read_bytes()).hexdigest()
    assert {"builder", "torch", "onnx", "onnxruntime"} <= set(manifest["versions"])
    assert manifest["postprocessing"]["output_format"] == "batch" and manifest["precision"] == "fp32"
    labels = (root / "model_repository/detector/labels.txt").read_text().splitlines()
    assert labels == manifest["class_names"] and len(labels) == 80 and labels[0] == "person"


def test_config_is_triton_valid_and_batches_with_the_models_dims(triton_bundle):
    text = (triton_bundle.destination / "model_repository/detector/config.pbtxt").read_text()
    config = parse_config(text, "test")
    assert config.name == "detector" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 8 and list(config.dynamic_batching.preferred_batch_size) == [2, 4]
    assert [list(i.dims) for i in config.input] == [[3, *SIZE]]
    assert {o.name: list(o.dims) for o in config.output} == {
        "num_predictions": [1], "pred_boxes": [1000, 4], "pred_scores": [1000], "pred_classes": [1000]}
    assert json.loads(config.parameters["class_names"].string_value)[:2] == ["person", "bicycle"]


def test_same_spec_and_weights_give_byte_identical_bundles_and_archives(triton_bundle, tmp_path):
    again = builder.bundle(tmp_path / "detector", spec_file=triton_bundle.destination / "build.yaml", archive=True)
    assert _files(again.destination) == _files(triton_bundle.destination)
    assert again.archive.read_bytes() == triton_bundle.archive.read_bytes()


def test_archive_entries_are_sorted_with_fixed_owners_and_times(triton_bundle):
    import tarfile

    with tarfile.open(triton_bundle.archive) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names[0] == "detector" and names == sorted(names, key=lambda n: n.split("/"))
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, 0, "", "")}
    assert "detector/model_repository/detector/1/model.onnx" in names


def test_build_yaml_holds_every_option_and_flags_override_it(triton_bundle, tmp_path):
    data = yaml.safe_load((triton_bundle.destination / "build.yaml").read_text())
    assert set(data["export"]) == set(builder.exporting.spec.ExportSpec.model_fields)
    assert data["triton"]["preferred_batch_sizes"] == [2, 4] and data["name"] == "detector"
    spec = builder.targets.build.resolve_spec(triton_bundle.destination / "build.yaml", name="other", max_batch_size=16)
    assert (spec.model_name, spec.max_batch_size, spec.export.input_image_shape) == ("other", 16, SIZE)


SIGNATURE_BATCH = ([{"name": "images", "dtype": "uint8", "shape": ["batch", 3, 320, 320]}],
                   [{"name": "num_predictions", "dtype": "int64", "shape": ["batch", 1]},
                    {"name": "pred_boxes", "dtype": "float32", "shape": ["batch", 100, 4]},
                    {"name": "pred_scores", "dtype": "float32", "shape": ["batch", 100]},
                    {"name": "pred_classes", "dtype": "int64", "shape": ["batch", 100]}])
SIGNATURE_FLAT = ([{"name": "images", "dtype": "uint8", "shape": [2, 3, 640, 640]}],
                  [{"name": "predictions", "dtype": "float32", "shape": ["num_predictions", 7]}])
SIGNATURE_TENSORRT = ([{"name": "images", "dtype": "uint8", "shape": ["batch", 3, 640, 640]}],
                      [{"name": "num_dets", "dtype": "int32", "shape": ["batch", 1]},
                       {"name": "det_boxes", "dtype": "float32", "shape": ["batch", 300, 4]},
                       {"name": "det_scores", "dtype": "float32", "shape": ["batch", 300]},
                       {"name": "det_classes", "dtype": "int32", "shape": ["batch", 300]}])
GOLDEN_CASES = {
    "config_tensorrt.pbtxt": (dict(target="triton", name="det", export={"model": "yolo_nas_s", "dynamic_batch": True,
                                                                       "engine": "tensorrt"},
                                   triton={"device": "gpu", "max_batch_size": 16}), SIGNATURE_TENSORRT),
    "config_batch_dynamic.pbtxt": (dict(target="triton", name="det", export={"model": "yolo_nas_s", "dynamic_batch": True},
                                        triton={"preferred_batch_sizes": [4, 8], "max_queue_delay_us": 500,
                                                "device": "gpu", "instances": 2, "tensorrt_accelerator": True}),
                                   SIGNATURE_BATCH),
    "config_flat_fixed.pbtxt": (dict(target="triton", name="det", export={"model": "ppyoloe_s", "batch_size": 2,
                                                                         "output_predictions_format": "flat"},
                                     triton={"device": "cpu", "warmup": False}), SIGNATURE_FLAT),
}


def _render_golden(case: str) -> str:
    from builder.targets.triton import config_context

    values, (inputs, outputs) = GOLDEN_CASES[case]
    spec = BundleSpec.create(values)
    platform = "tensorrt_plan" if spec.export.engine == "tensorrt" else "onnxruntime_onnx"
    context = config_context(spec, "det", inputs, outputs, {"class_names": '["a \\"quoted\\" name", "ünï"]'},
                             platform)
    return render_config(Renderer(), spec, inputs, outputs, context)


@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
def test_golden_configs(case):
    """The shipped template for a batching and a non-batching model (no export: the signatures are given).
    After a deliberate template change: BUILDER_REGENERATE_GOLDEN=1 pytest tests/test_bundle.py -k golden"""
    import os

    text = _render_golden(case)
    if os.environ.get("BUILDER_REGENERATE_GOLDEN"):
        GOLDEN.mkdir(exist_ok=True)
        (GOLDEN / case).write_text(text)
    assert text == (GOLDEN / case).read_text()


def test_a_release_team_override_adds_a_rate_limiter(weights, tmp_path):
    templates = tmp_path / "templates" / "triton"
    templates.mkdir(parents=True)
    shipped = (SHIPPED / "triton/config.pbtxt.j2").read_text()
    templates.joinpath("config.pbtxt.j2").write_text(shipped.replace(
        "  kind: {{ instance_group.kind }}\n",
        "  kind: {{ instance_group.kind }}\n  rate_limiter { resources [ { name: \"gpu_slots\" count: 2 } ] }\n"))
    result = builder.bundle(tmp_path / "out", target="triton", model="yolo_nas_s", weights=str(weights),
                            input_image_shape=(160, 160), templates=str(tmp_path / "templates"))
    config = parse_config((result.destination / "model_repository/yolo_nas_s/config.pbtxt").read_text(), "test")
    assert config.instance_group[0].rate_limiter.resources[0].name == "gpu_slots"


@pytest.mark.parametrize("edit, message", [
    (("name: {{ name | pbtxt }}", 'name: "renamed"'), "name: is 'renamed', but the model folder is 'yolo_nas_s'"),
    (("data_type: {{ tensor.data_type }}", "data_type: TYPE_FP32"), "input 'images'.data_type: is TYPE_FP32"),
    (("max_batch_size: {{ max_batch_size }}", "max_batch_size: 4"), "max_batch_size: is 4, but the model's batch"),
    (("platform: {{ platform | pbtxt }}", "platform: {{ platform | pbtxt }}\nnot_a_field: 1"), "not a valid Triton model config"),
    (("{% endfor %}", "{% endfor"), "line"),
    (("{{ name | pbtxt }}", "{{ nmae | pbtxt }}"), "'nmae' is undefined"),
])
def test_a_bad_override_is_refused_with_the_field_and_leaves_nothing(edit, message, tmp_path):
    templates = tmp_path / "t" / "triton"
    templates.mkdir(parents=True)
    shipped = (SHIPPED / "triton/config.pbtxt.j2").read_text()
    assert edit[0] in shipped
    templates.joinpath("config.pbtxt.j2").write_text(shipped.replace(edit[0], edit[1], 1))
    with pytest.raises(UserError, match="override") as e:
        builder.bundle(tmp_path / "out", target="triton", model="yolo_nas_s", input_image_shape=(64, 64),
                       templates=str(tmp_path / "t"))
    assert message in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]  # no bundle, no staging folder


def test_a_tensorrt_bundle_needs_tensorrt_where_the_stage_runs(tmp_path):
    pytest.importorskip("numpy")
    from builder.engines.tensorrt import tensorrt_version

    if tensorrt_version() is not None:
        pytest.skip("TensorRT is installed here: the gpu tests build engines")
    with pytest.raises(UserError, match="TensorRT is not installed where the export stage runs") as e:
        builder.bundle(tmp_path / "out", target="triton", model="yolo_nas_s", engine="tensorrt", runner="local",
                       input_image_shape=(64, 64))
    assert "--runner docker --gpus" in e.value.one_line()
    assert list(tmp_path.iterdir()) == []


def test_the_engine_script_bundles_carry_runs_without_builder(tmp_path):
    """build_engine.py is builder/engines/tensorrt.py itself: standard library and tensorrt only."""
    from builder.engines import tensorrt as engine_module

    script = tmp_path / "build_engine.py"
    shutil.copyfile(engine_module.__file__, script)
    done = subprocess.run([sys.executable, "-I", str(script), "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0 and "--max-batch" in done.stdout
    source = script.read_text()
    imports = {line.split()[1].split(".")[0] for line in source.splitlines()
               if line.strip().startswith(("import ", "from ")) and not line.startswith("from __future__")}
    assert imports <= {"argparse", "json", "os", "sys", "tempfile", "time", "tensorrt", "torch"}


def test_an_override_that_matches_no_template_is_refused(tmp_path):
    (tmp_path / "triton").mkdir()
    (tmp_path / "triton" / "confg.pbtxt.j2").write_text("")
    with pytest.raises(UserError, match="matches no shipped template") as e:
        Renderer(tmp_path)
    assert "triton/config.pbtxt.j2" in e.value.one_line()


@pytest.mark.parametrize("options, message", [
    (dict(name="../evil"), "not a valid model name"),
    (dict(name="a b"), "not a valid model name"),
    (dict(serving_image="evil\nRUN rm -rf /"), "is not an image reference"),
    (dict(preferred_batch_sizes=(4,)), "only for the batch format with --dynamic-batch"),
    (dict(dynamic_batch=True, max_batch_size=4, preferred_batch_sizes=(8,)), "exceed max_batch_size 4"),
    (dict(tensorrt_accelerator=True, device="cpu"), "TensorRT accelerator runs on GPUs"),
    (dict(engine="tensorrt", target="standalone"), "needs --target triton"),
    (dict(engine="tensorrt", tensorrt_accelerator=True), "already is a TensorRT engine"),
    (dict(workspace_gb=2), "TensorRT build options apply to --engine tensorrt only"),
    (dict(postprocessing=False), "drop --no-preprocessing and --no-postprocessing"),
    (dict(target="standalone", instances=2), "Triton options apply to --target triton or kserve only"),
    (dict(nonsense=1), "unknown option 'nonsense'"),
])
def test_impossible_specs_are_refused(options, message, tmp_path):
    options = {"target": "triton", "model": "yolo_nas_s", **options}
    with pytest.raises(UserError) as e:
        builder.bundle(tmp_path / "out", **options)
    assert message in str(e.value)
    assert not (tmp_path / "out").exists()


def test_an_existing_destination_is_refused_unless_forced(weights, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(UserError, match="already exists"):
        builder.bundle(out, target="standalone", model="yolo_nas_s", input_image_shape=(64, 64))
    assert (out / "old.txt").exists()
    builder.bundle(out, target="standalone", model="yolo_nas_s", input_image_shape=(64, 64), force=True)
    assert not (out / "old.txt").exists() and (out / "model.onnx").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("labels, message", [
    ("person\nbad\x1bname\n" + "x\n" * 78, "holds control characters"),
    ("only\ntwo\n", "has 2 class names; the model has 80 classes"),
])
def test_bad_labels_are_refused(labels, message, tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text(labels)
    with pytest.raises(UserError) as e:
        builder.bundle(tmp_path / "out", target="triton", model="yolo_nas_s", labels=str(path), input_image_shape=(64, 64))
    assert message in str(e.value)


def test_labels_with_quotes_and_unicode_reach_config_and_client_intact(tmp_path):
    names = ['say "hi"', "back\\slash", "ünïcödé ☃", "{{ name }}", "it's"] + [f"c{i}" for i in range(75)]
    path = tmp_path / "labels.txt"
    path.write_text("\n".join(names) + "\n", encoding="utf-8")
    result = builder.bundle(tmp_path / "out", target="triton", model="yolo_nas_s", labels=str(path),
                            input_image_shape=(64, 64))
    config = parse_config((result.destination / "model_repository/yolo_nas_s/config.pbtxt").read_text(), "test")
    assert json.loads(config.parameters["class_names"].string_value) == names
    namespace: dict = {}
    source = (result.destination / "client/triton_client.py").read_text()
    exec(compile(source.split("\nclass UserError")[0], "client", "exec"), namespace)
    assert namespace["CLASS_NAMES"] == names


def test_escaping_filters():
    assert pbtxt_string('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'
    assert parse_config("name: " + pbtxt_string('ü"'), "t").name == 'ü"'
    assert python_literal(["a'b", 1, 2.5, None, True, {"k": (1,)}]) == "[\"a'b\", 1, 2.5, None, True, {'k': (1,)}]"
    with pytest.raises(ValueError):
        python_literal(float("nan"))
    with pytest.raises(ValueError):
        python_literal(object())


def test_check_config_refuses_a_warmup_for_an_unknown_input():
    inputs = [{"name": "images", "dtype": "uint8", "shape": [1, 3, 64, 64]}]
    outputs = [{"name": "predictions", "dtype": "float32", "shape": ["n", 7]}]
    text = ('name: "m" platform: "onnxruntime_onnx" max_batch_size: 0 '
            'input { name: "images" data_type: TYPE_UINT8 dims: [1, 3, 64, 64] } '
            'output { name: "predictions" data_type: TYPE_FP32 dims: [-1, 7] } '
            'model_warmup { name: "w" batch_size: 1 inputs { key: "pixels" value { data_type: TYPE_UINT8 dims: [1] zero_data: true } } }')
    with pytest.raises(UserError, match="'pixels' is not an input of the model"):
        check_config(parse_config(text, "t"), "m", inputs, outputs, "t")


def test_cli_bundle_needs_a_target_and_prints_how_to_serve(tmp_path):
    done = subprocess.run([sys.executable, "-m", "builder", "bundle", "--model", "yolo_nas_s"], capture_output=True,
                          text=True)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "error: missing --target (triton, standalone, kserve), or a --spec build.yaml that names it"]
    done = subprocess.run([sys.executable, "-m", "builder", "bundle", "--target", "triton", "--model", "yolo_nas_s",
                           "--input-shape", "64", "--output", str(tmp_path / "b")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"tritonserver --model-repository {tmp_path / 'b' / 'model_repository'}" in done.stdout
    done = subprocess.run([sys.executable, "-m", "builder", "bundle", "--target", "triton", "--model", "yolo_nas_s",
                           "--input-shape", "64", "--output", str(tmp_path / "b")], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip() == f"error: '{tmp_path / 'b'}' already exists (pass --force to replace it)"


@pytest.fixture(scope="module")
def standalone_bundle(weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("s") / "standalone"
    return builder.bundle(out, target="standalone", model="yolo_nas_s", weights=str(weights), input_image_shape=SIZE,
                          output_predictions_format="flat", dynamic_batch=True)


def test_standalone_runs_in_a_fresh_venv_from_its_requirements(standalone_bundle, tmp_path):
    root = standalone_bundle.destination
    assert sorted(_files(root)) == ["README.md", "build.yaml", "infer.py", "labels.txt", "manifest.json",
                                    "model.onnx", "requirements.txt"]
    venv = tmp_path / "venv"
    subprocess.run([PYTHON, "-m", "venv", str(venv)], check=True)
    install = subprocess.run([str(venv / "bin/pip"), "install", "--quiet", "-r", str(root / "requirements.txt")],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]
    paths = photo_paths()
    printed = run_json([str(venv / "bin/python"), str(root / "infer.py"), *paths, "--json", "--save", str(tmp_path / "drawn")])
    names = json.loads((root / "manifest.json").read_text())["class_names"]
    assert_same_detections(printed, direct_detections(root / "model.onnx", paths, "yolo_nas_s", names))
    from PIL import Image

    drawn = np.asarray(Image.open(tmp_path / "drawn" / "grace_hopper.png").convert("RGB"))
    original = np.asarray(Image.open(paths[0]).convert("RGB"))
    assert drawn.shape == original.shape and (drawn != original).any(axis=2).mean() > 0.001


def test_standalone_infer_refuses_a_missing_image_in_one_line(standalone_bundle):
    done = subprocess.run([PYTHON, str(standalone_bundle.destination / "infer.py"), "/no/such.jpg"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip().startswith("error: cannot read image '/no/such.jpg'")
    assert "Traceback" not in done.stderr


def test_rendering_is_separate_from_the_atomic_move(tmp_path):
    """A bundle interrupted after its export leaves no staging folder behind."""
    from builder.core.files import staged_folder

    with pytest.raises(KeyboardInterrupt):
        with staged_folder(tmp_path / "dest", force=False) as staging:
            (staging / "half.txt").write_text("x")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_a_quantized_bundle_carries_its_accuracy_report(tmp_path):
    result = builder.bundle(tmp_path / "half", target="standalone", model="yolo_nas_s", precision="fp16",
                            input_image_shape=(96, 96))
    manifest = json.loads((result.destination / "manifest.json").read_text())
    report = json.loads((result.destination / "accuracy.json").read_text())
    assert manifest["precision"] == report["precision"] == "fp16" and "path" not in report
    assert manifest["accuracy"] == {"report": "accuracy.json", "recall": report["detections"]["recall"],
                                    "meets_target": report["meets_target"]}
    assert "accuracy.json" in {f["path"] for f in manifest["files"]}
    assert not list(result.destination.glob("*.accuracy.json"))
