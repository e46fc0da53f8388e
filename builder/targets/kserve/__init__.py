"""The kserve target: the Triton model repository plus Kubernetes manifests that serve it.

A KServe InferenceService (Triton predictor reading the repository from --storage-uri) and a plain
Deployment + Service running tritonserver from the image the bundle's Dockerfile builds, each checked
against the official Kubernetes client's models or KServe's schema before the bundle is written.
"""
from __future__ import annotations

from builder.targets.base import write_files
from builder.targets.kserve.manifests import KServeOptions, check_manifests, manifest_context, render_manifests
from builder.targets.triton import REPOSITORY, TritonTarget


class KServeTarget(TritonTarget):
    name = "kserve"
    description = "a Triton model repository plus Kubernetes manifests (KServe InferenceService, Deployment, Service)"
    options = ("kserve", KServeOptions, (
        ("--storage-uri", "storage_uri", str),
        ("--namespace", "namespace", str),
        ("--replicas", "replicas", int),
        ("--cpu", "cpu", str),
        ("--memory", "memory", str),
    ))

    @classmethod
    def check(cls, spec) -> None:
        super().check(spec)
        if spec.kserve.storage_uri is None:
            raise ValueError("--target kserve needs --storage-uri: where the model repository will be uploaded for "
                             "KServe, e.g. s3://bucket/models/NAME")

    def render(self, renderer, context: dict, staging) -> None:
        from builder.core.version import __version__

        super().render(renderer, context, staging)
        spec = self.spec
        values = manifest_context(spec.model_name, spec.version, spec.triton.serving_image, spec.triton.device == "gpu",
                                  spec.triton.instances, spec.kserve, __version__, repository=REPOSITORY)
        texts = render_manifests(renderer.render, values)
        check_manifests(texts)
        write_files(staging, texts)

    def usage(self, destination) -> str:
        return "\n".join([
            super().usage(destination),
            "",
            "On Kubernetes:",
            "",
            f"  upload {destination / REPOSITORY} to {self.spec.kserve.storage_uri}",
            f"  kubectl apply -f {destination / 'kubernetes'}",
            f"  (see {destination / 'kubernetes' / 'README.md'})",
        ])


TARGET = KServeTarget
