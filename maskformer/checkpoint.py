"""Model directories, atomic safetensors I/O, and weight loading with a named report of every key.

A model directory holds `config.json` ({"format", "version", "config": Config.to_dict(), "meta": DatasetMeta.to_dict()})
and `model.safetensors` (the state dict, with a SHA-256 of the tensor bytes in its metadata so a damaged file is an
error, not silently wrong weights). Every write goes to a temporary file in the same directory and is moved into place
with `os.replace`, so a crash never leaves a half-written file under the final name.

`load_full_weights` / `load_backbone_weights` read any supported source (a model directory, a `.safetensors` file,
detectron2 `.pkl` / `.pth`, torchvision / Swin ImageNet `.pth`, a transformers directory), map the key names, refuse
shape mismatches by key and report missing / unexpected keys by name.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

import torch
from torch import nn

from maskformer.config import PRESETS, Config, apply_overrides, get_preset
from maskformer.structures import DatasetMeta

FORMAT = "maskformer-model"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_SHA_KEY = "content_sha256"


class CheckpointError(ValueError):
    """A checkpoint file or directory is missing, damaged, or does not fit the model (message names file / key)."""


# ------------------------------------------------------------------------------------------------ atomic file I/O
def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write `data` to `path` atomically: a temporary file in the same directory, fsync, then `os.replace`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_safetensors(
    state_dict: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict | None = None
) -> None:
    """Save a state dict to a `.safetensors` file atomically, with a SHA-256 of the tensor bytes in the metadata."""
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    blob = save(tensors, metadata={str(k): str(v) for k, v in (metadata or {}).items()})
    header_len = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8 : 8 + header_len])
    data = memoryview(blob)[8 + header_len :]
    header.setdefault("__metadata__", {})[_SHA_KEY] = hashlib.sha256(data).hexdigest()
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data section stays 8-byte aligned, as safetensors writes it
    atomic_write(path, b"".join([struct.pack("<Q", len(text)), text, data]))


def load_safetensors(path: str | os.PathLike, verify: bool = True) -> dict[str, torch.Tensor]:
    """Load a `.safetensors` file into CPU tensors; a truncated / corrupted file raises `CheckpointError` naming it.

    With `verify`, the SHA-256 stored by `save_safetensors` (if present) is checked against the tensor bytes.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file does not exist")
    blob = path.read_bytes()
    try:
        header_len = struct.unpack("<Q", blob[:8])[0] if len(blob) >= 8 else 0
        header = json.loads(blob[8 : 8 + header_len]) if 8 + header_len <= len(blob) else None
        tensors = load(blob)
    except (SafetensorError, ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not a valid safetensors file (truncated or corrupted?): {e}") from None
    stored = ((header or {}).get("__metadata__") or {}).get(_SHA_KEY)
    if verify and stored and hashlib.sha256(blob[8 + header_len :]).hexdigest() != stored:
        raise CheckpointError(f"{path}: tensor data does not match its stored SHA-256 (the file is corrupted)")
    return tensors


# ------------------------------------------------------------------------------------------------ key reports
@dataclass
class KeyReport:
    """What happened when weights were loaded into a module. Keys are the module's names."""

    source: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)  # in the module, not in the file (left at their init)
    unexpected: list[str] = field(default_factory=list)  # in the file, not used
    expected_missing: list[str] = field(default_factory=list)  # missing, but known to be absent from such files
    expected_unexpected: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unexpected

    def lines(self) -> list[str]:
        out = [f"{self.source}: loaded {self.loaded} tensors"]
        for title, keys in (
            ("missing (kept at init)", self.missing),
            ("unexpected (ignored)", self.unexpected),
            ("missing, expected for this kind of file", self.expected_missing),
            ("unexpected, expected for this kind of file", self.expected_unexpected),
        ):
            if keys:
                out.append(f"  {len(keys)} {title}: " + ", ".join(keys))
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


def load_checked(
    module: nn.Module,
    state_dict: dict[str, torch.Tensor],
    *,
    source: str,
    strict: bool = False,
    expected_missing: Iterable[str] = (),
    expected_unexpected: Iterable[str] = (),
) -> KeyReport:
    """Copy `state_dict` into `module`. A shape mismatch is a `CheckpointError` naming the key and both shapes.

    `expected_*` are fnmatch patterns (e.g. "norm[0-3].*") for keys that are known to be absent / extra in this kind of
    file; they are reported separately. With `strict`, any other missing or unexpected key is an error listing them.
    """
    own = module.state_dict()
    bad = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if bad:
        raise CheckpointError(f"{source}: shape mismatch for {len(bad)} key(s): " + "; ".join(bad))
    em, eu = list(expected_missing), list(expected_unexpected)
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    report = KeyReport(source=source, loaded=sum(k in own for k in state_dict))
    report.expected_missing = [k for k in missing if any(fnmatch(k, p) for p in em)]
    report.missing = [k for k in missing if k not in set(report.expected_missing)]
    report.expected_unexpected = [k for k in unexpected if any(fnmatch(k, p) for p in eu)]
    report.unexpected = [k for k in unexpected if k not in set(report.expected_unexpected)]
    if strict and not report.ok:
        raise CheckpointError(str(report))
    with torch.no_grad():
        result = module.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    return report


# ------------------------------------------------------------------------------------------------ model directories
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


def read_model_config(path: str | os.PathLike) -> tuple[Config, DatasetMeta]:
    """(Config, DatasetMeta) from a model directory's config.json; errors name the file and the problem."""
    file = Path(path) / CONFIG_NAME
    if not file.is_file():
        raise CheckpointError(f"{file}: missing (is {path} a model directory written by save_pretrained?)")
    try:
        doc = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: not valid JSON (truncated or corrupted?): {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f'{file}: not a maskformer model config (expected "format": "{FORMAT}")')
    if doc.get("version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{file}: format version {doc['version']} is newer than this library's {FORMAT_VERSION}")
    try:
        return Config.from_dict(doc["config"]), DatasetMeta.from_dict(doc["meta"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{file}: invalid config or meta: {e}") from None


def is_model_dir(path: str | os.PathLike) -> bool:
    """True if `path` is a directory with a maskformer config.json."""
    file = Path(path) / CONFIG_NAME
    if not file.is_file():
        return False
    try:
        return json.loads(file.read_text()).get("format") == FORMAT
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return True  # ours but damaged: let read_model_config report it


def generic_meta(cfg: Config, name: str | None = None) -> DatasetMeta:
    """Placeholder label space ("class_0", ...) for models whose files carry no class names."""
    return DatasetMeta(name=name or cfg.data.format, class_names=[f"class_{i}" for i in range(cfg.model.num_classes)])


def load_model(
    path_or_preset: str | os.PathLike, device: str | torch.device = "cpu", *, overrides: Iterable[str] = ()
) -> tuple[nn.Module, Config, DatasetMeta]:
    """(model in eval mode on `device`, cfg, meta) from a model directory, or a randomly initialised preset.

    `overrides` ("a.b=c") apply to either; on a model directory, one that changes the architecture makes loading fail
    with the mismatching keys named."""
    from maskformer.modeling import build_model

    path = Path(path_or_preset)
    if path.is_dir():
        cfg, meta = read_model_config(path)
        cfg = apply_overrides(cfg, list(overrides))  # e.g. inference.* or data.*; a changed architecture fails below
        model = build_model(cfg)
        load_checked(model, load_safetensors(path / WEIGHTS_NAME), source=str(path / WEIGHTS_NAME), strict=True)
    elif str(path_or_preset) in PRESETS:
        cfg = get_preset(str(path_or_preset), list(overrides))
        model, meta = build_model(cfg), generic_meta(cfg)
    else:
        raise CheckpointError(
            f"{path_or_preset}: neither a model directory nor a preset name (see `maskformer models` for presets)"
        )
    return model.to(device).eval(), cfg, meta


# ------------------------------------------------------------------------------------------------ weight sources
def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict of tensors, info) from a weight file or directory, keys as stored (not yet renamed).

    info has "kind": "model_dir" | "safetensors" | "transformers" | "pickle", and for pickles the top-level
    entries other than the weights (e.g. "__author__", "matching_heuristics").
    """
    path = Path(path)
    if path.is_dir():
        if is_model_dir(path):
            return load_safetensors(path / WEIGHTS_NAME), {"kind": "model_dir"}
        hf_config, sd = read_transformers_dir(path)
        return sd, {"kind": "transformers", "hf_config": hf_config}
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.suffix == ".safetensors":
        return load_safetensors(path), {"kind": "safetensors"}
    from maskformer.convert.safe_pickle import load_weights_pickle

    return unwrap_pickled(load_weights_pickle(path), str(path))


def unwrap_pickled(obj, source: str) -> tuple[dict[str, torch.Tensor], dict]:
    """The weights inside a loaded pickle ({"model": ...}, {"state_dict": ...} or a bare dict) as tensors."""
    import numpy as np

    if not isinstance(obj, dict):
        raise CheckpointError(f"{source}: expected a dict of weights, found {type(obj).__name__}")
    weights = obj.get("model", obj.get("state_dict", obj))
    if not isinstance(weights, dict):
        raise CheckpointError(f"{source}: the 'model' entry is a {type(weights).__name__}, not a dict of weights")
    sd: dict[str, torch.Tensor] = {}
    for k, v in weights.items():
        if isinstance(v, np.ndarray):
            sd[str(k)] = torch.from_numpy(np.array(v, copy=True))
        elif isinstance(v, torch.Tensor):
            sd[str(k)] = v
        elif weights is not obj:  # inside a "model" dict every entry must be a weight
            raise CheckpointError(f"{source}: entry {k!r} of the weights is a {type(v).__name__}, not an array")
    if not sd:
        raise CheckpointError(f"{source}: holds no arrays or tensors")
    info = {"kind": "pickle", **{k: v for k, v in obj.items() if k not in ("model", "state_dict") and k not in sd}}
    return sd, info


def full_model_state_dict(sd: dict[str, torch.Tensor], info: dict, source: str) -> dict[str, torch.Tensor]:
    """Rename a whole-model state dict from any supported layout to ours (official v2 names)."""
    if info["kind"] == "transformers":
        from maskformer.convert.hf import hf_to_official

        return hf_to_official(sd)
    from maskformer.convert.detectron2 import upgrade_names

    return upgrade_names(sd)


def load_full_weights(model: nn.Module, path: str | os.PathLike, *, strict: bool = False) -> KeyReport:
    """Load a whole-model checkpoint (any supported source) into `model`; returns the key report."""
    sd, info = read_state_dict(path)
    return load_checked(model, full_model_state_dict(sd, info, str(path)), source=str(path), strict=strict)


def load_backbone_weights(model: nn.Module, path: str | os.PathLike) -> KeyReport:
    """Load ImageNet backbone weights (torchvision ResNet, detectron2 R-50 / R-103 .pkl, official Swin .pth, or any
    checkpoint with `backbone.` keys) into `model.backbone` (or `model` itself if it has no `.backbone`).

    Missing / unexpected keys are reported by name; those known for the format (Swin norm0..3, head, attn_mask, the
    classifier, BatchNorm's num_batches_tracked) are reported as expected.
    """
    backbone = getattr(model, "backbone", model)
    sd, info = read_state_dict(path)
    mapped, expected_missing, expected_unexpected = to_backbone_state_dict(sd, info, backbone.state_dict().keys())
    return load_checked(
        backbone,
        mapped,
        source=str(path),
        # a BatchNorm backbone (CPU presets) initialised from a FrozenBN-format file: the step counter stays at 0
        expected_missing=[*expected_missing, "*.num_batches_tracked"],
        expected_unexpected=expected_unexpected,
    )


def to_backbone_state_dict(
    sd: dict[str, torch.Tensor], info: dict, backbone_keys: Iterable[str]
) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """(backbone state dict in our names, expected-missing patterns, expected-unexpected patterns) for any layout."""
    from maskformer.convert import detectron2, swin, torchvision

    sd = {k.removeprefix("module."): v for k, v in sd.items()}  # DDP-wrapped checkpoints
    if info["kind"] == "transformers":
        sd = full_model_state_dict(sd, info, "")
    if torchvision.is_torchvision_resnet(sd):
        return torchvision.convert_resnet(sd), [], list(torchvision.EXPECTED_UNEXPECTED)
    if swin.is_official_swin(sd):
        return swin.convert_swin(sd), list(swin.EXPECTED_MISSING), list(swin.EXPECTED_UNEXPECTED)
    mapped = detectron2.backbone_state_dict(sd, backbone_keys, heuristics=bool(info.get("matching_heuristics")))
    return mapped, [], list(detectron2.EXPECTED_UNEXPECTED_BACKBONE)


def read_transformers_dir(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json dict, state dict) of a transformers directory (model.safetensors or pytorch_model.bin)."""
    file = path / CONFIG_NAME
    if not file.is_file():
        raise CheckpointError(
            f"{path}: a directory without config.json is neither a model directory nor a transformers one"
        )
    try:
        hf_config = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: not valid JSON (truncated or corrupted?): {e}") from None
    if hf_config.get("model_type") != "maskformer":
        raise CheckpointError(f"{file}: model_type is {hf_config.get('model_type')!r}, expected 'maskformer'")
    if (path / "model.safetensors").is_file():
        return hf_config, load_safetensors(path / "model.safetensors")
    if (path / "pytorch_model.bin").is_file():
        from maskformer.convert.safe_pickle import load_weights_pickle

        sd, _ = unwrap_pickled(load_weights_pickle(path / "pytorch_model.bin"), str(path / "pytorch_model.bin"))
        return hf_config, sd
    raise CheckpointError(f"{path}: transformers directory without model.safetensors or pytorch_model.bin")


def convert_transformers(
    path: str | os.PathLike, *, backbone: nn.Module | None = None
) -> tuple[nn.Module, Config, DatasetMeta, KeyReport]:
    """(model, cfg, meta, report) from a transformers MaskFormer directory (config.json + weights).

    Class names come from `id2label`. `backbone`: a module for backbones no config name describes (e.g. tiny test
    configs); the default builds the named backbone matching the transformers backbone config.
    """
    from maskformer.convert.hf import hf_config_to_config
    from maskformer.modeling import build_model

    sd, info = read_state_dict(path)
    if info["kind"] != "transformers":
        raise CheckpointError(f"{path}: not a transformers checkpoint directory")
    hf_config = dict(info["hf_config"])
    if backbone is not None:  # head fields only: the backbone is given
        hf_config["backbone_config"] = {"model_type": "resnet", "layer_type": "bottleneck", "depths": [3, 4, 6, 3]}
    try:
        cfg = hf_config_to_config(hf_config)
    except ValueError as e:
        raise CheckpointError(f"{Path(path) / CONFIG_NAME}: {e}") from None
    if backbone is not None:
        cfg.model.backbone = f"custom:{type(backbone).__name__}"
    model = build_model(cfg, backbone=backbone)
    report = load_checked(model, full_model_state_dict(sd, info, str(path)), source=str(path), strict=True)
    id2label = info["hf_config"].get("id2label") or {}
    names = [str(id2label.get(str(i), id2label.get(i, f"class_{i}"))) for i in range(cfg.model.num_classes)]
    meta = DatasetMeta(name=info["hf_config"].get("_name_or_path") or "transformers", class_names=names)
    return model.eval(), cfg, meta, report
