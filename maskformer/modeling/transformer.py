"""DETR transformer pieces (post-norm) with `nn.MultiheadAttention`-compatible parameter names.

Reference notes 3.2 and 3.3. Everything here is batch-first: tokens are [B, L, C]. Attention runs through
`F.scaled_dot_product_attention` over the packed `in_proj_weight` / `in_proj_bias` / `out_proj` parameters, so official
checkpoints (which store nn.MultiheadAttention weights) load without any renaming.

- `TransformerDecoder`: the MaskFormer predictor's decoder (zeros target + learned query positions, shared final `norm`
  applied to every layer's output).
- `TransformerEncoderOnly`: the 6-layer encoder of the "+6 Enc" pixel decoder (no final norm, as post-norm DETR).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MultiheadAttention(nn.Module):
    """Multi-head attention with nn.MultiheadAttention's parameters (in_proj_weight [3C, C], in_proj_bias, out_proj).

    Dropout `dropout` is applied to the attention weights in training, as nn.MultiheadAttention does.
    """

    def __init__(self, embed_dim: int, num_heads: int, *, dropout: float = 0.0):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, -1).transpose(1, 2)  # [B, L, C] -> [B, h, L, C/h]

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """query [B, Lq, C], key/value [B, Lk, C] -> [B, Lq, C]. Pass the same tensor as query and key to fuse their
        projections into one matmul (self-attention). attn_mask: optional bool [B, 1 or h, Lq, Lk], True = may attend
        (scaled_dot_product_attention's convention; Mask2Former's masked attention)."""
        c = self.embed_dim
        w, b = self.in_proj_weight, self.in_proj_bias
        if query is key:
            q, k = F.linear(query, w[: 2 * c], b[: 2 * c]).chunk(2, dim=-1)  # [B, Lq, 2C] -> 2 x [B, Lq, C]
        else:
            q = F.linear(query, w[:c], b[:c])
            k = F.linear(key, w[c : 2 * c], b[c : 2 * c])
        v = F.linear(value, w[2 * c :], b[2 * c :])
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(
            self._heads(q), self._heads(k), self._heads(v), attn_mask=attn_mask, dropout_p=p
        )
        out = out.transpose(1, 2).reshape(query.shape[0], query.shape[1], c)  # [B, h, Lq, C/h] -> [B, Lq, C]
        return self.out_proj(out)


def _ffn(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """linear2(dropout(relu(linear1(x)))) for a layer holding linear1, dropout, linear2."""
    return layer.linear2(layer.dropout(F.relu(layer.linear1(x))))


class TransformerDecoderLayer(nn.Module):
    """Post-norm DETR decoder layer: self-attention, cross-attention, FFN, each with residual + LayerNorm."""

    def __init__(self, *, d_model: int, nhead: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(
        self, tgt: torch.Tensor, memory: torch.Tensor, memory_pos: torch.Tensor, query_pos: torch.Tensor
    ) -> torch.Tensor:
        """tgt [B, Q, C]; memory [B, HW, C]; memory_pos = memory + pos [B, HW, C]; query_pos [B, Q, C] -> [B, Q, C]."""
        q = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, q, tgt)))
        tgt = self.norm2(tgt + self.dropout2(self.multihead_attn(tgt + query_pos, memory_pos, memory)))
        return self.norm3(tgt + self.dropout3(_ffn(self, tgt)))


class TransformerDecoder(nn.Module):
    """Stack of decoder layers with one shared final LayerNorm `norm` applied to every layer's output."""

    def __init__(self, *, d_model: int, nhead: int, dim_feedforward: int, dropout: float, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerDecoderLayer(d_model=d_model, nhead=nhead, dim_feedforward=dim_feedforward, dropout=dropout)
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        pos: torch.Tensor,
        query_pos: torch.Tensor,
        *,
        return_intermediate: bool = True,
    ) -> torch.Tensor:
        """-> [L, B, Q, C], norm(output of every layer); [1, B, Q, C] (last layer only) if not return_intermediate."""
        memory_pos = memory + pos  # the cross-attention key input is the same for every layer
        outs = []
        for layer in self.layers:
            tgt = layer(tgt, memory, memory_pos, query_pos)
            if return_intermediate:
                outs.append(self.norm(tgt))
        return torch.stack(outs) if return_intermediate else self.norm(tgt).unsqueeze(0)


class Transformer(nn.Module):
    """The predictor's DETR transformer with ENC_LAYERS 0 (memory = input tokens): only `decoder.*` parameters."""

    def __init__(self, *, d_model: int, nhead: int, dim_feedforward: int, dropout: float, num_decoder_layers: int):
        super().__init__()
        self.decoder = TransformerDecoder(
            d_model=d_model,
            nhead=nhead,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
            num_layers=num_decoder_layers,
        )
        xavier_reset(self)

    def forward(
        self, src: torch.Tensor, query_embed: torch.Tensor, pos: torch.Tensor, *, return_intermediate: bool = True
    ) -> torch.Tensor:
        """src, pos [B, C, H, W]; query_embed [Q, C] -> hs [L, B, Q, C] (or [1, B, Q, C], see TransformerDecoder)."""
        b = src.shape[0]
        memory = src.flatten(2).transpose(1, 2)  # [B, C, H, W] -> [B, HW, C]
        pos = pos.flatten(2).transpose(1, 2)  # [B, C, H, W] -> [B, HW, C]
        query_pos = query_embed.unsqueeze(0).expand(b, -1, -1)  # [Q, C] -> [B, Q, C]
        tgt = torch.zeros_like(query_pos)
        return self.decoder(tgt, memory, pos, query_pos, return_intermediate=return_intermediate)


class TransformerEncoderLayer(nn.Module):
    """Post-norm DETR encoder layer: self-attention (q = k = src + pos, v = src), FFN."""

    def __init__(self, *, d_model: int, nhead: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, src: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """src, pos [B, HW, C] -> [B, HW, C]."""
        q = src + pos
        src = self.norm1(src + self.dropout1(self.self_attn(q, q, src)))
        return self.norm2(src + self.dropout2(_ffn(self, src)))


class TransformerEncoder(nn.Module):
    """Stack of encoder layers; post-norm, so no final norm (the official builds one only for pre-norm)."""

    def __init__(self, *, d_model: int, nhead: int, dim_feedforward: int, dropout: float, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerEncoderLayer(d_model=d_model, nhead=nhead, dim_feedforward=dim_feedforward, dropout=dropout)
            for _ in range(num_layers)
        )

    def forward(self, src: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            src = layer(src, pos)
        return src


class TransformerEncoderOnly(nn.Module):
    """The "+6 Enc" pixel decoder's encoder (`transformer.encoder.layers.*`), on a [B, C, H, W] map."""

    def __init__(self, *, d_model: int, nhead: int, dim_feedforward: int, dropout: float, num_encoder_layers: int):
        super().__init__()
        self.encoder = TransformerEncoder(
            d_model=d_model,
            nhead=nhead,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
            num_layers=num_encoder_layers,
        )
        xavier_reset(self)

    def forward(self, src: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """src, pos [B, C, H, W] -> [B, C, H, W]."""
        b, c, h, w = src.shape
        tokens = self.encoder(src.flatten(2).transpose(1, 2), pos.flatten(2).transpose(1, 2))  # [B, HW, C]
        return tokens.transpose(1, 2).reshape(b, c, h, w)  # [B, HW, C] -> [B, C, H, W]


def xavier_reset(module: nn.Module) -> None:
    """DETR's init: xavier-uniform on every parameter with more than one dimension; biases and norms keep defaults."""
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)
