"""The MaskFormer network. `build_model(cfg)` is the only code that reads the config; modules take keyword arguments.

Pixel decoders (cfg.model.pixel_decoder): "fpn" (light-weight FPN), "transformer_encoder" ("+6 Enc") or "msdeformattn"
(Mask2Former's, the only one its masked-attention decoder takes).
"""

from __future__ import annotations

from torch import nn

from maskformer.backbones import build_backbone
from maskformer.backbones.base import FEATURE_NAMES as FEATURES
from maskformer.config import Config, ModelConfig

from .heads import MaskFormerHead, PerPixelBaselineHead, PerPixelBaselinePlusHead, TransformerPredictor
from .masked_decoder import Mask2FormerHead, MultiScaleMaskedTransformerDecoder
from .maskformer import MaskFormer
from .msdeform_pixel_decoder import MSDeformAttnPixelDecoder
from .pixel_decoder import BasePixelDecoder, TransformerEncoderPixelDecoder

ARCHS = ("maskformer", "per_pixel_baseline", "per_pixel_baseline_plus", "mask2former")
PIXEL_DECODERS = ("fpn", "transformer_encoder", "msdeformattn")
# ModelConfig fields that the transformer predictors / transformer pixel decoders take under the same names
DECODER_FIELDS = ("num_classes", "hidden_dim", "nheads", "dim_feedforward", "dec_layers", "mask_dim", "dropout")
ENCODER_FIELDS = ("conv_dim", "mask_dim", "nheads", "dropout", "enc_layers")

__all__ = ["ARCHS", "PIXEL_DECODERS", "MaskFormer", "build_model", "build_pixel_decoder"]  # parts: from their modules


def build_model(cfg: Config, backbone: nn.Module | None = None) -> MaskFormer:
    """The network described by `cfg` (random init). `backbone`: any module meeting the backbone contract
    (forward -> {"res2".."res5"}, `out_channels` dict); default `build_backbone(cfg.model.backbone)`."""
    m = cfg.model
    if m.arch not in ARCHS:
        raise ValueError(f"model.arch={m.arch!r} is unknown; valid: {', '.join(ARCHS)}")
    if backbone is None:
        kw = {"drop_path_rate": m.drop_path_rate} if m.backbone.startswith("swin") else {"norm": m.backbone_norm}
        backbone = build_backbone(m.backbone, **kw, **m.backbone_args)  # norm: FrozenBN (official) or BN/GN (scratch)
    channels = getattr(backbone, "out_channels", None)
    if not isinstance(channels, dict) or any(k not in channels for k in FEATURES):
        raise ValueError(
            f"backbone {type(backbone).__name__} does not meet the backbone contract: it needs an `out_channels` dict "
            f"with keys {list(FEATURES)}, got {channels!r}"
        )
    if (m.arch == "mask2former") != (m.pixel_decoder == "msdeformattn"):
        raise ValueError(
            f"model.arch={m.arch!r} with model.pixel_decoder={m.pixel_decoder!r}: arch 'mask2former' needs "
            "pixel_decoder 'msdeformattn', which no other arch takes"
        )
    pixel_decoder = build_pixel_decoder(m, {k: int(channels[k]) for k in FEATURES})
    decoder = {k: getattr(m, k) for k in DECODER_FIELDS}
    decoder.update(enforce_input_proj=m.enforce_input_proj, deep_supervision=cfg.loss.deep_supervision)
    if m.arch == "mask2former":
        predictor = MultiScaleMaskedTransformerDecoder(in_channels=m.conv_dim, num_queries=m.num_queries, **decoder)
        head = Mask2FormerHead(pixel_decoder=pixel_decoder, predictor=predictor)
    elif m.arch == "per_pixel_baseline":
        head = PerPixelBaselineHead(pixel_decoder=pixel_decoder, num_classes=m.num_classes, mask_dim=m.mask_dim)
    else:  # PerPixelBaseline+: no class head, one query per class
        classify = m.arch == "maskformer"
        predictor = TransformerPredictor(
            in_channels=pixel_decoder.transformer_in_channels,
            mask_classification=classify,
            num_queries=m.num_queries if classify else m.num_classes,
            **decoder,
        )
        head_cls = MaskFormerHead if classify else PerPixelBaselinePlusHead
        head = head_cls(pixel_decoder=pixel_decoder, predictor=predictor)
    return MaskFormer(
        backbone=backbone,
        sem_seg_head=head,
        pixel_mean=m.pixel_mean,
        pixel_std=m.pixel_std,
        size_divisibility=m.size_divisibility,
    )


def build_pixel_decoder(m: ModelConfig, in_channels: dict[str, int]) -> nn.Module:
    """The pixel decoder named by `m.pixel_decoder` over backbone channels {res2..res5: C}."""
    if m.pixel_decoder == "fpn":
        return BasePixelDecoder(in_channels=in_channels, conv_dim=m.conv_dim, mask_dim=m.mask_dim)
    encoder = {k: getattr(m, k) for k in ENCODER_FIELDS} | {"in_channels": in_channels}
    if m.pixel_decoder == "msdeformattn":
        return MSDeformAttnPixelDecoder(**encoder, dim_feedforward=m.enc_dim_feedforward, n_points=m.deform_points)
    if m.pixel_decoder == "transformer_encoder":
        return TransformerEncoderPixelDecoder(**encoder, dim_feedforward=m.dim_feedforward)
    raise ValueError(f"model.pixel_decoder={m.pixel_decoder!r} is unknown; valid: {', '.join(PIXEL_DECODERS)}")
