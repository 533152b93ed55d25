"""`MaskFormer`: normalization + padding, backbone, `sem_seg_head` (reference notes section 1). Wiring only: no loss,
no post-processing."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from maskformer.structures import PIXEL_MEAN, PIXEL_STD, ImageBatch


class MaskFormer(nn.Module):
    """forward(images: Tensor [B, 3, H, W] raw 0..255 | ImageBatch) -> mask classification: {"pred_logits": [B, Q, K+1],
    "pred_masks": [B, Q, Hp/4, Wp/4]} (+ "aux_outputs" in training); per-pixel baselines: {"sem_seg": [B, K, Hp/4,
    Wp/4]} (+ "aux_outputs" for the "+" variant in training). Hp, Wp = H, W rounded up to `size_divisibility`."""

    def __init__(
        self,
        *,
        backbone: nn.Module,
        sem_seg_head: nn.Module,
        pixel_mean: Sequence[float] = PIXEL_MEAN,
        pixel_std: Sequence[float] = PIXEL_STD,
        size_divisibility: int = 32,
    ):
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.size_divisibility = size_divisibility
        for name, values in (("pixel_mean", pixel_mean), ("pixel_std", pixel_std)):
            self.register_buffer(name, torch.tensor(values, dtype=torch.float32).view(3, 1, 1), persistent=False)
        self.channels_last = False

    def preprocess(self, images: torch.Tensor | ImageBatch) -> torch.Tensor:
        """Raw [B, 3, H, W] (or an ImageBatch) -> normalized float [B, 3, Hp, Wp], zero-padded bottom/right."""
        x = images.tensor if isinstance(images, ImageBatch) else images
        if not torch.is_tensor(x) or x.dim() != 4 or x.shape[1] != 3:
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"MaskFormer expects images as a [B, 3, H, W] tensor or an ImageBatch, got {shape}")
        x = x.to(self.pixel_mean.device, torch.float32)
        x = (x - self.pixel_mean) / self.pixel_std
        d = self.size_divisibility
        pad_h, pad_w = (-x.shape[-2] % d, -x.shape[-1] % d) if d > 1 else (0, 0)
        if torch.jit.is_tracing() or torch.compiler.is_compiling() or pad_h or pad_w:  # exported graphs pad any size
            x = F.pad(x, (0, pad_w, 0, pad_h))  # bottom/right, value 0 (= the mean before normalization)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, images: torch.Tensor | ImageBatch) -> dict:
        features = self.backbone(self.preprocess(images))
        return self.sem_seg_head(features)

    @torch.no_grad()
    def optimize_for_inference(self, *, channels_last: bool = True) -> MaskFormer:
        """Eval mode, the backbone's own `optimize_for_inference()` if any, and channels-last 4-d weights; the state
        dict is unchanged. Returns self."""
        self.eval()
        hook = getattr(self.backbone, "optimize_for_inference", None)
        if callable(hook):
            hook()
        if channels_last:
            self.to(memory_format=torch.channels_last)
        self.channels_last = channels_last
        return self
