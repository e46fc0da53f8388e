"""builder release --emit kuberay: the ConfigMap and RayJob, checked against KubeRay's API; what a pod cannot run."""
from __future__ import annotations

import copy
import importlib.metadata
import json
import re
import shlex
import sys

import pytest
import yaml

from builder.core.errors import MissingExtraError, UserError
from builder.releases import kuberay
from builder.releases.kuberay import check_rayjob, emit_kuberay, kubernetes_name, label_value
from builder.releases.spec import plan, read_release_file

IMAGE = "model-bundle-builder:0.1.0"
YOLO = "https://models.example.com/yolo_nas_s.pth"
PPYOLOE = "https://models.example.com/ppyoloe_s.pth"
DNS_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
# models x precisions x a target x GPU types; fp16 Triton bundles become TensorRT builds through `include`,
# and a standalone bundle is a combination of its own (no GPU type)
RELEASE = {
    "name": "detectors",
    "version": "2026.11",
    "registry": "registry.example.com/ml",
    "defaults": {"input_image_shape": [160, 160]},
    "matrix": {"model": ["yolo_nas_s", "ppyoloe_s"], "precision": ["fp32", "fp16"], "target": ["triton"],
               "gpu": ["T4", "L4"]},
    "include": [{"precision": "fp16", "target": "triton", "runtime": "tensorrt", "nms": "tensorrt"},
                {"model": "yolo_nas_s", "precision": "fp32", "target": "standalone"}],
    "weights": {"yolo_nas_s": YOLO, "ppyoloe_s": PPYOLOE},
}


def _write(tmp_path, release: dict, text: str | None = None):
    path = tmp_path / "release.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(release, sort_keys=False))
    return path


def _emit(tmp_path, release: dict = RELEASE, text: str | None = None, image: str = IMAGE, namespace=None):
    path = _write(tmp_path, release, text)
    spec = read_release_file(path)
    return emit_kuberay(spec, plan(spec), path.read_text(), image, namespace)


def _documents(text: str) -> tuple[dict, dict]:
    config_map, rayjob = yaml.safe_load_all(text)
    assert (config_map["apiVersion"], config_map["kind"]) == ("v1", "ConfigMap")
    assert (rayjob["apiVersion"], rayjob["kind"]) == ("ray.io/v1", "RayJob")
    return config_map, rayjob


def _pods(rayjob: dict) -> dict[str, dict]:
    cluster = rayjob["spec"]["rayClusterSpec"]
    pods = {"head": cluster["headGroupSpec"]["template"], "submitter": rayjob["spec"]["submitterPodTemplate"]}
    pods.update({g["groupName"]: g["template"] for g in cluster.get("workerGroupSpecs", [])})
    return pods


def test_the_rayjob_runs_the_release_with_a_cpu_group_and_one_group_per_gpu_type(tmp_path):
    text = _emit(tmp_path, namespace="vision")
    config_map, rayjob = _documents(text)
    check_rayjob(rayjob)
    import jsonschema  # the schema on its own, not only through check_rayjob

    jsonschema.Draft202012Validator(json.loads(kuberay.SCHEMA.read_text())).validate(rayjob)

    spec = rayjob["spec"]
    assert spec["entrypoint"] == "builder release /etc/builder/release.yaml --address auto"
    assert shlex.split(spec["entrypoint"]) == ["builder", "release", "/etc/builder/release.yaml", "--address", "auto"]
    assert spec["submissionMode"] == "K8sJobMode" and spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0
    cluster = spec["rayClusterSpec"]
    try:
        assert cluster["rayVersion"] == importlib.metadata.version("ray")
    except importlib.metadata.PackageNotFoundError:
        assert cluster["rayVersion"] == "2.60.0"

    head = cluster["headGroupSpec"]
    assert head["rayStartParams"] == {"num-cpus": "0", "dashboard-host": "0.0.0.0"}  # no build lands on the head
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert list(groups) == ["cpu", "gpu-t4", "gpu-l4"]
    # 4 fp32 Triton bundles (one per model and GPU type) and the standalone one are CPU builds
    assert groups["cpu"]["replicas"] == 5 and groups["cpu"]["rayStartParams"]["num-cpus"] == "1"
    assert "resources" not in groups["cpu"]["rayStartParams"]
    for gpu, product in (("T4", "Tesla-T4"), ("L4", "NVIDIA-L4")):
        group = groups[f"gpu-{gpu.lower()}"]
        assert group["replicas"] == 2  # the two models' fp16 TensorRT builds on this GPU type
        params = group["rayStartParams"]
        assert params["num-gpus"] == "1"
        assert params["resources"] == '"{\\"accelerator_type:%s\\": 1}"' % gpu
        # KubeRay's documented form, as YAML: resources: '"{\"Custom1\": 1}"'
        assert f"""resources: '"{{\\"accelerator_type:{gpu}\\": 1}}"'""" in text
        pod = group["template"]["spec"]
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert pod["nodeSelector"] == {"nvidia.com/gpu.product": product}
        assert group["template"]["metadata"]["annotations"]["builder.dev/gpu-product"] == product
    for name in ("head", "cpu"):
        assert "nvidia.com/gpu" not in _pods(rayjob)[name]["spec"]["containers"][0]["resources"].get("limits", {})

    for name, pod in _pods(rayjob).items():
        (container,) = pod["spec"]["containers"]
        assert container["image"] == IMAGE, name
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        security = container["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] == 10001
        assert security["allowPrivilegeEscalation"] is False and security["capabilities"]["drop"] == ["ALL"]
        if name == "submitter":  # it only runs `ray job submit`
            assert "env" not in container and "volumeMounts" not in container
            continue
        assert container["volumeMounts"] == [{"name": "release", "mountPath": "/etc/builder", "readOnly": True}]
        assert pod["spec"]["volumes"][0]["configMap"]["name"] == config_map["metadata"]["name"]
        secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
        assert set(secrets) == {"BUILDER_REGISTRY_USERNAME", "BUILDER_REGISTRY_PASSWORD"}
        assert all(ref["name"] == "builder-registry" and ref["optional"] is True for ref in secrets.values())

    for document in (config_map, rayjob):
        metadata = document["metadata"]
        assert metadata["name"] == "detectors-2026-11" and metadata["namespace"] == "vision"
        assert metadata["labels"]["app.kubernetes.io/name"] == "builder-release"
        assert metadata["labels"]["builder.dev/release"] == "detectors"
        assert metadata["labels"]["builder.dev/version"] == "2026.11"
    assert "&id" not in text and "*id" not in text  # shared dicts written out, not as YAML aliases


def test_the_resources_parameter_is_what_the_ray_autoscaler_reads():
    autoscaling = pytest.importorskip("ray.autoscaler._private.kuberay.autoscaling_config")
    param = kuberay.resources_param({"accelerator_type:A10G": 1})
    assert autoscaling._get_custom_resources({}, {"resources": param}, "gpu-a10g") == {"accelerator_type:A10G": 1}


@pytest.mark.parametrize("readable", [True, False])
def test_the_configmap_holds_the_release_file_verbatim(tmp_path, readable):
    text = "# nightly detectors: ünïcode\n---\n" + yaml.safe_dump(RELEASE, sort_keys=False)
    # a tab and trailing spaces are what a YAML block scalar cannot hold
    text += "# no newline at the end" if readable else "# a tab\tand trailing spaces   \n"
    out = _emit(tmp_path, text=text)
    config_map, _ = _documents(out)
    assert config_map["data"] == {"release.yaml": text}
    assert ("release.yaml: |" in out) is readable  # where it can be, it reads as it was written


def test_a_release_without_tensorrt_builds_has_only_the_cpu_group_capped(tmp_path):
    release = {**RELEASE, "matrix": {"model": ["yolo_nas_s", "ppyoloe_s"], "precision": ["fp32", "fp16", "int8"],
                                     "target": ["triton", "standalone"]}, "include": []}
    _, rayjob = _documents(_emit(tmp_path, release))
    (group,) = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert group["groupName"] == "cpu" and group["replicas"] == kuberay.MAX_CPU_WORKERS < 12


def test_a_tensorrt_only_release_has_no_cpu_group_and_places_other_gpu_types(tmp_path):
    release = {**RELEASE, "matrix": {"model": ["yolo_nas_s"], "precision": ["fp16"], "target": ["triton"],
                                     "gpu": ["A100", "Orin"], "engine": ["tensorrt"]},
               "include": [], "weights": {"yolo_nas_s": YOLO}}
    _, rayjob = _documents(_emit(tmp_path, release))
    check_rayjob(rayjob)
    groups = {g["groupName"]: g for g in rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]}
    assert list(groups) == ["gpu-a100", "gpu-orin"]
    a100 = groups["gpu-a100"]["template"]["spec"]
    [term] = a100["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    [expression] = term["matchExpressions"]
    assert expression["key"] == "nvidia.com/gpu.product" and expression["operator"] == "In"
    assert {"NVIDIA-A100-SXM4-40GB", "NVIDIA-A100-SXM4-80GB"} <= set(expression["values"])
    orin = groups["gpu-orin"]["template"]  # no GFD product builder knows: no node selection, and it says so
    assert "nodeSelector" not in orin["spec"] and "affinity" not in orin["spec"]
    assert orin["metadata"]["annotations"]["builder.dev/gpu-product"] == "unknown"
    assert groups["gpu-orin"]["rayStartParams"]["resources"] == '"{\\"accelerator_type:Orin\\": 1}"'


def _local_inputs(tmp_path):
    (tmp_path / "yolo.pth").write_bytes(b"not read by the emitter")
    (tmp_path / "labels.txt").write_text("person\n")
    (tmp_path / "calibration").mkdir()
    (tmp_path / "calibration" / "a.jpg").write_bytes(b"")
    (tmp_path / "overrides").mkdir()


@pytest.mark.parametrize("change, option, value, where", [
    ({"weights": {"yolo_nas_s": "yolo.pth", "ppyoloe_s": PPYOLOE}}, "weights", "yolo.pth", "weights of yolo_nas_s"),
    ({"defaults": {"input_image_shape": [160, 160], "labels": "labels.txt"}}, "labels", "labels.txt", "defaults"),
    ({"include": [{"model": "yolo_nas_s", "precision": "int8", "target": "triton",
                   "calibration_images": "calibration"}]}, "calibration_images", "calibration",
     "bundle 9 (yolo_nas_s int8 triton"),
    ({"include": [{"model": "ppyoloe_s", "precision": "fp32", "target": "standalone", "templates": "overrides"}]},
     "templates", "overrides", "bundle 9 (ppyoloe_s fp32 standalone"),
])
def test_local_paths_are_refused_in_one_line(tmp_path, change, option, value, where):
    _local_inputs(tmp_path)
    with pytest.raises(UserError) as caught:
        _emit(tmp_path, {**RELEASE, **change})
    line = caught.value.one_line()
    assert "\n" not in line and where in line and option in line and str(tmp_path / value) in line
    assert caught.value.hint == "use http(s) URLs, 'coco' or 'demo' in a release for Kubernetes"


def test_urls_and_coco_weights_pass(tmp_path):
    _documents(_emit(tmp_path, {**RELEASE, "weights": {"yolo_nas_s": YOLO, "ppyoloe_s": "coco"}}))


@pytest.mark.parametrize("change, image, namespace, message", [
    ({}, "model-bundle-builder", None, "is not pinned"),
    ({}, "Model Bundle Builder:1", None, "is not an image reference"),
    ({}, IMAGE, "Vision_Team", "is not a DNS-1123 label"),
    ({"runner": "docker"}, IMAGE, None, "has no Docker engine"),
    ({"include": [{"model": "yolo_nas_s", "precision": "fp32", "target": "standalone",
                   "resources": {"node-with-cache": 1}}]}, IMAGE, None, "custom resource 'node-with-cache'"),
])
def test_what_a_kuberay_pod_cannot_run_is_refused(tmp_path, change, image, namespace, message):
    with pytest.raises(UserError, match=re.escape(message)) as caught:
        _emit(tmp_path, {**RELEASE, **change}, image=image, namespace=namespace)
    assert "\n" not in caught.value.one_line()


def test_a_pinned_digest_image_is_accepted(tmp_path):
    image = "registry.example.com/ml/model-bundle-builder:0.1.0@sha256:" + "ab" * 32
    _, rayjob = _documents(_emit(tmp_path, image=image))
    assert {pod["spec"]["containers"][0]["image"] for pod in _pods(rayjob).values()} == {image}


def _set(document: dict, path: str, value) -> dict:
    broken = copy.deepcopy(document)
    *parents, last = path.split(".")
    node = broken
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return broken


_DELETE = object()
WORKER = "spec.rayClusterSpec.workerGroupSpecs.0"
CONTAINER = "spec.rayClusterSpec.headGroupSpec.template.spec.containers.0"


@pytest.mark.parametrize("path, value, message", [
    ("spec.submissionMode", "K8sMode", "spec.submissionMode: 'K8sMode' is not one of"),
    ("spec.entryPoint", "builder release x", "spec: unknown field 'entryPoint' (did you mean 'entrypoint'?)"),
    ("spec.ttlSecondsAfterFinished", -1, "spec.ttlSecondsAfterFinished"),
    ("spec.suspend", True, "spec.shutdownAfterJobFinishes"),  # set to false below
    ("metadata.name", "r" * 48, "metadata.name"),
    ("metadata.name", "2026-detectors", "metadata.name"),
    ("spec.rayClusterSpec.headGroupSpec.rayStartParams.num-cpus", 0, "rayStartParams[\"num-cpus\"]: 0 is not of type"),
    (f"{WORKER}.minReplicas", _DELETE, "'minReplicas' is a required property"),
    (f"{WORKER}.maxReplicas", 1, f"{WORKER.replace('.0', '[0]')}.replicas: must lie between"),
    (f"{WORKER}.groupName", "CPU", "groupName"),
    (f"{CONTAINER}.securityContex", {}, "unknown field 'securityContex' (did you mean 'securityContext'?)"),
    (f"{CONTAINER}.securityContext.runAsUser", "10001", "runAsUser: expected int"),
    # pydantic-based clients name the missing field; older ones refuse it when they build the object
    (f"{CONTAINER}.name", _DELETE, ("missing required field 'name'", "rejected by the kubernetes client")),
])
def test_check_rayjob_catches_what_kuberay_would_refuse(tmp_path, path, value, message):
    _, rayjob = _documents(_emit(tmp_path))
    if path == "spec.suspend":
        rayjob["spec"]["shutdownAfterJobFinishes"] = False
    with pytest.raises(UserError) as caught:
        check_rayjob(_set(rayjob, path, value))
    assert any(m in caught.value.one_line() for m in ([message] if isinstance(message, str) else message))


def test_check_rayjob_refuses_two_worker_groups_of_one_name(tmp_path):
    _, rayjob = _documents(_emit(tmp_path))
    groups = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    groups[2]["groupName"] = groups[1]["groupName"]
    with pytest.raises(UserError, match=r"'gpu-t4' names two worker groups"):
        check_rayjob(rayjob)


@pytest.mark.parametrize("name, version", [
    ("a" * 128, "b" * 128),
    ("9lives", "_"),
    ("x.y_z__w---v", "V1.0-RC_1."),
    ("detectors", "_.-"),
    ("a" * 60 + "-1", "2026.11"),
])
def test_hostile_names_and_versions_make_valid_kubernetes_names(tmp_path, name, version):
    out = _emit(tmp_path, {**RELEASE, "name": name, "version": version})
    config_map, rayjob = _documents(out)
    check_rayjob(rayjob)
    made = rayjob["metadata"]["name"]
    assert made == config_map["metadata"]["name"] == kubernetes_name(name, version)
    assert DNS_1035.fullmatch(made) and len(made) <= 47
    for document in (config_map, rayjob):
        for value in document["metadata"]["labels"].values():
            assert LABEL_VALUE.fullmatch(value) and len(value) <= 63
        assert document["metadata"]["annotations"] == {"builder.dev/release": name, "builder.dev/version": version}


def test_long_names_that_share_a_prefix_stay_apart():
    assert kubernetes_name("a" * 128, "1") != kubernetes_name("a" * 128, "2")
    assert label_value("v" * 70 + "1") != label_value("v" * 70 + "2")
    assert kubernetes_name("detectors", "2026.11") == "detectors-2026-11"  # short names are not hashed


def test_the_schema_is_a_valid_draft_2020_12_schema_and_names_its_source():
    import jsonschema

    schema = json.loads(kuberay.SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert "rayjob_types.go" in schema["$comment"] and "raycluster_types.go" in schema["$comment"]
    assert "KubeRay v1.3" in schema["$comment"]
    spec = schema["$defs"]["rayJobSpec"]
    assert spec["additionalProperties"] is False
    assert spec["properties"]["submissionMode"]["enum"] == ["K8sJobMode", "HTTPMode", "InteractiveMode"]


def test_a_missing_kserve_extra_is_named(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "jsonschema", None)  # what `import jsonschema` meets where it is not installed
    with pytest.raises(MissingExtraError) as caught:
        _emit(tmp_path)
    assert "jsonschema" in str(caught.value) and "[kserve]" in caught.value.hint
