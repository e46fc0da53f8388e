"""The standalone target: model.onnx with an ONNX Runtime script and pinned requirements, nothing else needed."""
from __future__ import annotations


class StandaloneTarget:
    model_file = "model.onnx"

    def __init__(self, spec):
        self.spec = spec

    def stage_files(self, outcome) -> dict:
        return {outcome.model: self.model_file}

    def render(self, renderer, context: dict, staging) -> None:
        files = {"infer.py": renderer.render("standalone/infer.py.j2", context),
                 "requirements.txt": renderer.render("standalone/requirements.txt.j2", context),
                 "labels.txt": renderer.render("common/labels.txt.j2", context),
                 "README.md": renderer.render("standalone/README.md.j2", context)}
        for relative, content in files.items():
            (staging / relative).write_text(content, encoding="utf-8")
        (staging / "infer.py").chmod(0o755)

    def usage(self, destination) -> str:
        spec = self.spec
        return "\n".join([
            f"Bundled {spec.model_name} ({spec.export.model}, {spec.export.precision}, "
            f"{spec.export.output_predictions_format} format) for ONNX Runtime in {destination}",
            "",
            "Run it:",
            "",
            f"  pip install -r {destination / 'requirements.txt'}",
            f"  python {destination / 'infer.py'} image.jpg [--json] [--save out.png]",
        ])
