"""Bad input through the CLI, as a hostile or careless user supplies it: every case ends with its exit code
(2 for a mistake, 3 for a failed gate), exactly one `error:` line, no traceback, and no leftovers (the
destination, its parent folder and TMPDIR are as they were).

The command runs in this process through `builder.cli.main`, the one place that maps failures to exit
codes, so that a hundred cases cost seconds, not a hundred interpreter starts.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import zlib

import numpy as np
import pytest

import builder
from cli_runs import assert_one_error_line, reader_argv, run_cli

SMALL = ["--model", "ppyoloe_s", "--input-shape", "64x64"]


def _png(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header declares width x height: a decompression bomb in 67 bytes."""
    import io
    import struct

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    return bytes(data)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, pathlib.Path]:
    """Files and folders the cases point at, made once."""
    import torch

    root = tmp_path_factory.mktemp("inputs")
    made = {"root": root}

    def file(name: str, content: bytes | str) -> pathlib.Path:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        made[name] = path
        return path

    file("empty.pth", b"")
    file("text.pth", "this is not a checkpoint\n")
    file("yaml.pth", "net: {conv: 1}\n")
    file("truncated.pth", b"PK\x03\x04" + b"\x00" * 40)
    torch.save({"not": "tensors"}, root / "strings.pth")
    made["strings.pth"] = root / "strings.pth"
    torch.save({"weight": torch.zeros(3)}, root / "foreign.pth")
    made["foreign.pth"] = root / "foreign.pth"
    file("labels-binary.txt", b"\xff\xfe\x00bad")
    file("labels-three.txt", "a\nb\nc\n")
    file("labels-control.txt", "person\x07\n" * 80)
    (root / "no-images").mkdir()
    made["no-images"] = root / "no-images"
    (root / "folder.onnx").mkdir()
    file("only-text/readme.txt", "no images here")
    file("fake-images/a.jpg", "not a jpeg")
    file("bomb/bomb.png", _png(20000, 20000))
    for name, text in {
        "not-yaml.yaml": "target: [triton\n",
        "list.yaml": "- target\n- triton\n",
        "int-key.yaml": "1: 2\n",
        "nested-int-key.yaml": "target: triton\nexport: {model: yolo_nas_s, 3: 4}\n",
        "duplicate.yaml": "target: triton\ntarget: standalone\nexport: {model: yolo_nas_s}\n",
        "alias.yaml": "a: &a [1, 1, 1]\nb: [*a, *a, *a]\n",
        "unknown.yaml": "target: triton\nexport: {model: yolo_nas_s}\nfancy: 1\n",
        "float-batch.yaml": "target: triton\nexport: {model: yolo_nas_s, batch_size: 1e29}\n",
        "bool-batch.yaml": "target: triton\nexport: {model: yolo_nas_s, batch_size: true}\n",
        "deep.yaml": "target: " + "[" * 40 + "]" * 40 + "\n",
        "huge-side.yaml": "target: triton\nexport: {model: yolo_nas_s, input_image_shape: [99968, 99968]}\n",
        "no-model.yaml": "target: triton\n",
        "bad-target.yaml": "target: triton-ish\nexport: {model: yolo_nas_s}\n",
        "empty.yaml": "",
    }.items():
        file(f"specs/{name}", text)
    file("specs/big.yaml", "a: " + "x" * (2 << 20) + "\n")
    for name, text in {"syntax/triton/config.pbtxt.j2": "{% if %}", "divide/triton/config.pbtxt.j2": "{{ 1/0 }}",
                       "mutate/triton/README.md.j2": "{{ class_names.clear() }}",
                       "range/triton/README.md.j2": "{% for i in range(10**9) %}{% endfor %}",
                       "unknown/triton/nothing.j2": "x", "undefined/triton/README.md.j2": "{{ nmae }}"}.items():
        file(f"templates/{name}", text)
    return made


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> pathlib.Path:
    """A small, valid standalone bundle that the bundle-reading cases copy and break."""
    out = tmp_path_factory.mktemp("bundle") / "det"
    builder.bundle(out, target="standalone", model="ppyoloe_s", input_image_shape=(64, 64), runner="local")
    return out


def _broken(bundle: pathlib.Path, where: pathlib.Path, how: str) -> pathlib.Path:
    """A copy of `bundle` broken one way: its files or its manifest.json edited."""
    copy = where / "broken"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())

    def rewrite(change):  # manifest.json is not in its own file list: an edit of it alone keeps the rest valid
        change(manifest)
        (copy / "manifest.json").write_text(json.dumps(manifest))

    if how == "no-manifest":
        (copy / "manifest.json").unlink()
    elif how == "not-json":
        (copy / "manifest.json").write_text("{not json")
    elif how == "list":
        (copy / "manifest.json").write_text("[1, 2]")
    elif how == "files-strings":
        (copy / "manifest.json").write_text(json.dumps({**manifest, "files": ["model.onnx"]}))
    elif how == "files-no-sha":
        files = [{"path": f["path"], "size": f["size"]} for f in manifest["files"]]
        (copy / "manifest.json").write_text(json.dumps({**manifest, "files": files}))
    elif how == "old-format":
        (copy / "manifest.json").write_text(json.dumps({**manifest, "manifest_format": 1}))
    elif how == "bf16":
        rewrite(lambda d: d.update(precision="bf16"))
    elif how == "no-signature":
        rewrite(lambda d: d.pop("signature"))
    elif how == "float-dims":
        rewrite(lambda d: d["signature"]["inputs"][0].update(shape=[1, 3, 64.5, 64]))
    elif how == "huge-dims":
        rewrite(lambda d: d["signature"]["inputs"][0].update(shape=[1, 3, 10**9, 64]))
    elif how == "escaping-path":
        (copy / "manifest.json").write_text(json.dumps(
            {**manifest, "files": manifest["files"] + [{"path": "../evil", "sha256": "0" * 64, "size": 1}]}))
    elif how == "changed-model":
        with open(copy / "model.onnx", "ab") as f:
            f.write(b"\0")
    elif how == "extra-file":
        (copy / "extra.txt").write_text("not listed")
    elif how == "missing-file":
        (copy / "infer.py").unlink()
    elif how == "link":
        (copy / "infer.py").unlink()
        (copy / "infer.py").symlink_to("/etc/hostname")
    elif how == "precision-edit":
        rewrite(lambda d: d.update(precision="int8"))
    elif how == "unknown-target":
        rewrite(lambda d: d.update(target="nonesuch"))
    elif how == "no-build-yaml":
        (copy / "build.yaml").unlink()
        rewrite(lambda d: d.update(files=[f for f in d["files"] if f["path"] != "build.yaml"]))
    return copy


# (id, argv with {placeholders}, expected exit code, a piece of the error line)
CASES = [
    # export: options
    ("export-shape-letters", ["export", *SMALL[:2], "--input-shape", "abc", "--output", "{out}/m.onnx"], 2, "input shape"),
    ("export-shape-zero", ["export", *SMALL[:2], "--input-shape", "0x0", "--output", "{out}/m.onnx"], 2, "multiples of 32"),
    ("export-shape-31", ["export", *SMALL[:2], "--input-shape", "31x32", "--output", "{out}/m.onnx"], 2, "multiples of 32"),
    ("export-shape-huge", ["export", *SMALL[:2], "--input-shape", "99968x99968", "--output", "{out}/m.onnx"], 2, "4096"),
    ("export-shape-negative", ["export", *SMALL[:2], "--input-shape", "-32x32", "--output", "{out}/m.onnx"], 2, "input"),
    ("export-shape-3d", ["export", *SMALL[:2], "--input-shape", "64x64x3", "--output", "{out}/m.onnx"], 2, "input shape"),
    ("export-batch-zero", ["export", *SMALL, "--batch-size", "0", "--output", "{out}/m.onnx"], 2, "batch_size"),
    ("export-batch-huge", ["export", *SMALL, "--batch-size", "100000000", "--output", "{out}/m.onnx"], 2, "batch_size"),
    ("export-batch-text", ["export", *SMALL, "--batch-size", "many", "--output", "{out}/m.onnx"], 2, "batch-size"),
    ("export-batch-pixels", ["export", *SMALL[:2], "--input-shape", "4096x4096", "--batch-size", "64",
                             "--output", "{out}/m.onnx"], 2, "pixels"),
    ("export-classes-zero", ["export", *SMALL, "--num-classes", "0", "--output", "{out}/m.onnx"], 2, "num_classes"),
    ("export-classes-huge", ["export", *SMALL, "--num-classes", "100000000", "--output", "{out}/m.onnx"], 2, "num_classes"),
    ("export-conf-above-1", ["export", *SMALL, "--conf", "1.5", "--output", "{out}/m.onnx"], 2, "confidence_threshold"),
    ("export-conf-negative", ["export", *SMALL, "--conf", "-0.1", "--output", "{out}/m.onnx"], 2, "confidence_threshold"),
    ("export-iou-2", ["export", *SMALL, "--iou", "2", "--output", "{out}/m.onnx"], 2, "nms_threshold"),
    ("export-topk-zero", ["export", *SMALL, "--pre-nms-top-k", "0", "--output", "{out}/m.onnx"], 2, "num_pre_nms"),
    ("export-maxdet-zero", ["export", *SMALL, "--max-detections", "0", "--output", "{out}/m.onnx"], 2, "max_predictions"),
    ("export-maxdet-above-topk", ["export", *SMALL, "--pre-nms-top-k", "5", "--max-detections", "100",
                                  "--output", "{out}/m.onnx"], 2, "at most 5 detections"),
    ("export-format", ["export", *SMALL, "--format", "grid", "--output", "{out}/m.onnx"], 2, "--format"),
    ("export-precision", ["export", *SMALL, "--precision", "bf16", "--output", "{out}/m.onnx"], 2, "--precision"),
    ("export-nms", ["export", *SMALL, "--nms", "soft", "--output", "{out}/m.onnx"], 2, "--nms"),
    ("export-runtime", ["export", *SMALL, "--runtime", "tvm", "--output", "{out}/m.onnx"], 2, "--runtime"),
    ("export-engine", ["export", *SMALL, "--engine", "openvino", "--output", "{out}/m.onnx"], 2, "--engine"),
    ("export-engine-vs-nms", ["export", *SMALL, "--engine", "tensorrt", "--nms", "onnx", "--output", "{out}/m.onnx"], 2,
     "engine"),
    ("export-nms-runtime", ["export", *SMALL, "--nms", "tensorrt", "--runtime", "onnxruntime",
                            "--output", "{out}/m.onnx"], 2, "runs on tensorrt"),
    ("export-engine-no-post", ["export", *SMALL, "--engine", "tensorrt", "--no-postprocessing",
                               "--output", "{out}/m.onnx"], 2, "postprocessing"),
    ("export-dynamic-and-batch", ["export", *SMALL, "--dynamic-batch", "--batch-size", "2",
                                  "--output", "{out}/m.onnx"], 2, "dynamic_batch"),
    ("export-flat-no-post", ["export", *SMALL, "--format", "flat", "--no-postprocessing",
                             "--output", "{out}/m.onnx"], 2, "postprocessing"),
    ("export-calibration-fp32", ["export", *SMALL, "--calibration-images", "{root}/no-images",
                                 "--output", "{out}/m.onnx"], 2, "int8"),
    ("export-report-fp32", ["export", *SMALL, "--report-images", "{root}/no-images", "--output", "{out}/m.onnx"], 2,
     "fp16 or int8"),
    ("export-opset-low", ["export", *SMALL, "--opset", "5", "--output", "{out}/m.onnx"], 2, "onnx_opset"),
    ("export-opset-high", ["export", *SMALL, "--opset", "99", "--output", "{out}/m.onnx"], 2, "onnx_opset"),
    ("export-opset-17", ["export", *SMALL, "--opset", "17", "--output", "{out}/m.onnx"], 2, "greater than or equal to 18"),
    ("export-calibration-count", ["export", *SMALL, "--precision", "int8", "--calibration-count", "0",
                                  "--output", "{out}/m.onnx"], 2, "calibration_count"),
    ("export-calibration-method", ["export", *SMALL, "--precision", "int8", "--calibration-method", "magic",
                                   "--output", "{out}/m.onnx"], 2, "--calibration-method"),
    ("export-unknown-model", ["export", "--model", "yolo_nas_xl", "--output", "{out}/m.onnx"], 2, "unknown model"),
    ("export-empty-model", ["export", "--model", "", "--output", "{out}/m.onnx"], 2, "model"),
    ("export-no-model", ["export", "--output", "{out}/m.onnx"], 2, "--model"),
    ("export-no-output", ["export", *SMALL], 2, "--output"),
    ("export-unknown-flag", ["export", *SMALL, "--turbo", "--output", "{out}/m.onnx"], 2, "--turbo"),
    # export: paths
    ("export-output-suffix", ["export", *SMALL, "--output", "{out}/m.txt"], 2, ".onnx"),
    ("export-output-is-folder", ["export", *SMALL, "--output", "{root}/folder.onnx"], 2, "directory"),
    ("export-output-file-in-path", ["export", *SMALL, "--output", "{root}/empty.pth/m.onnx"], 2, "not a folder"),
    ("export-output-exists", ["export", *SMALL, "--output", "{root}/exists.onnx"], 2, "already exists"),
    ("export-output-read-only", ["export", *SMALL, "--output", "/proc/self/builder/m.onnx"], 2, "cannot write"),
    ("export-weights-missing", ["export", *SMALL, "--weights", "{root}/nothing.pth", "--output", "{out}/m.onnx"], 2,
     "weights"),
    ("export-weights-empty", ["export", *SMALL, "--weights", "{root}/empty.pth", "--output", "{out}/m.onnx"], 2,
     "empty"),
    ("export-weights-text", ["export", *SMALL, "--weights", "{root}/text.pth", "--output", "{out}/m.onnx"], 2,
     "checkpoint"),
    ("export-weights-yaml", ["export", *SMALL, "--weights", "{root}/yaml.pth", "--output", "{out}/m.onnx"], 2,
     "checkpoint"),
    ("export-weights-truncated", ["export", *SMALL, "--weights", "{root}/truncated.pth", "--output", "{out}/m.onnx"], 2,
     "checkpoint"),
    ("export-weights-strings", ["export", *SMALL, "--weights", "{root}/strings.pth", "--output", "{out}/m.onnx"], 2,
     "tensor"),
    ("export-weights-foreign", ["export", *SMALL, "--weights", "{root}/foreign.pth", "--output", "{out}/m.onnx"], 2,
     "does not fit"),
    ("export-weights-nan", ["export", *SMALL, "--weights", "{root}/nan.pth", "--output", "{out}/m.onnx"], 2, "NaN"),
    ("export-weights-url", ["export", *SMALL, "--weights", "http://127.0.0.1:9/none.pth", "--output", "{out}/m.onnx"],
     2, "127.0.0.1"),
    ("export-calibration-missing", ["export", *SMALL, "--precision", "int8", "--calibration-images", "{root}/nowhere",
                                    "--output", "{out}/m.onnx"], 2, "does not exist"),
    ("export-calibration-empty", ["export", *SMALL, "--precision", "int8", "--calibration-images", "{root}/only-text",
                                  "--output", "{out}/m.onnx"], 2, "no"),
    ("export-report-missing", ["export", *SMALL, "--precision", "fp16", "--report-images", "{root}/nowhere",
                               "--output", "{out}/m.onnx"], 2, "does not exist"),
    # bundle: options and paths
    ("bundle-no-target", ["bundle", *SMALL, "--output", "{out}/b"], 2, "--target"),
    ("bundle-no-model", ["bundle", "--target", "triton", "--output", "{out}/b"], 2, "--model"),
    ("bundle-bad-target", ["bundle", "--target", "tritonn", *SMALL, "--output", "{out}/b"], 2, "--target"),
    ("bundle-name-escape", ["bundle", "--target", "triton", *SMALL, "--name", "../evil", "--output", "{out}/b"], 2,
     "not a valid model name"),
    ("bundle-name-space", ["bundle", "--target", "triton", *SMALL, "--name", "a b", "--output", "{out}/b"], 2,
     "not a valid model name"),
    ("bundle-name-long", ["bundle", "--target", "triton", *SMALL, "--name", "n" * 65, "--output", "{out}/b"], 2,
     "not a valid model name"),
    ("bundle-version-zero", ["bundle", "--target", "triton", *SMALL, "--version", "0", "--output", "{out}/b"], 2,
     "version"),
    ("bundle-labels-missing", ["bundle", "--target", "triton", *SMALL, "--labels", "{root}/nothing.txt",
                               "--output", "{out}/b"], 2, "labels"),
    ("bundle-labels-binary", ["bundle", "--target", "triton", *SMALL, "--labels", "{root}/labels-binary.txt",
                              "--output", "{out}/b"], 2, "labels"),
    ("bundle-labels-count", ["bundle", "--target", "triton", *SMALL, "--labels", "{root}/labels-three.txt",
                             "--output", "{out}/b"], 2, "3 class names"),
    ("bundle-labels-control", ["bundle", "--target", "triton", *SMALL, "--labels", "{root}/labels-control.txt",
                               "--output", "{out}/b"], 2, "control characters"),
    ("bundle-templates-missing", ["bundle", "--target", "triton", *SMALL, "--templates", "{root}/nowhere",
                                  "--output", "{out}/b"], 2, "templates"),
    ("bundle-template-unknown", ["bundle", "--target", "triton", *SMALL, "--templates", "{root}/templates/unknown",
                                 "--output", "{out}/b"], 2, "matches no shipped template"),
    ("bundle-template-syntax", ["bundle", "--target", "triton", *SMALL, "--templates", "{root}/templates/syntax",
                                "--output", "{out}/b"], 2, "override"),
    ("bundle-template-divide", ["bundle", "--target", "triton", *SMALL, "--templates", "{root}/templates/divide",
                                "--output", "{out}/b"], 2, "override"),
    ("bundle-template-mutate", ["bundle", "--target", "triton", *SMALL, "--templates", "{root}/templates/mutate",
                                "--output", "{out}/b"], 2, "override"),
    ("bundle-template-range", ["bundle", "--target", "triton", *SMALL, "--templates", "{root}/templates/range",
                               "--output", "{out}/b"], 2, "override"),
    ("bundle-template-undefined", ["bundle", "--target", "triton", *SMALL, "--templates",
                                   "{root}/templates/undefined", "--output", "{out}/b"], 2, "nmae"),
    ("bundle-serving-image", ["bundle", "--target", "triton", *SMALL, "--serving-image", "evil\nRUN rm -rf /",
                              "--output", "{out}/b"], 2, "image reference"),
    ("bundle-preferred-text", ["bundle", "--target", "triton", *SMALL, "--dynamic-batch", "--preferred-batch-sizes",
                               "four", "--output", "{out}/b"], 2, "batch sizes"),
    ("bundle-preferred-zero", ["bundle", "--target", "triton", *SMALL, "--dynamic-batch", "--preferred-batch-sizes",
                               "0", "--output", "{out}/b"], 2, "batch sizes"),
    ("bundle-preferred-duplicate", ["bundle", "--target", "triton", *SMALL, "--dynamic-batch",
                                    "--preferred-batch-sizes", "4,4", "--output", "{out}/b"], 2, "distinct"),
    ("bundle-preferred-fixed", ["bundle", "--target", "triton", *SMALL, "--preferred-batch-sizes", "4",
                                "--output", "{out}/b"], 2, "--dynamic-batch"),
    ("bundle-max-batch-zero", ["bundle", "--target", "triton", *SMALL, "--dynamic-batch", "--max-batch-size", "0",
                               "--output", "{out}/b"], 2, "max_batch_size"),
    ("bundle-device", ["bundle", "--target", "triton", *SMALL, "--device", "tpu", "--output", "{out}/b"], 2, "--device"),
    ("bundle-instances-zero", ["bundle", "--target", "triton", *SMALL, "--instances", "0", "--output", "{out}/b"], 2,
     "instances"),
    ("bundle-queue-delay", ["bundle", "--target", "triton", *SMALL, "--dynamic-batch", "--max-queue-delay-us", "-1",
                            "--output", "{out}/b"], 2, "max_queue_delay_us"),
    ("bundle-accelerator-cpu", ["bundle", "--target", "triton", *SMALL, "--tensorrt-accelerator", "--device", "cpu",
                                "--output", "{out}/b"], 2, "GPUs"),
    ("bundle-triton-option-standalone", ["bundle", "--target", "standalone", *SMALL, "--instances", "2",
                                         "--output", "{out}/b"], 2, "Triton options"),
    ("bundle-workspace-onnxruntime", ["bundle", "--target", "triton", *SMALL, "--workspace-gb", "2",
                                      "--output", "{out}/b"], 2, "TensorRT build options"),
    ("bundle-tensorrt-standalone", ["bundle", "--target", "standalone", *SMALL, "--engine", "tensorrt",
                                    "--output", "{out}/b"], 2, "needs --target"),
    ("bundle-no-preprocessing", ["bundle", "--target", "triton", *SMALL, "--no-preprocessing",
                                 "--output", "{out}/b"], 2, "--no-preprocessing"),
    ("bundle-kserve-no-uri", ["bundle", "--target", "kserve", *SMALL, "--output", "{out}/b"], 2, "--storage-uri"),
    ("bundle-kserve-bad-uri", ["bundle", "--target", "kserve", *SMALL, "--storage-uri", "ftp://host/m",
                               "--output", "{out}/b"], 2, "storage_uri"),
    ("bundle-kserve-namespace", ["bundle", "--target", "kserve", *SMALL, "--storage-uri", "s3://b/m", "--namespace",
                                 "Not_DNS", "--output", "{out}/b"], 2, "namespace"),
    ("bundle-kserve-option-triton", ["bundle", "--target", "triton", *SMALL, "--storage-uri", "s3://b/m",
                                     "--output", "{out}/b"], 2, "kserve options"),
    ("bundle-runner", ["bundle", "--target", "triton", *SMALL, "--runner", "ssh", "--output", "{out}/b"], 2, "--runner"),
    ("bundle-local-image", ["bundle", "--target", "triton", *SMALL, "--runner", "local", "--image", "x",
                            "--output", "{out}/b"], 2, "docker runner"),
    ("bundle-destination-exists", ["bundle", "--target", "triton", *SMALL, "--output", "{root}/no-images"], 2,
     "already exists"),
    ("bundle-destination-file", ["bundle", "--target", "triton", *SMALL, "--output", "{root}/empty.pth"], 2,
     "is a file"),
    ("bundle-destination-file-in-path", ["bundle", "--target", "triton", *SMALL, "--output", "{root}/empty.pth/b"], 2,
     "not a folder"),
    ("bundle-destination-read-only", ["bundle", "--target", "standalone", *SMALL, "--output", "/proc/self/builder/b"], 2,
     "cannot write"),
    # bundle: build.yaml
    ("spec-missing", ["bundle", "--spec", "{root}/specs/nothing.yaml", "--output", "{out}/b"], 2, "does not exist"),
    ("spec-not-yaml", ["bundle", "--spec", "{root}/specs/not-yaml.yaml", "--output", "{out}/b"], 2, "YAML"),
    ("spec-list", ["bundle", "--spec", "{root}/specs/list.yaml", "--output", "{out}/b"], 2, "mapping"),
    ("spec-int-key", ["bundle", "--spec", "{root}/specs/int-key.yaml", "--output", "{out}/b"], 2, "key"),
    ("spec-nested-int-key", ["bundle", "--spec", "{root}/specs/nested-int-key.yaml", "--output", "{out}/b"], 2, "key"),
    ("spec-duplicate", ["bundle", "--spec", "{root}/specs/duplicate.yaml", "--output", "{out}/b"], 2, "target"),
    ("spec-alias", ["bundle", "--spec", "{root}/specs/alias.yaml", "--output", "{out}/b"], 2, "alias"),
    ("spec-unknown", ["bundle", "--spec", "{root}/specs/unknown.yaml", "--output", "{out}/b"], 2, "fancy"),
    ("spec-float-batch", ["bundle", "--spec", "{root}/specs/float-batch.yaml", "--output", "{out}/b"], 2, "batch_size"),
    ("spec-bool-batch", ["bundle", "--spec", "{root}/specs/bool-batch.yaml", "--output", "{out}/b"], 2, "batch_size"),
    ("spec-deep", ["bundle", "--spec", "{root}/specs/deep.yaml", "--output", "{out}/b"], 2, "deep"),
    ("spec-huge-side", ["bundle", "--spec", "{root}/specs/huge-side.yaml", "--output", "{out}/b"], 2, "4096"),
    ("spec-no-model", ["bundle", "--spec", "{root}/specs/no-model.yaml", "--output", "{out}/b"], 2, "model"),
    ("spec-bad-target", ["bundle", "--spec", "{root}/specs/bad-target.yaml", "--output", "{out}/b"], 2, "target"),
    ("spec-empty", ["bundle", "--spec", "{root}/specs/empty.yaml", "--output", "{out}/b"], 2, "spec file"),
    ("spec-big", ["bundle", "--spec", "{root}/specs/big.yaml", "--output", "{out}/b"], 2, "MiB"),
    # verify and bench
    ("verify-missing-bundle", ["verify", "{root}/nothing"], 2, "nothing"),
    ("verify-images-missing", ["verify", "{bundle}", "--images", "{root}/nowhere"], 2, "does not exist"),
    ("verify-images-empty", ["verify", "{bundle}", "--images", "{root}/only-text"], 2, "no"),
    ("verify-images-fake", ["verify", "{bundle}", "--images", "{root}/fake-images"], 2, "cannot read image"),
    ("verify-images-bomb", ["verify", "{bundle}", "--images", "{root}/bomb"], 2, "pixels"),
    ("verify-count-zero", ["verify", "{bundle}", "--count", "0"], 2, "--count"),
    ("verify-weights-missing", ["verify", "{bundle}", "--weights", "{root}/nothing.pth"], 2, "weights"),
    ("verify-weights-other", ["verify", "{bundle}", "--weights", "{root}/nan.pth"], 2, "NaN"),
    ("verify-url-standalone", ["verify", "{bundle}", "--url", "127.0.0.1:9"], 2, "standalone"),
    ("bench-batch-text", ["bench", "{bundle}", "--batch-sizes", "one"], 2, "batch sizes"),
    ("bench-batch-zero", ["bench", "{bundle}", "--batch-sizes", "0", "--duration", "0.1"], 2, "positive"),
    ("bench-duration", ["bench", "{bundle}", "--duration", "0"], 2, "--duration"),
    ("bench-threads", ["bench", "{bundle}", "--threads", "0"], 2, "--threads"),
    ("bench-url-refused", ["bench", "{bundle}", "--url", "127.0.0.1:9", "--duration", "0.1"], 2, "127.0.0.1:9"),
    # push, pull, fetch
    ("push-no-tag", ["push", "{bundle}", "127.0.0.1:5999/det", "--insecure"], 2, "tag"),
    ("push-bad-reference", ["push", "{bundle}", "127.0.0.1:5999/Det:latest", "--insecure"], 2, "reference"),
    ("push-bad-port", ["push", "{bundle}", "127.0.0.1:99999/det:1", "--insecure"], 2, "port"),
    ("push-missing-bundle", ["push", "{root}/nothing", "127.0.0.1:5999/det:1", "--insecure"], 2, "nothing"),
    ("push-unreachable", ["push", "{bundle}", "127.0.0.1:9/det:1", "--insecure"], 2, "127.0.0.1:9"),
    ("pull-unreachable", ["pull", "127.0.0.1:9/det:1", "{out}/p", "--insecure"], 2, "127.0.0.1:9"),
    ("pull-destination-exists", ["pull", "127.0.0.1:9/det:1", "{root}/no-images", "--insecure"], 2, "already exists"),
    ("pull-bad-digest", ["pull", "127.0.0.1:9/det@sha256:abc", "{out}/p", "--insecure"], 2, "digest"),
    ("fetch-unknown-model", ["fetch", "--model", "resnet", "--weights", "{root}/empty.pth"], 2, "unknown model"),
    ("fetch-empty-weights", ["fetch", "--model", "ppyoloe_s", "--weights", "{root}/empty.pth"], 2, "empty"),
    ("unknown-command", ["deploy"], 2, "deploy"),
]

# manifest.json and bundle files broken after the build: (id, how, command, exit code, piece of the error line)
BROKEN_BUNDLES = [
    ("no-manifest", "verify", "no manifest.json"), ("not-json", "verify", "cannot read"),
    ("list", "verify", "not a builder manifest"), ("files-strings", "push", "files"),
    ("files-no-sha", "verify", "sha256"), ("old-format", "bench", "manifest format 1"),
    ("bf16", "verify", "precision"), ("no-signature", "bench", "signature"), ("float-dims", "verify", "shape"),
    ("huge-dims", "bench", "65536"), ("escaping-path", "push", "relative path"),
    ("changed-model", "verify", "differ from the manifest"), ("extra-file", "push", "does not list"),
    ("missing-file", "bench", "lacks"), ("link", "push", "link"),
    ("precision-edit", "verify", "precision mismatch"), ("unknown-target", "bench", "unknown target"),
    ("no-build-yaml", "verify", "build.yaml"),
]


@pytest.fixture(scope="module")
def nan_checkpoint(inputs):
    import torch

    from builder.models.registry import construct

    state = construct("ppyoloe_s").state_dict()
    state[next(k for k, v in state.items() if v.is_floating_point())].fill_(float("nan"))
    torch.save(state, inputs["root"] / "nan.pth")
    (inputs["root"] / "exists.onnx").write_bytes(b"a model already here")
    return inputs["root"] / "nan.pth"


@pytest.mark.parametrize("case_id, argv, expected, message", CASES, ids=[c[0] for c in CASES])
def test_a_bad_input_is_one_line_and_leaves_nothing(case_id, argv, expected, message, inputs, nan_checkpoint, bundle,
                                                    capsys, tmp_path, monkeypatch):
    values = {"root": str(inputs["root"]), "out": str(tmp_path / "out"), "bundle": str(bundle)}
    argv = [a.format(**values) if "{" in a and "}" in a and not a.startswith("{%") else a for a in argv]
    assert_one_error_line(*run_cli(argv, capsys, tmp_path, monkeypatch), expected, message)


@pytest.mark.parametrize("how, command, message", BROKEN_BUNDLES, ids=[c[0] for c in BROKEN_BUNDLES])
def test_a_broken_bundle_is_one_line_for_every_reader(how, command, message, bundle, capsys, tmp_path, monkeypatch):
    broken = _broken(bundle, tmp_path.parent / f"{tmp_path.name}-in", how)
    assert_one_error_line(*run_cli(reader_argv(command, broken), capsys, tmp_path, monkeypatch), 2, message)


def test_there_are_more_than_a_hundred_distinct_bad_inputs():
    ids = [c[0] for c in CASES] + [c[0] for c in BROKEN_BUNDLES]
    assert len(set(ids)) == len(ids) >= 100


def test_the_bomb_image_is_what_it_claims_to_be(inputs):
    from PIL import Image

    Image.MAX_IMAGE_PIXELS, before = None, Image.MAX_IMAGE_PIXELS
    try:
        with Image.open(inputs["bomb/bomb.png"]) as image:
            assert image.size == (20000, 20000)
    finally:
        Image.MAX_IMAGE_PIXELS = before
    assert os.path.getsize(inputs["bomb/bomb.png"]) < 1000 and np.prod((20000, 20000)) > 64 * 2**20
