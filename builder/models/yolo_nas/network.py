"""YOLO-NAS S/M/L detectors, laid out so SuperGradients 3.7.1 checkpoints load strictly into them."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from builder.models.base import Detector
from builder.models.yolo_nas.blocks import SPP, DFLHead, DownStage, QARepVGGBlock, Stage, UpStage

# Identical in all variants.
STEM_CHANNELS = 48
STAGE_CHANNELS = (96, 192, 384, 768)
STAGE_BLOCKS = (2, 3, 5, 2)
NECK_CHANNELS = (192, 96, 192, 384)


@dataclass(frozen=True)
class YoloNASConfig:
    """What differs between the S, M and L recipes (SG's yolo_nas_{s,m,l}_arch_params.yaml)."""

    stage_hidden: tuple[int, int, int, int]
    stage_concat_intermediates: tuple[bool, bool, bool, bool]
    #: (num bottlenecks, hidden channels) of neck1..neck4
    neck_blocks: tuple[tuple[int, int], ...]
    head_inter_channels: tuple[int, int, int]


CONFIGS = {
    "yolo_nas_s": YoloNASConfig((32, 64, 96, 192), (False, False, False, False),
                                ((2, 64), (2, 48), (2, 64), (2, 64)), (64, 128, 256)),
    "yolo_nas_m": YoloNASConfig((64, 128, 256, 384), (True, True, True, False),
                                ((2, 192), (3, 64), (2, 192), (3, 256)), (96, 192, 384)),
    "yolo_nas_l": YoloNASConfig((96, 128, 256, 512), (True, True, True, True),
                                ((4, 128), (4, 128), (4, 128), (4, 256)), (128, 256, 512)),
}


class YoloNASBackbone(nn.Module):
    """QARepVGG stem, four CSP stages and an SPP on the last; returns the maps at strides 4, 8, 16 and 32."""

    def __init__(self, config: YoloNASConfig):
        super().__init__()
        self.stem = nn.Sequential(OrderedDict(conv=QARepVGGBlock(3, STEM_CHANNELS, stride=2, identity=False)))
        in_channels = STEM_CHANNELS
        for i, (out_channels, blocks, hidden, concat) in enumerate(
                zip(STAGE_CHANNELS, STAGE_BLOCKS, config.stage_hidden, config.stage_concat_intermediates), start=1):
            self.add_module(f"stage{i}", Stage(in_channels, out_channels, blocks, hidden, concat))
            in_channels = out_channels
        self.context_module = SPP(in_channels, in_channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        features = []
        for stage in (self.stage1, self.stage2, self.stage3, self.stage4):
            x = stage(x)
            features.append(x)
        features[-1] = self.context_module(x)
        return features


class YoloNASNeck(nn.Module):
    """PAN neck with two top-down stages (each also fed the next finer map) and two bottom-up stages."""

    def __init__(self, config: YoloNASConfig):
        super().__init__()
        c2, c3, c4, c5 = STAGE_CHANNELS
        n1, n2, n3, n4 = NECK_CHANNELS
        (b1, h1), (b2, h2), (b3, h3), (b4, h4) = config.neck_blocks
        self.neck1 = UpStage(c5, c4, c3, n1, b1, h1)
        self.neck2 = UpStage(n1, c3, c2, n2, b2, h2)
        self.neck3 = DownStage(n2, n2, n3, b3, h3)
        self.neck4 = DownStage(n3, n1, n4, b4, h4)

    def forward(self, c2: torch.Tensor, c3: torch.Tensor, c4: torch.Tensor, c5: torch.Tensor) -> tuple[torch.Tensor, ...]:
        inter1, x = self.neck1(c5, c4, c3)
        inter2, p3 = self.neck2(x, c3, c2)
        p4 = self.neck3(p3, inter2)
        p5 = self.neck4(p4, inter1)
        return p3, p4, p5


class YoloNAS(Detector):
    """YOLO-NAS in training form (QARepVGG branches, batch norms); `fuse()` turns it into the deploy form."""

    strides = (8, 16, 32)

    def __init__(self, config: YoloNASConfig, num_classes: int = 80):
        super().__init__()
        self.num_classes = num_classes
        self.backbone = YoloNASBackbone(config)
        self.neck = YoloNASNeck(config)
        self.heads = nn.ModuleDict({
            f"head{i}": DFLHead(in_channels, inter, num_classes, self.reg_max)
            for i, (in_channels, inter) in enumerate(zip(NECK_CHANNELS[1:], config.head_inter_channels), start=1)
        })

    def input_conv(self) -> nn.Conv2d:
        stem = self.backbone.stem.conv
        if not stem.fused:
            raise RuntimeError("input_conv() is defined on the fused model: call fuse() first")
        return stem.rbr_reparam

    def level_outputs(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        features = self.neck(*self.backbone(x))
        return [head(feature) for head, feature in zip(self.heads.values(), features)]


def build(variant: str, num_classes: int = 80) -> YoloNAS:
    model = YoloNAS(CONFIGS[variant], num_classes)
    model.variant = variant
    return model


# SG's default_yolo_nas_coco_processing_params (training/processing/processing.py), which
# get_pretrained_processing_params returns for every yolo_nas model on "coco": DetectionLongestMaxSizeRescale
# to 636, DetectionCenterPadding to 640 with 114, StandardizeImage(max_value=255), no channel swap; iou 0.7,
# conf 0.25.


#: variant -> function(num_classes) building it in training form
BUILDERS = {variant: partial(build, variant) for variant in CONFIGS}
