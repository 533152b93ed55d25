"""Progress bar (tqdm) with loss terms, learning rate, throughput and ETA, and a windowed average of step values."""

from __future__ import annotations

from collections import defaultdict


class WindowMeter:
    """Running sums of step values since the last reset (the log window), plus timing."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.count, self.data_time, self.step_time = 0, 0.0, 0.0

    def add(self, values: dict[str, float], *, data_time: float, step_time: float) -> None:
        for k, v in values.items():
            self.sums[k] += v
        self.count += 1
        self.data_time += data_time
        self.step_time += step_time

    def averages(self) -> dict[str, float]:
        """Mean of each value over the window, plus "time" (s/iter) and "data_time" (s/iter)."""
        n = max(self.count, 1)
        return {**{k: v / n for k, v in self.sums.items()}, "time": (self.data_time + self.step_time) / n,
                "data_time": self.data_time / n}


def bar_terms(values: dict[str, float]) -> dict[str, str]:
    """The bar's postfix: total loss, the final-layer terms (no aux "_0".."_4"), lr."""
    shown = {k: f"{v:.3f}" for k, v in values.items() if k.startswith("loss") and not k[-1].isdigit()}
    if "lr" in values:
        shown["lr"] = f"{values['lr']:.2e}"
    return shown


class Progress:
    """tqdm over iterations (ETA from tqdm's rate), silent when disabled or tqdm is missing."""

    def __init__(self, *, total: int, initial: int, enabled: bool):
        self._bar = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc="train", unit="it", dynamic_ncols=True)

    def update(self, iteration: int, values: dict[str, float], meter: WindowMeter, *, images: int) -> None:
        if self._bar is None:
            return
        self._bar.update(iteration - self._bar.n)
        per_iter = (meter.data_time + meter.step_time) / max(meter.count, 1)
        postfix = bar_terms(values)
        postfix["img/s"] = f"{images / per_iter:.1f}" if per_iter > 0 else "-"
        self._bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
