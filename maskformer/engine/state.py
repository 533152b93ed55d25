"""Training checkpoints: a model directory plus everything needed to continue exactly, written atomically.

Layout under `<out>/checkpoints/`:
  iter_0000500/            a model directory (weights in safetensors + config, loadable for eval/predict)
    train_state.pt         iteration, optimizer, scheduler, grad scaler, RNG states (python, numpy, torch, cuda),
                           data-loader position, best metric, resolved config
  latest                   text file naming the newest complete checkpoint
A checkpoint is first written to `iter_XXXXXXX.tmp` and renamed into place, so an interrupted save never
leaves a half-written checkpoint that `--resume` could pick up; `latest` is replaced the same way.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

TRAIN_STATE = "train_state.pt"
LATEST = "latest"
_ITER_DIR = re.compile(r"^iter_(\d+)$")


def capture_rng() -> dict:
    """RNG states of python, numpy, torch (CPU) and every CUDA device, in a form torch.load(weights_only) accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    """Inverse of `capture_rng`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_name(iteration: int) -> str:
    return f"iter_{iteration:07d}"


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished directory `tmp` to `final`; an existing `final` is swapped out first, then deleted."""
    old = final.with_name(final.name + ".old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(
    root: Path, name: str, write_model: Callable[[Path], None], train_state: dict | None, *, mark_latest: bool = True
) -> Path:
    """Write `root/name` atomically: `write_model(dir)` writes the model directory, then `train_state.pt`.

    train_state: None to write a model directory only (e.g. the best model). Returns the final path.
    """
    root.mkdir(parents=True, exist_ok=True)
    final, tmp = root / name, root / f"{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write_model(tmp)
    if train_state is not None:
        torch.save(train_state, tmp / TRAIN_STATE)
    _replace_dir(tmp, final)
    if mark_latest:
        write_text_atomic(root / LATEST, name + "\n")
    return final


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete iteration checkpoints under `root`, oldest first: [(iteration, path)]."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _ITER_DIR.match(p.name)
        if m and (p / TRAIN_STATE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(root: Path) -> Path | None:
    """The checkpoint named by `root/latest`, else the highest complete `iter_*`, else None."""
    marker = root / LATEST
    if marker.is_file():
        path = root / marker.read_text().strip()
        if (path / TRAIN_STATE).is_file():
            return path
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def prune_checkpoints(root: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` iteration checkpoints (keep_last <= 0 keeps all). Returns the deleted."""
    found = list_checkpoints(root)
    if keep_last <= 0 or len(found) <= keep_last:
        return []
    doomed = [p for _, p in found[:-keep_last]]
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed


def resolve_resume(resume: str | None, out_dir: Path) -> Path | None:
    """`--resume` value -> checkpoint directory. "" or "latest": newest under out_dir/checkpoints; else a path.

    A path may name a checkpoint directory, its train_state.pt, or a run's output folder.
    """
    if resume is None:
        return None
    if resume in ("", "latest"):
        path = latest_checkpoint(out_dir / "checkpoints")
        if path is None:
            raise FileNotFoundError(f"--resume: no complete checkpoint under {out_dir / 'checkpoints'}")
        return path
    path = Path(resume)
    if path.name == TRAIN_STATE:
        path = path.parent
    if not (path / TRAIN_STATE).is_file() and (path / "checkpoints").is_dir():
        found = latest_checkpoint(path / "checkpoints")
        path = found if found is not None else path
    if not (path / TRAIN_STATE).is_file():
        raise FileNotFoundError(f"--resume {resume}: {path / TRAIN_STATE} does not exist (not a training checkpoint)")
    return path


def load_train_state(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """Read `path/train_state.pt` (tensors and plain Python values only)."""
    file = path / TRAIN_STATE
    try:
        return torch.load(file, map_location=map_location, weights_only=True)
    except Exception as e:  # corrupted or foreign file: say which
        raise RuntimeError(f"cannot read training state {file}: {e}") from e
