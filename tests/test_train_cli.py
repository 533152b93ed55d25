"""`maskformer train` end to end through the CLI (preset, --opts, --out, --resume) and --init-weights."""

from __future__ import annotations

import json

import pytest
import torch
from train_helpers import tiny_config, tiny_model, write_tiny_synth

from maskformer.checkpoint import load_safetensors, save_safetensors
from maskformer.cli import main
from maskformer.engine.loop import Trainer, load_init_weights


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return write_tiny_synth(tmp_path_factory.mktemp("synth"))


SMALL = [
    "model.backbone=resnet18",
    "model.conv_dim=32",
    "model.mask_dim=32",
    "model.hidden_dim=32",
    "model.nheads=2",
    "model.dim_feedforward=32",
    "model.dec_layers=1",
    "model.num_queries=4",
    "data.crop_size=64,64",
    "data.min_size_train=64",
    "data.pad_size=64",
    "data.num_workers=0",
    "train.batch_size=2",
    "train.eval_period=0",
    "train.checkpoint_period=0",
]


def test_cli_train_then_resume_with_saved_config(synth, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--preset", "maskformer_r18_synth", "--data-root", str(synth), "--out", str(out), "--no-progress"]
    assert main([*args, "--threads", "1", "--opts", *SMALL, "train.max_iter=2"]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["train"]["max_iter"] == 2 and saved["model"]["dec_layers"] == 1 and saved["data"]["root"] == str(synth)
    assert (out / "checkpoints" / "iter_0000002" / "model.safetensors").is_file()
    # no --preset: the run's own config.json, with a longer schedule from --opts (a warned config change)
    with pytest.warns(UserWarning, match=r"train.max_iter: 2 -> 3"):
        assert (
            main(
                [
                    "train",
                    "--out",
                    str(out),
                    "--resume",
                    "--no-progress",
                    "--threads",
                    "1",
                    "--opts",
                    "train.max_iter=3",
                ]
            )
            == 0
        )
    text = capsys.readouterr().out
    assert "resumed from" in text and "iter_0000002" in text and "finished 3 iterations" in text
    assert (out / "checkpoints" / "iter_0000003" / "train_state.pt").is_file()


def test_cli_train_bad_input_is_a_clear_message(tmp_path, capsys):
    with pytest.raises(SystemExit, match="--preset NAME is required"):
        main(["train", "--out", str(tmp_path)])
    assert main(["train", "--preset", "maskformer_r7_nowhere", "--out", str(tmp_path)]) == 2
    assert "unknown preset 'maskformer_r7_nowhere'" in capsys.readouterr().err
    assert main(["train", "--preset", "maskformer_r18_synth", "--out", str(tmp_path), "--opts", "train.max_itr=3"]) == 2
    assert "unknown key 'max_itr'" in capsys.readouterr().err
    assert main(["train", "--preset", "maskformer_r18_synth", "--out", str(tmp_path)]) == 2
    assert "data.root is empty" in capsys.readouterr().err


def test_init_weights_full_model_directory(synth, tmp_path):
    cfg = tiny_config(synth, "train.max_iter=1", "train.checkpoint_period=0")
    first = Trainer(cfg, tmp_path / "a", model=tiny_model(cfg), progress=False)
    first.run()
    trained = {k: v.clone() for k, v in first.model.state_dict().items()}
    fresh = tiny_model(tiny_config(synth, "train.seed=7"))
    report = load_init_weights(fresh, str(tmp_path / "a" / "model"))
    assert report.ok and report.loaded == len(trained)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, trained[k]), k


def test_init_weights_backbone_only_file(synth, tmp_path):
    cfg = tiny_config(synth)
    src = tiny_model(tiny_config(synth, "train.seed=3"))
    file = tmp_path / "backbone.safetensors"
    save_safetensors({f"backbone.{k}": v for k, v in src.backbone.state_dict().items()}, file)
    model = tiny_model(cfg)
    head_before = {k: v.clone() for k, v in model.sem_seg_head.state_dict().items()}
    load_init_weights(model, str(file))  # auto: no head keys -> backbone weights
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, src.backbone.state_dict()[k]), k
    for k, v in model.sem_seg_head.state_dict().items():
        assert torch.equal(v, head_before[k]), k
    assert set(load_safetensors(file)) == {f"backbone.{k}" for k in src.backbone.state_dict()}
