"""YOLO-NAS building blocks (QARepVGG, CSP layers, PAN stages, DFL head) in SuperGradients 3.7.1's parameter layout."""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Callable

import torch
from torch import nn

from builder.models.fusion import conv_bn_kernel, conv_from, fold_bn_into, pad_kernel

# SG's YOLO-NAS recipes override every BatchNorm with these.
BN_EPS = 1e-3
BN_MOMENTUM = 0.03


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class ConvBNReLU(nn.Module):
    """Conv (no bias) -> BN -> ReLU; after `fuse_branches` the conv carries the BN as a bias."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=False)
        self.bn = batch_norm(out_channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    @torch.no_grad()
    def fuse_branches(self) -> None:
        if not isinstance(self.bn, nn.BatchNorm2d):
            return
        self.conv = conv_from(self.conv, *fold_bn_into(self.conv.weight, self.conv.bias, self.bn))
        self.bn = nn.Identity()


def nested_conv_bn_relu(in_channels: int, out_channels: int, kernel: int = 1) -> nn.Sequential:
    """A ConvBNReLU under the name `seq`: SG's head convolutions (ConvBNAct) keep their layers one level deeper."""
    return nn.Sequential(OrderedDict(seq=ConvBNReLU(in_channels, out_channels, kernel)))


class QARepVGGBlock(nn.Module):
    """QARepVGG (S4): ReLU(post_bn(BN(conv3x3(x)) + conv1x1(x) + bias [+ x])), fusable into one 3x3 conv.

    `rbr_reparam` is SG's placeholder for the fused conv; it exists (and is saved) in training form too, so
    checkpoints load strictly, and `fuse_branches` writes the fused kernel into it.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, identity: bool = True):
        super().__init__()
        self.has_identity = identity and in_channels == out_channels and stride == 1
        self.branch_3x3 = nn.Sequential(OrderedDict(
            conv=nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False), bn=batch_norm(out_channels)))
        self.branch_1x1 = nn.Conv2d(in_channels, out_channels, 1, stride, 0, bias=True)
        self.post_bn = batch_norm(out_channels)
        self.rbr_reparam = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=True)
        self.act = nn.ReLU(inplace=True)
        self.fused = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return self.act(self.rbr_reparam(x))
        branches = self.branch_3x3(x) + self.branch_1x1(x)
        if self.has_identity:
            branches = branches + x
        return self.act(self.post_bn(branches))

    @torch.no_grad()
    def fuse_branches(self) -> None:
        if self.fused:
            return
        weight, bias = conv_bn_kernel(self.branch_3x3.conv, self.branch_3x3.bn, kernel=3)
        weight = weight + pad_kernel(self.branch_1x1.weight, 3)
        bias = bias + self.branch_1x1.bias
        if self.has_identity:
            channels = torch.arange(weight.shape[0], device=weight.device)
            weight[channels, channels, 1, 1] += 1.0
        weight, bias = fold_bn_into(weight, bias, self.post_bn)
        self.rbr_reparam.weight.copy_(weight)
        self.rbr_reparam.bias.copy_(bias)
        del self.branch_3x3, self.branch_1x1, self.post_bn
        self.fused = True


BlockFactory = Callable[[int, int], nn.Module]


def qarepvgg(in_channels: int, out_channels: int) -> nn.Module:
    return QARepVGGBlock(in_channels, out_channels)


def conv3x3(in_channels: int, out_channels: int) -> nn.Module:
    return ConvBNReLU(in_channels, out_channels, 3)


class Bottleneck(nn.Module):
    """Two blocks and a residual scaled by a learnable scalar; the scalar stays after fusion, since the
    residual input also feeds other layers and cannot absorb it."""

    def __init__(self, channels: int, block: BlockFactory):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1))
        self.cv1 = block(channels, channels)
        self.cv2 = block(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.alpha * x + self.cv2(self.cv1(x))


class CSPLayer(nn.Module):
    """Two 1x1 projections, a chain of bottlenecks on one, and a 1x1 over their concatenation."""

    def __init__(self, in_channels: int, out_channels: int, num_bottlenecks: int, hidden: int,
                 block: BlockFactory, concat_intermediates: bool = False):
        super().__init__()
        self.concat_intermediates = concat_intermediates
        concat_channels = hidden * (2 + (num_bottlenecks if concat_intermediates else 0))
        self.conv1 = ConvBNReLU(in_channels, hidden)
        self.conv2 = ConvBNReLU(in_channels, hidden)
        self.conv3 = ConvBNReLU(concat_channels, out_channels)
        self.bottlenecks = nn.ModuleList(Bottleneck(hidden, block) for _ in range(num_bottlenecks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x)
        parts = [y]
        for bottleneck in self.bottlenecks:
            y = bottleneck(y)
            parts.append(y)
        if not self.concat_intermediates:
            parts = parts[-1:]
        return self.conv3(torch.cat((*parts, self.conv2(x)), dim=1))


class Stage(nn.Module):
    """Backbone stage: a stride-2 QARepVGG block, then a CSP layer of QARepVGG bottlenecks."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, hidden: int, concat_intermediates: bool):
        super().__init__()
        self.downsample = QARepVGGBlock(in_channels, out_channels, stride=2, identity=False)
        self.blocks = CSPLayer(out_channels, out_channels, num_blocks, hidden, qarepvgg, concat_intermediates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class SPP(nn.Module):
    """Spatial pyramid pooling: max pools of several sizes side by side, concatenated with their input."""

    def __init__(self, in_channels: int, out_channels: int, kernels: tuple[int, ...] = (5, 9, 13)):
        super().__init__()
        hidden = in_channels // 2
        self.cv1 = ConvBNReLU(in_channels, hidden)
        self.cv2 = ConvBNReLU(hidden * (len(kernels) + 1), out_channels)
        self.pools = nn.ModuleList(nn.MaxPool2d(k, stride=1, padding=k // 2) for k in kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        return self.cv2(torch.cat([x, *(pool(x) for pool in self.pools)], dim=1))


class UpStage(nn.Module):
    """Top-down PAN stage: upsample the deeper map, join a same-scale skip and a downsampled finer skip.

    Returns the pre-upsample projection too, which a later bottom-up stage reuses as its skip.
    """

    def __init__(self, in_channels: int, skip1_channels: int, skip2_channels: int, out_channels: int,
                 num_blocks: int, hidden: int):
        super().__init__()
        self.reduce_skip1 = ConvBNReLU(skip1_channels, out_channels)
        self.reduce_skip2 = ConvBNReLU(skip2_channels, out_channels)
        self.conv = ConvBNReLU(in_channels, out_channels)
        # A learned upsample with a bias; it has no BN, so it stays as it is in the deploy form.
        self.upsample = nn.ConvTranspose2d(out_channels, out_channels, kernel_size=2, stride=2)
        self.downsample = ConvBNReLU(out_channels, out_channels, 3, stride=2)
        self.reduce_after_concat = ConvBNReLU(3 * out_channels, out_channels)
        self.blocks = CSPLayer(out_channels, out_channels, num_blocks, hidden, qarepvgg)

    def forward(self, x: torch.Tensor, skip1: torch.Tensor, skip2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_inter = self.conv(x)
        joined = torch.cat((self.upsample(x_inter), self.reduce_skip1(skip1),
                            self.downsample(self.reduce_skip2(skip2))), dim=1)
        return x_inter, self.blocks(self.reduce_after_concat(joined))


class DownStage(nn.Module):
    """Bottom-up PAN stage: a stride-2 3x3 conv, concatenated with a skip, then a CSP layer of plain convs."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, num_blocks: int, hidden: int):
        super().__init__()
        self.conv = ConvBNReLU(in_channels, out_channels // 2, 3, stride=2)
        self.blocks = CSPLayer(out_channels // 2 + skip_channels, out_channels, num_blocks, hidden, conv3x3)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.blocks(torch.cat((self.conv(x), skip), dim=1))


class DFLHead(nn.Module):
    """One level's head: shared 1x1 stem, then separate 3x3 class and box branches and 1x1 predictors."""

    #: class bias at init, so every class starts at probability 0.01
    PRIOR_PROBABILITY = 1e-2

    def __init__(self, in_channels: int, inter_channels: int, num_classes: int, reg_max: int = 16):
        super().__init__()
        self.stem = nested_conv_bn_relu(in_channels, inter_channels)
        self.cls_convs = nn.Sequential(nested_conv_bn_relu(inter_channels, inter_channels, 3))
        self.reg_convs = nn.Sequential(nested_conv_bn_relu(inter_channels, inter_channels, 3))
        self.cls_pred = nn.Conv2d(inter_channels, num_classes, 1)
        self.reg_pred = nn.Conv2d(inter_channels, 4 * (reg_max + 1), 1)
        nn.init.constant_(self.cls_pred.bias, -math.log((1 - self.PRIOR_PROBABILITY) / self.PRIOR_PROBABILITY))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stem(x)
        return self.cls_pred(self.cls_convs(x)), self.reg_pred(self.reg_convs(x))
