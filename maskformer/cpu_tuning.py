"""The speed switches that stay, each worth >= 10% end to end (time or memory) in RESULTS.md; off, results equal.
What each does and when it applies: README "CPU performance". Measured: `keep_freed_memory` R50 forward 0.85x the
time (RESULTS "B: network forward"); `fold_bn` (ResNet `ConvNorm` attribute) R50 backbone 2435 vs 4184 ms (RESULTS
"A: backbones"); `fuse_mask_conv` (head attribute) 12.5 of R50's 97.2 GFLOP removed (RESULTS "B"); `level_masks`
(Mask2Former decoder attribute) inference peak RSS at 1024x2048 1925 vs 3113 MiB, 512x512 forward 0.94-0.95x the
time (RESULTS "Mask2Former").
`switched(model, False)` runs a block with the model switches off (FLOP counting, tracing, parity tests).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where a function needs it: `maskformer score` sets malloc without it
    import torch
    from torch import nn

# glibc mallopt (parameter number from malloc.h, value)
MALLOPT_SETTINGS = (
    (-3, 32 << 20),  # M_MMAP_THRESHOLD: blocks up to 32 MiB come from the reusable heap (glibc's maximum)
    (-1, 1 << 30),  # M_TRIM_THRESHOLD: free memory at the top of the heap kept up to 1 GiB
    (-2, 64 << 20),  # M_TOP_PAD: extra heap requested per growth (fewer brk calls)
)
SWITCHES = ("fold_bn", "fuse_mask_conv", "level_masks")  # per-module attributes read by the forward passes


def keep_freed_memory() -> bool:
    """Make glibc malloc keep freed blocks (up to 32 MiB each, 1 GiB at the heap top) for reuse.

    Returns True when applied; False off Linux/glibc, when mallopt refuses, or with MASKFORMER_KEEP_FREED_MEMORY=0.
    """
    off = os.environ.get("MASKFORMER_KEEP_FREED_MEMORY", "1") == "0"
    if off or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt  # int mallopt(int, int): ctypes' default argument and result types
    except (OSError, AttributeError):
        return False
    return all(mallopt(param, value) == 1 for param, value in MALLOPT_SETTINGS)


def conv_frozen_bn_folded(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """norm(conv(x)) of a bias-free conv with a FrozenBN `conv.norm` as one conv: [B, Cin, H, W] -> [B, Cout, H', W'].

    Folded on every call (a multiply over the weights, ~0.1% of the conv's work), so gradients reach `conv.weight`
    and changed weights or statistics are always seen.
    """
    import torch.nn.functional as F

    scale, shift = conv.norm.scale_shift()  # [Cout] each
    w = conv.weight * scale.to(conv.weight.dtype).view(-1, 1, 1, 1)
    return F.conv2d(x, w, shift.to(w.dtype), conv.stride, conv.padding, conv.dilation, conv.groups)


def fused_mask_logits(emb: torch.Tensor, y: torch.Tensor, mask_conv: nn.Conv2d) -> torch.Tensor:
    """einsum("bqd,bdhw->bqhw", emb, mask_conv(y)) as one conv per image with weights [Q, C, k, k].

    mask_conv is linear: sum_d e_qd (W_d * y + b_d) = (sum_d e_qd W_d) * y + e_q . b. emb [B, Q, D], y [B, C, H', W']
    -> [B, Q, H, W]; cheaper when Q < D (2.6x fewer multiply-adds for 100 queries vs 256 channels).
    """
    import torch
    import torch.nn.functional as F

    weight = torch.einsum("bqd,dcij->bqcij", emb, mask_conv.weight.to(emb.dtype))  # [B, Q, C, k, k]
    bias = None if mask_conv.bias is None else emb @ mask_conv.bias.to(emb.dtype)  # [B, Q]
    conv = dict(stride=mask_conv.stride, padding=mask_conv.padding, dilation=mask_conv.dilation)
    masks = [F.conv2d(y[i : i + 1], weight[i], None if bias is None else bias[i], **conv) for i in range(len(y))]
    return torch.cat(masks)  # [B, Q, H, W]


@contextlib.contextmanager
def switched(model: nn.Module, on: bool, names: tuple[str, ...] = SWITCHES):
    """Within the block every module of `model` with a switch in `names` has it set to `on`; restored after."""
    saved = [(m, name, getattr(m, name)) for m in model.modules() for name in names if hasattr(m, name)]
    try:
        for m, name, _ in saved:
            setattr(m, name, on)
        yield model
    finally:
        for m, name, value in saved:
            setattr(m, name, value)
