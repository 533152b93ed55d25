"""Evaluate a model on a dataset in memory: batched inference, then the streaming evaluators (no PNG round trip).

`evaluate_model(model, dataset, task=...)` returns the evaluator's compute() dict plus "task"; its flat keys "mIoU"
(semantic), "PQ" (panoptic) and "AP" (instance) are what the training loop tracks. The dataset yields
`(image uint8 [3, h, w], SegTarget, info)` (maskformer.data); maskformer.pipeline (as `Predictor`) resizes them to
the test size of the original size in `info` (a no-op when the dataset already did it) and predicts at the original
size, where the ground truth is: semantic from `target.sem_seg`, panoptic and instance from the GT panoptic PNG and
the JSON segments in `info` (crowd and JSON areas included, as panopticapi reads them).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from maskformer.backends import Calibration, build_runner, resolve
from maskformer.config import Config
from maskformer.evaluation.instance import InstanceEvaluator
from maskformer.evaluation.panoptic import PanopticEvaluator
from maskformer.evaluation.sem_seg import SemSegEvaluator
from maskformer.io import read_panoptic
from maskformer.pipeline import Prediction, model_device, predict
from maskformer.sharding import reduce_evaluator, shard_range, shardable
from maskformer.structures import TASKS, DatasetMeta


def categories_from_meta(meta: DatasetMeta, things_only: bool = False) -> list[dict]:
    """COCO-style categories [{"id": dataset id, "isthing", "name"}] in contiguous order."""
    rows = zip(meta.dataset_ids, meta.is_thing, meta.class_names)
    return [{"id": int(d), "isthing": int(t), "name": n} for d, t, n in rows if t or not things_only]


def build_evaluator(task: str, meta: DatasetMeta, *, reduce_zero_label: bool = False):
    """The streaming evaluator of `task` for the label space `meta`."""
    if task == "semantic":
        k, names = meta.num_classes, meta.class_names
        return SemSegEvaluator(k, meta.ignore_label, names, reduce_zero_label=reduce_zero_label)
    if task == "panoptic":
        return PanopticEvaluator(categories_from_meta(meta))
    if task == "instance":
        if not any(meta.is_thing):
            raise ValueError(f"instance evaluation needs thing classes; DatasetMeta {meta.name!r} has none")
        return InstanceEvaluator(categories_from_meta(meta, things_only=True))
    raise ValueError(f"task={task!r}; choose one of {', '.join(TASKS)}")


@torch.no_grad()
def evaluate_model(model: nn.Module, dataset, *, task: str = "semantic", tta: bool = False, cfg: Config | None = None,
                   meta: DatasetMeta | None = None, batch_size: int = 1, num_workers: int = 0,
                   max_images: int | None = None, progress: bool = False, precision: str = "fp32",
                   backend: str = "torch", cache_dir=None, calibration=None) -> dict:  # fmt: skip
    """Run `model` over `dataset` and evaluate `task` ("semantic" | "panoptic" | "instance").

    cfg: test-time settings (cfg.inference: test size, thresholds, TTA scales); meta: label space (default
    dataset.meta). tta: multi-scale + flip (semantic only, as the official code). precision / backend: as Predictor's
    (maskformer.backends; cache_dir: where the onnxruntime graph is cached). Returns compute() + {"task", "precision"
    (what it resolved to), "backend"}.
    """
    cfg = cfg or Config()
    resolved = resolve(backend, precision, model_device(model))
    meta = meta or dataset.meta
    if tta and task != "semantic":
        raise ValueError("test-time augmentation is defined for semantic evaluation only (as in the official code)")
    evaluator = shardable(build_evaluator(task, meta))  # under torchrun: one block of the images per process
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    subset = torch.utils.data.Subset(dataset, shard_range(n))
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, num_workers=num_workers, collate_fn=list)
    was_training = model.training
    model.eval()
    try:
        runner = build_runner(model, backend=backend, precision=resolved, cache_dir=cache_dir,
                              calibration=Calibration(calibration, cfg.data, cfg.inference))  # fmt: skip
        for done, items in enumerate(loader):
            arrays = [image.permute(1, 2, 0).numpy() for image, _, _ in items]  # uint8 [h, w, 3]
            sizes = [(int(i.get("height", x.shape[-2])), int(i.get("width", x.shape[-1]))) for x, _, i in items]
            names = [str(info.get("file_name", "")) for _, _, info in items]
            preds = predict(runner, arrays, task=task, meta=meta, inference=cfg.inference, output_sizes=sizes, tta=tta,
                            names=names, rule=cfg.model.arch)  # fmt: skip
            for (_, target, info), pred in zip(items, preds):
                _update(evaluator, task, pred, target, info, meta)
            if progress:
                print(f"\revaluated {min((done + 1) * batch_size, n)}/{n} images", end="", flush=True)
    finally:
        model.train(was_training)
    if progress:
        print()
    reduce_evaluator(evaluator)  # all processes' counts, merged exactly
    return {**evaluator.compute(), "task": task, "precision": resolved, "backend": backend}


def _update(evaluator, task: str, pred: Prediction, target, info: dict, meta: DatasetMeta) -> None:
    name = info.get("image_id", info.get("file_name"))
    if task == "semantic":
        if target.sem_seg is None:
            raise ValueError(f"image {name}: the dataset gives no semantic label map to evaluate against")
        evaluator.update(pred.semantic, target.sem_seg, name=info.get("file_name", name))
        return
    path, gt_segments = info.get("pan_seg_file_name"), info.get("segments_info")  # segments: dataset category ids
    if not path or gt_segments is None:
        raise ValueError(f"image {name}: panoptic evaluation needs a panoptic dataset (PNG + segments_info)")
    gt_ids = read_panoptic(path)  # uint32 [h, w]
    if task == "panoptic":
        pred_segments = [{"id": s["id"], "category_id": s["dataset_category_id"]} for s in pred.segments]
        evaluator.update(pred.panoptic, pred_segments, gt_ids, gt_segments, image_id=name)
        return
    things = [s for s in gt_segments if meta.is_thing[meta.contiguous_id(int(s["category_id"]))]]
    gt_masks = gt_ids[None] == np.array([s["id"] for s in things], dtype=np.int64).reshape(-1, 1, 1)  # [T, h, w]
    inst = pred.instances
    evaluator.update(
        pred_masks=inst.masks, pred_scores=inst.scores, pred_labels=np.asarray(meta.dataset_ids)[inst.labels.numpy()],
        gt_masks=gt_masks, gt_labels=[s["category_id"] for s in things],
        gt_iscrowd=[int(s.get("iscrowd", 0)) for s in things], image_id=name,
    )  # fmt: skip
