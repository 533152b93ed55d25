"""Human-readable tables (x100, as detectron2 / panopticapi print them) and JSON reports of evaluator results."""

from __future__ import annotations

import math

SEMANTIC_SUMMARY = ("mIoU", "mIoU_gt", "mACC", "pACC", "fwIoU", "PQ_St", "SQ_St", "RQ_St")


def _pct(v: float, width: int = 6) -> str:
    return f"{'-':>{width}s}" if v is None or math.isnan(v) else f"{100 * v:{width}.2f}"


def _per_class(first: str, header: str, rows: list[tuple[str, str]]) -> list[str]:
    """A per-class table: (name, cells) rows under `first` + `header`, names padded to the longest, then a gap."""
    width = max([len(first)] + [len(name) for name, _ in rows])
    head = f"{first:{width}s}{header}"
    return [head, "-" * len(head), *(f"{name:{width}s}{cells}" for name, cells in rows), ""]


def format_semantic(results: dict, per_class: bool = True) -> str:
    """Per-class IoU / Acc / PQ^St table (optional) and the summary line, in percent."""
    rows = [(r["name"], f" | {_pct(r['iou'])} {_pct(r['acc'])} {_pct(r['pq'])}") for r in results["per_class"]]
    lines = _per_class("class", " |    IoU    Acc     PQ", rows) if per_class else []
    lines.append("  ".join(f"{k} {_pct(results[k], 0)}" for k in SEMANTIC_SUMMARY))
    lines.append(f"({results['num_images']} images)")
    return "\n".join(lines)


def format_panoptic(results: dict, per_class: bool = True) -> str:
    """Per-category table (optional) and panopticapi's All / Things / Stuff table, in percent."""
    rows = []
    for cid, r in results["per_class"].items():
        kind = "thing" if r["isthing"] else "stuff"
        counts = f"{r['tp']:5d} {r['fp']:5d} {r['fn']:5d}"
        rows.append((r["name"], f" {cid:3d} {kind} | {_pct(r['pq'])} {_pct(r['sq'])} {_pct(r['rq'])} {counts}"))
    lines = _per_class("category", "  id  kind |     PQ     SQ     RQ    TP    FP    FN", rows) if per_class else []
    lines += [f"{'':10s}|     PQ     SQ     RQ     N", "-" * 38]
    for name in ("All", "Things", "Stuff"):
        r = results[name]
        lines.append(f"{name:10s}| {_pct(r['pq'])} {_pct(r['sq'])} {_pct(r['rq'])} {r['n']:5d}")
    empty = [name for name in ("All", "Things", "Stuff") if results[name]["n"] == 0]
    note = f"; {'/'.join(empty)}: no category counted, shown as -100 (n = 0)" if empty else ""
    lines.append(f"({results['num_images']} images{note})")
    return "\n".join(lines)


def format_instance(results: dict, per_class: bool = True) -> str:
    """Per-class mask AP (optional) and COCO's AP summary, in percent (-100 = undefined, as COCO's -1)."""
    rows = [(r["name"], f" {cid:3d} | {_pct(r['ap'])}") for cid, r in results["per_class"].items()]
    lines = _per_class("category", "  id |     AP", rows) if per_class else []
    lines.append("  ".join(f"{k} {_pct(results[k], 0)}" for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")))
    lines.append(f"({results['num_images']} images)")
    return "\n".join(lines)
