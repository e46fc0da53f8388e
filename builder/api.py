"""The Python API: one function per `builder` command, with the same options; the CLI only parses and prints."""
from __future__ import annotations

import pathlib
from typing import Any, Optional


def export(model_or_name: Any, output: str | pathlib.Path, *, runner: str = "local", image: Optional[str] = None,
           gpus: bool = False, pull: bool = False, force: bool = True, **options: Any):
    """Export a model (a `Detector` or a variant name) to one ONNX file; returns an `ExportResult`.

    Options are the fields of `ExportSpec`, with SuperGradients' names. An export by name runs in the export
    stage, as `builder bundle` does, on the runner chosen (`local`: this process; `docker` or `auto`: the
    pinned builder image). A model object, or a module or calibration loader given as an option, can only
    be exported in this process (`runner="local"`).
    An existing `output` is replaced (atomically) by default, because SuperGradients-style code calls
    `model.export("m.onnx")` again and again on one path; `force=False` refuses it, as `builder export`
    does without --force, also when the file appears while the export runs.
    """
    from builder.core.errors import UserError
    from builder.runners import export_with_runner, select_runner
    from builder.stage.export import export_prepared, prepare_export

    destination = pathlib.Path(output)
    if not force and (destination.exists() or destination.is_symlink()):
        raise UserError(f"'{output}' already exists", hint="pass --force to replace it")
    prepared = prepare_export(model_or_name, destination, options)  # bad options fail before a runner is chosen
    if prepared.in_process_only:
        if runner != "local":
            raise UserError("a model object, a pre- or postprocessing module or a calibration loader can only be "
                            "exported in this process", hint="use runner='local', or export by model name")
        return export_prepared(prepared, destination, replace=force)
    chosen = select_runner(runner, image, gpus, pull, needs_gpu=prepared.spec.serving.builds_plan)
    return export_with_runner(chosen, destination, prepared.spec, replace=force)


def bundle(output: str | pathlib.Path | None = None, **options: Any):
    """Build a bundle (`builder bundle`); options are the spec's fields, flat or nested. Returns a BundleResult."""
    from builder.targets.build import bundle as build

    return build(output, **options)


def verify(bundle: str | pathlib.Path, images: Optional[str] = None, weights: Optional[str] = None,
           url: Optional[str] = None, protocol: str = "http", count: int = 32, report: Optional[str] = None,
           force: bool = False):
    """Compare a bundle's model with the PyTorch model it was built from (`builder verify`); a VerifyResult.

    `report` writes the side-by-side detections (.html or .png); an existing file there is replaced only with
    `force`. The result's `passed` is the gate.
    """
    from builder.verification.verify import check_report_destination, verify as run_verify, write_report

    if report:
        check_report_destination(report, force)  # before the images are run, not after
    result = run_verify(bundle, images=images, weights=weights, url=url, protocol=protocol, count=count)
    if report:
        result.report_path = write_report(result, report, force)
    return result


def bench(bundle: str | pathlib.Path, batch_sizes: tuple[int, ...] = (1, 2, 4, 8), threads: Optional[int] = None,
          duration: float = 5.0, url: Optional[str] = None, protocol: str = "http", concurrency: int = 1):
    """Latency percentiles and throughput per batch size (`builder bench`); a BenchResult."""
    from builder.verification.bench import bench as run_bench

    return run_bench(bundle, tuple(batch_sizes), threads, duration, url, protocol, concurrency)


def push(bundle: str | pathlib.Path, reference: str, insecure: bool = False):
    """Push a bundle folder to an OCI registry (`builder push`); returns the Transfer (ref@digest)."""
    from builder.oci.transfer import push as run_push

    return run_push(bundle, reference, insecure)


def pull(reference: str, destination: str | pathlib.Path, insecure: bool = False, force: bool = False,
         select: Optional[str | dict[str, str]] = None):
    """Pull a bundle into `destination`, every file checked (`builder pull`); returns the Transfer.

    From a release's index, `select` ("model=yolo_nas_s,precision=int8,gpu=T4" or a dict) picks the one bundle.
    """
    from builder.oci.transfer import pull as run_pull

    if isinstance(select, str):
        from builder.oci.index import parse_selection

        select = parse_selection(select)
    return run_pull(reference, destination, insecure, force, select)


def release(release_file: str | pathlib.Path, dry_run: bool = False, address: Optional[str] = None,
            max_parallel: Optional[int] = None, report_dir: Optional[str | pathlib.Path] = None):
    """Build a release matrix on Ray and push it with one index (`builder release`); returns a ReleaseResult.

    `address`: `auto`, `HOST:PORT` or `ray://HOST:PORT`; None starts a local Ray in this process. The result's
    `ok` is False when a build failed (its error is in the table; no index is pushed).
    """
    from builder.releases.run import release as run_release

    return run_release(release_file, dry_run, address, max_parallel, report_dir)


def emit_kuberay(release_file: str | pathlib.Path, image: Optional[str] = None, namespace: Optional[str] = None) -> str:
    """A KubeRay RayJob (YAML text) that runs the release on a Kubernetes cluster with the pinned builder image."""
    from builder.releases.kuberay import emit_kuberay as emit
    from builder.releases.spec import plan, read_release_file
    from builder.runners.docker_runner import default_image

    spec = read_release_file(release_file)
    planned = plan(spec, f"release file '{release_file}'")
    text = pathlib.Path(release_file).read_text(encoding="utf-8")
    return emit(spec, planned, text, image or default_image(), namespace)
