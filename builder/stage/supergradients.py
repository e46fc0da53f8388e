"""SuperGradients' export() keywords, values and enum members, translated into builder's export options."""
from __future__ import annotations

import sys
from typing import Any

from builder.core.errors import UserError
from builder.core.extras import require
from builder.exporting.spec import ExportSpec

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
    require("export", "torch")
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

    torch = sys.modules.get("torch")  # a torch dtype exists only where torch is loaded
    if torch is not None and isinstance(value, torch.dtype):
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
