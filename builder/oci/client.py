"""A small OCI distribution client: blobs and manifests over HTTP(S), with Basic and Bearer-token auth.

Written for bundles rather than borrowed from oras-py: its requests retry with sleeps of up to 81 s (an
unreachable registry took minutes to report), and a push must control the exact manifest bytes so the
same bundle always gets the same digest. The artifacts it writes are plain ORAS artifacts (tests pull
them with oras).
"""
from __future__ import annotations

import hashlib
import json
import pathlib
import urllib.parse
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from builder.core.errors import UserError
from builder.oci.reference import DIGEST, PASSWORD_VARIABLE, USERNAME_VARIABLE, Reference, basic_credentials

MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
TIMEOUT = 60  # seconds per request
CHUNK = 1 << 20
#: registries refuse manifests above 4 MiB (distribution's limit), so a larger answer is not a manifest
MAX_MANIFEST_BYTES = 4 << 20
#: a token or an error body is small; reading more only lets a hostile server fill memory
MAX_SMALL_BODY = 1 << 20
#: no blob of a bundle comes near this; the bound keeps sizes from a registry sane before any arithmetic
MAX_BLOB_BYTES = 1 << 40


class _OCIRecord(BaseModel):
    # OCI lets writers add fields (and a registry may), but the fields read here must have exactly their types
    model_config = ConfigDict(extra="allow", frozen=True, strict=True)


class Descriptor(_OCIRecord):
    """An OCI content descriptor: what a blob is, its sha256 and its size."""

    mediaType: str = Field(min_length=1, max_length=255)
    digest: str = Field(pattern=rf"^{DIGEST.pattern}$")
    size: int = Field(ge=0, le=MAX_BLOB_BYTES)
    annotations: Optional[dict[str, str]] = None


class ImageManifest(_OCIRecord):
    """An OCI image manifest (what an ORAS artifact is), validated as it arrives."""

    schemaVersion: Literal[2]
    mediaType: Optional[str] = None
    artifactType: Optional[str] = None
    config: Descriptor
    layers: list[Descriptor] = Field(max_length=1024)
    annotations: Optional[dict[str, str]] = None


class ImageIndex(_OCIRecord):
    """An OCI image index: what a release is (one entry per bundle, each with its annotations)."""

    schemaVersion: Literal[2]
    mediaType: Optional[str] = None
    artifactType: Optional[str] = None
    manifests: list[Descriptor] = Field(max_length=4096)
    annotations: Optional[dict[str, str]] = None


def parse_record(record: type, content: bytes, name: str):
    """An OCI manifest or index from a registry, validated; a bad one is one line naming the field."""
    try:
        return record.model_validate_json(content)
    except ValidationError as e:
        first = e.errors()[0]
        where = _shown(".".join(str(p) for p in first["loc"])) or "the manifest"
        raise UserError(f"'{name}': the registry sent an invalid manifest: {where}: {first['msg']}") from None


def _media_type(content: bytes) -> Optional[str]:
    try:
        value = json.loads(content).get("mediaType")
    except (ValueError, AttributeError, RecursionError):
        return None
    return value if isinstance(value, str) else None


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
        self.basic = basic_credentials(reference.registry)
        self.token: Optional[str] = None

    # --- requests with auth -------------------------------------------------------------------------

    def _send(self, method: str, url: str, token_service: bool = False, **kwargs):
        """One HTTP request; any network failure is one line naming the registry (and the token service's host
        when that is what failed)."""
        import requests

        where = f"registry {self.ref.registry}"
        if token_service:
            where = f"{_shown(urllib.parse.urlsplit(url).netloc or url)}, the token service of {where}"
        try:
            return self.session.request(method, url, timeout=TIMEOUT, **kwargs)
        except requests.exceptions.SSLError as e:
            raise UserError(f"TLS to {where} failed: {_reason(e)}",
                            hint="--insecure for a plain-HTTP registry") from None
        except requests.exceptions.ConnectionError as e:
            raise UserError(f"cannot reach {where}: {_reason(e)}") from None
        except requests.exceptions.Timeout:
            raise UserError(f"{where} did not answer within {TIMEOUT} s") from None
        except (requests.exceptions.RequestException, OSError) as e:
            # a reset mid-answer, a broken chunked body, a redirect loop, an unusable Location or realm
            raise UserError(f"request to {where} failed: {_reason(e)}") from None

    def request(self, method: str, url: str, **kwargs):
        for attempt in range(2):
            headers = dict(kwargs.pop("headers", {}) or {})
            if self.token:
                headers["Authorization"] = f"Bearer {self.token}"
            elif self.basic:
                headers["Authorization"] = f"Basic {self.basic}"
            response = self._send(method, url, headers=headers, **kwargs)
            if response.status_code != 401 or attempt == 1:
                break
            response.close()
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
        response = self._send("GET", realm, token_service=True, params=fields, headers=headers, stream=True)
        if response.status_code != 200:
            response.close()
            raise UserError(f"registry {self.ref.registry} refused a token ({response.status_code})",
                            hint=f"set {USERNAME_VARIABLE} and {PASSWORD_VARIABLE}, or log in with docker login")
        try:
            body = json.loads(self._body(response, MAX_SMALL_BODY, "a token"))
        except (ValueError, RecursionError):
            body = None
        token = (body.get("token") or body.get("access_token")) if isinstance(body, dict) else None
        # the token goes into a header: anything but a plain printable word would break or inject into it
        if not isinstance(token, str) or not token or not token.isascii() or not token.isprintable() or " " in token:
            raise UserError(f"registry {self.ref.registry} answered a token request without a usable token")
        return token

    def _body(self, response, limit: int, what: str) -> bytes:
        """The body of a streamed response, refused past `limit` bytes."""
        import requests

        data = bytearray()
        try:
            for block in response.iter_content(CHUNK):
                data += block
                if len(data) > limit:
                    raise UserError(f"registry {self.ref.registry} sent more than {limit:,} bytes for {what}")
        except (requests.exceptions.RequestException, OSError) as e:
            raise UserError(f"registry {self.ref.registry} broke off while sending {what}: {_reason(e)}") from None
        finally:
            response.close()
        return bytes(data)

    def _check(self, response, what: str) -> None:
        if response.status_code >= 400:
            detail = ""
            try:
                body = json.loads(self._body(response, MAX_SMALL_BODY, "an error"))
            except (UserError, ValueError, RecursionError):
                body = None  # the status says enough
            errors = body.get("errors") if isinstance(body, dict) else None
            if isinstance(errors, list):
                detail = _shown("; ".join(e["message"] for e in errors
                                          if isinstance(e, dict) and isinstance(e.get("message"), str)), 300)
            raise UserError(f"{what} failed on registry {self.ref.registry}: HTTP {response.status_code}"
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
        if not started.headers.get("Location"):
            raise UserError(f"registry {self.ref.registry} started an upload without saying where to send it")
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
            raise UserError(f"registry {self.ref.registry} stored the manifest as {_shown(returned)}, not {digest}")
        return digest

    def fetch_manifest(self, target: Optional[str] = None, missing_ok: bool = False) -> Optional[tuple[bytes, str]]:
        """The bytes of the manifest or index `target` (default: the reference's) names, and their digest
        (checked against a pinned digest); None for a tag that does not exist when `missing_ok`."""
        target = target or self.ref.target
        shown = self.ref.name if target == self.ref.target else f"{self.ref.registry}/{self.ref.repository}:{target}"
        response = self.request("GET", f"{self.base}/manifests/{target}",
                                headers={"Accept": f"{MANIFEST_MEDIA_TYPE}, {INDEX_MEDIA_TYPE}"}, stream=True)
        if response.status_code == 404:
            response.close()
            if missing_ok:
                return None
            raise UserError(f"'{shown}' does not exist")
        self._check(response, f"reading {shown}")
        content = self._body(response, MAX_MANIFEST_BYTES, "a manifest")
        digest = sha256_digest(content)
        expected = target if DIGEST.fullmatch(target) else None
        if expected and digest != expected:
            raise UserError(f"'{shown}': the registry sent a manifest with digest {digest}")
        return content, digest

    def get_manifest(self) -> tuple[ImageManifest, str]:
        """The manifest the reference names, validated, and the digest of its bytes (checked against a pinned
        digest). A release's index is named as such: a bundle is picked from it with a selection."""
        content, digest = self.fetch_manifest()
        if _media_type(content) == INDEX_MEDIA_TYPE:
            raise UserError(f"'{self.ref.name}' is a release index, not one bundle",
                            hint="pick a bundle with --select, e.g. --select model=yolo_nas_s,precision=fp16")
        return parse_record(ImageManifest, content, self.ref.name), digest

    def put_index(self, index: dict, target: str) -> tuple[str, int]:
        """Write an OCI image index (its manifests must be in this repository already): its digest and size."""
        data = manifest_bytes(index)
        response = self.request("PUT", f"{self.base}/manifests/{target}", data=data,
                                headers={"Content-Type": INDEX_MEDIA_TYPE})
        self._check(response, f"writing {self.ref.repository}:{target}")
        return sha256_digest(data), len(data)

    def fetch_blob(self, descriptor: Descriptor, destination: pathlib.Path, max_size: int) -> None:
        """The blob into `destination`, its size and sha256 checked against the descriptor."""
        import requests

        size, digest = descriptor.size, descriptor.digest
        if size > max_size:
            raise UserError(f"'{self.ref.name}': blob {digest} is {size:,} bytes; at most {max_size:,} are accepted")
        response = self.request("GET", f"{self.base}/blobs/{digest}", stream=True)
        self._check(response, f"downloading {digest}")
        hasher, received = hashlib.sha256(), 0
        try:
            # an OSError from writing is the caller's disk, not the network: it propagates as such
            with open(destination, "wb") as out:
                blocks = response.iter_content(CHUNK)
                while True:
                    try:
                        block = next(blocks, None)
                    except (requests.exceptions.RequestException, OSError) as e:
                        raise UserError(f"registry {self.ref.registry} broke off while sending {digest}: "
                                        f"{_reason(e)}") from None
                    if block is None:
                        break
                    received += len(block)
                    if received > size:
                        break
                    hasher.update(block)
                    out.write(block)
        finally:
            response.close()
        if received != size or f"sha256:{hasher.hexdigest()}" != digest:
            raise UserError(f"'{self.ref.name}': blob {digest} does not match its digest (tampered or corrupted)")


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
    for marker in ("Connection refused", "Connection reset by peer", "Remote end closed connection without response",
                   "Connection broken", "Name or service not known", "Temporary failure in name resolution",
                   "No route to host", "Network is unreachable", "timed out", "certificate verify failed",
                   "redirects"):
        if marker in text:
            return marker
    return _shown(" ".join(text.split())) or type(error).__name__


def _shown(text: str, limit: int = 200) -> str:
    """Text from the network as a message may show it: no control characters (a terminal would obey them) and
    no unbounded length."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit])
    return shown + ("..." if len(text) > limit else "")
