"""Spec bounds and early checks: sizes that would allocate terabytes, hostile build.yaml files, missing inputs
and an existing output are one line before any slow work."""
from __future__ import annotations

import subprocess
import sys

import pytest

import builder
from builder.core.errors import UserError
from builder.exporting import spec as export_spec
from builder.exporting.spec import ExportSpec, check_inputs
from builder.targets import spec as bundle_spec
from builder.targets.build import resolve_spec
from builder.targets.spec import BundleSpec, check_bundle_inputs, read_spec_file

NO_WEIGHTS_WARNING = "randomly initialised"  # printed when a model is built: the slow work has begun


def _builder(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "builder", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The whole of stderr, which must be exactly one `error:` line and no traceback."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: "), proc.stderr
    return proc.stderr.rstrip("\n")


def _refused(**values) -> str:
    with pytest.raises(UserError) as e:
        ExportSpec.create(model="yolo_nas_s", **values)
    return e.value.one_line()


# 1. bounds ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("values, message", [
    ({"input_image_shape": (99968, 99968)}, "invalid input_image_shape: height and width must be multiples of 32 "
                                            "and at most 4096, got 99968x99968"),
    ({"input_image_shape": (640, 4128)}, "at most 4096, got 640x4128"),
    ({"batch_size": 100_000_000}, "invalid batch_size: Input should be less than or equal to 1024"),
    ({"num_classes": 100_000_000}, "invalid num_classes: Input should be less than or equal to 10000"),
    ({"num_pre_nms_predictions": 100_001}, "invalid num_pre_nms_predictions: Input should be less than or equal to "
                                           "100000"),
    ({"max_predictions_per_image": 10_001, "num_pre_nms_predictions": 20_000},
     "invalid max_predictions_per_image: Input should be less than or equal to 10000"),
    ({"calibration_count": 10_001, "precision": "int8"}, "invalid calibration_count: Input should be less than or "
                                                         "equal to 10000"),
    ({"batch_size": 1024}, "batch_size x height x width is 1024 x 640 x 640"),
])
def test_sizes_that_would_allocate_terabytes_are_refused_by_the_spec(values, message):
    assert message in _refused(**values)


def test_the_bounds_themselves_are_accepted():
    ExportSpec.create(model="yolo_nas_s", input_image_shape=(4096, 4096))
    ExportSpec.create(model="yolo_nas_s", input_image_shape=(160, 160), batch_size=1024)
    ExportSpec.create(model="yolo_nas_s", batch_size=64)  # 64 images of the family's 640x640
    ExportSpec.create(model="yolo_nas_s", num_classes=10_000, num_pre_nms_predictions=100_000,
                      max_predictions_per_image=10_000)
    ExportSpec.create(model="yolo_nas_s", precision="int8", calibration_count=10_000)


@pytest.mark.parametrize("values", [
    {"max_batch_size": 1025}, {"preferred_batch_sizes": (4, 2048)}, {"instances": 65}, {"opt_batch": 1025},
    {"version": 2 ** 31},
])
def test_triton_and_bundle_sizes_are_bounded(values):
    with pytest.raises(UserError, match="less than or equal to|at most"):
        resolve_spec(target="triton", model="yolo_nas_s", dynamic_batch=True, **values)


def test_every_bound_is_stated_in_the_field_description_which_is_the_cli_help():
    fields = ExportSpec.model_fields
    for name, bound in (("input_image_shape", export_spec.MAX_INPUT_SIDE), ("batch_size", export_spec.MAX_BATCH_SIZE),
                        ("num_classes", export_spec.MAX_NUM_CLASSES),
                        ("num_pre_nms_predictions", export_spec.MAX_PRE_NMS_PREDICTIONS),
                        ("max_predictions_per_image", export_spec.MAX_PREDICTIONS_PER_IMAGE),
                        ("calibration_count", export_spec.MAX_CALIBRATION_COUNT)):
        assert str(bound) in fields[name].description, name
    triton = bundle_spec.TritonOptions.model_fields
    assert str(export_spec.MAX_BATCH_SIZE) in triton["max_batch_size"].description
    assert str(export_spec.MAX_BATCH_SIZE) in triton["preferred_batch_sizes"].description
    help_text = " ".join(_builder("export", "--help").stdout.split())
    assert "32-4096" in help_text and "at most 10000" in help_text and "1-1024" in help_text


@pytest.mark.parametrize("args, message", [
    (["--input-shape", "99968x99968"], "error: invalid input_image_shape: height and width must be multiples of 32 "
                                       "and at most 4096"),
    (["--batch-size", "100000000"], "error: invalid batch_size: Input should be less than or equal to 1024"),
    (["--num-classes", "100000000"], "error: invalid num_classes: Input should be less than or equal to 10000"),
])
def test_huge_sizes_on_the_command_line_are_one_line_before_any_work(args, message, tmp_path):
    line = _one_error_line(_builder("export", "--model", "yolo_nas_s", "--output", str(tmp_path / "x.onnx"), *args))
    assert line.startswith(message) and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("values, field", [
    ({"batch_size": 2.0}, "batch_size"), ({"batch_size": 3.5}, "batch_size"), ({"batch_size": True}, "batch_size"),
    ({"batch_size": "1e29"}, "batch_size"), ({"batch_size": 1e29}, "batch_size"),
    ({"num_classes": True}, "num_classes"), ({"input_image_shape": (640.0, 640)}, "input_image_shape.0"),
    ({"onnx_opset": 18.0}, "onnx_opset"), ({"confidence_threshold": True}, "confidence_threshold"),
    ({"dynamic_batch": 1}, "dynamic_batch"),
])
def test_numbers_of_the_wrong_kind_are_refused_not_converted(values, field):
    assert _refused(**values).startswith(f"invalid {field}: ")


@pytest.mark.parametrize("text, field", [
    ("batch_size: 1e29", "export.batch_size"), ("batch_size: 1.0e+29", "export.batch_size"),
    ("batch_size: 2.0", "export.batch_size"), ("batch_size: 3.5", "export.batch_size"),
    ("batch_size: true", "export.batch_size"), ("num_classes: 8.0", "export.num_classes"),
    ("input_image_shape: [640.0, 640]", "export.input_image_shape.0"),
])
def test_build_yaml_floats_and_booleans_for_counts_are_refused(text, field, tmp_path):
    spec_file = tmp_path / "build.yaml"
    spec_file.write_text(f"target: standalone\nexport:\n  model: yolo_nas_s\n  {text}\n")
    with pytest.raises(UserError, match=f"^invalid {field}: "):
        resolve_spec(spec_file)


def test_a_resolved_spec_reads_back_from_its_own_yaml(tmp_path):
    spec = resolve_spec(target="triton", model="yolo_nas_s", input_image_shape=(320, 256),
                                              dynamic_batch=True, preferred_batch_sizes=(2, 4))
    (tmp_path / "build.yaml").write_text(spec.to_yaml())
    assert BundleSpec.create(read_spec_file(tmp_path / "build.yaml")) == spec


# 2. hostile build.yaml ---------------------------------------------------------------------------------------

LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))


@pytest.mark.parametrize("text, message", [
    ("1: 2\ntarget: triton\n", "line 1: key 1 is not text"),
    ("target: triton\nexport:\n  model: yolo_nas_s\n  3: x\n", "line 4: key 3 is not text"),
    ("target: triton\n[1, 2]: x\n", "line 2: key [1, 2] is not text"),
    ("- target: triton\n", "must hold a mapping of options"),
    ("target: triton\ntarget: standalone\n", "line 2: 'target' is given twice (first on line 1)"),
    ("target: triton\nexport:\n  model: yolo_nas_s\n  batch_size: 1\n  batch_size: 2\n",
     "line 5: 'batch_size' is given twice (first on line 4)"),
    (LAUGHS, "line 2: YAML aliases (*a) are not allowed"),
    ("target: triton\nexport: " + "[" * 100_000 + "]" * 100_000 + "\n", "nests deeper than"),
    ("base: &b {model: yolo_nas_s}\nexport:\n  <<: *b\n", "YAML aliases (*b) are not allowed"),
    ("target: triton\nexport:\n  <<: {model: yolo_nas_s}\n", "line 3: merge keys (<<) are not allowed"),
])
def test_a_hostile_build_yaml_is_one_line(text, message, tmp_path):
    spec_file = tmp_path / "build.yaml"
    spec_file.write_text(text)
    with pytest.raises(UserError) as e:
        read_spec_file(spec_file)
    assert message in e.value.one_line()
    line = _one_error_line(_builder("bundle", "--spec", str(spec_file), "--runner", "local", "--output",
                                    str(tmp_path / "out")))
    assert line == f"error: {e.value.one_line()}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build.yaml"]


def test_a_huge_build_yaml_is_refused_without_reading_it_all(tmp_path):
    spec_file = tmp_path / "build.yaml"
    with spec_file.open("w") as f:
        f.write("target: triton\n")
        f.truncate(50 * 2 ** 20)  # 50 MB: a sparse file of NULs past the first line
    line = _one_error_line(_builder("bundle", "--spec", str(spec_file), "--runner", "local", "--output",
                                    str(tmp_path / "out")))
    assert line == (f"error: spec file '{spec_file}' is larger than 1 MiB (a build.yaml is a few hundred bytes: "
                    f"is it the right file?)")
    assert bundle_spec.MAX_SPEC_FILE_BYTES == 2 ** 20


# 3. detections beyond the candidates -------------------------------------------------------------------------

def test_more_detections_than_candidates_is_refused_with_the_fix(tmp_path):
    line = _one_error_line(_builder("export", "--model", "yolo_nas_s", "--output", str(tmp_path / "x.onnx"),
                                    "--pre-nms-top-k", "5", "--max-detections", "100"))
    assert line == ("error: invalid options: max_predictions_per_image (100) exceeds num_pre_nms_predictions (5): at "
                    "most 5 detections can exist; lower --max-detections or raise --pre-nms-top-k")
    assert "exceeds num_pre_nms_predictions (1000)" in _refused(max_predictions_per_image=2000)


def test_the_default_detection_count_follows_a_lower_candidate_count():
    assert ExportSpec.create(model="yolo_nas_s").max_predictions_per_image == 1000
    assert ExportSpec.create(model="yolo_nas_s", num_pre_nms_predictions=50).max_predictions_per_image == 50
    assert ExportSpec.create(model="yolo_nas_s", num_pre_nms_predictions=5000).max_predictions_per_image == 1000
    spec = ExportSpec.create(model="yolo_nas_s", num_pre_nms_predictions=50, max_predictions_per_image=20)
    assert spec.max_predictions_per_image == 20
    resolved = ExportSpec.create(model="yolo_nas_s", num_pre_nms_predictions=50)
    assert ExportSpec.create(**resolved.model_dump()) == resolved  # what build.yaml holds validates again as it is


# 4. every input path before the export ----------------------------------------------------------------------

@pytest.fixture
def images(tmp_path):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "one.png")
    return folder


@pytest.mark.parametrize("args, message", [
    (["--precision", "int8", "--calibration-images", "{tmp}/none"], "calibration images folder '{tmp}/none' does "
                                                                    "not exist"),
    (["--precision", "fp16", "--report-images", "{tmp}/none"], "report images folder '{tmp}/none' does not exist"),
    (["--precision", "int8", "--calibration-images", "{tmp}/empty"], "calibration images folder '{tmp}/empty' holds "
                                                                     "no .jpg/"),
    (["--precision", "fp16", "--report-images", "{tmp}/images/one.png"], "report images folder "
                                                                         "'{tmp}/images/one.png' is not a folder"),
    (["--weights", "{tmp}/none.pth"], "weights '{tmp}/none.pth' are neither a file, a URL, 'coco' nor 'demo'"),
    (["--weights", "{tmp}/images"], "weights '{tmp}/images' is a folder, not a checkpoint file"),
])
def test_a_missing_input_of_an_export_is_one_line_before_the_model_is_built(args, message, images, tmp_path):
    (tmp_path / "empty").mkdir()
    args = [a.format(tmp=tmp_path) for a in args]
    for command in (["export", "--output", str(tmp_path / "x.onnx")],
                    ["bundle", "--target", "standalone", "--output", str(tmp_path / "b")]):
        line = _one_error_line(_builder(command[0], "--runner", "local", "--model", "ppyoloe_s", "--input-shape", "64",
                                        *command[1:], *args))
        assert line.startswith(f"error: {message.format(tmp=tmp_path)}")  # one line: no note, no weights warning
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "images"]


@pytest.mark.parametrize("args, message", [
    (["--labels", "{tmp}/labels.txt"], "labels file '{tmp}/labels.txt' does not exist"),
    (["--labels", "{tmp}/images"], "labels file '{tmp}/images' is not a file"),
    (["--templates", "{tmp}/none"], "templates folder '{tmp}/none' does not exist"),
    (["--spec", "{tmp}/build.yaml"], "spec file '{tmp}/build.yaml' does not exist"),
])
def test_a_missing_input_of_a_bundle_is_one_line_before_the_runner_is_chosen(args, message, images, tmp_path):
    args = [a.format(tmp=tmp_path) for a in args]
    line = _one_error_line(_builder("bundle", "--target", "standalone", "--model", "ppyoloe_s", "--input-shape", "64",
                                    "--runner", "docker", "--image", "no.such/image:0", "--output",
                                    str(tmp_path / "b"), *args))
    assert line.startswith(f"error: {message.format(tmp=tmp_path)}")
    assert [p.name for p in tmp_path.iterdir()] == ["images"]


def test_input_checks_are_one_function_for_both_specs(images, tmp_path):
    spec = ExportSpec.create(model="ppyoloe_s", precision="int8", calibration_images=str(images),
                             report_images=str(images))
    check_inputs(spec)
    with pytest.raises(UserError, match="calibration images folder .* does not exist"):
        check_inputs(spec.model_copy(update={"calibration_images": str(tmp_path / "none")}))
    bundle = BundleSpec.create({"target": "standalone",
                                "export": {"model": "ppyoloe_s", "weights": str(tmp_path / "w")}})
    with pytest.raises(UserError, match="weights .* are neither a file"):
        check_bundle_inputs(bundle)


def test_the_container_runner_is_not_chosen_for_an_export_with_a_missing_input(tmp_path):
    with pytest.raises(UserError, match="calibration images folder"):
        builder.export("ppyoloe_s", tmp_path / "x.onnx", runner="docker", image="no.such/image:0", precision="int8",
                       calibration_images=str(tmp_path / "none"))


# 5. an existing output ---------------------------------------------------------------------------------------

def test_export_refuses_an_existing_file_without_force_and_replaces_it_with(tmp_path):
    out = tmp_path / "x.onnx"
    out.write_bytes(b"keep me")
    line = _one_error_line(_builder("export", "--runner", "local", "--model", "ppyoloe_s", "--input-shape", "64",
                                    "--output", str(out)))
    assert line == f"error: '{out}' already exists (pass --force to replace it)"
    assert out.read_bytes() == b"keep me"
    done = _builder("-q", "export", "--runner", "local", "--model", "ppyoloe_s", "--input-shape", "64", "--output",
                    str(out), "--force")
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:8] != b"keep me" and [p.name for p in tmp_path.iterdir()] == ["x.onnx"]


def test_the_python_api_replaces_by_default_as_supergradients_code_expects(tmp_path):
    out = tmp_path / "x.onnx"
    out.write_bytes(b"old")
    for runner in ("local", "docker"):
        with pytest.raises(UserError, match="already exists"):
            builder.export("ppyoloe_s", out, runner=runner, input_image_shape=(64, 64), force=False)
    assert out.read_bytes() == b"old"
    result = builder.export("ppyoloe_s", out, input_image_shape=(64, 64))
    assert result.output == out.resolve() and out.read_bytes() != b"old"


# 6. hints name the command-line flag --------------------------------------------------------------------------

def test_hints_name_the_flag_a_cli_user_types(tmp_path):
    import torch

    from builder.models.registry import construct

    torch.save(construct("ppyoloe_s", 7).state_dict(), tmp_path / "seven.pt")
    line = _one_error_line(_builder("export", "--runner", "local", "--model", "ppyoloe_s", "--weights",
                                    str(tmp_path / "seven.pt"),
                                    "--num-classes", "80", "--output", str(tmp_path / "x.onnx")))
    assert "on the command line pass --num-classes 7, in Python pass num_classes=7" in line
    line = _one_error_line(_builder("export", "--model", "yolo_nas_s", "--engine", "tensorrt", "--nms", "onnx",
                                    "--output", str(tmp_path / "x.onnx")))
    assert "--engine tensorrt means --nms tensorrt, but --nms onnx was given" in line
