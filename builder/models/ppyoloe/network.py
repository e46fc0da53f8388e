"""PP-YOLOE S/M/L/X (CSPResNet, CSP-PAN, ESE head) with state_dict keys identical to SuperGradients 3.7.1."""
from __future__ import annotations

import math
from functools import partial
from typing import Sequence

import torch
from torch import nn

from builder.models.base import Detector
from builder.models.fusion import conv_bn_kernel, conv_from, fold_bn_into


class ConvBNAct(nn.Module):
    """Conv (no bias) -> BatchNorm -> SiLU, kept inside `seq` because SG's keys read `.seq.conv` / `.seq.bn`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        super().__init__()
        self.seq = nn.Sequential()
        self.seq.add_module("conv", nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                                              padding=kernel_size // 2, bias=False))
        self.seq.add_module("bn", nn.BatchNorm2d(out_channels, eps=1e-5, momentum=0.1))
        self.seq.add_module("act", nn.SiLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)

    @torch.no_grad()
    def fuse_branches(self) -> None:
        if not hasattr(self.seq, "bn"):
            return
        weight, bias = fold_bn_into(self.seq.conv.weight, self.seq.conv.bias, self.seq.bn)
        # Replacing the entry in place keeps the Sequential's order: conv, then act.
        self.seq.conv = conv_from(self.seq.conv, weight, bias)
        del self.seq.bn


def _conv_bn(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    branch = nn.Sequential()
    branch.add_module("conv", nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False))
    branch.add_module("bn", nn.BatchNorm2d(out_channels))
    return branch


class RepVGGBlock(nn.Module):
    """SiLU(BN(conv3x3 x) + BN(conv1x1 x)); PP-YOLOE uses neither the identity branch nor the learnable alpha.

    Fusing replaces both branches by one 3x3 conv with bias, `rbr_reparam`, the name SG gives its deploy form.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.nonlinearity = nn.SiLU()
        self.branch_3x3 = _conv_bn(channels, channels, 3)
        self.branch_1x1 = _conv_bn(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "rbr_reparam"):
            return self.nonlinearity(self.rbr_reparam(x))
        return self.nonlinearity(self.branch_3x3(x) + self.branch_1x1(x))

    @torch.no_grad()
    def fuse_branches(self) -> None:
        if hasattr(self, "rbr_reparam"):
            return
        w3, b3 = conv_bn_kernel(self.branch_3x3.conv, self.branch_3x3.bn, kernel=3)
        w1, b1 = conv_bn_kernel(self.branch_1x1.conv, self.branch_1x1.bn, kernel=3)
        self.rbr_reparam = conv_from(self.branch_3x3.conv, w3 + w1, b3 + b1)
        del self.branch_3x3, self.branch_1x1


class CSPResBasicBlock(nn.Module):
    """ConvBNAct 3x3 then RepVGGBlock, with a residual add in the backbone and none in the neck."""

    def __init__(self, channels: int, residual: bool):
        super().__init__()
        self.conv1 = ConvBNAct(channels, channels, 3)
        self.conv2 = RepVGGBlock(channels)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.conv1(x))
        return x + y if self.residual else y


class EffectiveSE(nn.Module):
    """Effective squeeze-excitation (CenterMask): x * hardsigmoid(conv1x1(mean over H, W of x))."""

    def __init__(self, channels: int):
        super().__init__()
        self.project = nn.Conv2d(channels, channels, 1)
        self.act = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.act(self.project(x.mean((2, 3), keepdim=True)))


class SPP(nn.Module):
    """Concatenate x with stride-1 max pools of several sizes, then a ConvBNAct back to `out_channels`."""

    def __init__(self, in_channels: int, out_channels: int, pool_sizes: Sequence[int] = (5, 9, 13)):
        super().__init__()
        self.pool = nn.ModuleList(nn.MaxPool2d(size, stride=1, padding=size // 2) for size in pool_sizes)
        self.conv = ConvBNAct(in_channels * (1 + len(pool_sizes)), out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([x] + [pool(x) for pool in self.pool], dim=1))


class CSPResStage(nn.Module):
    """Backbone stage: stride-2 ConvBNAct, split into two 1x1 paths (one through residual blocks), ESE, 1x1 out."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int):
        super().__init__()
        half = (in_channels + out_channels) // 4  # SG rounds the middle width down to an even number
        mid = 2 * half
        self.conv_down = ConvBNAct(in_channels, mid, 3, stride=2)
        self.conv1 = ConvBNAct(mid, half, 1)
        self.conv2 = ConvBNAct(mid, half, 1)
        self.blocks = nn.Sequential(*(CSPResBasicBlock(half, residual=True) for _ in range(num_blocks)))
        self.attn = EffectiveSE(mid)
        self.conv3 = ConvBNAct(mid, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_down(x)
        y = torch.cat([self.conv1(x), self.blocks(self.conv2(x))], dim=1)
        return self.conv3(self.attn(y))


class CSPStage(nn.Module):
    """Neck stage: two 1x1 paths, one through plain (non-residual) blocks, optionally with SPP in the middle."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, spp: bool):
        super().__init__()
        mid = out_channels // 2
        self.conv1 = ConvBNAct(in_channels, mid, 1)
        self.conv2 = ConvBNAct(in_channels, mid, 1)
        self.convs = nn.Sequential()
        for i in range(num_blocks):
            self.convs.add_module(str(i), CSPResBasicBlock(mid, residual=False))
            if spp and i == (num_blocks - 1) // 2:
                self.convs.add_module("spp", SPP(mid, mid))
        self.conv3 = ConvBNAct(2 * mid, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(torch.cat([self.conv1(x), self.convs(self.conv2(x))], dim=1))


class ESEAttn(nn.Module):
    """Head attention: ConvBNAct1x1(feat * sigmoid(fc(avg))), with `avg` the feature map's global average."""

    def __init__(self, channels: int):
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)
        self.conv = ConvBNAct(channels, channels, 1)
        nn.init.normal_(self.fc.weight, std=0.001)

    def forward(self, feat: torch.Tensor, avg: torch.Tensor) -> torch.Tensor:
        return self.conv(feat * torch.sigmoid(self.fc(avg)))


# (width_mult, depth_mult) per variant; every channel and block count below is scaled from the L sizes.
SCALES = {
    "ppyoloe_s": (0.50, 0.33),
    "ppyoloe_m": (0.75, 0.67),
    "ppyoloe_l": (1.00, 1.00),
    "ppyoloe_x": (1.25, 1.33),
}
BACKBONE_CHANNELS = (64, 128, 256, 512, 1024)  # stem, then the four stages
BACKBONE_BLOCKS = (3, 6, 6, 3)
NECK_OUT_CHANNELS = (768, 384, 192)  # P5, P4, P3: also the head's input channels
NECK_BLOCKS = 3


def _scaled(value: int, mult: float) -> int:
    return max(round(value * mult), 1)


class CSPResNet(nn.Module):
    """Three-conv stem (stride 2) and four stride-2 CSPResStages; returns the stride 8, 16 and 32 maps."""

    def __init__(self, width_mult: float, depth_mult: float):
        super().__init__()
        channels = [_scaled(c, width_mult) for c in BACKBONE_CHANNELS]
        blocks = [_scaled(n, depth_mult) for n in BACKBONE_BLOCKS]
        self.stem = nn.Sequential()
        self.stem.add_module("conv1", ConvBNAct(3, channels[0] // 2, 3, stride=2))
        self.stem.add_module("conv2", ConvBNAct(channels[0] // 2, channels[0] // 2, 3))
        self.stem.add_module("conv3", ConvBNAct(channels[0] // 2, channels[0], 3))
        self.stages = nn.ModuleList(CSPResStage(channels[i], channels[i + 1], blocks[i]) for i in range(4))
        self.out_channels = tuple(channels[2:])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i > 0:  # stage 0 (stride 4) feeds only the next stage
                outs.append(x)
        return outs


class CSPPAN(nn.Module):
    """Top-down (FPN) then bottom-up (PAN) CSP path over [C3, C4, C5]; returns [P5, P4, P3]."""

    def __init__(self, in_channels: tuple[int, ...], out_channels: tuple[int, ...], num_blocks: int):
        super().__init__()
        levels = len(in_channels)
        self.fpn_stages = nn.ModuleList()
        self.fpn_routes = nn.ModuleList()
        route_channels = 0
        # Built deepest first; SG wraps each CSPStage in a Sequential ("stage_num" = 1), hence the ".0." in its keys.
        for i, (ch_in, ch_out) in enumerate(zip(in_channels[::-1], out_channels)):
            self.fpn_stages.append(nn.Sequential(CSPStage(ch_in + route_channels, ch_out, num_blocks, spp=i == 0)))
            if i < levels - 1:
                self.fpn_routes.append(ConvBNAct(ch_out, ch_out // 2, 1))
            route_channels = ch_out // 2
        # pan_*[i] takes level i + 1's output down to level i (indices into out_channels).
        self.pan_stages = nn.ModuleList(
            nn.Sequential(CSPStage(out_channels[i] + out_channels[i + 1], out_channels[i], num_blocks, spp=False))
            for i in range(levels - 1))
        self.pan_routes = nn.ModuleList(ConvBNAct(out_channels[i + 1], out_channels[i + 1], 3, stride=2)
                                        for i in range(levels - 1))

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        fpn_feats = []
        route = None
        for i, feat in enumerate(feats[::-1]):
            if route is not None:
                feat = torch.cat([route, feat], dim=1)
            out = self.fpn_stages[i](feat)
            fpn_feats.append(out)
            if i < len(self.fpn_routes):
                route = nn.functional.interpolate(self.fpn_routes[i](out), scale_factor=2, mode="nearest")
        route = fpn_feats[-1]
        pan_feats = [route]
        for i in reversed(range(len(self.pan_stages))):
            route = self.pan_stages[i](torch.cat([self.pan_routes[i](route), fpn_feats[i]], dim=1))
            pan_feats.append(route)
        return pan_feats[::-1]


class PPYoloEHead(nn.Module):
    """Per level: cls = pred_cls(ESE_cls(f) + f), reg = pred_reg(ESE_reg(f)), both 3x3 convs with bias."""

    def __init__(self, in_channels: tuple[int, ...], num_classes: int, reg_max: int):
        super().__init__()
        self.stem_cls = nn.ModuleList(ESEAttn(c) for c in in_channels)
        self.stem_reg = nn.ModuleList(ESEAttn(c) for c in in_channels)
        self.pred_cls = nn.ModuleList(nn.Conv2d(c, num_classes, 3, padding=1) for c in in_channels)
        self.pred_reg = nn.ModuleList(nn.Conv2d(c, 4 * (reg_max + 1), 3, padding=1) for c in in_channels)
        # SG's start: 1% class prior, and uniform bins so every side starts at reg_max / 2.
        prior_bias = -math.log((1 - 0.01) / 0.01)
        for cls_conv, reg_conv in zip(self.pred_cls, self.pred_reg):
            nn.init.zeros_(cls_conv.weight)
            nn.init.constant_(cls_conv.bias, prior_bias)
            nn.init.zeros_(reg_conv.weight)
            nn.init.ones_(reg_conv.bias)

    def forward(self, feats: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        outs = []
        for i, feat in enumerate(feats):
            avg = nn.functional.adaptive_avg_pool2d(feat, 1)
            cls_logits = self.pred_cls[i](self.stem_cls[i](feat, avg) + feat)
            distribution = self.pred_reg[i](self.stem_reg[i](feat, avg))
            outs.append((cls_logits, distribution))
        return outs


class PPYoloE(Detector):
    """PP-YOLOE at a given width and depth multiplier; levels come out stride 32 first, as SG orders its anchors."""

    strides = (32, 16, 8)

    def __init__(self, num_classes: int = 80, *, width_mult: float = 1.0, depth_mult: float = 1.0):
        super().__init__()
        neck_channels = tuple(_scaled(c, width_mult) for c in NECK_OUT_CHANNELS)
        self.backbone = CSPResNet(width_mult, depth_mult)
        self.neck = CSPPAN(self.backbone.out_channels, neck_channels, _scaled(NECK_BLOCKS, depth_mult))
        self.head = PPYoloEHead(neck_channels, num_classes, self.reg_max)

    def input_conv(self) -> nn.Conv2d:
        first = self.backbone.stem.conv1.seq
        if hasattr(first, "bn"):
            raise RuntimeError("input_conv() is defined on the fused model: call fuse() first")
        return first.conv

    def level_outputs(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return self.head(self.neck(self.backbone(x)))


#: variant -> function(num_classes) building it in training form
BUILDERS = {name: partial(PPYoloE, width_mult=w, depth_mult=d) for name, (w, d) in SCALES.items()}
