"""Mask2Former's pixel decoder: a 6-layer deformable-attention encoder over res3..res5 plus an FPN step to res2.

Reference notes mask2former.md section 2. Levels are ordered low to high resolution everywhere (level 0 = res5 at
1/32, 1 = res4, 2 = res3 at 1/8). Parameter names are the official ones under `sem_seg_head.pixel_decoder.`:
`input_proj.{l}.{0 conv with bias, 1 GN}`, `transformer.level_embed` [3, C], `transformer.encoder.layers.{j}.*`
(`self_attn`, `norm1`, `linear1`, `linear2`, `norm2`), `adapter_1` / `layer_1` (res2 lateral and output conv), and
`mask_features` (1x1 with bias). The whole decoder runs in float32 even under autocast, as the official one does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from maskformer.layers import Conv2d, c2_xavier_fill, group_norm

from .deform_attn import MSDeformAttn
from .position_encoding import PositionEmbeddingSine

TRANSFORMER_FEATURES = ("res5", "res4", "res3")  # level order: low to high resolution


def reference_points(shapes: list[tuple[int, int]], device: torch.device) -> torch.Tensor:
    """Pixel centres of every level, normalized to [0, 1] and concatenated: [1, S, 2] as (x, y).

    (arange(n) + 0.5) / n equals the official linspace(0.5, n - 0.5, n) / n exactly (the valid ratios are all 1:
    there is no padding mask), and needs no data-dependent shapes.
    """
    points = []
    for h, w in shapes:
        y = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h  # [H]
        x = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w  # [W]
        grid = torch.stack((x[None, :].expand(h, w), y[:, None].expand(h, w)), dim=-1)  # [H, W, 2]
        points.append(grid.reshape(h * w, 2))
    return torch.cat(points).unsqueeze(0)  # [1, S, 2]


class MSDeformAttnEncoderLayer(nn.Module):
    """Post-norm encoder layer: src = norm1(src + MSDeformAttn(src + pos)); src = norm2(src + FFN(src)), ReLU."""

    def __init__(
        self, *, d_model: int, dim_feedforward: int, dropout: float, n_levels: int, n_heads: int, n_points: int
    ):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self, src: torch.Tensor, pos: torch.Tensor, reference: torch.Tensor, shapes: list[tuple[int, int]]
    ) -> torch.Tensor:
        """src, pos [B, S, C]; reference [1, S, 2] -> [B, S, C]."""
        src = self.norm1(src + self.dropout1(self.self_attn(src + pos, reference, src, shapes)))
        ffn = self.linear2(self.dropout2(F.relu(self.linear1(src), inplace=True)))
        return self.norm2(src + self.dropout3(ffn))


class MSDeformAttnEncoder(nn.Module):
    """`layers` of MSDeformAttnEncoderLayer (no final norm)."""

    def __init__(self, *, num_layers: int, **layer_kwargs):
        super().__init__()
        self.layers = nn.ModuleList(MSDeformAttnEncoderLayer(**layer_kwargs) for _ in range(num_layers))

    def forward(self, src, pos, reference, shapes):
        for layer in self.layers:
            src = layer(src, pos, reference, shapes)
        return src


class MSDeformAttnTransformerEncoderOnly(nn.Module):
    """Flattens the projected levels, adds level embeddings to their positions, runs the encoder.

    forward(srcs, pos: L x [B, C, H_l, W_l]) -> memory [B, S, C], S = sum H_l * W_l (levels in order).
    """

    def __init__(
        self,
        *,
        d_model: int = 256,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        dim_feedforward: int = 1024,
        dropout: float = 0.0,
        num_feature_levels: int = 3,
        enc_n_points: int = 4,
    ):
        super().__init__()
        self.encoder = MSDeformAttnEncoder(
            num_layers=num_encoder_layers,
            d_model=d_model,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
            n_levels=num_feature_levels,
            n_heads=nhead,
            n_points=enc_n_points,
        )
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Official order: xavier on every matrix, then the deformable-attention init, then N(0, 1) level embeds."""
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(self, srcs: list[torch.Tensor], pos: list[torch.Tensor]) -> torch.Tensor:
        shapes = [(s.shape[-2], s.shape[-1]) for s in srcs]  # Python ints (symbolic when exported)
        src_flat = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], dim=1)  # [B, S, C]
        pos_flat = torch.cat(
            [p.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1) for lvl, p in enumerate(pos)], dim=1
        )  # [B, S, C]
        return self.encoder(src_flat, pos_flat, reference_points(shapes, src_flat.device), shapes)


class MSDeformAttnPixelDecoder(nn.Module):
    """features {res2..res5} -> (mask_features [B, mask_dim, H/4, W/4], [1/32, 1/16, 1/8 maps, each [B, C, h, w]]).

    `input_proj` (1x1 conv + GN) brings res5, res4, res3 to `conv_dim`; the deformable encoder mixes them; the 1/8
    output is bilinearly upsampled onto the res2 lateral (`adapter_1`), then `layer_1` (3x3 + GN + ReLU) and the 1x1
    `mask_features` conv give the per-pixel embeddings.
    """

    def __init__(
        self,
        *,
        in_channels: dict[str, int],
        conv_dim: int = 256,
        mask_dim: int = 256,
        nheads: int = 8,
        dim_feedforward: int = 1024,
        dropout: float = 0.0,
        enc_layers: int = 6,
        n_points: int = 4,
    ):
        super().__init__()
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_channels[f], conv_dim, 1), group_norm(conv_dim)) for f in TRANSFORMER_FEATURES
        )
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)
        self.transformer = MSDeformAttnTransformerEncoderOnly(
            d_model=conv_dim,
            nhead=nheads,
            num_encoder_layers=enc_layers,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
            num_feature_levels=len(TRANSFORMER_FEATURES),
            enc_n_points=n_points,
        )
        self.pe_layer = PositionEmbeddingSine(num_pos_feats=conv_dim // 2)
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, 1)
        c2_xavier_fill(self.mask_features)
        self.adapter_1 = Conv2d(in_channels["res2"], conv_dim, 1, bias=False, norm=group_norm(conv_dim))
        self.layer_1 = Conv2d(
            conv_dim, conv_dim, 3, padding=1, bias=False, norm=group_norm(conv_dim), activation=nn.ReLU(inplace=True)
        )
        c2_xavier_fill(self.adapter_1)
        c2_xavier_fill(self.layer_1)

    def forward(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        missing = [k for k in ("res2", *TRANSFORMER_FEATURES) if k not in features]
        if missing:
            raise KeyError(f"MSDeformAttn pixel decoder: backbone features lack {missing}; got {sorted(features)}")
        device = features["res2"].device.type
        if device != "meta" and torch.is_autocast_enabled(device):
            with torch.autocast(device, enabled=False):  # the official decoder is float32 under AMP
                return self.forward_features(features)
        return self.forward_features(features)

    def forward_features(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        maps = [features[f].float() for f in TRANSFORMER_FEATURES]
        srcs = [proj(x) for proj, x in zip(self.input_proj, maps)]
        memory = self.transformer(srcs, [self.pe_layer(x) for x in maps])  # [B, S, C]
        outs, start = [], 0
        for s in srcs:
            b, c, h, w = s.shape
            outs.append(memory[:, start : start + h * w].transpose(1, 2).reshape(b, c, h, w))  # [B, C, H_l, W_l]
            start = start + h * w
        lateral = self.adapter_1(features["res2"].float())
        up = F.interpolate(outs[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
        y = self.layer_1(lateral + up)  # [B, C, H/4, W/4]
        return self.mask_features(y), outs
