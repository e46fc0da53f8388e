"""Registry references (`registry.example.com/models/yolo_nas_s:1.2.0`, `oci://` accepted) and credentials."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Optional

from builder.core.errors import UserError

# the OCI distribution spec's grammar for repository names and tags
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
DIGEST = re.compile(r"sha256:[a-f0-9]{64}")
HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.[A-Za-z0-9-]+)*(?::[0-9]{1,5})?")

USERNAME_VARIABLE = "BUILDER_REGISTRY_USERNAME"
PASSWORD_VARIABLE = "BUILDER_REGISTRY_PASSWORD"


@dataclass(frozen=True)
class Reference:
    registry: str
    repository: str
    tag: Optional[str]
    digest: Optional[str]

    @property
    def name(self) -> str:
        """What the user named, for messages (never holds credentials)."""
        return self.tagged + (f"@{self.digest}" if self.digest else "")

    @property
    def tagged(self) -> str:
        """registry/repository[:tag]: the reference without its digest."""
        return f"{self.registry}/{self.repository}" + (f":{self.tag}" if self.tag else "")

    def pinned(self, digest: str) -> str:
        """The reference to what was actually transferred: reusable as is (one digest, the tag kept)."""
        return f"{self.tagged}@{digest}"

    @property
    def target(self) -> str:
        """The manifest to fetch or write: the digest when pinned, else the tag."""
        return self.digest or self.tag


def parse_reference(text: str, need_tag: bool = False) -> Reference:
    """REGISTRY/REPOSITORY[:TAG][@sha256:DIGEST]; the registry part needs a dot, a port or 'localhost'."""
    raw = text.removeprefix("oci://")
    problem = f"invalid registry reference '{text}'"
    if "/" not in raw:
        raise UserError(problem, hint="expected REGISTRY/REPOSITORY:TAG, e.g. registry.example.com/models/det:1.0")
    registry, rest = raw.split("/", 1)
    if not HOST.fullmatch(registry) or not ("." in registry or ":" in registry or registry == "localhost"):
        raise UserError(problem, hint=f"'{registry}' is not a registry host (it needs a dot, a port or 'localhost')")
    if ":" in registry and not 0 < int(registry.rsplit(":", 1)[1]) < 65536:
        raise UserError(problem, hint=f"'{registry}' has a port outside 1..65535")
    digest = None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not DIGEST.fullmatch(digest):
            raise UserError(problem, hint="a digest is sha256: and 64 hex digits")
    tag = None
    if ":" in rest:
        rest, tag = rest.rsplit(":", 1)
        if not TAG.fullmatch(tag):
            raise UserError(problem, hint=f"'{tag}' is not a valid tag")
    if not REPOSITORY.fullmatch(rest):
        raise UserError(problem, hint=f"'{rest}' is not a valid repository (lower-case letters, digits, ._- and /)")
    if need_tag and (tag is None or digest is not None):
        raise UserError(f"'{text}' needs a tag to push to, e.g. {registry}/{rest}:1.0")
    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry, rest, tag, digest)


def credentials() -> Optional[tuple[str, str]]:
    """User and password from the environment; otherwise the docker config (~/.docker/config.json) applies."""
    user, password = os.environ.get(USERNAME_VARIABLE), os.environ.get(PASSWORD_VARIABLE)
    if bool(user) != bool(password):
        raise UserError(f"set both {USERNAME_VARIABLE} and {PASSWORD_VARIABLE}, or neither")
    return (user, password) if user else None
