"""DETR transformer pieces (post-norm, batch-first [B, L, C]; reference notes 3.2 and 3.3) with
`nn.MultiheadAttention`'s parameter names, so official checkpoints load without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MultiheadAttention(nn.Module):
    """Multi-head attention through F.scaled_dot_product_attention with nn.MultiheadAttention's parameters
    (in_proj_weight [3C, C], in_proj_bias, out_proj) and its dropout on the attention weights in training."""

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
        q, k, v = (t.view(*t.shape[:2], self.num_heads, -1).transpose(1, 2) for t in (q, k, v))  # [B, h, L, C/h]
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        out = out.transpose(1, 2).reshape(query.shape[0], query.shape[1], c)  # [B, h, Lq, C/h] -> [B, Lq, C]
        return self.out_proj(out)


class TransformerLayer(nn.Module):
    """Post-norm DETR layer, each step with residual + LayerNorm: self-attention (`norm1`), then for a decoder layer
    cross-attention to the memory (`multihead_attn`, `norm2`), then the FFN (`norm2` in an encoder, `norm3` in a
    decoder). All dropouts share one probability, so one stateless `dropout` module serves them all."""

    def __init__(self, *, d_model: int, nhead: int, dim_feedforward: int, dropout: float, decoder: bool):
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = MultiheadAttention(d_model, nhead, dropout=dropout) if decoder else None
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model) if decoder else None

    def forward(
        self, x: torch.Tensor, memory: torch.Tensor | None, memory_pos: torch.Tensor | None, pos: torch.Tensor
    ) -> torch.Tensor:
        """x, pos [B, L, C] (q = k = x + pos, v = x) -> [B, L, C]. Decoder layers also attend to memory [B, HW, C]
        with keys memory_pos = memory + its positions; encoder layers take None for both."""
        drop = self.dropout
        q = x + pos
        x = self.norm1(x + drop(self.self_attn(q, q, x)))
        if self.multihead_attn is None:
            ffn_norm = self.norm2
        else:
            x = self.norm2(x + drop(self.multihead_attn(x + pos, memory_pos, memory)))
            ffn_norm = self.norm3
        return ffn_norm(x + drop(self.linear2(drop(F.relu(self.linear1(x))))))


def _layer_stack(num_layers: int, d_model: int, nhead: int, dim_feedforward: int, dropout: float, *, decoder: bool):
    """`layers.{i}` (+ a final `norm` for a decoder): DETR's TransformerEncoder / TransformerDecoder, DETR's init."""
    layer = dict(d_model=d_model, nhead=nhead, dim_feedforward=dim_feedforward, dropout=dropout, decoder=decoder)
    stack = nn.ModuleDict({"layers": nn.ModuleList(TransformerLayer(**layer) for _ in range(num_layers))})
    if decoder:
        stack["norm"] = nn.LayerNorm(d_model)
    xavier_reset(stack)
    return stack


class Transformer(nn.Module):
    """The predictor's DETR transformer with ENC_LAYERS 0 (memory = input tokens): only `decoder.*` parameters
    (`decoder.layers.*` and one final `decoder.norm` shared by every layer's output)."""

    def __init__(self, *, d_model: int, nhead: int, dim_feedforward: int, dropout: float, num_decoder_layers: int):
        super().__init__()
        self.decoder = _layer_stack(num_decoder_layers, d_model, nhead, dim_feedforward, dropout, decoder=True)

    def forward(
        self, src: torch.Tensor, query_embed: torch.Tensor, pos: torch.Tensor, *, return_intermediate: bool = True
    ) -> torch.Tensor:
        """src, pos [B, C, H, W]; query_embed [Q, C] -> hs [L, B, Q, C], norm(output of every layer); [1, B, Q, C]
        (last layer only) if not return_intermediate."""
        memory = src.flatten(2).transpose(1, 2)  # [B, C, H, W] -> [B, HW, C]
        memory_pos = memory + pos.flatten(2).transpose(1, 2)  # the cross-attention key input of every layer
        query_pos = query_embed.unsqueeze(0).expand(src.shape[0], -1, -1)  # [Q, C] -> [B, Q, C]
        tgt, outs = torch.zeros_like(query_pos), []
        for layer in self.decoder.layers:
            tgt = layer(tgt, memory, memory_pos, query_pos)
            if return_intermediate:
                outs.append(self.decoder.norm(tgt))
        return torch.stack(outs) if return_intermediate else self.decoder.norm(tgt).unsqueeze(0)


class TransformerEncoderOnly(nn.Module):
    """The "+6 Enc" pixel decoder's encoder (`encoder.layers.*`; post-norm, so no final norm), on a [B, C, H, W] map."""

    def __init__(self, *, d_model: int, nhead: int, dim_feedforward: int, dropout: float, num_encoder_layers: int):
        super().__init__()
        self.encoder = _layer_stack(num_encoder_layers, d_model, nhead, dim_feedforward, dropout, decoder=False)

    def forward(self, src: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """src, pos [B, C, H, W] -> [B, C, H, W]."""
        b, c, h, w = src.shape
        x, pos = src.flatten(2).transpose(1, 2), pos.flatten(2).transpose(1, 2)  # [B, HW, C]
        for layer in self.encoder.layers:
            x = layer(x, None, None, pos)
        return x.transpose(1, 2).reshape(b, c, h, w)  # [B, HW, C] -> [B, C, H, W]


def xavier_reset(module: nn.Module) -> None:
    """DETR's init: xavier-uniform on every parameter with more than one dimension; biases and norms keep defaults."""
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)
