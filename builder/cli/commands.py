"""The commands of `builder`, registered on its group; export and bundle lazily, their options come from the specs."""
from __future__ import annotations

import json

import click

from builder.cli.flags import (BUNDLE_FLAGS, EXPORT_FLAGS, TENSORRT_FLAGS, TRITON_FLAGS, _runner_options, bundle_flags,
                               registered_choices, spec_options, spec_values, target_flags)
from builder.cli.group import cli
from builder.core.errors import UserError


@cli.command("models")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def models_command(as_json: bool) -> None:
    """List the architectures and variants builder knows."""
    from builder.models.registry import DEFAULT_NUM_CLASSES, variants

    rows = []
    for variant, family in variants().items():
        rows.append({
            "name": variant,
            "family": family.name,
            "parameters": family.parameters[variant],
            "num_classes": DEFAULT_NUM_CLASSES,
            "input_size": list(family.input_size),
            "confidence_threshold": family.default_confidence,
            "nms_threshold": family.default_iou,
            "channel_order": family.preprocessing.channel_order,
            "resize": family.preprocessing.resize,
        })
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    header = ("name", "family", "parameters", "input", "conf", "iou", "preprocessing")
    table = [header] + [(r["name"], r["family"], f"{r['parameters']:,}", "x".join(map(str, r["input_size"])),
                         f"{r['confidence_threshold']:g}", f"{r['nms_threshold']:g}",
                         f"{r['channel_order']}, {r['resize']}") for r in rows]
    from builder.core.tables import text_table

    for line in text_table(table, "llrllll"):
        click.echo(line)


@cli.command("fetch")
@click.option("--model", "variant", required=True, help="Variant, e.g. yolo_nas_s (see 'builder models').")
@click.option("--weights", required=True, help="Checkpoint file, http(s) URL, or 'coco' for the published weights.")
@click.option("--num-classes", type=int, default=None, help="Class count (default: read from the checkpoint).")
def fetch_command(variant: str, weights: str, num_classes: int | None) -> None:
    """Download (into the cache) and check that weights load strictly into a variant."""
    from builder.core.extras import require

    require("export", "torch")  # before a download that the model could not use here
    from builder.core.hashing import sha256_of
    from builder.models.registry import build, resolve_weights

    path = resolve_weights(variant, weights)
    model = build(variant, num_classes=num_classes, checkpoint_path=str(path))
    click.echo(f"{variant}: {model.num_classes} classes, {sum(p.numel() for p in model.parameters()):,} parameters")
    click.echo(f"weights: {path} ({path.stat().st_size:,} bytes, sha256 {sha256_of(path)})")
    if model.class_names:
        click.echo(f"class names: {', '.join(model.class_names[:8])}{' ...' if len(model.class_names) > 8 else ''}")


def _export_options(callback):
    """`builder export`'s options, attached when the command is built (bottom to top, as decorators)."""
    callback = spec_options(callback)
    callback = _runner_options(callback)
    callback = click.option("--force", is_flag=True, help="Replace an existing output file.")(callback)
    return click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
                        help="Where to write the .onnx file.")(callback)


@cli.lazy_command("export", _export_options)
def _export(output: str, force: bool, runner: str, image: str | None, gpus: bool, pull: bool, **given) -> None:
    """Export a model to ONNX with preprocessing, decoding and NMS in the graph."""
    from builder.api import export

    values = spec_values(given)
    result = export(values.pop("model"), output, runner=runner, image=image, gpus=gpus, pull=pull, force=force,
                    **values)
    click.echo(result.usage)


def _bundle_options(command):
    from builder.targets.spec import BundleSpec, TensorRTOptions, TritonOptions

    for _section, options_model, flags in target_flags():
        command = spec_options(command, flags, options_model)
    command = spec_options(command, TENSORRT_FLAGS, TensorRTOptions)
    command = spec_options(command, TRITON_FLAGS, TritonOptions)
    command = spec_options(command, EXPORT_FLAGS, required=False)
    return spec_options(command, BUNDLE_FLAGS, BundleSpec, required=False)


def _bundle_command_options(callback):
    """`builder bundle`'s options, attached when the command is built (bottom to top, as decorators)."""
    callback = _bundle_options(callback)
    callback = _runner_options(callback)
    for option in reversed([
        click.option("--output", "-o", type=click.Path(file_okay=False), default=None,
                     help="Bundle folder to create. [default: bundles/NAME]"),
        click.option("--spec", "spec_file", type=click.Path(dir_okay=False), default=None,
                     help="build.yaml with the options (the flags given here override it); a bundle's own rebuilds "
                          "it."),
        click.option("--archive", is_flag=True,
                     help="Also write OUTPUT.tar.gz (deterministic: same bundle, same bytes)."),
        click.option("--force", is_flag=True, help="Replace an existing bundle folder (and archive)."),
    ]):
        callback = option(callback)
    return callback


@cli.lazy_command("bundle", _bundle_command_options)
def _bundle(output: str | None, spec_file: str | None, archive: bool, force: bool, runner: str,
            image: str | None, gpus: bool, pull: bool, **given) -> None:
    """Export a model and render a Triton model repository or a standalone package around it."""
    from builder.api import bundle

    values = spec_values(given, bundle_flags())
    if spec_file is None and "target" not in values:
        raise UserError(f"missing --target ({', '.join(registered_choices('target'))}), or a --spec build.yaml that "
                        f"names it")
    if spec_file is None and "model" not in values:
        raise UserError("missing --model (see 'builder models'), or a --spec build.yaml that names it")
    result = bundle(output, spec_file=spec_file, force=force, archive=archive, runner=runner, image=image, gpus=gpus,
                    pull=pull, **values)
    click.echo(result.usage)


@cli.command("push")
@click.argument("bundle", type=click.Path(file_okay=False))
@click.argument("reference")
@click.option("--insecure", is_flag=True, help="Plain HTTP (a registry without TLS).")
def push_command(bundle: str, reference: str, insecure: bool) -> None:
    """Push a bundle folder to an OCI registry as REGISTRY/REPOSITORY:TAG.

    Credentials come from BUILDER_REGISTRY_USERNAME / BUILDER_REGISTRY_PASSWORD or the docker config
    (docker login), never from the command line.
    """
    from builder.api import push

    click.echo(str(push(bundle, reference, insecure)))


@cli.command("pull")
@click.argument("reference")
@click.argument("destination", type=click.Path(file_okay=False))
@click.option("--insecure", is_flag=True, help="Plain HTTP (a registry without TLS).")
@click.option("--force", is_flag=True, help="Replace an existing destination folder.")
@click.option("--select", metavar="KEY=VALUE,...", default=None,
              help="Pick one bundle from a release's index by model, precision, target, gpu, name or build-key, "
                   "e.g. model=yolo_nas_s,precision=int8,gpu=T4.")
def pull_command(reference: str, destination: str, insecure: bool, force: bool, select: str | None) -> None:
    """Pull a bundle (REGISTRY/REPOSITORY:TAG or @sha256:DIGEST) into DESTINATION, every file checked."""
    from builder.api import pull

    click.echo(str(pull(reference, destination, insecure, force, select)))


@cli.command("release")
@click.argument("release_file", metavar="RELEASE.yaml", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Print the bundles with their build keys and resources; build nothing.")
@click.option("--cluster", type=click.Choice(["local"]), default=None,
              help="Start Ray in this process and build here (the default without --address).")
@click.option("--address", default=None, metavar="ADDRESS",
              help="A running Ray cluster: auto, HOST:PORT or ray://HOST:PORT.")
@click.option("--max-parallel", type=click.IntRange(1), default=None,
              help="Most builds at once. [default: as many as the cluster's resources allow]")
@click.option("--report-dir", metavar="DIR", default=None,
              help="Where report.md, report.html and report.json go. [default: releases/NAME-VERSION]")
@click.option("--emit", type=click.Choice(["kuberay"]), default=None,
              help="Write a KubeRay RayJob that runs this release on Kubernetes instead of building.")
@click.option("--image", default=None, help="Builder image of the RayJob's pods (--emit). [default: "
                                            "model-bundle-builder:VERSION]")
@click.option("--namespace", default=None, help="Kubernetes namespace of the RayJob (--emit). [default: none]")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None,
              help="File for --emit's manifests. [default: standard output]")
@click.option("--force", is_flag=True, help="Replace an existing --output file (--emit).")
def release_command(release_file, dry_run, cluster, address, max_parallel, report_dir, emit, image, namespace,
                    output, force) -> None:
    """Build every bundle of a release matrix on a Ray cluster and push them with one index.

    Bundles whose build key is in the registry already are not built again. Exit code 4 when a build
    failed (the others are built and pushed; the index is not).
    """
    from builder.api import emit_kuberay, release

    if cluster and address:
        raise UserError("--cluster local and --address exclude each other")
    if emit is None and (image or namespace or output):
        raise UserError("--image, --namespace and --output go with --emit kuberay")
    if force and output is None:
        raise UserError("--force replaces --output's file: give -o FILE")
    if emit is not None:
        if dry_run or address or cluster or max_parallel or report_dir:
            raise UserError("--emit writes manifests only: drop --dry-run, --cluster, --address, --max-parallel "
                            "and --report-dir")
        import pathlib

        from builder.core.files import atomic_file

        destination = None if output is None else pathlib.Path(output)
        if destination is not None and not force and (destination.exists() or destination.is_symlink()):
            raise UserError(f"'{output}' already exists", hint="pass --force to replace it")
        text = emit_kuberay(release_file, image, namespace)
        if destination is None:
            click.echo(text, nl=False)
            return
        with atomic_file(destination, replace=force) as f:  # refused too when a file appeared there meanwhile
            f.write(text.encode("utf-8"))
        click.echo(f"wrote {output}", err=True)
        return
    result = release(release_file, dry_run=dry_run, address=address, max_parallel=max_parallel,
                     report_dir=report_dir)
    click.echo(result.table())
    if result.failed:
        from builder.core.errors import ReleaseIncomplete

        raise ReleaseIncomplete(f"{len(result.failed)} of {len(result.planned)} bundles failed; no index was pushed")


@cli.command("verify")
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--images", metavar="DIR", help="Folder of images. [default: builder's 7 built-in photos]")
@click.option("--count", type=click.IntRange(1), default=32, show_default=True, help="Most images to use from --images.")
@click.option("--weights", help="The weights the bundle was built from, where build.yaml's path does not hold here.")
@click.option("--url", help="Verify through the bundle's client against a running Triton server (host:port).")
@click.option("--protocol", type=click.Choice(["http", "grpc"]), default="http", show_default=True)
@click.option("--report", metavar="FILE", help="Write reference and bundle detections side by side: .html or .png.")
@click.option("--force", is_flag=True, help="Replace an existing --report file.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable results.")
def verify_command(bundle, images, count, weights, url, protocol, report, force, as_json) -> None:
    """Run the bundle on real images and compare it with the PyTorch model it was built from.

    Exit code 3 when it misses its precision's thresholds (recall, precision, box and score deviation).
    """
    from builder.api import verify
    from builder.core.errors import GateFailed

    if force and report is None:
        raise UserError("--force replaces --report's file: give --report FILE")
    result = verify(bundle, images=images, weights=weights, url=url, protocol=protocol, count=count, report=report,
                    force=force)
    click.echo(json.dumps(result.as_dict(), indent=2) if as_json else result.table())
    if result.report_path is not None:
        click.echo(f"report: {result.report_path}", err=True)
    if not result.passed:
        raise GateFailed(f"verification failed: {'; '.join(result.failures)}")


@cli.command("bench")
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--batch-sizes", default="1,2,4,8", show_default=True, metavar="N,N,...",
              # the bounds of a fixed-batch export (builder.exporting.spec), written out: --help imports no spec
              help="Batch sizes to time: each at most 1024, and batch x height x width at most 64 images of "
                   "640x640.")
@click.option("--threads", type=click.IntRange(1), help="ONNX Runtime intra-op threads. [default: ONNX Runtime's]")
@click.option("--duration", type=click.FloatRange(min=0.1), default=5.0, show_default=True, help="Seconds per batch size.")
@click.option("--url", help="Time the model through a running Triton server (host:port) instead.")
@click.option("--protocol", type=click.Choice(["http", "grpc"]), default="http", show_default=True)
@click.option("--concurrency", type=click.IntRange(1), default=1, show_default=True, help="Concurrent clients (with --url).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable results.")
def bench_command(bundle, batch_sizes, threads, duration, url, protocol, concurrency, as_json) -> None:
    """Latency p50/p90/p99 and throughput of a bundle's model per batch size."""
    from builder.api import bench
    from builder.exporting.spec import parse_sizes

    result = bench(bundle, parse_sizes(batch_sizes), threads, duration, url, protocol, concurrency)
    click.echo(json.dumps(result.as_dict(), indent=2) if as_json else result.table())
