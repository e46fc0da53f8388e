"""The torch side of an export: input normalisation folded into the first conv, the network, decode, top-k."""
from __future__ import annotations

import torch
from torch import nn

from builder.core.images import Preprocessing
from builder.models.base import Detector, distances_to_boxes, expected_distances


class CastAndCentre(nn.Module):
    """uint8 -> float32, minus a per-channel mean (in input RGB order) when the family has one.

    Division by std and the channel order live in the first convolution's weights (see `fold_preprocessing`);
    the mean cannot, because the convolution zero-pads its input and the padding must stay at the mean.
    """

    def __init__(self, mean_rgb: tuple[float, float, float] | None):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean_rgb).reshape(1, 3, 1, 1) if mean_rgb else None)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float32)
        return x - self.mean if self.mean is not None else x


@torch.no_grad()
def fold_preprocessing(model: Detector, prep: Preprocessing) -> CastAndCentre:
    """Rewrite the fused model's input conv so it reads RGB pixels (0..255, mean removed) directly.

    Network channel j is (pixel[src_j] - mean_j) / std_j, with src the channel order. A conv reading that
    equals the conv with weights W[:, j] / std_j moved to input channel src_j, fed with pixel - mean; exact,
    padding included.
    """
    conv = model.input_conv()
    if conv.groups != 1 or conv.in_channels != 3:
        raise RuntimeError(f"cannot fold preprocessing into {conv}")
    src = [2, 1, 0] if prep.channel_order == "BGR" else [0, 1, 2]
    weight = torch.empty_like(conv.weight)
    mean_rgb = [0.0, 0.0, 0.0]
    for j, s in enumerate(src):
        weight[:, s] = conv.weight[:, j] / prep.std[j]
        mean_rgb[s] = float(prep.mean[j])
    conv.weight.copy_(weight)
    return CastAndCentre(tuple(mean_rgb) if any(mean_rgb) else None)


class ExportPipeline(nn.Module):
    """images -> (boxes, scores).

    mode "topk": the `top_k` anchors by best class score, decoded: boxes [B, k, 4], scores [B, k, C], the
    input of NMS. The distribution decode and the sigmoid run on those k anchors only, not on all N.
    mode "raw": every anchor, boxes [B, N, 4] and scores [B, N, C].
    mode "analysis": both, top-k first (quantization compares the raw outputs and deploys the top-k ones).
    A custom postprocessing module gets (boxes, scores) of every anchor and returns whatever it returns.
    """

    def __init__(self, model: Detector, preprocess: nn.Module, mode: str = "topk", top_k: int = 1000,
                 postprocess: nn.Module | None = None):
        super().__init__()
        self.model = model
        self.preprocess = preprocess
        self.mode = mode
        self.top_k = top_k
        self.postprocess = postprocess

    def forward(self, images: torch.Tensor):
        x = self.preprocess(images)
        if self.mode == "raw":
            boxes, scores = self.model(x)
            return self.postprocess(boxes, scores) if self.postprocess is not None else (boxes, scores)
        logits, dists, anchors, strides = self.model.raw(x)
        top = self._top_k(logits, dists, anchors, strides)
        if self.mode == "analysis":
            all_boxes = distances_to_boxes(expected_distances(dists), anchors, strides)
            return (*top, all_boxes, logits.sigmoid())
        return top

    def _top_k(self, logits, dists, anchors, strides):
        batch, count, classes = logits.shape
        k = min(self.top_k, count)
        # sigmoid is monotone: ranking by the best logit ranks by the best score
        index = logits.amax(dim=2).topk(k, dim=1).indices
        logits = logits.gather(1, index.unsqueeze(-1).expand(batch, k, classes))
        dists = dists.gather(1, index[..., None, None].expand(batch, k, 4, dists.shape[-1]))
        boxes = distances_to_boxes(expected_distances(dists), anchors[index], strides[index])
        return boxes, logits.sigmoid()
