"""Human-readable tables (x100, as detectron2 / panopticapi print them) and JSON reports of evaluator results."""

from __future__ import annotations

import json
import math
from pathlib import Path

SEMANTIC_SUMMARY = ("mIoU", "mIoU_gt", "mACC", "pACC", "fwIoU", "PQ_St", "SQ_St", "RQ_St")


def _pct(v: float, width: int = 6) -> str:
    return f"{'-':>{width}s}" if v is None or math.isnan(v) else f"{100 * v:{width}.2f}"


def format_semantic(results: dict, per_class: bool = True) -> str:
    """Per-class IoU / Acc / PQ^St table (optional) and the summary line, in percent."""
    lines = []
    if per_class:
        rows = results["per_class"]
        width = max([len("class")] + [len(r["name"]) for r in rows])
        lines.append(f"{'class':{width}s} |    IoU    Acc     PQ")
        lines.append("-" * (width + 23))
        for r in rows:
            lines.append(f"{r['name']:{width}s} | {_pct(r['iou'])} {_pct(r['acc'])} {_pct(r['pq'])}")
        lines.append("")
    lines.append("  ".join(f"{k} {_pct(results[k], 0)}" for k in SEMANTIC_SUMMARY))
    lines.append(f"({results['num_images']} images)")
    return "\n".join(lines)


def format_panoptic(results: dict, per_class: bool = True) -> str:
    """Per-category table (optional) and panopticapi's All / Things / Stuff table, in percent."""
    lines = []
    if per_class:
        rows = list(results["per_class"].items())
        width = max([len("category")] + [len(r["name"]) for _, r in rows])
        lines.append(f"{'category':{width}s}  id  kind |     PQ     SQ     RQ    TP    FP    FN")
        lines.append("-" * (width + 54))
        for cid, r in rows:
            kind = "thing" if r["isthing"] else "stuff"
            counts = f"{r['tp']:5d} {r['fp']:5d} {r['fn']:5d}"
            lines.append(
                f"{r['name']:{width}s} {cid:3d} {kind} | {_pct(r['pq'])} {_pct(r['sq'])} {_pct(r['rq'])} {counts}"
            )
        lines.append("")
    lines.append(f"{'':10s}|     PQ     SQ     RQ     N")
    lines.append("-" * 38)
    for name in ("All", "Things", "Stuff"):
        r = results[name]
        lines.append(f"{name:10s}| {_pct(r['pq'])} {_pct(r['sq'])} {_pct(r['rq'])} {r['n']:5d}")
    empty = [name for name in ("All", "Things", "Stuff") if results[name]["n"] == 0]
    note = f"; {'/'.join(empty)}: no category counted, shown as -100 (n = 0)" if empty else ""
    lines.append(f"({results['num_images']} images{note})")
    return "\n".join(lines)


def format_instance(results: dict, per_class: bool = True) -> str:
    """Per-class mask AP (optional) and COCO's AP summary, in percent (-100 = undefined, as COCO's -1)."""
    lines = []
    if per_class:
        rows = list(results["per_class"].items())
        width = max([len("category")] + [len(r["name"]) for _, r in rows])
        lines += [f"{'category':{width}s}  id |     AP", "-" * (width + 13)]
        lines += [f"{r['name']:{width}s} {cid:3d} | {_pct(r['ap'])}" for cid, r in rows]
        lines.append("")
    lines.append("  ".join(f"{k} {_pct(results[k], 0)}" for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")))
    lines.append(f"({results['num_images']} images)")
    return "\n".join(lines)


def _plain(x):
    """JSON-safe copy: NaN -> None, numpy scalars -> Python numbers, dict keys -> str."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if hasattr(x, "item"):
        x = x.item()
    if isinstance(x, float) and math.isnan(x):
        return None
    return x


def write_json(results: dict, path: str | Path) -> None:
    """Write results as strict JSON (NaN -> null), creating the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_plain(results), indent=1, allow_nan=False))
