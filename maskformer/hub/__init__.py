"""Pretrained models by name: model-zoo names, Hugging Face hub ids, URLs and local checkpoints -> a cached model
directory (`resolve`), and ImageNet backbone weights by name (`backbone_weights`).

    from maskformer.hub import load_model, resolve
    path = resolve("maskformer_swin_t_ade20k")          # downloads, verifies, converts once; then a local folder
    model, cfg, meta = load_model("facebook/maskformer-swin-base-ade@main")

See resolve.py for the reference forms, cache.py for the cache layout (`MASKFORMER_HOME`), zoo.py for the table.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from maskformer.hub.download import DownloadError, HubError
from maskformer.hub.resolve import Reference, backbone_weights, offline, parse_reference, resolve
from maskformer.hub.zoo import BACKBONE_WEIGHTS, OFFICIAL_INIT, ZOO, ZooEntry


def is_reference(ref: str | os.PathLike) -> bool:
    """True if `ref` names pretrained weights (anything but a preset name without a zoo entry)."""
    from maskformer.config import PRESETS

    return str(ref) in ZOO or str(ref) not in PRESETS


def load_model(ref: str | os.PathLike, device="cpu", *, overrides: Iterable[str] = ()):
    """(model in eval mode, cfg, meta) from any reference, or a randomly initialised preset (a preset name that is
    not also a zoo name). Same signature and result as `maskformer.convert.load_model`."""
    from maskformer.convert import load_model as load_dir

    return load_dir(resolve(ref) if is_reference(ref) else ref, device, overrides=overrides)


__all__ = [
    "BACKBONE_WEIGHTS",
    "DownloadError",
    "HubError",
    "OFFICIAL_INIT",
    "Reference",
    "ZOO",
    "ZooEntry",
    "backbone_weights",
    "is_reference",
    "load_model",
    "offline",
    "parse_reference",
    "resolve",
]
