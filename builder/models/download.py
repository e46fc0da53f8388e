"""Fetching checkpoints by URL into a cache: resumable, size- and sha256-checked, with a progress bar."""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import pathlib
import urllib.error
import urllib.parse
import urllib.request

from builder.core.errors import UserError
from builder.core.hashing import sha256_of
from builder.core.log import notice

CHUNK = 1 << 20


def cache_dir() -> pathlib.Path:
    root = os.environ.get("BUILDER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "builder")
    return pathlib.Path(root) / "weights"


def fetch(url: str, directory: pathlib.Path | None = None, progress: bool = True,
          timeout: float = 60.0) -> pathlib.Path:
    """The cached file for `url`, downloading (or resuming) it first when needed.

    Next to each file a `<name>.json` records url, size and sha256; a cached file that no longer matches
    its record is fetched again. A partial download lives in `<name>.part` and resumes with a Range
    request; the final name appears only once the whole file is there and checked.
    """
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https"):
        raise UserError(f"unsupported URL scheme in '{url}'", hint="use http:// or https://")
    name = pathlib.PurePosixPath(urllib.parse.unquote(parsed.path)).name
    if not name or name in (".", ".."):
        raise UserError(f"cannot tell a file name from the URL '{url}'")
    directory = directory or cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    # the host is part of the cache key, so two servers' files of one name never collide
    target = directory / f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{name}"
    record = target.with_name(target.name + ".json")
    if target.exists() and record.exists():
        meta = json.loads(record.read_text())
        if meta.get("size") == target.stat().st_size and meta.get("sha256") == sha256_of(target):
            return target
        notice(f"cached {target.name} does not match its recorded checksum; downloading it again")
        target.unlink()

    part = target.with_name(target.name + ".part")
    size = _download(url, part, progress=progress, timeout=timeout)
    digest = sha256_of(part)
    tmp_record = record.with_name(record.name + ".tmp")
    tmp_record.write_text(json.dumps({"url": url, "size": size, "sha256": digest}, indent=2) + "\n")
    os.replace(part, target)
    os.replace(tmp_record, record)
    return target


def _download(url: str, part: pathlib.Path, progress: bool, timeout: float) -> int:
    """Download into `part`, continuing what is there; returns the final size after checking it."""
    from tqdm import tqdm

    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to fetch: the partial file was already complete
            return have
        raise UserError(f"downloading {url} failed: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise UserError(f"downloading {url} failed: {reason}") from None

    with response:
        if have and response.status != 206:  # the server ignored the Range header: start over
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        mode = "ab" if have else "wb"
        with open(part, mode) as out, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                           unit_divisor=1024, desc=part.name[:-5][13:], disable=not progress,
                                           leave=False) as bar:
            try:
                for block in iter(lambda: response.read(CHUNK), b""):
                    out.write(block)
                    bar.update(len(block))
            except (OSError, http.client.HTTPException) as e:
                raise UserError(f"downloading {url} was interrupted ({e}); run again to resume") from None
    size = part.stat().st_size
    if total is not None and size != total:
        raise UserError(f"downloading {url} stopped at {size} of {total} bytes; run again to resume")
    return size
