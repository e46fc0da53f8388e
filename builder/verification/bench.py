"""`builder bench`: latency percentiles and throughput of a bundle's model, per batch size.

On ONNX Runtime in this process (CUDA when onnxruntime has it, else CPU), or through Triton with
concurrent clients (`--url`). Inputs are a real photo resized as in training, repeated to the batch.
"""
from __future__ import annotations

import pathlib
import threading
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from builder.core.errors import UserError
from builder.core.extras import require
from builder.core.tables import text_table

WARMUP_RUNS = 3


@dataclass
class BenchRow:
    batch_size: int
    latencies_ms: list[float]
    seconds: float
    errors: int = 0
    concurrency: int = 1

    def as_dict(self) -> dict:
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.asarray([np.nan])
        return {"batch_size": self.batch_size, "concurrency": self.concurrency, "requests": len(self.latencies_ms),
                "errors": self.errors, "p50_ms": round(float(np.percentile(lat, 50)), 3),
                "p90_ms": round(float(np.percentile(lat, 90)), 3), "p99_ms": round(float(np.percentile(lat, 99)), 3),
                "images_per_s": round(len(self.latencies_ms) * self.batch_size / self.seconds, 2) if self.seconds else 0.0}


@dataclass
class BenchResult:
    bundle: pathlib.Path
    runtime: str
    rows: list[BenchRow]
    skipped: list[str]

    def as_dict(self) -> dict:
        return {"bundle": str(self.bundle), "runtime": self.runtime, "results": [r.as_dict() for r in self.rows],
                "skipped": self.skipped}

    def table(self) -> str:
        header = ("batch", "concurrency", "requests", "errors", "p50 ms", "p90 ms", "p99 ms", "images/s")
        rows = [header] + [tuple(str(v) for v in (d["batch_size"], d["concurrency"], d["requests"], d["errors"],
                                                   f"{d['p50_ms']:.2f}", f"{d['p90_ms']:.2f}", f"{d['p99_ms']:.2f}",
                                                   f"{d['images_per_s']:.1f}"))
                           for d in (r.as_dict() for r in self.rows)]
        return "\n".join([f"bench {self.bundle} ({self.runtime})", *text_table(rows, "r" * len(header)),
                          *[f"skipped: {s}" for s in self.skipped]])


def bench(bundle: str | pathlib.Path, batch_sizes: tuple[int, ...] = (1, 2, 4, 8), threads: Optional[int] = None,
          duration: float = 5.0, url: Optional[str] = None, protocol: str = "http", concurrency: int = 1) -> BenchResult:
    from builder.core.manifest import check_files
    from builder.core.log import notice
    from builder.verification.runtime import check_against_build_yaml

    folder = pathlib.Path(bundle)
    manifest = check_files(folder)
    check_against_build_yaml(folder, manifest)
    if duration <= 0 or any(b < 1 for b in batch_sizes) or concurrency < 1:
        raise UserError("--duration, --batch-sizes and --concurrency must be positive")
    _check_batch_sizes(batch_sizes, *manifest.signature.inputs[0].shape[2:])
    image = _input_image(manifest)
    fixed = manifest.signature.inputs[0].shape[0]
    most = _most_per_request(folder, manifest, url)
    sizes, skipped = [], []
    for b in batch_sizes:
        if isinstance(fixed, int) and b != fixed:
            skipped.append(f"batch {b}: the model takes a fixed batch of {fixed}")
        elif most is not None and b > most:
            skipped.append(f"batch {b}: Triton's max_batch_size is {most}")
        else:
            sizes.append(b)
    if isinstance(fixed, int) and fixed not in sizes:
        sizes.append(fixed)
    if url is None:
        require("bench")
        from builder.verification.runtime import open_model

        run, runtime = open_model(folder, manifest, threads)
    else:
        run, runtime = _triton_runner(manifest, url, protocol), f"Triton {protocol} at {url}, concurrency {concurrency}"
    rows = []
    for size in sizes:
        batch = np.ascontiguousarray(np.repeat(image, size, axis=0))
        notice(f"batch {size}: {duration:g} s ...")
        rows.append(_measure(run, batch, duration, concurrency if url else 1))
    return BenchResult(folder.resolve(), runtime, rows, skipped)


def _check_batch_sizes(batch_sizes: tuple[int, ...], height: int, width: int) -> None:
    """Refuse, before a batch is made, what a fixed-batch export would refuse: a batch holds every image at once."""
    from builder.exporting.spec import MAX_BATCH_PIXELS, MAX_BATCH_SIZE

    for size in batch_sizes:
        if size > MAX_BATCH_SIZE or size * height * width > MAX_BATCH_PIXELS:
            raise UserError(f"batch size {size} is more than bench runs: at most {MAX_BATCH_SIZE}, and batch x "
                            f"height x width at most {MAX_BATCH_PIXELS:,} pixels (64 images of 640x640; this model "
                            f"takes {height}x{width})")


def _input_image(manifest: dict) -> np.ndarray:
    from builder.core.images import Preprocessing, sample_input

    recorded = manifest.preprocessing
    prep = Preprocessing(**{name: getattr(recorded, name) for name in Preprocessing.__dataclass_fields__})
    return sample_input(prep, tuple(manifest.signature.inputs[0].shape[2:]))


def _most_per_request(folder: pathlib.Path, manifest, url: Optional[str]) -> Optional[int]:
    from builder.targets import target_class

    path = target_class(manifest.target).triton_config(folder, manifest) if url is not None else None
    if path is None:
        return None
    from builder.targets.triton.config import parse_config

    config = parse_config(path.read_text(), "the bundle")
    return config.max_batch_size or None


def _triton_runner(manifest: dict, url: str, protocol: str):
    if protocol == "grpc":
        import tritonclient.grpc as triton
    else:
        import tritonclient.http as triton
    local = threading.local()  # one client per thread: the HTTP client is not shared across threads
    name = manifest.signature.inputs[0].name

    def run(batch):
        if not hasattr(local, "client"):
            local.client = triton.InferenceServerClient(url=url)
        request = triton.InferInput(name, list(batch.shape), "UINT8")
        request.set_data_from_numpy(batch)
        return local.client.infer(manifest.name, [request], model_version=str(manifest.version))

    shape = manifest.signature.inputs[0].shape
    probe = [1 if isinstance(shape[0], str) else shape[0], *shape[1:]]  # a dynamic batch: one image
    try:
        run(np.zeros(probe, np.uint8))
    except Exception as e:  # tritonclient raises its own and socket errors
        raise UserError(f"cannot run '{manifest.name}' on Triton at {url}: {str(e).splitlines()[0][:200]}") from None
    return run


def _measure(run, batch: np.ndarray, duration: float, concurrency: int) -> BenchRow:
    """Warm up, then keep `concurrency` callers busy for `duration` seconds; latencies of successful calls."""
    for _ in range(WARMUP_RUNS):
        run(batch)
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.perf_counter() + duration

    def worker():
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            try:
                run(batch)
            except Exception:  # the load is held; failures are counted and shown
                with lock:
                    errors[0] += 1
                continue
            with lock:
                latencies.append((time.perf_counter() - start) * 1000)

    started = time.perf_counter()
    workers = [threading.Thread(target=worker) for _ in range(concurrency)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return BenchRow(len(batch), latencies, time.perf_counter() - started, errors[0], concurrency)
