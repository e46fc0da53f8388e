"""push/pull against a real registry: round trip, idempotence, digests, tampering, hostile archives, auth."""
from __future__ import annotations

import gzip
import io
import json
import pathlib
import subprocess
import sys
import tarfile
import time

import pytest

import builder
from builder.core.errors import UserError
from builder.oci.client import RegistryClient
from builder.oci.reference import parse_reference
from builder.oci.transfer import ARTIFACT_TYPE, CONFIG_MEDIA_TYPE, LAYER_MEDIA_TYPE, pull, push
from oci_registry import failing_proxy, running_registry

pytestmark = pytest.mark.registry


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    with running_registry(tmp_path_factory.mktemp("registry")) as address:
        yield address


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return builder.bundle(tmp_path_factory.mktemp("b") / "det", target="standalone", model="yolo_nas_s",
                          input_image_shape=(64, 64)).destination


def _files(folder: pathlib.Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_push_then_pull_gives_the_same_bytes(registry, bundle, tmp_path):
    pushed = push(bundle, f"oci://{registry}/models/det:1.0", insecure=True)
    pulled = pull(f"{registry}/models/det:1.0", tmp_path / "pulled", insecure=True)
    assert pulled.digest == pushed.digest
    assert _files(tmp_path / "pulled") == _files(bundle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pulled"]  # no staging or download left behind


def test_push_is_idempotent_and_the_digest_pins_a_pull(registry, bundle, tmp_path):
    first = push(bundle, f"{registry}/models/det:a", insecure=True)
    again = push(bundle, f"{registry}/models/det:a", insecure=True)
    other_tag = push(bundle, f"{registry}/models/det:b", insecure=True)
    assert first.digest == again.digest == other_tag.digest
    pull(f"{registry}/models/det@{first.digest}", tmp_path / "pinned", insecure=True)
    assert _files(tmp_path / "pinned") == _files(bundle)
    with pytest.raises(UserError, match="does not exist"):
        pull(f"{registry}/models/det@sha256:{'0' * 64}", tmp_path / "none", insecure=True)


def test_artifact_has_our_media_types_and_annotations_and_oras_reads_it(registry, bundle, tmp_path):
    import oras.client

    push(bundle, f"{registry}/models/det:oras", insecure=True)
    client = RegistryClient(parse_reference(f"{registry}/models/det:oras"), insecure=True)
    manifest, _ = client.get_manifest()
    bundle_manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest.artifactType == ARTIFACT_TYPE and manifest.config.mediaType == CONFIG_MEDIA_TYPE
    assert [layer.mediaType for layer in manifest.layers] == [LAYER_MEDIA_TYPE]
    annotations = manifest.annotations
    assert annotations["dev.builder.model"] == "yolo_nas_s" and annotations["dev.builder.target"] == "standalone"
    assert annotations["dev.builder.precision"] == "fp32" and annotations["dev.builder.output-format"] == "batch"
    assert annotations["dev.builder.builder-version"] == builder.__version__
    import hashlib

    assert annotations["dev.builder.manifest-sha256"] == hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()
    assert bundle_manifest["name"] == annotations["org.opencontainers.image.title"]
    # an ORAS client sees a normal artifact whose one file is the bundle archive
    files = oras.client.OrasClient(insecure=True).pull(target=f"{registry}/models/det:oras", outdir=str(tmp_path / "oras"))
    [archive] = [pathlib.Path(f) for f in files]
    assert archive.name == "yolo_nas_s.tar.gz"
    with tarfile.open(archive) as tar:
        assert "yolo_nas_s/manifest.json" in tar.getnames()


def test_a_tampered_layer_is_refused_and_nothing_is_written(tmp_path, bundle):
    with running_registry(tmp_path / "reg") as address:
        pushed = push(bundle, f"{address}/models/det:1", insecure=True)
        client = RegistryClient(parse_reference(f"{address}/models/det:1"), insecure=True)
        manifest, _ = client.get_manifest()
        digest = manifest.layers[0].digest.removeprefix("sha256:")
        [blob] = (tmp_path / "reg" / "storage").rglob(f"blobs/sha256/{digest[:2]}/{digest}/data")
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0xFF
        blob.write_bytes(bytes(data))
        with pytest.raises(UserError, match="does not match its digest"):
            pull(f"{address}/models/det:1", tmp_path / "out", insecure=True)
        assert pushed.digest and not (tmp_path / "out").exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith((".out", "builder-pull"))]


def _hostile_archive(kind: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        def add(name, data=b"x", **fields):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            for key, value in fields.items():
                setattr(info, key, value)
            tar.addfile(info, io.BytesIO(data))

        add("det/manifest.json", b"{}")
        if kind == "dotdot":
            add("det/../../evil.txt")
        elif kind == "absolute":
            add("/tmp/builder-evil.txt")
        elif kind == "symlink":
            add("det/link", b"", type=tarfile.SYMTYPE, linkname="/etc/passwd")
        elif kind == "hardlink":
            add("det/hard", b"", type=tarfile.LNKTYPE, linkname="det/manifest.json")
        elif kind == "device":
            add("det/dev", b"", type=tarfile.CHRTYPE, devmajor=1, devminor=3)
    return gzip.compress(buffer.getvalue(), mtime=0)


@pytest.mark.parametrize("kind, message", [
    ("dotdot", "escapes the bundle folder"), ("absolute", "escapes the bundle folder"),
    ("symlink", "link or a device"), ("hardlink", "link or a device"), ("device", "link or a device")])
def test_hostile_archives_are_refused(kind, message, registry, bundle, tmp_path):
    ref = parse_reference(f"{registry}/models/hostile:{kind}")
    client = RegistryClient(ref, insecure=True)
    layer_path, config_path = tmp_path / "layer.tar.gz", tmp_path / "manifest.json"
    layer_path.write_bytes(_hostile_archive(kind))
    # a real bundle's manifest as the config: the pull gets past it to the archive's entries
    config_path.write_bytes((bundle / "manifest.json").read_bytes())
    client.put_manifest({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                         "artifactType": ARTIFACT_TYPE, "config": client.upload_blob(config_path, CONFIG_MEDIA_TYPE),
                         "layers": [client.upload_blob(layer_path, LAYER_MEDIA_TYPE)]}, ref.tag)
    out = tmp_path / "work" / "out"
    out.parent.mkdir()
    with pytest.raises(UserError, match=message):
        pull(ref.name, out, insecure=True)
    assert list(out.parent.iterdir()) == []
    assert not (tmp_path / "evil.txt").exists() and not pathlib.Path("/tmp/builder-evil.txt").exists()


def test_a_bundle_that_differs_from_its_manifest_is_not_pushed(registry, bundle, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    (copy / "labels.txt").write_text("changed\n")
    with pytest.raises(UserError, match="differ from the manifest's sha256: labels.txt"):
        push(copy, f"{registry}/models/det:tampered", insecure=True)


def test_a_push_that_fails_midway_leaves_the_tag_unchanged(registry, bundle, tmp_path):
    import shutil

    before = push(bundle, f"{registry}/models/midway:1", insecure=True)
    changed = tmp_path / "changed"
    shutil.copytree(bundle, changed)
    # another bundle (version 2, in build.yaml and manifest.json alike): a new config blob, hence a new digest
    from builder.core.manifest import write_manifest

    spec = (changed / "build.yaml").read_text()
    (changed / "build.yaml").write_text(spec.replace("\nversion: 1\n", "\nversion: 2\n"))
    manifest = json.loads((changed / "manifest.json").read_text())
    del manifest["files"], manifest["manifest_format"]
    write_manifest(changed, {**manifest, "version": 2})
    # the registry breaks while the blobs go up: the layer's upload answers 500
    with failing_proxy(registry, lambda method, path: method == "PUT" and "/blobs/uploads/" in path) as proxy:
        with pytest.raises(UserError, match="HTTP 500"):
            push(changed, f"{proxy}/models/midway:1", insecure=True)
    client = RegistryClient(parse_reference(f"{registry}/models/midway:1"), insecure=True)
    assert client.get_manifest()[1] == before.digest


def test_a_registry_that_needs_credentials(tmp_path, bundle, monkeypatch):
    import bcrypt

    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))  # no credentials from the developer's login
    with running_registry(tmp_path / "reg", htpasswd=f"ci:{hashed}\n") as address:
        with pytest.raises(UserError, match="refused access") as e:
            push(bundle, f"{address}/models/det:1", insecure=True)
        assert "BUILDER_REGISTRY_USERNAME" in e.value.one_line()
        monkeypatch.setenv("BUILDER_REGISTRY_USERNAME", "ci")
        monkeypatch.setenv("BUILDER_REGISTRY_PASSWORD", "wrong")
        with pytest.raises(UserError, match="refused access"):
            push(bundle, f"{address}/models/det:1", insecure=True)
        monkeypatch.setenv("BUILDER_REGISTRY_PASSWORD", "s3cret")
        pushed = push(bundle, f"{address}/models/det:1", insecure=True)
        # the docker config works too (what `docker login` writes)
        monkeypatch.delenv("BUILDER_REGISTRY_USERNAME")
        monkeypatch.delenv("BUILDER_REGISTRY_PASSWORD")
        import base64

        (tmp_path / "docker").mkdir()
        (tmp_path / "docker" / "config.json").write_text(json.dumps(
            {"auths": {address: {"auth": base64.b64encode(b"ci:s3cret").decode()}}}))
        assert pull(f"{address}/models/det:1", tmp_path / "out", insecure=True).digest == pushed.digest


def test_cli_push_and_pull_print_the_digest_and_never_the_password(registry, bundle, tmp_path):
    env = {"BUILDER_REGISTRY_USERNAME": "someone", "BUILDER_REGISTRY_PASSWORD": "do-not-print-me"}
    import os

    done = subprocess.run([sys.executable, "-m", "builder", "push", str(bundle), f"{registry}/models/cli:1",
                           "--insecure"], capture_output=True, text=True, env={**os.environ, **env})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(f"{registry}/models/cli:1@sha256:")
    assert "do-not-print-me" not in done.stdout + done.stderr
    done = subprocess.run([sys.executable, "-m", "builder", "pull", f"{registry}/models/cli:1", str(tmp_path / "p"),
                           "--insecure"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    done = subprocess.run([sys.executable, "-m", "builder", "pull", f"{registry}/models/cli:1", str(tmp_path / "p"),
                           "--insecure"], capture_output=True, text=True)
    assert done.returncode == 2 and "already exists" in done.stderr


def test_a_pull_by_digest_prints_the_reference_it_can_be_pulled_by_again(registry, bundle, tmp_path):
    pushed = push(bundle, f"{registry}/models/again:1", insecure=True)
    assert str(pushed) == f"{registry}/models/again:1@{pushed.digest}"
    done = subprocess.run([sys.executable, "-m", "builder", "pull", f"{registry}/models/again@{pushed.digest}",
                           str(tmp_path / "a"), "--insecure"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{registry}/models/again@{pushed.digest}"  # not REF@DIGEST@DIGEST
    again = subprocess.run([sys.executable, "-m", "builder", "pull", done.stdout.strip(), str(tmp_path / "b"),
                            "--insecure"], capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout == done.stdout, again.stderr
    assert _files(tmp_path / "b") == _files(bundle)


def test_an_unreachable_registry_is_one_quick_error(bundle):
    started = time.monotonic()
    with pytest.raises(UserError, match="cannot reach registry 127.0.0.1:9"):
        push(bundle, "127.0.0.1:9/models/det:1", insecure=True)
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("text, message", [
    ("det:1", "REGISTRY/REPOSITORY:TAG"), ("models/det:1", "not a registry host"),
    ("r.io/Models/det:1", "not a valid repository"), ("r.io/models/det:bad tag", "not a valid tag"),
    ("r.io/models/det@sha256:1234", "64 hex digits"),
])
def test_bad_references_are_refused(text, message):
    with pytest.raises(UserError) as e:
        parse_reference(text)
    assert message in e.value.one_line()


def test_push_needs_a_tag():
    with pytest.raises(UserError, match="needs a tag"):
        parse_reference("r.io:5000/models/det", need_tag=True)
    assert parse_reference("oci://localhost:5000/a/b").tag == "latest"


def test_build_push_pull_verify_bench(registry, tmp_path):
    """The release path of a bundle on a clean machine, through the CLI as pipelines run it."""
    import os

    from bundle_helpers import lively_weights

    weights = lively_weights(tmp_path / "weights.pth")
    env = dict(os.environ)

    def cli(*args):
        done = subprocess.run([sys.executable, "-m", "builder", *args], capture_output=True, text=True, env=env,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    cli("bundle", "--target", "triton", "--model", "yolo_nas_s", "--weights", str(weights), "--input-shape", "320",
        "--dynamic-batch", "--output", str(tmp_path / "built"))
    reference = f"{registry}/release/det:2.0"
    digest = cli("push", str(tmp_path / "built"), reference, "--insecure").strip().split("@")[1]
    cli("pull", f"{registry}/release/det@{digest}", str(tmp_path / "deployed"), "--insecure")
    verified = json.loads(cli("verify", str(tmp_path / "deployed"), "--json"))
    assert verified["passed"] and verified["overall"]["recall"] == 1.0
    timed = json.loads(cli("bench", str(tmp_path / "deployed"), "--batch-sizes", "1,2", "--duration", "0.3", "--json"))
    assert [r["batch_size"] for r in timed["results"]] == [1, 2]
