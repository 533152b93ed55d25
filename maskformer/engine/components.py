"""The training loop's links to the rest of the library: data loader, initial weights, evaluation, seeding.

Kept apart from loop.py so the loop itself only sees small functions with plain arguments.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from maskformer.config import Config
from maskformer.engine.distributed import DistInfo


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------------------------------- data
def build_train_loader(dataset, cfg: Config, micro_batch: int, dist: DistInfo):
    """An infinite, resumable loader of `micro_batch`-image batches, sharded by rank (one shared permutation per
    epoch, seeded by cfg.train.seed; per-sample augmentation seeds, so resume is exact whatever the workers)."""
    from maskformer.data import build_loader

    if len(dataset) < dist.world_size:
        raise ValueError(f"the training set has {len(dataset)} images, fewer than {dist.world_size} processes")
    return build_loader(
        dataset, batch_size=micro_batch, shuffle=True, num_workers=cfg.data.num_workers, seed=cfg.train.seed,
        infinite=True, rank=dist.rank, world_size=dist.world_size, size_divisibility=max(cfg.model.size_divisibility, 1)
    )


# ---------------------------------------------------------------------------------------------------- weights
def load_init_weights(model: nn.Module, path: str, kind: str = "auto"):
    """`--init-weights`: a full model (model dir, detectron2 / transformers checkpoint) or backbone-only weights.

    kind: "auto" (full when the file holds head weights, else backbone), "full" or "backbone". Prints the key report.
    """
    from maskformer import convert as C
    from maskformer.hub import BACKBONE_WEIGHTS, backbone_weights, resolve

    if not Path(path).exists():  # a zoo name, hub id or URL (full model), or an ImageNet weights name (backbone)
        path = str(backbone_weights(path) if path in BACKBONE_WEIGHTS or kind == "backbone" else resolve(path))
    if kind == "auto":
        sd, info = C.read_state_dict(path)
        full_prefixes = ("sem_seg_head.", "module.sem_seg_head.", "model.transformer_module.",
                         "model.pixel_level_module.decoder.")  # fmt: skip
        kind = "full" if info["kind"] == "model_dir" or any(k.startswith(full_prefixes) for k in sd) else "backbone"
    if kind not in ("full", "backbone"):
        raise ValueError(f"init-weights kind must be auto, full or backbone, got {kind!r}")
    report = C.load_full_weights(model, path) if kind == "full" else C.load_backbone_weights(model, path)
    print(f"--init-weights ({kind}): {report}")
    return report


# ------------------------------------------------------------------------------------------------- evaluation
def default_evaluate(cfg: Config):
    """evaluate_fn(model, dataset) -> metrics for cfg.inference.task, via maskformer.evaluation."""

    def evaluate(model: nn.Module, dataset) -> dict:
        from maskformer.evaluation.loop import evaluate_model

        return evaluate_model(model, dataset, task=cfg.inference.task, cfg=cfg, batch_size=4)

    return evaluate
