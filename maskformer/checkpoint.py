"""The model-directory format: atomic safetensors I/O, and loading weights with a named report of every key.

A model directory holds `config.json` ({"format", "version", "config": Config.to_dict(), "meta": DatasetMeta.to_dict()})
and `model.safetensors` (with a SHA-256 of the tensor bytes in its metadata: a damaged file is an error, not wrong
weights), each written atomically. Foreign sources are read and renamed in `maskformer.convert`, built on this module.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

import torch
from torch import nn

from maskformer.config import Config
from maskformer.io import atomic_file
from maskformer.structures import DatasetMeta

FORMAT = "maskformer-model"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_SHA_KEY = "content_sha256"


class CheckpointError(ValueError):
    """A checkpoint file or directory is missing, damaged, or does not fit the model (message names file / key)."""


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write `data` to `path` atomically, fsynced before the rename."""
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())


def save_safetensors(state_dict: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict | None = None):
    """Save a state dict to a `.safetensors` file atomically, with a SHA-256 of the tensor bytes in the metadata."""
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    blob = save(tensors, metadata={str(k): str(v) for k, v in (metadata or {}).items()})
    header, start = _header(blob)
    data = memoryview(blob)[start:]
    header.setdefault("__metadata__", {})[_SHA_KEY] = hashlib.sha256(data).hexdigest()
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data section stays 8-byte aligned, as safetensors writes it
    atomic_write(path, b"".join([struct.pack("<Q", len(text)), text, data]))


def _header(blob: bytes) -> tuple[dict | None, int]:
    """(the JSON header of a safetensors blob, or None if cut short; offset of the tensor bytes)."""
    header_len = struct.unpack("<Q", blob[:8])[0] if len(blob) >= 8 else 0
    return (json.loads(blob[8 : 8 + header_len]) if 8 + header_len <= len(blob) else None), 8 + header_len


def load_safetensors(path: str | os.PathLike, verify: bool = True) -> dict[str, torch.Tensor]:
    """CPU tensors of a `.safetensors` file, its stored SHA-256 checked (`verify`); damage is a `CheckpointError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file does not exist")
    blob = path.read_bytes()
    try:
        header, start = _header(blob)
        tensors = load(blob)
    except (SafetensorError, ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not a valid safetensors file (truncated or corrupted?): {e}") from None
    stored = ((header or {}).get("__metadata__") or {}).get(_SHA_KEY)
    if verify and stored and hashlib.sha256(blob[start:]).hexdigest() != stored:
        raise CheckpointError(f"{path}: tensor data does not match its stored SHA-256 (the file is corrupted)")
    return tensors


@dataclass
class Renamed:
    """A state dict in this package's names (`tensors`) that remembers, for the key report, the name each key has in
    the source where it differs (`sources`) and the source keys a converter leaves out on purpose (`dropped`)."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)

    def add(self, key: str, value: torch.Tensor, source: str) -> None:
        self.tensors[key] = value
        if key != source:
            self.sources[key] = source

    @classmethod
    def by_key(cls, state_dict: dict[str, torch.Tensor], rename) -> Renamed:
        """Every key through `rename(key) -> new key | None` (None: dropped on purpose)."""
        out = cls()
        for key, value in state_dict.items():
            if (new := rename(key)) is None:
                out.dropped.append(key)
            else:
                out.add(new, value, key)
        return out


@dataclass
class KeyReport:
    """What happened when weights were loaded into a module. Missing keys are the module's names; unexpected and
    dropped keys are named as in the source file. `notes`: what a converter decided (preset, class names)."""

    source: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)  # in the module, not in the file (left at their init)
    unexpected: list[str] = field(default_factory=list)  # in the file, not used
    expected_missing: list[str] = field(default_factory=list)  # missing, but known to be absent from such files
    expected_unexpected: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # left out on purpose by the converter (e.g. the loss weights)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unexpected

    def key_lines(self, refused: bool = False) -> list[str]:
        out = []
        for title, keys in (
            ("missing" if refused else "missing (kept at init)", self.missing),
            ("unexpected" if refused else "unexpected (ignored)", self.unexpected),
            ("missing, expected for this kind of file", self.expected_missing),
            ("unexpected, expected for this kind of file", self.expected_unexpected),
            ("dropped on purpose", self.dropped),
        ):
            if keys:
                out.append(f"  {len(keys)} {title}: " + ", ".join(keys))
        return out

    def __str__(self) -> str:
        return "\n".join([*self.notes, f"{self.source}: loaded {self.loaded} tensors", *self.key_lines()])


def load_checked(
    module: nn.Module,
    weights: dict[str, torch.Tensor] | Renamed,
    *,
    source: str,
    strict: bool = False,
    expected_missing: Iterable[str] = (),
    expected_unexpected: Iterable[str] = (),
    noun: str = "file",
) -> KeyReport:
    """Copy `weights` (in the module's names) into `module`; a shape mismatch is a `CheckpointError` naming the key
    and both shapes. `expected_*`: fnmatch patterns (e.g. "norm[0-3].*") on our names for keys known to be absent /
    extra in this kind of file, reported separately. `strict`: any other missing or unexpected key is an error."""
    weights = weights if isinstance(weights, Renamed) else Renamed(dict(weights))
    sd, own = weights.tensors, module.state_dict()
    bad = [
        f"{k}: {noun} {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in sd.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if bad:
        raise CheckpointError(f"{source}: shape mismatch for {len(bad)} key(s): " + "; ".join(bad))
    report = KeyReport(source=source, loaded=sum(k in own for k in sd), dropped=list(weights.dropped))
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    report.expected_missing = [k for k in missing if any(fnmatch(k, p) for p in expected_missing)]
    report.missing = [k for k in missing if k not in report.expected_missing]
    expected = [k for k in unexpected if any(fnmatch(k, p) for p in expected_unexpected)]
    report.expected_unexpected = [weights.sources.get(k, k) for k in expected]
    report.unexpected = [weights.sources.get(k, k) for k in unexpected if k not in expected]
    if strict and not report.ok:
        raise CheckpointError("\n".join([f"{source}: the weights do not fit the model", *report.key_lines(True)]))
    with torch.no_grad():
        module.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
    return report


def save_pretrained(model: nn.Module, cfg: Config, meta: DatasetMeta, path: str | os.PathLike) -> Path:
    """Write `path/model.safetensors` then `path/config.json` (each atomically). Returns the directory."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{path}: exists and is not a directory")
    if meta.num_classes != cfg.model.num_classes:
        raise CheckpointError(
            f"{path}: DatasetMeta {meta.name!r} has {meta.num_classes} classes but the config has "
            f"model.num_classes={cfg.model.num_classes}"
        )
    save_safetensors(model.state_dict(), path / WEIGHTS_NAME, metadata={"format": FORMAT})
    doc = {"format": FORMAT, "version": FORMAT_VERSION, "config": cfg.to_dict(), "meta": meta.to_dict()}
    atomic_write(path / CONFIG_NAME, json.dumps(doc, indent=1) + "\n")
    return path


def read_json(file: Path) -> object:
    """A JSON file's content; unreadable JSON is a `CheckpointError` naming the file."""
    try:
        return json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: not valid JSON (truncated or corrupted?): {e}") from None


def read_model_config(path: str | os.PathLike) -> tuple[Config, DatasetMeta]:
    """(Config, DatasetMeta) from a model directory's config.json; errors name the file and the problem."""
    file = Path(path) / CONFIG_NAME
    if not file.is_file():
        raise CheckpointError(f"{file}: missing (is {path} a model directory written by save_pretrained?)")
    doc = read_json(file)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f'{file}: not a maskformer model config (expected "format": "{FORMAT}")')
    if doc.get("version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{file}: format version {doc['version']} is newer than this library's {FORMAT_VERSION}")
    try:
        return Config.from_dict(doc["config"]), DatasetMeta.from_dict(doc["meta"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{file}: invalid config or meta: {e}") from None


def is_model_dir(path: str | os.PathLike) -> bool:
    """True if `path` is a directory with a maskformer config.json (a damaged one too: reading it names the damage)."""
    file = Path(path) / CONFIG_NAME
    try:
        return file.is_file() and read_json(file).get("format") == FORMAT
    except (CheckpointError, AttributeError):
        return True


def generic_meta(cfg: Config) -> DatasetMeta:
    """Placeholder label space ("class_0", ...) for models whose files carry no class names."""
    return DatasetMeta(name=cfg.data.format, class_names=[f"class_{i}" for i in range(cfg.model.num_classes)])


def build_loaded(cfg: Config, weights: dict[str, torch.Tensor] | Renamed, source: str, **kwargs):
    """`build_model(cfg)` holding `weights` (every key must fit unless `kwargs` say otherwise) -> (model, report)."""
    from maskformer.modeling import build_model

    model = build_model(cfg)
    return model, load_checked(model, weights, source=source, **{"strict": True, **kwargs})
