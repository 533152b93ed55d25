"""Training: optimizer groups and schedules of the official recipes, the loop (AMP, DDP, exact resume), logging.

Public API:
  Trainer(cfg, out_dir, ...).run() / .resume(path)      the loop (engine.loop)
  build_optimizer(model, cfg.train), build_scheduler(optimizer, cfg.train), lr_factor(it, cfg.train)
  init_distributed(), MetricsLogger, plot_training_curves
"""

from maskformer.engine.optim import build_optimizer, clip_grad_norm, param_groups, param_hyperparams
from maskformer.engine.schedule import build_scheduler, lr_factor

__all__ = ["build_optimizer", "build_scheduler", "clip_grad_norm", "lr_factor", "param_groups", "param_hyperparams"]
