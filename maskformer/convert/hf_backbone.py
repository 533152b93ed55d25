"""transformers' MaskFormer backbone state dict -> the official (detectron2 / D2SwinTransformer) names used here.

Keys may carry the prefix `[model.]pixel_level_module.encoder.`. Swin q/k/v are fused into `attn.qkv`; ResNet
BatchNorm2d maps onto FrozenBN buffers (eval-mode equivalent, same eps 1e-5). Table: transformers-oracle.md section 4.
"""

from __future__ import annotations

import re

import torch

from maskformer.checkpoint import Renamed

ENCODER = re.compile(r"(?:(?:model\.)?pixel_level_module\.encoder\.)?")
_BN = r"(weight|bias|running_mean|running_var)"

_SWIN_BLOCK = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.self.relative_position_bias_table": "attn.relative_position_bias_table",
    "attention.self.relative_position_index": "attn.relative_position_index",
    "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}
_SWIN_RULES = [
    (r"model\.embeddings\.patch_embeddings\.projection\.(.+)", r"patch_embed.proj.\1"),
    (r"model\.embeddings\.norm\.(.+)", r"patch_embed.norm.\1"),
    (r"model\.encoder\.layers\.(\d+)\.downsample\.(.+)", r"layers.\1.downsample.\2"),
    (r"hidden_states_norms\.(\d+)\.(.+)", r"norm\1.\2"),
] + [
    (rf"model\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.{re.escape(hf)}(.*)", rf"layers.\1.blocks.\2.{ours}\3")
    for hf, ours in _SWIN_BLOCK.items()
]
_SWIN_QKV = re.compile(r"model\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.self\.(query|key|value)\.(\w+)")
_RESNET_RULES = [
    (r"embedder\.embedder\.convolution\.weight", r"stem.conv1.weight"),
    (rf"embedder\.embedder\.normalization\.{_BN}", r"stem.conv1.norm.\1"),
    (r"encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution\.weight", r"res{\1+2}.\2.shortcut.weight"),
    (rf"encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization\.{_BN}", r"res{\1+2}.\2.shortcut.norm.\3"),
    (r"encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.convolution\.weight", r"res{\1+2}.\2.conv{\3+1}.weight"),
    (rf"encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.normalization\.{_BN}", r"res{\1+2}.\2.conv{\3+1}.norm.\4"),
]
# Left out on purpose: the final LN of the classification Swin (computed, never used) and BatchNorm step counters.
_DROPPED = {"swin": re.compile(r"model\.layernorm\..+"), "resnet": re.compile(r".*\.num_batches_tracked")}


def hf_backbone_to_official(state_dict: dict[str, torch.Tensor], kind: str) -> dict[str, torch.Tensor]:
    """A transformers backbone state dict (`kind`: "swin" | "resnet") in our names; a key no rule maps (or an
    incomplete q/k/v set) is a KeyError naming it."""
    renamed, unknown = map_hf_backbone(state_dict, kind)
    if unknown:
        shown = ", ".join(unknown[:8]) + (f" (+{len(unknown) - 8} more)" if len(unknown) > 8 else "")
        raise KeyError(f"hf_backbone_to_official({kind!r}): unrecognized transformers key(s): {shown}")
    return renamed.tensors


def map_hf_backbone(state_dict: dict[str, torch.Tensor], kind: str, prefix: str = "") -> tuple[Renamed, list[str]]:
    """(the weights in our names with `prefix`, the source keys no rule maps, incomplete q/k/v sets included)."""
    if kind not in _DROPPED:
        raise ValueError(f"hf_backbone_to_official: kind must be 'swin' or 'resnet', got {kind!r}")
    if kind == "swin":
        fuse = (_SWIN_QKV, lambda m: m.expand(r"layers.\1.blocks.\2.attn.qkv.\4"), ("query", "key", "value"))
        return map_keys(state_dict, _SWIN_RULES, drop=_DROPPED[kind], fuse=fuse, strip=ENCODER, prefix=prefix)
    return map_keys(state_dict, _RESNET_RULES, drop=_DROPPED[kind], strip=ENCODER, prefix=prefix)


def map_keys(sd: dict[str, torch.Tensor], rules, *, drop, fuse=None, strip=None, prefix="", out=None):
    """The one key-by-key converter of transformers state dicts -> (`out` or a new Renamed, unknown source keys).

    Each key, less what `strip` matches at its start: `drop` (a regex) matches -> left out on purpose; `fuse` =
    (regex with the part in group 3, match -> our key, part order) matches -> collected, each complete set added
    as one tensor concatenated along dim 0 ([3C, C] or [3C]); else renamed by `apply_rules`, `prefix` in front. Keys
    no rule maps and incomplete sets stay under their source names (so loading reports them as unexpected)."""
    out = out or Renamed()
    unknown, groups = [], {}
    for src, value in sd.items():
        key = src[strip.match(src).end() :] if strip else src
        m = fuse[0].fullmatch(key) if fuse else None
        if m:
            groups.setdefault(prefix + fuse[1](m), {})[m.group(3)] = src
        elif drop.fullmatch(key):
            out.dropped.append(src)
        elif (new := apply_rules(rules, key)) is None:
            unknown.append(src)
            out.add(src, value, src)
        else:
            out.add(prefix + new, value, src)
    for key, parts in groups.items():
        if set(parts) == set(fuse[2]):
            out.add(key, torch.cat([sd[parts[p]] for p in fuse[2]]), parts[fuse[2][0]])
        else:
            unknown += parts.values()
            for src in parts.values():
                out.add(src, sd[src], src)
    return out, unknown


def apply_rules(rules: list[tuple[str, str]], key: str) -> str | None:
    """First matching (pattern, template) rewrite, or None; `{i+n}` / `{n-i}` in a template shift an index (ResNet
    stages: res{\\1+2}; transformers' FPN layers count from the top: adapter_{3-\\1})."""
    for pattern, template in rules:
        if m := re.fullmatch(pattern, key):
            return re.sub(r"\{(\d+)([+-])(\d+)\}", _shift, m.expand(template))
    return None


def _shift(g: re.Match) -> str:
    a, b = int(g.group(1)), int(g.group(3))
    return str(a + b if g.group(2) == "+" else a - b)
