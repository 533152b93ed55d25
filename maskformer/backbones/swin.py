"""Swin Transformer backbone, the *segmentation* variant used by MaskFormer (D2SwinTransformer; official section 2.3).

Behaviour matched exactly: patch embedding pads the input to a multiple of 4; each block pads its map right/bottom to
a window multiple (padded tokens are zero after `norm1`) and attends over all padded tokens; every odd block is
shifted by window//2 even when the map is not larger than the window, with the -100 mask built on the padded size;
patch merging pads odd sizes; per-stage output LayerNorms `norm0`..`norm3`; parameter names as the official.

Work removed without changing results (all exact identities):
- qkv is a per-token linear, so it runs on the H*W real tokens before padding; padded slots get qkv(0) = qkv.bias.
  The output projection likewise runs after the windows are merged back and cropped.
- pad + cyclic shift + window partition is one gather with a precomputed index (and the reverse one more), instead
  of pad, roll and two permute copies; the index maps and the -100 mask are cached per (H, W, shift, device).
- attention is `F.scaled_dot_product_attention` with the relative-position bias (+ shift mask) as a float mask.
- outputs are channels-last views ([B, C, H, W] shape over the [B, H, W, C] tokens), no final copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from maskformer.backbones.base import FEATURE_NAMES, Backbone, check_image_input, is_exporting

MASK_VALUE = -100.0  # the official shifted-window mask value (not -inf)


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a whole sample's residual branch with probability p, scale by 1/(1-p)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)  # [B, 1, ...]
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    """fc1 -> GELU (exact erf) -> fc2, hidden = mlp_ratio * dim."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        h = F.gelu(h) if torch.is_grad_enabled() else torch.ops.aten.gelu_(h)  # in place: one buffer fewer
        return self.fc2(h)


@dataclass(frozen=True)
class WindowLayout:
    """How the H*W tokens of one stage map to (shifted, padded) windows of N = ws*ws slots.

    gather [nW*N]: source token of each window slot (padding slots point at token 0 and are overwritten);
    gather_ext [nW*N]: the same with padding slots pointing at row H*W of the tokens plus one appended row;
    pad_slots [P] or None: window slots that are padding; scatter [H*W]: window slot of each token (reverse map,
    crop included); shift_mask [nW, 1, N, N] or None: 0 within a region, -100 across regions (shifted layouts).
    """

    num_windows: int
    gather: torch.Tensor
    gather_ext: torch.Tensor
    pad_slots: torch.Tensor | None
    scatter: torch.Tensor
    shift_mask: torch.Tensor | None


def window_layout(H: int, W: int, window: int, shift: int, device: torch.device) -> WindowLayout:
    """Index maps and shift mask for an H x W map padded to window multiples and rolled by -shift.

    Computed with numpy on the host: pure functions of the sizes, so tracers/exporters see constants.
    """
    Hp, Wp = -(-H // window) * window, -(-W // window) * window
    ids = np.full((Hp, Wp), -1, dtype=np.int64)
    ids[:H, :W] = np.arange(H * W).reshape(H, W)
    if shift > 0:
        ids = np.roll(ids, (-shift, -shift), axis=(0, 1))
    slots = _partition(ids, window).reshape(-1)  # [nW*N] token id per slot, -1 = padding
    real = slots >= 0
    scatter = np.empty(H * W, dtype=np.int64)
    scatter[slots[real]] = np.nonzero(real)[0]
    pad = np.nonzero(~real)[0]

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    return WindowLayout(
        num_windows=(Hp // window) * (Wp // window),
        gather=tensor(np.maximum(slots, 0)),
        gather_ext=tensor(np.where(real, slots, H * W)),
        pad_slots=tensor(pad) if pad.size else None,
        scatter=tensor(scatter),
        shift_mask=tensor(_shift_mask(Hp, Wp, window, shift)) if shift > 0 else None,
    )


def _partition(grid: np.ndarray, window: int) -> np.ndarray:
    """[Hp, Wp] -> [nW, N], windows in row-major order, slots row-major inside a window."""
    Hp, Wp = grid.shape
    g = grid.reshape(Hp // window, window, Wp // window, window).transpose(0, 2, 1, 3)  # [nh, nw, ws, ws]
    return g.reshape(-1, window * window)


def _shift_mask(Hp: int, Wp: int, window: int, shift: int) -> np.ndarray:
    """[nW, 1, N, N] float32: -100 between slots from different regions of the rolled map (official 3x3 regions)."""

    def region(n: int) -> np.ndarray:  # [n]: 0, 1 or 2 along one axis
        idx = np.arange(n)
        return (idx >= n - window).astype(np.int64) + (idx >= n - shift)

    labels = region(Hp)[:, None] * 3 + region(Wp)[None, :]  # [Hp, Wp]
    win = _partition(labels, window)  # [nW, N]
    diff = win[:, None, :] != win[:, :, None]  # [nW, N, N]
    return (diff.astype(np.float32) * MASK_VALUE)[:, None]


class WindowAttention(nn.Module):
    """Window multi-head self-attention with a relative-position bias ((2w-1)^2 x heads table).

    forward(qkv [B, H*W, 3C] = self.qkv(tokens), layout) -> [B, H*W, C] (after `proj`).
    """

    use_sdpa: bool = True  # False: explicit softmax (same numbers; what FLOP counters see)

    def __init__(self, dim: int, *, window_size: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Swin stage dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, qkv: torch.Tensor, layout: WindowLayout) -> torch.Tensor:
        B, nW, N, C = qkv.shape[0], layout.num_windows, self.window_size**2, self.dim
        win = self._windows(qkv, layout)  # [B, nW*N, 3C]
        q, k, v = win.view(B * nW, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)  # [B*nW,h,N,d]
        mask = self._attn_mask(layout, B).to(q.dtype)  # [1 or B*nW, heads, N, N]
        if self.use_sdpa:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        else:
            out = torch.softmax((q * self.scale) @ k.transpose(-2, -1) + mask, dim=-1) @ v
        out = out.transpose(1, 2).reshape(B, nW * N, C)  # [B, nW*N, C]
        return self.proj(out.index_select(1, layout.scatter))  # reverse roll/partition + crop: [B, H*W, C]

    def _windows(self, qkv: torch.Tensor, layout: WindowLayout) -> torch.Tensor:
        """[B, H*W, 3C] -> [B, nW*N, 3C]: pad + roll + partition as one gather.

        Padded tokens are 0 after norm1, so their qkv is the bias: those slots are overwritten in place (export
        instead gathers from the tokens plus one appended bias row, which tracers handle).
        """
        if layout.pad_slots is None:
            return qkv.index_select(1, layout.gather)
        B, C3 = qkv.shape[0], qkv.shape[-1]
        bias = self.qkv.bias.to(qkv.dtype)
        if is_exporting():
            extended = torch.cat([qkv, bias.view(1, 1, C3).expand(B, 1, C3)], dim=1)  # [B, H*W + 1, 3C]
            return extended.index_select(1, layout.gather_ext)
        win = qkv.index_select(1, layout.gather)
        fill = bias.expand(layout.pad_slots.numel(), C3).contiguous()  # a stride-0 source is ~30x slower
        for b in range(B):
            win[b].index_copy_(0, layout.pad_slots, fill)
        return win

    def _attn_mask(self, layout: WindowLayout, batch: int) -> torch.Tensor:
        """Relative bias (+ shift mask), broadcast over windows: [1, h, N, N] or [B*nW, h, N, N]."""
        N = self.window_size**2
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]  # [N*N, h]
        bias = bias.view(1, N, N, -1).permute(0, 3, 1, 2)  # [1, h, N, N]
        if layout.shift_mask is None:
            return bias.contiguous()
        mask = bias + layout.shift_mask.to(bias.dtype)  # [nW, h, N, N]
        return mask if batch == 1 else mask.repeat(batch, 1, 1, 1)


def relative_position_index(window: int) -> torch.Tensor:
    """[N, N] index into the ((2w-1)^2, heads) table: (dy + w - 1) * (2w - 1) + (dx + w - 1)."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)  # [2, N, N], offsets shifted to >= 0
    return rel[0] * (2 * window - 1) + rel[1]


class SwinBlock(nn.Module):
    """x + DropPath(W-MSA/SW-MSA(norm1(x))), then x + DropPath(MLP(norm2(x))); x [B, H*W, C]."""

    def __init__(self, dim: int, *, num_heads: int, window_size: int, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size=window_size, num_heads=num_heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, layout: WindowLayout) -> torch.Tensor:
        x = _residual(x, self.drop_path(self.attn(self.attn.qkv(self.norm1(x)), layout)))
        return _residual(x, self.drop_path(self.mlp(self.norm2(x))))


def _residual(x: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
    """x + branch, written into the fresh branch tensor when dtypes agree (x itself is never modified)."""
    return branch.add_(x) if branch.dtype == x.dtype else x + branch


class PatchMerging(nn.Module):
    """2x2 neighbourhood concat (4C, official order x0..x3) -> LayerNorm(4C) -> Linear(4C -> 2C, no bias).

    forward(x [B, H*W, C], H, W) -> [B, ceil(H/2)*ceil(W/2), 2C]; odd H/W are zero-padded first.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, _, C = x.shape
        x = x.view(B, H, W, C)
        if H % 2 or W % 2:
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        h, w = x.shape[1] // 2, x.shape[2] // 2
        # [B, h, row, w, col, C] -> [B, h, w, col, row, C]: channel blocks (r0c0, r1c0, r0c1, r1c1) as the official
        x = x.view(B, h, 2, w, 2, C).permute(0, 1, 3, 4, 2, 5).reshape(B, h * w, 4 * C)
        return self.reduction(self.norm(x))


class PatchEmbed(nn.Module):
    """Pad to a multiple of `patch`, conv patch x patch / patch (`proj`), LayerNorm (`norm`).

    forward(x [B, 3, H, W]) -> (tokens [B, h*w, C], h, w) with h = ceil(H/patch), w = ceil(W/patch).
    """

    def __init__(self, *, embed_dim: int, patch_size: int = 4):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        p = self.patch_size
        H, W = x.shape[-2:]
        if H % p or W % p:
            x = F.pad(x, (0, -W % p, 0, -H % p))
        x = self.proj(x)  # [B, C, h, w]
        B, C, h, w = x.shape
        return self.norm(x.permute(0, 2, 3, 1).reshape(B, h * w, C)), h, w


class SwinStage(nn.Module):
    """`blocks`, one per drop-path rate (even: regular windows, odd: shifted by window//2), then optional
    `downsample` (PatchMerging)."""

    def __init__(
        self, dim: int, num_heads: int, window_size: int, mlp_ratio: float, drop_path: list[float], *, downsample: bool
    ):
        super().__init__()
        self.window_size = window_size
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads=num_heads, window_size=window_size, mlp_ratio=mlp_ratio, drop_path=p)
            for p in drop_path
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor, layouts: Sequence[WindowLayout], H: int, W: int):
        """x [B, H*W, C] -> (stage output [B, H*W, C], next-stage input [B, H'*W', 2C] or the output)."""
        for j, block in enumerate(self.blocks):
            x = block(x, layouts[j % 2])
        return x, (self.downsample(x, H, W) if self.downsample is not None else x)


class SwinTransformer(Backbone):
    """Segmentation Swin: `patch_embed`, `layers.{0..3}`, output norms `norm{0..3}`.

    forward(x [B, 3, H, W] normalized) -> {"res2".."res5"}: [B, C*2^i, ceil(H/2^(i+2)), ceil(W/2^(i+2))]
    (computed as in the official: ceil(H/4), then ceil of halves), channels-last views.
    """

    def __init__(
        self,
        *,
        embed_dim=96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size=7,
        mlp_ratio=4.0,
        drop_path_rate=0.0,
        patch_size=4,
    ):
        if len(depths) != 4 or len(num_heads) != 4:
            raise ValueError(f"Swin needs 4 stages: got depths={list(depths)}, num_heads={list(num_heads)}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"Swin drop_path_rate must be in [0, 1), got {drop_path_rate}")
        dims = [embed_dim * 2**i for i in range(4)]
        super().__init__(out_channels=dict(zip(FEATURE_NAMES, dims)))
        self.window_size = window_size
        self.patch_embed = PatchEmbed(embed_dim=embed_dim, patch_size=patch_size)
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").split(list(depths))  # one per block
        self.layers = nn.ModuleList(
            SwinStage(dims[i], num_heads[i], window_size, mlp_ratio, rates[i].tolist(), downsample=i < 3)
            for i in range(4)
        )
        for i in range(4):
            self.add_module(f"norm{i}", nn.LayerNorm(dims[i]))
        self._layouts: dict[tuple, WindowLayout] = {}  # not state: rebuilt on demand

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_layouts": {}}  # pickling/deepcopy drop the cache (rebuilt on demand)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        check_image_input(x, type(self).__name__)
        x, H, W = self.patch_embed(x)
        H, W = int(H), int(W)  # plain ints also under tracing: window layouts are per-size constants
        B, out = x.shape[0], {}
        for i, (name, stage) in enumerate(zip(FEATURE_NAMES, self.layers)):
            y, x = stage(x, self.layouts(H, W, x.device, len(stage.blocks)), H, W)
            y = getattr(self, f"norm{i}")(y)
            out[name] = y.view(B, H, W, -1).permute(0, 3, 1, 2)  # [B, C, H, W], channels-last strides
            H, W = (H + 1) // 2, (W + 1) // 2
        return out

    def layouts(self, H: int, W: int, device: torch.device, depth: int) -> list[WindowLayout]:
        """[regular, shifted] window layouts for an H x W map (cached; shifted only when depth > 1)."""
        result = []
        for shift in (0, self.window_size // 2)[: min(depth, 2)]:
            key = (H, W, shift, str(device))
            layout = None if is_exporting() else self._layouts.get(key)
            if layout is None:
                with torch.inference_mode(False):  # normal tensors: a cached layout may later meet autograd
                    layout = window_layout(H, W, self.window_size, shift, device)
                if not is_exporting():
                    if len(self._layouts) >= 64:
                        self._layouts.clear()
                    self._layouts[key] = layout
            result.append(layout)
        return result


SWIN_VARIANTS = {  # swin_t / swin_s: ImageNet-1K 224 weights; swin_b / swin_l: ImageNet-22K 384 weights
    "swin_t": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7),
    "swin_s": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), window_size=7),
    "swin_b": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=12),
    "swin_l": dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=12),
}
