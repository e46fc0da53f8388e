"""A small OCI distribution client: blobs and manifests over HTTP(S), with Basic and Bearer-token auth.

Written for bundles rather than borrowed from oras-py: its requests retry with sleeps of up to 81 s (an
unreachable registry took minutes to report), and a push must control the exact manifest bytes so the
same bundle always gets the same digest. The artifacts it writes are plain ORAS artifacts (tests pull
them with oras).
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import pathlib
import subprocess
import urllib.parse
from typing import Optional

from builder.core.errors import UserError
from builder.oci.reference import PASSWORD_VARIABLE, USERNAME_VARIABLE, Reference, credentials

MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
TIMEOUT = 60  # seconds per request
CHUNK = 1 << 20


def manifest_bytes(manifest: dict) -> bytes:
    """The canonical bytes of a manifest: the registry stores and digests exactly these."""
    return json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode("utf-8")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class RegistryClient:
    def __init__(self, reference: Reference, insecure: bool = False):
        import requests

        self.ref = reference
        self.base = f"{'http' if insecure else 'https'}://{reference.registry}/v2/{reference.repository}"
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "builder"
        self.basic = _basic_credentials(reference.registry)
        self.token: Optional[str] = None

    # --- requests with auth -------------------------------------------------------------------------

    def request(self, method: str, url: str, **kwargs):
        import requests

        for attempt in range(2):
            headers = dict(kwargs.pop("headers", {}) or {})
            if self.token:
                headers["Authorization"] = f"Bearer {self.token}"
            elif self.basic:
                headers["Authorization"] = f"Basic {self.basic}"
            try:
                response = self.session.request(method, url, headers=headers, timeout=TIMEOUT, **kwargs)
            except requests.exceptions.SSLError as e:
                raise UserError(f"TLS to {self.ref.registry} failed: {_reason(e)}",
                                hint="--insecure for a plain-HTTP registry") from None
            except requests.exceptions.ConnectionError as e:
                raise UserError(f"cannot reach registry {self.ref.registry}: {_reason(e)}") from None
            except requests.exceptions.Timeout:
                raise UserError(f"registry {self.ref.registry} did not answer within {TIMEOUT} s") from None
            if response.status_code != 401 or attempt == 1:
                break
            challenge = response.headers.get("WWW-Authenticate", "")
            if challenge.lower().startswith("bearer"):
                self.token = self._fetch_token(challenge)
            elif not self.basic:
                break  # no credentials to offer
            kwargs["headers"] = headers
            if "data" in kwargs and hasattr(kwargs["data"], "seek"):
                kwargs["data"].seek(0)
        if response.status_code == 401:
            raise UserError(f"registry {self.ref.registry} refused access to {self.ref.repository}",
                            hint=f"set {USERNAME_VARIABLE} and {PASSWORD_VARIABLE}, or log in with docker login")
        if response.status_code == 403:
            raise UserError(f"registry {self.ref.registry} denied access to {self.ref.repository} (403)")
        return response

    def _fetch_token(self, challenge: str) -> str:
        fields = dict(part.split("=", 1) for part in _split_challenge(challenge[len("bearer"):].strip()))
        fields = {k.strip(): v.strip().strip('"') for k, v in fields.items()}
        realm = fields.pop("realm", None)
        if not realm:
            raise UserError(f"registry {self.ref.registry} asked for a token without saying where to get one")
        headers = {"Authorization": f"Basic {self.basic}"} if self.basic else {}
        response = self.session.get(realm, params=fields, headers=headers, timeout=TIMEOUT)
        if response.status_code != 200:
            raise UserError(f"registry {self.ref.registry} refused a token ({response.status_code})",
                            hint=f"set {USERNAME_VARIABLE} and {PASSWORD_VARIABLE}, or log in with docker login")
        body = response.json()
        return body.get("token") or body["access_token"]

    def _check(self, response, what: str) -> None:
        if response.status_code >= 400:
            detail = ""
            try:
                errors = response.json().get("errors") or []
                detail = "; ".join(e.get("message", "") for e in errors if isinstance(e, dict))
            except ValueError:
                pass
            raise UserError(f"{what} failed on {self.ref.registry}: HTTP {response.status_code}"
                            + (f" ({detail})" if detail else ""))

    # --- blobs and manifests ------------------------------------------------------------------------

    def blob_exists(self, digest: str) -> bool:
        response = self.request("HEAD", f"{self.base}/blobs/{digest}")
        return response.status_code == 200

    def upload_blob(self, path: pathlib.Path, media_type: str, annotations: Optional[dict] = None) -> dict:
        """A descriptor of the file, uploaded unless the registry has it (monolithic POST + PUT)."""
        from builder.core.hashing import sha256_of

        descriptor = {"mediaType": media_type, "digest": f"sha256:{sha256_of(path)}", "size": path.stat().st_size}
        if annotations:
            descriptor["annotations"] = annotations
        if self.blob_exists(descriptor["digest"]):
            return descriptor
        started = self.request("POST", f"{self.base}/blobs/uploads/")
        self._check(started, "starting an upload")
        location = urllib.parse.urljoin(self.base + "/", started.headers["Location"])
        separator = "&" if "?" in location else "?"
        with open(path, "rb") as f:
            done = self.request("PUT", f"{location}{separator}digest={descriptor['digest']}", data=f,
                                headers={"Content-Type": "application/octet-stream",
                                         "Content-Length": str(descriptor["size"])})
        self._check(done, f"uploading {path.name}")
        return descriptor

    def put_manifest(self, manifest: dict, target: str) -> str:
        data = manifest_bytes(manifest)
        response = self.request("PUT", f"{self.base}/manifests/{target}", data=data,
                                headers={"Content-Type": MANIFEST_MEDIA_TYPE})
        self._check(response, f"writing {self.ref.repository}:{target}")
        digest = sha256_digest(data)
        returned = response.headers.get("Docker-Content-Digest")
        if returned and returned != digest:
            raise UserError(f"registry {self.ref.registry} stored the manifest as {returned}, not {digest}")
        return digest

    def get_manifest(self) -> tuple[dict, str]:
        """The manifest the reference names, and the digest of its bytes (checked against a pinned digest)."""
        response = self.request("GET", f"{self.base}/manifests/{self.ref.target}",
                                headers={"Accept": MANIFEST_MEDIA_TYPE})
        if response.status_code == 404:
            raise UserError(f"'{self.ref.name}' does not exist")
        self._check(response, f"reading {self.ref.name}")
        digest = sha256_digest(response.content)
        if self.ref.digest and digest != self.ref.digest:
            raise UserError(f"'{self.ref.name}': the registry sent a manifest with digest {digest}")
        try:
            return json.loads(response.content), digest
        except ValueError:
            raise UserError(f"'{self.ref.name}' is not a JSON manifest") from None

    def fetch_blob(self, descriptor: dict, destination: pathlib.Path, max_size: int) -> None:
        """The blob into `destination`, its size and sha256 checked against the descriptor."""
        size, digest = descriptor.get("size"), descriptor.get("digest", "")
        if not isinstance(size, int) or not 0 <= size <= max_size or not digest.startswith("sha256:"):
            raise UserError(f"'{self.ref.name}': a layer descriptor is invalid (size {size}, digest {digest!r})")
        response = self.request("GET", f"{self.base}/blobs/{digest}", stream=True)
        self._check(response, f"downloading {digest}")
        hasher, received = hashlib.sha256(), 0
        with open(destination, "wb") as out:
            for block in response.iter_content(CHUNK):
                received += len(block)
                if received > size:
                    break
                hasher.update(block)
                out.write(block)
        if received != size or f"sha256:{hasher.hexdigest()}" != digest:
            raise UserError(f"'{self.ref.name}': blob {digest} does not match its digest (tampered or corrupted)")


def _basic_credentials(registry: str) -> Optional[str]:
    """base64(user:password) from the environment, else from the docker config (auths, credHelpers, credsStore)."""
    given = credentials()
    if given:
        return base64.b64encode(f"{given[0]}:{given[1]}".encode()).decode()
    config_dir = pathlib.Path(os.environ.get("DOCKER_CONFIG", pathlib.Path.home() / ".docker"))
    try:
        config = json.loads((config_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    entry = config.get("auths", {}).get(registry) or config.get("auths", {}).get(f"https://{registry}") or {}
    if entry.get("auth"):
        return entry["auth"]
    helper = config.get("credHelpers", {}).get(registry) or config.get("credsStore")
    if not helper:
        return None
    try:
        done = subprocess.run([f"docker-credential-{helper}", "get"], input=registry, capture_output=True, text=True,
                              timeout=30)
        secret = json.loads(done.stdout) if done.returncode == 0 else None
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None
    if not secret:
        return None
    return base64.b64encode(f"{secret['Username']}:{secret['Secret']}".encode()).decode()


def _split_challenge(text: str) -> list[str]:
    """'realm="a,b",service="x"' -> ['realm="a,b"', 'service="x"'] (commas inside quotes kept)."""
    parts, current, quoted = [], "", False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append(current)
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current)
    return [p for p in parts if "=" in p]


def _reason(error: Exception) -> str:
    text = str(error)
    for marker in ("Connection refused", "Name or service not known", "timed out", "certificate verify failed"):
        if marker in text:
            return marker
    return text.splitlines()[0][:200]
