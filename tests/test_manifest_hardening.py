"""A manifest.json that is valid JSON but disagrees with the bundle's model or its build.yaml: every reader (verify,
bench, push) refuses it in one line, before the model runs, and leaves nothing behind.

manifest.json is not covered by its own file list, so an edit of it alone passes the sha256 checks; what it says
is held against the model file (names, dtypes, ranks and fixed dimensions of its inputs and outputs) and against
build.yaml, which the file list covers.
"""
from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import pytest

import builder
from cli_runs import assert_one_error_line, reader_argv, run_cli


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> pathlib.Path:
    """A small, valid standalone bundle that the cases copy and break."""
    out = tmp_path_factory.mktemp("bundle") / "det"
    builder.bundle(out, target="standalone", model="ppyoloe_s", input_image_shape=(64, 64), runner="local")
    return out


def _input(manifest: dict, **change) -> None:
    manifest["signature"]["inputs"][0].update(change)


def _output(manifest: dict, index: int, **change) -> None:
    manifest["signature"]["outputs"][index].update(change)


# how manifest.json is edited: id -> a change of its content (a function of the parsed manifest), or its new text
EDITS = {
    "renamed-output": lambda m: _output(m, 1, name="boxes"),
    "extra-output": lambda m: m["signature"]["outputs"].append({"name": "masks", "dtype": "float32", "shape": [1]}),
    "missing-output": lambda m: m["signature"]["outputs"].pop(),
    "renamed-input": lambda m: _input(m, name="pixels"),
    "output-dtype": lambda m: _output(m, 0, dtype="int32"),
    "output-rank": lambda m: _output(m, 1, shape=[1, 4000]),
    "output-dims": lambda m: _output(m, 1, shape=[1, 100, 4]),
    "smaller-input": lambda m: _input(m, shape=[1, 3, 32, 32]),
    "larger-batch": lambda m: _input(m, shape=[4, 3, 64, 64]),
    "dynamic-batch-claimed": lambda m: _input(m, shape=["batch", 3, 64, 64]),
    "rank-2-input": lambda m: _input(m, shape=[1, 64]),
    "symbolic-height-width": lambda m: _input(m, shape=[1, 3, "height", "width"]),
    "one-channel": lambda m: _input(m, shape=[1, 1, 64, 64]),
    "float-input": lambda m: _input(m, dtype="float32"),
    "nested-brackets": "[" * 100_000 + "]" * 100_000,
    "target-triton": lambda m: m.update(target="triton"),
    "target-kserve": lambda m: m.update(target="kserve"),
    "runtime-tensorrt": lambda m: m.update(runtime="tensorrt"),
    "renamed-bundle": lambda m: m.update(name="other"),
    "other-model": lambda m: m["model"].update(variant="yolo_nas_s", family="yolo_nas"),
    "precision-fp16": lambda m: m.update(precision="fp16"),
}

# (id, command, a piece of the one error line); push reads no model (the host has no ONNX), so it meets only what
# needs none: the manifest's own shape and its agreement with build.yaml
MISMATCHED = [
    ("renamed-output", "verify", "output 'boxes'"), ("renamed-output", "bench", "output 'boxes'"),
    ("extra-output", "verify", "output 'masks'"), ("extra-output", "bench", "output 'masks'"),
    ("missing-output", "verify", "output 'pred_classes'"), ("missing-output", "bench", "output 'pred_classes'"),
    ("renamed-input", "verify", "input 'pixels'"), ("renamed-input", "bench", "input 'pixels'"),
    ("output-dtype", "verify", "int32"), ("output-dtype", "bench", "int32"),
    ("output-rank", "verify", "[1, 4000]"), ("output-rank", "bench", "[1, 4000]"),
    ("output-dims", "verify", "[1, 100, 4]"), ("output-dims", "bench", "[1, 100, 4]"),
    ("smaller-input", "verify", "[1, 3, 32, 32]"), ("smaller-input", "bench", "[1, 3, 32, 32]"),
    ("larger-batch", "verify", "[4, 3, 64, 64]"), ("larger-batch", "bench", "[4, 3, 64, 64]"),
    ("dynamic-batch-claimed", "verify", "[batch, 3, 64, 64]"),
    ("dynamic-batch-claimed", "bench", "[batch, 3, 64, 64]"),
    ("rank-2-input", "verify", "[batch, 3, height, width]"), ("rank-2-input", "bench", "[batch, 3, height, width]"),
    ("rank-2-input", "push", "[batch, 3, height, width]"),
    ("symbolic-height-width", "verify", "fixed height and width"),
    ("symbolic-height-width", "bench", "fixed height and width"),
    ("symbolic-height-width", "push", "fixed height and width"),
    ("one-channel", "bench", "[batch, 3, height, width]"), ("one-channel", "push", "[batch, 3, height, width]"),
    ("float-input", "bench", "uint8"), ("float-input", "push", "uint8"),
    ("nested-brackets", "verify", "nested too deeply"), ("nested-brackets", "bench", "nested too deeply"),
    ("nested-brackets", "push", "nested too deeply"),
    ("target-triton", "verify", "target mismatch"), ("target-triton", "bench", "target mismatch"),
    ("target-triton", "push", "target mismatch"),
    ("target-kserve", "bench", "target mismatch"), ("target-kserve", "push", "target mismatch"),
    ("runtime-tensorrt", "verify", "runtime mismatch"), ("runtime-tensorrt", "bench", "runtime mismatch"),
    ("runtime-tensorrt", "push", "runtime mismatch"),
    ("renamed-bundle", "verify", "name mismatch"), ("renamed-bundle", "bench", "name mismatch"),
    ("renamed-bundle", "push", "name mismatch"),
    ("other-model", "verify", "model mismatch"), ("other-model", "bench", "model mismatch"),
    ("other-model", "push", "model mismatch"),
    ("precision-fp16", "verify", "precision mismatch"), ("precision-fp16", "bench", "precision mismatch"),
    ("precision-fp16", "push", "precision mismatch"),
]


def _edited(bundle: pathlib.Path, where: pathlib.Path, how: str) -> pathlib.Path:
    """A copy of `bundle` whose manifest.json alone is edited (the files it lists keep their sha256)."""
    copy = where / "edited"
    shutil.copytree(bundle, copy)
    edit = EDITS[how]
    if isinstance(edit, str):
        (copy / "manifest.json").write_text(edit)
    else:
        manifest = json.loads((copy / "manifest.json").read_text())
        edit(manifest)
        (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


@pytest.mark.parametrize("how, command, message", MISMATCHED, ids=[f"{c[0]}-{c[1]}" for c in MISMATCHED])
def test_a_manifest_that_disagrees_with_its_bundle_is_one_line_for_every_reader(how, command, message, bundle,
                                                                               capsys, tmp_path, monkeypatch):
    edited = _edited(bundle, tmp_path.parent / f"{tmp_path.name}-in", how)
    code, errors, stderr = run_cli(reader_argv(command, edited), capsys, tmp_path, monkeypatch)
    assert_one_error_line(code, errors, stderr, 2, message)
    assert "batch 1:" not in stderr  # refused before the model ran


def test_every_edit_is_met_by_verify_or_bench_and_push_where_it_can_tell():
    assert {how for how, _command, _message in MISMATCHED} == set(EDITS)
    readers = {how: {command for h, command, _m in MISMATCHED if h == how} for how in EDITS}
    assert all(readers[how] & {"verify", "bench"} for how in EDITS)


def test_the_unedited_bundle_passes_bench_and_push(bundle, capsys, tmp_path, monkeypatch):
    """The checks hold a real bundle to what it is: none of them refuses one that was not edited (verify's own
    tests run it on real bundles)."""
    code, errors, stderr = run_cli(["bench", str(bundle), "--duration", "0.1", "--batch-sizes", "1"], capsys, tmp_path,
                                   monkeypatch)
    assert code == 0 and errors == [], stderr
    code, errors, stderr = run_cli(["push", str(bundle), "127.0.0.1:9/det:1", "--insecure"], capsys, tmp_path,
                                   monkeypatch)
    assert code == 2 and "cannot reach registry 127.0.0.1:9" in errors[0], stderr  # every check passed: the network


def test_a_triton_bundle_with_a_dynamic_batch_passes_the_signature_check(tmp_path):
    """Symbolic dimensions in the model (a dynamic batch) agree with the manifest's symbols."""
    from builder.core.manifest import check_files
    from builder.verification.runtime import open_model

    out = builder.bundle(tmp_path / "tri", target="triton", model="ppyoloe_s", input_image_shape=(64, 64),
                         dynamic_batch=True, runner="local").destination
    manifest = check_files(out)
    assert manifest.signature.inputs[0].shape[0] == "batch"
    run, _runtime = open_model(out, manifest)
    assert len(run(np.zeros((2, 3, 64, 64), np.uint8))) == len(manifest.signature.outputs)
