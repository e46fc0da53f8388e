"""The model zoo against SuperGradients 3.7.1: state_dict layout, parameter counts, outputs, fusion, decode."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from builder.core.images import fit_to_input, to_network_input
from builder.models.registry import construct, family_of, parameter_count
from conftest import REFERENCE, VARIANTS
from reference_weights import deterministic_state_dict

TRAINING_FORM_PARAMETERS = {
    "yolo_nas_s": 19_053_888, "yolo_nas_m": 51_182_658, "yolo_nas_l": 66_976_392,
    "ppyoloe_s": 8_084_588, "ppyoloe_m": 24_134_892, "ppyoloe_l": 54_078_556, "ppyoloe_x": 102_331_484,
}
# SuperGradients' published deployable sizes
FUSED_PARAMETERS = {
    "yolo_nas_s": 12.18e6, "yolo_nas_m": 31.92e6, "yolo_nas_l": 42.02e6,
    "ppyoloe_s": 7.93e6, "ppyoloe_m": 23.43e6, "ppyoloe_l": 52.20e6, "ppyoloe_x": 98.42e6,
}


def _with_reference_weights(variant: str) -> torch.nn.Module:
    model = construct(variant, 80)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict(deterministic_state_dict(shapes), strict=True)
    return model.eval()


def _photo_batch(photos, variant: str, size=(160, 224)) -> torch.Tensor:
    prep = family_of(variant).preprocessing
    batch = np.stack([fit_to_input(photos[n], size, prep)[0].transpose(2, 0, 1) for n in ("astronaut", "coffee")])
    return torch.from_numpy(to_network_input(batch, prep))


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())


@pytest.mark.parametrize("num_classes", [80, 3])
@pytest.mark.parametrize("variant", VARIANTS)
def test_state_dict_keys_and_shapes_equal_supergradients(variant, num_classes, sg_state_dicts):
    reference = sg_state_dicts[f"{variant}@{num_classes}"]
    with torch.device("meta"):
        ours = construct(variant, num_classes).state_dict()
    assert [[k, list(v.shape)] for k, v in ours.items()] == reference["state_dict"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_training_form_parameter_count_is_exact(variant, sg_state_dicts):
    assert parameter_count(variant) == TRAINING_FORM_PARAMETERS[variant] == sg_state_dicts[f"{variant}@80"]["parameters"]
    # the family's torch-free declaration (what `builder models` lists on a host) says the same
    assert family_of(variant).parameters[variant] == parameter_count(variant)


@pytest.mark.parametrize("variant", VARIANTS)
def test_outputs_equal_supergradients_on_the_same_weights(variant):
    """The reference outputs were computed by SG 3.7.1 itself (tests/data/sg_reference/make_reference.py)."""
    reference = np.load(REFERENCE / f"{variant}_outputs.npz")
    x = torch.randn((2, 3, 64, 96), generator=torch.Generator().manual_seed(0))
    model = _with_reference_weights(variant)
    with torch.no_grad():
        boxes, scores = model(x)
    assert boxes.shape == (2, 126, 4) and scores.shape == (2, 126, 80)
    np.testing.assert_allclose(scores.numpy(), reference["scores"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(boxes.numpy(), reference["boxes"], atol=1e-3, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_fused_model_equals_unfused_on_real_photos(variant, photos):
    model = _with_reference_weights(variant)
    x = _photo_batch(photos, variant)
    with torch.no_grad():
        logits, dists, _, _ = model.raw(x)
        boxes, scores = model(x)
        model.fuse()
        fused_logits, fused_dists, _, _ = model.raw(x)
        fused_boxes, fused_scores = model(x)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    for actual, expected in ((fused_logits, logits), (fused_dists, dists), (fused_boxes, boxes), (fused_scores, scores)):
        assert _relative_error(actual, expected) <= 1e-4
    fused = sum(p.numel() for p in model.parameters())
    assert abs(fused - FUSED_PARAMETERS[variant]) / FUSED_PARAMETERS[variant] < 0.01


def test_fusing_twice_changes_nothing(photos):
    model = _with_reference_weights("yolo_nas_s").fuse()
    x = _photo_batch(photos, "yolo_nas_s")
    with torch.no_grad():
        once = model(x)
        twice = model.fuse()(x)
    assert torch.equal(once[0], twice[0]) and torch.equal(once[1], twice[1])


def _reference_decode(levels, strides) -> tuple[np.ndarray, np.ndarray]:
    """Independent numpy decode: per cell, softmax over 17 bins per side, expectation, around the cell centre."""
    all_boxes, all_scores = [], []
    for (cls_map, reg_map), stride in zip(levels, strides):
        cls_map, reg_map = cls_map.numpy().astype(np.float64), reg_map.numpy().astype(np.float64)
        b, c, h, w = cls_map.shape
        for y in range(h):
            for x in range(w):
                bins = reg_map[:, :, y, x].reshape(b, 4, 17)
                p = np.exp(bins - bins.max(-1, keepdims=True))
                p /= p.sum(-1, keepdims=True)
                d = (p * np.arange(17)).sum(-1) * stride  # l, t, r, b in pixels
                cx, cy = (x + 0.5) * stride, (y + 0.5) * stride
                all_boxes.append(np.stack([cx - d[:, 0], cy - d[:, 1], cx + d[:, 2], cy + d[:, 3]], -1))
                all_scores.append(1 / (1 + np.exp(-cls_map[:, :, y, x])))
    return np.stack(all_boxes, 1), np.stack(all_scores, 1)


@pytest.mark.parametrize("variant", ["yolo_nas_s", "ppyoloe_s"])
def test_decode_equals_an_independent_reference(variant, photos):
    model = _with_reference_weights(variant)
    x = _photo_batch(photos, variant, size=(96, 128))
    with torch.no_grad():
        boxes, scores = model(x)
        levels = model.level_outputs(x)
    ref_boxes, ref_scores = _reference_decode(levels, model.strides)
    assert boxes.shape == (2, 12 * 16 + 6 * 8 + 3 * 4, 4) and scores.shape[-1] == 80
    np.testing.assert_allclose(boxes.numpy(), ref_boxes, atol=2e-3)
    np.testing.assert_allclose(scores.numpy(), ref_scores, atol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_640_input_gives_8400_anchors_in_the_family_order(variant):
    model = construct(variant, 5)
    model.level_outputs = lambda x: [(torch.zeros(1, 5, 640 // s, 640 // s), torch.zeros(1, 68, 640 // s, 640 // s))
                                     for s in model.strides]
    boxes, scores = model(torch.zeros(1, 3, 640, 640))
    assert boxes.shape == (1, 8400, 4) and scores.shape == (1, 8400, 5)
    # uniform bins: each side is 8 strides long around the first anchor's centre
    first = model.strides[0]
    assert boxes[0, 0].tolist() == [0.5 * first - 8 * first, 0.5 * first - 8 * first, 0.5 * first + 8 * first, 0.5 * first + 8 * first]


def test_family_preprocessing_and_thresholds_are_declared():
    yolo, pp = family_of("yolo_nas_s"), family_of("ppyoloe_s")
    assert (yolo.preprocessing.channel_order, yolo.preprocessing.std, yolo.preprocessing.resize) == ("RGB", (255.0,) * 3, "letterbox")
    assert (yolo.default_confidence, yolo.default_iou) == (0.25, 0.7)
    assert (pp.preprocessing.channel_order, pp.preprocessing.resize) == ("BGR", "stretch")
    assert (pp.default_confidence, pp.default_iou) == (0.5, 0.65)
