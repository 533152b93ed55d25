"""transformers' MaskFormer backbone state dict -> the official (detectron2 / D2SwinTransformer) names used here.

Input keys are those under `model.pixel_level_module.encoder.` with that prefix removed (a leading prefix is
stripped if present). Swin: `model.*` + `hidden_states_norms.{i}` (our `norm{i}`), separate q/k/v fused into
`attn.qkv` (q, k, v stacked along dim 0), the unused final `model.layernorm` dropped. ResNet: `embedder.*` /
`encoder.stages.*`; BatchNorm2d -> FrozenBN buffers (eval-mode equivalent, same eps 1e-5), `num_batches_tracked`
dropped. Unrecognized keys are an error naming them. Table: transformers-oracle.md section 4.
"""

from __future__ import annotations

import re

import torch

HF_ENCODER_PREFIX = "model.pixel_level_module.encoder."
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
_SWIN_QKV = re.compile(
    r"model\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.self\.(query|key|value)\.(weight|bias)"
)
_SWIN_DROPPED = re.compile(r"model\.layernorm\..+")  # final LN of the classification Swin: computed, never used

_RESNET_RULES = [
    (r"embedder\.embedder\.convolution\.weight", r"stem.conv1.weight"),
    (rf"embedder\.embedder\.normalization\.{_BN}", r"stem.conv1.norm.\1"),
    (r"encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution\.weight", r"res{\1}.\2.shortcut.weight"),
    (rf"encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization\.{_BN}", r"res{\1}.\2.shortcut.norm.\3"),
    (r"encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.convolution\.weight", r"res{\1}.\2.conv{\3}.weight"),
    (rf"encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.normalization\.{_BN}", r"res{\1}.\2.conv{\3}.norm.\4"),
]
_RESNET_DROPPED = re.compile(r".*\.num_batches_tracked")


def hf_backbone_to_official(state_dict: dict[str, torch.Tensor], kind: str) -> dict[str, torch.Tensor]:
    """Map a transformers MaskFormer backbone state dict (`kind`: "swin" | "resnet") to our/official names."""
    sd = {k.removeprefix(HF_ENCODER_PREFIX): v for k, v in state_dict.items()}
    if kind == "swin":
        return _convert_swin(sd)
    if kind == "resnet":
        return _convert_resnet(sd)
    raise ValueError(f"hf_backbone_to_official: kind must be 'swin' or 'resnet', got {kind!r}")


def _convert_swin(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, qkv, unknown = {}, {}, []
    for key, value in sd.items():
        m = _SWIN_QKV.fullmatch(key)
        if m:
            stage, block, part, kind = m.groups()
            qkv.setdefault((stage, block, kind), {})[part] = value
        elif not _SWIN_DROPPED.fullmatch(key):
            new = _apply_rules(_SWIN_RULES, key)
            if new is None:
                unknown.append(key)
            else:
                out[new] = value
    _raise_unknown(unknown, "swin")
    for (stage, block, kind), parts in qkv.items():
        missing = [p for p in ("query", "key", "value") if p not in parts]
        if missing:
            raise KeyError(f"swin layers.{stage}.blocks.{block}: attention {kind} lacks {missing} (q, k, v needed)")
        fused = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)  # [3C, C] or [3C]
        out[f"layers.{stage}.blocks.{block}.attn.qkv.{kind}"] = fused
    return out


def _convert_resnet(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, unknown = {}, []
    for key, value in sd.items():
        if _RESNET_DROPPED.fullmatch(key):
            continue
        new = _apply_rules(_RESNET_RULES, key)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    _raise_unknown(unknown, "resnet")
    return out


def _apply_rules(rules: list[tuple[str, str]], key: str) -> str | None:
    """First matching (pattern, template) rewrite; ResNet templates shift stage/layer indices ({\\1} -> i+2 etc.)."""
    for pattern, template in rules:
        m = re.fullmatch(pattern, key)
        if m is None:
            continue
        new = m.expand(template)
        if "{" in new:  # res{i} -> res{i+2}, conv{k} -> conv{k+1}
            new = re.sub(r"res\{(\d+)\}", lambda g: f"res{int(g.group(1)) + 2}", new)
            new = re.sub(r"conv\{(\d+)\}", lambda g: f"conv{int(g.group(1)) + 1}", new)
        return new
    return None


def _raise_unknown(unknown: list[str], kind: str) -> None:
    if unknown:
        shown = ", ".join(unknown[:8]) + (f" (+{len(unknown) - 8} more)" if len(unknown) > 8 else "")
        raise KeyError(f"hf_backbone_to_official({kind!r}): unrecognized transformers key(s): {shown}")
