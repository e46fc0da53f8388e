"""sha256 of files, read in blocks (checkpoints and bundle files can be gigabytes)."""
from __future__ import annotations

import hashlib
import pathlib

CHUNK = 1 << 20


def sha256_of(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()
