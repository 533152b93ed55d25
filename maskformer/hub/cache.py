"""The maskformer cache: where downloads and converted model directories live, listing and removal.

Layout under `home()` (`$MASKFORMER_HOME`, else `$XDG_CACHE_HOME/maskformer`, else `~/.cache/maskformer`):

  downloads/<key>/<file name>        a file downloaded from a URL (`<file>.part` while incomplete)
  downloads/<key>/source.json        {"url", "size", "sha256"} of that file
  models/<key>/                      a converted model directory (config.json + model.safetensors + source.json)
  locks/<kind>/<key>.lock            held while one process downloads / converts <key>

Keys are file-system safe and say where the entry came from: `zoo--<name>`, `hub--<org>--<name>--<revision>`,
`url--<file stem>--<hash of the URL>`, `file--<file stem>--<hash of path, size, mtime>`. Raw hub files stay in the
Hugging Face cache (`HF_HOME`), which its own tools manage. Nothing here touches the network or imports torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

SOURCE_NAME = "source.json"


def home() -> Path:
    """The cache root (read from the environment at each call, so tests and users can move it)."""
    if os.environ.get("MASKFORMER_HOME"):
        return Path(os.environ["MASKFORMER_HOME"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "maskformer"


def models_dir() -> Path:
    return home() / "models"


def downloads_dir() -> Path:
    return home() / "downloads"


def safe_key(*parts: str) -> str:
    """A file-system safe cache key from its parts (`--` between parts; other characters become `_`)."""
    return "--".join(re.sub(r"[^A-Za-z0-9._-]+", "_", p).strip("._") or "_" for p in parts)


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def url_key(url: str) -> str:
    """The cache key of a URL: its file stem (readable) + a hash of the whole URL (unique)."""
    stem = Path(url.split("?")[0].rstrip("/")).stem or "download"
    return safe_key("url", stem, short_hash(url))


def read_source(folder: Path) -> dict:
    """The source.json of a cache entry ({} if missing or unreadable)."""
    try:
        return json.loads((folder / SOURCE_NAME).read_text())
    except (OSError, ValueError):
        return {}


def write_source(folder: Path, info: dict) -> None:
    """Write `folder/source.json` atomically."""
    tmp = folder / f".{SOURCE_NAME}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, folder / SOURCE_NAME)


# ------------------------------------------------------------------------------------------------ locking
@contextlib.contextmanager
def locked(kind: str, key: str, *, quiet: bool = False) -> Iterator[None]:
    """Hold an exclusive inter-process lock on the `kind` ("model" | "download") entry `key` (a file under locks/);
    released on exit or process death. When another process holds it, one line says so and this one waits."""
    path = home() / "locks" / kind / f"{key}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        if not _try_lock(f):
            if not quiet:
                print(f"waiting for another process working on {key} (lock {path})", file=sys.stderr, flush=True)
            _lock(f)
        try:
            yield
        finally:
            _unlock(f)


if os.name == "nt":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(f) -> bool:
        try:
            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False

    def _lock(f) -> None:
        while not _try_lock(f):
            import time

            time.sleep(0.2)

    def _unlock(f) -> None:
        f.seek(0)
        msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(f) -> bool:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def _lock(f) -> None:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)

    def _unlock(f) -> None:
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)


# ------------------------------------------------------------------------------------------------ listing / removal
@dataclass
class CacheEntry:
    """One cached model directory or download. `state`: "ready" or "partial" (an interrupted download)."""

    kind: str  # "model" | "download"
    key: str
    path: Path
    size: int
    source: dict
    state: str = "ready"

    def names(self) -> list[str]:
        """What `maskformer cache rm` accepts for this entry: its key, zoo name, reference and URL."""
        return [self.key, *(str(self.source[k]) for k in ("zoo", "ref", "url") if self.source.get(k))]


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def list_entries() -> list[CacheEntry]:
    """Every model directory and download in the cache, models first, each sorted by key."""
    out = []
    for kind, root in (("model", models_dir()), ("download", downloads_dir())):
        if not root.is_dir():
            continue
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            files = [p.name for p in folder.iterdir() if p.name != SOURCE_NAME]
            if kind == "model":
                state = "ready" if "config.json" in files else "partial"
            else:
                state = "ready" if any(not n.endswith(".part") for n in files) else "partial"
            out.append(CacheEntry(kind, folder.name, folder, _size(folder), read_source(folder), state))
    return out


def find_entries(patterns: list[str]) -> list[CacheEntry]:
    """Entries any of whose names (key, zoo name, reference, URL) match one of `patterns` (fnmatch)."""
    return [e for e in list_entries() if any(fnmatch(n, p) for n in e.names() for p in patterns)]


def remove(entry: CacheEntry) -> None:
    """Delete one entry (under its lock, so a concurrent download is not cut from under its feet)."""
    with locked(entry.kind, entry.key):
        shutil.rmtree(entry.path, ignore_errors=True)


def human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # unreachable
