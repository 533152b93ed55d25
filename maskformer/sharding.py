"""Several processes over one dataset or input list: `torchrun --nproc_per_node N -m maskformer eval|predict ...`.

- Shards: process r of N takes the r-th consecutive block of the items (`shard_range`), so the blocks in rank order
  are the single-process order.
- eval: every evaluator logs its floating-point additions (`record_additions`); `reduce_evaluator` gathers each
  process's `state()` and merges them in rank order: integer counts (confusion matrices, TP/FP/FN) are summed as
  int64, the IoU sums are rebuilt by replaying the logged additions in the single-process order. The numbers are
  those of one process, to the last bit.
- predict: each image's outputs (label / panoptic PNG, overlay) are written atomically, then its JSON entries as
  `<out>/.parts/<stem>.json`, written last (atomically): that file present == the image complete. `--skip-existing`
  skips complete images (a crash between the PNGs and the part only costs that image's redo); at the end process 0
  merges the parts of all images, in input order, into the one panoptic.json / instances.json.
Without torchrun's environment everything runs as one process and these functions reduce to the plain path.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import torch.distributed as dist

from maskformer.engine.distributed import barrier, cleanup, init_distributed, is_distributed, rank, world_size
from maskformer.io import save_json

PARTS = ".parts"  # per-image JSON entries + completion markers of `maskformer predict`
_TEMP = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp(\.[^.]+)?$")  # maskformer.io.atomic_file's temporary names


@contextlib.contextmanager
def process_group(device: str | None) -> Iterator[None]:
    """Join torchrun's process group for the block (gloo on the CPU, nccl on CUDA) and leave it after, if this
    call joined it; a no-op without torchrun's environment or inside a group someone else set up."""
    joined = not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    if joined:
        init_distributed(device)
    try:
        yield
    finally:
        if joined:
            cleanup()


def is_main() -> bool:
    return rank() == 0


def shard_range(n: int) -> range:
    """This process's consecutive block of range(n); block sizes differ by at most one, blocks follow rank order."""
    r, w = rank(), world_size()
    return range(n * r // w, n * (r + 1) // w)


def shardable(evaluator):
    """`evaluator`, logging what `reduce_evaluator` needs when several processes run (a no-op in one process)."""
    if is_distributed():
        evaluator.record_additions()
    return evaluator


def reduce_evaluator(evaluator) -> None:
    """Make every process's `evaluator` hold the whole dataset's state: all states gathered, merged in rank order."""
    if not is_distributed():
        return
    states = [None] * world_size()
    dist.all_gather_object(states, evaluator.state())
    evaluator.reset()
    for state in states:
        evaluator.merge_state(state)


# ------------------------------------------------------------------------------------------------ predict
def part_path(out: Path, stem: str) -> Path:
    return Path(out) / PARTS / f"{stem}.json"


def write_part(out: Path, stem: str, entries: list[dict]) -> None:
    """The image's JSON entries (panoptic annotation / instance results; [] for semantic), written last: its marker."""
    save_json(part_path(out, stem), entries)


def plan(jobs: list[tuple[Path, str]], out: Path, *, skip_existing: bool) -> tuple[list[tuple[Path, str]], str]:
    """This process's share of the (input path, output stem) pairs, without complete images when skip_existing,
    and a note for the summary line (", 4 complete skipped; process 1 of 2"; "" for a plain run).

    Resuming, process 0 first removes temporary files a killed run left behind (no process writes yet).
    """
    if skip_existing:
        if is_main():
            remove_stale_temporaries(Path(out))
        barrier()
    mine = [jobs[i] for i in shard_range(len(jobs))]
    todo = [(p, s) for p, s in mine if not (skip_existing and part_path(out, s).is_file())]
    note = f", {len(mine) - len(todo)} complete skipped" if len(todo) < len(mine) else ""
    return todo, note + (f"; process {rank() + 1} of {world_size()}" if is_distributed() else "")


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Delete maskformer.io's temporary files (".<stem>.<12 hex>.tmp.<ext>") under `out`; returns them."""
    found = [p for p in out.rglob(".*") if p.is_file() and _TEMP.match(p.name)] if out.is_dir() else []
    for p in found:
        p.unlink(missing_ok=True)
    return found


def merged_parts(out: Path, stems: list[str]) -> list[dict]:
    """Every complete image's JSON entries, in input order (stems without a part: images that failed)."""
    entries: list[dict] = []
    for stem in stems:
        path = part_path(out, stem)
        if path.is_file():
            entries.extend(json.loads(path.read_text()))
    return entries


def finish(write: Callable[[], None]) -> None:
    """Wait for every process, then run `write` (the merged JSON files) in process 0 only."""
    barrier()
    if is_main():
        write()
    barrier()
