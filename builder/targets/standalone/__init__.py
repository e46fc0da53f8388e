"""The standalone target: model.onnx with an ONNX Runtime script and pinned requirements, nothing else needed."""
from __future__ import annotations

from builder.targets.base import Target, write_files


class StandaloneTarget(Target):
    name = "standalone"
    description = "model.onnx with an ONNX Runtime script (infer.py) and pinned requirements"
    runtimes = ("onnxruntime",)

    def render(self, renderer, context: dict, staging) -> None:
        write_files(staging, {"infer.py": renderer.render("standalone/infer.py.j2", context),
                              "requirements.txt": renderer.render("standalone/requirements.txt.j2", context),
                              "labels.txt": renderer.render("common/labels.txt.j2", context),
                              "README.md": renderer.render("standalone/README.md.j2", context)},
                    executable=("infer.py",))

    def usage(self, destination) -> str:
        image = self.example_image(destination)
        return "\n".join([
            f"Bundled {self.headline}) for ONNX Runtime in {destination}",
            "",
            "Run it:",
            "",
            f"  pip install -r {destination / 'requirements.txt'}",
            f"  python {destination / 'infer.py'} {image} [--json] [--save out.png]",
        ])


TARGET = StandaloneTarget
