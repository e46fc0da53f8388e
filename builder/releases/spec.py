"""The release spec (release.yaml): which bundles a release holds, and where it is pushed.

```yaml
name: detectors                      # the repository under `registry`: bundles and the index go there
version: "2026.11"                   # the index's tag
registry: registry.example.com/ml    # host[:port][/path]
defaults: {input_image_shape: [320, 320], dynamic_batch: true}   # any bundle option, flat or nested
matrix: {model: [yolo_nas_s, ppyoloe_s], precision: [fp32, int8], target: [triton], gpu: [T4, L4]}
include: [{model: yolo_nas_s, precision: fp16, target: standalone}]
exclude: [{precision: int8, gpu: L4}]
weights: {yolo_nas_s: weights/yolo_nas_s.pth, ppyoloe_s: https://models.example.com/ppyoloe_s.pth}
```

Matrix, include and exclude work as in CI matrices (GitHub Actions'): the product of the matrix's lists,
less every combination an `exclude` entry matches, then each `include` entry extends the combinations it
fits without changing one of their matrix values, or is a combination of its own. Two keys of an entry are
not bundle options: `gpu` (the GPU type a bundle serves on; a TensorRT build runs on a node with that
`accelerator_type`) and `resources` (custom Ray resources the build asks for, e.g. to pin it to a node).

Relative paths (weights, labels, templates, calibration and report images) are relative to the release
file's folder. In a cluster they must mean the same on every node (a shared filesystem) or be URLs.
"""
from __future__ import annotations

import datetime
import itertools
import json
import math
import pathlib
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

from pydantic import (BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError, field_validator,
                      model_validator)

from builder.core.errors import UserError

#: matrix keys that are no bundle options
GPU_KEY, RESOURCES_KEY = "gpu", "resources"
#: bundle options that name files or folders, made absolute against the release file's folder
PATH_OPTIONS = ("weights", "labels", "templates", "calibration_images", "report_images")
#: a tag of the bundles' repository that holds a bundle by build key: `build-<sha256>`
BUILD_TAG_PREFIX = "build-"
MAX_BUNDLES = 1024
#: an accelerator type as Ray names them (T4, L4, A100, A10G, H100, Orin, ...)
GPU_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")
RESOURCE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}")
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
NAME_PATTERN = re.compile(_COMPONENT)
REGISTRY_PATTERN = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.[A-Za-z0-9-]+)*(?::[0-9]{1,5})?"
                              rf"(?:/{_COMPONENT})*")
VERSION_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")

Scalar = str | int | float | bool


class VerifySettings(BaseModel):
    """release.yaml's `verify:` as a mapping: the images each bundle is verified on before it is pushed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    images: Optional[str] = Field(None, description="Folder of images every bundle is verified on. Default: the bundle's own samples/, else builder's 7 photos.")
    count: StrictInt = Field(32, ge=1, le=10_000, description="Most images used from a folder.")
    models: dict[str, str] = Field(default_factory=dict, description="Model variant -> a folder of its own images (pictures of what it detects), in place of `images`.")

    def for_model(self, model: str) -> dict[str, Any]:
        """verify()'s images and count for one model's bundles."""
        return {"images": self.models.get(model, self.images), "count": self.count}


class ReleaseSpec(BaseModel):
    """What release.yaml holds; validated as a whole before any bundle is planned."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="The release's repository under the registry (lower-case, e.g. detectors).")
    version: str = Field(description="The tag of the release's index, e.g. 2026.11 or 1.4.0.")
    registry: str = Field(description="Where bundles and the index are pushed: host[:port][/path].")
    insecure: bool = Field(False, strict=True, description="Plain HTTP to the registry (one without TLS).")
    runner: Literal["auto", "docker", "local"] = Field("auto", description="Where each build's export stage runs: docker (the pinned image, which every node must have), local (the node's own toolchain), auto (docker when the Docker engine here has the image).")
    image: Optional[str] = Field(None, max_length=255, description="Builder image of CPU builds (docker runner). Default: model-bundle-builder-cpu:VERSION.")
    gpu_image: Optional[str] = Field(None, max_length=255, description="Builder image of TensorRT builds (docker runner). Default: model-bundle-builder:VERSION.")
    cpus_per_build: StrictInt = Field(1, ge=1, le=256, description="CPUs a build asks Ray for.")
    retries: StrictInt = Field(2, ge=0, le=10, description="Times a build is retried when its node dies (a build that fails is not).")
    verify: Union[StrictBool, VerifySettings] = Field(True, description="Verify every ONNX Runtime bundle against PyTorch on its node before pushing it: true, false, or {images: DIR, count: N, models: {VARIANT: DIR}}.")
    defaults: dict[str, Any] = Field(default_factory=dict, description="Bundle options every bundle starts from.")
    matrix: dict[str, list[Any]] = Field(default_factory=dict, description="Option -> the values the release spans.")
    include: list[dict[str, Any]] = Field(default_factory=list, max_length=MAX_BUNDLES)
    exclude: list[dict[str, Any]] = Field(default_factory=list, max_length=MAX_BUNDLES)
    weights: dict[str, str] = Field(default_factory=dict, description="Model variant -> its checkpoint (path, URL or 'coco').")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_PATTERN.fullmatch(value) or len(value) > 128:
            raise ValueError(f"{value!r} is not a repository name: lower-case letters and digits, separated by "
                             f"'.', '_' or '-'")
        return value

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        if not VERSION_PATTERN.fullmatch(value):
            raise ValueError(f"{value!r} is not a tag: up to 128 letters, digits, '.', '_' or '-'")
        if value.startswith(BUILD_TAG_PREFIX):
            raise ValueError(f"tags starting with '{BUILD_TAG_PREFIX}' name bundles by their build key")
        return value

    @field_validator("registry")
    @classmethod
    def _registry(cls, value: str) -> str:
        value = value.removeprefix("oci://").rstrip("/")
        host = value.split("/", 1)[0]
        if not REGISTRY_PATTERN.fullmatch(value) or not ("." in host or ":" in host or host == "localhost"):
            raise ValueError(f"{value!r} is not a registry: host[:port][/path], the host with a dot, a port or "
                             f"'localhost'")
        return value

    @field_validator("matrix", mode="before")
    @classmethod
    def _matrix_lists(cls, value: Any) -> Any:
        for key, values in (value.items() if isinstance(value, dict) else ()):
            if isinstance(values, (set, frozenset)):  # it would become a list in no fixed order: bundles renumbered
                raise ValueError(f"'{key}' is {values}, which YAML reads as a set: write a list, e.g. "
                                 f"[{', '.join(sorted(map(str, values)))}]")
        return value

    @field_validator("matrix")
    @classmethod
    def _matrix(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in value.items():
            if not values:
                raise ValueError(f"'{key}' lists no values")
            for v in values:
                _check_plain(v, f"'{key}' lists")
            if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
                raise ValueError(f"'{key}' lists a value twice")
        # counted before anything is expanded: a few lines of lists multiply out to more than memory holds
        count = math.prod(len(values) for values in value.values())
        if count > MAX_BUNDLES:
            raise ValueError(f"its lists multiply out to {count} combinations; at most {MAX_BUNDLES} (before exclude)")
        return value

    @field_validator("include", "exclude")
    @classmethod
    def _entries(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, entry in enumerate(value):
            if not entry:
                raise ValueError(f"entry {i + 1} is empty")
            for key, v in entry.items():
                _check_plain(v, f"entry {i + 1}: '{key}' {'holds' if isinstance(v, (dict, list)) else 'is'}")
        return value

    @model_validator(mode="after")
    def _excludes_name_matrix_keys(self) -> "ReleaseSpec":
        for i, entry in enumerate(self.exclude):
            unknown = sorted(set(entry) - set(self.matrix))
            if unknown:
                raise ValueError(f"exclude entry {i + 1} names '{unknown[0]}', which the matrix does not list")
        return self

    @field_validator("verify", mode="before")
    @classmethod
    def _verify(cls, value: Any) -> Any:
        """One message for either form (a union would name the branch: `verify.bool`)."""
        from builder.exporting.spec import validation_message

        if isinstance(value, dict):
            try:
                return VerifySettings(**value)
            except ValidationError as e:
                raise ValueError(validation_message(e)) from None
        if not isinstance(value, (bool, VerifySettings)):
            raise ValueError("expected true, false or {images: DIR, count: N, models: {VARIANT: DIR}}")
        return value

    def verification(self, model: str) -> Optional[dict[str, Any]]:
        """verify()'s images and count for one model's bundles; None where the release does not verify."""
        if self.verify is False:
            return None
        return (self.verify if isinstance(self.verify, VerifySettings) else VerifySettings()).for_model(model)

    @property
    def repository(self) -> str:
        """registry/path/name: where the bundles (tagged build-KEY) and the index (tagged VERSION) go."""
        return f"{self.registry}/{self.name}"

    @property
    def index_reference(self) -> str:
        return f"{self.repository}:{self.version}"


@dataclass(frozen=True)
class PlannedBundle:
    """One bundle of a release: its matrix values, the bundle options it is built from, where it may build."""

    number: int
    values: dict[str, Any]
    options: dict[str, Any]
    spec: Any  # BundleSpec
    gpu: Optional[str]
    resources: dict[str, float] = field(default_factory=dict)
    #: set by the planner (builder.releases.run.with_keys): the build key and the stage it was made for
    key: str = ""
    stage: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """model precision target [gpu], plus any other matrix value: how the plan, progress and report name it."""
        export = self.spec.export
        parts = [export.model, export.precision, self.spec.target] + ([self.gpu] if self.gpu else [])
        shown = {"model", "precision", "target", GPU_KEY, RESOURCES_KEY, *PATH_OPTIONS}  # paths: in the spec only
        parts += [f"{k}={_text(v)}" for k, v in self.values.items() if k not in shown]
        return " ".join(parts)

    @property
    def builds_plan(self) -> bool:
        return self.spec.export.serving.builds_plan

    def annotations(self) -> dict[str, str]:
        """What the index says of this bundle, and `pull --select` matches on."""
        export = self.spec.export
        found = {"model": export.model, "precision": export.precision, "target": self.spec.target,
                 "name": self.spec.model_name}
        if self.gpu:
            found["gpu"] = self.gpu
        found.update({k: _text(v) for k, v in self.values.items() if k not in (GPU_KEY, RESOURCES_KEY)
                      and k not in found})
        return found


def read_release_file(path: str | pathlib.Path) -> ReleaseSpec:
    """release.yaml, read as strictly as build.yaml (bounded, no aliases or duplicate keys) and validated."""
    from builder.exporting.spec import validation_message
    from builder.targets.spec import read_spec_file

    path = pathlib.Path(path)
    try:
        data = read_spec_file(path)
    except UserError as e:
        raise UserError(str(e).replace("spec file", "release file", 1), hint=e.hint) from None
    try:
        spec = ReleaseSpec(**data)
    except ValidationError as e:
        raise UserError(f"release file '{path}': {validation_message(e)}") from None
    if isinstance(spec.verify, VerifySettings):
        verify = spec.verify
        spec = spec.model_copy(update={"verify": verify.model_copy(update={
            "images": _absolute(verify.images, path.parent, "images"),
            "models": {k: _absolute(v, path.parent, "images") for k, v in verify.models.items()}})})
    return spec.model_copy(update={"weights": {k: _absolute(v, path.parent, "weights") for k, v in spec.weights.items()},
                                   "defaults": _absolute_paths(spec.defaults, path.parent),
                                   "include": [_absolute_paths(e, path.parent) for e in spec.include],
                                   "matrix": {k: [_absolute(v, path.parent, k) for v in vs] if k in PATH_OPTIONS else vs
                                              for k, vs in spec.matrix.items()}})


def combinations(spec: ReleaseSpec) -> list[dict[str, Any]]:
    """The matrix's combinations, less the excluded, plus the included (GitHub Actions' rules)."""
    keys = list(spec.matrix)
    rows = [dict(zip(keys, values)) for values in itertools.product(*(spec.matrix[k] for k in keys))] if keys else []
    rows = [row for row in rows if not any(_matches(row, entry) for entry in spec.exclude)]
    originals = [dict(row) for row in rows]
    extra: list[dict[str, Any]] = []
    for entry in spec.include:
        fitted = False
        for row, original in zip(rows, originals):
            # an include entry may add keys to a combination, and overwrite what an earlier include added,
            # but never one of the combination's own matrix values
            if all(_same(original[k], v) for k, v in entry.items() if k in original):
                row.update(entry)
                fitted = True
        if not fitted:
            extra.append(dict(entry))
    return rows + extra


def plan(spec: ReleaseSpec, source: str = "release file") -> list[PlannedBundle]:
    """Every bundle of the release, validated as a bundle spec; an invalid one is one line naming it."""
    from builder.targets.build import resolve_spec
    from builder.targets.spec import check_bundle_inputs, merge

    rows = combinations(spec)
    if not rows:
        raise UserError(f"{source}: the release holds no bundle", hint="list values under 'matrix' or 'include'")
    if len(rows) > MAX_BUNDLES:
        raise UserError(f"{source}: the release holds {len(rows)} bundles; at most {MAX_BUNDLES}")
    planned = []
    for number, row in enumerate(rows, 1):
        where = f"{source}: bundle {number} ({', '.join(f'{k}={_text(v)}' for k, v in row.items())})"
        gpu, resources = row.get(GPU_KEY), row.get(RESOURCES_KEY) or {}
        if gpu is not None and (not isinstance(gpu, str) or not GPU_PATTERN.fullmatch(gpu)):
            raise UserError(f"{where}: gpu must be an accelerator type such as T4, L4 or A100")
        if not isinstance(resources, dict) or any(
                not isinstance(k, str) or not RESOURCE_PATTERN.fullmatch(k) or k in ("CPU", "GPU", "memory")
                or isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1024
                for k, v in resources.items()):
            raise UserError(f"{where}: resources maps custom Ray resource names to amounts in (0, 1024], e.g. "
                            f"{{node-with-cache: 1}}")
        options = merge(spec.defaults, {k: v for k, v in row.items() if k not in (GPU_KEY, RESOURCES_KEY)})
        model = options.get("model", (options.get("export") or {}).get("model"))
        if "weights" not in options and isinstance(model, str) and model in spec.weights:
            options["weights"] = spec.weights[model]
        try:
            bundle_spec = resolve_spec(None, **options)
            check_bundle_inputs(bundle_spec)
        except UserError as e:
            raise UserError(f"{where}: {e.one_line()}") from None
        planned.append(PlannedBundle(number, dict(row), options, bundle_spec, gpu,
                                     {k: float(v) for k, v in resources.items()}))
    unused = sorted(set(spec.weights) - {p.spec.export.model for p in planned})
    if unused:
        raise UserError(f"{source}: weights are given for '{unused[0]}', which no bundle of the release builds")
    _check_verify_images(spec, {p.spec.export.model for p in planned}, source)
    return planned


def _check_verify_images(spec: ReleaseSpec, models: set[str], source: str) -> None:
    """The folders `verify:` names hold images, and name models the release builds: said before any build."""
    from builder.core.images import image_files

    if not isinstance(spec.verify, VerifySettings):
        return
    unused = sorted(set(spec.verify.models) - models)
    if unused:
        raise UserError(f"{source}: verify images are given for '{unused[0]}', which no bundle of the release builds")
    for folder in {spec.verification(model)["images"] for model in models} - {None}:
        try:
            image_files(folder)
        except UserError as e:
            raise UserError(f"{source}: verify: {e.one_line()}") from None


#: what YAML reads as other than text, a number, a boolean, a list or a mapping (safe_load makes these)
_NOT_PLAIN = ((datetime.datetime, "a date and time"), (datetime.date, "a date"), ((set, frozenset), "a set"),
              (bytes, "binary data"))


def _check_plain(value: Any, said: str) -> None:
    """Refuse a value YAML read as a date, a set or binary data, anywhere inside `value` (unquoted `2026-11-02`
    is a date): matrix values are compared and keyed as JSON, and a bundle option is text anyway."""
    if isinstance(value, (list, tuple)):
        for item in value:
            _check_plain(item, said)
    elif isinstance(value, dict):
        for item in value.values():
            _check_plain(item, said)
    else:
        for kind, what in _NOT_PLAIN:
            if isinstance(value, kind):
                raise ValueError(f"{said} {value}, which YAML reads as {what}: quote it")


def _matches(row: dict[str, Any], entry: dict[str, Any]) -> bool:
    return all(k in row and _same(row[k], v) for k, v in entry.items())


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "x".join(map(str, value))
    return str(value)


def _absolute(value: Any, base: pathlib.Path, option: str) -> Any:
    """A path option made absolute against `base`; URLs, 'coco' and 'demo' stay as they are."""
    from builder.models.registry import NAMED_WEIGHTS

    if not isinstance(value, str) or not value or "://" in value or (option == "weights" and value in NAMED_WEIGHTS):
        return value
    path = pathlib.Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).absolute())


def _absolute_paths(options: dict[str, Any], base: pathlib.Path) -> dict[str, Any]:
    resolved = {}
    for key, value in options.items():
        if isinstance(value, dict):
            resolved[key] = _absolute_paths(value, base)
        else:
            resolved[key] = _absolute(value, base, key) if key in PATH_OPTIONS else value
    return resolved
