"""Train a builder model from scratch on shape scenes (`shapes.py`), on a CPU, and save a SuperGradients-style
checkpoint (`net`, `ema_net`, `processing_params.class_names`) that `--weights` loads.

The loss is the task-aligned recipe YOLOv8 and PP-YOLOE train with: task-aligned assignment (top-10 anchors
inside each box by score^0.5 * IoU^6), BCE on IoU-normalised class targets, GIoU and distribution focal loss
on the boxes. On 2 cores: ppyoloe_s 800 steps in 14 minutes, yolo_nas_s 1000 steps in 37 minutes:

    python benchmarks/train_shapes.py --model yolo_nas_s --steps 1000 --output weights/yolo_nas_s_shapes.pth
"""
from __future__ import annotations

import argparse
import copy
import math
import pathlib
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from shapes import SHAPES, Scene, scenes  # noqa: E402

TOP_K, ALPHA, BETA = 10, 0.5, 6.0
BOX_GAIN, CLS_GAIN, DFL_GAIN = 7.5, 0.5, 1.5
EPS = 1e-9


def box_iou(a: torch.Tensor, b: torch.Tensor, giou: bool = False) -> torch.Tensor:
    """Element-wise IoU (or GIoU) of boxes [..., 4] broadcast against each other."""
    lt, rb = torch.max(a[..., :2], b[..., :2]), torch.min(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = lambda t: (t[..., 2:] - t[..., :2]).clamp(min=0).prod(-1)  # noqa: E731
    union = area(a) + area(b) - inter + EPS
    iou = inter / union
    if not giou:
        return iou
    hull = (torch.max(a[..., 2:], b[..., 2:]) - torch.min(a[..., :2], b[..., :2])).clamp(min=0).prod(-1) + EPS
    return iou - (hull - union) / hull


@torch.no_grad()
def assign(scores: torch.Tensor, boxes: torch.Tensor, anchors: torch.Tensor, gt_boxes: torch.Tensor,
           gt_classes: torch.Tensor, gt_valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Task-aligned assignment. scores [B, N, C] (sigmoid), boxes [B, N, 4], anchors [N, 2]; ground truth padded
    to [B, M, ...] with `gt_valid` [B, M]. Returns the foreground mask [B, N], each anchor's box [B, N, 4] and
    its class targets [B, N, C] (the alignment, normalised so each object's best anchor gets its best IoU)."""
    b, n, c = scores.shape
    m = gt_boxes.shape[1]
    ax, ay = anchors[:, 0], anchors[:, 1]
    inside = torch.stack((ax - gt_boxes[..., 0, None], ay - gt_boxes[..., 1, None],
                          gt_boxes[..., 2, None] - ax, gt_boxes[..., 3, None] - ay), dim=-1).amin(-1) > EPS
    inside &= gt_valid[..., None]  # [B, M, N]
    ious = box_iou(gt_boxes[:, :, None], boxes[:, None]).clamp(min=0) * inside
    class_scores = scores.transpose(1, 2).gather(1, gt_classes.clamp(min=0)[..., None].expand(b, m, n))
    # the tiny in-box term breaks ties among zero metrics towards anchors that may take the object
    metric = class_scores.pow(ALPHA) * ious.pow(BETA) * inside + EPS * inside
    top = torch.zeros_like(inside)
    top.scatter_(-1, metric.topk(min(TOP_K, n), dim=-1).indices, True)
    positive = top & inside
    # an anchor in several objects' top-k takes the one it overlaps most
    crowded = positive.sum(1, keepdim=True) > 1
    best = F.one_hot(ious.argmax(1), m).transpose(1, 2).bool()
    positive = torch.where(crowded, best & inside, positive)
    foreground = positive.any(1)
    owner = positive.float().argmax(1)  # [B, N]
    target_boxes = gt_boxes.gather(1, owner[..., None].expand(b, n, 4))
    target_classes = gt_classes.gather(1, owner).clamp(min=0)
    aligned = metric * positive
    norm = (aligned * (ious * positive).amax(-1, keepdim=True) / (aligned.amax(-1, keepdim=True) + EPS)).amax(1)
    targets = F.one_hot(target_classes, c).float() * (norm * foreground)[..., None]
    return foreground, target_boxes, targets


def detection_loss(model, x: torch.Tensor, gt_boxes: torch.Tensor, gt_classes: torch.Tensor,
                   gt_valid: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    from builder.models.base import distances_to_boxes, expected_distances

    logits, dists, anchors, strides = model.raw(x)
    boxes = distances_to_boxes(expected_distances(dists), anchors, strides)
    foreground, target_boxes, targets = assign(logits.detach().sigmoid(), boxes.detach(), anchors, gt_boxes,
                                               gt_classes, gt_valid)
    total = targets.sum().clamp(min=1.0)
    cls = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / total
    weight = targets.sum(-1)[foreground]
    box = ((1 - box_iou(boxes[foreground], target_boxes[foreground], giou=True)) * weight).sum() / total
    # distribution focal loss: the two bins around each side's target distance (in strides)
    anchor = anchors.expand_as(boxes[..., :2])[foreground]
    stride = strides.expand(*boxes.shape[:2], 1)[foreground]
    sides = torch.cat((anchor - target_boxes[foreground][:, :2], target_boxes[foreground][:, 2:] - anchor), -1)
    sides = (sides / stride).clamp(0, dists.shape[-1] - 1 - 0.01)
    left = sides.long()
    right_weight = sides - left
    chosen = dists[foreground]  # [P, 4, R + 1]
    ce = lambda idx: F.cross_entropy(chosen.flatten(0, 1), idx.flatten(), reduction="none").view_as(idx)  # noqa: E731
    dfl = ((ce(left) * (1 - right_weight) + ce(left + 1) * right_weight).mean(-1) * weight).sum() / total
    loss = BOX_GAIN * box + CLS_GAIN * cls + DFL_GAIN * dfl
    return loss * x.shape[0], {"box": box.item(), "cls": cls.item(), "dfl": dfl.item(),
                               "positives": int(foreground.sum())}


def batch_of(items: list[Scene], prep) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from builder.core.images import to_network_input

    images = np.stack([s.image.transpose(2, 0, 1) for s in items])
    m = max(1, max(len(s.boxes) for s in items))
    boxes = torch.zeros(len(items), m, 4)
    classes = torch.full((len(items), m), -1, dtype=torch.long)
    for i, s in enumerate(items):
        boxes[i, :len(s.boxes)] = torch.from_numpy(s.boxes)
        classes[i, :len(s.classes)] = torch.from_numpy(s.classes)
    return torch.from_numpy(to_network_input(images, prep)), boxes, classes, classes >= 0


class EMA:
    """An exponential moving average of the weights (and a copy of the batch-norm statistics)."""

    def __init__(self, model: torch.nn.Module, decay: float = 0.999, ramp: float = 200.0):
        self.model = copy.deepcopy(model).eval()
        self.decay, self.ramp, self.updates = decay, ramp, 0
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.ramp))
        source = model.state_dict()
        for key, value in self.model.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(d).add_(source[key].detach(), alpha=1 - d)
            else:
                value.copy_(source[key])


@torch.no_grad()
def evaluate(model, items: list[Scene], confidence: float, iou: float) -> dict:
    """Recall and precision against the scenes' ground truth (same class, IoU >= 0.5), detections as the
    export computes them (builder's PyTorch reference: top-k candidates, threshold, class-aware NMS)."""
    from builder.quantize.report import agreement
    from builder.verification.reference import reference_detections

    model.eval()
    settings = {"pre_nms_top_k": 1000, "confidence_threshold": confidence, "iou_threshold": iou,
                "max_detections": 1000}
    found = [reference_detections(model, scene.nchw, settings) for scene in items]
    return agreement([scene.truth for scene in items], found, [f"scene{i}" for i in range(len(items))])


def train(variant: str, steps: int, batch: int, size: int, lr: float, seed: int, log_every: int = 50):
    from builder.models.registry import construct, family_of

    torch.manual_seed(seed)
    family = family_of(variant)
    model = construct(variant, len(SHAPES))
    model.train()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() > 1 else no_decay).append(p)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0}],
                                  lr=lr, betas=(0.9, 0.999))
    warmup = min(100, steps // 5)
    schedule = lambda step: (step + 1) / warmup if step < warmup else (  # noqa: E731
        0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup))))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    ema = EMA(model)
    validation = scenes(16, seed + 1, (size, size), held_out=True)
    rng_seed = seed * 1_000_003
    start = time.perf_counter()
    for step in range(steps):
        items = scenes(batch, rng_seed + step, (size, size), held_out=False)
        x, boxes, classes, valid = batch_of(items, family.preprocessing)
        model.train()
        loss, parts = detection_loss(model, x, boxes, classes, valid)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        scheduler.step()
        ema.update(model)
        if (step + 1) % log_every == 0 or step + 1 == steps:
            elapsed = time.perf_counter() - start
            quality = evaluate(ema.model, validation, family.default_confidence, family.default_iou)
            print(f"step {step + 1}/{steps}  loss {loss.item() / batch:.3f} (box {parts['box']:.3f} cls "
                  f"{parts['cls']:.3f} dfl {parts['dfl']:.3f}, {parts['positives']} positives)  held-out recall "
                  f"{quality['recall']:.3f} precision {quality['precision']:.3f}  "
                  f"{elapsed:.0f} s, eta {elapsed / (step + 1) * (steps - step - 1):.0f} s", flush=True)
    return model, ema.model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="yolo_nas_s")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=320, help="square training input (default 320)")
    parser.add_argument("--lr", type=float, default=1.5e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--output", type=pathlib.Path, required=True)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, ema = train(args.model, args.steps, args.batch, args.size, args.lr, args.seed)
    checkpoint = {"net": model.state_dict(), "ema_net": ema.state_dict(),
                  "processing_params": {"class_names": list(SHAPES)},
                  "training": {"recipe": "benchmarks/train_shapes.py", "steps": args.steps, "batch": args.batch,
                               "size": args.size, "lr": args.lr, "seed": args.seed}}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    partial = args.output.with_name(args.output.name + ".partial")
    torch.save(checkpoint, partial)
    partial.replace(args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
