"""Pixel decoders: backbone features {res2..res5} -> per-pixel embeddings at 1/4 plus the transformer's input map.

Reference notes 3.1 (light-weight FPN) and 3.2 ("+6 Enc"). Module names follow the official code: index 1 = res2 ... 4
= res5; `adapter_i` lateral 1x1 + GN (no activation), `layer_i` output 3x3 + GN + ReLU, `layer_4` on the top map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from maskformer.layers import Conv2d, c2_xavier_fill, group_norm

from .position_encoding import PositionEmbeddingSine
from .transformer import TransformerEncoderOnly

LATERALS = ("res2", "res3", "res4")  # adapter_1..3 / layer_1..3


def _output_conv(in_ch: int, out_ch: int) -> Conv2d:
    """3x3 conv (no bias) + GN + ReLU, c2_xavier_fill."""
    conv = Conv2d(in_ch, out_ch, 3, padding=1, bias=False, norm=group_norm(out_ch), activation=nn.ReLU(inplace=True))
    c2_xavier_fill(conv)
    return conv


def add_upsampled(lateral: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """lateral + nearest-upsample(y to lateral's size). For an exact 2x the upsampled map is never materialized: y is
    broadcast-added into `lateral` in place (a fresh GN output; GN's backward does not need it)."""
    b, c, h, w = lateral.shape
    if torch.jit.is_tracing() or (h, w) != (2 * y.shape[-2], 2 * y.shape[-1]):  # ONNX tracing: no in-place on views
        return lateral + F.interpolate(y, size=(h, w), mode="nearest")
    lateral.view(b, c, h // 2, 2, w // 2, 2).add_(y[:, :, :, None, :, None])  # [B, C, H/2, 2, W/2, 2] += y
    return lateral


class BasePixelDecoder(nn.Module):
    """Light-weight FPN: top-down nearest upsampling over res5 -> res2, then a 3x3 `mask_features` conv.

    forward(features {res2: [B,C2,H/4,W/4], ..., res5: [B,C5,H/32,W/32]}) -> (mask_features [B, mask_dim, H/4, W/4],
    transformer input = raw res5 [B, C5, H/32, W/32]). `transformer_in_channels` is the channel count of the latter.
    """

    def __init__(self, *, in_channels: dict[str, int], conv_dim: int = 256, mask_dim: int = 256):
        super().__init__()
        for i, name in enumerate(LATERALS, start=1):
            adapter = c2_xavier_fill(Conv2d(in_channels[name], conv_dim, 1, bias=False, norm=group_norm(conv_dim)))
            self.add_module(f"adapter_{i}", adapter)
            self.add_module(f"layer_{i}", _output_conv(conv_dim, conv_dim))
        self.layer_4 = _output_conv(in_channels["res5"], conv_dim)
        self.mask_features = c2_xavier_fill(Conv2d(conv_dim, mask_dim, 3, padding=1))
        self.transformer_in_channels = in_channels["res5"]

    def top(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(top of the pyramid before layer_4, transformer input): both raw res5 here."""
        return features["res5"], features["res5"]

    def forward(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        y, transformer_in = self.forward_features(features)
        return self.mask_features(y), transformer_in

    def forward_features(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(stride-4 FPN map before `mask_features` [B, conv_dim, H/4, W/4], transformer input)."""
        missing = [k for k in (*LATERALS, "res5") if k not in features]
        if missing:
            raise KeyError(f"pixel decoder: backbone features lack {missing}; got {sorted(features)}")
        top, transformer_in = self.top(features)
        y = self.layer_4(top)
        for i in (3, 2, 1):
            lateral = getattr(self, f"adapter_{i}")(features[LATERALS[i - 1]])
            y = getattr(self, f"layer_{i}")(add_upsampled(lateral, y))
        return y, transformer_in


class TransformerEncoderPixelDecoder(BasePixelDecoder):
    """FPN whose top is a 6-layer DETR encoder on input_proj(res5) (with sine positions); its output [B, conv_dim,
    H/32, W/32] is also the transformer predictor's input."""

    def __init__(
        self,
        *,
        in_channels: dict[str, int],
        conv_dim: int = 256,
        mask_dim: int = 256,
        nheads: int = 8,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        enc_layers: int = 6,
    ):
        super().__init__(in_channels=in_channels, conv_dim=conv_dim, mask_dim=mask_dim)
        self.input_proj = c2_xavier_fill(nn.Conv2d(in_channels["res5"], conv_dim, 1))
        self.transformer = TransformerEncoderOnly(
            d_model=conv_dim,
            nhead=nheads,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
            num_encoder_layers=enc_layers,
        )
        self.pe_layer = PositionEmbeddingSine(num_pos_feats=conv_dim // 2)
        self.layer_4 = _output_conv(conv_dim, conv_dim)
        self.transformer_in_channels = conv_dim

    def top(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = features["res5"]
        encoded = self.transformer(self.input_proj(x), self.pe_layer(x))  # [B, conv_dim, H/32, W/32]
        return encoded, encoded
