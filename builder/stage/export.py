"""The export itself: model -> one ONNX file with preprocessing, decoding, NMS (and FP16/INT8) in the graph."""
from __future__ import annotations

import copy
import pathlib
import time
from typing import Any

from builder.core.errors import UserError
from builder.core.extras import require
from builder.exporting.spec import ExportSpec, check_inputs

#: SuperGradients' names for the precision option
QUANTIZATION_MODES = {None: "fp32", "fp16": "fp16", "int8": "int8"}
#: SuperGradients' calibration methods (pytorch-quantization's) that builder names otherwise: "max" is the
#: absolute-maximum range, which builder's symmetric minmax is
CALIBRATION_METHODS = {"max": "minmax"}
#: ...and the one it has no counterpart for, with the nearest: both pick the clipping point of each
#: activation's histogram that distorts it least (MSE: squared error; entropy: KL divergence)
CALIBRATION_SUBSTITUTES = {"mse": "entropy"}
#: the percentile builder's percentile calibration keeps (builder.quantize.int8's CalibPercentile)
CALIBRATION_PERCENTILE = 99.999
#: SuperGradients' export() keywords whose default is None where builder's option (if any) takes no None
SG_NONE_DEFAULTS = ("max_predictions_per_image", "device", "onnx_export_kwargs", "input_image_channels",
                    "input_image_dtype", "calibration_batches", "calibration_percentile", "selective_quantizer",
                    "postprocessing_kwargs")


def export(model_or_name: Any, output: str | pathlib.Path, **options: Any):
    """Export a model (a `Detector` or a variant name) to `output`; returns an `ExportResult`.

    Options are the fields of `builder.spec.ExportSpec`; `preprocessing` and `postprocessing` also accept
    an nn.Module, `quantization_mode` ("fp16"/"int8") is SuperGradients' name for `precision`, and
    `calibration_loader` takes a DataLoader of training-normalised images for INT8, as in SuperGradients.
    SuperGradients' other keywords and enum members are taken too (`supergradients_options`).
    """
    require("export")
    import torch

    from builder.core.files import check_model_destination
    from builder.core.log import warn
    from builder.models.base import Detector

    check_model_destination(pathlib.Path(output))
    # SG code exports model objects; by name (as the CLI does) SG's contradictory combinations stay refused
    options, notes = supergradients_options(options, combinations=isinstance(model_or_name, Detector))
    custom_pre = options.pop("preprocessing", True)
    custom_post = options.pop("postprocessing", True)
    loader = options.pop("calibration_loader", None)
    for name, value in (("preprocessing", custom_pre), ("postprocessing", custom_post)):
        if not isinstance(value, (bool, torch.nn.Module)):
            raise UserError(f"invalid {name}: expected True, False or an nn.Module, got {type(value).__name__}")
    flags = {"preprocessing": custom_pre is not False, "postprocessing": custom_post is not False}
    if isinstance(model_or_name, Detector):
        if options.get("weights") or options.get("num_classes"):
            raise UserError("weights and num_classes apply when exporting by name, not to a model object")
        spec = ExportSpec.create(model=model_or_name.variant, **flags, **options)
        model = copy.deepcopy(model_or_name)  # fusing and folding must not touch the caller's model
    elif isinstance(model_or_name, str):
        spec = ExportSpec.create(model=model_or_name, **flags, **options)
        model = None
    else:
        raise UserError(f"expected a model or a model name, got {type(model_or_name).__name__}")
    check_inputs(spec)  # before the model is built, traced and calibrated
    if spec.precision != "fp32" and isinstance(custom_post, torch.nn.Module):
        raise UserError("quantization needs builder's own postprocessing (or none): a custom postprocessing "
                        "module cannot be checked against FP32")
    for note in notes:  # only once every option is known to be valid: no warnings in front of an error
        warn(note)
    if model is None:
        model = load_model(spec)
    return export_model(model, pathlib.Path(output), spec,
                        custom_pre if isinstance(custom_pre, torch.nn.Module) else None,
                        custom_post if isinstance(custom_post, torch.nn.Module) else None, loader)


def supergradients_options(options: dict[str, Any], combinations: bool) -> tuple[dict[str, Any], list[str]]:
    """SuperGradients' export() keywords, values and enum members as builder's options, and the warnings to give.

    Each SG keyword is honoured, or accepted with one warning saying what builder does instead, or (where
    nothing sensible can be built, e.g. CUDA that is not there) refused as a UserError. `combinations`: also
    accept what SG accepts and ignores, `postprocessing=False` with a flat format or the TensorRT engine.
    """
    import enum

    notes: list[str] = []
    # SG's enums are str enums: builder's options and its records take the plain value
    options = {name: value.value if isinstance(value, enum.Enum) else value for name, value in options.items()}
    for name in SG_NONE_DEFAULTS:
        if name in options and options[name] is None:
            del options[name]

    if "quantization_mode" in options:
        mode = options.pop("quantization_mode")
        if not isinstance(mode, (str, type(None))) or mode not in QUANTIZATION_MODES:
            raise UserError(f"invalid quantization_mode {mode!r}: expected 'fp16', 'int8' or None")
        if options.get("precision", QUANTIZATION_MODES[mode]) != QUANTIZATION_MODES[mode]:
            raise UserError(f"quantization_mode={mode!r} and precision={options['precision']!r} contradict each "
                            f"other: give one of them")
        options["precision"] = QUANTIZATION_MODES[mode]
    int8 = options.get("precision") == "int8"
    preprocessing = options.get("preprocessing", True) is not False
    postprocessing = options.get("postprocessing", True) is not False

    if "device" in options:
        notes += _device(options.pop("device"))
    if "onnx_export_kwargs" in options:
        notes += _onnx_export_kwargs(options.pop("onnx_export_kwargs"), options)

    if "input_image_channels" in options:
        channels = options.pop("input_image_channels")
        if channels != 3 or isinstance(channels, bool):
            raise UserError(f"invalid input_image_channels {channels!r}: the models take 3-channel (RGB) images")
    if "input_image_dtype" in options:
        wanted, given = ("uint8" if preprocessing else "float32"), _dtype_name(options.pop("input_image_dtype"))
        if given != wanted:
            what = ("uint8 RGB images (the cast and normalisation are in the graph)" if preprocessing
                    else "the normalised float32 tensor")
            notes.append(f"input_image_dtype={given} is not available: the model's input is {wanted}, {what}")

    method = options.get("calibration_method")
    if isinstance(method, str) and method in CALIBRATION_METHODS:
        options["calibration_method"] = CALIBRATION_METHODS[method]
    elif isinstance(method, str) and method in CALIBRATION_SUBSTITUTES:
        options["calibration_method"] = CALIBRATION_SUBSTITUTES[method]
        notes.append(f"calibration_method={method!r} is not available: builder calibrates with "
                     f"{CALIBRATION_SUBSTITUTES[method]!r} (ONNX Runtime's calibrators: minmax, entropy, percentile)")
    if "calibration_loader" in options and not int8:
        options.pop("calibration_loader")
        notes.append(f"calibration_loader is ignored: only INT8 is calibrated, this export is "
                     f"{str(options.get('precision', 'fp32')).upper()}")
    if "calibration_batches" in options:
        notes += _calibration_batches(options.pop("calibration_batches"), options, int8)
    if "calibration_percentile" in options:
        percentile = options.pop("calibration_percentile")
        if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) or not 0 < percentile <= 100:
            raise UserError(f"invalid calibration_percentile {percentile!r}: expected a number from 0 to 100")
        if not int8 or options.get("calibration_method") != "percentile":
            notes.append("calibration_percentile is ignored: it applies to INT8 with calibration_method='percentile'")
        elif percentile != CALIBRATION_PERCENTILE:
            notes.append(f"calibration_percentile={percentile:g} is not available: builder's percentile calibration "
                         f"keeps {CALIBRATION_PERCENTILE:g}% of each activation's histogram")
    if "selective_quantizer" in options:
        options.pop("selective_quantizer")
        notes.append("selective_quantizer is ignored: builder quantizes with ONNX Runtime, not pytorch-quantization "
                     "(per-channel int8 weights, symmetric per-tensor activations, class-logit layers kept float)")
    if "postprocessing_kwargs" in options:
        kwargs = options.pop("postprocessing_kwargs")
        if not isinstance(kwargs, dict):
            raise UserError(f"invalid postprocessing_kwargs: expected a dict, got {type(kwargs).__name__}")
        if kwargs:
            notes.append(f"postprocessing_kwargs {sorted(map(str, kwargs))} are ignored: builder's decoding is set "
                         f"by num_pre_nms_predictions, confidence_threshold, nms_threshold and "
                         f"max_predictions_per_image")

    if combinations and not postprocessing:
        notes += _without_postprocessing(options, int8)
    return options, notes


def _device(device: Any) -> list[str]:
    """SG exports on `device`; builder traces and quantizes on the CPU, and the ONNX file does not depend on it."""
    import torch

    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError, ValueError):
        raise UserError(f"invalid device {device!r}: expected 'cpu' or 'cuda'") from None
    if kind == "cpu":
        return []
    if kind != "cuda":
        raise UserError(f"invalid device {device!r}: builder exports on 'cpu' (or 'cuda' where CUDA is available)")
    if not torch.cuda.is_available():
        raise UserError(f"device={str(device)!r} was asked for, but CUDA is not available here",
                        hint="pass device='cpu': builder's FP16 and INT8 exports need no GPU")
    return [f"device={str(device)!r}: builder traces and quantizes on the CPU; the ONNX file is the same on any "
            f"device (FP16 and INT8 need no GPU)"]


def _onnx_export_kwargs(kwargs: Any, options: dict[str, Any]) -> list[str]:
    """torch.onnx.export's keywords as SG forwards them: honoured where builder has the choice, else a warning each."""
    if not isinstance(kwargs, dict):
        raise UserError(f"invalid onnx_export_kwargs: expected a dict, got {type(kwargs).__name__}")
    notes = []
    for key, value in kwargs.items():
        if key == "opset_version":
            lowest, highest = _bounds("onnx_opset")
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"invalid onnx_export_kwargs['opset_version'] {value!r}: expected an ONNX opset number")
            # SG's own default is torch's (14 before torch 2.1): a runtime that reads 18 reads what builder makes
            chosen = value if lowest <= value <= highest else (_default("onnx_opset") if value < lowest else highest)
            if options.get("onnx_opset", chosen) != chosen:
                raise UserError(f"onnx_export_kwargs['opset_version'] {value} and onnx_opset={options['onnx_opset']} "
                                f"contradict each other: give one of them")
            options["onnx_opset"] = chosen
            if chosen != value:
                notes.append(f"onnx_export_kwargs['opset_version'] {value} is not available: builder exports opset "
                             f"{chosen} (it exports opsets {lowest} to {highest})")
        elif key == "dynamic_axes":
            notes += _dynamic_axes(value, options)
        elif key == "do_constant_folding" and value is not True:
            notes.append("onnx_export_kwargs['do_constant_folding'] is ignored: builder's exporter always folds "
                         "constants")
        elif key == "keep_initializers_as_inputs" and value:
            notes.append("onnx_export_kwargs['keep_initializers_as_inputs'] is ignored: the weights are "
                         "initializers, never inputs")
        elif key == "export_params" and value is not True:
            notes.append("onnx_export_kwargs['export_params'] is ignored: the weights are always in the file")
        elif key == "verbose" and value:
            notes.append("onnx_export_kwargs['verbose'] is ignored: builder prints its own summary of the model")
        elif key == "input_names" and list(value or []) != ["images"]:
            notes.append("onnx_export_kwargs['input_names'] is ignored: the input is named 'images'")
        elif key == "output_names" and value:
            notes.append("onnx_export_kwargs['output_names'] is ignored: builder names the outputs after their "
                         "format (result.output_names)")
        elif key not in ("do_constant_folding", "keep_initializers_as_inputs", "export_params", "verbose",
                         "input_names", "output_names"):
            notes.append(f"onnx_export_kwargs[{key!r}] is ignored: builder runs its own exporter (torch's dynamo "
                         f"exporter, then onnxsim and onnx.checker)")
    return notes


def _dynamic_axes(axes: Any, options: dict[str, Any]) -> list[str]:
    """Only the batch axis can be dynamic in builder (`dynamic_batch`); height and width stay fixed."""
    if not axes:
        return []
    if not isinstance(axes, dict) or not all(isinstance(v, (dict, list, tuple)) for v in axes.values()):
        raise UserError("invalid onnx_export_kwargs['dynamic_axes']: expected {tensor name: {axis: name} or [axes]}")
    named = {axis for value in axes.values() for axis in value}
    if 0 in named:
        options["dynamic_batch"] = True
        # SG traces with batch_size and leaves the batch dynamic: builder's dynamic batch takes that size too
        options.pop("batch_size", None)
    if named - {0}:
        return [f"onnx_export_kwargs['dynamic_axes'] {sorted(named)}: builder makes only the batch axis dynamic "
                f"({'done' if 0 in named else 'not asked'}); height and width stay input_image_shape"]
    return []


def _calibration_batches(batches: Any, options: dict[str, Any], int8: bool) -> list[str]:
    """SG calibrates on the loader's first `calibration_batches` batches (and one more, an off-by-one builder
    does not copy); builder counts images (`calibration_count`), so the loader is cut at that many batches."""
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
        raise UserError(f"invalid calibration_batches {batches!r}: expected a whole number of at least 1")
    if not int8:
        return ["calibration_batches is ignored: only INT8 is calibrated"]
    loader = options.get("calibration_loader")
    if loader is None:
        return [f"calibration_batches is ignored: it counts the batches of a calibration_loader; without one builder "
                f"calibrates on calibration_count={options.get('calibration_count', _default('calibration_count'))} "
                f"images"]
    options["calibration_loader"] = FirstBatches(loader, batches)
    if "calibration_count" not in options:
        size = getattr(loader, "batch_size", None)
        most = _bounds("calibration_count")[1]
        options["calibration_count"] = min(most, batches * size) if isinstance(size, int) and size > 0 else most
    return []


def _without_postprocessing(options: dict[str, Any], int8: bool) -> list[str]:
    """What SG ignores without postprocessing: the output format, and the engine's choice of NMS."""
    from builder.exporting.nms import flavour, for_engine
    from builder.exporting.runtimes import runtime

    notes = []
    if options.get("output_predictions_format") not in (None, _default("output_predictions_format")):
        notes.append(f"output_predictions_format={options.pop('output_predictions_format')!r} is ignored: without "
                     f"postprocessing the model returns raw boxes and scores (as in SuperGradients)")
    engine = options.get("engine")
    plain = flavour(_default("nms"))  # what a graph without NMS is exported for
    if isinstance(engine, str) and engine.lower() not in plain.runtimes:
        for_engine(engine.lower())  # an unknown engine is refused with the known ones, not ignored
        wanted, made = runtime(engine.lower()), runtime(plain.runtimes[0])
        if int8 and wanted.int8_activation_zero_point != made.int8_activation_zero_point:
            # the spec ties that runtime to its NMS flavour: an ONNX Runtime INT8 graph would not load there
            raise UserError(f"INT8 with postprocessing=False and engine={engine!r}: builder's INT8 graphs for "
                            f"{engine} carry its NMS", hint="keep postprocessing, or export for engine='onnxruntime'")
        options.pop("engine")
        notes.append(f"engine={engine!r} is ignored: it chooses the NMS, and without postprocessing there is none; "
                     f"the raw model is exported as for {plain.runtimes[0]} (TensorRT parses it too)")
    return notes


class FirstBatches:
    """A calibration loader cut to its first `count` batches (SG's calibration_batches)."""

    def __init__(self, loader: Any, count: int):
        self.loader, self.count = loader, count

    def __iter__(self):
        import itertools

        return itertools.islice(iter(self.loader), self.count)


def _dtype_name(value: Any) -> str:
    """torch.uint8, np.uint8, "uint8" -> "uint8"."""
    import numpy as np
    import torch

    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    try:
        return np.dtype(value).name
    except TypeError:
        raise UserError(f"invalid input_image_dtype {value!r}: expected a dtype such as torch.uint8") from None


def _bounds(name: str) -> tuple[int, int]:
    """The spec field's lower and upper bound (its ge/le)."""
    limits = {type(m).__name__: m for m in ExportSpec.model_fields[name].metadata}
    return limits["Ge"].ge, limits["Le"].le


def _default(name: str) -> Any:
    return ExportSpec.model_fields[name].default


def load_model(spec: ExportSpec):
    """The spec's variant with its weights (random, seeded, when it names none)."""
    from builder.models.registry import build

    return build(spec.model, num_classes=spec.num_classes, checkpoint_path=spec.weights)


def smoke_run(model_path: pathlib.Path, result) -> None:
    """The model loads in ONNX Runtime and runs on a real photo: a bundle that cannot run is not written."""
    import numpy as np

    from builder.core.images import sample_input
    from builder.exporting.sessions import inference_session
    from builder.models.registry import family_of

    batch = result.input_shape[0] if isinstance(result.input_shape[0], int) else 1
    prep = family_of(result.model).preprocessing
    images = np.repeat(sample_input(prep, tuple(result.input_shape[2:])), batch, axis=0)
    inference_session(model_path).run(None, {result.input_name: images})


def export_model(model, output: pathlib.Path, spec: ExportSpec, custom_pre=None, custom_post=None, loader=None,
                 report_file: bool = True):
    """`export()` on a built model; `report_file=False` keeps a quantized export's report off the disk."""
    import torch

    from builder.exporting.graphs import finalize, trace_pipeline
    from builder.core.files import check_model_destination
    from builder.exporting.onnx_file import save_atomically, tensor_signature
    from builder.stage.result import ExportResult

    check_model_destination(output)
    started = time.monotonic()
    family = model.family
    prep = family.preprocessing
    height, width = spec.input_image_shape or family.input_size
    anchors = sum((height // s) * (width // s) for s in model.strides)
    top_k = min(spec.num_pre_nms_predictions, anchors)
    conf = spec.confidence_threshold if spec.confidence_threshold is not None else family.default_confidence
    iou = spec.nms_threshold if spec.nms_threshold is not None else family.default_iou

    model = model.eval().fuse()
    with torch.no_grad():
        graph, steps = trace_pipeline(model, spec, (height, width), top_k, custom_pre, custom_post)
    settings = dict(top_k=top_k, conf=conf, iou=iou, num_classes=model.num_classes)
    report = None
    if spec.precision != "fp32":
        from builder.quantize.apply import quantize_graph

        graph, report = quantize_graph(graph, spec, prep, (height, width), settings, loader)
    graph = finalize(graph, spec, model, settings)
    save_atomically(graph, output)
    if report is not None and report_file:
        from builder.stage.result import save_report

        save_report(report, output)

    inputs, outputs = tensor_signature(graph.graph.input), tensor_signature(graph.graph.output)
    with_nms = spec.postprocessing and custom_post is None
    resize = (f"letterbox into {height}x{width} (scale the longest side to fit {height - prep.letterbox_margin}x"
              f"{width - prep.letterbox_margin}, centre, pad with {prep.pad_value})" if prep.resize == "letterbox"
              else f"stretch to {height}x{width}")
    return ExportResult(
        output=output.resolve(), model=spec.model, engine=spec.engine, nms=spec.nms, runtime=spec.runtime,
        output_predictions_format=spec.output_predictions_format if with_nms else None,
        input_name="images", input_shape=inputs[0]["shape"], input_dtype=inputs[0]["dtype"], inputs=inputs,
        outputs=outputs, preprocessing_steps=steps, resize=resize,
        confidence_threshold=conf if with_nms else None, nms_threshold=iou if with_nms else None,
        num_pre_nms_predictions=top_k if with_nms else None,
        max_predictions_per_image=spec.max_predictions_per_image if with_nms else None,
        batch_size=None if spec.dynamic_batch else spec.batch_size,
        export_seconds=time.monotonic() - started, class_names=model.class_names, num_classes=model.num_classes,
        spec=spec.model_dump(),
        precision=spec.precision, accuracy_report=report)
