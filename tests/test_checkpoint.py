"""Model directories, atomic safetensors I/O and key reports (the format of maskformer.checkpoint)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from ckpt_utils import TINY, build, meta_for, tiny_cfg
from torch import nn

from maskformer.checkpoint import (
    CheckpointError,
    atomic_write,
    load_checked,
    load_safetensors,
    read_model_config,
    save_pretrained,
    save_safetensors,
)
from maskformer.convert import load_model
from maskformer.structures import DatasetMeta


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    cfg = tiny_cfg()
    model, meta = build(cfg), meta_for(cfg)
    path = save_pretrained(model, cfg, meta, tmp_path_factory.mktemp("model") / "dir")
    return model, cfg, meta, path


def test_save_load_round_trip_is_bit_exact(saved):
    model, cfg, meta, path = saved
    assert sorted(os.listdir(path)) == ["config.json", "model.safetensors"]
    loaded, cfg2, meta2 = load_model(path)
    assert cfg2.to_dict() == cfg.to_dict() and meta2 == meta
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.rand(2, 3, 64, 80) * 255
    with torch.no_grad():
        out1, out2 = model(x), loaded(x)
    assert torch.equal(out1["pred_logits"], out2["pred_logits"]) and torch.equal(out1["pred_masks"], out2["pred_masks"])


def test_model_dir_keeps_the_trained_norm_and_takes_overrides(saved):
    """A from-scratch preset trains with BatchNorm (model.backbone_norm=BN): its directory must rebuild BatchNorm, not
    the official FrozenBN, or the saved num_batches_tracked buffers make strict loading fail."""
    model, cfg, meta, path = saved
    assert cfg.model.backbone_norm == "BN"
    loaded, _, _ = load_model(path)
    assert isinstance(loaded.backbone.stem.conv1.norm, nn.BatchNorm2d)
    assert any(k.endswith("num_batches_tracked") for k in loaded.state_dict())
    _, cfg2, _ = load_model(path, overrides=["inference.min_size_test=77"])
    assert cfg2.inference.min_size_test == 77 and cfg2.model == cfg.model
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_model(path, overrides=["model.hidden_dim=48"])


def test_truncated_safetensors_is_a_clear_error(saved, tmp_path):
    _, cfg, meta, path = saved
    blob = (path / "model.safetensors").read_bytes()
    for name, data in [("half", blob[: len(blob) // 2]), ("tiny", blob[:5]), ("empty", b"")]:
        file = tmp_path / f"{name}.safetensors"
        file.write_bytes(data)
        with pytest.raises(CheckpointError, match=f"{name}.safetensors.*not a valid safetensors"):
            load_safetensors(file)


def test_corrupted_tensor_bytes_fail_the_checksum(saved, tmp_path):
    blob = bytearray((saved[3] / "model.safetensors").read_bytes())
    blob[-100] ^= 0xFF  # inside the tensor data: the header still parses
    file = tmp_path / "flipped.safetensors"
    file.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="flipped.safetensors.*SHA-256"):
        load_safetensors(file)
    assert len(load_safetensors(file, verify=False)) > 0


def test_damaged_model_directory_names_the_file(saved, tmp_path):
    _, cfg, meta, path = saved
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes((path / "model.safetensors").read_bytes()[:1000])
    text = (path / "config.json").read_text()
    (bad / "config.json").write_text(text[: len(text) // 2])
    with pytest.raises(CheckpointError, match="config.json.*not valid JSON"):
        read_model_config(bad)
    (bad / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(bad)
    doc = json.loads(text)
    doc["config"]["model"]["no_such_field"] = 1
    (bad / "config.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="config.json.*no_such_field"):
        read_model_config(bad)
    with pytest.raises(CheckpointError, match="neither a model directory nor a preset"):
        load_model(tmp_path / "nowhere")


def test_atomic_write_keeps_the_old_file_when_the_move_fails(tmp_path, monkeypatch):
    target = tmp_path / "f.json"
    atomic_write(target, "old")

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, "new")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["f.json"]


def test_safetensors_round_trip_keeps_dtypes_and_metadata(tmp_path):
    sd = {"a": torch.randn(3, 4), "b": torch.arange(5), "c": torch.randn(2, dtype=torch.float64)}
    save_safetensors(sd, tmp_path / "w.safetensors", metadata={"note": "x"})
    back = load_safetensors(tmp_path / "w.safetensors")
    assert all(torch.equal(sd[k], back[k]) and sd[k].dtype == back[k].dtype for k in sd)


def test_load_checked_reports_keys_by_name_and_refuses_shape_mismatch():
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    sd = {"0.weight": torch.ones(4, 3), "0.bias": torch.zeros(4), "extra.weight": torch.ones(1)}
    report = load_checked(net, sd, source="f.pkl", expected_unexpected=["extra.*"])
    assert report.missing == ["1.weight", "1.bias"] and report.unexpected == []
    assert report.expected_unexpected == ["extra.weight"] and report.loaded == 2
    assert torch.equal(net[0].weight, torch.ones(4, 3))
    assert "1.weight" in str(report)
    with pytest.raises(CheckpointError, match=r"f.pkl.*1\.weight: file \(3, 4\) vs model \(2, 4\)"):
        load_checked(net, {"1.weight": torch.ones(3, 4)}, source="f.pkl")
    with pytest.raises(CheckpointError, match="1.bias"):
        load_checked(net, sd, source="f.pkl", strict=True)


def test_save_pretrained_checks_meta_against_config(tmp_path):
    cfg = tiny_cfg()
    meta = DatasetMeta(name="x", class_names=["a", "b"])
    with pytest.raises(CheckpointError, match="2 classes.*num_classes=5"):
        save_pretrained(nn.Linear(1, 1), cfg, meta, tmp_path / "m")


def test_load_model_from_a_preset_name():
    with pytest.warns(UserWarning, match="RANDOM weights"):
        model, cfg, meta = load_model("maskformer_r18_synth", overrides=TINY)
    assert not model.training and cfg.model.num_queries == 6 and meta.num_classes == 5
