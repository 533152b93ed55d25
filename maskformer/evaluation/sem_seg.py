"""Semantic segmentation metrics from one int64 confusion matrix over the dataset (detectron2 / mmseg conventions).

- Ignore applies to the ground truth only; predictions must lie in [0, K) (an argmax), anything else is an error.
- Per class: IoU = TP / (GT + PRED - TP), Acc = TP / GT (NaN where the denominator is 0).
- mIoU: mean over classes with union > 0 (mmseg, detectron2 <= v0.6: the primary value); mIoU_gt: over classes
  present in the GT (detectron2 since 2022-07); mACC over GT-present classes; pACC = sum TP / sum GT;
  fwIoU = sum over GT-present classes of IoU * GT / sum GT.
- PQ^St (the paper's ablations): every class is one segment per image in the GT and in the prediction; matching,
  FP forgiveness and averaging follow panopticapi with VOID = the ignore label (MaskFormer's
  tools/evaluate_pq_for_semantic_segmentation.py).
- reduce_zero_label (mmseg / ADE20K raw labels): 0 -> ignore, x -> x - 1, the ignore value stays ignore.
All metrics are fractions in [0, 1] (printed tables show x100).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from maskformer.evaluation.counting import MergeableCounts, PairRuns, pq_sq_rq, sequential_mean, weighted_bincount
from maskformer.io import to_numpy

_LUT_SIZE = 1 << 16  # GT values 0..65535 go through a lookup table; wider or signed maps are range-checked first


class ConfusionCounter:
    """Per-image confusion counts: run-length compression of the (GT, prediction) pair (counting.PairRuns), a GT
    lookup table and a reused key buffer, so no per-image temporary is larger than the runs.

    counts(pred, gt) -> int64 [K + 1, K]: rows = GT class (row K = ignore), columns = predicted class.
    """

    def __init__(
        self, num_classes: int, ignore_label: int, *, reduce_zero_label: bool = False, run_fraction: float = 0.25
    ) -> None:
        self._runs = PairRuns(run_fraction)
        k = self.num_classes = int(num_classes)
        self.ignore_label = int(ignore_label)
        raw = np.arange(_LUT_SIZE + 1, dtype=np.intp)
        row = raw - 1 if reduce_zero_label else raw.copy()
        row[(row < 0) | (row >= k)] = k + 1  # out of range: an error row
        if reduce_zero_label:
            row[0] = k  # raw 0 = "other" -> ignore
        if 0 <= self.ignore_label < _LUT_SIZE:
            row[self.ignore_label] = k  # the ignore value stays ignore
        row[_LUT_SIZE] = k  # slot for ignore labels outside the table (e.g. -1)
        self._lut = row * k  # premultiplied: key = lut[gt] + pred
        self._key = np.zeros(0, dtype=np.intp)

    def counts(self, pred, gt, name=None) -> np.ndarray:
        """pred: int [h, w] in [0, K); gt: int [h, w] -> int64 [K + 1, K] (row K: pixels whose GT is ignore)."""
        pred, gt = to_numpy(pred), to_numpy(gt)
        k = self.num_classes
        if pred.shape != gt.shape:
            raise ValueError(f"image {name}: prediction size {pred.shape} != ground-truth size {gt.shape}")
        for x, what in ((pred, "prediction"), (gt, "ground-truth label map")):
            if x.dtype.kind not in "iu":
                raise ValueError(f"image {name}: {what} must be integer, got dtype {x.dtype}")
        gt_v, pred_v, weights = self._runs(gt.reshape(-1), pred.reshape(-1))  # one entry per run, weights = lengths
        if pred_v.size and (int(pred_v.max()) >= k or (pred_v.dtype.kind == "i" and int(pred_v.min()) < 0)):
            lo, hi = int(pred_v.min()), int(pred_v.max())
            raise ValueError(f"image {name}: predicted labels span [{lo}, {hi}], outside the classes [0, {k})")
        if self._key.size < gt_v.size:
            self._key = np.empty(gt_v.size, dtype=np.intp)
        key = self._key[: gt_v.size]  # reused buffer: GT row index * K, then + pred
        if gt_v.dtype.itemsize > 2 or gt_v.dtype.kind == "i":
            gt_v = self._narrow(gt_v, name)
        np.take(self._lut, gt_v, out=key, mode="wrap")  # gt < table size here: "wrap" is the identity, and fast
        np.add(key, pred_v, out=key, dtype=np.intp, casting="unsafe")  # key = row * K + pred
        hist = weighted_bincount(key, weights, (k + 2) * k)
        if hist[(k + 1) * k :].any():
            self._bad_gt(np.unique(gt[self._lut[np.clip(gt, 0, _LUT_SIZE)] > k * k]), name)
        return hist[: (k + 1) * k].reshape(k + 1, k)

    def _narrow(self, gt: np.ndarray, name) -> np.ndarray:
        """Wide or signed GT: values outside the table may only be the ignore label (sent to the ignore slot)."""
        if gt.size == 0 or (int(gt.min()) >= 0 and int(gt.max()) < _LUT_SIZE):
            return gt
        outside = (gt < 0) | (gt >= _LUT_SIZE)
        bad = np.unique(gt[outside & (gt != self.ignore_label)])
        if bad.size:
            self._bad_gt(bad, name)
        return np.where(outside, _LUT_SIZE, gt)  # the extra last table entry is the ignore row

    def _bad_gt(self, bad: np.ndarray, name) -> None:
        raise ValueError(
            f"image {name}: ground-truth values {bad[:10].tolist()} are neither classes 0..{self.num_classes - 1} "
            f"nor ignore {self.ignore_label}"
        )


class SemSegEvaluator(MergeableCounts):
    """Streaming semantic-segmentation metrics: mIoU (+ GT-present variant), mACC, pACC, fwIoU, per-class, PQ^St.

    update(pred [h, w], gt [h, w]) with numpy arrays or tensors; compute() -> dict of fractions in [0, 1].
    """

    _COUNTS, _SUM = ("confusion", "pq_tp", "pq_fp", "pq_fn"), "pq_iou"  # MergeableCounts: PQ^St (class, IoU) additions

    def __init__(
        self, num_classes: int, ignore_label: int = 255, class_names: Sequence[str] | None = None, *,
        reduce_zero_label: bool = False,
    ) -> None:  # fmt: skip
        self.num_classes = int(num_classes)
        self.ignore_label = int(ignore_label)
        self.reduce_zero_label = bool(reduce_zero_label)
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_classes)]
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"SemSegEvaluator: {len(self.class_names)} class names for {self.num_classes} classes")
        self._counter = ConfusionCounter(self.num_classes, self.ignore_label, reduce_zero_label=reduce_zero_label)
        self.reset()

    def reset(self) -> None:
        k = self.num_classes
        self.confusion = np.zeros((k + 1, k), dtype=np.int64)  # [GT (+ ignore row), pred]
        self.pq_tp, self.pq_fp, self.pq_fn = (np.zeros(k, dtype=np.int64) for _ in range(3))
        self.pq_iou = np.zeros(k, dtype=np.float64)
        self.num_images = 0
        self.additions = None if self.additions is None else []

    def update(self, pred, gt, *, name=None) -> None:
        """Add one image: pred int [h, w] in [0, K); gt int [h, w] (ignore label allowed). name appears in errors."""
        self.update_counts(self._counter.counts(pred, gt, name))

    def update_counts(self, counts: np.ndarray) -> None:
        """Add one image's confusion counts int64 [K + 1, K] (`ConfusionCounter.counts`)."""
        self.confusion += counts
        self._add_pq_stuff(counts)
        self.num_images += 1

    def _add_pq_stuff(self, c: np.ndarray) -> None:
        """PQ^St of one image: class c is one GT segment (GT == c) and one predicted segment (pred == c)."""
        k = self.num_classes
        inter = np.diagonal(c)  # [K]
        gt_area = c[:k].sum(1)  # [K], ignore pixels excluded
        pred_area = c.sum(0)  # [K], all pixels of the prediction
        void = c[k]  # [K] predicted pixels on GT ignore (VOID)
        union = pred_area + gt_area - inter - void
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = inter / union
            ignored = void / pred_area > 0.5
        match = (inter > 0) & (iou > 0.5)
        self.pq_tp += match
        self.pq_iou += np.where(match, iou, 0.0)
        if self.additions is not None:
            self.additions.append((np.flatnonzero(match), iou[match]))
        self.pq_fn += (gt_area > 0) & ~match
        self.pq_fp += (pred_area > 0) & ~match & ~ignored

    def compute(self) -> dict:
        """Summary fractions plus "per_class": [{name, iou, acc, pq, sq, rq, gt_pixels, pred_pixels}]."""
        k = self.num_classes
        conf = self.confusion[:k].astype(np.float64)  # ignore row dropped
        tp, gt, pred = np.diagonal(conf), conf.sum(1), conf.sum(0)
        union = gt + pred - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
            acc = np.where(gt > 0, tp / gt, np.nan)
        present, total = gt > 0, gt.sum()
        out = {
            "mIoU": sequential_mean(iou[union > 0]),
            "mIoU_gt": sequential_mean(iou[present]),
            "mACC": sequential_mean(acc[present]),
            "pACC": float(tp.sum() / total) if total > 0 else float("nan"),
            "fwIoU": float((iou[present] * gt[present]).sum() / total) if total > 0 else float("nan"),
        }
        pq, sq, rq, counted = pq_sq_rq(self.pq_iou, self.pq_tp, self.pq_fp, self.pq_fn)
        out.update({f"{m}_St": sequential_mean(v[counted], -1.0) for m, v in (("PQ", pq), ("SQ", sq), ("RQ", rq))})
        out["num_images"] = self.num_images
        columns = {"iou": iou, "acc": acc, "pq": pq, "sq": sq, "rq": rq}
        columns.update(gt_pixels=gt.astype(np.int64), pred_pixels=pred.astype(np.int64))
        rows = [{m: v[c].item() for m, v in columns.items()} for c in range(k)]  # Python floats and ints
        out["per_class"] = [{"name": name, **row} for name, row in zip(self.class_names, rows)]
        return out
