"""Evaluation: streaming evaluators (in memory), scoring of files in the standard formats, and the model loop.

- `SemSegEvaluator`: mIoU (union > 0 and GT-present), mACC, pACC, fwIoU, per-class IoU/Acc, PQ^St.
- `PanopticEvaluator`: PQ/SQ/RQ (All/Things/Stuff, per class) with panopticapi's exact rules.
- `InstanceEvaluator`: COCO mask AP through pycocotools (optional "coco" extra).
- `score_semantic`, `score_panoptic`: the same numbers from folders of PNGs (+ JSON), decoded in worker processes.
Every evaluator has reset(), update(...), compute() -> dict; metrics are fractions in [0, 1]. Running a model over a
dataset (it needs torch, scoring files does not): maskformer.evaluation.loop's `evaluate_model`, `build_evaluator`.
"""

from maskformer.evaluation.files import score_panoptic, score_semantic
from maskformer.evaluation.instance import InstanceEvaluator
from maskformer.evaluation.panoptic import PanopticEvaluator
from maskformer.evaluation.sem_seg import SemSegEvaluator

__all__ = ["InstanceEvaluator", "PanopticEvaluator", "SemSegEvaluator", "score_panoptic", "score_semantic"]
