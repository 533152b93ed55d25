"""Bad option values of predict / eval / export: one line naming the option and the allowed range, before any work
(no model loaded, nothing written); CPU threads chosen from the machine's load; random weights said loudly, once."""

from __future__ import annotations

import errno
import os
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from maskformer.cli import main
from maskformer.commands import options


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(np.full((40, 48, 3), 90, dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def no_model_loading(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("a model was loaded despite a bad option")

    monkeypatch.setattr("maskformer.hub.load_model", fail)
    monkeypatch.setattr("maskformer.export.export", fail)


def one_error(capsys, *needles) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize(
    "extra, needles",
    [
        (["--batch-size", "0"], ["--batch-size", ">= 1", "got 0"]),
        (["--min-size", "-5"], ["--min-size", ">= 0"]),
        (["--max-size", "0"], ["--max-size", ">= 1"]),
        (["--threshold", "1.5"], ["--threshold", "[0, 1]", "1.5"]),
        (["--threshold", "nan"], ["--threshold", "[0, 1]"]),
        (["--threads", "0"], ["--threads", ">= 1"]),
        (["--device", "gpu7"], ["--device", "cpu, cuda"]),
    ],
)
def test_predict_bad_values(tmp_path, image, capsys, no_model_loading, extra, needles):
    out = tmp_path / "out"
    assert main(["predict", str(image), "--model", "maskformer_r18_synth", "--out", str(out), *extra]) == 2
    one_error(capsys, *needles)
    assert not out.exists()  # nothing written


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda(tmp_path, image, capsys, no_model_loading):
    for argv in (
        ["predict", str(image), "--model", "m", "--out", str(tmp_path / "o"), "--device", "cuda"],
        ["eval", "--model", "m", "--device", "cuda:1"],
    ):
        assert main(argv) == 2
        one_error(capsys, "--device cuda", "CUDA is not available")


def test_eval_and_export_bad_values(tmp_path, capsys, no_model_loading):
    assert main(["eval", "--model", "m", "--workers", "-1"]) == 2
    one_error(capsys, "--workers", ">= 0")
    assert main(["eval", "--model", "m", "--batch-size", "0"]) == 2
    one_error(capsys, "--batch-size")
    assert main(["export", "--model", "m", "--out", str(tmp_path / "m.onnx"), "--opset", "3"]) == 2
    one_error(capsys, "--opset", ">= 7")
    assert main(["export", "--model", "m", "--out", str(tmp_path / "m.onnx"), "--size", "16", "64"]) == 2
    one_error(capsys, "--size", ">= 32")
    assert main(["export", "--model", "m", "--out", str(tmp_path)]) == 2
    one_error(capsys, "is a folder")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_or_full_output_checked_first(tmp_path, image, capsys, monkeypatch, no_model_loading):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["predict", str(image), "--model", "m", "--out", str(blocker / "sub")]) == 2
    one_error(capsys, "--out", "is a file, not a folder")
    if os.geteuid() != 0:  # root writes anywhere: simulate the read-only file system instead
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        target = ro / "out"
    else:
        real = options.Path.write_bytes

        def read_only(self, data):
            if self.name.startswith(".maskformer-write-test"):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS))
            return real(self, data)

        monkeypatch.setattr(options.Path, "write_bytes", read_only)
        target = tmp_path / "out"
    assert main(["export", "--model", "m", "--out", str(target / "m.onnx")]) == 2  # before loading and tracing
    one_error(capsys, "--out", "cannot write")
    monkeypatch.undo()
    monkeypatch.setattr("maskformer.hub.load_model", lambda *a, **k: pytest.fail("loaded"))
    monkeypatch.setattr(options.shutil, "disk_usage", lambda p: SimpleNamespace(free=1 << 20, total=1 << 30))
    assert main(["predict", str(image), "--model", "m", "--out", str(tmp_path / "o")]) == 2
    one_error(capsys, "--out", "disk is full", "1 MiB free")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "file"]  # no probe left behind, no folder made


def test_default_threads_follow_the_load(monkeypatch, capsys):
    assert 1 <= options.physical_cores() <= (os.cpu_count() or 1)
    monkeypatch.setattr(options, "physical_cores", lambda: 8)
    for load, expected in [(0.0, 8), (2.4, 6), (5.6, 2), (7.9, 1), (40.0, 1)]:
        monkeypatch.setattr(options.os, "getloadavg", lambda load=load: (load, 0.0, 0.0))
        assert options.default_threads()[0] == expected
    before = torch.get_num_threads()
    with options.cpu_threads(3):
        assert torch.get_num_threads() == 3
    with options.cpu_threads(None) as n:
        assert n == 1 == torch.get_num_threads()
    assert torch.get_num_threads() == before  # restored
    err = capsys.readouterr().err
    assert "threads: 3 (--threads)" in err and "threads: 1 (8 physical cores, load 40.0)" in err


def test_warnings_loud_and_once(capsys):
    with options.loud_warnings():
        for _ in range(3):
            warnings.warn("m: a preset name, so the model has RANDOM weights", stacklevel=1)
    err = capsys.readouterr().err
    assert err.count("RANDOM weights") == 1 and "WARNING: m: a preset name" in err
    assert err.splitlines()[0].startswith("!!!!")  # framed


def test_predict_with_a_preset_says_random_weights_once(tmp_path, image, capsys):
    out = tmp_path / "out"
    assert main(["predict", str(image), "--model", "maskformer_r18_synth", "--out", str(out), "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert err.count("RANDOM weights") == 1 and "WARNING:" in err and "threads: 1 (--threads)" in err
    assert (out / "semantic" / "a.png").is_file()
