"""Mask2Former's masked-attention transformer decoder and its `sem_seg_head`.

Reference notes mask2former.md section 3. Learnable query features (`query_feat`) and positional embeddings
(`query_embed`) go through `dec_layers - 1` layers (DEC_LAYERS = 10 in every official config: 9 layers plus the
prediction made from the raw queries). Layer i attends to level i mod 3 of the pixel decoder's maps (1/32, 1/16, 1/8,
1/32, ...), in this order: masked cross-attention, self-attention, FFN, each post-norm. Cross-attention of query q is
restricted to the pixels where the previous prediction's mask, bilinearly resized to that level, has sigmoid >= 0.5;
a query whose mask is empty there attends everywhere. Every prediction is `decoder_norm` -> `class_embed` /
`mask_embed` . mask features. Parameter names are the official ones under `sem_seg_head.predictor.`.

Export-friendly: the attention mask is a boolean tensor combined with logical ops (no index assignment), sizes come
from the feature maps' shapes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from maskformer.layers import c2_xavier_fill

from .heads import MLP
from .position_encoding import PositionEmbeddingSine
from .transformer import MultiheadAttention, xavier_reset

NUM_LEVELS = 3


class CrossAttentionLayer(nn.Module):
    """tgt = norm(tgt + multihead_attn(tgt + query_pos, key, value, mask)); post-norm."""

    def __init__(self, *, d_model: int, nhead: int, dropout: float = 0.0):
        super().__init__()
        self.multihead_attn = MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        xavier_reset(self)

    def forward(self, tgt, key, value, query_pos, attend: torch.Tensor | None) -> torch.Tensor:
        """tgt, query_pos [B, Q, C]; key (= memory + pos), value [B, HW, C]; attend bool [B, 1, Q, HW] or None."""
        return self.norm(tgt + self.dropout(self.multihead_attn(tgt + query_pos, key, value, attend)))


class SelfAttentionLayer(nn.Module):
    """tgt = norm(tgt + self_attn(q = k = tgt + query_pos, v = tgt)); post-norm."""

    def __init__(self, *, d_model: int, nhead: int, dropout: float = 0.0):
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        xavier_reset(self)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        q = tgt + query_pos
        return self.norm(tgt + self.dropout(self.self_attn(q, q, tgt)))


class FFNLayer(nn.Module):
    """tgt = norm(tgt + linear2(ReLU(linear1(tgt)))); post-norm."""

    def __init__(self, *, d_model: int, dim_feedforward: int, dropout: float = 0.0):
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        xavier_reset(self)

    def forward(self, tgt: torch.Tensor) -> torch.Tensor:
        return self.norm(tgt + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(tgt), inplace=True)))))


def attention_mask(mask_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Where each query may attend on a level: bool [B, 1, Q, h*w] (True = attend), from mask logits [B, Q, H, W].

    Blocked where sigmoid(bilinear resize to `size`) < 0.5; a query blocked everywhere attends everywhere instead
    (the official row reset, here as a logical op). No gradient flows through it (the official detach).
    """
    return attend_where(F.interpolate(mask_logits.detach(), size=size, mode="bilinear", align_corners=False))


def attend_where(level_logits: torch.Tensor) -> torch.Tensor:
    """`attention_mask` from mask logits already at the level's size [B, Q, h, w] -> bool [B, 1, Q, h*w]."""
    blocked = level_logits.detach().sigmoid().flatten(2) < 0.5  # [B, Q, h*w]
    blocked = blocked & ~blocked.all(dim=-1, keepdim=True)
    return (~blocked).unsqueeze(1)


class MultiScaleMaskedTransformerDecoder(nn.Module):
    """forward(x: 3 maps [B, C_in, h_l, w_l] (1/32, 1/16, 1/8), mask_features [B, mask_dim, H, W]) -> dict.

    {"pred_logits": [B, Q, K+1], "pred_masks": [B, Q, H, W]} for the last layer, plus "aux_outputs": the
    `dec_layers - 1` earlier predictions (raw queries first) when training with deep supervision.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        hidden_dim: int = 256,
        num_queries: int = 100,
        nheads: int = 8,
        dim_feedforward: int = 2048,
        dec_layers: int = 10,
        mask_dim: int = 256,
        dropout: float = 0.0,
        enforce_input_proj: bool = False,
        deep_supervision: bool = True,
    ):
        super().__init__()
        if dec_layers < 1:
            raise ValueError(f"dec_layers must be >= 1 (the raw-query prediction counts as one), got {dec_layers}")
        self.deep_supervision = deep_supervision
        # a maskformer.cpu_tuning switch: without aux outputs, the earlier predictions (attention masks only) are
        # made at each level's size; off = the official full-size masks, then resized (same values, more FLOPs)
        self.level_masks = True
        self.num_heads = nheads
        self.num_layers = dec_layers - 1
        self.pe_layer = PositionEmbeddingSine(num_pos_feats=hidden_dim // 2)
        kw = dict(d_model=hidden_dim, dropout=dropout)
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(nhead=nheads, **kw) for _ in range(self.num_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(nhead=nheads, **kw) for _ in range(self.num_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(dim_feedforward=dim_feedforward, **kw) for _ in range(self.num_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(NUM_LEVELS, hidden_dim)
        self.input_proj = nn.ModuleList()
        for _ in range(NUM_LEVELS):
            if in_channels != hidden_dim or enforce_input_proj:
                proj = nn.Conv2d(in_channels, hidden_dim, 1)
                c2_xavier_fill(proj)
                self.input_proj.append(proj)
            else:
                self.input_proj.append(nn.Sequential())  # no parameters, as the official
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        old = prefix + "static_query.weight"  # checkpoints before the official v2 rename
        if old in state_dict and prefix + "query_feat.weight" not in state_dict:
            state_dict[prefix + "query_feat.weight"] = state_dict.pop(old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: list[torch.Tensor], mask_features: torch.Tensor) -> dict:
        if len(x) != NUM_LEVELS:
            raise ValueError(f"masked-attention decoder: expected {NUM_LEVELS} feature maps, got {len(x)}")
        sizes = [(f.shape[-2], f.shape[-1]) for f in x]
        values, keys = [], []
        for i, f in enumerate(x):
            src = self.input_proj[i](f).flatten(2).transpose(1, 2) + self.level_embed.weight[i]  # [B, h*w, C]
            values.append(src)
            keys.append(src + self.pe_layer(f).flatten(2).transpose(1, 2).to(src.dtype))  # key = value + pos
        b = mask_features.shape[0]
        query_pos = self.query_embed.weight.unsqueeze(0).expand(b, -1, -1)  # [B, Q, C]
        output = self.query_feat.weight.unsqueeze(0).expand(b, -1, -1)  # [B, Q, C]
        aux = self.training and self.deep_supervision
        small = self.level_masks and not aux  # the official form (full-size masks, then resized) when off
        if small:
            # only the last prediction is returned: the earlier ones serve only as attention masks, which need the
            # mask logits at the level's size. Resizing is linear per channel, so resize(mask_embed . features) =
            # mask_embed . resize(features): the mask features are resized once per level instead of the logits of
            # every layer computed at full resolution and resized.
            level_features = [
                F.interpolate(mask_features, size=size, mode="bilinear", align_corners=False) for size in sizes
            ]  # [B, mask_dim, h_l, w_l]
        predictions = []
        for i in range(self.num_layers + 1):
            last = i == self.num_layers
            level = i % NUM_LEVELS
            if not small or last:
                logits, masks = self.predict(output, mask_features, with_class=True)
                predictions.append({"pred_logits": logits, "pred_masks": masks})
                if last:
                    break
                attend = attention_mask(masks, sizes[level])
            else:
                attend = attend_where(self.predict(output, level_features[level], with_class=False)[1])
            output = self.transformer_cross_attention_layers[i](output, keys[level], values[level], query_pos, attend)
            output = self.transformer_self_attention_layers[i](output, query_pos)
            output = self.transformer_ffn_layers[i](output)
        out = predictions[-1]
        if aux:
            out["aux_outputs"] = predictions[:-1]
        return out

    def predict(
        self, output: torch.Tensor, mask_features: torch.Tensor, *, with_class: bool = True
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Heads on queries [B, Q, C]: (class logits [B, Q, K+1] or None, mask logits [B, Q, H, W])."""
        dec = self.decoder_norm(output)
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(dec), mask_features)  # [B, Q, H, W]
        return (self.class_embed(dec) if with_class else None), masks


class Mask2FormerHead(nn.Module):
    """`sem_seg_head` of Mask2Former: MSDeformAttn pixel decoder -> (mask features, 3 maps) -> masked decoder."""

    def __init__(self, *, pixel_decoder: nn.Module, predictor: MultiScaleMaskedTransformerDecoder):
        super().__init__()
        self.pixel_decoder = pixel_decoder
        self.predictor = predictor

    def forward(self, features: dict[str, torch.Tensor]) -> dict:
        mask_features, multi_scale = self.pixel_decoder(features)
        return self.predictor(multi_scale, mask_features)
