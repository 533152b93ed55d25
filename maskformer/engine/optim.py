"""AdamW with the official MaskFormer parameter groups, its learning-rate schedules, global gradient-norm clipping.

Parameter groups (official `train_net.py build_optimizer`, reference section 6.1), decided per parameter:
- lr = base_lr x backbone_multiplier when the owning module's name contains "backbone" (0.1 ResNet, 1.0 Swin);
- weight decay = weight_decay, except 0 for `relative_position_bias_table` / `absolute_pos_embed`,
  `weight_decay_norm` (0.0) for parameters of norm modules (BN, SyncBN, GN, IN, LN, LRN) and `weight_decay_embed`
  (0.0) for `nn.Embedding` (the queries). Biases keep the normal weight decay. Frozen parameters are skipped.
The official code makes one group per parameter; AdamW is element-wise and clipping is global, so merging
parameters with equal (lr, weight_decay) into one group is the same optimizer, with far fewer Python-level groups.
Learning-rate scaling with the total batch: README, "Training recipe and learning-rate scaling".

Schedules, a multiplicative factor of each group's base lr at optimizer step `it` (0-based, the step about to be
taken: detectron2 steps the scheduler once after every optimizer step):
- "poly" (semantic, ADE panoptic; MaskFormer's `WarmupPolyLR`): factor(it) = warmup(it) * (1 - it / max_iter) ** power.
- "multistep" (COCO panoptic; detectron2's `WarmupMultiStepLR`): warmup(it) * gamma ** #{s in steps: s <= it}.
- warmup(it) (linear): warmup_factor * (1 - it / warmup_iters) + it / warmup_iters for it < warmup_iters, else 1.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

import torch
from torch import nn

from maskformer.config import TrainConfig

# the official norm types: BatchNorm1d/2d/3d, SyncBatchNorm and InstanceNorm1d/2d/3d are the _NormBase subclasses
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)
NO_DECAY_NAMES = ("relative_position_bias_table", "absolute_pos_embed")


def param_hyperparams(model: nn.Module, train: TrainConfig) -> dict[str, tuple[float, float]]:
    """Full parameter name -> (lr, weight_decay) by the official rules, for every trainable parameter once."""
    out: dict[str, tuple[float, float]] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            lr, wd = train.base_lr, train.weight_decay
            if "backbone" in module_name:
                lr = lr * train.backbone_multiplier
            if any(n in param_name for n in NO_DECAY_NAMES):
                wd = 0.0
            if isinstance(module, NORM_TYPES):
                wd = train.weight_decay_norm
            if isinstance(module, nn.Embedding):
                wd = train.weight_decay_embed
            out[f"{module_name}.{param_name}" if module_name else param_name] = (lr, wd)
    return out


def param_groups(model: nn.Module, train: TrainConfig) -> list[dict]:
    """Optimizer groups: parameters with equal (lr, weight_decay) merged, in first-seen order."""
    params = dict(model.named_parameters())
    groups: dict[tuple[float, float], list[torch.Tensor]] = {}
    for name, key in param_hyperparams(model, train).items():
        groups.setdefault(key, []).append(params[name])
    return [{"params": p, "lr": lr, "weight_decay": wd} for (lr, wd), p in groups.items()]


def build_optimizer(model: nn.Module, train: TrainConfig) -> torch.optim.AdamW:
    """AdamW (betas 0.9/0.999, eps 1e-8, the PyTorch defaults) over `param_groups`.

    The fused kernel is used where PyTorch has one (CPU and CUDA): on the CPU it measured ~4x faster than the
    default per-tensor loop (52 vs 195 ms per step for the 14 M-parameter R18 CPU preset), the same update rule.
    """
    groups = param_groups(model, train)
    if not groups:
        raise ValueError("build_optimizer: the model has no trainable parameters")
    try:
        return torch.optim.AdamW(groups, lr=train.base_lr, weight_decay=train.weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):  # a device or dtype without a fused kernel
        return torch.optim.AdamW(groups, lr=train.base_lr, weight_decay=train.weight_decay)


def clip_grad_norm(params: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """detectron2 "full_model" clipping: one L2 norm over all gradients, scaled to at most `max_norm`.

    Returns the total norm before clipping (a 0-dim tensor). max_norm <= 0 disables clipping.
    """
    params = [p for p in params if p.grad is not None]
    if max_norm <= 0:
        norms = [p.grad.detach().float().norm() for p in params]
        return torch.stack(norms).norm() if norms else torch.zeros(())
    return torch.nn.utils.clip_grad_norm_(params, max_norm)


def warmup_factor(it: int, warmup_iters: int, factor: float) -> float:
    """Linear warm-up from `factor` at it=0 to 1 at it=warmup_iters."""
    if it >= warmup_iters:
        return 1.0
    alpha = it / warmup_iters
    return factor * (1.0 - alpha) + alpha


def lr_factor(it: int, train: TrainConfig) -> float:
    """Multiplier of the base learning rate at optimizer step `it` (see the module docstring)."""
    warm = warmup_factor(it, train.warmup_iters, train.warmup_factor)
    if train.scheduler == "poly":
        return warm * max(0.0, 1.0 - it / train.max_iter) ** train.poly_power
    if train.scheduler == "multistep":
        steps = sorted(s for s in train.steps if s <= train.max_iter)
        return warm * train.gamma ** bisect.bisect_right(steps, it)
    raise ValueError(f"train.scheduler: unknown scheduler {train.scheduler!r}; valid: poly, multistep")


def build_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR applying `lr_factor` to every group (its state_dict is the step count, so resume is exact)."""
    lr_factor(0, train)  # an unknown scheduler name fails here, before training starts
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, train))
