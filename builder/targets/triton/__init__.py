"""The triton target: a Triton model repository (config checked by Triton's schema), client and Dockerfile."""
from __future__ import annotations

from builder.targets.base import Target, write_files
from builder.targets.triton.config import check_config, config_context, parse_config, render_config

__all__ = ["TritonTarget", "TARGET", "check_config", "config_context", "parse_config", "render_config"]

REPOSITORY = "model_repository"
ENGINE_ONNX = "onnx/model.onnx"
ENGINE_SCRIPT = "build_engine.py"


def engine_arguments(spec) -> str:
    """build_engine.py's options that rebuild the bundle's engine with its profile."""
    p = spec.engine_profile
    return (f"--min-batch {p['min_batch']} --opt-batch {p['opt_batch']} --max-batch {p['max_batch']} "
            f"--workspace-gb {p['workspace_gb']:g}")


class TritonTarget(Target):
    """A Triton model repository with the generated client beside it (not inside: Triton would try to load
    any folder of its repository as a model, and refuses to start when one has no config)."""

    name = "triton"
    description = "a Triton model repository with a generated client and a serving Dockerfile"
    runtimes = ("onnxruntime", "tensorrt")
    triton_options = True

    def __init__(self, spec):
        super().__init__(spec)
        self.model_dir = f"{REPOSITORY}/{spec.model_name}"
        self.engine = spec.export.serving.builds_plan
        # with an engine, the repository serves model.plan and the ONNX travels beside it, to rebuild the
        # engine on the serving GPU (build_engine.py)
        self.model_file = ENGINE_ONNX if self.engine else f"{self.model_dir}/{spec.version}/model.onnx"
        self.plan_file = f"{self.model_dir}/{spec.version}/model.plan"

    def stage_files(self, outcome) -> dict:
        if not self.engine:
            return {outcome.model: self.model_file}
        return {outcome.model: self.model_file, outcome.plan: self.plan_file}

    def render(self, renderer, context: dict, staging) -> None:
        write_files(staging, self.files(renderer, context), executable=("client/triton_client.py",))
        if self.engine:  # the engine builder travels as a script: its file, without importing it (no TensorRT here)
            import importlib.util
            import shutil

            shutil.copyfile(importlib.util.find_spec("builder.engines.tensorrt").origin, staging / ENGINE_SCRIPT)
            (staging / ENGINE_SCRIPT).chmod(0o755)

    def files(self, renderer, context: dict) -> dict[str, str]:
        """The rendered texts by relative path: config (checked), labels, client, Dockerfile, README."""
        import json

        spec = self.spec
        parameters = {"class_names": json.dumps(context["class_names"], ensure_ascii=False),
                      "preprocessing": json.dumps(context["preprocessing"], sort_keys=True),
                      "postprocessing": json.dumps(context["nms"], sort_keys=True),
                      "precision": context["precision"], "builder_version": context["builder_version"],
                      "source_model": context["model"]}
        config_ctx = config_context(spec, spec.model_name, [context["input"]], context["outputs"], parameters,
                                    spec.export.serving.triton_platform)
        text = render_config(renderer, spec, [context["input"]], context["outputs"], {**context, **config_ctx})
        files = {f"{self.model_dir}/config.pbtxt": text,
                 f"{self.model_dir}/labels.txt": renderer.render("common/labels.txt.j2", context),
                 "client/triton_client.py": renderer.render("triton/triton_client.py.j2", context),
                 "client/requirements.txt": renderer.render("triton/requirements.txt.j2", context),
                 "Dockerfile": renderer.render("triton/Dockerfile.j2", {**context, "repository": REPOSITORY,
                                                                      "serving_image": spec.triton.serving_image}),
                 "README.md": renderer.render("triton/README.md.j2", {**context, "repository": REPOSITORY,
                                                                     "config": config_ctx,
                                                                     "engine_args": engine_arguments(spec)})}
        return files

    def usage(self, destination) -> str:
        spec = self.spec
        image = self.example_image(destination)
        batching = (f"Triton batches up to {spec.max_batch_size} images" if spec.max_batch_size
                    else "Triton does not batch it (max_batch_size 0)")
        return "\n".join([
            f"Bundled {self.headline}; {batching}) for Triton in {destination}",
            f"  model repository: {destination / REPOSITORY}",
            f"  client:           {destination / 'client' / 'triton_client.py'}",
            "",
            "Serve it and detect:",
            "",
            f"  tritonserver --model-repository {destination / REPOSITORY}",
            f"  pip install -r {destination / 'client' / 'requirements.txt'}",
            f"  python {destination / 'client' / 'triton_client.py'} {image} --url localhost:8000",
        ])

    @classmethod
    def served_model(cls, folder, manifest):
        from builder.exporting.runtimes import runtime

        name = "model.plan" if runtime(manifest.runtime).builds_plan else "model.onnx"
        return folder / REPOSITORY / manifest.name / str(manifest.version) / name

    @classmethod
    def triton_config(cls, folder, manifest):
        return folder / REPOSITORY / manifest.name / "config.pbtxt"


TARGET = TritonTarget
