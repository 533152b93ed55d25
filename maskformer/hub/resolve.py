"""Model references -> a local, converted, cached model directory.

A reference is one of (checked in this order):
  - an http(s) URL of a checkpoint file (detectron2 `.pkl` / `.pth`, `.safetensors`);
  - an existing local path: a model directory (used as is), a transformers directory or a checkpoint file
    (converted once, then cached);
  - a model-zoo name (`maskformer models --zoo`), e.g. `maskformer_swin_t_ade20k`;
  - a Hugging Face hub id `org/name` with an optional `@revision` (`facebook/maskformer-swin-base-ade@main`),
    fetched with `huggingface_hub` (HF_ENDPOINT, HF_TOKEN, HF_HOME are honoured at each call).

The converted directory is cached under a key naming the reference (see cache.py), so the second use is a local
load that makes no request. `HF_HUB_OFFLINE=1` forbids the network: cached references still resolve, others fail
with one message saying what to download and where to put it.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from maskformer.hub import cache
from maskformer.hub.download import ConnectError, HubError, download
from maskformer.hub.zoo import BACKBONE_WEIGHTS, ZOO, ZooEntry

_HUB_ID = re.compile(r"^(?:hf://)?([A-Za-z0-9][\w.-]*/[\w.-]+)(?:@([\w./-]+))?$")
_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Reference:
    """A parsed model reference. kind: "dir" | "file" | "zoo" | "hub" | "url"."""

    kind: str
    value: str  # the path, zoo name, hub repo id or URL
    revision: str | None = None  # hub ids only


def parse_reference(ref: str | os.PathLike) -> Reference:
    """Classify a reference (see the module docstring); an unrecognisable one is a `HubError` listing the forms."""
    text = str(ref).strip()
    if text.startswith(("http://", "https://")):
        return Reference("url", text)
    path = Path(text).expanduser()
    if path.is_dir():
        return Reference("dir", str(path))
    if path.is_file():
        return Reference("file", str(path))
    if text in ZOO:
        return Reference("zoo", text)
    match = _HUB_ID.match(text)
    if match and not text.startswith((".", "/", "~")):
        return Reference("hub", match.group(1), match.group(2))
    raise HubError(
        f"{text}: not a model directory, checkpoint file, model-zoo name (see `maskformer models --zoo`), "
        "hub id (org/name[@revision]) or http(s) URL"
    )


def offline() -> bool:
    """True when `HF_HUB_OFFLINE` says the network must not be used (read at each call)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def cache_key(ref: Reference) -> str:
    """The cache key of the converted model directory of `ref` (see cache.py)."""
    if ref.kind == "zoo":
        return cache.safe_key("zoo", ref.value)
    if ref.kind == "hub":
        return cache.safe_key("hub", *ref.value.split("/"), ref.revision or "main")
    if ref.kind == "url":
        return cache.url_key(ref.value)
    path = Path(ref.value).resolve()
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    stamp = "|".join(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    return cache.safe_key(ref.kind, path.stem or path.name, cache.short_hash(stamp))


def resolve(ref: str | os.PathLike, *, progress: bool = True) -> Path:
    """The local model directory for `ref` (config.json + model.safetensors), downloading and converting once."""
    parsed = parse_reference(ref)
    if parsed.kind == "dir" and _is_model_dir(Path(parsed.value)):
        return Path(parsed.value)
    key = cache_key(parsed)
    target = cache.models_dir() / key
    if _is_model_dir(target):
        return target
    with cache.locked("model", key):
        if _is_model_dir(target):  # another process finished it while this one waited
            return target
        entry = zoo_entry_for(parsed)
        source, info, downloaded = _fetch(parsed, entry, progress)
        try:
            model, cfg, meta = _convert(source, entry, info)
        except HubError:
            if downloaded:  # a file that does not convert must not stay cached as if it were good
                shutil.rmtree(downloaded.parent, ignore_errors=True)
            raise
        _write_model_dir(model, cfg, meta, target, {**info, "file": str(source)})
    return target


def zoo_entry_for(ref: Reference) -> ZooEntry | None:
    """The zoo entry a reference names, also when given by its URL or hub id (its preset and meta then apply)."""
    if ref.kind == "zoo":
        return ZOO[ref.value]
    if ref.kind in ("url", "hub"):
        text = ref.value if ref.kind == "url" else f"{ref.value}@{ref.revision}" if ref.revision else ref.value
        return next((e for e in ZOO.values() if e.source == text), None)
    return None


def _is_model_dir(path: Path) -> bool:
    from maskformer.checkpoint import is_model_dir

    return path.is_dir() and is_model_dir(path)


def _fetch(ref: Reference, entry: ZooEntry | None, progress: bool) -> tuple[Path, dict, Path | None]:
    """(local checkpoint file or transformers directory, source info, the downloaded file or None)."""
    info = {"ref": ref.value if ref.kind != "hub" else f"{ref.value}@{ref.revision or 'main'}", "kind": ref.kind}
    if entry is not None:
        info.update(zoo=entry.name, preset=entry.preset, dataset=entry.dataset, metric=entry.metric)
        source = parse_reference(entry.source)
        if source.kind == "hub":
            return fetch_hub(source.value, source.revision), {**info, "hub": entry.source}, None
        file = fetch_url(entry.source, size=entry.size, sha256=entry.sha256, progress=progress, what=entry.name)
        return file, {**info, "url": entry.source}, file
    if ref.kind == "url":
        file = fetch_url(ref.value, progress=progress)
        return file, {**info, "url": ref.value}, file
    if ref.kind == "hub":
        return fetch_hub(ref.value, ref.revision), info, None
    return Path(ref.value), info, None


# ------------------------------------------------------------------------------------------------ URLs
def fetch_url(
    url: str,
    *,
    size: int | None = None,
    sha256: str | None = None,
    sha256_prefix: str | None = None,
    progress: bool = True,
    what: str | None = None,
) -> Path:
    """The cached file of `url`, downloaded (verified, under a lock) if it is not in the cache yet."""
    key = cache.url_key(url)
    folder = cache.downloads_dir() / key
    dest = folder / (Path(url.split("?")[0]).name or "download")
    if dest.is_file():
        return dest
    if offline():
        raise HubError(
            f"{what or url}: not in the cache and offline mode is on (HF_HUB_OFFLINE). Download {url} and save it as "
            f"{dest}, or run once with network access"
        )
    with cache.locked("download", key):
        if dest.is_file():
            return dest
        folder.mkdir(parents=True, exist_ok=True)
        cache.write_source(folder, {"url": url, "size": size, "sha256": sha256, **({"zoo": what} if what else {})})
        try:
            download(url, dest, size=size, sha256=sha256, sha256_prefix=sha256_prefix, progress=progress)
        except ConnectError as e:
            raise ConnectError(f"{e}; without network access, download it elsewhere and save it as {dest}") from None
        finally:
            if not dest.is_file() and not any(folder.glob("*.part")):  # nothing to resume: leave no entry behind
                shutil.rmtree(folder, ignore_errors=True)
    return dest


def backbone_weights(name: str, *, progress: bool = True) -> Path:
    """The local file of ImageNet backbone weights by name (zoo.BACKBONE_WEIGHTS), a URL or a local path."""
    if name in BACKBONE_WEIGHTS:
        e = BACKBONE_WEIGHTS[name]
        return fetch_url(e.url, sha256_prefix=e.sha256_prefix, progress=progress, what=name)
    if name.startswith(("http://", "https://")):
        return fetch_url(name, progress=progress)
    if Path(name).expanduser().exists():
        return Path(name).expanduser()
    raise HubError(f"{name}: not a file, URL or known ImageNet weights name; known: {', '.join(BACKBONE_WEIGHTS)}")


# ------------------------------------------------------------------------------------------------ hub ids
def fetch_hub(repo_id: str, revision: str | None = None) -> Path:
    """A local folder with the repo's config.json and weights (the huggingface_hub snapshot folder)."""
    hf = _import_hub()
    from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError

    kwargs = dict(
        revision=revision,
        cache_dir=_hf_cache_dir(),
        endpoint=os.environ.get("HF_ENDPOINT", "").rstrip("/") or None,
        local_files_only=offline(),
    )
    where = f"{repo_id}@{revision or 'main'}"
    with _hub_errors(where, kwargs["endpoint"]):
        config = Path(hf.hf_hub_download(repo_id, "config.json", **kwargs))
        for name in ("model.safetensors", "pytorch_model.bin"):
            try:
                hf.hf_hub_download(repo_id, name, **kwargs)
                return config.parent
            except LocalEntryNotFoundError:
                if name == "pytorch_model.bin":
                    raise
            except EntryNotFoundError:
                continue
    raise HubError(f"{where}: the repository has config.json but neither model.safetensors nor pytorch_model.bin")


def _import_hub():
    try:
        import huggingface_hub
    except ImportError:
        raise HubError(
            "hub ids need the huggingface_hub package: pip install 'maskformer[hub]' (or pip install huggingface_hub)"
        ) from None
    return huggingface_hub


def _hf_cache_dir() -> str | None:
    """huggingface_hub reads HF_HOME / HF_HUB_CACHE once at import; read them at each call instead."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    return os.path.join(os.environ["HF_HOME"], "hub") if os.environ.get("HF_HOME") else None


class _hub_errors:
    """Turn huggingface_hub's exceptions into one `HubError` line each."""

    def __init__(self, where: str, endpoint: str | None):
        self.where, self.endpoint = where, endpoint or "https://huggingface.co"

    def __enter__(self):
        return self

    def __exit__(self, kind, e, tb):
        if e is None or isinstance(e, HubError):
            return False
        from huggingface_hub.utils import (
            EntryNotFoundError,
            GatedRepoError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        w = self.where
        if isinstance(e, LocalEntryNotFoundError):
            why = "offline mode is on (HF_HUB_OFFLINE)" if offline() else f"{self.endpoint} cannot be reached"
            msg = (
                f"{w}: not in the Hugging Face cache and {why}. With network access run "
                f"`hf download {w.split('@')[0]} config.json model.safetensors --revision {w.split('@')[1]}` "
                "(same HF_HOME), or download those two files into a folder and pass the folder"
            )
        elif isinstance(e, GatedRepoError):
            msg = f"{w}: the repository is gated; accept its terms on the hub and set HF_TOKEN"
        elif isinstance(e, RepositoryNotFoundError):
            msg = f"{w}: no such repository on {self.endpoint} (private? set HF_TOKEN), and no such local path"
        elif isinstance(e, RevisionNotFoundError):
            msg = f"{w}: the repository has no such revision"
        elif isinstance(e, EntryNotFoundError):
            msg = f"{w}: the repository has no config.json (not a transformers checkpoint)"
        elif isinstance(e, HfHubHTTPError):
            status = getattr(getattr(e, "response", None), "status_code", None)
            msg = f"{w}: the hub answered HTTP {status}: {str(e).splitlines()[0]}"
        elif isinstance(e, (OSError, ValueError)):
            msg = f"{w}: download failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        else:
            return False
        raise HubError(msg) from None


# ------------------------------------------------------------------------------------------------ conversion
def convert_checkpoint(source: Path, preset: str | None = None):
    """(model, cfg, meta) from a checkpoint file or transformers directory: the one call into maskformer.convert."""
    from maskformer.convert import convert_source

    return convert_source(source, preset=preset)[:3]


def _convert(source: Path, entry: ZooEntry | None, info: dict):
    """(model, cfg, meta) of `source`; a zoo entry supplies the preset and the dataset meta."""
    from maskformer.convert.safe_pickle import UnsafePickleError

    try:
        model, cfg, meta = convert_checkpoint(source, entry.preset if entry else None)
    except (ValueError, KeyError, OSError, UnsafePickleError) as e:
        raise HubError(f"{info['ref']}: cannot convert {source}: {e}") from None
    if entry is not None and entry.meta().num_classes == cfg.model.num_classes:
        meta = entry.meta()
    return model, cfg, meta


def _write_model_dir(model, cfg, meta, target: Path, info: dict) -> None:
    """Write the model directory `target` atomically (a temporary folder, then a rename); a failed write (disk
    full) leaves nothing behind."""
    from maskformer.checkpoint import save_pretrained

    tmp = target.parent / f".tmp-{target.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_pretrained(model, cfg, meta, tmp)
        cache.write_source(tmp, info)
        shutil.rmtree(target, ignore_errors=True)  # a leftover without config.json (we hold the lock)
        os.replace(tmp, target)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise HubError(f"{info['ref']}: writing the converted model to {target} failed: {e}") from None
