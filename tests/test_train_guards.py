"""What `maskformer train` guarantees around a run: your own folder trains with no preset edits, a run is never mixed
with another, a damaged newest checkpoint is skipped, bad values are one-line errors before any work, files follow the
umask."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _data_fixtures import rand_image, save
from train_helpers import tiny_config, tiny_model, write_tiny_synth

from maskformer.cli import main
from maskformer.engine import state as S
from maskformer.engine.loop import Trainer

TINY = [
    "model.backbone=resnet18", "model.conv_dim=32", "model.mask_dim=32", "model.hidden_dim=32", "model.nheads=2",
    "model.dim_feedforward=16", "model.dec_layers=1", "model.num_queries=3", "data.crop_size=32,32",
    "data.min_size_train=32", "data.pad_size=32", "data.num_workers=0", "train.batch_size=2", "train.eval_period=0",
    "train.checkpoint_period=0", "train.max_iter=1",
]  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def mydata(tmp_path_factory) -> Path:
    """A user's folder: images/{train,val}, labels/{train,val} with values 0..3 and 255, classes.txt (4 classes)."""
    root = tmp_path_factory.mktemp("mydata")
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2)):
        for k in range(n):
            save(root / "images" / split / f"{k}.jpg", rand_image(40, 48, k))
            save(root / "labels" / split / f"{k}.png", rng.choice([0, 1, 2, 3, 255], size=(40, 48)).astype(np.uint8))
    (root / "classes.txt").write_text("road\ncar\nsky\ntree\n")
    return root


def _train(*args: str) -> int:
    return main(["train", "--no-progress", "--threads", "1", *args])


def test_own_folder_trains_with_no_preset_and_classes_from_the_data(mydata, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train("--data-root", str(mydata), "--out", str(out), "--opts", *TINY) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"]["num_classes"] == 4 and saved["data"]["format"] == "folder"
    assert (saved["data"]["ignore_label"], saved["data"]["recipe"], saved["inference"]["task"]) == (
        255, "semantic", "semantic")  # fmt: skip
    model_cfg = json.loads((out / "model" / "config.json").read_text())
    assert model_cfg["meta"]["class_names"] == ["road", "car", "sky", "tree"]
    assert "folder dataset" in capsys.readouterr().err


def test_class_count_mismatch_is_an_error_before_the_first_iteration(mydata, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train("--data-root", str(mydata), "--out", str(out), "--opts", *TINY, "model.num_classes=7") == 2
    err = capsys.readouterr().err
    assert "model.num_classes=7 but the training set" in err and "has 4 classes" in err
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()


def test_out_with_a_run_is_refused_without_resume_or_overwrite(mydata, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train("--data-root", str(mydata), "--out", str(out), "--opts", *TINY) == 0
    first = (out / "model" / "model.safetensors").read_bytes()
    assert _train("--data-root", str(mydata), "--out", str(out), "--opts", *TINY, "train.seed=5") == 2
    err = capsys.readouterr().err
    assert "already holds a training run" in err and "--resume" in err and "--overwrite" in err
    assert (out / "model" / "model.safetensors").read_bytes() == first  # untouched
    opts = [*TINY, "train.seed=5", "train.max_iter=2", "train.checkpoint_period=1"]
    assert _train("--data-root", str(mydata), "--out", str(out), "--overwrite", "--opts", *opts) == 0
    assert [i for i, _ in S.list_checkpoints(out / "checkpoints")] == [1, 2]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records] == [2]  # logged at the end only; the old run's record of iteration 1 is gone
    # the Python API refuses too
    cfg = tiny_config(write_tiny_synth(tmp_path / "synth"), "train.max_iter=1")
    with pytest.raises(S.RunExistsError, match="already holds a training run"):
        Trainer(cfg, out, model=tiny_model(cfg), progress=False).run()


@pytest.mark.parametrize("damage", ["weights", "state"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, damage):
    synth = write_tiny_synth(tmp_path / "synth")
    cfg = tiny_config(synth, "train.max_iter=3", "train.checkpoint_period=1", "train.keep_last=0")
    full = Trainer(cfg, tmp_path / "full", model=tiny_model(cfg), progress=False)
    full.run(stop_at=2)
    cut = Trainer(cfg, tmp_path / "cut", model=tiny_model(cfg), progress=False)
    cut.run(stop_at=3)
    newest = tmp_path / "cut/checkpoints/iter_0000003"
    file = newest / ("model.safetensors" if damage == "weights" else S.TRAIN_STATE)
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])  # a truncated write
    resumed = Trainer(cfg, tmp_path / "cut", model=tiny_model(cfg), progress=False)
    with pytest.warns(UserWarning, match=r"iter_0000003 is damaged.*resuming from .*iter_0000002"):
        assert resumed.resume() == tmp_path / "cut/checkpoints/iter_0000002"
    assert resumed.iteration == 2 and (tmp_path / "cut/checkpoints/iter_0000003.damaged").is_dir()
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    resumed.run()
    assert (tmp_path / "cut/checkpoints/iter_0000003/train_state.pt").is_file()


@pytest.mark.parametrize(
    "opt, message",
    [
        ("train.batch_size=0", "train.batch_size must be an integer >= 1, got 0"),
        ("train.max_iter=-5", "train.max_iter must be an integer >= 1, got -5"),
        ("model.num_queries=0", "model.num_queries must be an integer >= 1, got 0"),
        ("data.crop_size=0,64", "data.crop_size must be an integer >= 1, got (0, 64)"),
        ("data.crop_size=64", "data.crop_size must be two integers"),
        ("data.num_workers=-1", "data.num_workers must be an integer >= 0, got -1"),
        ("train.base_lr=-0.1", "train.base_lr must be a number > 0, got -0.1"),
        ("train.base_lr=nan", "train.base_lr must be a number > 0, got nan"),
        ("train.amp=fp8", "train.amp must be one of none, bf16, fp16, auto, got 'fp8'"),
        ("train.batch_size=2.5", "train.batch_size: expected an integer, got '2.5'"),
    ],
)
def test_bad_values_are_one_line_errors_before_any_work(mydata, tmp_path, capsys, opt, message):
    out = tmp_path / "run"
    assert _train("--data-root", str(mydata), "--out", str(out), "--opts", *TINY, opt) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()  # nothing was started


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda(mydata, tmp_path, capsys):
    assert _train("--data-root", str(mydata), "--out", str(tmp_path / "r"), "--device", "cuda", "--opts", *TINY) == 2
    assert "--device cuda: CUDA is not available" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_is_one_line(mydata, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    assert _train("--data-root", str(mydata), "--out", str(ro / "run"), "--opts", *TINY) == 2
    err = capsys.readouterr().err
    assert "not writable" in err and len(err.strip().splitlines()) == 1


def test_unwritable_out_checked_before_work(tmp_path):
    (tmp_path / "file").write_text("x")  # a file where the folder should be: not creatable, even for root
    with pytest.raises(OSError, match="is not writable"):
        S.prepare_out_dir(tmp_path / "file" / "run")


def test_written_files_follow_the_umask(tmp_path):
    from maskformer.checkpoint import atomic_write, save_safetensors
    from maskformer.io import save_json

    old = os.umask(0o027)
    try:
        save_safetensors({"w": torch.zeros(2)}, tmp_path / "m.safetensors")
        atomic_write(tmp_path / "c.json", "{}")
        save_json(tmp_path / "r.json", {"a": 1})
        atomic_write(tmp_path / "latest", "x")  # the checkpoints' `latest` marker
    finally:
        os.umask(old)
    for name in ("m.safetensors", "c.json", "r.json", "latest"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o640, name


def test_models_into_a_closed_pipe_exits_quietly():
    proc = subprocess.Popen([sys.executable, "-m", "maskformer", "models"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    proc.stdout.close()  # like `| head` that has already exited
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and err == ""
