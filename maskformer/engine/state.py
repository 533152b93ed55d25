"""Training checkpoints and the run folder: what a run writes, written atomically, and where a run continues.

Layout under `<out>/checkpoints/`:
  iter_0000500/       a model directory (loadable by eval/predict) + train_state.pt: iteration, optimizer, scheduler,
                      grad scaler, RNG states, data-loader position, best metric, resolved config
  latest              text file naming the newest complete checkpoint
A checkpoint is written to `iter_XXXXXXX.tmp` and renamed into place, so an interrupted save never leaves a
half-written checkpoint that `--resume` could pick up. A damaged one found when resuming is set aside as
`iter_XXXXXXX.damaged` and the previous one is used.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from maskformer.checkpoint import atomic_write

TRAIN_STATE = "train_state.pt"
LATEST = "latest"
RUN_FILES = ("checkpoints", "metrics.jsonl", "config.json", "best", "model", "curves.png", "tb")  # what a run writes
_ITER_DIR = re.compile(r"^iter_(\d+)$")


class RunExistsError(FileExistsError):
    """`--out` already holds a training run and neither resume nor overwrite was asked for."""


def prepare_out_dir(out: Path, *, resume: bool = False, overwrite: bool = False) -> None:
    """Create `out` and make sure it is writable (else a one-line OSError); refuse (RunExistsError) to start a new
    run over an old one unless `overwrite`, which deletes the old run's files (RUN_FILES only) first."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()
    except OSError as e:
        raise OSError(f"output folder {out} is not writable: {e.strerror or e}") from None
    old = [name for name in RUN_FILES[:5] if (out / name).exists()]
    if old and not resume:
        if not overwrite:
            raise RunExistsError(
                f"{out} already holds a training run ({', '.join(old)}); continue it with --resume, "
                "start over with --overwrite, or choose another --out"
            )
        for path in (out / name for name in RUN_FILES):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)


def capture_rng() -> dict:
    """RNG states of python, numpy, torch (CPU) and every CUDA device, in a form torch.load(weights_only) accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_name(iteration: int) -> str:
    return f"iter_{iteration:07d}"


def save_checkpoint(
    root: Path, name: str, write_model: Callable[[Path], None], train_state: dict | None, *, mark_latest: bool = True
) -> Path:
    """Write `root/name` atomically: `write_model(dir)` writes the model directory, then `train_state.pt` (None: a
    model directory only, e.g. the best model). An existing `root/name` is swapped out once the new one is complete."""
    root.mkdir(parents=True, exist_ok=True)
    final, tmp, old = root / name, root / f"{name}.tmp", root / f"{name}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write_model(tmp)
    if train_state is not None:
        torch.save(train_state, tmp / TRAIN_STATE)
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    if mark_latest:
        atomic_write(root / LATEST, name + "\n")
    return final


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete iteration checkpoints under `root`, oldest first: [(iteration, path)]."""
    found = [(_ITER_DIR.match(p.name), p) for p in root.iterdir()] if root.is_dir() else []
    return sorted((int(m.group(1)), p) for m, p in found if m and (p / TRAIN_STATE).is_file())


def latest_checkpoint(root: Path) -> Path | None:
    """The checkpoint named by `root/latest`, else the highest complete `iter_*`, else None."""
    return next(iter(resume_candidates(root)), None)


def resume_candidates(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, newest first: the one named by `root/latest`, then by iteration."""
    found = [p for _, p in reversed(list_checkpoints(root))]
    marker = root / LATEST
    named = root / marker.read_text().strip() if marker.is_file() else None
    return sorted(found, key=lambda p: p != named)  # stable: `latest` first, the rest newest first


def set_aside(ckpt: Path) -> None:
    """Rename a damaged checkpoint to `<name>.damaged` (kept for inspection, never resumed or pruned)."""
    target = ckpt.with_name(ckpt.name + ".damaged")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(ckpt, target)


def prune_checkpoints(root: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` iteration checkpoints (keep_last <= 0 keeps all). Returns the deleted."""
    doomed = [p for _, p in list_checkpoints(root)[:-keep_last]] if keep_last > 0 else []
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed


def resolve_resume(resume: str | None, out_dir: Path) -> Path | None:
    """`--resume` value -> checkpoint directory. "" or "latest": newest under out_dir/checkpoints; else a path to a
    checkpoint directory, its train_state.pt, or a run's output folder."""
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
        path = latest_checkpoint(path / "checkpoints") or path
    if not (path / TRAIN_STATE).is_file():
        raise FileNotFoundError(f"--resume {resume}: {path / TRAIN_STATE} does not exist (not a training checkpoint)")
    return path


def load_train_state(path: Path) -> dict:
    """Read `path/train_state.pt` onto the CPU (tensors and plain Python values only)."""
    file = path / TRAIN_STATE
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupted or foreign file: say which
        raise RuntimeError(f"cannot read training state {file}: {e}") from e
