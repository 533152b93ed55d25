"""The MaskFormer network. `build_model(cfg)` is the only code that reads the config; modules take keyword arguments.

Architectures (cfg.model.arch): "maskformer" (mask classification), "per_pixel_baseline", "per_pixel_baseline_plus".
Pixel decoders (cfg.model.pixel_decoder): "fpn" (light-weight FPN) or "transformer_encoder" ("+6 Enc").
"""

from __future__ import annotations

from torch import nn

from maskformer.config import Config, ModelConfig

from .heads import MaskFormerHead, PerPixelBaselineHead, PerPixelBaselinePlusHead, TransformerPredictor
from .maskformer import MaskFormer
from .pixel_decoder import BasePixelDecoder, TransformerEncoderPixelDecoder
from .position_encoding import PositionEmbeddingSine

ARCHS = ("maskformer", "per_pixel_baseline", "per_pixel_baseline_plus")
PIXEL_DECODERS = ("fpn", "transformer_encoder")
FEATURES = ("res2", "res3", "res4", "res5")

__all__ = [
    "ARCHS",
    "PIXEL_DECODERS",
    "BasePixelDecoder",
    "MaskFormer",
    "MaskFormerHead",
    "PerPixelBaselineHead",
    "PerPixelBaselinePlusHead",
    "PositionEmbeddingSine",
    "TransformerEncoderPixelDecoder",
    "TransformerPredictor",
    "build_model",
    "build_pixel_decoder",
]


def build_model(cfg: Config, backbone: nn.Module | None = None) -> MaskFormer:
    """The network described by `cfg` (random init). `backbone`: any module meeting the backbone contract
    (forward -> {"res2".."res5"}, `out_channels` dict); default `build_backbone(cfg.model.backbone)`."""
    m = cfg.model
    if m.arch not in ARCHS:
        raise ValueError(f"model.arch={m.arch!r} is unknown; valid: {', '.join(ARCHS)}")
    if backbone is None:
        backbone = _build_backbone(m)
    channels = _backbone_channels(backbone)
    pixel_decoder = build_pixel_decoder(m, channels)
    if m.arch == "per_pixel_baseline":
        head = PerPixelBaselineHead(pixel_decoder=pixel_decoder, num_classes=m.num_classes, mask_dim=m.mask_dim)
    else:
        classify = m.arch == "maskformer"
        predictor = _build_predictor(m, pixel_decoder.transformer_in_channels, classify, cfg.loss.deep_supervision)
        head_cls = MaskFormerHead if classify else PerPixelBaselinePlusHead
        head = head_cls(pixel_decoder=pixel_decoder, predictor=predictor)
    return MaskFormer(
        backbone=backbone,
        sem_seg_head=head,
        pixel_mean=m.pixel_mean,
        pixel_std=m.pixel_std,
        size_divisibility=m.size_divisibility,
    )


def build_pixel_decoder(m: ModelConfig, in_channels: dict[str, int]) -> BasePixelDecoder:
    """The pixel decoder named by `m.pixel_decoder` over backbone channels {res2..res5: C}."""
    if m.pixel_decoder == "fpn":
        return BasePixelDecoder(in_channels=in_channels, conv_dim=m.conv_dim, mask_dim=m.mask_dim)
    if m.pixel_decoder == "transformer_encoder":
        return TransformerEncoderPixelDecoder(
            in_channels=in_channels,
            conv_dim=m.conv_dim,
            mask_dim=m.mask_dim,
            nheads=m.nheads,
            dim_feedforward=m.dim_feedforward,
            dropout=m.dropout,
            enc_layers=m.enc_layers,
        )
    raise ValueError(f"model.pixel_decoder={m.pixel_decoder!r} is unknown; valid: {', '.join(PIXEL_DECODERS)}")


def _build_predictor(m: ModelConfig, in_channels: int, classify: bool, deep_supervision: bool) -> TransformerPredictor:
    return TransformerPredictor(
        in_channels=in_channels,
        num_classes=m.num_classes,
        mask_classification=classify,
        hidden_dim=m.hidden_dim,
        num_queries=m.num_queries if classify else m.num_classes,
        nheads=m.nheads,
        dropout=m.dropout,
        dim_feedforward=m.dim_feedforward,
        dec_layers=m.dec_layers,
        mask_dim=m.mask_dim,
        enforce_input_proj=m.enforce_input_proj,
        deep_supervision=deep_supervision,
    )


def _build_backbone(m: ModelConfig) -> nn.Module:
    from maskformer.backbones import build_backbone

    if m.backbone.startswith("swin"):
        return build_backbone(m.backbone, drop_path_rate=m.drop_path_rate)
    return build_backbone(m.backbone, norm=m.backbone_norm)  # FrozenBN (official) or BN/GN (trained from scratch)


def _backbone_channels(backbone: nn.Module) -> dict[str, int]:
    channels = getattr(backbone, "out_channels", None)
    if not isinstance(channels, dict) or any(k not in channels for k in FEATURES):
        raise ValueError(
            f"backbone {type(backbone).__name__} does not meet the backbone contract: it needs an `out_channels` dict "
            f"with keys {list(FEATURES)}, got {channels!r}"
        )
    return {k: int(channels[k]) for k in FEATURES}
