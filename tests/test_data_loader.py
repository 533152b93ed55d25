"""Collation, the resumable sharded sampler, and deterministic loading independent of workers and resume."""

from __future__ import annotations

import pytest
import torch
from _data_fixtures import write_coco_panoptic
from torch.utils.data import Dataset

from maskformer.config import DataConfig
from maskformer.data import DatasetError, ResumableSampler, build_dataset, build_loader, collate
from maskformer.structures import PIXEL_MEAN, SegTarget


class KeyEcho(Dataset):
    """Returns its key: image filled with the index, info with (index, seed)."""

    def __len__(self):
        return 10

    def __getitem__(self, key):
        idx, seed = key if isinstance(key, tuple) else (key, -1)
        target = SegTarget(torch.zeros(0, dtype=torch.long), torch.zeros(0, 2, 2, dtype=torch.bool))
        return torch.full((3, 2, 2), idx, dtype=torch.uint8), target, {"key": (idx, seed)}


def test_collate_pads_with_pixel_mean_to_divisibility():
    a, b = torch.full((3, 5, 7), 10, dtype=torch.uint8), torch.full((3, 33, 4), 20, dtype=torch.uint8)
    t = SegTarget(torch.tensor([1]), torch.ones(1, 5, 7, dtype=torch.bool))
    batch, targets, infos = collate([(a, t, {"i": 0}), (b, t, {"i": 1})], size_divisibility=32)
    assert batch.tensor.shape == (2, 3, 64, 32) and batch.image_sizes == [(5, 7), (33, 4)]
    assert batch.tensor[0, :, :5, :7].eq(10).all() and batch.tensor[1, :, :33, :4].eq(20).all()
    assert torch.allclose(batch.tensor[0, :, 6, 8], torch.tensor(PIXEL_MEAN))
    assert targets == [t, t] and [i["i"] for i in infos] == [0, 1]


def test_sampler_epochs_are_permutations_and_seeded():
    s = ResumableSampler(10, seed=3)
    e0, e1 = s.epoch_keys(0), s.epoch_keys(1)
    assert sorted(i for i, _ in e0) == list(range(10)) and sorted(i for i, _ in e1) == list(range(10))
    assert e0 != e1 and e0 == ResumableSampler(10, seed=3).epoch_keys(0) != ResumableSampler(10, seed=4).epoch_keys(0)
    assert [i for i, _ in ResumableSampler(10, shuffle=False).epoch_keys(0)] == list(range(10))


def test_sampler_shards_like_distributed_sampler():
    full = ResumableSampler(10, seed=1, world_size=1).epoch_keys(2)
    shards = [ResumableSampler(10, seed=1, rank=r, world_size=3).epoch_keys(2) for r in range(3)]
    assert all(len(s) == 4 for s in shards)  # ceil(10 / 3), padded by wrapping around
    interleaved = [shards[p % 3][p // 3] for p in range(12)]
    assert interleaved[:10] == full and [k[0] for k in interleaved[10:]] == [full[0][0], full[1][0]]


def _indices(loader, n):
    out = []
    for i, (_, _, infos) in enumerate(loader):
        out.append([info["key"] for info in infos])
        if i + 1 == n:
            break
    return out


def test_infinite_loader_resumes_exactly_with_prefetching_workers():
    ref = _indices(build_loader(KeyEcho(), 4, True, 0, seed=5, infinite=True), 7)  # 28 samples: crosses 2 epochs
    loader = build_loader(KeyEcho(), 4, True, 2, seed=5, infinite=True)
    first = _indices(loader, 3)
    state = loader.state_dict()
    assert state == {"epoch": 1, "offset": 2}  # 12 samples delivered, whatever the workers prefetched
    resumed = build_loader(KeyEcho(), 4, True, 2, seed=5, infinite=True)
    resumed.load_state_dict(state)
    assert first + _indices(resumed, 4) == ref


def test_finite_loader_epochs():
    loader = build_loader(KeyEcho(), 4, True, 0, seed=0)
    assert len(loader) == 3
    e0 = [k for b in _indices(loader, 99) for k in b]
    assert loader.state_dict() == {"epoch": 1, "offset": 0}
    e1 = [k for b in _indices(loader, 99) for k in b]
    assert sorted(i for i, _ in e0) == sorted(i for i, _ in e1) == list(range(10)) and e0 != e1


def test_augmented_batches_do_not_depend_on_workers(tmp_path):
    write_coco_panoptic(tmp_path)
    cfg = DataConfig(format="coco_panoptic", crop_size=(8, 8), min_size_train=(10, 16, 24), pad_size=8)
    ds = build_dataset(cfg, "val2017", train=True, root=tmp_path)
    batches = []
    for workers in (0, 2):
        loader = build_loader(ds, 2, True, workers, seed=9, infinite=True, size_divisibility=0)
        batches.append([b.tensor for b, _, _ in (next(iter(loader)), next(iter(loader)))])
    assert all(torch.equal(x, y) for x, y in zip(*batches))
    assert not torch.equal(batches[0][0][0], batches[0][0][1])  # each sample has its own augmentation seed


class Broken(KeyEcho):
    def __getitem__(self, key):
        raise DatasetError(f"img_{key[0]}.png: cannot decode image")


def test_worker_errors_reach_the_user_as_the_clean_message():
    loader = build_loader(Broken(), batch_size=2, shuffle=False, num_workers=1, seed=0)
    with pytest.raises(DatasetError) as info:
        next(iter(loader))
    assert str(info.value) == "img_0.png: cannot decode image"
