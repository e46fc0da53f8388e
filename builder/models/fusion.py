"""Folding batch norms and parallel branches into one convolution: the arithmetic behind `Detector.fuse`."""
from __future__ import annotations

import torch
from torch import nn


def conv_bn_kernel(conv: nn.Conv2d | None, bn: nn.BatchNorm2d, *, channels: int | None = None,
                   kernel: int = 3, groups: int = 1, identity: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The (weight, bias) of a single conv equal to bn(conv(x)) in eval mode.

    With `identity=True` the branch is bn(x): an identity kernel of `channels` outputs is used instead of a conv.
    Kernels smaller than `kernel` are zero-padded to it (centred), so branches can be summed.
    """
    if identity:
        in_per_group = channels // groups
        weight = torch.zeros(channels, in_per_group, kernel, kernel, device=bn.weight.device, dtype=bn.weight.dtype)
        for c in range(channels):
            weight[c, c % in_per_group, kernel // 2, kernel // 2] = 1.0
        conv_bias = torch.zeros(channels, device=bn.weight.device, dtype=bn.weight.dtype)
    else:
        weight = pad_kernel(conv.weight, kernel)
        conv_bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels, device=weight.device)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return weight * scale.reshape(-1, 1, 1, 1), bn.bias + (conv_bias - bn.running_mean) * scale


def pad_kernel(weight: torch.Tensor, kernel: int) -> torch.Tensor:
    pad = (kernel - weight.shape[-1]) // 2
    return nn.functional.pad(weight, [pad, pad, pad, pad]) if pad else weight


def fold_bn_into(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of conv followed by bn, for a conv given by its tensors."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = bias if bias is not None else torch.zeros_like(bn.running_mean)
    return weight * scale.reshape(-1, 1, 1, 1), bn.bias + (bias - bn.running_mean) * scale


def conv_from(template: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    """A conv with `template`'s geometry and the given weight and bias."""
    conv = nn.Conv2d(template.in_channels, weight.shape[0], weight.shape[-1], stride=template.stride,
                     padding=weight.shape[-1] // 2 * template.dilation[0], dilation=template.dilation,
                     groups=template.groups, bias=True, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
    return conv
