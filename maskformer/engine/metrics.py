"""Step values during training: windowed averages (WindowMeter), the tqdm progress bar (Progress) and the metrics
log (MetricsLogger: one JSON object per line in metrics.jsonl, mirrored to TensorBoard when it is installed).

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
        record = {"iter": int(iteration), **{k: _jsonable(v) for k, v in values.items()}}
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


def _jsonable(v):
    return str(v) if isinstance(v, float) and not math.isfinite(v) else v  # JSON has no NaN/inf


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


def bar_terms(values: dict[str, float]) -> dict[str, str]:
    """The bar's postfix: total loss, the final-layer terms (no aux "_0".."_4"), lr."""
    shown = {k: f"{v:.3f}" for k, v in values.items() if k.startswith("loss") and not k[-1].isdigit()}
    if "lr" in values:
        shown["lr"] = f"{values['lr']:.2e}"
    return shown


class Progress:
    """tqdm over iterations (ETA from tqdm's rate), with bar_terms and images/s; silent when disabled."""

    def __init__(self, *, total: int, initial: int, enabled: bool):
        self._bar = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc="train", unit="it", dynamic_ncols=True)

    def update(self, iteration: int, values: dict[str, float], meter: WindowMeter, *, images: int) -> None:
        if self._bar is None:
            return
        self._bar.update(iteration - self._bar.n)
        per_iter = meter.sums["time"] / max(meter.count, 1)
        img_s = f"{images / per_iter:.1f}" if per_iter > 0 else "-"
        self._bar.set_postfix({**bar_terms(values), "img/s": img_s}, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
