"""Learning-rate schedules of the official recipes, as a multiplicative factor of each group's base lr.

- "poly" (semantic, ADE panoptic; MaskFormer's `WarmupPolyLR`): factor(it) = warmup(it) * (1 - it / max_iter) ** power.
- "multistep" (COCO panoptic; detectron2's `WarmupMultiStepLR`): warmup(it) * gamma ** #{s in steps: s <= it}.
- warmup(it) (linear): warmup_factor * (1 - it / warmup_iters) + it / warmup_iters for it < warmup_iters, else 1.

`it` is the index of the optimizer step about to be taken (0-based), as in detectron2, where the scheduler is
stepped once after every optimizer step.
"""

from __future__ import annotations

import bisect

import torch

from maskformer.config import TrainConfig

SCHEDULERS = ("poly", "multistep")


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
    raise ValueError(f"train.scheduler: unknown scheduler {train.scheduler!r}; valid: {', '.join(SCHEDULERS)}")


def build_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR applying `lr_factor` to every group (its state_dict is the step count, so resume is exact)."""
    lr_factor(0, train)  # validate the scheduler name before training starts
    if train.max_iter <= 0:
        raise ValueError(f"train.max_iter must be positive, got {train.max_iter}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, train))
