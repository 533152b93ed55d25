"""Parameter and FLOP counts of a model, computed on the meta device (no memory, no arithmetic; about a second).

"GFLOPs" follow the paper's fvcore convention (README, "What the GFLOPs count"); torch's FlopCounterMode counts 2 per
multiply-add, so its numbers are halved. `gflops` includes the official Swin's window-padding work that this backbone
skips (`gflops_skipped`, Swin-B at 640: 15.4 G of 195 G); `gflops_executed` is what this implementation runs in eval
(no padding work, the mask-feature conv fused with the mask einsum; R50 at 512: ~6 G fewer).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from maskformer.backbones.base import num_parameters as count_parameters
from maskformer.config import Config
from maskformer.cpu_tuning import switched

aten = torch.ops.aten


def _per_element(k: int, *, output: bool):
    """fvcore's k FLOPs per output (else input) element, in FlopCounterMode's units (x2, halved at the end)."""

    def formula(x_shape, *args, out_shape=None, **kwargs) -> int:
        return 2 * k * math.prod(out_shape if output else x_shape)

    return formula


def _cpu_attention(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    """CPU fused SDPA kernel (not in torch's registry): q.k^T and attn.v, 2 FLOPs per multiply-add."""
    b, h, lq, d = q_shape
    lk, dv = k_shape[-2], v_shape[-1]
    return 2 * b * h * lq * lk * (d + dv)


EXTRA_FORMULAS = {
    aten.upsample_bilinear2d: _per_element(4, output=True),
    aten.upsample_nearest2d: _per_element(1, output=True),
    aten.native_group_norm: _per_element(5, output=False),
    aten.native_layer_norm: _per_element(5, output=False),
    aten._native_batch_norm_legit_no_training: _per_element(2, output=False),
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention,
}


@dataclass
class ModelStats:
    """Counts for one model at one input size. GFLOPs in multiply-adds (see the module docstring)."""

    params: int
    params_backbone: int
    gflops: float
    gflops_executed: float
    gflops_skipped: float
    gflops_backbone: float
    gflops_pixel_decoder: float
    gflops_predictor: float
    gflops_inference: float
    image_size: tuple[int, int]

    def to_dict(self) -> dict:
        return asdict(self)


def semantic_inference_for_flops(outputs: dict, padded_size: tuple[int, int], output_size: tuple[int, int]):
    """The official eval-time semantic inference: upsample to the padded input size, marginalize (mask
    classification), crop the padding, resize to the output size. -> [B, K, h, w] class scores."""
    if "sem_seg" in outputs:
        scores = F.interpolate(outputs["sem_seg"], size=padded_size, mode="bilinear", align_corners=False)
    else:
        masks = F.interpolate(outputs["pred_masks"], size=padded_size, mode="bilinear", align_corners=False)
        probs = outputs["pred_logits"].softmax(-1)[..., :-1]  # [B, Q, K+1] -> [B, Q, K]
        scores = torch.einsum("bqc,bqhw->bchw", probs, masks.sigmoid())  # [B, K, Hp, Wp]
    scores = scores[..., : output_size[0], : output_size[1]]
    return F.interpolate(scores, size=output_size, mode="bilinear", align_corners=False)


def model_stats(
    cfg: Config, image_size: tuple[int, int] | None = None, *, semantic_inference: bool = True, executed: bool = True
) -> ModelStats:
    """Parameters and GFLOPs of `build_model(cfg)` at `image_size` (default: the config's crop size), on meta.
    executed=False skips the second count (`gflops_executed` is then nan)."""
    from maskformer.modeling import build_model

    size = tuple(image_size or cfg.data.crop_size)
    with torch.device("meta"):
        model = build_model(cfg).eval()
    return measure(model, size, semantic_inference=semantic_inference, executed=executed)


def measure(
    model: nn.Module, image_size: tuple[int, int], *, semantic_inference: bool = True, executed: bool = True
) -> ModelStats:
    """Count `model` (a MaskFormer in eval mode, on any device incl. meta) on one [1, 3, H, W] input, twice: as the
    official network computes it (`gflops` and its breakdown) and as this implementation runs (`gflops_executed`)."""
    x = torch.zeros(1, 3, *image_size, device=next(model.parameters()).device)
    padded = tuple(model.preprocess(x).shape[-2:])
    official = _count(model, x, image_size if semantic_inference else None, fuse=False)
    run = _count(model, x, image_size if semantic_inference else None, fuse=True) if executed else None
    skipped = swin_window_padding_macs(model.backbone, padded) / 1e9

    def g(name: str, counts: dict = official) -> float:
        return sum(counts.get(name, {}).values()) / 2e9

    root = type(model).__name__
    total, net = g("Global"), g(root)
    return ModelStats(
        params=count_parameters(model),
        params_backbone=count_parameters(model.backbone),
        gflops=total + skipped,
        gflops_executed=g("Global", run) if run is not None else float("nan"),
        gflops_skipped=skipped,
        gflops_backbone=g(f"{root}.backbone") + skipped,
        gflops_pixel_decoder=g(f"{root}.sem_seg_head.pixel_decoder"),
        gflops_predictor=g(f"{root}.sem_seg_head.predictor"),
        gflops_inference=total - net,
        image_size=tuple(image_size),
    )


def _count(model: nn.Module, x: torch.Tensor, inference_size: tuple[int, int] | None, *, fuse: bool) -> dict:
    """FlopCounterMode counts per module, with the cpu_tuning switches set to `fuse`. Parameters are switched to
    requires_grad=False meanwhile (its module tracker fails on parameters that require grad under no_grad)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    counter = FlopCounterMode(display=False, custom_mapping=EXTRA_FORMULAS)
    try:
        model.requires_grad_(False)
        with switched(model, fuse), counter:
            out = model(x)
            if inference_size is not None:
                semantic_inference_for_flops(out, tuple(model.preprocess(x).shape[-2:]), tuple(inference_size))
    finally:
        for p, f in flags:
            p.requires_grad_(f)
    return counter.get_flop_counts()


def swin_window_padding_macs(backbone: nn.Module, size: tuple[int, int]) -> int:
    """Multiply-adds of the official Swin's qkv + proj Linears ((3C + C) x C per token) on window-padding tokens
    (0 for other backbones). Stage maps: ceil(H/4) x ceil(W/4), then ceil halves."""
    from maskformer.backbones.swin import SwinTransformer

    if not isinstance(backbone, SwinTransformer):
        return 0
    w = backbone.window_size
    h, wd = -(-size[0] // 4), -(-size[1] // 4)
    total = 0
    for stage, c in zip(backbone.layers, backbone.out_channels.values()):
        padded = (-(-h // w) * w) * (-(-wd // w) * w)
        total += (padded - h * wd) * 4 * c * c * len(stage.blocks)
        h, wd = -(-h // 2), -(-wd // 2)
    return total
