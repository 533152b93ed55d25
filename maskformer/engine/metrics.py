"""Metrics log: one JSON object per line (metrics.jsonl), mirrored to TensorBoard when it is installed.

Each record has "iter" plus scalar values, e.g. {"iter": 20, "loss": 3.1, "loss_ce": 0.9, "lr": 1e-4} or
{"iter": 500, "val/mIoU": 0.61}. Only the main process writes (pass enabled=False elsewhere).
"""

from __future__ import annotations

import json
import math
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
