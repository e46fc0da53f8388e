"""The Kubernetes half of the kserve bundle target: options, names, template context, rendering and strict checks."""
from __future__ import annotations

import datetime
import hashlib
import importlib
import json
import pathlib
import re
from typing import Callable, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from builder.core.errors import MissingExtraError, UserError, did_you_mean

SCHEMA = pathlib.Path(__file__).with_name("inferenceservice.schema.json")
ISVC_FILE = "kubernetes/inferenceservice.yaml"
TEMPLATES = {  # bundle path -> template path (relative to the templates folder)
    ISVC_FILE: "kserve/inferenceservice.yaml.j2",
    "kubernetes/deployment.yaml": "kserve/deployment.yaml.j2",
    "kubernetes/service.yaml": "kserve/service.yaml.j2",
    "kubernetes/README.md": "kserve/README.md.j2",
}
# what KServe accepts in storageUri: SupportedStorageURIPrefixList in kserve/kserve
# pkg/controller/v1beta1/inferenceservice/utils/utils.go (Azure blob/file shares are https://)
STORAGE_SCHEMES = ("gs", "s3", "pvc", "file", "https", "http", "hdfs", "webhdfs", "oci", "oci+native", "oci+fetch",
                   "hf")
URI_CHARS = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&()*+,;=%]+")  # RFC 3986 less the quote: no space, " ' \ { }
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
# Kubernetes' resource.Quantity grammar, without a sign: a request is never negative
QUANTITY = re.compile(r"(?P<number>[0-9]+(\.[0-9]*)?|\.[0-9]+)"
                      r"([KMGTPE]i|[numkMGTPE]|[eE][+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+))?")
NVCR_TRITON = re.compile(r"nvcr\.io/nvidia/tritonserver:(?P<tag>\w[\w.-]{0,127})(@sha256:[0-9a-f]{64})?", re.ASCII)
# 63 (a DNS label) less "-predictor": KServe before PR #4208 named a Service "<name>-predictor" and failed past 63
MAX_NAME = 53
TRITON_UID = 1000  # triton-inference-server/server build.py asserts triton-server is uid and gid 1000
PORTS = [{"name": "http", "port": 8000}, {"name": "grpc", "port": 8001}, {"name": "metrics", "port": 8002}]
COMMAND = ["tritonserver", "--model-repository=/models", "--model-control-mode=none", "--exit-on-error=true"]


class KServeOptions(BaseModel):
    """What the kserve target needs beyond the Triton bundle: where the model goes and what its pods get."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)  # built on first use: --help stays cheap

    storage_uri: Optional[str] = Field(None, max_length=1024, description=(
        "Where you will upload the model repository for KServe to download it (s3://, gs://, pvc://, https://, "
        "hdfs://, oci:// or hf://); by default none, and no InferenceService is written."))
    namespace: Optional[str] = Field(None, description=(
        "Kubernetes namespace written into the manifests; by default none, so kubectl's current namespace is used."))
    replicas: int = Field(1, ge=1, le=100, description="Number of Triton server pods to run; the default is 1.")
    cpu: str = Field("2", description="CPU each pod requests, as a Kubernetes quantity such as 2 or 500m; "
                                      "the default is 2.")
    memory: str = Field("4Gi", description="Memory each pod requests and may not exceed, as a Kubernetes quantity "
                                           "such as 4Gi; the default is 4Gi.")

    @field_validator("storage_uri")
    @classmethod
    def _storage_uri(cls, value: Optional[str]) -> Optional[str]:
        if value is None:
            return None
        if not URI_CHARS.fullmatch(value):  # also what keeps the URI a single safe word in README commands
            raise ValueError("a storage URI may hold no spaces, quotes, braces, control or non-ASCII characters")
        scheme, sep, rest = value.partition("://")
        if not sep or scheme.lower() not in STORAGE_SCHEMES:
            raise ValueError(f"KServe cannot download from '{value}': the URI must start with one of "
                             + ", ".join(f"{s}://" for s in STORAGE_SCHEMES))
        if not rest.strip("/"):
            raise ValueError(f"storage URI '{value}' names no bucket, claim or host")
        return value

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and (len(value) > 63 or not DNS_LABEL.fullmatch(value)):
            raise ValueError(f"namespace '{value}' is not a DNS-1123 label (at most 63 of a-z, 0-9 and '-', "
                             "starting and ending with a letter or digit)")
        return value

    @field_validator("cpu", "memory")
    @classmethod
    def _quantity(cls, value: str) -> str:
        match = QUANTITY.fullmatch(value)
        if not match or float(match["number"]) == 0:
            raise ValueError(f"'{value}' is not a positive Kubernetes quantity (e.g. 2, 500m, 4Gi, 512Mi)")
        return value


def kubernetes_name(model_name: str) -> str:
    """A name KServe and Kubernetes both accept (a DNS-1123 label that starts with a letter, at most MAX_NAME)."""
    name = re.sub(r"[^a-z0-9]+", "-", model_name.lower()).strip("-")
    if not name:
        raise ValueError(f"model name {model_name!r} holds no letter or digit to make a Kubernetes name from")
    if not name[0].isalpha():  # KServe's IsvcNameFmt wants a letter first
        name = "model-" + name
    if len(name) > MAX_NAME:  # a hash of the full name keeps two long names that share a prefix apart
        digest = hashlib.sha256(model_name.encode("utf-8")).hexdigest()[:8]
        name = name[:MAX_NAME - len(digest) - 1].rstrip("-") + "-" + digest
    return name


def manifest_context(name: str, version: int, serving_image: str, gpu: bool, instances: int,
                     options: KServeOptions, builder_version: str, *, repository: str = "model_repository") -> dict:
    """The context the kserve templates read; every value reaches YAML through the `json` filter."""
    k8s_name = kubernetes_name(name)
    workload = f"{k8s_name}-triton"  # the plain Deployment/Service; never clashes with what KServe creates
    common = {"app.kubernetes.io/name": k8s_name, "app.kubernetes.io/version": str(version),
              "app.kubernetes.io/managed-by": "builder"}
    # distinct 'instance' labels: KServe copies the InferenceService's labels onto its pods, and the plain
    # Service must not select those
    selector = {"app.kubernetes.io/name": k8s_name, "app.kubernetes.io/instance": workload}
    requests = {"cpu": options.cpu, "memory": options.memory}
    gpu_limit = {"nvidia.com/gpu": "1"} if gpu else {}
    tag = NVCR_TRITON.fullmatch(serving_image)
    return {
        "name": name, "k8s_name": k8s_name, "workload_name": workload, "version": version,
        "namespace": options.namespace, "replicas": options.replicas, "instances": instances,
        "labels": {**common, **selector}, "selector_labels": selector,
        "isvc_labels": {**common, "app.kubernetes.io/instance": k8s_name},
        # annotations, not labels: a Triton model name may hold characters a label value may not
        "annotations": {"builder/triton-model": name, "builder/version": builder_version},
        "serving_image": serving_image, "image": f"{workload}:{version}", "command": COMMAND,
        # KServe's Triton runtime swaps its image tag for runtimeVersion; a TensorRT plan needs the exact one
        "runtime_version": tag["tag"] if tag else None,
        "storage_uri": options.storage_uri,
        "storage_scheme": options.storage_uri.partition("://")[0].lower() if options.storage_uri else None,
        "gpu": gpu, "gpu_count": 1 if gpu else None,
        "requests": requests, "isvc_limits": {**requests, **gpu_limit},
        "pod_limits": {"memory": options.memory, **gpu_limit},  # no CPU limit on the plain pods: no throttling
        "ports": PORTS, "http_port": PORTS[0]["port"], "run_as_user": TRITON_UID,
        "builder_version": builder_version, "repository": repository,
    }


def render_manifests(render: Callable[[str, dict], str], context: dict) -> dict[str, str]:
    """Bundle path -> text; without a storage URI there is nothing for KServe to fetch, so no InferenceService."""
    return {path: render(template, context) for path, template in TEMPLATES.items()
            if path != ISVC_FILE or context["storage_uri"] is not None}


# ---- checks -------------------------------------------------------------------------------------------------
K8S_KINDS = {("apps/v1", "Deployment"): "V1Deployment", ("v1", "Service"): "V1Service"}
PRIMITIVES = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "bytes": (str,),
              "datetime": (str, datetime.date), "date": (str, datetime.date)}  # YAML reads timestamps as dates


def _require(module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(module.split(".")[0], "kserve") from None


def _at(where: str, key) -> str:
    if isinstance(key, int):
        return f"{where}[{key}]"
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        return f"{where}.{key}" if where else key
    return f"{where}[{json.dumps(key)}]"


def _fail(origin: str, where: str, problem: str, hint: str | None = None) -> UserError:
    return UserError(f"{origin}: {where or '(top level)'}: {problem}", hint=hint)


def _walk(origin: str, value, kind: str, where: str, models) -> None:
    """Check `value` against a kubernetes client type name: unknown keys and wrong types are errors."""
    inner = re.fullmatch(r"(?:List\[|list\[)(.*)\]", kind)
    if inner:
        if not isinstance(value, list):
            raise _fail(origin, where, f"expected a list, got {type(value).__name__}")
        for i, item in enumerate(value):
            _walk(origin, item, inner[1], _at(where, i), models)
        return
    if kind == "object":  # IntOrString and raw extensions: anything goes
        return
    if kind in PRIMITIVES:
        if isinstance(value, bool) and kind != "bool" or not isinstance(value, PRIMITIVES[kind]):
            raise _fail(origin, where, f"expected {kind}, got {type(value).__name__} {value!r}")
        return
    if not isinstance(value, dict):
        raise _fail(origin, where, f"expected a mapping, got {type(value).__name__}")
    inner = re.fullmatch(r"(?:Dict\[str, |dict\(str, )(.*)[\])]", kind)
    if inner:
        for key, item in value.items():
            if not isinstance(key, str):
                raise _fail(origin, where, f"key {key!r} is not a string")
            _walk(origin, item, inner[1], _at(where, key), models)
        return
    model = getattr(models, kind)
    by_key = {key: attr for attr, key in model.attribute_map.items()}
    for key, item in value.items():
        if key not in by_key:
            raise _fail(origin, where, f"unknown field '{key}'", hint=did_you_mean(str(key), by_key))
        if item is not None:  # null is an unset field, as the API server reads it
            _walk(origin, item, model.openapi_types[by_key[key]], _at(where, key), models)
    for attr, field in getattr(model, "model_fields", {}).items():  # pydantic-based clients know what is required
        if field.is_required() and value.get(model.attribute_map[attr]) is None:
            raise _fail(origin, where, f"missing required field '{model.attribute_map[attr]}'")


def _deserialize(class_name: str, document: dict):
    """Build the client's model object, so the client's own validation runs too."""
    client = _require("kubernetes.client").ApiClient()
    text = json.dumps(document)
    import inspect

    if "response_text" in inspect.signature(client.deserialize).parameters:  # newer, pydantic-based clients
        return client.deserialize(text, class_name, "application/json")
    return client.deserialize(type("Response", (), {"data": text})(), class_name)


def _yaml(origin: str, text: str) -> dict:
    yaml = _require("yaml")

    class Strict(yaml.SafeLoader):  # a duplicated key would silently win in a plain SafeLoader
        def construct_mapping(self, node, deep=False):
            keys = [self.construct_object(k, deep=deep) for k, _ in node.value]
            for i, key in enumerate(keys):
                if key in keys[:i]:
                    line = node.value[i][0].start_mark.line + 1
                    raise UserError(f"{origin}: line {line}: field '{key}' appears twice")
            return super().construct_mapping(node, deep=deep)

    try:
        document = yaml.load(text, Loader=Strict)
    except yaml.YAMLError as e:
        raise UserError(f"{origin}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(document, dict):
        raise UserError(f"{origin}: expected one Kubernetes object (a mapping), got {type(document).__name__}")
    return document


def check_schema(origin: str, document: dict, schema: pathlib.Path) -> None:
    """`document` against a JSON schema (a CRD's, which Kubernetes' models do not know); the first problem is one
    line naming the field, unknown fields as the Kubernetes checks name them."""
    jsonschema = _require("jsonschema")
    validator = jsonschema.Draft202012Validator(json.loads(schema.read_text()))
    error = jsonschema.exceptions.best_match(validator.iter_errors(document))
    if error is None:
        return
    where = ""
    for key in error.absolute_path:
        where = _at(where, key)
    known = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
    unknown = sorted(set(error.instance) - set(known)) if isinstance(error.instance, dict) else []
    if error.validator == "additionalProperties" and unknown:  # say it as the Kubernetes checks say it
        raise _fail(origin, where, f"unknown field '{unknown[0]}'", hint=did_you_mean(unknown[0], known))
    raise _fail(origin, where, " ".join(error.message.split()))


def _check_isvc(origin: str, document: dict) -> dict:
    check_schema(origin, document, SCHEMA)
    predictor = document["spec"]["predictor"]  # KServe's validateReplicas: 0 means no maximum
    low, high = predictor.get("minReplicas", 1), predictor.get("maxReplicas", 0)
    if high and low > high:
        raise _fail(origin, "spec.predictor.minReplicas", f"{low} is more than maxReplicas {high}")
    return document


def load_manifest(origin: str, text: str):
    """Parse and strictly check one manifest: a kubernetes client object, or the InferenceService as a dict."""
    document = _yaml(origin, text)
    kind = (document.get("apiVersion"), document.get("kind"))
    if kind == ("serving.kserve.io/v1beta1", "InferenceService"):
        return _check_isvc(origin, document)
    if kind not in K8S_KINDS:
        raise _fail(origin, "", f"unexpected apiVersion/kind {kind[0]!r}/{kind[1]!r}")
    models = _require("kubernetes.client")
    _walk(origin, document, K8S_KINDS[kind], "", models)
    try:
        return _deserialize(K8S_KINDS[kind], document)
    except (ValueError, TypeError) as e:  # pydantic's ValidationError is a ValueError
        raise _fail(origin, "", f"rejected by the kubernetes client: {' '.join(str(e).split())}") from None


def check_manifests(texts: dict[str, str]) -> None:
    """Check every YAML file of `texts` (bundle path -> text); raise UserError naming the file and the field."""
    loaded = {path: load_manifest(path, text) for path, text in texts.items() if path.endswith((".yaml", ".yml"))}
    by_kind = {type(obj).__name__: (path, obj) for path, obj in loaded.items()}
    if "V1Deployment" not in by_kind:
        return
    path, deployment = by_kind["V1Deployment"]
    template = deployment.spec.template.metadata
    pod_labels = (template.labels if template else None) or {}
    if not _subset(deployment.spec.selector.match_labels, pod_labels):  # the API server would refuse it
        raise _fail(path, "spec.selector.matchLabels", "does not match spec.template.metadata.labels")
    if "V1Service" in by_kind:  # a Service that selects no pod is valid YAML and serves nothing
        path, service = by_kind["V1Service"]
        if not (service.spec and service.spec.selector) or not _subset(service.spec.selector, pod_labels):
            raise _fail(path, "spec.selector", "selects none of the Deployment's pods")


def _subset(wanted: Optional[dict], labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in (wanted or {}).items())
