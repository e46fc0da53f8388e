"""manifest.json: what a bundle holds (every file's sha256 and size), what the model is, and what built it.

One typed model, `BundleManifest`, written by `builder bundle` and validated on every read (push, pull,
verify, bench): a hand-edited or truncated manifest is one clear error, never a KeyError later.
"""
from __future__ import annotations

import json
import pathlib
import re
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MANIFEST = "manifest.json"
#: the schema version; 2 named the NMS flavour and the runtime apart (1 had one `engine` field)
MANIFEST_FORMAT = 2
SHA256 = re.compile(r"[0-9a-f]{64}")
#: the largest dimension a signature may declare (a 65536 x 65536 image is already 12 GiB of uint8)
MAX_DIM = 1 << 16


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Record):
    name: str = Field(min_length=1, max_length=256)
    dtype: Literal["uint8", "int8", "int32", "int64", "float16", "float32", "bool"]
    shape: list[Union[int, str]] = Field(max_length=8)

    @field_validator("shape")
    @classmethod
    def _dims(cls, shape: list) -> list:
        for d in shape:
            if isinstance(d, int) and not 0 <= d <= MAX_DIM:
                raise ValueError(f"dimension {d} is outside 0..{MAX_DIM}")
            if isinstance(d, str) and not re.fullmatch(r"[A-Za-z_?][A-Za-z0-9_]{0,63}", d):
                raise ValueError(f"symbolic dimension {d!r} is not a name")
        return shape


class Signature(_Record):
    inputs: list[TensorSpec] = Field(min_length=1, max_length=16)
    outputs: list[TensorSpec] = Field(min_length=1, max_length=16)


class WeightsRecord(_Record):
    source: str
    sha256: Optional[str] = Field(None, pattern=SHA256.pattern)
    seed: Optional[int] = None


class ModelRecord(_Record):
    variant: str
    family: str
    num_classes: int = Field(ge=1, le=100_000)
    weights: WeightsRecord


class PreprocessingRecord(_Record):
    channel_order: Literal["RGB", "BGR"]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: Literal["letterbox", "stretch"]
    pad_value: int = Field(ge=0, le=255)
    letterbox_margin: int = Field(ge=0)
    in_graph: list[str]
    #: the resize in words, as the export printed it
    resize_description: str


class PostprocessingRecord(_Record):
    confidence_threshold: float = Field(ge=0, le=1)
    iou_threshold: float = Field(ge=0, le=1)
    pre_nms_top_k: int = Field(ge=1)
    max_detections: int = Field(ge=1)
    class_aware: bool
    output_format: Literal["batch", "flat"]


class AccuracyRecord(_Record):
    report: str
    recall: float
    meets_target: bool


class FileEntry(_Record):
    path: str = Field(min_length=1, max_length=4096)
    sha256: str = Field(pattern=SHA256.pattern)
    size: int = Field(ge=0)

    @field_validator("path")
    @classmethod
    def _relative(cls, path: str) -> str:
        parts = path.split("/")
        if path.startswith("/") or "\\" in path or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"{path!r} is not a plain relative path inside the bundle")
        return path


class BundleManifest(_Record):
    """manifest.json, field for field."""

    manifest_format: Literal[2] = MANIFEST_FORMAT
    name: str
    version: int = Field(ge=1)
    target: str
    model: ModelRecord
    precision: Literal["fp32", "fp16", "int8"]
    nms: str
    runtime: str
    signature: Signature
    preprocessing: PreprocessingRecord
    postprocessing: PostprocessingRecord
    class_names: list[str]
    versions: dict[str, str]
    stage: dict[str, Any] = Field(default_factory=dict)
    tensorrt: Optional[dict[str, Any]] = None
    accuracy: Optional[AccuracyRecord] = None
    files: list[FileEntry] = Field(default_factory=list)

    @field_validator("signature")
    @classmethod
    def _takes_images(cls, signature: Signature) -> Signature:
        # a bundle's preprocessing is in its graph: verify and bench feed uint8 images resized to a fixed height and
        # width, so any other first input would be met only by a crash (or a model fed the wrong thing)
        images = signature.inputs[0]
        shape = images.shape
        if (images.dtype != "uint8" or len(shape) != 4 or shape[0] == 0 or shape[1] != 3
                or not all(isinstance(d, int) and d >= 1 for d in shape[2:])):
            raise ValueError(f"input '{images.name}' is {images.dtype} {shown_shape(shape)}; a bundle takes uint8 "
                             "images [batch, 3, height, width] of a fixed height and width")
        return signature

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json", exclude_none=True), indent=2, ensure_ascii=False) + "\n"


def shown_shape(shape: list) -> str:
    """[batch, 3, 64, 64]: a shape as messages show it (an unknown dimension as '?')."""
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def identity(manifest: BundleManifest) -> dict[str, str]:
    """What the manifest says the bundle is, by the names build.yaml and a release's index use."""
    return {"model": manifest.model.variant, "precision": manifest.precision, "target": manifest.target,
            "name": manifest.name, "runtime": manifest.runtime}


def check_against_spec(manifest: BundleManifest, spec, folder: pathlib.Path) -> None:
    """Refuse a manifest.json that says another model, precision, target, name, runtime or version than the bundle's
    build.yaml (`spec`, a BundleSpec). The file list covers build.yaml with its sha256 but not manifest.json
    itself, so an edit of manifest.json alone shows here; unchecked, a changed target, runtime or version sends
    verify and bench to files the bundle does not have."""
    from builder.core.errors import UserError

    built = {"model": spec.export.model, "precision": spec.export.precision, "target": spec.target,
             "name": spec.model_name, "runtime": spec.export.runtime, "version": spec.version}
    for key, said in {**identity(manifest), "version": manifest.version}.items():
        if said != built[key]:
            raise UserError(f"bundle '{folder}': {key} mismatch: manifest.json says {said!r}, build.yaml says "
                            f"{built[key]!r}", hint="the bundle was edited: rebuild it")


def file_entries(folder: pathlib.Path) -> list[FileEntry]:
    """Every regular file under `folder` but its manifest.json; a link or a special file is refused, never
    skipped: a bundle is exactly what its archive and its manifest can hold."""
    import stat

    from builder.core.errors import UserError
    from builder.core.hashing import sha256_of

    entries = []
    for p in sorted(folder.rglob("*"), key=lambda p: p.relative_to(folder).as_posix()):
        relative = p.relative_to(folder).as_posix()
        try:
            mode = p.lstat().st_mode
        except OSError as e:
            raise UserError(f"cannot read '{p}': {e.strerror or e}") from None
        if stat.S_ISLNK(mode):
            raise UserError(f"bundle '{folder}' holds a link, '{relative}'; "
                            "bundles hold regular files and folders only")
        if stat.S_ISDIR(mode):
            continue
        if not stat.S_ISREG(mode):
            raise UserError(f"bundle '{folder}' holds '{relative}', which is not a regular file; "
                            "bundles hold regular files and folders only")
        if relative != MANIFEST:
            entries.append(FileEntry(path=relative, sha256=sha256_of(p), size=p.stat().st_size))
    return entries


def write_manifest(folder: pathlib.Path, description: dict) -> BundleManifest:
    """manifest.json in `folder`: `description` plus the files, written last so that it covers them all."""
    from builder.core.files import atomic_file

    manifest = BundleManifest(**description, files=file_entries(folder))
    with atomic_file(folder / MANIFEST) as f:
        f.write(manifest.to_json().encode("utf-8"))
    return manifest


def parse_manifest(data: Any, origin: str) -> BundleManifest:
    """Validated manifest content; a problem is one line naming the field."""
    from builder.core.errors import UserError

    if not isinstance(data, dict) or "files" not in data:
        raise UserError(f"'{origin}' is not a builder manifest")
    found = data.get("manifest_format")
    if found != MANIFEST_FORMAT:
        raise UserError(f"'{origin}' has manifest format {found!r}; this builder reads format {MANIFEST_FORMAT}",
                        hint="rebuild the bundle with this builder, or use the builder that made it")
    try:
        return BundleManifest.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise UserError(f"'{origin}' is not a valid builder manifest: {where}: {first['msg']}") from None


def read_manifest(folder: pathlib.Path) -> BundleManifest:
    from builder.core.errors import UserError

    path = pathlib.Path(folder) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"'{folder}' is not a bundle: it has no {MANIFEST}") from None
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read '{path}': {e}") from None
    except RecursionError:
        raise UserError(f"cannot read '{path}': its JSON is nested too deeply") from None
    return parse_manifest(data, str(path))


def check_files(folder: pathlib.Path) -> BundleManifest:
    """The bundle's manifest, after checking that the folder holds exactly its files with their sha256."""
    from builder.core.errors import UserError

    folder = pathlib.Path(folder)
    manifest = read_manifest(folder)
    listed = {entry.path: entry for entry in manifest.files}
    actual = {entry.path: entry for entry in file_entries(folder)}
    missing, extra = sorted(set(listed) - set(actual)), sorted(set(actual) - set(listed))
    if missing:
        raise UserError(f"bundle '{folder}' lacks {len(missing)} file(s) its manifest lists: {', '.join(missing[:5])}")
    if extra:
        raise UserError(f"bundle '{folder}' holds {len(extra)} file(s) its manifest does not list: {', '.join(extra[:5])}")
    changed = [p for p in listed if listed[p] != actual[p]]
    if changed:
        raise UserError(f"bundle '{folder}': {len(changed)} file(s) differ from the manifest's sha256: "
                        f"{', '.join(changed[:5])}")
    return manifest
