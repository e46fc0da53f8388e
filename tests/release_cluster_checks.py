"""`builder release` on a real two-node Ray cluster with a real registry, all on loopback.

Runs only inside a network namespace of its own: tests/test_release_cluster.py starts it there with
`unshare -n`. The checks share one cluster and one registry and run in file order: the release is built,
pulled back and verified; built again (nothing to do); changed (only what changed is built); then a node is
killed mid-build, late, since the cluster has one node less afterwards; last, the machine comes back and its
next build sweeps what the killed one left in its TMPDIR.
"""
from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys
import urllib.request

import pytest

from bundle_helpers import lively_weights
from oci_registry import running_registry
from ray_cluster import HEALTH_CHECKS, RayCluster, in_private_network

pytestmark = pytest.mark.skipif(not in_private_network(), reason="needs a network namespace of its own (unshare -n)")

GPU_NODE_RESOURCES = {"accelerator_type:T4": 1}
MODELS = ("yolo_nas_s", "ppyoloe_s")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    weights = {m: lively_weights(root / f"{m}.pth", m) for m in MODELS}
    with running_registry(root / "registry") as registry:
        cluster = RayCluster(root)
        try:
            cluster.start_head(num_cpus=1)
            second = cluster.add_node("second", num_cpus=1, resources=GPU_NODE_RESOURCES)
            yield {"root": root, "registry": registry, "cluster": cluster, "second": second, "weights": weights}
        finally:
            cluster.stop()


def release_file(world, name: str, precisions=("fp32", "fp16"), version="1.0", **extra) -> pathlib.Path:
    spec = {
        "name": "detectors", "version": version, "registry": f"{world['registry']}/acme", "insecure": True,
        "runner": "local",
        "defaults": {"input_image_shape": [128, 128]},
        "matrix": {"model": list(MODELS), "precision": list(precisions), "target": ["triton", "standalone"]},
        # one bundle pinned, by a resource only the second node offers
        "include": [{"model": "ppyoloe_s", "precision": "fp32", "target": "standalone",
                     "resources": {"accelerator_type:T4": 0.001}}],
        "weights": {m: str(p) for m, p in world["weights"].items()},
        **extra,
    }
    path = world["root"] / f"{name}.yaml"
    path.write_text(json.dumps(spec, indent=2))  # JSON is YAML
    return path


def release(world, path: pathlib.Path, *arguments: str) -> tuple[subprocess.CompletedProcess, dict]:
    report = world["root"] / f"report-{path.stem}"
    done = subprocess.run([sys.executable, "-m", "builder", "release", str(path), "--address",
                           world["cluster"].address, "--report-dir", str(report), *arguments],
                          capture_output=True, text=True, timeout=600, env=_env())
    assert "Traceback" not in done.stderr, done.stderr
    data = json.loads((report / "report.json").read_text()) if (report / "report.json").exists() else {}
    return done, data


def _env():
    import os

    return {**os.environ, **HEALTH_CHECKS}


def by_bundle(report: dict) -> dict[str, dict]:
    return {b["bundle"]: b for b in report["bundles"]}


def test_a_matrix_release_builds_on_both_nodes_and_pulls_back_by_selection(world, tmp_path):
    from builder.api import pull, verify

    done, report = release(world, release_file(world, "first"))
    assert done.returncode == 0, done.stderr[-3000:]
    bundles = by_bundle(report)
    assert len(bundles) == 8 and {b["status"] for b in bundles.values()} == {"built"}
    # progress: a line per stage of each running build, naming its node; a summary table at the end
    assert re.search(r"^note: \[\d\] \S+ \S+ \S+ on [0-9a-f]{8} .*: exporting", done.stderr, re.M), done.stderr
    assert "8 built, 0 cached, 0 failed; index " in done.stdout
    # the build pinned by a resource only the second node has ran there; the others went to both nodes
    assert "accelerator_type:T4" in bundles["ppyoloe_s fp32 standalone"]["node"]
    assert len({b["node"] for b in bundles.values()}) == 2
    index = report["index"]
    assert index.startswith(f"{world['registry']}/acme/detectors:1.0@sha256:")
    for model in MODELS:
        for precision in ("fp32", "fp16"):
            for target in ("triton", "standalone"):
                folder = tmp_path / f"{model}-{precision}-{target}"
                transfer = pull(f"{world['registry']}/acme/detectors:1.0", folder, insecure=True,
                                select=f"model={model},precision={precision},target={target}")
                assert transfer.digest == bundles[f"{model} {precision} {target}"]["digest"]
                manifest = json.loads((folder / "manifest.json").read_text())
                assert (manifest["model"]["variant"], manifest["precision"], manifest["target"]) == (
                    model, precision, target)
                assert verify(folder).passed, folder
    # the command as users type it, once
    cli = subprocess.run([sys.executable, "-m", "builder", "pull", f"{world['registry']}/acme/detectors:1.0",
                          str(tmp_path / "cli"), "--insecure", "--select", "model=ppyoloe_s,precision=fp16,target=triton"],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    verified = subprocess.run([sys.executable, "-m", "builder", "verify", str(tmp_path / "cli")], capture_output=True,
                              text=True, timeout=300)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    ambiguous = subprocess.run([sys.executable, "-m", "builder", "pull", f"{world['registry']}/acme/detectors:1.0",
                                str(tmp_path / "two"), "--insecure", "--select", "model=ppyoloe_s,precision=fp16"],
                               capture_output=True, text=True, timeout=120)
    assert ambiguous.returncode == 2 and ambiguous.stderr.count("error:") == 1
    assert "2 bundles of" in ambiguous.stderr and "target" in ambiguous.stderr
    assert not (tmp_path / "two").exists()
    index = _json(f"http://{world['registry']}/v2/acme/detectors/manifests/1.0",
                  "application/vnd.oci.image.index.v1+json")
    assert index["artifactType"] == "application/vnd.builder.release.v1" and len(index["manifests"]) == 8
    for entry in index["manifests"]:
        said = {k.removeprefix("dev.builder."): v for k, v in entry["annotations"].items()}
        bundle = bundles[f"{said['model']} {said['precision']} {said['target']}"]
        assert entry["digest"] == bundle["digest"] and said["build-key"] == bundle["build_key"]
        assert said["accuracy"] == bundle["accuracy"] and said["accuracy"].endswith(", verified")
    for page in ("report.md", "report.html"):
        text = (world["root"] / "report-first" / page).read_text()
        assert "ppyoloe_s fp32 standalone" in text and bundles["ppyoloe_s fp32 standalone"]["digest"][7:19] in text


def test_an_unchanged_release_builds_nothing(world):
    done, report = release(world, release_file(world, "again"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert {b["status"] for b in report["bundles"]} == {"cached"}
    first = json.loads((world["root"] / "report-first" / "report.json").read_text())
    assert report["index"] == first["index"]  # the same index, byte for byte


def test_changing_one_precision_rebuilds_only_the_bundles_it_affects(world):
    # verify: false: whether INT8 passes its gate rests on the CPU's int8 kernels (AVX2 and VNNI differ); what
    # this checks is which bundles are built
    done, report = release(world, release_file(world, "changed", precisions=("fp32", "int8"), version="1.1",
                                               verify=False))
    assert done.returncode == 0, done.stderr[-3000:]
    statuses = {name: b["status"] for name, b in by_bundle(report).items()}
    assert statuses == {f"{m} {p} {t}": ("cached" if p == "fp32" else "built")
                        for m in MODELS for p in ("fp32", "int8") for t in ("triton", "standalone")}
    first = by_bundle(json.loads((world["root"] / "report-first" / "report.json").read_text()))
    for name, bundle in by_bundle(report).items():
        if bundle["status"] == "cached":
            assert bundle["digest"] == first[name]["digest"]


def test_a_build_no_node_can_run_is_reported_up_front(world):
    path = release_file(world, "unschedulable", version="1.2",
                        include=[{"model": "yolo_nas_s", "precision": "fp16", "target": "triton", "engine": "tensorrt",
                                  "gpu": "L4"}],
                        matrix={"model": ["yolo_nas_s"], "precision": ["fp32"], "target": ["standalone"]},
                        weights={"yolo_nas_s": str(world["weights"]["yolo_nas_s"])})
    done, report = release(world, path)
    assert done.returncode == 4, done.stdout + done.stderr
    assert done.stderr.strip().splitlines()[-1] == "error: 1 of 2 bundles failed; no index was pushed"
    [failed] = [b for b in report["bundles"] if b["bundle"].startswith("yolo_nas_s fp16 triton L4")]
    assert failed["status"] == "failed" and "no node of the cluster offers" in failed["error"]
    assert "accelerator_type:L4" in failed["error"] and failed["attempts"] == 0
    assert report["index"] is None
    assert "1.2" not in _tags(world)


def test_cluster_local_starts_ray_in_this_process_and_max_parallel_bounds_the_builds(world):
    path = release_file(world, "local", version="3.0", verify=False, defaults={"input_image_shape": [64, 64]},
                        include=[], matrix={"model": list(MODELS), "precision": ["fp32"], "target": ["standalone"]})
    report = world["root"] / "report-local"
    done = subprocess.run([sys.executable, "-m", "builder", "release", str(path), "--cluster", "local",
                           "--max-parallel", "1", "--report-dir", str(report)], capture_output=True, text=True,
                          timeout=600, env=_env())
    assert done.returncode == 0, done.stderr[-3000:]
    bundles = json.loads((report / "report.json").read_text())["bundles"]
    assert [b["status"] for b in bundles] == ["built", "built"]
    assert bundles[0]["node"] == bundles[1]["node"] and "head" in bundles[0]["node"]  # its own one-node Ray
    lines = done.stderr.splitlines()
    first_done = next(i for i, line in enumerate(lines) if line.startswith("note: (1/2)"))
    second = next(p for p in ("[1]", "[2]") if p not in lines[first_done])
    # one build at a time: the second starts only after the first is done
    assert not any(line.startswith(f"note: {second}") for line in lines[:first_done]), done.stderr


def test_a_node_killed_mid_build_is_retried_elsewhere_and_nothing_partial_is_pushed(world):
    path = release_file(world, "killed", precisions=("fp32",), version="2.0", verify=False,
                        defaults={"input_image_shape": [96, 96]}, include=[],
                        matrix={"model": list(MODELS), "precision": ["fp32"], "target": ["standalone"]})
    process = subprocess.Popen([sys.executable, "-m", "builder", "release", str(path), "--address",
                                world["cluster"].address, "--report-dir", str(world["root"] / "report-killed")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    seen = []
    for line in process.stderr:  # wait for a build to be under way on the second node, then take the node away
        seen.append(line)
        if "(accelerator_type:T4): exporting" in line:
            world["second"].kill()
            break
    else:
        pytest.fail("no build started on the second node:\n" + "".join(seen))
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, "".join(seen) + stderr
    assert "Traceback" not in stderr and "(raylet)" not in stdout, stdout  # Ray's own notices stay off stdout
    # the killed build had no time to clean up: its scratch folder (the bundle half made) is still in its TMPDIR
    assert len(_scratch(world["second"].tmp)) == 1, sorted(p.name for p in world["second"].tmp.iterdir())
    assert stdout.splitlines()[-1].startswith("2 built, 0 cached, 0 failed; index "), stdout
    report = json.loads((world["root"] / "report-killed" / "report.json").read_text())
    bundles = report["bundles"]
    assert {b["status"] for b in bundles} == {"built"}
    retried = [b for b in bundles if b["attempts"] == 2]
    assert len(retried) == 1 and "head" in retried[0]["node"], bundles
    # every bundle tag in the registry is a whole bundle: pull each and check every file
    from builder.api import pull

    tags = _tags(world)
    assert "2.0" in tags
    for tag in (t for t in tags if t.startswith("build-")):
        pull(f"{world['registry']}/acme/detectors:{tag}", world["root"] / "pulled" / tag, insecure=True)


def test_the_next_build_on_the_killed_nodes_machine_sweeps_what_the_killed_build_left(world):
    killed = world["second"]
    [left] = _scratch(killed.tmp)
    # the machine comes back (the same TMPDIR) and a build is pinned to it: before its own work, it sweeps
    world["cluster"].add_node("second-again", num_cpus=1, resources=GPU_NODE_RESOURCES, tmp=killed.tmp)
    path = release_file(world, "after-kill", version="2.1", verify=False,  # a name of its own: a key not built yet
                        defaults={"input_image_shape": [64, 64], "name": "swept"},
                        matrix={"model": ["ppyoloe_s"], "precision": ["fp32"], "target": ["standalone"]},
                        include=[{"resources": {"accelerator_type:T4": 0.001}}],
                        weights={"ppyoloe_s": str(world["weights"]["ppyoloe_s"])})
    done, report = release(world, path)
    assert done.returncode == 0, done.stderr[-3000:]
    [bundle] = report["bundles"]
    assert bundle["status"] == "built" and "accelerator_type:T4" in bundle["node"], bundle
    assert not left.exists() and _scratch(killed.tmp) == []  # the dead build's leftover, and its own scratch


def _scratch(tmp: pathlib.Path) -> list[pathlib.Path]:
    """The scratch folders of release builds in a node's TMPDIR (builder.releases.worker.SCRATCH_NAME)."""
    return [p for p in tmp.iterdir() if p.name.startswith(".builder-release.") and p.name.endswith(".build")]


def _json(url: str, accept: str) -> dict:
    request = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.load(answer)


def _tags(world) -> list[str]:
    with urllib.request.urlopen(f"http://{world['registry']}/v2/acme/detectors/tags/list", timeout=30) as answer:
        return json.load(answer)["tags"] or []
