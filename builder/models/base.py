"""The detector base class, and the anchor-free distribution-focal decode both families share."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from builder.models.family import Family


class Detector(nn.Module):
    """A single-stage detector whose heads emit class logits and a 4-side distance distribution per level.

    Subclasses build their layers (their attribute names make the state_dict keys) and implement
    `level_outputs`; everything after that is shared and family-agnostic.
    """

    #: strides of the levels in the order `level_outputs` returns them (the family's anchor order)
    strides: tuple[int, ...] = ()
    #: the distribution has reg_max + 1 bins per side
    reg_max: int = 16
    #: filled in by the registry when a variant is built
    variant: str = ""
    family: "Family"  # builder.models.family.Family
    num_classes: int
    #: from the checkpoint's processing params, when it recorded them
    class_names: list[str] | None = None

    def level_outputs(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per level, in `strides` order: class logits [B, C, H, W] and distances [B, 4 * (reg_max + 1), H, W]."""
        raise NotImplementedError

    def export(self, output, **options):
        """Export to ONNX as `builder.export(self, output, **options)` does; returns an ExportResult."""
        from builder.core.wiring import exporter

        return exporter()(self, output, **options)

    def input_conv(self) -> nn.Conv2d:
        """The convolution that reads the network input, in the fused (deploy) form.

        Export folds the input normalisation and channel order into it.
        """
        raise NotImplementedError

    def fuse(self) -> "Detector":
        """Fold re-parameterisable branches and batch norms into single convolutions, in place (deploy form).

        Every block that can fuse has a `fuse_branches()` method; blocks fuse themselves, so this only walks.
        """
        for module in list(self.modules()):
            if module is not self and hasattr(module, "fuse_branches"):
                module.fuse_branches()
        return self

    def raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Flattened head outputs over all levels: logits [B, N, C], distribution [B, N, 4, R+1], anchor
        centres in input pixels [N, 2] and the stride of each anchor [N, 1]."""
        logits, dists, anchors, strides = [], [], [], []
        for (cls_map, reg_map), stride in zip(self.level_outputs(x), self.strides):
            b, c, h, w = cls_map.shape
            logits.append(cls_map.flatten(2))
            dists.append(reg_map.reshape(b, 4, self.reg_max + 1, h * w))
            anchors.append(anchor_centres(h, w, stride, cls_map.device))
            strides.append(torch.full((h * w, 1), float(stride), device=cls_map.device))
        logits_t = torch.cat(logits, dim=2).permute(0, 2, 1)
        dists_t = torch.cat(dists, dim=3).permute(0, 3, 1, 2)
        return logits_t, dists_t, torch.cat(anchors), torch.cat(strides)

    def decode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Boxes [B, N, 4] as x1, y1, x2, y2 in input pixels, and class logits [B, N, C]."""
        logits, dists, anchors, strides = self.raw(x)
        return distances_to_boxes(expected_distances(dists), anchors, strides), logits

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Boxes [B, N, 4] in input pixels and class scores [B, N, C] after the sigmoid."""
        boxes, logits = self.decode(x)
        return boxes, logits.sigmoid()


def anchor_centres(h: int, w: int, stride: int, device: torch.device | None = None) -> torch.Tensor:
    """Cell centres of an h x w grid, row-major (y outer), in input pixels: [h * w, 2] as (x, y)."""
    ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) * stride
    xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) * stride
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((grid_x, grid_y), dim=-1).reshape(-1, 2)


def expected_distances(dists: torch.Tensor) -> torch.Tensor:
    """[B, N, 4, R+1] logits over bins -> [B, N, 4] expected bin index (in strides)."""
    bins = torch.arange(dists.shape[-1], dtype=dists.dtype, device=dists.device)
    return (dists.softmax(dim=-1) * bins).sum(dim=-1)


def distances_to_boxes(distances: torch.Tensor, anchors: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
    """(left, top, right, bottom) distances in strides around anchor centres -> x1, y1, x2, y2 in pixels."""
    lt, rb = (distances * strides).split(2, dim=-1)
    return torch.cat((anchors - lt, anchors + rb), dim=-1)
