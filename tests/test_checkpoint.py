"""Model directories, atomic safetensors I/O, key reports, and transformers checkpoints saved on disk."""

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
from maskformer.convert import convert_source, load_model
from maskformer.convert.sources import read_state_dict
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


# ------------------------------------------------------------------------------------------------ transformers on disk
def _hf_tiny(kind: str):
    transformers = pytest.importorskip("transformers")
    from transformers.models.maskformer.configuration_maskformer import MaskFormerDetrConfig

    stages = ["stage1", "stage2", "stage3", "stage4"]
    if kind == "swin":
        bb = transformers.SwinConfig(
            embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=4, mlp_ratio=2.0, out_features=stages
        )
    else:
        bb = transformers.ResNetConfig(
            embedding_size=16, hidden_sizes=[32, 64, 96, 128], depths=[1, 1, 1, 1], layer_type="bottleneck",
            out_features=stages,
        )  # fmt: skip
    dec = MaskFormerDetrConfig(
        d_model=32, decoder_layers=2, decoder_attention_heads=4, decoder_ffn_dim=64, dropout=0.0, num_queries=8
    )
    cfg = transformers.MaskFormerConfig(
        backbone_config=bb, decoder_config=dec, num_labels=4, fpn_feature_size=32, mask_feature_size=32,
        id2label={i: f"label{i}" for i in range(4)},
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.MaskFormerForInstanceSegmentation(cfg).eval()
    with torch.no_grad():  # re-draw what HF initialises to constants, so every tensor matters
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand_like(t) + 0.5)
            elif t.dim() == 1:
                t.copy_(torch.randn_like(t) * 0.1 + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
            elif "queries_embedder" in name:
                t.normal_()
            else:
                nn.init.xavier_uniform_(t.view(t.shape[0], -1))
    return model


@pytest.mark.parametrize("kind", ["resnet", "swin"])
@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_transformers_directory_converts_and_matches(kind, weights, tmp_path):
    hf = _hf_tiny(kind)
    hf.save_pretrained(tmp_path)
    if weights == "pytorch_model.bin":  # the older hub layout: a torch.save'd state dict
        os.remove(tmp_path / "model.safetensors")
        torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    assert read_state_dict(tmp_path)[1]["kind"] == "transformers"
    model, cfg, meta, report = convert_source(tmp_path)
    assert report.ok and meta.class_names == ["label0", "label1", "label2", "label3"]
    x = torch.rand(2, 3, 64, 96) * 255  # multiples of 32: neither side pads differently
    mean, std = torch.tensor(cfg.model.pixel_mean).view(3, 1, 1), torch.tensor(cfg.model.pixel_std).view(3, 1, 1)
    with torch.no_grad():
        ref = hf(pixel_values=(x - mean) / std)
        out = model(x)
    torch.testing.assert_close(out["pred_logits"], ref.class_queries_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["pred_masks"], ref.masks_queries_logits, rtol=1e-4, atol=1e-4)
