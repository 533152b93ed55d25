"""Line plots of training curves as PNG: matplotlib when installed, else a small Pillow renderer (no extra deps).

A figure is a list of panels; a panel is (title, {series name: (xs, ys)}). `plot_training_curves` turns a
metrics.jsonl history into panels: total loss, each loss term, learning rate, and every "val/..." metric.
"""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

Series = dict[str, tuple[list[float], list[float]]]
Panel = tuple[str, Series]
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
    """Panels side by side (up to 3 per row) in one PNG at `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import matplotlib
    except ImportError:
        _plot_pil(panels, path, xlabel)
    else:
        matplotlib.use("Agg")
        _plot_matplotlib(panels, path, xlabel)
    return path


def _plot_matplotlib(panels: list[Panel], path: Path, xlabel: str) -> None:
    import matplotlib.pyplot as plt

    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, (title, series) in zip(axes.flat, panels):
        for name, (xs, ys) in series.items():
            ax.plot(xs, ys, label=name)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_pil(panels: list[Panel], path: Path, xlabel: str, size: tuple[int, int] = (420, 300)) -> None:
    cols = min(3, max(1, len(panels)))
    rows = max(1, math.ceil(len(panels) / cols))
    img = Image.new("RGB", (size[0] * cols, size[1] * rows), "white")
    for i, panel in enumerate(panels):
        _draw_panel(img, panel, (size[0] * (i % cols), size[1] * (i // cols)), size, xlabel)
    img.save(path)


def _draw_panel(img: Image.Image, panel: Panel, origin: tuple[int, int], size: tuple[int, int], xlabel: str) -> None:
    """One panel: frame, min/max tick labels, the series as polylines, a legend."""
    draw, font = ImageDraw.Draw(img), ImageFont.load_default()
    title, series = panel
    x0, y0 = origin[0] + 60, origin[1] + 24
    x1, y1 = origin[0] + size[0] - 12, origin[1] + size[1] - 36
    pts = [(x, y) for xs, ys in series.values() for x, y in zip(xs, ys) if math.isfinite(y)]
    draw.text((origin[0] + 8, origin[1] + 6), title, fill="black", font=font)
    draw.rectangle([x0, y0, x1, y1], outline=(120, 120, 120))
    if not pts:
        return
    lo_x, hi_x = min(p[0] for p in pts), max(p[0] for p in pts)
    lo_y, hi_y = min(p[1] for p in pts), max(p[1] for p in pts)
    hi_x, hi_y = (hi_x if hi_x > lo_x else lo_x + 1), (hi_y if hi_y > lo_y else lo_y + 1e-12)

    def to_px(x: float, y: float) -> tuple[float, float]:
        return x0 + (x - lo_x) / (hi_x - lo_x) * (x1 - x0), y1 - (y - lo_y) / (hi_y - lo_y) * (y1 - y0)

    for j, (name, (xs, ys)) in enumerate(series.items()):
        color = COLORS[j % len(COLORS)]
        line = [to_px(x, y) for x, y in zip(xs, ys) if math.isfinite(y)]
        if len(line) > 1:
            draw.line(line, fill=color, width=2)
        elif line:
            draw.ellipse([line[0][0] - 2, line[0][1] - 2, line[0][0] + 2, line[0][1] + 2], fill=color)
        draw.text((x1 - 120, y0 + 4 + 12 * j), name[:20], fill=color, font=font)
    draw.text((origin[0] + 4, y0), f"{hi_y:.3g}", fill="black", font=font)
    draw.text((origin[0] + 4, y1 - 10), f"{lo_y:.3g}", fill="black", font=font)
    draw.text((x0, y1 + 4), f"{lo_x:g}", fill="black", font=font)
    draw.text((x1 - 40, y1 + 4), f"{hi_x:g}", fill="black", font=font)
    draw.text(((x0 + x1) // 2 - 20, y1 + 18), xlabel, fill="black", font=font)
