"""Batching and deterministic, exactly resumable loading: `(index, seed)` keys with a per-sample augmentation seed
tied to (seed, epoch, position), so a sample's augmentation does not depend on the number of workers or on where
training was resumed.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from ..structures import ImageBatch, SegTarget


def collate(batch: Sequence, size_divisibility: int = 32) -> tuple[ImageBatch, list[SegTarget], list[dict]]:
    """[(image uint8 [3, h, w], SegTarget, info)] -> (ImageBatch padded with the pixel mean, targets, infos)."""
    images, targets, infos = zip(*batch)
    return ImageBatch.from_images(list(images), size_divisibility=size_divisibility), list(targets), list(infos)


class ResumableSampler(Sampler):
    """Keys (index, seed) over `size` items for one rank, infinite or one epoch per iteration.

    Each epoch: a permutation of range(size) from (seed, epoch) (identity when shuffle=False), padded by wrapping to
    a multiple of world_size, positions rank, rank + world_size, ... for this rank. `epoch_length` is the per-rank
    count. Iteration starts at (self.epoch, self.offset), set by `set_position`.
    """

    def __init__(self, size: int, *, shuffle=True, seed=0, rank=0, world_size=1, infinite=False):
        if size <= 0:
            raise ValueError("ResumableSampler needs a non-empty dataset")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank, self.world_size, self.infinite = rank, world_size, infinite
        self.epoch_length = -(-size // world_size)
        self.epoch, self.offset = 0, 0

    def set_position(self, epoch: int, offset: int) -> None:
        if not 0 <= offset <= self.epoch_length:
            raise ValueError(f"offset {offset} is outside [0, {self.epoch_length}]")
        self.epoch, self.offset = int(epoch), int(offset)

    def epoch_keys(self, epoch: int) -> list[tuple[int, int]]:
        """This rank's (index, seed) keys of one epoch."""
        total = self.epoch_length * self.world_size
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(self.size) if self.shuffle else np.arange(self.size)
        order = np.resize(order, total)  # wrap-around padding to a multiple of world_size
        seeds = rng.integers(0, 2**63 - 1, size=total)
        pos = np.arange(self.rank, total, self.world_size)
        return list(zip(order[pos].tolist(), seeds[pos].tolist()))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, offset = self.epoch, self.offset
        while True:
            yield from self.epoch_keys(epoch)[offset:]
            if not self.infinite:
                return
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:
        return self.epoch_length - self.offset


def worker_message(error: Exception) -> Exception:
    """The exception a DataLoader worker raised, without the worker traceback torch puts into the message."""
    text, head = str(error), f"{type(error).__name__}: "
    if "Original Traceback" not in text or head not in text:
        return error
    try:
        return type(error)(text[text.rindex(head) + len(head) :].strip())
    except TypeError:  # an exception type with other constructor arguments
        return error


class ResumableLoader:
    """A DataLoader over a ResumableSampler that knows how many samples it has delivered.

    state_dict() -> {"epoch", "offset"} of the next undelivered sample (independent of worker prefetching);
    load_state_dict() makes the next iteration continue from there. A finite loader ends each iteration at the end
    of its epoch and the next iteration starts the following epoch.
    """

    def __init__(self, loader: DataLoader, sampler: ResumableSampler):
        self.loader, self.sampler = loader, sampler

    def __iter__(self):
        s, start_epoch = self.sampler, self.sampler.epoch
        try:
            for batch in self.loader:  # the position moves past each batch before it is handed out
                total = s.offset + len(batch[0])
                epoch, offset = s.epoch + total // s.epoch_length, total % s.epoch_length
                if not s.infinite and epoch > s.epoch:  # a finite loader stops at the start of the next epoch
                    epoch, offset = s.epoch + 1, 0
                s.epoch, s.offset = epoch, offset
                yield batch
        except (ValueError, OSError) as e:  # bad data read in a worker: the reader's one-line message, no traceback
            raise worker_message(e) from None
        if not s.infinite and s.epoch == start_epoch:
            s.set_position(start_epoch + 1, 0)

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.loader.batch_size)

    def state_dict(self) -> dict:
        return {"epoch": self.sampler.epoch, "offset": self.sampler.offset}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.set_position(state["epoch"], state["offset"])


def build_loader(
    dataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    seed: int,
    *,
    infinite: bool = False,
    rank: int = 0,
    world_size: int = 1,
    size_divisibility: int = 32,
) -> ResumableLoader:
    """A `ResumableLoader` yielding (ImageBatch, list[SegTarget], list[info]): seeded keys, sharded by
    rank/world_size, state_dict/load_state_dict."""
    rs = ResumableSampler(len(dataset), shuffle=shuffle, seed=seed, rank=rank, world_size=world_size, infinite=infinite)
    coll = functools.partial(collate, size_divisibility=size_divisibility)
    # torch seeds python/numpy/torch in each worker from this generator; the augmentation itself is keyed
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size, sampler=rs, num_workers=num_workers, collate_fn=coll, generator=gen)
    return ResumableLoader(loader, rs)
