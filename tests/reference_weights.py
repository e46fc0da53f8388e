"""Deterministic, name-seeded weights, so two implementations with the same state_dict keys get the same model."""
import zlib

import torch


def deterministic_state_dict(shapes: dict[str, tuple[int, ...]], scale: float = 1.0) -> dict[str, torch.Tensor]:
    """Weights that depend only on each tensor's key and shape.

    Batch-norm statistics stay in a sane range (variance in [1, 2], scale in [0.3, 0.6]) so that deep random networks neither
    explode nor vanish; convolution weights are He-scaled by their fan-in.
    """
    out = {}
    for key, shape in shapes.items():
        gen = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        if key.endswith("num_batches_tracked"):
            out[key] = torch.zeros(shape, dtype=torch.long)
        elif key.endswith("running_var"):
            out[key] = 1.0 + torch.rand(shape, generator=gen)
        elif key.endswith("running_mean"):
            out[key] = 0.1 * torch.randn(shape, generator=gen)
        elif len(shape) >= 2:
            fan_in = 1
            for s in shape[1:]:
                fan_in *= s
            out[key] = scale * torch.randn(shape, generator=gen) * (2.0 / fan_in) ** 0.5
        elif key.endswith("weight") or key.endswith("alpha"):
            out[key] = 0.3 + 0.3 * torch.rand(shape, generator=gen)
        else:
            out[key] = 0.1 * torch.randn(shape, generator=gen)
    return out


@torch.no_grad()
def spread_scores(model: torch.nn.Module, x: torch.Tensor, count: int = 300, threshold: float | None = None,
                  headroom: float = 8.0) -> None:
    """Rescale the class-prediction layers so that at least `count` (anchor, class) scores of each image in `x`
    pass `threshold`, and the best logit sits `headroom` above the threshold's (no saturated scores, no ties).

    Random weights give scores near 0.5 or 0.01 everywhere, which tests nothing of NMS. The class logits are
    affine in the last layer's weight and bias, so one scale and one shift place them exactly.
    """
    threshold = model.family.default_confidence if threshold is None else threshold
    state = model.state_dict()
    from builder.models.registry import class_count_axes

    keys = list(class_count_axes(model.variant))
    logits = model.raw(x)[0].flatten(1)
    kth = float(logits.topk(count, dim=1).values[:, -1].min())  # every image gets at least `count`
    scale = headroom / (float(logits.max()) - kth)
    shift = float(torch.logit(torch.tensor(threshold))) + 1e-3 - scale * kth
    for k in keys:
        state[k] *= scale
        if k.endswith("bias"):
            state[k] += shift
    model.load_state_dict(state)


@torch.no_grad()
def recalibrate_batch_norms(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Set every batch norm's running statistics to those of `x` (real photos), as training would.

    With random statistics a deep network's output hardly depends on its input; with statistics measured
    on real images every layer stays normalised, so outputs vary with the image like a trained model's.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration forward
    model.train()
    model(x)
    model.eval()
    for bn in norms:
        # a channel that barely varies on a few photos (a dead ReLU) would be divided by ~sqrt(eps) and amplify
        # float32 noise beyond what a trained model has: give it a floor
        bn.running_var.clamp_(min=float(bn.running_var.mean()))


def lively_model(variant: str, x: torch.Tensor, count: int = 300, num_classes: int = 80):
    """A model on deterministic weights whose outputs depend on the image and whose scores on `x` spread
    like a trained detector's (at least `count` per image pass the family's confidence threshold)."""
    from builder.models.registry import construct

    model = construct(variant, num_classes)
    model.load_state_dict(deterministic_state_dict({k: tuple(v.shape) for k, v in model.state_dict().items()}))
    recalibrate_batch_norms(model, x)
    spread_scores(model, x, count)
    return model
