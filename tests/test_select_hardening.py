"""`pull --select` against a real registry whose release index lies or cannot tell its bundles apart: the pulled
bundle is held to what the index says of it before anything is written, and an ambiguous selection names the
digests that would pull each bundle."""
from __future__ import annotations

import pathlib

import pytest

import builder
from builder.cli import main
from cli_runs import run_cli

pytestmark = pytest.mark.registry

KEY_A, KEY_B = "a" * 64, "b" * 64


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A registry holding one ppyoloe_s fp32 standalone bundle under two tags, pushed as two releases would push it
    (each with its own build key, so two digests)."""
    from oci_registry import running_registry

    from builder.oci.transfer import push

    root = tmp_path_factory.mktemp("select")
    folder = builder.bundle(root / "det", target="standalone", model="ppyoloe_s", input_image_shape=(64, 64),
                            runner="local").destination
    with running_registry(root / "registry") as address:
        repository = f"{address}/acme/detectors"
        for key in (KEY_A, KEY_B):
            push(folder, f"{repository}:build-{key[:8]}", insecure=True, annotations={"dev.builder.build-key": key})
        yield {"repository": repository, "bundle": folder}


def _index(registry: dict, tag: str, entries: list[tuple[str, dict[str, str]]]) -> str:
    """Push a release index `tag` whose entries point at the bundles tagged build-KEY and say what is given."""
    from builder.oci.client import RegistryClient
    from builder.oci.index import find_bundle, push_index
    from builder.oci.reference import parse_reference

    client = RegistryClient(parse_reference(f"{registry['repository']}:{tag}"), insecure=True)
    push_index(client, tag, [(find_bundle(client, f"build-{key[:8]}"), said) for key, said in entries],
               {"org.opencontainers.image.version": tag})
    return f"{registry['repository']}:{tag}"


def _files(folder: pathlib.Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


TRUE = {"model": "ppyoloe_s", "precision": "fp32", "target": "standalone", "name": "ppyoloe_s"}

# (id, what the one index entry says of the bundle, the selection, a piece of the error line)
LIES = [
    ("another model and precision", {**TRUE, "model": "yolo_nas_s", "precision": "int8"},
     "model=yolo_nas_s,precision=int8", "manifest.json says model=ppyoloe_s"),
    ("another precision", {**TRUE, "precision": "int8"}, "precision=int8", "manifest.json says precision=fp32"),
    ("another target, not selected", {**TRUE, "target": "triton"}, "model=ppyoloe_s",
     "the index says target=triton"),
    ("another name", {**TRUE, "name": "other"}, "name=other", "manifest.json says name=ppyoloe_s"),
    ("another build key", {**TRUE, "build-key": KEY_B}, "build-key=" + KEY_B,
     f"OCI manifest says build-key={KEY_A}"),
]


@pytest.mark.parametrize("case, said, selection, message", LIES, ids=[c[0] for c in LIES])
def test_a_pull_by_selection_refuses_a_bundle_the_index_mislabels(case, said, selection, message, registry, capsys,
                                                                   tmp_path, monkeypatch):
    reference = _index(registry, "lying", [(KEY_A, said)])
    code, errors, stderr = run_cli(["pull", reference, str(tmp_path / "out" / "det"), "--insecure",
                                    "--select", selection], capsys, tmp_path, monkeypatch)
    assert code == 2 and len(errors) == 1 and "Traceback" not in stderr, stderr
    assert message in errors[0] and "is not the bundle the release index says" in errors[0], errors[0]
    assert "downloading" not in stderr  # refused on its manifest.json, before the layer was fetched
    assert not (tmp_path / "out" / "det").exists()


def test_a_pull_by_selection_of_a_truthful_entry_pulls_the_bundle(registry, capsys, tmp_path):
    reference = _index(registry, "truthful", [(KEY_A, {**TRUE, "build-key": KEY_A, "gpu": "T4"}),
                                              (KEY_B, {**TRUE, "build-key": KEY_B, "gpu": "L4"})])
    assert main(["pull", reference, str(tmp_path / "det"), "--insecure", "--select", "gpu=L4"]) == 0
    assert _files(tmp_path / "det") == _files(registry["bundle"])
    assert [p.name for p in tmp_path.iterdir()] == ["det"]


def test_entries_that_differ_only_by_digest_are_named_by_digest(registry, capsys, tmp_path, monkeypatch):
    from builder.oci.client import RegistryClient
    from builder.oci.index import find_bundle
    from builder.oci.reference import parse_reference

    reference = _index(registry, "twins", [(KEY_A, TRUE), (KEY_B, TRUE)])
    client = RegistryClient(parse_reference(reference), insecure=True)
    digests = sorted(find_bundle(client, f"build-{key[:8]}").digest for key in (KEY_A, KEY_B))
    assert digests[0] != digests[1]
    code, errors, stderr = run_cli(["pull", reference, str(tmp_path / "out" / "det"), "--insecure",
                                    "--select", "model=ppyoloe_s"], capsys, tmp_path, monkeypatch)
    assert code == 2 and len(errors) == 1, stderr
    pinned = [f"{registry['repository']}@{digest}" for digest in digests]
    assert errors[0] == (f"error: 2 bundles of '{reference}' match model=ppyoloe_s (no selectable annotation tells "
                         f"them apart: pull one by digest: {pinned[0]}, {pinned[1]})")
    assert main(["pull", pinned[1], str(tmp_path / "det"), "--insecure"]) == 0  # what it names pulls
    assert _files(tmp_path / "det") == _files(registry["bundle"])
