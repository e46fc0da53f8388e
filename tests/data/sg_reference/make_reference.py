"""Writes the SuperGradients 3.7.1 reference files the model-zoo tests compare against.

Run once in a separate environment that has super-gradients==3.7.1 installed (it is not a dependency of
builder and its pins do not install beside ours):

    python tests/data/sg_reference/make_reference.py

For each variant it records the state_dict keys and shapes in order, the parameter count, and the decoded
eval-mode outputs (boxes, sigmoid scores) on a fixed non-square input, with the name-seeded weights of
tests/reference_weights.py loaded. Our implementation loads the same weights and must give the same outputs.
"""
import json
import pathlib
import sys

import numpy as np
import torch

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from reference_weights import deterministic_state_dict  # noqa: E402
from super_gradients.training import models  # noqa: E402

VARIANTS = ["yolo_nas_s", "yolo_nas_m", "yolo_nas_l", "ppyoloe_s", "ppyoloe_m", "ppyoloe_l", "ppyoloe_x"]
INPUT_SHAPE = (2, 3, 64, 96)


def reference_input() -> torch.Tensor:
    return torch.randn(INPUT_SHAPE, generator=torch.Generator().manual_seed(0))


def _no_backbone_download() -> None:
    """PP-YOLOE recipes load ImageNet backbone weights from the internet; keep the backbone's own init instead."""
    from super_gradients.training.models.detection_models import csp_resnet

    original_load = csp_resnet.CSPResNetBackbone.load_state_dict
    torch.hub.load_state_dict_from_url = lambda *a, **k: None
    csp_resnet.CSPResNetBackbone.load_state_dict = lambda self, sd, *a, **k: None if sd is None else original_load(self, sd, *a, **k)


def main() -> None:
    _no_backbone_download()
    keys = {}
    for name in VARIANTS:
        for num_classes in (80, 3):
            torch.manual_seed(0)
            model = models.get(name, num_classes=num_classes).eval()
            sd = model.state_dict()
            entry = {
                "parameters": sum(p.numel() for p in model.parameters()),
                "state_dict": [[k, list(v.shape)] for k, v in sd.items()],
            }
            keys[f"{name}@{num_classes}"] = entry
            if num_classes != 80:
                continue
            model.load_state_dict(deterministic_state_dict({k: tuple(v.shape) for k, v in sd.items()}))
            with torch.no_grad():
                (boxes, scores), _ = model(reference_input())
            np.savez_compressed(HERE / f"{name}_outputs.npz", boxes=boxes.numpy(), scores=scores.numpy())
            print(name, entry["parameters"], tuple(boxes.shape), tuple(scores.shape))
    (HERE / "state_dicts.json").write_text(json.dumps(keys, indent=None, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()
