"""The mask-classification transformer predictor and the `sem_seg_head` of MaskFormer and the per-pixel baselines
(reference notes 3.3, 3.5). Each head holds `pixel_decoder` and `predictor` (the state-dict prefixes)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from maskformer.cpu_tuning import fused_mask_logits
from maskformer.layers import c2_msra_fill, c2_xavier_fill

from .position_encoding import PositionEmbeddingSine
from .transformer import Transformer


class MLP(nn.Module):
    """`num_layers` Linear layers (`layers.{i}`) with ReLU between them, none after the last."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class TransformerPredictor(nn.Module):
    """DETR decoder over the transformer input map, then class and mask heads shared by all decoder layers.

    forward(x [B, Cin, h, w], mask_features [B, mask_dim, H, W]) -> {"pred_logits": [B, Q, K+1] (only when
    mask_classification), "pred_masks": [B, Q, H, W], "aux_outputs": layers 1..L-1 (deep supervision, training)}.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        mask_classification: bool = True,
        hidden_dim: int = 256,
        num_queries: int = 100,
        nheads: int = 8,
        dropout: float = 0.1,
        dim_feedforward: int = 2048,
        dec_layers: int = 6,
        mask_dim: int = 256,
        enforce_input_proj: bool = False,
        deep_supervision: bool = True,
    ):
        super().__init__()
        self.mask_classification = mask_classification
        self.deep_supervision = deep_supervision
        self.pe_layer = PositionEmbeddingSine(num_pos_feats=hidden_dim // 2)
        self.transformer = Transformer(
            d_model=hidden_dim,
            nhead=nheads,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
            num_decoder_layers=dec_layers,
        )
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        use_proj = in_channels != hidden_dim or enforce_input_proj
        self.input_proj = c2_xavier_fill(nn.Conv2d(in_channels, hidden_dim, 1)) if use_proj else nn.Identity()
        if mask_classification:
            self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder states hs [L, B, Q, C], normed; L = 1 (last layer only) unless training with deep supervision."""
        aux = self.training and self.deep_supervision
        return self.transformer(self.input_proj(x), self.query_embed.weight, self.pe_layer(x), return_intermediate=aux)

    def forward(self, x: torch.Tensor, mask_features: torch.Tensor) -> dict:
        hs = self.decode(x)  # [L, B, Q, C]
        masks = torch.einsum("lbqc,bchw->lbqhw", self.mask_embed(hs), mask_features)  # [L, B, Q, H, W]
        return self._outputs(hs, masks)

    def forward_fused(self, x: torch.Tensor, y: torch.Tensor, mask_conv: nn.Conv2d) -> dict:
        """forward(x, mask_conv(y)) without aux outputs, through cpu_tuning.fused_mask_logits."""
        hs = self.decode(x)  # [1, B, Q, C]
        masks = fused_mask_logits(self.mask_embed(hs[-1]), y, mask_conv)  # [B, Q, H, W]
        return self._outputs(hs, masks.unsqueeze(0))  # [1, B, Q, H, W]

    def _outputs(self, hs: torch.Tensor, masks: torch.Tensor) -> dict:
        """Per-layer dicts from the stacked [L, ...] tensors. unbind, not masks[i]: the backward of L index selects
        would zero-fill L full [L, B, Q, H, W] gradients (472 MB at batch 2, 512x512); unbind's stacks them once."""
        logits = self.class_embed(hs).unbind(0) if self.mask_classification else [None] * len(hs)  # L x [B, Q, K+1]
        layers = [
            {"pred_masks": m} if lg is None else {"pred_logits": lg, "pred_masks": m}
            for lg, m in zip(logits, masks.unbind(0))
        ]
        out = layers[-1]
        if len(layers) > 1:
            out["aux_outputs"] = layers[:-1]
        return out


class MaskFormerHead(nn.Module):
    """`sem_seg_head` of MaskFormer: pixel decoder -> (mask features, transformer input) -> TransformerPredictor.
    fuse_mask_conv (a maskformer.cpu_tuning switch): without aux outputs and with fewer queries than mask channels,
    fold the `mask_features` conv into the mask logits (`forward_fused`)."""

    def __init__(self, *, pixel_decoder: nn.Module, predictor: TransformerPredictor, fuse_mask_conv: bool = True):
        super().__init__()
        self.pixel_decoder = pixel_decoder
        self.predictor = predictor
        self.fuse_mask_conv = fuse_mask_conv

    def forward(self, features: dict[str, torch.Tensor]) -> dict:
        decoder, predictor = self.pixel_decoder, self.predictor
        fuse = self.fuse_mask_conv and not (predictor.training and predictor.deep_supervision)
        if fuse and predictor.query_embed.num_embeddings < decoder.mask_features.out_channels:
            y, transformer_in = decoder.forward_features(features)
            return predictor.forward_fused(transformer_in, y, decoder.mask_features)
        mask_features, transformer_in = decoder(features)
        return predictor(transformer_in, mask_features)


class PerPixelBaselineHead(nn.Module):
    """PerPixelBaseline: pixel decoder then a 1x1 conv `predictor` (mask_dim -> K). -> {"sem_seg": [B, K, H/4, W/4]}."""

    def __init__(self, *, pixel_decoder: nn.Module, num_classes: int, mask_dim: int = 256):
        super().__init__()
        self.pixel_decoder = pixel_decoder
        self.predictor = c2_msra_fill(nn.Conv2d(mask_dim, num_classes, 1))

    def forward(self, features: dict[str, torch.Tensor]) -> dict:
        mask_features, _ = self.pixel_decoder(features)
        return {"sem_seg": self.predictor(mask_features)}


class PerPixelBaselinePlusHead(MaskFormerHead):
    """PerPixelBaseline+: TransformerPredictor without class head, Q = K queries, each query's mask logits the
    per-pixel logits of one class. -> {"sem_seg": [B, K, H/4, W/4]} (+ "aux_outputs" in training)."""

    def __init__(self, *, pixel_decoder: nn.Module, predictor: TransformerPredictor, fuse_mask_conv: bool = True):
        if predictor.mask_classification:
            raise ValueError("PerPixelBaselinePlusHead needs a TransformerPredictor with mask_classification=False")
        super().__init__(pixel_decoder=pixel_decoder, predictor=predictor, fuse_mask_conv=fuse_mask_conv)

    def forward(self, features: dict[str, torch.Tensor]) -> dict:
        out = super().forward(features)
        result = {"sem_seg": out["pred_masks"]}
        if "aux_outputs" in out:
            result["aux_outputs"] = [{"sem_seg": a["pred_masks"]} for a in out["aux_outputs"]]
        return result
