"""Weight sources on disk: what a path holds, and its tensors with the names they have there."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from maskformer.checkpoint import WEIGHTS_NAME, CheckpointError, is_model_dir, load_safetensors, read_json

TRANSFORMERS_TYPES = ("maskformer", "mask2former")  # transformers `model_type`s converted by maskformer.convert


def detect_source(path: str | os.PathLike) -> str:
    """What `path` holds, from its names and config only (no weights read): "model_dir" | "transformers" (a
    directory) | "safetensors" | "pickle" (a file). Anything else is a `CheckpointError` naming the path."""
    path = Path(path)
    if path.is_dir():
        if is_model_dir(path):
            return "model_dir"
        transformers_config(path)
        return "transformers"
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file or directory")
    return "safetensors" if path.suffix == ".safetensors" else "pickle"


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict of tensors, info) from a weight file or directory, keys as stored (not yet renamed). info: "kind"
    (see `detect_source`), "hf_config" (transformers) or a pickle's other top-level entries ("matching_heuristics")."""
    path = Path(path)
    kind = detect_source(path)
    if kind in ("model_dir", "safetensors"):
        return load_safetensors(path / WEIGHTS_NAME if kind == "model_dir" else path), {"kind": kind}
    if kind == "pickle":
        return unwrap_pickled(path)
    info = {"kind": kind, "hf_config": transformers_config(path)}
    if (path / "model.safetensors").is_file():
        return load_safetensors(path / "model.safetensors"), info
    if (path / "pytorch_model.bin").is_file():
        return unwrap_pickled(path / "pytorch_model.bin")[0], info
    raise CheckpointError(f"{path}: transformers directory without model.safetensors or pytorch_model.bin")


def transformers_config(path: Path) -> dict:
    """The config.json of a transformers directory of a supported `model_type`; errors name the file."""
    file = path / "config.json"
    if not file.is_file():
        raise CheckpointError(
            f"{path}: a directory without config.json is neither a model directory nor a transformers one"
        )
    config = read_json(file)
    if not isinstance(config, dict) or config.get("model_type") not in TRANSFORMERS_TYPES:
        kind = config.get("model_type") if isinstance(config, dict) else None
        raise CheckpointError(f"{file}: model_type is {kind!r}, expected one of {list(TRANSFORMERS_TYPES)}")
    return config


def unwrap_pickled(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The weights inside a pickle ({"model": ...}, {"state_dict": ...} or a bare dict) as tensors, and info."""
    import numpy as np

    from maskformer.convert.safe_pickle import load_weights_pickle

    obj = load_weights_pickle(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of weights, found {type(obj).__name__}")
    weights = obj.get("model", obj.get("state_dict", obj))
    if not isinstance(weights, dict):
        raise CheckpointError(f"{path}: the 'model' entry is a {type(weights).__name__}, not a dict of weights")
    sd: dict[str, torch.Tensor] = {}
    for k, v in weights.items():
        if isinstance(v, np.ndarray):
            sd[str(k)] = torch.from_numpy(np.array(v, copy=True))
        elif isinstance(v, torch.Tensor):
            sd[str(k)] = v
        elif weights is not obj:  # inside a "model" dict every entry must be a weight
            raise CheckpointError(f"{path}: entry {k!r} of the weights is a {type(v).__name__}, not an array")
    if not sd:
        raise CheckpointError(f"{path}: holds no arrays or tensors")
    return sd, {"kind": "pickle", **{k: v for k, v in obj.items() if k not in ("model", "state_dict") and k not in sd}}
