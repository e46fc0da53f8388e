"""What a bundle target is: its options, the files it plans, how it renders them, and how its model runs."""
from __future__ import annotations

import pathlib
from typing import ClassVar, Optional

#: a bundle's pictures of what its model detects: `builder verify` checks the bundle on them by default
SAMPLES_FOLDER = "samples"
#: a bundle built with --weights demo carries the demo scene here, and its README and usage run the client on it
SAMPLE_IMAGE = f"{SAMPLES_FOLDER}/shapes.jpg"


def sample_image(spec) -> Optional[str]:
    """The demo scene's path in a bundle built with the demo weights, else None."""
    from builder.models.demo import NAME

    return SAMPLE_IMAGE if spec.export.weights == NAME else None


class Target:
    """One kind of bundle. Subclasses set the class attributes and implement the methods that differ."""

    name: ClassVar[str]
    #: one line for `--target`'s help
    description: ClassVar[str]
    #: runtimes whose model this target can serve (see builder.exporting.runtimes)
    runtimes: ClassVar[tuple[str, ...]] = ("onnxruntime",)
    #: whether the Triton serving options (--max-batch-size, --device, ...) apply
    triton_options: ClassVar[bool] = False
    #: the target's own options: (build.yaml section, pydantic model, CLI flags as (flag, field, kind)); the
    #: model's fields all have defaults, and `check` says which ones the target requires
    options: ClassVar[Optional[tuple[str, type, tuple]]] = None

    def __init__(self, spec):
        self.spec = spec

    @classmethod
    def check(cls, spec) -> None:
        """Refuse what this target cannot build, as ValueError (the spec turns it into one line)."""
        if spec.export.runtime not in cls.runtimes:
            from builder.targets import targets

            able = [name for name, target in targets().items() if spec.export.runtime in target.runtimes]
            raise ValueError(f"the {cls.name} bundle serves {' or '.join(cls.runtimes)}: --runtime "
                             f"{spec.export.runtime} (--engine {spec.export.runtime}) needs --target "
                             f"{' or '.join(able) or '(none serves it)'}")

    #: where the exported ONNX file lands in the bundle
    model_file: str = "model.onnx"

    def stage_files(self, outcome) -> dict:
        """What the export stage produced -> where it goes in the bundle."""
        return {outcome.model: self.model_file}

    def render(self, renderer, context: dict, staging: pathlib.Path) -> None:
        raise NotImplementedError

    def usage(self, destination: pathlib.Path) -> str:
        raise NotImplementedError

    @property
    def headline(self) -> str:
        """'yolo_nas_s (fp32, batch format)', or 'det (yolo_nas_s, fp32, ...)' when the name is not the model's."""
        spec = self.spec
        model = "" if spec.model_name == spec.export.model else f"{spec.export.model}, "
        return f"{spec.model_name} ({model}{spec.export.precision}, {spec.export.output_predictions_format} format"

    def example_image(self, destination: pathlib.Path) -> str:
        """The image the usage shows the client on: the demo scene a demo bundle carries, else a placeholder."""
        sample = sample_image(self.spec)
        return str(destination / sample) if sample else "image.jpg"

    @classmethod
    def served_model(cls, folder: pathlib.Path, manifest) -> pathlib.Path:
        """The file verify and bench run: the bundle's ONNX file, or its plan."""
        return folder / "model.onnx"

    @classmethod
    def triton_config(cls, folder: pathlib.Path, manifest) -> Optional[pathlib.Path]:
        """The config.pbtxt a Triton server serves this bundle with, if it has one."""
        return None


def write_files(staging: pathlib.Path, files: dict[str, str], executable: tuple[str, ...] = ()) -> None:
    """Rendered texts into the staging folder by relative path; `executable` ones get mode 0755."""
    for relative, content in files.items():
        path = staging / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
    for relative in executable:
        (staging / relative).chmod(0o755)
