"""Make builder's demo checkpoint (`--weights demo`) and demo scene from a `train_shapes.py` checkpoint.

    python benchmarks/train_shapes.py --model ppyoloe_s --steps 800 --threads 2 --output weights/ppyoloe_s_shapes.pth
    python benchmarks/make_demo.py weights/ppyoloe_s_shapes.pth

It keeps the EMA weights in half precision (~16 MB; they load into float32 like any checkpoint), renders
a scene on a photo that neither training nor calibration used, measures what the FP32 model finds on it and
on 64 more held-out scenes, and writes builder/data/demo/ (the checkpoint, shapes.jpg, shapes.json with the
scene's objects, README.md with the sha256s and the numbers) and the checkpoint's sha256 into
builder/models/demo.py.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import pathlib
import re
import sys

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from shapes import SHAPES, scenes  # noqa: E402

SCENE_SIZE = (480, 640)  # height, width: not the 640x640 input, so the letterbox is part of what it shows
SCENE_SEED = 2026
MIN_OBJECTS = 4


def half_checkpoint(source: pathlib.Path) -> dict:
    from builder.models.checkpoints import checkpoint_class_names, extract_state_dict, read_checkpoint

    checkpoint = read_checkpoint(source)
    state = extract_state_dict(checkpoint)
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    return {"ema_net": half, "processing_params": {"class_names": checkpoint_class_names(checkpoint) or list(SHAPES)},
            "training": checkpoint.get("training", {})}


def as_jpeg(image) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def demo_scene(model, settings):
    """The first held-out scene (from SCENE_SEED on) with at least MIN_OBJECTS objects of at least 3 kinds on
    which the FP32 model, reading the scene as the JPEG stores it, finds every object and nothing else: a demo
    shows what the detector does when it works; the held-out numbers say how often that is."""
    from PIL import Image

    from builder.quantize.report import agreement
    from builder.verification.reference import reference_detections
    from shapes import Scene

    for seed in range(SCENE_SEED, SCENE_SEED + 200):
        [scene] = scenes(1, seed, SCENE_SIZE, held_out=True)
        if len(scene.boxes) < MIN_OBJECTS or len(set(scene.classes.tolist())) < 3:
            continue
        data = as_jpeg(scene.image)
        decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        [fitted] = scenes_fitted([Scene(decoded, scene.boxes, scene.classes)], model.family)
        found = agreement([fitted.truth], [reference_detections(model, fitted.nchw, settings)], ["demo"])
        if found["recall"] == 1.0 and found["precision"] == 1.0:
            return seed, scene, data, found
    raise SystemExit("no held-out scene the model finds completely")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=pathlib.Path, help="train_shapes.py's output (ppyoloe_s)")
    parser.add_argument("--output", type=pathlib.Path, default=ROOT / "builder" / "data" / "demo")
    args = parser.parse_args(argv)
    from builder.models.registry import build
    from builder.quantize.report import agreement
    from builder.verification.reference import reference_detections

    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    checkpoint_path = out / "ppyoloe_s_shapes.pth"
    buffer = io.BytesIO()
    torch.save(half_checkpoint(args.checkpoint), buffer)
    checkpoint_path.write_bytes(buffer.getvalue())
    checkpoint_sha = hashlib.sha256(buffer.getvalue()).hexdigest()

    model = build("ppyoloe_s", checkpoint_path=str(checkpoint_path)).eval()
    family = model.family
    settings = {"pre_nms_top_k": 1000, "confidence_threshold": family.default_confidence,
                "iou_threshold": family.default_iou, "max_detections": 1000}
    seed, scene, data, demo = demo_scene(model, settings)
    image_path = out / "shapes.jpg"
    image_path.write_bytes(data)
    objects = [{"class": SHAPES[int(c)], "class_id": int(c), "box": [round(float(v), 1) for v in box]}
               for box, c in zip(scene.boxes, scene.classes)]
    (out / "shapes.json").write_text(json.dumps({"image": "shapes.jpg", "seed": seed, "objects": objects},
                                                indent=2) + "\n")
    held_out = [s for s in scenes(64, SCENE_SEED + 1000, (640, 640), held_out=True)]
    measured = agreement([s.truth for s in held_out], [reference_detections(model, s.nchw, settings) for s in held_out],
                         [f"scene{i}" for i in range(len(held_out))])
    image_sha = hashlib.sha256(image_path.read_bytes()).hexdigest()
    training = half_checkpoint(args.checkpoint)["training"]
    (out / "README.md").write_text(f"""# The demo checkpoint and scene

`--weights demo` is `ppyoloe_s_shapes.pth`: PP-YOLOE S trained from scratch, on a CPU, to find six shapes
({", ".join(SHAPES)}) drawn on crops of builder's built-in calibration photos (`benchmarks/shapes.py`).
It is a demonstration that the pipeline finds real objects, not a detector for anything else.

| file | sha256 | bytes |
| --- | --- | ---: |
| ppyoloe_s_shapes.pth | `{checkpoint_sha}` | {checkpoint_path.stat().st_size:,} |
| shapes.jpg | `{image_sha}` | {image_path.stat().st_size:,} |

Made with (training: {training}):

    python benchmarks/train_shapes.py --model ppyoloe_s --steps 800 --threads 2 --output weights/ppyoloe_s_shapes.pth
    python benchmarks/make_demo.py weights/ppyoloe_s_shapes.pth

The checkpoint holds the EMA weights in half precision (they load into float32), the class names and the
training settings. Training runs on torch's CPU kernels, whose float sums differ between CPUs and thread
counts, so a rerun makes an equally good checkpoint, not the same bytes.

`shapes.jpg` is a {SCENE_SIZE[1]}x{SCENE_SIZE[0]} scene (seed {seed}) on a photo that training never saw;
`shapes.json` lists its {len(objects)} objects. It is the first held-out scene from seed {SCENE_SEED} with at least
{MIN_OBJECTS} objects of 3 kinds on which the FP32 model (PyTorch, the family's {family.preprocessing.resize} to
640x640 and thresholds) finds every object and nothing else ({demo['matched']} of {len(objects)}): it shows the
detector working. How often it works: on 64 more held-out 640x640 scenes, recall {measured['recall']:.3f} and
precision {measured['precision']:.3f} ({measured['matched']} of {measured['reference_detections']} objects).
""")
    demo_module = ROOT / "builder" / "models" / "demo.py"
    text = demo_module.read_text()
    text = re.sub(r'CHECKPOINT_SHA256 = "[^"]*"', f'CHECKPOINT_SHA256 = "{checkpoint_sha}"', text)
    demo_module.write_text(text)
    print(f"{checkpoint_path} {checkpoint_path.stat().st_size:,} bytes sha256 {checkpoint_sha}")
    print(f"demo scene (seed {seed}): {demo['matched']} of {len(objects)} found; held-out: recall "
          f"{measured['recall']:.3f} precision {measured['precision']:.3f}")


def scenes_fitted(items, family):
    """Scenes letterboxed to the model's input, boxes mapped along (what the exported graph's caller does)."""
    from builder.core.images import fit_to_input
    from shapes import Scene

    fitted = []
    for scene in items:
        image, placement = fit_to_input(scene.image, family.input_size, family.preprocessing)
        fitted.append(Scene(image, placement.to_input(scene.boxes), scene.classes))
    return fitted


if __name__ == "__main__":
    main()
