"""The quantization benchmark's trained weights: shape scenes with exact boxes, and the training loss."""
from __future__ import annotations

import pathlib
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
from shapes import SHAPES, background, render_scene, training_photos  # noqa: E402
from train_shapes import TOP_K, assign, batch_of, detection_loss  # noqa: E402


@pytest.mark.parametrize("seed", range(4))
def test_each_box_is_the_extent_of_the_pixels_its_shape_changed(seed):
    photos = training_photos()
    plain = background(np.random.default_rng(seed), photos, (256, 320))
    scene = render_scene(np.random.default_rng(seed), photos, (256, 320), objects=(3, 6))
    assert scene.image.shape == (256, 320, 3) and len(scene.boxes) == len(scene.classes) >= 1
    assert set(scene.classes.tolist()) <= set(range(len(SHAPES)))
    changed = np.abs(scene.image.astype(int) - plain.astype(int)).sum(-1) > 0
    claimed = np.zeros_like(changed)
    for x1, y1, x2, y2 in scene.boxes:
        inside = changed[int(y1):int(np.ceil(y2)), int(x1):int(np.ceil(x2))]
        ys, xs = np.nonzero(inside)
        # the shape reaches every side of its box (to within the rasterisation's pixel)
        assert xs.min() <= 1.5 and ys.min() <= 1.5
        assert inside.shape[1] - 1 - xs.max() <= 1.5 and inside.shape[0] - 1 - ys.max() <= 1.5
        claimed[int(y1):int(np.ceil(y2)), int(x1):int(np.ceil(x2))] = True
    assert not (changed & ~claimed).any()  # nothing was drawn outside the boxes


def test_assignment_picks_at_most_top_k_anchors_inside_each_object():
    from builder.models.base import anchor_centres

    anchors = torch.cat([anchor_centres(8, 8, 8), anchor_centres(4, 4, 16)])
    gt = torch.tensor([[[4.0, 4.0, 40.0, 36.0], [40.0, 40.0, 60.0, 60.0], [0.0, 0.0, 0.0, 0.0]]])
    classes = torch.tensor([[1, 3, -1]])
    valid = classes >= 0
    # predictions: every anchor a 24-pixel box around itself, class scores uniform
    boxes = torch.cat([anchors - 12, anchors + 12], -1)[None]
    scores = torch.full((1, len(anchors), 4), 0.5)
    foreground, target_boxes, targets = assign(scores, boxes, anchors, gt, classes, valid)
    first = foreground[0] & (target_boxes[0] == gt[0, 0]).all(-1)
    second = foreground[0] & (target_boxes[0] == gt[0, 1]).all(-1)
    assert 1 <= int(first.sum()) <= TOP_K and 1 <= int(second.sum()) <= TOP_K
    assert int(foreground.sum()) == int(first.sum() + second.sum())
    for mask, box in ((first, gt[0, 0]), (second, gt[0, 1])):
        a = anchors[mask]
        assert ((a[:, 0] > box[0]) & (a[:, 0] < box[2]) & (a[:, 1] > box[1]) & (a[:, 1] < box[3])).all()
    # class targets: the object's class only; its best-aligned anchor gets its best IoU
    from train_shapes import box_iou

    for mask, box, cls in ((first, gt[0, 0], 1), (second, gt[0, 1], 3)):
        assert targets[0, mask].argmax(-1).eq(cls).all()
        assert float(targets[0, mask].sum(-1).max()) == pytest.approx(float(box_iou(boxes[0, mask], box).max()), rel=1e-4)
    assert float(targets[0, ~foreground[0]].abs().sum()) == 0.0


def test_the_loss_fits_one_batch():
    from builder.models.registry import construct, family_of

    torch.manual_seed(0)
    model = construct("ppyoloe_s", len(SHAPES)).train()
    rng = np.random.default_rng(0)
    items = [render_scene(rng, training_photos(), (96, 96), objects=(1, 2), sides=(24, 64)) for _ in range(2)]
    x, boxes, classes, valid = batch_of(items, family_of("ppyoloe_s").preprocessing)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(15):
        loss, parts = detection_loss(model, x, boxes, classes, valid)
        assert parts["positives"] > 0
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
