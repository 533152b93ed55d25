"""ImageNet backbone weights -> our backbone keys, and the names of the backbones of the BACKBONES table.

- torchvision ResNet (`resnet50-*.pth`): renamed by `torchvision_name`; `fc.*` is expected unexpected.
- official Swin (`swin_*_224.pth`, `..._384_22k.pth`, detectron2-wrapped `.pkl`): our names, less a `backbone.`
  prefix; the per-stage norms `norm0..3` (gamma=1, beta=0) are expected missing, the classifier expected unexpected.
- detectron2 (`R-50.pkl`, any checkpoint with `backbone.` keys): our names; with "matching_heuristics" a key that is
  not ours is matched to the unique model key it is a dotted suffix of.
"""

from __future__ import annotations

import re

import torch

from maskformer.checkpoint import Renamed


def named_backbones() -> dict[str, tuple[str, dict]]:
    """BACKBONES name -> ("swin" | "resnet", the SwinTransformer / ResNet keywords it is built with, JSON types);
    not R101c (DeepLab stem), which no transformers layout has."""
    from maskformer.backbones.resnet import RESNET_VARIANTS
    from maskformer.backbones.swin import SWIN_VARIANTS

    out = {n: ("swin", {**_lists(a), "mlp_ratio": 4.0, "patch_size": 4}) for n, a in SWIN_VARIANTS.items()}
    for name, a in RESNET_VARIANTS.items():
        if "stem" not in a:
            out[name] = ("resnet", {"bottleneck_channels": None, "stem_channels": 64, **_lists(a)})
    return out


def backbone_name(kind: str, args: dict) -> str | None:
    """The BACKBONES name built with exactly these `kind` keywords, or None (then `model.backbone_args` holds them)."""
    return next((n for n, (k, a) in named_backbones().items() if k == kind and a == _lists(args)), None)


def backbone_by_depths(kind: str, width, depths: tuple[int, ...], source: str) -> str:
    """The BACKBONES name of the `kind` backbone with this width (Swin: embedding dim, ResNet: "basic" |
    "bottleneck") and stage depths; otherwise a ValueError naming `source` and the known layouts."""
    table = {}
    for name, (k, a) in named_backbones().items():
        if k == kind:
            block = "basic" if a.get("bottleneck_channels", 0) is None else "bottleneck"
            table[(a.get("embed_dim", block), tuple(a["depths"]))] = name
    if (width, depths) not in table:
        raise ValueError(f"{source} {kind} backbone {(width, depths)} matches no backbone here; known: {sorted(table)}")
    return table[(width, depths)]


def _lists(args: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in args.items()}


def to_backbone_keys(sd: dict[str, torch.Tensor], backbone_keys, heuristics=False) -> tuple[Renamed, list, list]:
    """(backbone weights in our names, expected-missing patterns, expected-unexpected patterns) for an ImageNet file
    of any supported layout (a DDP `module.` prefix is removed). `heuristics`: see the module doc."""
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    if "conv1.weight" in sd and "layer1.0.conv1.weight" in sd:
        return Renamed.by_key(sd, torchvision_name), [], ["fc.*"]
    if "conv1_w" in sd or any(re.match(r"res\d_\d+_branch", k) for k in sd):
        raise ValueError(
            "Caffe2-format ResNet weights (keys like res2_0_branch2a_w) are not supported; use the torchvision "
            "weights (resnet50-*.pth) or detectron2's ImageNetPretrained/torchvision/R-50.pkl"
        )
    prefixed = any(k.startswith("backbone.") for k in sd)  # a whole model: only its backbone
    ours = list(backbone_keys)
    theirs = {k.removeprefix("backbone.") for k in sd}
    swin = "patch_embed.proj.weight" in theirs  # official Swin: our names already
    heuristics = heuristics and not swin

    def rename(key: str) -> str | None:
        if prefixed and not key.startswith("backbone."):
            return None
        key = key.removeprefix("backbone.")
        hits = [m for m in ours if m.endswith("." + key) or key.endswith("." + m)] if heuristics else []
        return hits[0] if key not in ours and len(hits) == 1 and hits[0] not in theirs else key

    if swin:
        return Renamed.by_key(sd, rename), ["norm[0-3].*"], ["norm.*", "head.*", "*attn_mask"]
    return Renamed.by_key(sd, rename), [], ["fc.*", "fc1000.*", "linear.*"]  # torchvision / detectron2 ImageNet heads


def torchvision_name(key: str) -> str | None:
    """torchvision ResNet name -> ours; None for keys to drop (num_batches_tracked). Unknown keys stay unchanged."""
    if key.endswith("num_batches_tracked"):
        return None
    m = re.match(r"^layer(\d)\.(\d+)\.(.*)$", key)
    if m is None:
        return re.sub(r"^bn1\.", "stem.conv1.norm.", re.sub(r"^conv1\.", "stem.conv1.", key))
    rest = re.sub(r"^bn(\d)\.", r"conv\1.norm.", m.group(3))
    rest = re.sub(r"^downsample\.0\.", "shortcut.", rest)
    rest = re.sub(r"^downsample\.1\.", "shortcut.norm.", rest)
    return f"res{int(m.group(1)) + 1}.{m.group(2)}.{rest}"
