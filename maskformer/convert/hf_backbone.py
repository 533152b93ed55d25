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
    (r"encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution\.weight", r"res{\1}.\2.shortcut.weight"),
    (rf"encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization\.{_BN}", r"res{\1}.\2.shortcut.norm.\3"),
    (r"encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.convolution\.weight", r"res{\1}.\2.conv{\3}.weight"),
    (rf"encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.normalization\.{_BN}", r"res{\1}.\2.conv{\3}.norm.\4"),
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
    """(the weights in our names with `prefix`, the source keys no rule maps, incomplete q/k/v sets included; they
    stay in the result under their source names, so loading reports them as unexpected)."""
    if kind not in _DROPPED:
        raise ValueError(f"hf_backbone_to_official: kind must be 'swin' or 'resnet', got {kind!r}")
    rules = _SWIN_RULES if kind == "swin" else _RESNET_RULES
    out, unknown, qkv = Renamed(), [], {}
    for src, value in state_dict.items():
        key = src[ENCODER.match(src).end() :]
        m = _SWIN_QKV.fullmatch(key) if kind == "swin" else None
        if m:
            qkv.setdefault(prefix + m.expand(r"layers.\1.blocks.\2.attn.qkv.\4"), {})[m.group(3)] = src
        elif _DROPPED[kind].fullmatch(key):
            out.dropped.append(src)
        elif (new := _apply_rules(rules, key)) is None:
            unknown.append(src)
        else:
            out.add(prefix + new, value, src)
    unknown += add_fused(out, qkv, state_dict, ("query", "key", "value"))
    for src in unknown:
        out.add(src, state_dict[src], src)
    return out, unknown


def add_fused(out: Renamed, groups: dict[str, dict[str, str]], sd: dict[str, torch.Tensor], order) -> list[str]:
    """Add each complete group (our key -> {part: source key}) to `out` as one tensor, the parts concatenated in
    `order` along dim 0 ([3C, C] or [3C]); returns the source keys of incomplete groups."""
    left = []
    for key, parts in groups.items():
        if set(parts) == set(order):
            out.add(key, torch.cat([sd[parts[p]] for p in order]), parts[order[0]])
        else:
            left += parts.values()
    return left


def _apply_rules(rules: list[tuple[str, str]], key: str) -> str | None:
    """First matching (pattern, template) rewrite; ResNet templates shift stage/layer indices ({\\1} -> i+2 etc.)."""
    for pattern, template in rules:
        m = re.fullmatch(pattern, key)
        if m is None:
            continue
        new = re.sub(r"res\{(\d+)\}", lambda g: f"res{int(g.group(1)) + 2}", m.expand(template))
        return re.sub(r"conv\{(\d+)\}", lambda g: f"conv{int(g.group(1)) + 1}", new)
    return None
