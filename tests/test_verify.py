"""builder verify (the release gate) and builder bench on real bundles."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import builder
from builder.core.errors import UserError
from builder.verification.bench import bench
from builder.verification.reference import nms_per_class
from builder.verification.verify import verify, write_report
from bundle_helpers import SIZE, lively_weights
from nms_reference import greedy_nms


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return lively_weights(tmp_path_factory.mktemp("w") / "lively.pth")


@pytest.fixture(scope="module")
def bundle(weights, tmp_path_factory):
    return builder.bundle(tmp_path_factory.mktemp("v") / "det", target="standalone", model="yolo_nas_s",
                          weights=str(weights), input_image_shape=SIZE, dynamic_batch=True).destination


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "builder", *args], capture_output=True, text=True, timeout=600)


def test_a_good_bundle_passes_with_every_detection_matched(bundle, tmp_path):
    done = _cli("verify", str(bundle), "--json", "--report", str(tmp_path / "r.html"))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    overall = result["overall"]
    assert result["passed"] and overall["images"] == 7 and overall["reference"] > 50
    assert overall["recall"] == overall["precision"] == 1.0
    assert overall["max_box_deviation_px"] < 0.05 and overall["max_score_deviation"] < 1e-4
    page = (tmp_path / "r.html").read_text()
    assert page.count("data:image/png;base64,") == 14 and "PASSED" in page


def test_a_regressed_bundle_fails_the_gate_with_exit_code_3(bundle, tmp_path):
    """A bundle that is consistent with its manifest but whose model no longer does what PyTorch does."""
    from builder.core.manifest import write_manifest

    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    model = onnx.load(broken / "model.onnx")
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    weights = {i.name: i for i in model.graph.initializer}
    target = weights[convs[len(convs) // 2].input[1]]
    target.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(target) * 1.5, target.name))
    onnx.save(model, broken / "model.onnx")
    manifest = json.loads((broken / "manifest.json").read_text())
    del manifest["files"], manifest["manifest_format"]
    write_manifest(broken, manifest)
    done = _cli("verify", str(broken))
    assert done.returncode == 3, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: verification failed: recall")
    assert "FAILED" in done.stdout


def test_other_weights_are_refused(bundle, tmp_path):
    import torch

    other = tmp_path / "other.pth"
    torch.save(builder.models.get("yolo_nas_s").state_dict(), other)
    with pytest.raises(UserError, match="are not the ones the bundle was built from"):
        verify(bundle, weights=str(other))


def test_a_tampered_bundle_is_refused_before_anything_runs(bundle, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    (copy / "infer.py").write_text("print('hi')\n")
    done = _cli("verify", str(copy))
    assert done.returncode == 2 and "differ from the manifest's sha256: infer.py" in done.stderr


def test_verify_on_an_images_folder_with_a_png_report(bundle, tmp_path):
    from builder.core.images import PHOTOS

    images = tmp_path / "images"
    images.mkdir()
    for name in ("coffee", "rocket"):
        shutil.copy(PHOTOS / f"{name}.jpg", images / f"{name}.jpg")
    (images / "notes.txt").write_text("not an image")
    result = verify(bundle, images=str(images))
    assert [r.name for r in result.images] == ["coffee.jpg", "rocket.jpg"] and result.passed
    from PIL import Image

    write_report(result, tmp_path / "grid.png")
    assert Image.open(tmp_path / "grid.png").size == (960, 960)


def test_the_reference_nms_agrees_with_the_tests_independent_one():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 300, (200, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(10, 80, (200, 2))], axis=1)
    scores = rng.uniform(0, 1, 200)
    classes = rng.integers(0, 3, 200)
    kept = nms_per_class(boxes, scores, classes, 0.5)
    expected = []
    for c in range(3):
        members = np.where(classes == c)[0]
        expected += [int(members[i]) for i in greedy_nms(boxes[members], scores[members], 0.5)]
    assert sorted(kept.tolist()) == sorted(expected)
    assert list(scores[kept]) == sorted(scores[kept], reverse=True)


def test_bench_times_every_batch_size_the_model_takes(bundle):
    result = bench(bundle, (1, 2), threads=1, duration=0.3)
    assert [r.batch_size for r in result.rows] == [1, 2] and result.skipped == []
    for row in result.as_dict()["results"]:
        assert row["requests"] >= 1 and row["errors"] == 0 and 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert row["images_per_s"] > 0


def test_bench_on_a_fixed_batch_says_what_it_skipped(tmp_path):
    out = builder.bundle(tmp_path / "fixed", target="standalone", model="yolo_nas_s", input_image_shape=(64, 64),
                         batch_size=2).destination
    done = _cli("bench", str(out), "--batch-sizes", "1,2", "--duration", "0.2", "--threads", "1")
    assert done.returncode == 0, done.stderr
    assert "skipped: batch 1: the model takes a fixed batch of 2" in done.stdout
    assert done.stdout.splitlines()[2].split()[0] == "2"


def test_an_engine_bundle_without_tensorrt_here_is_one_clear_error(tmp_path):
    from builder.engines.tensorrt import tensorrt_version
    from builder.verification.runtime import model_file, open_model

    if tensorrt_version() is not None:
        pytest.skip("TensorRT is installed here")
    from types import SimpleNamespace as fields  # the manifest fields model_file and open_model read

    manifest = fields(target="triton", name="det", version=1, runtime="tensorrt",
                      signature=fields(outputs=[fields(name="num_dets")]))
    assert model_file(tmp_path, manifest) == tmp_path / "model_repository/det/1/model.plan"
    with pytest.raises(UserError, match="is a TensorRT engine and TensorRT is not installed here"):
        open_model(tmp_path, manifest)


def _tied_candidates(order):
    """Two overlapping same-class boxes with exactly equal scores (as uniform padding gives), one far away."""
    boxes = np.array([[0, 0, 100, 100], [8, 0, 108, 100], [300, 300, 360, 380]], dtype=np.float32)[list(order)]
    scores = np.zeros((3, 2), dtype=np.float32)
    scores[:, 0] = np.array([0.8, 0.8, 0.6], dtype=np.float32)[list(order)]
    return boxes, scores


def _onnx_nms_keeps(boxes, scores):
    """What the bundle's own NMS flavour keeps of these candidates, run on ONNX Runtime."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from builder.exporting.nms import NMSSettings, flavour

    k, c = scores.shape
    graph = helper.make_graph([], "candidates", [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, k, 4]),
                                                 helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, k, c])], [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    flavour("onnx").append(model, "b", "s", 1, k, c, NMSSettings(0.5, 0.7, 10, "batch"))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    num, out_boxes, out_scores, out_classes = session.run(None, {"b": boxes[None], "s": scores[None]})
    return [(float(out_scores[0, i]), int(out_classes[0, i]), out_boxes[0, i]) for i in range(int(num[0, 0]))]


@pytest.mark.parametrize("order", [(0, 1, 2), (1, 0, 2)])
def test_tied_scores_pass_whichever_tied_box_the_bundle_keeps(order):
    """The greedy reference keeps the first of two tied boxes; ONNX NonMaxSuppression may keep the other.
    Given the bundle's choice the reference breaks the tie the same way, so a correct bundle passes."""
    from builder.verification.reference import _matches

    boxes, scores = _tied_candidates(order)
    kept_by_bundle = _onnx_nms_keeps(boxes, scores)
    assert len(kept_by_bundle) == 2
    pairs_classes = np.zeros(3, dtype=np.int64)
    pair_scores = scores[:, 0].astype(np.float64)
    preferred = _matches(boxes.astype(np.float64), pairs_classes, kept_by_bundle)
    kept = nms_per_class(boxes.astype(np.float64), pair_scores, pairs_classes, 0.7, preferred)
    assert sorted(boxes[kept].tolist()) == sorted(np.asarray(b).tolist() for _, _, b in kept_by_bundle)
    # the tie may go either way: preferring the other tied box keeps that one instead
    for tied in (0, 1):
        other = [(0.8, 0, boxes[tied]), (0.6, 0, boxes[2])]
        kept = nms_per_class(boxes.astype(np.float64), pair_scores, pairs_classes, 0.7,
                             _matches(boxes.astype(np.float64), pairs_classes, other))
        assert kept.tolist() == [tied, 2]


def test_a_choice_that_is_not_a_tie_still_has_to_agree():
    """Scores 0.8 and 0.7: NMS must keep the 0.8 box; a bundle that kept the 0.7 one is not preferred into passing."""
    from builder.verification.reference import _matches

    boxes = np.array([[0, 0, 100, 100], [8, 0, 108, 100]], dtype=np.float64)
    scores, classes = np.array([0.8, 0.7]), np.zeros(2, dtype=np.int64)
    wrong = [(0.7, 0, boxes[1])]
    assert nms_per_class(boxes, scores, classes, 0.7, _matches(boxes, classes, wrong)).tolist() == [0]
    assert nms_per_class(boxes, scores + np.array([0.0, 0.1 - 2e-6]), classes, 0.7,
                         _matches(boxes, classes, wrong)).tolist() == [1]  # 0.8 vs 0.799998: a tie


def test_a_hand_edited_precision_cannot_loosen_the_gate(bundle, tmp_path):
    """manifest.json is not covered by its own file list: the gate follows the precision inside the ONNX file."""
    from builder.core.manifest import write_manifest

    edited = tmp_path / "edited"
    shutil.copytree(bundle, edited)
    manifest = json.loads((edited / "manifest.json").read_text())
    manifest["precision"] = "int8"  # int8's gate tolerates what fp32's does not
    del manifest["files"], manifest["manifest_format"]
    write_manifest(edited, manifest)
    done = _cli("verify", str(edited))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    [line] = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert "precision mismatch: the model was exported as fp32" in line
