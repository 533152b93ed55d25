"""Distributed data parallel: 2 processes (gloo, CPU) with batch b each == 1 process with batch 2b, after 3 steps.

The processes are spawned inside the test with torch.multiprocessing and the env vars torchrun would set. The data
gives every image the same number of segments, so the per-process cross-entropy means average to the global one.
"""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from train_helpers import tiny_config, tiny_model

from maskformer.structures import DatasetMeta, SegTarget

STEPS, B = 3, 2


class StripesDataset:
    """Images of 3 vertical bands with 3 distinct classes (out of 8) and matching targets; keys may be (index, seed)."""

    meta = DatasetMeta("stripes", [f"c{i}" for i in range(8)])

    def __init__(self, n: int = 12, size: int = 64):
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key):
        index = key[0] if isinstance(key, tuple) else key
        g = np.random.default_rng(index)
        classes = g.permutation(8)[:3]
        cuts = np.sort(g.integers(8, self.size - 8, 2))
        sem = np.zeros((self.size, self.size), np.int64)
        sem[:, cuts[0] : cuts[1]], sem[:, cuts[1] :] = 1, 2
        sem = classes[sem]
        image = (g.uniform(0, 60, (3, 1, 1)) + 25 * sem[None]).clip(0, 255).astype(np.uint8)
        return torch.from_numpy(image), SegTarget.from_semantic(sem, 255), {"index": index}


def _config(batch: int):
    return tiny_config("unused", f"train.batch_size={batch}", f"train.max_iter={STEPS}", "train.checkpoint_period=0")


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    os.environ["LOCAL_RANK"] = str(rank)
    torch.set_num_threads(1)
    from maskformer.engine import distributed as D
    from maskformer.engine.loop import Trainer

    cfg = _config(B * world)
    try:
        tr = Trainer(cfg, out, model=tiny_model(cfg), train_set=StripesDataset(), device="cpu", progress=False)
        assert tr.micro_batch == B and tr.dist.world_size == world
        tr.run()
        torch.save(tr.model.state_dict(), os.path.join(out, f"rank{rank}.pt"))
    finally:
        D.cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="gloo backend not available")
def test_two_processes_match_one_process_with_double_batch(tmp_path):
    import torch._dynamo  # noqa: F401  (DDP's constructor imports it: once here, not in both forked children)

    from maskformer.engine.loop import Trainer

    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path / "ddp")), nprocs=2, start_method="fork")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = _config(2 * B)
        single = Trainer(cfg, tmp_path / "one", model=tiny_model(cfg), train_set=StripesDataset(), progress=False)
        single.run()
    finally:
        torch.set_num_threads(n)
    ref = single.model.state_dict()
    init = tiny_model(cfg).state_dict()
    for rank in range(2):
        got = torch.load(tmp_path / "ddp" / f"rank{rank}.pt", weights_only=True)
        for k, v in ref.items():
            torch.testing.assert_close(got[k], v, rtol=0, atol=1e-5, msg=k)
    moved = max(float((ref[k] - init[k]).abs().max()) for k in ref if ref[k].is_floating_point())
    assert moved > 1e-4  # the weights did train, so the equality above means something
