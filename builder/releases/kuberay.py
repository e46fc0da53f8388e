"""`builder release --emit kuberay`: a ConfigMap with release.yaml and a KubeRay RayJob that runs the release."""
from __future__ import annotations

import hashlib
import json
import pathlib
import re
import shlex
from typing import Any, Iterable, Optional

from builder.core.errors import UserError
from builder.releases.spec import PATH_OPTIONS, PlannedBundle, ReleaseSpec, VerifySettings

SCHEMA = pathlib.Path(__file__).with_name("rayjob.schema.json")
ORIGIN = "RayJob"
CONFIG_DIR = "/etc/builder"
RELEASE_KEY = "release.yaml"
ENTRYPOINT = ["builder", "release", f"{CONFIG_DIR}/{RELEASE_KEY}", "--address", "auto"]
DEFAULT_RAY_VERSION = "2.60.0"
# KubeRay's MaxRayJobNameLength: its RayCluster is the name plus 6 characters, whose Services add '-serve-svc'
MAX_NAME = 47
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.[A-Za-z0-9-]+)*(?::[0-9]{1,5})?"
IMAGE = re.compile(rf"(?:{_HOST}/)?{_COMPONENT}(?:/{_COMPONENT})*"
                   r"(?P<tag>:[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?(?P<digest>@sha256:[a-f0-9]{64})?")
# a ConfigMap is one etcd object of at most 1 MiB; leave room for its metadata
MAX_RELEASE_BYTES = 1_000_000
RUN_AS_USER = 10001  # the Dockerfile's `builder` user
# one build at a time per worker (num-cpus is cpus_per_build), so a group needs no more pods than it has builds;
# the caps keep a large matrix from asking the cluster for dozens of nodes at once
MAX_CPU_WORKERS = 8
MAX_GPU_WORKERS = 4
HEAD_RESOURCES = {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "4Gi"}}
SUBMITTER_RESOURCES = {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}}
WORKER_MEMORY = "8Gi"  # an export with INT8 calibration of a large detector peaks at a few GiB
TTL_SECONDS = 600  # time to read the head's logs before KubeRay deletes the finished cluster
REGISTRY_SECRET = "builder-registry"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"  # set by NVIDIA GPU Feature Discovery (the GPU operator)
# Ray accelerator type -> GFD's nvidia.com/gpu.product values (nvidia-smi's product name, spaces as '-').
# A type sold in several boards is every board's value; a type not here gets no node selection.
GPU_PRODUCTS: dict[str, tuple[str, ...]] = {
    "T4": ("Tesla-T4",),
    "L4": ("NVIDIA-L4",),
    "A10G": ("NVIDIA-A10G",),
    "L40S": ("NVIDIA-L40S",),
    "A100": ("NVIDIA-A100-SXM4-40GB", "NVIDIA-A100-SXM4-80GB", "NVIDIA-A100-PCIE-40GB", "NVIDIA-A100-80GB-PCIe"),
    "A100-40G": ("NVIDIA-A100-SXM4-40GB", "NVIDIA-A100-PCIE-40GB"),
    "A100-80G": ("NVIDIA-A100-SXM4-80GB", "NVIDIA-A100-80GB-PCIe"),
    "H100": ("NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-PCIe"),
}
LOCAL_PATH_HINT = "use http(s) URLs, 'coco' or 'demo' in a release for Kubernetes"


def emit_kuberay(release: ReleaseSpec, planned: list[PlannedBundle], release_text: str, image: str,
                 namespace: Optional[str] = None) -> str:
    """The ConfigMap holding release.yaml and the RayJob that runs it, as multi-document YAML, checked."""
    _check_inputs(release, planned, release_text, image, namespace)
    name = kubernetes_name(release.name, release.version)
    labels = {"app.kubernetes.io/name": "builder-release", "app.kubernetes.io/managed-by": "builder",
              "builder.dev/release": label_value(release.name), "builder.dev/version": label_value(release.version)}
    # labels may have been cut or cleaned; the annotations keep the exact values
    annotations = {"builder.dev/release": release.name, "builder.dev/version": release.version}
    metadata = {"name": name, **({"namespace": namespace} if namespace else {}), "labels": labels,
                "annotations": annotations}
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": {RELEASE_KEY: release_text}}
    # KubeRay labels its pods itself (app.kubernetes.io/name: kuberay, ray.io/*); builder adds only its own
    pod = _PodMaker(image, name, {k: v for k, v in labels.items() if k.startswith("builder.dev/")})
    rayjob = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": metadata,
        "spec": {
            "entrypoint": shlex.join(ENTRYPOINT),
            "submissionMode": "K8sJobMode",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": TTL_SECONDS,
            "rayClusterSpec": {
                "rayVersion": ray_version(),
                "headGroupSpec": {
                    # num-cpus 0: Ray schedules no build on the head, which runs the release's driver
                    "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
                    "template": pod.template("ray-head", HEAD_RESOURCES, ports=[
                        {"name": "gcs", "containerPort": 6379}, {"name": "dashboard", "containerPort": 8265},
                        {"name": "client", "containerPort": 10001}]),
                },
                "workerGroupSpecs": _worker_groups(release, planned, pod),
            },
            # the pod that runs `ray job submit` (KubeRay's default one copies the head's image but not its security
            # settings): non-root too, and with no release file or registry credentials, which it does not need
            "submitterPodTemplate": pod.template("ray-job-submitter", SUBMITTER_RESOURCES, restart_policy="Never",
                                                 ray_node=False),
        },
    }
    check_configmap(config_map)
    check_rayjob(rayjob)
    return _dump([config_map, rayjob])


def kubernetes_name(release_name: str, version: str) -> str:
    """A RayJob name KubeRay accepts (a DNS-1035 label of at most 47) from the release's name and version."""
    name = re.sub(r"[^a-z0-9]+", "-", f"{release_name}-{version}".lower()).strip("-")
    if not name[:1].isalpha():
        name = f"release-{name}".rstrip("-")
    if len(name) > MAX_NAME:  # a hash of the exact pair keeps two long names that share a prefix apart
        digest = hashlib.sha256(f"{release_name}\0{version}".encode()).hexdigest()[:8]
        name = name[:MAX_NAME - len(digest) - 1].rstrip("-") + "-" + digest
    return name


def label_value(text: str) -> str:
    """`text` as a Kubernetes label value: itself where it is one, else cleaned and cut with a hash of it."""
    if len(text) <= 63 and LABEL_VALUE.fullmatch(text):
        return text
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-_.")
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return (cleaned[:63 - len(digest) - 1].rstrip("-_.") + "-" + digest).lstrip("-")


def ray_version() -> str:
    """The Ray installed here (the builder image's own), which KubeRay reads to build the submit command."""
    import importlib.metadata

    try:
        return importlib.metadata.version("ray")
    except importlib.metadata.PackageNotFoundError:
        return DEFAULT_RAY_VERSION


def resources_param(resources: dict[str, int]) -> str:
    """A `resources` ray start parameter in the only form KubeRay and the Ray autoscaler parse.

    KubeRay's docs give '"{\\"Custom1\\": 1}"' in YAML: the outer double quotes and the backslashes are part of the
    value (the operator pastes it into a shell command); the autoscaler drops the quotes and the backslashes and
    reads JSON with integer amounts.
    """
    return '"' + json.dumps(resources, sort_keys=True).replace('"', '\\"') + '"'


# ---- the cluster ----------------------------------------------------------------------------------------------
class _PodMaker:
    """Pod templates that share the pinned image, the non-root user, the release file and the registry secret."""

    def __init__(self, image: str, name: str, labels: dict[str, str]):
        self.image, self.name, self.labels = image, name, labels

    def template(self, container: str, resources: dict, *, ports: Optional[list] = None,
                 restart_policy: Optional[str] = None, ray_node: bool = True, node: Optional[dict] = None,
                 annotations: Optional[dict] = None) -> dict:
        body: dict[str, Any] = {"name": container, "image": self.image}
        if ray_node:
            body["env"] = [_secret_env("BUILDER_REGISTRY_USERNAME", "username"),
                           _secret_env("BUILDER_REGISTRY_PASSWORD", "password")]
        body.update({
            "resources": resources,
            "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_AS_USER, "allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"]}},
        })
        if ports:
            body["ports"] = ports
        if ray_node:
            body["volumeMounts"] = [{"name": "release", "mountPath": CONFIG_DIR, "readOnly": True}]
        spec: dict[str, Any] = {
            # restricted Pod Security Standard: non-root, no escalation, no capabilities, the runtime's seccomp
            "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_AS_USER,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [body],
        }
        if ray_node:
            spec["volumes"] = [{"name": "release", "configMap": {"name": self.name,
                                                                 "items": [{"key": RELEASE_KEY, "path": RELEASE_KEY}]}}]
        if restart_policy:
            spec["restartPolicy"] = restart_policy
        spec.update(node or {})
        metadata: dict[str, Any] = {"labels": dict(self.labels)}
        if annotations:
            metadata["annotations"] = annotations
        return {"metadata": metadata, "spec": spec}


def _secret_env(variable: str, key: str) -> dict:
    # optional: a registry without credentials needs no Secret, and the pods start without one
    return {"name": variable, "valueFrom": {"secretKeyRef": {"name": REGISTRY_SECRET, "key": key, "optional": True}}}


def _worker_groups(release: ReleaseSpec, planned: list[PlannedBundle], pod: _PodMaker) -> list[dict]:
    cpus = str(release.cpus_per_build)
    groups = []
    cpu_builds = sum(1 for p in planned if not p.builds_plan)
    if cpu_builds:
        replicas = min(cpu_builds, MAX_CPU_WORKERS)
        resources = {"requests": {"cpu": cpus, "memory": WORKER_MEMORY}, "limits": {"memory": WORKER_MEMORY}}
        groups.append({"groupName": "cpu", "replicas": replicas, "minReplicas": replicas, "maxReplicas": replicas,
                       "rayStartParams": {"num-cpus": cpus, "num-gpus": "0"},
                       "template": pod.template("ray-worker", resources)})
    gpu_builds: dict[Optional[str], int] = {}
    for p in planned:
        if p.builds_plan:
            gpu_builds[p.gpu] = gpu_builds.get(p.gpu, 0) + 1
    names = {"cpu"}
    for gpu, count in gpu_builds.items():
        group = _group_name(gpu, names)
        names.add(group)
        replicas = min(count, MAX_GPU_WORKERS)
        resources = {"requests": {"cpu": cpus, "memory": WORKER_MEMORY},
                     "limits": {"memory": WORKER_MEMORY, GPU_RESOURCE: "1"}}
        params = {"num-cpus": cpus, "num-gpus": "1"}
        if gpu is None:  # a TensorRT build that names no GPU type builds on any GPU
            products, annotations = None, {"builder.dev/gpu-product": "any"}
        else:
            # a TensorRT build asks Ray for its GPU type's accelerator_type resource; declared here, it is known
            # before the pod runs, so the scheduler (and an autoscaler) know which group serves the build
            params["resources"] = resources_param({f"accelerator_type:{gpu}": 1})
            products = GPU_PRODUCTS.get(gpu)
            annotations = {"builder.dev/gpu": gpu, "builder.dev/gpu-product": ",".join(products or ("unknown",))}
        groups.append({"groupName": group, "replicas": replicas, "minReplicas": replicas, "maxReplicas": replicas,
                       "rayStartParams": params,
                       "template": pod.template("ray-worker", resources, node=_gpu_placement(products),
                                                annotations=annotations)})
    return groups


def _group_name(gpu: Optional[str], taken: set[str]) -> str:
    """A worker group name (it is in pod names and the ray.io/group label) for a GPU type; distinct per type."""
    if gpu is None:
        group = "gpu"
    else:
        group = "gpu-" + re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
    if group in taken:  # T4 and t4, or A100.80G and A100-80G, are different Ray resources
        group += "-" + hashlib.sha256(str(gpu).encode()).hexdigest()[:6]
    return group


def _gpu_placement(products: Optional[tuple[str, ...]]) -> dict:
    toleration = {"tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]}
    if not products:  # a GPU type builder cannot name a node label for: the nvidia.com/gpu limit alone places it
        return toleration
    if len(products) == 1:
        return {"nodeSelector": {GPU_PRODUCT_LABEL: products[0]}, **toleration}
    terms = [{"matchExpressions": [{"key": GPU_PRODUCT_LABEL, "operator": "In", "values": list(products)}]}]
    return {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": terms}}}, **toleration}


# ---- what a pod can and cannot do ------------------------------------------------------------------------------
def _check_inputs(release: ReleaseSpec, planned: list[PlannedBundle], release_text: str, image: str,
                  namespace: Optional[str]) -> None:
    match = IMAGE.fullmatch(image) if isinstance(image, str) and len(image) <= 255 else None
    if not match:
        raise UserError(f"image {image!r} is not an image reference (name:tag or name@sha256:digest)")
    if not (match["tag"] or match["digest"]):
        raise UserError(f"image '{image}' is not pinned: the RayJob would run whatever ':latest' is when a pod "
                        f"starts", hint="give a tag or a digest, e.g. model-bundle-builder:0.1.0")
    if namespace is not None and (len(namespace) > 63 or not DNS_LABEL.fullmatch(namespace)):
        raise UserError(f"namespace '{namespace}' is not a DNS-1123 label (at most 63 of a-z, 0-9 and '-', starting "
                        f"and ending with a letter or digit)")
    size = len(release_text.encode("utf-8"))
    if size > MAX_RELEASE_BYTES:
        raise UserError(f"the release file is {size} bytes; a ConfigMap holds at most {MAX_RELEASE_BYTES}")
    if release.runner == "docker":
        raise UserError("release file: runner is docker, but a KubeRay pod has no Docker engine: its builds run in "
                        "the pinned builder image itself", hint="set runner: auto or local")
    for model, weights in release.weights.items():
        _refuse_local(f"weights of {model}", "weights", weights)
    if isinstance(release.verify, VerifySettings):  # folders only: verify reads no URLs
        for subject, folder in [("verify: images", release.verify.images), *(
                (f"verify images of {model}", images) for model, images in release.verify.models.items())]:
            if folder is not None:
                raise UserError(f"release file: {subject} '{folder}' is a local folder, which no Kubernetes pod can "
                                f"read", hint="drop it: each bundle is then verified on its own samples/, else on "
                                "builder's photos")
    for option, value in _path_options(release.defaults):
        _refuse_local(f"defaults: {option}", option, value)
    for p in planned:
        where = f"bundle {p.number} ({p.label})"
        for option, value in _path_options(p.options):
            _refuse_local(f"{where}: {option}", option, value)
        if p.resources:
            first = sorted(p.resources)[0]
            raise UserError(f"release file: {where}: asks Ray for the custom resource '{first}', which no worker of "
                            f"the RayJob offers, so it would wait forever",
                            hint="drop 'resources' from the release for Kubernetes")


def _path_options(options: dict) -> Iterable[tuple[str, Any]]:
    for key, value in options.items():
        if isinstance(value, dict):
            yield from _path_options(value)
        elif key in PATH_OPTIONS and value is not None:
            yield key, value


def _refuse_local(subject: str, option: str, value: Any) -> None:
    from builder.models.registry import NAMED_WEIGHTS

    if isinstance(value, str) and (value.startswith(("http://", "https://"))
                                   or option == "weights" and value in NAMED_WEIGHTS):
        return
    raise UserError(f"release file: {subject} '{value}' is a local path, which no Kubernetes pod can read",
                    hint=LOCAL_PATH_HINT)


# ---- checks ---------------------------------------------------------------------------------------------------
def check_rayjob(document: dict) -> dict:
    """The RayJob against rayjob.schema.json, then every pod template through the kubernetes client's models."""
    from builder.targets.kserve.manifests import _fail, check_schema

    check_schema(ORIGIN, document, SCHEMA)
    spec = document["spec"]
    cluster = spec.get("rayClusterSpec") or {}
    templates = [("spec.submitterPodTemplate", spec.get("submitterPodTemplate"))]
    if cluster:
        templates.append(("spec.rayClusterSpec.headGroupSpec.template", cluster["headGroupSpec"]["template"]))
        seen: set[str] = set()
        for i, group in enumerate(cluster.get("workerGroupSpecs", [])):
            where = f"spec.rayClusterSpec.workerGroupSpecs[{i}]"
            if group["groupName"] in seen:  # KubeRay tells groups apart by name alone
                raise _fail(ORIGIN, f"{where}.groupName", f"'{group['groupName']}' names two worker groups")
            seen.add(group["groupName"])
            if not group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"]:
                raise _fail(ORIGIN, f"{where}.replicas", "must lie between minReplicas and maxReplicas")
            templates.append((f"{where}.template", group["template"]))
    for where, template in templates:
        if template is not None:
            _check_pod_template(where, template)
    return document


def check_configmap(document: dict) -> None:
    from builder.targets.kserve.manifests import _require, _walk

    _walk("ConfigMap", document, "V1ConfigMap", "", _require("kubernetes.client"))


def _check_pod_template(where: str, template: dict) -> None:
    from builder.targets.kserve.manifests import _deserialize, _fail, _require, _walk

    _walk(ORIGIN, template, "V1PodTemplateSpec", where, _require("kubernetes.client"))
    try:
        pod = _deserialize("V1PodTemplateSpec", template)
    except (ValueError, TypeError) as e:  # pydantic's ValidationError is a ValueError
        raise _fail(ORIGIN, where, f"rejected by the kubernetes client: {' '.join(str(e).split())}") from None
    if not (pod.spec and pod.spec.containers):  # KubeRay runs Ray in the first container
        raise _fail(ORIGIN, f"{where}.spec.containers", "a Ray pod needs at least one container")


def _dump(documents: list[dict]) -> str:
    import yaml

    class Dumper(yaml.SafeDumper):
        """SafeDumper, with multi-line text (release.yaml) as a literal block a person can read."""

        def ignore_aliases(self, data) -> bool:  # shared metadata is written out twice, not as &id001 / *id001
            return True

    def text(dumper: yaml.SafeDumper, value: str):
        # PyYAML falls back to a quoted scalar where a block cannot hold the text exactly (trailing spaces, ...)
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)

    Dumper.add_representer(str, text)
    return yaml.dump_all(documents, Dumper=Dumper, sort_keys=False, allow_unicode=True, width=120)
