"""A small resumable HTTP(S) download into the cache: a `.part` file, Range requests, checks, then a rename.

`download(url, dest)` streams into `dest.part` with a progress bar; an interrupted transfer keeps the part and the
next attempt asks only for the rest (`Range: bytes=<have>-`). The finished file is checked (size against the
server's length and the expected size, SHA-256 or its prefix where known) before `os.replace` moves it to `dest`,
so `dest` is either absent or complete and verified. A failed check deletes the part (resuming cannot repair it);
a write error (disk full, file size limit) deletes it too, to free the space. Every failure is one `DownloadError`
line naming the URL and what to do. Standard library + tqdm only.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path

CHUNK = 1 << 20
USER_AGENT = "maskformer-downloader/1"


class HubError(ValueError):
    """A model reference cannot be resolved: unknown name, download failure, offline without the file, bad file."""


class DownloadError(HubError):
    """A download failed; the message names the URL, the reason, and what to do."""


class ConnectError(DownloadError):
    """The server could not be reached at all (refused, no route, DNS, timeout while connecting)."""


class _Interrupted(Exception):
    """The connection ended before the announced length (the part file is kept for resuming)."""


def download(
    url: str,
    dest: str | os.PathLike,
    *,
    size: int | None = None,
    sha256: str | None = None,
    sha256_prefix: str | None = None,
    attempts: int = 3,
    timeout: float = 30.0,
    progress: bool = True,
) -> Path:
    """Download `url` to `dest` (atomically, verified). Returns `dest`.

    size / sha256 / sha256_prefix: what the file must be (checked before the rename). attempts: connections tried
    in this call, each resuming where the previous one stopped. Raises `DownloadError`.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, attempts + 1):
        try:
            _fetch(url, part, size=size, timeout=timeout, progress=progress)
            break
        except _Interrupted as e:
            if attempt == attempts:
                raise DownloadError(
                    f"{url}: download interrupted ({e}) after {attempts} attempt(s); the partial file {part} is "
                    "kept and the next try resumes it"
                ) from None
    _verify(url, part, size=size, sha256=sha256, sha256_prefix=sha256_prefix)
    with open(part, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(part, dest)
    return dest


def _fetch(url: str, part: Path, *, size: int | None, timeout: float, progress: bool) -> None:
    """One connection: append the missing bytes of `url` to `part` (restart if the server ignores Range)."""
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > size:
        part.unlink()
        have = 0
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have and (size is None or have == size):
            return  # the part already holds the whole file
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}{_hint(e.code)}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ConnectError(f"{url}: cannot connect ({reason})") from None
    with response:
        if response.status == 206 and _range_start(response) != have:
            part.unlink(missing_ok=True)
            raise DownloadError(f"{url}: the server sent another byte range than asked for; try again")
        if response.status != 206:
            have = 0  # no Range support: start over
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else size
        if total is not None and size is not None and total != size:
            raise DownloadError(f"{url}: the server announces {total} bytes, expected {size}")
        _check_space(part, (total or 0) - have, url)
        _stream(response, part, have, total, url, progress)


def _range_start(response) -> int | None:
    """The first byte of a 206 response (Content-Range: bytes START-END/TOTAL), None if absent."""
    value = response.headers.get("Content-Range", "")
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _stream(response, part: Path, have: int, total: int | None, url: str, progress: bool) -> None:
    from tqdm import tqdm

    bar = tqdm(
        total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=part.name.removesuffix(".part"),
        disable=None if progress else True, file=sys.stderr, leave=False,
    )  # fmt: skip
    got = have
    try:
        with open(part, "ab" if have else "wb") as f:
            while True:
                try:
                    chunk = response.read(CHUNK)
                except (http.client.IncompleteRead, ConnectionError, TimeoutError) as e:
                    raise _Interrupted(f"{type(e).__name__} at {got} of {total} bytes") from None
                if not chunk:
                    break
                try:
                    f.write(chunk)
                except OSError as e:
                    f.close()
                    part.unlink(missing_ok=True)
                    raise DownloadError(_write_error(e, part, url)) from None
                got += len(chunk)
                bar.update(len(chunk))
    finally:
        bar.close()
    if total is not None and got < total:
        raise _Interrupted(f"connection closed at {got} of {total} bytes")


def _verify(url: str, part: Path, *, size: int | None, sha256: str | None, sha256_prefix: str | None) -> None:
    """Size and checksum of the finished part; on a mismatch the part is deleted and the error names both values."""
    got = part.stat().st_size
    problem = None
    if size is not None and got != size:
        problem = f"size {got} bytes, expected {size}"
    elif sha256 or sha256_prefix:
        digest = file_sha256(part)
        want = (sha256 or sha256_prefix or "").lower()
        if not digest.startswith(want) or (sha256 and digest != want):
            problem = f"SHA-256 {digest}, expected {want}" + ("..." if not sha256 else "")
    if problem:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{url}: the downloaded file does not match ({problem}); it was deleted, try again")


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _check_space(part: Path, needed: int, url: str) -> None:
    free = shutil.disk_usage(part.parent).free
    if needed > free:
        raise DownloadError(
            f"{url}: needs {needed} bytes but {part.parent} has {free} free; free space or move the cache "
            "(MASKFORMER_HOME)"
        )


def _write_error(e: OSError, part: Path, url: str) -> str:
    if e.errno in (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", -1)):
        why = "the disk is full" if e.errno != errno.EFBIG else "the file size limit was reached"
        return f"{url}: writing {part} failed, {why} ({e.strerror}); the partial file was deleted"
    return f"{url}: writing {part} failed ({e.strerror or e}); the partial file was deleted"


def _hint(code: int) -> str:
    if code == 404:
        return " (no file at this address)"
    if code in (401, 403):
        return " (access denied)"
    if code >= 500:
        return " (server error; try again later)"
    return ""
