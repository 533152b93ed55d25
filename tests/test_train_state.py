"""Training-checkpoint mechanics: RNG capture/restore, atomic save, keep-last-N, --resume resolution."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from maskformer.engine import state as S


def _draws():
    return random.random(), float(np.random.rand()), float(np.random.randn()), float(torch.rand(1))


def test_rng_roundtrip_through_torch_save(tmp_path):
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    saved = S.capture_rng()
    torch.save({"rng": saved}, tmp_path / "s.pt")
    expected = _draws()
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    S.restore_rng(torch.load(tmp_path / "s.pt", weights_only=True)["rng"])
    assert _draws() == expected


def _writer(payload: str):
    def write(d):
        (d / "model.safetensors").write_text(payload)

    return write


def test_save_checkpoint_layout_and_latest(tmp_path):
    root = tmp_path / "checkpoints"
    p = S.save_checkpoint(root, S.checkpoint_name(500), _writer("w500"), {"iteration": 500})
    assert p == root / "iter_0000500"
    assert (p / "model.safetensors").read_text() == "w500"
    assert S.load_train_state(p)["iteration"] == 500
    assert (root / "latest").read_text().strip() == "iter_0000500"
    assert S.latest_checkpoint(root) == p
    assert not list(root.glob("*.tmp"))


def test_interrupted_save_leaves_previous_checkpoint_intact(tmp_path):
    root = tmp_path / "checkpoints"
    S.save_checkpoint(root, "iter_0000010", _writer("good"), {"iteration": 10})

    def crash(d):
        (d / "model.safetensors").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        S.save_checkpoint(root, "iter_0000020", crash, {"iteration": 20})
    assert not (root / "iter_0000020").exists()
    assert S.latest_checkpoint(root) == root / "iter_0000010"
    assert [i for i, _ in S.list_checkpoints(root)] == [10]  # the .tmp directory is not a checkpoint
    # overwriting an existing checkpoint of the same name replaces it
    S.save_checkpoint(root, "iter_0000010", _writer("newer"), {"iteration": 10})
    assert (root / "iter_0000010" / "model.safetensors").read_text() == "newer"


def test_latest_falls_back_to_highest_complete(tmp_path):
    root = tmp_path / "checkpoints"
    for it in (5, 15, 10):
        S.save_checkpoint(root, S.checkpoint_name(it), _writer(str(it)), {"iteration": it}, mark_latest=False)
    (root / "iter_0000099").mkdir()  # incomplete: no train_state.pt
    assert S.latest_checkpoint(root) == root / "iter_0000015"


def test_prune_keeps_last_n(tmp_path):
    root = tmp_path / "checkpoints"
    for it in range(1, 6):
        S.save_checkpoint(root, S.checkpoint_name(it * 100), _writer("x"), {"iteration": it * 100})
    deleted = S.prune_checkpoints(root, 2)
    assert sorted(p.name for p in deleted) == ["iter_0000100", "iter_0000200", "iter_0000300"]
    assert [i for i, _ in S.list_checkpoints(root)] == [400, 500]
    assert S.prune_checkpoints(root, 0) == []


def test_resolve_resume(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        S.resolve_resume("latest", out)
    assert S.resolve_resume(None, out) is None
    p = S.save_checkpoint(out / "checkpoints", "iter_0000007", _writer("x"), {"iteration": 7})
    assert S.resolve_resume("latest", out) == p
    assert S.resolve_resume("", out) == p
    assert S.resolve_resume(str(p), tmp_path) == p
    assert S.resolve_resume(str(p / S.TRAIN_STATE), tmp_path) == p
    assert S.resolve_resume(str(out), tmp_path) == p  # a run folder: its newest checkpoint
    with pytest.raises(FileNotFoundError, match="not a training checkpoint"):
        S.resolve_resume(str(tmp_path / "nope"), out)


def test_corrupted_train_state_names_the_file(tmp_path):
    p = tmp_path / "iter_0000001"
    p.mkdir()
    (p / S.TRAIN_STATE).write_bytes(b"not a zip")
    with pytest.raises(RuntimeError, match="train_state.pt"):
        S.load_train_state(p)
