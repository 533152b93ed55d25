"""Evaluation: streaming evaluators (in memory), scoring of files in the standard formats, and the model loop.

- `SemSegEvaluator`: mIoU (union > 0 and GT-present), mACC, pACC, fwIoU, per-class IoU/Acc, PQ^St.
- `PanopticEvaluator`: PQ/SQ/RQ (All/Things/Stuff, per class) with panopticapi's exact rules.
- `InstanceEvaluator`: COCO mask AP through pycocotools (optional "coco" extra).
- `score_semantic`, `score_panoptic`: the same numbers from folders of PNGs (+ JSON), decoded in worker processes.
- `evaluate_model`, `build_evaluator` (maskformer.evaluation.loop): run a model over a dataset and evaluate it.
Every evaluator has reset(), update(...), compute() -> dict; metrics are fractions in [0, 1].
"""

import importlib

from maskformer.evaluation.files import score_panoptic, score_semantic
from maskformer.evaluation.instance import InstanceEvaluator
from maskformer.evaluation.panoptic import PanopticEvaluator
from maskformer.evaluation.sem_seg import SemSegEvaluator

__all__ = ["InstanceEvaluator", "PanopticEvaluator", "SemSegEvaluator", "build_evaluator", "evaluate_model",
           "score_panoptic", "score_semantic"]  # fmt: skip


def __getattr__(name: str):
    """The model loop's names, imported on first use: it needs torch, scoring files does not."""
    if name in ("build_evaluator", "evaluate_model"):
        return getattr(importlib.import_module("maskformer.evaluation.loop"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
