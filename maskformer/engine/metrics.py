"""Step values during training: windowed averages (WindowMeter), the tqdm progress bar (Progress), the metrics
log (MetricsLogger: one JSON object per line in metrics.jsonl, mirrored to TensorBoard when it is installed) and its
curves as PNG (matplotlib; a figure is a list of panels, a panel is (title, {series name: (xs, ys)})).

Each record has "iter" plus scalar values, e.g. {"iter": 20, "loss": 3.1, "loss_ce": 0.9, "lr": 1e-4} or
{"iter": 500, "val/mIoU": 0.61}. Only the main process writes (pass enabled=False elsewhere).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

from maskformer.io import atomic_file


class MetricsLogger:
    """Appends records to `<out>/metrics.jsonl`; TensorBoard events go to `<out>/tb` if `tensorboard` is importable."""

    def __init__(self, out_dir: Path, *, enabled: bool = True, tensorboard: bool = True):
        self.path, self.enabled = Path(out_dir) / "metrics.jsonl", enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tb = _tensorboard_writer(Path(out_dir) / "tb") if enabled and tensorboard else None

    def log(self, iteration: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"iter": int(iteration)}
        for k, v in values.items():
            record[k] = str(v) if isinstance(v, float) and not math.isfinite(v) else v  # JSON has no NaN/inf
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, iteration)

    def truncate_after(self, iteration: int) -> None:
        """Drop records with iter > `iteration` (a resumed run rewrites them, so curves have no duplicates)."""
        if not self.enabled or not self.path.is_file():
            return
        kept = [r for r in read_jsonl(self.path) if r.get("iter", 0) <= iteration]
        with atomic_file(self.path) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _tensorboard_writer(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard is optional
        return None
    return SummaryWriter(str(path))


def read_jsonl(path: Path) -> list[dict]:
    """All records of a metrics.jsonl file (a torn last line from a killed run is skipped)."""
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


class WindowMeter:
    """Sums of step values since the last reset (the log window), with the step's wall time split into "time"
    (data + step) and "data_time"."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.count = 0

    def add(self, values: dict[str, float], *, data_time: float, step_time: float) -> None:
        for k, v in {**values, "time": data_time + step_time, "data_time": data_time}.items():
            self.sums[k] += v
        self.count += 1

    def averages(self) -> dict[str, float]:
        """Mean of each value over the window ("time" and "data_time" in s/iter)."""
        return {k: v / max(self.count, 1) for k, v in self.sums.items()}


def final_loss_term(key: str) -> bool:
    """True for "loss" and the final layer's "loss_*" terms, not the auxiliary "loss_*_0".."loss_*_4"."""
    return key.startswith("loss") and not key[-1].isdigit()


def bar_terms(values: dict[str, float]) -> dict[str, str]:
    """The bar's postfix: total loss, the final-layer terms (no aux "_0".."_4"), lr."""
    shown = {k: f"{v:.3f}" for k, v in values.items() if final_loss_term(k)}
    if "lr" in values:
        shown["lr"] = f"{values['lr']:.2e}"
    return shown


class Progress:
    """tqdm over iterations (ETA from tqdm's rate), with bar_terms and images/s; silent when disabled."""

    def __init__(self, *, total: int, initial: int, enabled: bool):
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, initial=initial, desc="train", unit="it", dynamic_ncols=True, disable=not enabled)

    def update(self, iteration: int, values: dict[str, float], meter: WindowMeter, *, images: int) -> None:
        self._bar.update(iteration - self._bar.n)
        per_iter = meter.sums["time"] / max(meter.count, 1)
        img_s = f"{images / per_iter:.1f}" if per_iter > 0 else "-"
        self._bar.set_postfix({**bar_terms(values), "img/s": img_s}, refresh=False)

    def close(self) -> None:
        self._bar.close()


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
    terms = [k for k in keys if k != "loss" and final_loss_term(k)]
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
