"""The `builder` command: parse, call the API, print. Exit codes are decided here and nowhere else.

Starting it stays cheap (benchmarks/cli_startup.py): each command imports what it runs only when it runs, and
the commands whose options are described by the pydantic specs (export, bundle) are built only when they
run or their help is asked; `builder --help` lists them from their docstrings.
"""
from __future__ import annotations

import json
import sys
from gettext import gettext as _
from typing import Any, Callable, Optional

import click

from builder.core.version import __version__
from builder.core.errors import EXIT_INTERNAL_ERROR, EXIT_USER_ERROR, UserError


class LazyGroup(click.Group):
    """A group that also knows commands it has not built yet: `lazy_command(name, attach)` registers a callback
    (its docstring is the help) and the function that attaches its options, and the command object is made on
    the first `get_command` of that name (running it, its --help, completion). Listing them builds none."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy: dict[str, tuple[Callable[..., Any], Callable[[Callable[..., Any]], Callable[..., Any]]]] = {}

    def lazy_command(self, name: str, attach: Callable[[Callable[..., Any]], Callable[..., Any]]):
        def register(callback: Callable[..., Any]) -> Callable[..., Any]:
            self.lazy[name] = (callback, attach)
            return callback

        return register

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.lazy})

    def get_command(self, ctx: Optional[click.Context], cmd_name: str) -> Optional[click.Command]:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            callback, attach = self.lazy[cmd_name]
            callback.__dict__.pop("__click_params__", None)  # what a failed earlier attempt left
            self.add_command(click.command(cmd_name)(attach(callback)))
        return self.commands.get(cmd_name)

    def resolve_command(self, ctx: click.Context, args: list[str]):
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as e:
            unknown = getattr(e, "command_name", None)  # click's NoSuchCommand suggests among the built commands
            if unknown is None:
                raise
            raise type(e)(unknown, possibilities=self.list_commands(ctx), ctx=ctx) from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """click's own list, where a command not built yet is described by its callback's docstring."""
        rows = []
        for name in self.list_commands(ctx):
            command = self.commands.get(name) or click.Command(name, help=self.lazy[name][0].__doc__)
            if not command.hidden:
                rows.append((name, command))
        if rows:
            limit = formatter.width - 6 - max(len(name) for name, _command in rows)
            with formatter.section(_("Commands")):
                formatter.write_dl([(name, command.get_short_help_str(limit)) for name, command in rows])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="builder")
@click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr.")
def cli(quiet: bool) -> None:
    """Turn trained YOLO-NAS / PP-YOLOE detectors into deployable bundles."""
    from builder.core.log import configure

    configure(quiet)


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


# CLI flag -> ExportSpec field. Help texts and defaults come from the spec; a flag the user does not give
# stays None here and the spec's default applies, so there is no second set of defaults.
EXPORT_FLAGS = (
    ("--model", "model", str),
    ("--weights", "weights", str),
    ("--num-classes", "num_classes", int),
    ("--input-shape", "input_image_shape", "shape"),
    ("--batch-size", "batch_size", int),
    ("--dynamic-batch", "dynamic_batch", "flag"),
    ("--format", "output_predictions_format", "choice"),
    ("--conf", "confidence_threshold", float),
    ("--iou", "nms_threshold", float),
    ("--pre-nms-top-k", "num_pre_nms_predictions", int),
    ("--max-detections", "max_predictions_per_image", int),
    ("--nms", "nms", "choice"),
    ("--runtime", "runtime", "choice"),
    ("--engine", "engine", "engine"),
    ("--no-preprocessing", "preprocessing", "negated"),
    ("--no-postprocessing", "postprocessing", "negated"),
    ("--opset", "onnx_opset", int),
    ("--no-simplify", "onnx_simplify", "negated"),
    ("--precision", "precision", "choice"),
    ("--calibration-images", "calibration_images", "folder"),
    ("--calibration-count", "calibration_count", int),
    ("--calibration-method", "calibration_method", "choice"),
    ("--report-images", "report_images", "folder"),
)


# CLI flag -> BundleSpec / TritonOptions field, for `builder bundle` (on top of EXPORT_FLAGS)
BUNDLE_FLAGS = (
    ("--target", "target", "choice"),
    ("--name", "name", str),
    ("--version", "version", int),
    ("--labels", "labels", "file"),
    ("--templates", "templates", "folder"),
)
TRITON_FLAGS = (
    ("--max-batch-size", "max_batch_size", int),
    ("--preferred-batch-sizes", "preferred_batch_sizes", "sizes"),
    ("--max-queue-delay-us", "max_queue_delay_us", int),
    ("--device", "device", "choice"),
    ("--instances", "instances", int),
    ("--tensorrt-accelerator", "tensorrt_accelerator", "flag"),
    ("--no-warmup", "warmup", "negated"),
    ("--serving-image", "serving_image", str),
)
TENSORRT_FLAGS = (
    ("--workspace-gb", "workspace_gb", float),
    ("--opt-batch", "opt_batch", int),
)


def registered_choices(name: str) -> tuple[str, ...]:
    """The names a registry-backed spec field takes (NMS flavours, runtimes, bundle targets)."""
    if name == "nms":
        from builder.exporting.nms import FLAVOUR_MODULES

        return tuple(FLAVOUR_MODULES)
    if name == "runtime":
        from builder.exporting.runtimes import RUNTIMES

        return tuple(RUNTIMES)
    from builder.targets import TARGET_MODULES

    return tuple(TARGET_MODULES)


def _engine_option():
    """SuperGradients' `engine` is no spec field: the spec turns it into the NMS flavour and the runtime."""
    from builder.exporting.nms import flavours

    engines = tuple(dict.fromkeys(f.engine for f in flavours().values()))
    return click.option("--engine", "engine", type=click.Choice(engines), default=None,
                        help="SuperGradients' shorthand that sets --runtime and the --nms it carries: onnxruntime "
                             "(ONNX NonMaxSuppression on ONNX Runtime) or tensorrt (EfficientNMS in a TensorRT engine).")


def target_flags() -> list[tuple[str, type, tuple]]:
    """(section, options model, flags) of every registered target with options of its own, e.g. kserve's."""
    from builder.targets.spec import target_sections

    return [target.options for target in target_sections().values()]


def spec_options(command, flags=EXPORT_FLAGS, model=None, required=True):
    """Attach one click option per flags entry, described by the spec field (of `model`) it fills."""
    import typing

    from builder.exporting.spec import ExportSpec

    model = model or ExportSpec
    for flag, name, kind in reversed(flags):
        if kind == "engine":
            command = _engine_option()(command)
            continue
        field = model.model_fields[name]
        default = "" if field.is_required() or field.default is None else f" [default: {field.default}]"
        if kind == "negated":
            help_text = f"Leave out: {field.description[0].lower()}{field.description[1:]}"
        else:
            help_text = field.description + (default if kind != "flag" else "")
        if kind in ("flag", "negated"):
            option = click.option(flag, name, is_flag=True, default=None, help=help_text)
        elif kind == "choice":
            choices = typing.get_args(field.annotation) or registered_choices(name)
            option = click.option(flag, name, type=click.Choice(choices), default=None, help=help_text)
        elif kind == "shape":
            option = click.option(flag, name, metavar="HxW", default=None, help=help_text)
        elif kind in ("folder", "file", "sizes"):
            metavar = {"folder": "DIR", "file": "FILE", "sizes": "N,N,..."}[kind]
            option = click.option(flag, name, metavar=metavar, default=None, help=help_text)
        elif required and field.is_required():  # no default at all: click 8.3+ counts default=None as one
            option = click.option(flag, name, type=kind, required=True, help=help_text)
        else:
            option = click.option(flag, name, type=kind, default=None, help=help_text)
        command = option(command)
    return command


def bundle_flags() -> tuple:
    """Every flag of `builder bundle`: the export's, the bundle's, Triton's, TensorRT's and each target's own."""
    flags = EXPORT_FLAGS + BUNDLE_FLAGS + TRITON_FLAGS + TENSORRT_FLAGS
    return flags + tuple(flag for _section, _model, target in target_flags() for flag in target)


def spec_values(given: dict, flags: tuple = EXPORT_FLAGS) -> dict:
    """The options the user gave (of the command whose flag table is `flags`), as spec values."""
    from builder.exporting.spec import parse_shape, parse_sizes

    kinds = {name: kind for _, name, kind in flags}
    values = {}
    for name, value in given.items():
        if value is None or name not in kinds:
            continue
        if kinds[name] == "negated":
            value = not value
        elif kinds[name] == "shape":
            value = parse_shape(value)
        elif kinds[name] == "sizes":
            value = parse_sizes(value)
        values[name] = value
    return values


def _runner_options(command):
    for option in reversed([
        click.option("--runner", type=click.Choice(["auto", "docker", "local"]), default="auto", show_default=True,
                     help="Where the export stage runs: auto is docker when an engine answers and the image is "
                          "there, else here."),
        click.option("--image", default=None, help="Builder image for the docker runner. [default: "
                                                   "model-bundle-builder:VERSION]"),
        click.option("--gpus", is_flag=True, help="Give the container the GPUs (docker runner)."),
        click.option("--pull", is_flag=True, help="Pull the image when it is not on the engine (never otherwise)."),
    ]):
        command = option(command)
    return command


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
        raise UserError("missing --target (triton or standalone), or a --spec build.yaml that names it")
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
def release_command(release_file, dry_run, cluster, address, max_parallel, report_dir, emit, image, namespace,
                    output) -> None:
    """Build every bundle of a release matrix on a Ray cluster and push them with one index.

    Bundles whose build key is in the registry already are not built again. Exit code 4 when a build
    failed (the others are built and pushed; the index is not).
    """
    from builder.api import emit_kuberay, release

    if cluster and address:
        raise UserError("--cluster local and --address exclude each other")
    if emit is None and (image or namespace or output):
        raise UserError("--image, --namespace and --output go with --emit kuberay")
    if emit is not None:
        if dry_run or address or cluster or max_parallel or report_dir:
            raise UserError("--emit writes manifests only: drop --dry-run, --cluster, --address, --max-parallel "
                            "and --report-dir")
        text = emit_kuberay(release_file, image, namespace)
        if output is None:
            click.echo(text, nl=False)
            return
        import pathlib

        from builder.core.files import atomic_file

        with atomic_file(pathlib.Path(output)) as f:
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
@click.option("--json", "as_json", is_flag=True, help="Machine-readable results.")
def verify_command(bundle, images, count, weights, url, protocol, report, as_json) -> None:
    """Run the bundle on real images and compare it with the PyTorch model it was built from.

    Exit code 3 when it misses its precision's thresholds (recall, precision, box and score deviation).
    """
    from builder.api import verify
    from builder.core.errors import GateFailed

    result = verify(bundle, images=images, weights=weights, url=url, protocol=protocol, count=count, report=report)
    click.echo(json.dumps(result.as_dict(), indent=2) if as_json else result.table())
    if result.report_path is not None:
        click.echo(f"report: {result.report_path}", err=True)
    if not result.passed:
        raise GateFailed(f"verification failed: {'; '.join(result.failures)}")


@cli.command("bench")
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--batch-sizes", default="1,2,4,8", show_default=True, metavar="N,N,...", help="Batch sizes to time.")
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


def __getattr__(name: str) -> click.Command:
    """`export_command` and `bundle_command`: the command objects, built on first use as the group builds them."""
    lazy = {"export_command": "export", "bundle_command": "bundle"}
    if name in lazy:
        return cli.get_command(None, lazy[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the command and maps its failure to an exit code and one line on stderr.

    SIGTERM unwinds like Ctrl-C (every cleanup runs) and ends as `error: terminated`, 143; Ctrl-C as
    `error: interrupted`, 130, also when a library caught the KeyboardInterrupt and raised its own error.
    """
    from builder.core.signals import interrupting_signals

    with interrupting_signals() as interruptions:
        try:
            try:
                cli.main(args=argv, prog_name="builder", standalone_mode=False)
            finally:
                interruptions.raising = False
        except click.exceptions.Exit as e:
            return e.exit_code
        except (Exception, KeyboardInterrupt) as e:
            return _failure(e, interruptions.cause_of(e))
        return 0


#: exit codes of a run stopped by a signal: 128 + its number, as a shell reports it
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


def _failure(error: BaseException, interrupted: int | None) -> int:
    """The exit code of a failed command, after its one line (or, for a bug, its traceback) on stderr.
    `interrupted`: the signal that the failure is the consequence of, if any."""
    import signal

    if interrupted == signal.SIGTERM:
        click.echo("error: terminated", err=True)
        return EXIT_TERMINATED
    if interrupted is not None or isinstance(error, click.Abort):
        click.echo("error: interrupted", err=True)
        return EXIT_INTERRUPTED
    if isinstance(error, UserError):
        click.echo(f"error: {error.one_line()}", err=True)
        return getattr(error, "exit_code", EXIT_USER_ERROR)
    if isinstance(error, click.ClickException):
        hint = f" (see '{error.ctx.command_path} --help')" if getattr(error, "ctx", None) else ""
        click.echo(f"error: {' '.join(error.format_message().split())}{hint}", err=True)
        return EXIT_USER_ERROR
    # our bug: keep the traceback, it is what a bug report needs
    import traceback

    traceback.print_exception(error)
    click.echo(f"builder {__version__} hit an internal error (a bug): please report it with the traceback above",
               err=True)
    return EXIT_INTERNAL_ERROR


def entry_point() -> None:
    code = main()
    # the outcome is decided and reported: a Ctrl-C or SIGTERM during the interpreter's teardown (a second or
    # so with torch loaded) would only turn it into a traceback from an atexit callback or a death by signal
    import signal

    # whatever handler is in place by now (a library may have installed its own, which kills the process)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    sys.exit(code)
