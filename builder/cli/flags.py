"""The flags of `builder export` and `builder bundle`: tables of the spec fields they fill, and click options."""
from __future__ import annotations

import click


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


# what a --no-X flag does, in its own words (the spec field describes the X it turns off)
NEGATED_HELP = {
    "preprocessing": "Take float32 input that is already resized, in channel order and normalised: no uint8 "
                     "cast, channel order or normalisation in the graph. Default: in the graph.",
    "postprocessing": "Output the raw boxes and class scores: no decoding, top-k or NMS in the graph. Default: in "
                      "the graph.",
    "onnx_simplify": "Keep the graph as the exporter wrote it, without constant folding or shape cleanup. "
                     "Default: simplified.",
    "warmup": "Skip the all-zeros request Triton otherwise runs when it loads the model. Default: one warm-up "
              "request.",
}


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
                             "(ONNX NonMaxSuppression on ONNX Runtime) or tensorrt (EfficientNMS in a TensorRT "
                             "engine). Default: onnxruntime.")


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
        said = "default" in field.description.lower()  # the description says it in its own words
        default = "" if field.is_required() or field.default is None or said else f" [default: {field.default}]"
        if kind == "negated":
            help_text = NEGATED_HELP[name]
        elif kind == "flag":
            help_text = field.description + ("" if said else " Default: off.")
        else:
            help_text = field.description + default
        if field.is_required() and not required:  # (a required option's help says [required] already)
            help_text += " Required, unless --spec names it."
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
                     help="Where the export stage runs: auto is docker when an engine answers and has a builder "
                          "image (it says which), else here."),
        click.option("--image", default=None, help="Builder image for the docker runner. Default: the one the "
                                                   "engine has of model-bundle-builder-cpu:VERSION and "
                                                   "model-bundle-builder:VERSION (CUDA and TensorRT), the CPU one "
                                                   "first unless --gpus or a TensorRT engine needs the GPU."),
        click.option("--gpus", is_flag=True, help="Give the container the GPUs (docker runner)."),
        click.option("--pull", is_flag=True, help="Pull the image when it is not on the engine (never otherwise)."),
    ]):
        command = option(command)
    return command
