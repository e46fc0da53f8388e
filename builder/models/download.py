"""Fetching checkpoints by URL into a cache: resumable, checked, revalidated with the server, one URL at a time."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import json
import os
import pathlib
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Iterator, Optional

from builder.core.errors import UserError
from builder.core.files import ENVIRONMENT_ERRNOS, atomic_file, user_environment_errors
from builder.core.hashing import sha256_of
from builder.core.log import notice

CHUNK = 1 << 20
#: how a failed request fails besides an HTTP status: no route, refused, reset, timed out, a URL http.client refuses
REQUEST_ERRORS = (urllib.error.URLError, OSError, http.client.HTTPException, ValueError)
#: what a web page is sent as: a login or error page in place of the file is never a checkpoint
PAGE_TYPES = ("text/html", "application/xhtml+xml")
#: how a web page begins, whatever type the server called it
PAGE_STARTS = (b"<!doctype html", b"<html")
#: the longest end of a URL's file name a cache name keeps (file systems allow 255 bytes; the hash keeps names apart)
MAX_NAME_BYTES = 120
CACHE_HINT = "set BUILDER_CACHE to a folder builder may write"


def cache_dir() -> pathlib.Path:
    root = os.environ.get("BUILDER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "builder")
    return pathlib.Path(root) / "weights"


def fetch(url: str, directory: pathlib.Path | None = None, progress: bool = True,
          timeout: float = 60.0) -> pathlib.Path:
    """The cached file for `url`: downloaded (or resumed) first when needed, else checked with the server for a change.

    Next to each file a `<name>.json` records url, size, sha256 and the server's ETag and Last-Modified. A cached
    file that no longer matches its record is downloaded again. One that matches is revalidated: the server's 304
    keeps it, a 200 brings the new content, and a server that cannot be asked leaves it in use with a notice
    (offline builds keep working). A cache builder cannot write (the export stage's read-only mount of the
    host's cache, checked by the host just before) is used as it is. A partial download lives in `<name>.part`
    and resumes only from the file it began (If-Range); the final name appears only once the whole file is there
    and checked. Fetches of one URL, in any process, take turns on `<name>.lock`.
    """
    name = _cache_name(url)
    folder = _cache_folder(directory or cache_dir())
    target = folder / name
    with _turn(target) as unwritable:
        record = _checked_record(target, removable=unwritable is None)
        if record is not None and unwritable is not None:
            return target
        if unwritable is not None:
            raise UserError(f"cannot download {url} into the weights cache '{folder}': "
                            f"{os.strerror(unwritable.errno)}", hint=CACHE_HINT)
        response = None
        if record is not None:
            response = _revalidate(url, record, timeout)
            if response is None:
                return target
        with user_environment_errors(target):
            record = _download(url, target, progress, timeout, response)
            with atomic_file(_record_of(target)) as f:
                f.write((json.dumps(record, indent=2) + "\n").encode("utf-8"))
            os.replace(_part_of(target), target)
            _discard(_record_of(_part_of(target)))
    return target


def forget(path: str | pathlib.Path) -> bool:
    """Remove a download fetch() cached that turned out unusable (it does not load), with its record, so that the
    next fetch downloads it again. False, and nothing removed, for a file fetch() did not cache or cannot remove."""
    path = pathlib.Path(path)
    record = _read_json(_record_of(path))
    try:
        cached = isinstance(record, dict) and isinstance(record.get("url"), str) and (
            path.name == _cache_name(record["url"]))
    except UserError:
        cached = False
    if not cached:
        return False
    with _turn(path) as unwritable:
        if unwritable is not None:
            return False
        _discard(path)
        _discard(_record_of(path))
    return True


def _cache_name(url: str) -> str:
    """`<12 hex digits of the URL's sha256>-<its file name>`: the host is part of the key, so that two servers'
    files of one name never collide."""
    try:
        parsed = urllib.parse.urlparse(url)
    except ValueError as e:
        raise UserError(f"cannot read the URL '{url}': {e}") from None
    if parsed.scheme not in ("http", "https"):
        raise UserError(f"unsupported URL scheme in '{url}'", hint="use http:// or https://")
    name = pathlib.PurePosixPath(urllib.parse.unquote(parsed.path)).name
    if not name or name in (".", ".."):
        raise UserError(f"cannot tell a file name from the URL '{url}'")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name):
        raise UserError(f"the file name in the URL '{url}' holds a control character")
    name = name.encode("utf-8")[-MAX_NAME_BYTES:].decode("utf-8", "ignore")
    return f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{name}"


def _cache_folder(folder: pathlib.Path) -> pathlib.Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot use '{folder}' as the weights cache: {e.strerror or e}", hint=CACHE_HINT) from None
    return folder


def _record_of(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(path.name + ".json")


def _part_of(target: pathlib.Path) -> pathlib.Path:
    return target.with_name(target.name + ".part")


def _discard(path: pathlib.Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _read_json(path: pathlib.Path) -> Any:
    """What a record holds; None where it is missing or not JSON (a kill or a full disk mid-write)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def _turn(target: pathlib.Path) -> Iterator[Optional[OSError]]:
    """Hold the lock of `target`'s URL, after waiting for a fetch of it in another thread or process to finish.

    Yields None, or why the cache cannot be written: then there is nothing to wait for, since nobody changes it."""
    try:
        fd = os.open(target.with_name(target.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        if e.errno not in ENVIRONMENT_ERRNOS:
            raise
        yield e
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            notice(f"waiting for another download of {target.name[13:]} to finish")
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass  # a filesystem without locks: fetches of one URL are not serialised there
        yield None
    finally:
        os.close(fd)


def _checked_record(target: pathlib.Path, removable: bool) -> Optional[dict]:
    """The record of the cached file when the file matches it in size and sha256; None when there is no such file.
    A file that no longer matches its record (or whose record is broken) is removed where it may be."""
    if not target.is_file():
        return None
    record = _read_json(_record_of(target))
    try:
        if (isinstance(record, dict) and record.get("size") == target.stat().st_size
                and record.get("sha256") == sha256_of(target)):
            return record
    except OSError:
        pass
    notice(f"cached {target.name} does not match its record; downloading it again")
    if removable:
        _discard(target)
    return None


def _revalidate(url: str, record: dict, timeout: float):
    """The server's answer when the cached file changed there (a 200 with the new content); None to keep it: the
    server says it is current (304), or it cannot be asked (with a notice). A server that gives no ETag or
    Last-Modified cannot be asked, only sent the file again."""
    conditions = {header: record[key] for header, key in (("If-None-Match", "etag"),
                                                          ("If-Modified-Since", "last_modified")) if record.get(key)}
    if not conditions:
        notice(f"{url} gave no ETag or Last-Modified to ask whether it changed: downloading it again")
    try:
        response = _request(url, conditions, timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 304:
            return None
        reason = _reason(e)
    except REQUEST_ERRORS as e:
        reason = _reason(e)
    else:
        if not _is_page(response):
            return response
        response.close()  # a captive portal or a login in the way: as good as unreachable
        reason = "it sent a web page"
    parsed = urllib.parse.urlparse(url)
    notice(f"cannot ask {parsed.scheme}://{parsed.netloc} whether {pathlib.PurePosixPath(parsed.path).name} changed "
           f"({reason}): using the cached copy")
    return None


def _request(url: str, headers: dict[str, str], timeout: float):
    """The server's response; HTTPError for a status other than 2xx."""
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _reason(error: BaseException) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    return str(getattr(error, "reason", None) or error)


def _is_page(response) -> bool:
    return (response.headers.get("Content-Type") or "").split(";")[0].strip().lower() in PAGE_TYPES


def _page(url: str) -> UserError:
    return UserError(f"{url} sent a web page, not a file (a login or error page?)",
                     hint="download it in a browser to see; a file behind a login needs a direct link")


def _download(url: str, target: pathlib.Path, progress: bool, timeout: float, response=None) -> dict:
    """Download into `<target>.part` from `response`, or from a request that continues the part; the record of the
    whole file, once its size is checked."""
    from tqdm import tqdm

    part = _part_of(target)
    have = 0
    if response is None:
        response, have = _resume(url, part, timeout)
    with response:
        total, have = _expected_size(url, response, have, part)
        validators = {"etag": response.headers.get("ETag"), "last_modified": response.headers.get("Last-Modified")}
        if not have:  # which file the part is of: only that file may continue it
            with atomic_file(_record_of(part)) as f:
                f.write(json.dumps({"url": url, **validators}).encode("utf-8"))
        with open(part, "ab" if have else "wb") as out, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                                             unit_divisor=1024, desc=target.name[13:],
                                                             disable=not progress, leave=False) as bar:
            try:
                for block in iter(lambda: response.read(CHUNK), b""):
                    if not out.tell() and block[:512].lstrip().lower().startswith(PAGE_STARTS):
                        raise _page(url)
                    out.write(block)
                    bar.update(len(block))
            except (OSError, http.client.HTTPException) as e:
                raise UserError(f"downloading {url} was interrupted ({e}); run again to resume") from None
            except UserError:
                out.close()
                _discard(part)
                _discard(_record_of(part))
                raise
    size = part.stat().st_size
    if total is not None and size != total:
        raise UserError(f"downloading {url} stopped at {size} of {total} bytes; run again to resume")
    return {"url": url, "size": size, "sha256": sha256_of(part), **validators}


def _resume(url: str, part: pathlib.Path, timeout: float):
    """The response to a request for what `part` lacks, if it is the start of the file the server holds now (it
    sends the whole file otherwise), or for the whole file; and how many bytes the part keeps."""
    record = _read_json(_record_of(part)) if part.exists() else None
    validator = None
    if isinstance(record, dict) and record.get("url") == url:
        etag = record.get("etag")
        # If-Range takes a strong ETag or a date: a weak ETag cannot tell that the bytes are the same
        validator = etag if isinstance(etag, str) and not etag.startswith("W/") else record.get("last_modified")
    have = part.stat().st_size if validator else 0
    headers = {"Range": f"bytes={have}-", "If-Range": validator} if have else {}
    try:
        return _request(url, headers, timeout), have
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and have:  # the part is longer than the file: not the start of what the server holds now
            _discard(part)
            return _resume(url, part, timeout)
        raise UserError(f"downloading {url} failed: {_reason(e)}") from None
    except REQUEST_ERRORS as e:
        raise UserError(f"downloading {url} failed: {_reason(e)}") from None


def _expected_size(url: str, response, have: int, part: pathlib.Path) -> tuple[Optional[int], int]:
    """The size of the whole file, where the server says it, and how many bytes of the part the response continues
    (0 when it sends the whole file); refuses a web page and headers that contradict what was asked."""
    if _is_page(response):
        raise _page(url)
    length = response.headers.get("Content-Length")
    if length is not None and not re.fullmatch(r"[0-9]+", length.strip()):
        raise UserError(f"the server sent a bad Content-Length ('{length}') for {url}")
    length = int(length) if length is not None else None
    if response.status != 206:  # the whole file: the server ignored the Range, or the file changed since the part
        return length, 0
    given = response.headers.get("Content-Range")
    found = re.fullmatch(r"bytes ([0-9]+)-([0-9]+)/([0-9]+)", (given or "").strip())
    if found is None or int(found[1]) != have or int(found[2]) + 1 != int(found[3]) or (
            length is not None and length != int(found[3]) - have):
        _discard(part)
        raise UserError(f"the server answered a request for {url} from byte {have} with Content-Range '{given}'",
                        hint="run again to download it whole")
    return int(found[3]), have
