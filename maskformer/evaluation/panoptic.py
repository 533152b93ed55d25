"""Panoptic quality (PQ = SQ x RQ) with panopticapi's rules, streaming and vectorized per image.

Rules (reference evaluation-semantics.md section 1), all reproduced in float64:
- one joint histogram of (GT segment, predicted segment) per image, VOID (id 0) included;
- a pair matches iff same category, GT not crowd and IoU > 0.5 (strict), with the asymmetric union
  |p| + |g| - |g n p| - |p n GT-VOID| (prediction VOID inside g stays in the union);
- predicted areas come from the PNG, GT areas from the segments' "area" field (JSON);
- unmatched non-crowd GT -> FN; unmatched prediction -> FP unless
  (|p n GT-VOID| + |p n crowd of its category|) / |p| > 0.5, with only the last crowd segment of a
  category in `segments_info` counting (panopticapi's dict overwrite);
- GT ids in the PNG but not in `segments_info` are skipped, not VOID; per-class PQ = iou_sum / (TP + FP/2 + FN/2);
  averages over categories with TP + FP + FN > 0 (SQ = 0 for TP = 0 included).

Deliberate deviations, all on input panopticapi would crash on or mis-handle:
- a split with no counted category (n = 0) gives pq = sq = rq = -1.0 and n = 0 (hotcoco's convention) instead of
  ZeroDivisionError;
- a GT segment without "area" takes its PNG pixel count (hotcoco) instead of KeyError;
- segment id 0 in `segments_info`, duplicate segment ids and unknown GT categories are errors naming the image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from maskformer.evaluation.counting import MergeableCounts, PairRuns, pq_sq_rq, sequential_mean, weighted_bincount
from maskformer.io import FormatError, to_numpy

VOID = 0
_LUT_LIMIT = 1 << 24  # per-pixel counting looks ids below this up in a table (PNG ids are < 2^24)


class PairCounter:
    """Joint pixel histograms of (GT id, predicted id), vectorized, with reusable buffers.

    counts(...) returns int64 [2 + n_gt, 2 + n_pred]: index 0 = ids not listed in the segments, 1 = VOID (id 0),
    2 + i = the i-th listed segment. The pair of maps is first run-length compressed (counting.PairRuns); the few
    thousand run values are mapped to segment indices by binary search and counted with one weighted bincount. Noisy
    maps (many runs) are counted per pixel, ids mapped through a lookup table (int32, ids < 2^24: at most 64 MiB,
    pages allocated only where ids fall). No sort of the pixels either way.
    """

    def __init__(self, run_fraction: float = 0.25) -> None:
        self._runs = PairRuns(run_fraction)
        self._lut = np.zeros(0, dtype=np.int32)
        self._buffers = {"rows": np.zeros(0, dtype=np.int32), "cols": np.zeros(0, dtype=np.int32)}

    def counts(self, gt_ids, pred_ids, gt_seg_ids: np.ndarray, pred_seg_ids: np.ndarray, image_id=None) -> np.ndarray:
        """gt_ids, pred_ids: int [h, w] id maps; *_seg_ids: int64 [n] listed segment ids -> int64 [2+n_gt, 2+n_pred]."""
        gt, pred = to_numpy(gt_ids), to_numpy(pred_ids)
        if pred.shape != gt.shape:
            raise FormatError(f"image {image_id}: prediction size {pred.shape} != ground-truth size {gt.shape}")
        gt, pred = gt.reshape(-1), pred.reshape(-1)
        nrows, ncols = len(gt_seg_ids) + 2, len(pred_seg_ids) + 2
        if nrows * ncols >= 1 << 31:
            raise FormatError(f"image {image_id}: too many segments ({nrows - 2} x {ncols - 2})")
        gt, pred, weights = self._runs(gt, pred)  # one entry per run of equal (gt, pred), weights = run lengths
        key = self._index(gt, gt_seg_ids, "rows", image_id, "ground-truth")
        cols = self._index(pred, pred_seg_ids, "cols", image_id, "prediction")
        np.multiply(key, ncols, out=key)
        np.add(key, cols, out=key)  # key = row * ncols + col
        return weighted_bincount(key, weights, nrows * ncols).reshape(nrows, ncols)

    def _index(self, ids: np.ndarray, seg_ids: np.ndarray, buffer: str, image_id, what: str) -> np.ndarray:
        """int32 [N] compact index of every id (0 = not listed, 1 = VOID, 2 + i = seg_ids[i]), in a reused buffer."""
        if ids.dtype.kind not in "iu":
            raise FormatError(f"image {image_id}: {what} id map must be integer, got dtype {ids.dtype}")
        if ids.size and ids.dtype.kind == "i" and int(ids.min()) < 0:
            raise FormatError(f"image {image_id}: {what} id map has negative ids")
        if self._buffers[buffer].size < ids.size:
            self._buffers[buffer] = np.empty(ids.size, dtype=np.int32)
        out = self._buffers[buffer][: ids.size]
        max_id = int(max(ids.max(initial=0), seg_ids.max(initial=0)))
        if ids.size > 256 and max_id < _LUT_LIMIT:
            return self._lookup(ids, max_id, seg_ids, out)
        return _search(ids, seg_ids, out)

    def _lookup(self, ids: np.ndarray, max_id: int, seg_ids: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Per-pixel table lookup; the table grows to a power of two above max_id and is left all zero."""
        if self._lut.size <= max_id:
            self._lut = np.zeros(1 << max(max_id, 255).bit_length(), dtype=np.int32)  # calloc: lazy zero pages
        lut = self._lut
        lut[VOID] = 1
        lut[seg_ids] = np.arange(2, len(seg_ids) + 2)
        np.take(lut, ids, out=out, mode="wrap")  # ids < lut.size: "wrap" is the identity, and faster than "clip"
        lut[seg_ids] = 0
        lut[VOID] = 0
        return out


def _search(ids: np.ndarray, seg_ids: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Compact indices by binary search in the sorted segment ids (few values, or ids >= 2^24)."""
    out[:] = ids == VOID  # 1 for VOID, 0 for ids not listed
    if len(seg_ids):
        order = np.argsort(seg_ids)
        sorted_ids = seg_ids[order]
        pos = np.minimum(np.searchsorted(sorted_ids, ids), len(seg_ids) - 1)
        found = sorted_ids[pos] == ids
        out[found] = order[pos[found]] + 2
    return out


class PanopticEvaluator(MergeableCounts):
    """Streaming PQ/SQ/RQ over a dataset, identical to panopticapi's `pq_compute` (to float64 summation order).

    categories: dicts {"id", "isthing", "name"} with dataset category ids (the GT JSON's "categories").
    update(pred_ids, pred_segments, gt_ids, gt_segments): id maps int [h, w] (0 = VOID); segments are dicts with
    "id", "category_id" (dataset ids) and, for GT, "iscrowd" and "area".
    """

    _COUNTS, _SUM = ("tp", "fp", "fn"), "iou"  # MergeableCounts: additions = (category indices, IoU values)

    def __init__(self, categories: Sequence[dict]) -> None:
        if not categories:
            raise FormatError("PanopticEvaluator needs at least one category")
        self.categories = [dict(c) for c in categories]
        self._cat_index = {int(c["id"]): i for i, c in enumerate(self.categories)}
        if len(self._cat_index) != len(self.categories):
            raise FormatError("PanopticEvaluator: duplicate category ids")
        self._isthing = np.array([c.get("isthing", 0) in (1, True) for c in self.categories])
        self._counter = PairCounter()
        self.reset()

    def reset(self) -> None:
        k = len(self.categories)
        self.tp, self.fp, self.fn = (np.zeros(k, dtype=np.int64) for _ in range(3))
        self.iou = np.zeros(k, dtype=np.float64)
        self.num_images = 0
        self.additions = None if self.additions is None else []

    def update(self, pred_ids, pred_segments: Sequence[dict], gt_ids, gt_segments: Sequence[dict], *, image_id=None):
        """Add one image. pred_ids/gt_ids: int [h, w] (numpy or torch); image_id names the image in errors."""
        gt_seg = segment_ids(gt_segments, "ground truth", image_id)
        pred_seg = segment_ids(pred_segments, "prediction", image_id)
        hist = self._counter.counts(gt_ids, pred_ids, gt_seg, pred_seg, image_id)
        self.update_counts(hist, pred_segments, gt_segments, image_id=image_id)

    def update_counts(self, hist: np.ndarray, pred_segments, gt_segments, *, image_id=None) -> None:
        """Add one image from its joint histogram [2+n_gt, 2+n_pred] (`PairCounter.counts` layout)."""
        p_area = hist[:, 2:].sum(0)  # [P] areas counted from the PNG
        if hist[:, 0].any():  # the prediction PNG and its segments_info list the same ids
            raise FormatError(
                f"image {image_id}: the prediction PNG has segment ids missing from its segments_info "
                f"({int(hist[:, 0].sum())} pixels); every non-zero id must be listed"
            )
        if (p_area == 0).any():
            ids = [int(s["id"]) for s, a in zip(pred_segments, p_area) if a == 0]
            raise FormatError(f"image {image_id}: prediction segment ids {ids} are in segments_info but not in the PNG")
        p_cat = self._category_indices(pred_segments, "prediction", image_id)
        g_cat = self._category_indices(gt_segments, "ground truth", image_id)
        g_crowd = np.array([s.get("iscrowd", 0) == 1 for s in gt_segments], dtype=bool)
        g_area = [s.get("area", a) for s, a in zip(gt_segments, hist[2:].sum(1).tolist())]  # else the PNG's
        if not all(isinstance(a, int | float) and not isinstance(a, bool) for a in g_area):
            raise FormatError(f"image {image_id}: a ground-truth segment's 'area' is not a number")
        g_area = np.array(g_area, dtype=np.float64)
        self._match(hist[2:, 2:], hist[1, 2:], g_cat, g_crowd, g_area, p_cat, p_area, image_id)
        self.num_images += 1

    def _category_indices(self, segments, what: str, image_id) -> np.ndarray:
        try:
            return np.array([self._cat_index[int(s["category_id"])] for s in segments], dtype=np.intp)
        except KeyError:
            bad = sorted({int(s["category_id"]) for s in segments} - set(self._cat_index))
            raise FormatError(f"image {image_id}: {what} segments have unknown category_id {bad}") from None

    def _match(self, inter, p_void, g_cat, g_crowd, g_area, p_cat, p_area, image_id) -> None:
        """TP / FP / FN / IoU sums of one image. inter: [G, P] |g n p|; p_void: [P] |p n GT-VOID|."""
        candidate = (g_cat[:, None] == p_cat[None, :]) & (inter > 0)  # [G, P]
        candidate[g_crowd] = False
        union = g_area[:, None] - inter + (p_area - p_void)[None, :]  # [G, P] asymmetric union
        if (union[candidate] <= 0).any():
            raise FormatError(f"image {image_id}: a ground-truth segment has 'area' <= 0 in segments_info")
        iou = np.divide(inter, union, out=np.zeros(inter.shape), where=candidate)
        match = iou > 0.5
        gi, pj = np.nonzero(match)
        np.add.at(self.tp, g_cat[gi], 1)
        np.add.at(self.iou, g_cat[gi], iou[gi, pj])
        if self.additions is not None:
            self.additions.append((g_cat[gi], iou[gi, pj]))
        np.add.at(self.fn, g_cat[~match.any(1) & ~g_crowd], 1)
        forgiven = (p_void + _crowd_overlap(inter, g_cat, g_crowd, p_cat)) / p_area > 0.5
        np.add.at(self.fp, p_cat[~match.any(0) & ~forgiven], 1)

    def compute(self) -> dict:
        """{"All"|"Things"|"Stuff": {pq, sq, rq, n}, "per_class": {cat_id: {...}}, "PQ", "SQ", "RQ", "PQ_th", ...},
        values in [0, 1] (panopticapi's convention; its printed table is x100)."""
        pq, sq, rq, counted = pq_sq_rq(self.iou, self.tp, self.fp, self.fn)
        out: dict = {}
        for name, sel in (("All", counted), ("Things", counted & self._isthing), ("Stuff", counted & ~self._isthing)):
            means = {m: sequential_mean(v[sel], -1.0) for m, v in (("pq", pq), ("sq", sq), ("rq", rq))}
            out[name] = {**means, "n": int(sel.sum())}  # plain means in category order; n = 0: -1.0 (documented)
        columns = {"isthing": self._isthing, "pq": pq, "sq": sq, "rq": rq, "tp": self.tp, "fp": self.fp, "fn": self.fn}
        out["per_class"] = {  # values as Python bools, floats and ints
            int(c["id"]): {"name": c.get("name", str(c["id"])), **{m: v[i].item() for m, v in columns.items()}}
            for i, c in enumerate(self.categories)
        }
        for name, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
            for m in ("pq", "sq", "rq"):
                out[m.upper() + suffix] = out[name][m]
        out["num_images"] = self.num_images
        return out


def _crowd_overlap(inter: np.ndarray, g_cat: np.ndarray, g_crowd: np.ndarray, p_cat: np.ndarray) -> np.ndarray:
    """[P] |p n crowd segment of p's category|, with panopticapi's dict overwrite: the last crowd segment wins."""
    crowd_row = {}
    for i in np.flatnonzero(g_crowd).tolist():  # segments_info order
        crowd_row[int(g_cat[i])] = i
    if not crowd_row:
        return np.zeros(len(p_cat), dtype=np.int64)
    rows = np.array([crowd_row.get(c, -1) for c in p_cat.tolist()], dtype=np.intp)
    return np.where(rows >= 0, inter[rows, np.arange(len(p_cat))], 0)


def segment_ids(segments: Sequence[dict], what: str, image_id) -> np.ndarray:
    """int64 [n] ids of `segments`; a missing field, id 0 (VOID) or a repeated id is an error naming the image."""
    try:
        pairs = [(int(s["id"]), int(s["category_id"])) for s in segments]
    except (KeyError, TypeError, ValueError):
        raise FormatError(f"image {image_id}: every {what} segment needs an integer 'id' and 'category_id'") from None
    ids = np.array([i for i, _ in pairs], dtype=np.int64).reshape(-1)
    if (ids <= 0).any():
        raise FormatError(f"image {image_id}: {what} segments_info uses id <= 0 (0 is VOID)")
    if len(set(ids.tolist())) != len(ids):
        raise FormatError(f"image {image_id}: {what} segments_info repeats a segment id")
    return ids
