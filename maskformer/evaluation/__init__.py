"""Evaluation: streaming evaluators (in memory), scoring of files in the standard formats, and the model loop.

- `SemSegEvaluator`: mIoU (union > 0 and GT-present), mACC, pACC, fwIoU, per-class IoU/Acc, PQ^St.
- `PanopticEvaluator`: PQ/SQ/RQ (All/Things/Stuff, per class) with panopticapi's exact rules.
- `InstanceEvaluator`: COCO mask AP through pycocotools (optional "coco" extra).
- `score_semantic`, `score_panoptic`: the same numbers from folders of PNGs (+ JSON), decoded in worker processes.
- `evaluate_model` (maskformer.evaluation.loop): run a model over a dataset and evaluate it.
Every evaluator has reset(), update(...), compute() -> dict; metrics are fractions in [0, 1].

Names are imported on first use, so scoring files (numpy only) never imports torch, which the model loop needs.
"""

import importlib

_HOMES = {
    "InstanceEvaluator": "instance",
    "PanopticEvaluator": "panoptic",
    "SemSegEvaluator": "sem_seg",
    "build_evaluator": "loop",
    "evaluate_model": "loop",
    "score_panoptic": "files",
    "score_semantic": "files",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
