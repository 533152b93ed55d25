"""Arithmetic shared by the evaluators: run-length compression of map pairs, histograms, PQ/SQ/RQ and means.

Label maps and panoptic id maps are piecewise constant: along a row, (GT, prediction) pairs change only at segment
boundaries. Counting one entry per run, weighted by its length, gives the same joint histogram as counting every
pixel, with a few thousand entries instead of ~300k for a 640x480 image (the gather and bincount that dominate the
cost then nearly vanish). Noisy maps with many runs fall back to per-pixel counting.
"""

from __future__ import annotations

import numpy as np


class PairRuns:
    """Maximal runs over which two aligned flat maps are both constant, with reusable flag buffers.

    max_fraction: compress only when runs <= max_fraction * pixels (else per-pixel counting is cheaper).
    """

    def __init__(self, max_fraction: float = 0.25) -> None:
        self.max_fraction = max_fraction
        self._flags = np.zeros(0, dtype=bool)
        self._other = np.zeros(0, dtype=bool)

    def __call__(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """a, b: [N] -> (a values, b values, run lengths int64 [R]), or (a, b, None) when not worth compressing."""
        n = a.size
        if n < 2 or self.max_fraction <= 0:
            return a, b, None
        if self._flags.size < n:
            self._flags, self._other = np.empty(n, dtype=bool), np.empty(n, dtype=bool)
        start, other = self._flags[:n], self._other[:n]
        start[0] = True
        np.not_equal(a[1:], a[:-1], out=start[1:])
        np.not_equal(b[1:], b[:-1], out=other[1:])
        np.logical_or(start[1:], other[1:], out=start[1:])  # [N] True where a run starts
        starts = np.flatnonzero(start)
        if len(starts) > self.max_fraction * n:
            return a, b, None
        lengths = np.empty_like(starts)
        np.subtract(starts[1:], starts[:-1], out=lengths[:-1])
        lengths[-1] = n - starts[-1]
        return np.take(a, starts), np.take(b, starts), lengths  # take: faster than fancy indexing


class MergeableCounts:
    """`state()` / `merge_state()` for sharded evaluation of an evaluator made of int64 count arrays (`_COUNTS`) and
    one float64 sum array (`_SUM`): counts are summed, the sum's additions (logged per image once
    `record_additions()` is on) replayed with the same np.add.at calls, so merging consecutive blocks of a dataset in
    block order equals one pass over it to the last bit."""

    _COUNTS: tuple[str, ...] = ()
    _SUM = ""
    additions: list | None = None  # [(indices [n], values [n])] per image, once record_additions() is on

    def record_additions(self) -> None:
        self.additions = []

    def state(self) -> dict:
        """The counts (int64 copies), num_images and the logged additions, for `merge_state` in another process."""
        if self.additions is None:
            raise ValueError(f"{type(self).__name__}.state() needs record_additions() before the first update")
        counts = {n: getattr(self, n).copy() for n in self._COUNTS}
        return {**counts, "num_images": self.num_images, "additions": list(self.additions)}

    def merge_state(self, state: dict) -> None:
        for n in self._COUNTS:
            getattr(self, n).__iadd__(np.asarray(state[n], dtype=np.int64))
        for idx, values in state["additions"]:
            np.add.at(getattr(self, self._SUM), idx, values)
        if self.additions is not None:
            self.additions.extend(state["additions"])
        self.num_images += int(state["num_images"])


def weighted_bincount(key: np.ndarray, weights: np.ndarray | None, minlength: int) -> np.ndarray:
    """int64 histogram of `key` (each entry counted `weights` times when given; float64 sums are exact here)."""
    hist = np.bincount(key, weights=weights, minlength=minlength)
    return hist if weights is None else hist.astype(np.int64)


def pq_sq_rq(iou_sum: np.ndarray, tp: np.ndarray, fp: np.ndarray, fn: np.ndarray):
    """Per-class PQ = iou_sum / (TP + FP/2 + FN/2), SQ = iou_sum / TP, RQ = TP / (TP + FP/2 + FN/2), each float64 [K]
    (0 where undefined), and counted [K] = TP + FP + FN > 0 (the classes panopticapi averages over)."""
    denom = tp + 0.5 * fp + 0.5 * fn
    counted = (tp + fp + fn) > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        pq = np.where(counted, iou_sum / denom, 0.0)
        sq = np.where(tp > 0, iou_sum / tp, 0.0)
        rq = np.where(counted, tp / denom, 0.0)
    return pq, sq, rq, counted


def sequential_mean(values: np.ndarray, empty: float = float("nan")) -> float:
    """Mean summed left to right (panopticapi / detectron2 order, same last digit); `empty` for no values."""
    return float(sum(values.tolist()) / len(values)) if len(values) else empty
