"""The GPU check, for a machine with a CUDA GPU: what runs there, and how fast, in one short run.

    python benchmarks/gpu_check.py [--size 640] [--runs 50]

1. The environment: torch/CUDA, the GPU, TensorRT and ONNX Runtime providers.
2. FP16 on CUDA: yolo_nas_s (weights with real detections on the built-in photos) in FP32 and FP16, eager
   PyTorch on the GPU, detections compared with FP32 on the CPU (IoU >= 0.5, same class) and timed.
3. Where TensorRT is installed: FP16 and INT8 engines built from builder's exports (EfficientNMS_TRT
   flavour and ONNX NonMaxSuppression flavour), detections compared with ONNX Runtime on the CPU, timed.
Each part prints a table; a part that cannot run says why and the others go on.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time
import traceback

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]


def environment() -> dict:
    info = {"python": sys.version.split()[0]}
    for name in ("torch", "tensorrt", "onnxruntime", "onnx", "onnxscript", "onnxsim", "pydantic", "PIL"):
        try:
            module = __import__(name)
            info[name] = getattr(module, "__version__", "present")
        except Exception as e:  # noqa: BLE001 - report whatever is missing or broken
            info[name] = f"missing ({type(e).__name__})"
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
            info["cuda"] = torch.version.cuda
    except ImportError:
        pass
    try:
        import onnxruntime

        info["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        pass
    return info


def photos(size: int, prep):
    from builder.core.images import CALIBRATION_PHOTOS, HELD_OUT_PHOTOS, builtin_photos
    from builder.quantize.calibration import fitted

    return np.concatenate(fitted(builtin_photos(CALIBRATION_PHOTOS + HELD_OUT_PHOTOS), (size, size), prep))


def timed(fn, runs: int, warmup: int = 5, sync=None) -> float:
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        samples.append((time.perf_counter() - start) * 1000)
    return float(np.median(samples))


def agreement(reference, candidate) -> tuple[float, int, int]:
    from builder.quantize.report import match

    matched = sum(len(match(r, c)) for r, c in zip(reference, candidate))
    total = sum(len(r) for r in reference)
    return (matched / total if total else 1.0), matched, total


def fp16_on_cuda(args) -> None:
    import torch

    from builder.core.images import to_network_input
    from builder.models.registry import family_of
    from builder.verification.reference import reference_detections
    from reference_weights import lively_model

    prep = family_of("yolo_nas_s").preprocessing
    images = photos(args.size, prep)
    model = lively_model("yolo_nas_s", torch.from_numpy(to_network_input(images, prep)), count=100).eval().fuse()
    settings = {"confidence_threshold": 0.25, "iou_threshold": 0.7, "pre_nms_top_k": 1000, "max_detections": 300}
    cpu = [reference_detections(model, images[i:i + 1], settings) for i in range(len(images))]

    class OnDevice(torch.nn.Module):  # reference_detections feeds CPU tensors: move them, run, bring back
        def __init__(self, inner, dtype):
            super().__init__()
            self.inner, self.dtype, self.family = inner, dtype, inner.family

        def forward(self, x):
            boxes, scores = self.inner(x.cuda().to(self.dtype))
            return boxes.float().cpu(), scores.float().cpu()

    rows = [("precision", "batch", "median ms", "images/s", "recall vs FP32 CPU")]
    for dtype, label in ((torch.float32, "fp32"), (torch.float16, "fp16")):
        gpu_model = OnDevice(__import__("copy").deepcopy(model).cuda().to(dtype), dtype).eval()
        found = [reference_detections(gpu_model, images[i:i + 1], settings) for i in range(len(images))]
        recall, matched, total = agreement(cpu, found)
        for batch in (1, 8, 32):
            x = torch.from_numpy(to_network_input(np.repeat(images[:1], batch, 0), prep)).cuda().to(dtype)
            with torch.no_grad():
                ms = timed(lambda: gpu_model.inner(x), args.runs, sync=torch.cuda.synchronize)
            rows.append((label, str(batch), f"{ms:.2f}", f"{batch * 1000 / ms:.0f}", f"{recall:.3f} ({matched}/{total})"))
    print_titled_table(f"FP16 on CUDA: yolo_nas_s {args.size}x{args.size}, eager PyTorch (fused)", rows)


def tensorrt_engines(args) -> None:
    import torch

    import builder
    from builder.engines.tensorrt import EngineRunner, build_engine
    from builder.core.images import to_network_input
    from builder.models.registry import family_of
    from reference_weights import lively_model

    prep = family_of("yolo_nas_s").preprocessing
    images = photos(args.size, prep)
    model = lively_model("yolo_nas_s", torch.from_numpy(to_network_input(images, prep)), count=100)
    rows = [("engine", "NMS", "batch", "median ms", "recall vs ORT CPU FP32", "build s")]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        reference_onnx = tmp / "fp32_ort.onnx"
        builder.export(model, reference_onnx, input_image_shape=(args.size, args.size), dynamic_batch=True)
        from builder.exporting.sessions import inference_session

        session = inference_session(reference_onnx)
        reference = [_batch_detections(session.run(None, {"images": images[i:i + 1]})) for i in range(len(images))]
        for precision in ("fp16", "int8"):
            for nms in ("tensorrt", "onnxruntime"):
                onnx_path = tmp / f"{precision}_{nms}.onnx"
                try:
                    builder.export(model, onnx_path, input_image_shape=(args.size, args.size), dynamic_batch=True,
                                   precision=precision, engine=nms, calibration_count=32)
                    plan = tmp / f"{precision}_{nms}.plan"
                    built = build_engine(str(onnx_path), str(plan), 1, 8, 32, 8.0, progress=False)
                    run = EngineRunner(str(plan))
                    found = [_batch_detections(list(run(images[i:i + 1]).values()), names=run.outputs)
                             for i in range(len(images))]
                    recall, matched, total = agreement(reference, found)
                    for batch in (1, 8, 32):
                        x = np.repeat(images[:1], batch, 0)
                        ms = timed(lambda: run(x), args.runs)
                        rows.append((precision, "EfficientNMS_TRT" if nms == "tensorrt" else "ONNX NMS", str(batch),
                                     f"{ms:.2f}", f"{recall:.3f} ({matched}/{total})", f"{built['seconds']:.0f}"))
                except Exception as e:  # noqa: BLE001 - one failing flavour should not hide the others
                    rows.append((precision, nms, "-", "failed", f"{type(e).__name__}: {str(e)[:120]}", "-"))
    print_titled_table(f"TensorRT engines: yolo_nas_s {args.size}x{args.size} "
                       "(timings include host<->device copies)", rows)


def _batch_detections(outputs, names=None):
    num, boxes, scores, classes = outputs
    n = int(np.asarray(num)[0].reshape(-1)[0])
    return [(float(scores[0, i]), int(classes[0, i]), np.asarray(boxes[0, i], dtype=np.float32)) for i in range(n)]


def print_titled_table(title: str, rows) -> None:
    from common import print_table

    print(f"\n### {title}\n")
    print_table(rows[0], rows[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    info = environment()
    print(json.dumps(info, indent=2))
    if "gpu" not in info:
        print("no CUDA GPU: nothing else to check")
        return
    for part in (fp16_on_cuda, tensorrt_engines):
        if part is tensorrt_engines and not str(info.get("tensorrt", "")).startswith(tuple("0123456789")):
            print(f"\n### TensorRT engines: skipped, TensorRT is {info.get('tensorrt')}")
            continue
        try:
            part(args)
        except Exception:  # noqa: BLE001 - report and go on
            print(f"\n### {part.__name__}: failed\n")
            traceback.print_exc(file=sys.stdout)


if __name__ == "__main__":
    main()
