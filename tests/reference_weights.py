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
