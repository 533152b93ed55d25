"""Training: optimizer groups and schedules of the official recipes (exported here), the loop (engine.loop.Trainer:
AMP, DDP, exact resume), logging.
"""

from maskformer.engine.optim import build_optimizer, clip_grad_norm, param_groups, param_hyperparams
from maskformer.engine.schedule import build_scheduler, lr_factor

__all__ = ["build_optimizer", "build_scheduler", "clip_grad_norm", "lr_factor", "param_groups", "param_hyperparams"]
