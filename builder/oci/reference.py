"""Registry references (`registry.example.com/models/yolo_nas_s:1.2.0`, `oci://` accepted) and credentials."""
from __future__ import annotations

import base64
import json
import os
import pathlib
import re
import subprocess
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
#: a credential helper's NAME in docker-credential-NAME: a plain word (a '/' would run another program)
HELPER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


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


def basic_credentials(registry: str) -> Optional[str]:
    """base64(user:password) from the environment, else from the docker config (auths, credHelpers, credsStore).

    The config and a helper's answer are the user's files and programs, written by hand or by other tools: what
    has the wrong shape is one line naming the config file or the helper, and never shows a credential.
    """
    given = credentials()
    if given:
        return base64.b64encode(f"{given[0]}:{given[1]}".encode()).decode()
    path = pathlib.Path(os.environ.get("DOCKER_CONFIG", pathlib.Path.home() / ".docker")) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except OSError:
        return None  # no config (or none we may read): no credentials, as docker has none either
    except (ValueError, RecursionError):
        raise UserError(f"docker config '{path}' is not JSON", hint="fix it, or log in again with docker login") \
            from None
    auths = _config_part(config, path, "auths", dict)
    entry = auths.get(registry) or auths.get(f"https://{registry}") or {}
    if not isinstance(entry, dict):
        raise UserError(f"docker config '{path}': auths of {registry} is not an object")
    if entry.get("auth"):
        return _checked_auth(entry["auth"], f"docker config '{path}': the auth of {registry}")
    helper = _config_part(config, path, "credHelpers", dict).get(registry) or _config_part(config, path,
                                                                                          "credsStore", str)
    if not helper:
        return None
    if not isinstance(helper, str) or not HELPER_NAME.fullmatch(helper):
        raise UserError(f"docker config '{path}' names the credential helper {repr(helper)[:80]}, which is not "
                        "a helper's name (docker-credential-NAME: letters, digits, '.', '_', '-')")
    program = f"docker-credential-{helper}"
    try:
        done = subprocess.run([program, "get"], input=registry, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:  # "credentials not found": anonymous, as docker is
        return None
    try:
        secret = json.loads(done.stdout)
    except (ValueError, RecursionError):
        secret = None
    if not (isinstance(secret, dict) and isinstance(secret.get("Username"), str)
            and isinstance(secret.get("Secret"), str)):
        raise UserError(f"credential helper {program} answered for {registry} without a Username and a Secret",
                        hint=f"'echo {registry} | {program} get' shows its answer")
    return base64.b64encode(f"{secret['Username']}:{secret['Secret']}".encode()).decode()


def _config_part(config, path: pathlib.Path, key: str, kind: type):
    """config[key] where the docker config has it (its empty value where not), refused unless it is a `kind`."""
    if not isinstance(config, dict):
        raise UserError(f"docker config '{path}' is not a JSON object")
    value = config.get(key)
    if value is None:
        return kind()
    if not isinstance(value, kind):
        raise UserError(f"docker config '{path}': {key} is not {'an object' if kind is dict else 'text'}")
    return value


def _checked_auth(auth, where: str) -> str:
    """A Basic credential as it goes into a header: base64 of user:password, nothing else (a line break in it
    would end the header)."""
    try:
        decoded = base64.b64decode(auth, validate=True) if isinstance(auth, str) else b""
    except ValueError:  # (binascii.Error, or text that is not ASCII)
        decoded = b""
    if b":" not in decoded:
        raise UserError(f"{where} is not base64 of user:password")
    return base64.b64encode(decoded).decode()
