#!/usr/bin/env python3
"""Build a TensorRT engine (model.plan) from a builder ONNX export, with TensorRT's Python API.

This file is self-contained on purpose (the standard library and `tensorrt` only): bundles carry a copy as
`build_engine.py`, to rebuild the engine on the device that serves it, because an engine is specific to
its GPU and TensorRT version (a Jetson builds its own).

The network is created strongly typed: each layer runs in the precision the ONNX gives it, so an FP16
export gives an FP16 engine and an INT8 (Q/DQ) export an INT8 one, the same on TensorRT 10 and 11 (11
dropped the FP16/INT8 builder flags of weakly typed networks). A dynamic batch gets one optimization
profile (min/opt/max); a timing cache makes rebuilds fast.

    python build_engine.py model.onnx model.plan [--min-batch 1 --opt-batch 4 --max-batch 8]
                           [--workspace-gb 4] [--timing-cache FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

INPUT_NAME = "images"


class EngineBuildError(Exception):
    """The ONNX does not parse or the engine does not build: the message says which node or why."""


def tensorrt_version() -> str | None:
    try:
        import tensorrt
    except ImportError:
        return None
    return tensorrt.__version__


def gpu_description() -> dict:
    """The GPU the engine is built for (engines run only on the same compute capability)."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return {"gpu": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}
    except ImportError:
        pass
    return {}


def build_engine(onnx_path: str, plan_path: str, min_batch: int = 1, opt_batch: int = 1, max_batch: int = 1,
                 workspace_gb: float = 4.0, timing_cache: str | None = None, progress: bool = True) -> dict:
    """Parse, build and write the engine atomically; returns what was built (for the manifest)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")  # EfficientNMS_TRT
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    with open(onnx_path, "rb") as f:
        if not parser.parse(f.read(), path=os.path.abspath(onnx_path)):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise EngineBuildError(f"TensorRT {trt.__version__} cannot parse {onnx_path}: " + "; ".join(errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    image = network.get_input(0)
    if image.name != INPUT_NAME:
        raise EngineBuildError(f"expected the input '{INPUT_NAME}', found '{image.name}'")
    shape = tuple(image.shape)
    if shape[0] == -1:  # a dynamic batch: one profile
        if not 1 <= min_batch <= opt_batch <= max_batch:
            raise EngineBuildError(f"batch profile must satisfy 1 <= min <= opt <= max, got {min_batch}/{opt_batch}/{max_batch}")
        profile = builder.create_optimization_profile()
        rest = shape[1:]
        profile.set_shape(INPUT_NAME, (min_batch, *rest), (opt_batch, *rest), (max_batch, *rest))
        config.add_optimization_profile(profile)
    cache = None
    if timing_cache:
        data = open(timing_cache, "rb").read() if os.path.exists(timing_cache) else b""
        cache = config.create_timing_cache(data)
        config.set_timing_cache(cache, ignore_mismatch=False)
    if progress and hasattr(trt, "IProgressMonitor"):
        config.progress_monitor = _Progress()
    started = time.monotonic()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT {trt.__version__} could not build an engine from {onnx_path} (see its log above)")
    _write_atomically(plan_path, bytes(serialized))
    if cache is not None:
        _write_atomically(timing_cache, bytes(config.get_timing_cache().serialize()))
    built = {"tensorrt": trt.__version__, "input_shape": list(shape), "seconds": round(time.monotonic() - started, 1),
             "workspace_gb": workspace_gb, **gpu_description()}
    if shape[0] == -1:
        built["profile"] = {"min": min_batch, "opt": opt_batch, "max": max_batch}
    return built


class EngineRunner:
    """Runs a built engine on uint8 NCHW batches with torch CUDA buffers (for checks and benchmarks)."""

    def __init__(self, plan_path: str):
        import tensorrt as trt
        import torch

        self.torch = torch
        logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(logger, "")
        with open(plan_path, "rb") as f:
            self.engine = trt.Runtime(logger).deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise EngineBuildError(f"{plan_path} does not deserialize on this GPU / TensorRT {trt.__version__}")
        self.context = self.engine.create_execution_context()
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.outputs = [n for n in self.names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.dtypes = {n: _torch_dtype(torch, trt, self.engine.get_tensor_dtype(n)) for n in self.names}
        self.stream = torch.cuda.Stream()

    def __call__(self, batch) -> dict:
        torch = self.torch
        images = torch.as_tensor(batch).cuda()
        self.context.set_input_shape(INPUT_NAME, tuple(images.shape))
        self.context.set_tensor_address(INPUT_NAME, images.data_ptr())
        results = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            results[name] = torch.empty(shape, dtype=self.dtypes[name], device="cuda")
            self.context.set_tensor_address(name, results[name].data_ptr())
        self.context.execute_async_v3(self.stream.cuda_stream)
        self.stream.synchronize()
        return {name: value.cpu().numpy() for name, value in results.items()}


def _torch_dtype(torch, trt, dtype):
    return {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32, trt.int64: torch.int64,
            trt.uint8: torch.uint8, trt.int8: torch.int8, trt.bool: torch.bool}[dtype]


def _write_atomically(path: str, data: bytes) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".engine.", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _progress_base():
    try:
        import tensorrt as trt

        return trt.IProgressMonitor
    except (ImportError, AttributeError):
        return object


class _Progress(_progress_base()):
    """TensorRT's build phases as lines on stderr (a build takes minutes)."""

    def __init__(self):
        super().__init__()
        self.phases: dict[str, tuple[int, int]] = {}

    def phase_start(self, phase_name, parent_phase, num_steps):
        self.phases[phase_name] = (0, num_steps)
        if parent_phase is None:
            print(f"tensorrt: {phase_name} ({num_steps} steps)", file=sys.stderr, flush=True)

    def step_complete(self, phase_name, step):
        return True  # keep building

    def phase_finish(self, phase_name):
        self.phases.pop(phase_name, None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build a TensorRT engine from a builder ONNX export.")
    parser.add_argument("onnx")
    parser.add_argument("plan")
    parser.add_argument("--min-batch", type=int, default=1)
    parser.add_argument("--opt-batch", type=int, default=1)
    parser.add_argument("--max-batch", type=int, default=1)
    parser.add_argument("--workspace-gb", type=float, default=4.0)
    parser.add_argument("--timing-cache", help="read and update this timing cache file")
    args = parser.parse_args(argv)
    if tensorrt_version() is None:
        print("error: TensorRT's Python package is not installed here (pip install tensorrt, or use the builder "
              "image / JetPack)", file=sys.stderr)
        return 2
    try:
        built = build_engine(args.onnx, args.plan, args.min_batch, args.opt_batch, args.max_batch, args.workspace_gb,
                             args.timing_cache)
    except (EngineBuildError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(built, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
