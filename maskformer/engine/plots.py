"""Line plots of training curves as PNG (matplotlib).

A figure is a list of panels; a panel is (title, {series name: (xs, ys)}). `plot_training_curves` turns a
metrics.jsonl history into panels: total loss, each loss term, learning rate, and every "val/..." metric.
"""

from __future__ import annotations

import math
from pathlib import Path

from maskformer.io import atomic_file

Series = dict[str, tuple[list[float], list[float]]]
Panel = tuple[str, Series]
# series colours in order: matplotlib's tab10 cycle as RGB
COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75), (227, 119, 194)]


def training_panels(records: list[dict]) -> list[Panel]:
    """Panels from metrics.jsonl records: "loss" and the final-layer "loss_*" terms (log10 when they span more
    than 20x), "lr", and the validation fractions ("val/mIoU", "val/PQ", ...)."""

    def series(key: str) -> tuple[list[float], list[float]]:
        pts = [(r["iter"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
        return [p[0] for p in pts], [p[1] for p in pts]

    keys = sorted({k for r in records for k, v in r.items() if isinstance(v, (int, float)) and k != "iter"})
    panels: list[Panel] = []
    if "loss" in keys:
        panels.append(_maybe_log("total loss", {"loss": series("loss")}))
    terms = [k for k in keys if k.startswith("loss_") and not k[-1].isdigit()]  # final-layer terms only
    if terms:
        panels.append(_maybe_log("loss terms", {k: series(k) for k in terms}))
    if "lr" in keys:
        panels.append(("learning rate", {"lr": series("lr")}))
    evals = {k[4:]: series(k) for k in keys if k.startswith("val/")}
    evals = {k: v for k, v in evals.items() if v[1] and all(0.0 <= y <= 1.0 for y in v[1])}  # fractions only
    main = {k: v for k, v in evals.items() if k in VAL_KEYS}
    if main or evals:
        panels.append(("validation", main or evals))
    return panels


VAL_KEYS = ("mIoU", "mACC", "pACC", "PQ", "PQ_th", "PQ_st", "AP")


def _maybe_log(title: str, series: Series) -> Panel:
    ys = [y for _, v in series.values() for y in v if y > 0]
    if not ys or max(ys) / min(ys) <= 20:
        return title, series
    logged = {k: (xs, [math.log10(y) if y > 0 else float("nan") for y in v]) for k, (xs, v) in series.items()}
    return f"{title} (log10)", logged


def plot_training_curves(records: list[dict], path: Path) -> Path | None:
    """Write the training-curve PNG for a metrics history; None when there is nothing to plot."""
    panels = training_panels(records)
    return plot_panels(panels, path, xlabel="iteration") if panels else None


def plot_panels(panels: list[Panel], path: Path, *, xlabel: str = "") -> Path:
    """Panels side by side (up to 3 per row) in one PNG at `path`, written atomically.

    matplotlib's object API (no pyplot, no backend switch: no process-wide state), imported here so that importing
    the training loop does not pay for it.
    """
    from matplotlib.figure import Figure

    path = Path(path)
    cols = min(3, max(1, len(panels)))
    rows = max(1, math.ceil(len(panels) / cols))
    fig = Figure(figsize=(5 * cols, 3.6 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).flat
    for ax, (title, series) in zip(axes, panels):
        for j, (name, (xs, ys)) in enumerate(series.items()):
            ax.plot(xs, ys, label=name, color=[c / 255 for c in COLORS[j % len(COLORS)]])
        ax.set(title=title, xlabel=xlabel)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=8)
    for ax in list(axes)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    return path
