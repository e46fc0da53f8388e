"""`builder release` without a cluster: the release spec, the matrix, build keys, the dry run, reports, and
picking a bundle from a release's index. The cluster itself: tests/test_release_cluster.py."""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from builder.cli import main
from builder.core.errors import UserError
from builder.releases.spec import ReleaseSpec, combinations, plan, read_release_file

WEIGHTS = "weights.pth"


def write(tmp_path: pathlib.Path, text: str, name: str = "release.yaml") -> pathlib.Path:
    path = tmp_path / name
    path.write_text(text)
    return path


BASE = """\
name: detectors
version: "1.0"
registry: 127.0.0.1:5999/acme
insecure: true
runner: local
defaults: {input_image_shape: [64, 64]}
"""


def spec_of(**values) -> ReleaseSpec:
    return ReleaseSpec(name="r", version="1", registry="registry.example.com", **values)


# ---- the matrix: GitHub Actions' rules ------------------------------------------------------------------------

def test_the_matrix_is_the_product_of_its_lists_less_the_excluded():
    spec = spec_of(matrix={"model": ["a", "b"], "precision": ["fp32", "fp16", "int8"]},
                   exclude=[{"model": "b", "precision": "int8"}, {"precision": "fp16"}])
    assert combinations(spec) == [{"model": "a", "precision": "fp32"}, {"model": "a", "precision": "int8"},
                                  {"model": "b", "precision": "fp32"}]


def test_include_extends_the_combinations_it_fits_and_otherwise_adds_one():
    spec = spec_of(matrix={"model": ["a", "b"], "target": ["triton"]},
                   include=[{"model": "a", "gpu": "T4"},           # fits model=a: extends it
                            {"batch_size": 4},                     # fits every combination
                            {"model": "c", "target": "standalone"},  # fits none: a combination of its own
                            {"model": "a", "target": "standalone"}])  # would change target: its own too
    assert combinations(spec) == [
        {"model": "a", "target": "triton", "gpu": "T4", "batch_size": 4},
        {"model": "b", "target": "triton", "batch_size": 4},
        {"model": "c", "target": "standalone"},
        {"model": "a", "target": "standalone"},
    ]


def test_an_include_may_overwrite_what_an_earlier_include_added_but_not_a_matrix_value():
    spec = spec_of(matrix={"model": ["a"]}, include=[{"precision": "fp16"}, {"model": "a", "precision": "int8"}])
    assert combinations(spec) == [{"model": "a", "precision": "int8"}]


def test_the_plan_validates_each_bundle_and_makes_paths_absolute(tmp_path):
    (tmp_path / WEIGHTS).write_bytes(b"not read while planning")
    path = write(tmp_path, BASE + f"""\
matrix: {{model: [yolo_nas_s], precision: [fp32, fp16], target: [triton, standalone]}}
exclude: [{{precision: fp16, target: triton}}]
include: [{{model: ppyoloe_s, target: standalone, precision: fp32, gpu: T4}}]
weights: {{yolo_nas_s: {WEIGHTS}}}
""")
    spec = read_release_file(path)
    planned = plan(spec)
    assert [p.label for p in planned] == ["yolo_nas_s fp32 triton", "yolo_nas_s fp32 standalone",
                                          "yolo_nas_s fp16 standalone", "ppyoloe_s fp32 standalone T4"]
    assert planned[0].spec.export.weights == str(tmp_path / WEIGHTS)  # relative to the release file
    assert planned[3].spec.export.weights is None and planned[3].gpu == "T4" and not planned[3].builds_plan
    assert planned[0].spec.export.input_image_shape == (64, 64)
    assert planned[3].annotations() == {"model": "ppyoloe_s", "precision": "fp32", "target": "standalone",
                                        "name": "ppyoloe_s", "gpu": "T4"}


# ---- bad release files: one line naming the entry, exit 2, nothing written --------------------------------------

BAD = [
    ("name: Detectors\nversion: '1'\nregistry: r.example.com\n", "invalid name: 'Detectors' is not a repository name"),
    ("name: d\nversion: build-1\nregistry: r.example.com\n", "tags starting with 'build-' name bundles"),
    ("name: d\nversion: '1'\nregistry: nohost\n", "invalid registry: 'nohost' is not a registry"),
    ("name: d\nversion: '1'\nregistry: r.example.com\nmatrix: {model: []}\n", "invalid matrix: 'model' lists no values"),
    ("name: d\nversion: '1'\nregistry: r.example.com\nmatrix: {model: [a, a]}\n", "'model' lists a value twice"),
    ("name: d\nversion: '1'\nregistry: r.example.com\nmatrix: {model: [a]}\nexclude: [{gpu: T4}]\n",
     "exclude entry 1 names 'gpu', which the matrix does not list"),
    ("name: d\nversion: '1'\nregistry: r.example.com\nmatrx: {}\n", "unknown option 'matrx'"),
    ("name: d\nversion: '1'\nregistry: r.example.com\n", "the release holds no bundle"),
    (BASE + "matrix: {model: [yolo_nas_s], target: [triton], precison: [fp16]}\n",
     "bundle 1 (model=yolo_nas_s, target=triton, precison=fp16): unknown option 'precison' (did you mean 'precision'?)"),
    (BASE + "matrix: {model: [yolo_nas_s, yolo_nas_xl], target: [standalone]}\n",
     "bundle 2 (model=yolo_nas_xl, target=standalone): invalid export.model: unknown model 'yolo_nas_xl'"),
    (BASE + "matrix: {model: [yolo_nas_s], target: [triton]}\nweights: {yolo_nas_s: missing.pth}\n",
     "bundle 1 (model=yolo_nas_s, target=triton): weights "),
    (BASE + "matrix: {model: [yolo_nas_s], target: [triton]}\nweights: {ppyoloe_s: coco}\n",
     "weights are given for 'ppyoloe_s', which no bundle of the release builds"),
    (BASE + "matrix: {model: [yolo_nas_s], target: [triton], gpu: ['T4 x']}\n",
     "gpu must be an accelerator type such as T4"),
    (BASE + "matrix: {model: [yolo_nas_s], target: [triton]}\ninclude: [{resources: {GPU: 1}}]\n",
     "resources maps custom Ray resource names"),
    (BASE + "matrix: {model: [yolo_nas_s], target: [triton]}\ninclude: [{resources: {a: -1}}]\n",
     "resources maps custom Ray resource names"),
    (BASE + "matrix: {model: [yolo_nas_s]}\n", "missing option 'target'"),
    ("name: d\nname: e\n", "'name' is given twice"),
    ("- a list\n", "must hold a mapping of options"),
]


@pytest.mark.parametrize("text, expected", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_a_bad_release_file_is_one_line_naming_the_entry(text, expected, tmp_path, capsys):
    path = write(tmp_path, text)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["release", str(path), "--dry-run"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("error: "), err
    assert expected in err, err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# ---- what a release verifies its bundles on ----------------------------------------------------------------------

def _images(folder: pathlib.Path) -> pathlib.Path:
    from builder.core.images import PHOTOS

    folder.mkdir(parents=True)
    (folder / "a.jpg").write_bytes((PHOTOS / "coffee.jpg").read_bytes())
    return folder


def test_a_release_names_its_verify_images_for_every_bundle_and_per_model(tmp_path):
    """verify used to be a bool, so a release of a domain model could only turn verification off: builder's
    photos hold nothing such a model finds."""
    from builder.releases.run import _job, with_keys

    _images(tmp_path / "data" / "all")
    _images(tmp_path / "data" / "shapes")
    text = (BASE + "matrix: {model: [yolo_nas_s, ppyoloe_s], target: [standalone]}\n"
            "verify: {images: data/all, count: 5, models: {ppyoloe_s: data/shapes}}\n")
    spec = read_release_file(write(tmp_path, text))
    planned = with_keys(spec, plan(spec))
    jobs = {p.spec.export.model: _job(spec, p)["verify"] for p in planned}
    assert jobs == {"yolo_nas_s": {"images": str(tmp_path / "data" / "all"), "count": 5},
                    "ppyoloe_s": {"images": str(tmp_path / "data" / "shapes"), "count": 5}}
    default = read_release_file(write(tmp_path, BASE + "matrix: {model: [yolo_nas_s], target: [standalone]}\n"))
    assert default.verification("yolo_nas_s") == {"images": None, "count": 32}  # the bundle's samples, else photos
    off = read_release_file(write(tmp_path, BASE + "matrix: {model: [yolo_nas_s], target: [standalone]}\n"
                                  "verify: false\n"))
    assert off.verification("yolo_nas_s") is None


@pytest.mark.parametrize("verify, expected", [
    ("{images: nowhere}", "verify: images folder '{root}/nowhere' does not exist"),
    ("{models: {ppyoloe_s: nowhere}}", "verify images are given for 'ppyoloe_s', which no bundle"),
    ("{imagez: data}", "invalid verify: unknown option 'imagez'"),
    ("{count: 0}", "invalid verify: invalid count: Input should be greater than or equal to 1"),
    ("maybe", "invalid verify: expected true, false or {{images: DIR"),
])
def test_bad_verify_settings_are_one_line_before_anything_runs(verify, expected, tmp_path, capsys):
    path = write(tmp_path, BASE + f"matrix: {{model: [yolo_nas_s], target: [standalone]}}\nverify: {verify}\n")
    assert main(["release", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected.format(root=tmp_path) in err, err


def test_a_missing_release_file_is_one_line(tmp_path, capsys):
    assert main(["release", str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().err == f"error: release file '{tmp_path / 'nope.yaml'}' does not exist\n"


@pytest.mark.parametrize("args, expected", [
    (["--cluster", "local", "--address", "auto"], "--cluster local and --address exclude each other"),
    (["--emit", "kuberay", "--dry-run"], "--emit writes manifests only"),
    (["--namespace", "ml"], "--image, --namespace and --output go with --emit kuberay"),
    (["--max-parallel", "0"], "Invalid value for '--max-parallel'"),
])
def test_options_that_exclude_each_other(args, expected, tmp_path, capsys):
    path = write(tmp_path, BASE + "matrix: {model: [yolo_nas_s], target: [triton]}\n")
    assert main(["release", str(path), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and expected in err, err


# ---- the dry run: the plan with build keys, without Ray or a registry ---------------------------------------------

def test_the_dry_run_prints_one_row_per_bundle_with_its_key_and_imports_no_ray(tmp_path):
    path = write(tmp_path, BASE + """\
matrix: {model: [yolo_nas_s, ppyoloe_s], precision: [fp32, fp16], target: [standalone]}
include:
  - {model: yolo_nas_s, precision: fp16, target: triton, engine: tensorrt, gpu: L4}
""")
    probe = ("import sys\nfrom builder.cli import main\ncode = main(sys.argv[1:])\n"
             "print('ray loaded' if 'ray' in sys.modules else 'no ray', file=sys.stderr)\nsys.exit(code)\n")
    done = subprocess.run([sys.executable, "-c", probe, "release", str(path), "--dry-run"], capture_output=True,
                          text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[-1] == "no ray"
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["#", "bundle", "key", "resources"]
    assert len(lines) == 1 + 5 + 1 and lines[-1] == "5 bundles, 5 builds (dry run: nothing built)"
    assert "CPU 1, GPU 1, accelerator_type:L4 0.001" in lines[5]
    keys = [line.split()[-3] if "GPU" not in line else None for line in lines[1:5]]
    assert all(len(k) == 12 and int(k, 16) >= 0 for k in keys)
    assert list(tmp_path.iterdir()) == [path]  # no report, no folder


# ---- build keys -----------------------------------------------------------------------------------------------

def keys_of(tmp_path: pathlib.Path, text: str) -> dict[str, str]:
    from builder.releases.run import with_keys

    spec = read_release_file(write(tmp_path, text))
    return {p.label: p.key for p in with_keys(spec, plan(spec))}


MATRIX = BASE + "matrix: {model: [yolo_nas_s, ppyoloe_s], precision: [fp32, fp16], target: [standalone]}\n"


def test_a_key_changes_only_for_the_bundles_a_change_affects(tmp_path):
    first = keys_of(tmp_path, MATRIX)
    assert keys_of(tmp_path, MATRIX) == first and len(set(first.values())) == 4  # deterministic, distinct
    changed = keys_of(tmp_path, MATRIX.replace("[fp32, fp16]", "[fp32, int8]"))
    assert {k for k in changed if changed[k] == first.get(k)} == {"yolo_nas_s fp32 standalone",
                                                                  "ppyoloe_s fp32 standalone"}
    one_model = list(keys_of(tmp_path, MATRIX + "include: [{model: ppyoloe_s, confidence_threshold: 0.3}]\n").values())
    assert [k for k, key in zip(first, one_model) if key != first[k]] == ["ppyoloe_s fp32 standalone",
                                                                           "ppyoloe_s fp16 standalone"]
    assert keys_of(tmp_path, MATRIX.replace('version: "1.0"', 'version: "2.0"')) == first  # the tag is no input


def test_a_key_follows_the_content_of_the_files_a_bundle_is_built_from(tmp_path):
    weights = tmp_path / WEIGHTS
    weights.write_bytes(b"one")
    images = tmp_path / "calibration"
    images.mkdir()
    (images / "a.jpg").write_bytes(b"jpeg")
    text = MATRIX + f"weights: {{yolo_nas_s: {WEIGHTS}}}\ninclude: [{{precision: fp16, report_images: calibration}}]\n"
    first = keys_of(tmp_path, text)
    weights.write_bytes(b"two")
    second = keys_of(tmp_path, text)
    assert {k for k in first if first[k] != second[k]} == {"yolo_nas_s fp32 standalone", "yolo_nas_s fp16 standalone"}
    (images / "b.jpg").write_bytes(b"jpeg")
    third = keys_of(tmp_path, text)
    assert {k for k in first if third[k] != second[k]} == {"yolo_nas_s fp16 standalone", "ppyoloe_s fp16 standalone"}


def test_a_key_names_the_stage_and_for_an_engine_the_gpu(tmp_path):
    from builder.releases.keys import build_key, local_stage

    spec = read_release_file(write(tmp_path, BASE + """\
matrix: {model: [yolo_nas_s], target: [triton], gpu: [T4, L4]}
include: [{gpu: T4, engine: tensorrt, precision: fp16, model: ppyoloe_s, target: triton}]
"""))
    planned = plan(spec)
    onnx_t4, onnx_l4, engine_t4 = planned[0], planned[1], planned[2]
    stage = local_stage()
    # an ONNX Runtime bundle is the same for every GPU it serves on: built once
    assert build_key(onnx_t4.spec, stage, "T4") == build_key(onnx_l4.spec, stage, "L4")
    # an engine is built for its GPU
    assert build_key(engine_t4.spec, stage, "T4") != build_key(engine_t4.spec, stage, "L4")
    other = {"runner": "docker", "image": "model-bundle-builder-cpu:0.1.0", "image_id": "sha256:" + "0" * 64}
    assert build_key(onnx_t4.spec, stage, None) != build_key(onnx_t4.spec, other, None)


# ---- the report -------------------------------------------------------------------------------------------------

def test_the_report_escapes_what_it_shows(tmp_path):
    from builder.releases.report import html_page, markdown, write_report
    from builder.releases.run import Outcome, ReleaseResult, with_keys

    spec = read_release_file(write(tmp_path, BASE + "matrix: {model: [yolo_nas_s, ppyoloe_s], target: [triton]}\n"))
    planned = with_keys(spec, plan(spec))
    result = ReleaseResult(spec, planned)
    result.outcomes[planned[0].key] = Outcome("built", "sha256:" + "ab" * 32, 123_456, 900, 4.2, "f" * 56,
                                              "recall 1.000", attempts=2)
    result.outcomes[planned[1].key] = Outcome("failed", error="<script>alert(1)</script> | a\nb", attempts=1)
    page = html_page(result)
    assert "<script>" not in page and "&lt;script&gt;" in page
    text = markdown(result)
    assert "\\| a b" in text and "| 2 " in text
    assert "123.5 KB" in text and "abababababab" in text
    report = write_report(result, tmp_path / "out" / "report")
    assert sorted(p.name for p in report.parent.iterdir()) == ["report.html", "report.json", "report.md"]
    data = json.loads((report.parent / "report.json").read_text())
    assert [b["status"] for b in data["bundles"]] == ["built", "failed"] and data["index"] is None


# ---- pulling a bundle out of a release's index ----------------------------------------------------------------

@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """A registry holding two bundles (one pushed twice, under two build tags) and an index of three entries."""
    from oci_registry import running_registry

    import builder
    from builder.oci.client import RegistryClient
    from builder.oci.index import find_bundle, push_index
    from builder.oci.reference import parse_reference

    root = tmp_path_factory.mktemp("indexed")
    bundles = {target: builder.bundle(root / target, target=target, model="yolo_nas_s", input_image_shape=(64, 64),
                                      runner="local").destination for target in ("standalone", "triton")}
    with running_registry(root / "registry") as registry:
        repository = f"{registry}/acme/detectors"
        for target, folder in bundles.items():
            builder.push(folder, f"{repository}:build-{target}", insecure=True)
        client = RegistryClient(parse_reference(f"{repository}:1.0"), insecure=True)
        entries = [(find_bundle(client, "build-standalone"), {"model": "yolo_nas_s", "target": "standalone",
                                                              "gpu": "T4", "precision": "fp32"}),
                   (find_bundle(client, "build-standalone"), {"model": "yolo_nas_s", "target": "standalone",
                                                              "gpu": "L4", "precision": "fp32"}),
                   (find_bundle(client, "build-triton"), {"model": "yolo_nas_s", "target": "triton", "gpu": "T4",
                                                          "precision": "fp32"})]
        assert find_bundle(client, "build-none") is None
        push_index(client, "1.0", entries, {"org.opencontainers.image.version": "1.0"})
        yield {"registry": registry, "repository": repository, "bundles": bundles}


@pytest.mark.registry
def test_select_pulls_the_one_matching_bundle(indexed, tmp_path, capsys):
    reference = f"{indexed['repository']}:1.0"
    assert main(["pull", reference, str(tmp_path / "t4"), "--insecure", "--select", "target=triton,gpu=T4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{indexed['repository']}@sha256:")
    files = sorted(p.relative_to(tmp_path / "t4").as_posix() for p in (tmp_path / "t4").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(indexed["bundles"]["triton"]).as_posix()
                           for p in indexed["bundles"]["triton"].rglob("*") if p.is_file())
    # two entries, one bundle: not ambiguous
    assert main(["pull", reference, str(tmp_path / "any"), "--insecure", "--select", "target=standalone"]) == 0


@pytest.mark.registry
@pytest.mark.parametrize("args, expected", [
    (["--select", "gpu=T4"], "2 bundles of '{ref}' match gpu=T4 (narrow it with target)"),
    (["--select", "gpu=A100"], "no bundle of '{ref}' matches gpu=A100 (it has gpu=L4, gpu=T4)"),
    (["--select", "colour=red"], "cannot select on 'colour' (one of model, precision, target, gpu, name, build-key)"),
    (["--select", "gpu"], "invalid selection 'gpu'"),
    (["--select", "gpu=T4,gpu=L4"], "'gpu' is selected twice"),
    ([], "'{ref}' is a release index, not one bundle (pick a bundle with --select"),
])
def test_a_selection_that_does_not_pick_one_bundle_is_one_line(indexed, args, expected, tmp_path, capsys):
    reference = f"{indexed['repository']}:1.0"
    assert main(["pull", reference, str(tmp_path / "out"), "--insecure", *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and expected.format(ref=reference) in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.registry
def test_select_on_a_single_bundle_says_it_is_no_index(indexed, tmp_path, capsys):
    reference = f"{indexed['repository']}:build-triton"
    assert main(["pull", reference, str(tmp_path / "out"), "--insecure", "--select", "gpu=T4"]) == 2
    assert "is not a release index" in capsys.readouterr().err


def test_a_release_without_ray_names_the_cluster_extra(tmp_path):
    path = write(tmp_path, BASE + "matrix: {model: [yolo_nas_s], target: [standalone]}\n")
    hide = ("import sys\n"
            "class Hide:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'ray':\n"
            "            raise ModuleNotFoundError(name=name)\n"
            "sys.meta_path.insert(0, Hide())\n"
            "from builder.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    done = subprocess.run([sys.executable, "-c", hide, "release", str(path)], capture_output=True, text=True,
                          cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr == ("error: this needs the Python package 'ray', which is not installed "
                           "(pip install 'model-bundle-builder[cluster]')\n")
    assert list(tmp_path.iterdir()) == [path]


def test_user_errors_in_the_plan_are_user_errors():
    with pytest.raises(UserError, match="no bundle"):
        plan(spec_of())


def test_emit_kuberay_writes_the_configmap_and_the_rayjob(tmp_path, capsys):
    import yaml

    path = write(tmp_path, BASE + "matrix: {model: [yolo_nas_s], target: [triton]}\n"
                                  "weights: {yolo_nas_s: 'https://models.example.com/yolo_nas_s.pth'}\n")
    assert main(["release", str(path), "--emit", "kuberay", "--namespace", "ml", "-o", str(tmp_path / "job.yaml")]) == 0
    documents = list(yaml.safe_load_all((tmp_path / "job.yaml").read_text()))
    assert [d["kind"] for d in documents] == ["ConfigMap", "RayJob"]
    assert documents[0]["data"]["release.yaml"] == path.read_text()
    assert documents[1]["metadata"]["namespace"] == "ml"
    assert main(["release", str(path), "--emit", "kuberay", "--namespace", "ml"]) == 0
    assert list(yaml.safe_load_all(capsys.readouterr().out)) == documents


def test_builder_release_is_the_api_function_even_after_the_package_is_imported():
    import builder
    import builder.releases.run  # noqa: F401  (a subpackage named `release` would shadow the function)
    from builder.api import release

    assert builder.release is release
