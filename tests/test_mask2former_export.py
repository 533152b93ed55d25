"""`maskformer export --check` on a Mask2Former model directory: ONNX and torch.export graphs with dynamic batch,
height and width, each compared with the torch model by the command at three sizes (batch 2 and 1, sizes not
multiples of 32). The library-level onnxruntime == torch test (two sizes, batch 2): test_mask2former.py."""

from __future__ import annotations

import pytest
import torch

from maskformer.checkpoint import generic_meta, save_pretrained
from maskformer.config import get_preset
from maskformer.modeling import build_model

TINY = [
    "model.conv_dim=32", "model.mask_dim=32", "model.hidden_dim=32", "model.dim_feedforward=64",
    "model.enc_dim_feedforward=48", "model.enc_layers=2", "model.dec_layers=4", "model.num_queries=5",
]  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = get_preset("mask2former_r18_synth", TINY)
    path = tmp_path_factory.mktemp("m2f") / "model"
    save_pretrained(build_model(cfg).eval(), cfg, generic_meta(cfg), path)
    return path


# torch.export tracing of the whole network takes minutes on the shared CPUs: marked slow (CI runs the ONNX one)
@pytest.mark.parametrize("fmt", ["onnx", pytest.param("torch-export", marks=pytest.mark.slow)])
def test_export_check_passes_on_a_mask2former_model_dir(model_dir, tmp_path, capsys, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnx")
        pytest.importorskip("onnxruntime")
    from maskformer.cli import main

    out = tmp_path / ("m.onnx" if fmt == "onnx" else "m.pt2")
    rc = main(["export", "--model", str(model_dir), "--format", fmt, "--out", str(out), "--size", "64", "96",
               "--check"])  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0, text
    assert out.is_file() and "check passed" in text
    checks = [line for line in text.splitlines() if line.startswith("check (")]
    assert [c.split(":")[0] for c in checks] == ["check (2, 64, 96)", "check (1, 51, 89)", "check (1, 37, 51)"]
