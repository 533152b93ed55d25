"""ONNX / torch.export graphs with dynamic batch and size, and the numpy post-processing for ONNX users."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ckpt_utils import build, meta_for, randomize, tiny_cfg

from maskformer import numpy_postprocess as npp
from maskformer.export import check_export, export_onnx, export_torch, output_names

SIZES = [(2, 64, 96), (2, 100, 75), (3, 70, 50)]  # batch 2 twice (sides not multiples of 32), then batch 3


@pytest.fixture(scope="module")
def tiny_model():
    """Tiny heads on a one-block-per-stage bottleneck ResNet: the export cost is the graph size, so keep it small."""
    from maskformer.backbones.resnet import ResNet
    from maskformer.modeling import build_model

    torch.manual_seed(0)
    bb = ResNet(depths=(1, 1, 1, 1), stage_channels=(32, 64, 96, 128), bottleneck_channels=(8, 16, 24, 32),
                stem_channels=16)  # fmt: skip
    return randomize(build_model(tiny_cfg(), backbone=bb)).eval()


def test_onnx_matches_torch_at_two_sizes_and_batch_two(tiny_model, tmp_path):
    pytest.importorskip("onnxruntime")
    tiny_model.sem_seg_head.train()  # a mixed train/eval model: export must leave every module's mode as it was
    modes = [m.training for m in tiny_model.modules()]
    path = export_onnx(tiny_model, tmp_path / "m.onnx")
    results = check_export(tiny_model, path, "onnx", SIZES)
    assert [m.training for m in tiny_model.modules()] == modes
    tiny_model.eval()
    assert [r["size"] for r in results] == SIZES
    for r in results:
        assert r["max_abs_diff"] < 1e-4 and r["max_abs_ref"] > 0.5, r  # real outputs, not all-zero
    import onnx

    graph = onnx.load(str(path)).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"] and [o.name for o in graph.output] == ["pred_logits", "pred_masks"]


@pytest.mark.slow  # torch.export tracing takes 15-45 s on the shared CPUs
def test_torch_export_matches_eager_at_two_sizes(tiny_model, tmp_path):
    path = export_torch(tiny_model, tmp_path / "m.pt2")
    for r in check_export(tiny_model, path, "torch-export", SIZES):
        assert r["max_abs_diff"] < 1e-5, r


def test_swin_onnx_takes_any_batch_and_sizes_of_the_same_padded_size(tmp_path):
    """Swin traces its window layout for the sample's padded size (64 x 96 here): any batch, any H, W padding to it."""
    pytest.importorskip("onnxruntime")
    swin = pytest.importorskip("maskformer.backbones.swin")
    from maskformer.modeling import build_model

    bb = swin.SwinTransformer(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=4, mlp_ratio=2.0)
    model = randomize(build_model(tiny_cfg(), backbone=bb)).eval()
    path = export_onnx(model, tmp_path / "swin.onnx", sample_size=(2, 64, 96))
    for r in check_export(model, path, "onnx", [(2, 64, 96), (3, 50, 90)]):
        assert r["max_abs_diff"] < 1e-4 and r["max_abs_ref"] > 0.5, r


def test_output_names_follow_the_architecture():
    cfg = tiny_cfg()
    cfg.model.arch = "per_pixel_baseline"
    assert output_names(build(cfg)) == ["sem_seg"]


def test_export_cli_with_check(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from maskformer.checkpoint import save_pretrained
    from maskformer.cli import main

    cfg = tiny_cfg()
    save_pretrained(build(cfg), cfg, meta_for(cfg), tmp_path / "model")
    out = tmp_path / "m.onnx"
    assert main(["export", "--model", str(tmp_path / "model"), "--out", str(out), "--size", "64", "96", "--check"]) == 0
    assert out.is_file() and "check passed" in capsys.readouterr().out
    assert main(["export", "--model", str(tmp_path / "missing"), "--out", str(out)]) == 1


# ------------------------------------------------------------------------------------------------ numpy post-processing
@pytest.mark.parametrize("src,dst", [((8, 12), (32, 48)), ((32, 48), (27, 41)), ((5, 7), (5, 9)), ((10, 10), (3, 4))])
def test_numpy_bilinear_equals_torch_interpolate(src, dst):
    x = torch.randn(3, *src, dtype=torch.float64)
    ref = F.interpolate(x[None], size=dst, mode="bilinear", align_corners=False)[0]
    np.testing.assert_allclose(npp.resize_bilinear(x.numpy(), dst), ref.numpy(), atol=1e-5)


def _outputs(q=6, k=4, h=8, w=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "pred_logits": torch.randn(2, q, k + 1, generator=g) * 3,
        "pred_masks": torch.randn(2, q, h, w, generator=g) * 4,
    }


def test_numpy_semantic_equals_the_float64_formula():
    out = _outputs()
    logits, masks = out["pred_logits"][0].double(), out["pred_masks"][0].double()
    image, target = (29, 41), (50, 70)  # padded 32 x 48, then resized
    up = F.interpolate(masks[None], size=(32, 48), mode="bilinear", align_corners=False)[0].sigmoid()
    sem = torch.einsum("qk,qhw->khw", logits.softmax(-1)[:, :-1], up)[:, :29, :41]
    ref = F.interpolate(sem[None], size=target, mode="bilinear", align_corners=False)[0]
    got = npp.semantic_inference(logits.float().numpy(), masks.float().numpy(), image, target)
    np.testing.assert_allclose(got, ref.numpy(), atol=1e-5)


def test_numpy_semantic_equals_maskformer_inference():
    inference = pytest.importorskip("maskformer.inference")
    out = _outputs(seed=1)
    sizes, targets = [(30, 45), (32, 40)], [(60, 90), (17, 23)]
    ref = inference.semantic_inference(out, sizes, targets)
    for i in range(2):
        got = npp.semantic_inference(out["pred_logits"][i].numpy(), out["pred_masks"][i].numpy(), sizes[i], targets[i])
        np.testing.assert_allclose(got, ref[i].numpy(), atol=1e-5)


def _panoptic_case():
    """Q=6, K=3 (class 0 thing, 1 and 2 stuff) on an 8 x 8 low-res grid (32 x 32 padded)."""
    big, low = 10.0, -10.0
    logits = np.full((6, 4), -5.0, np.float32)
    masks = np.full((6, 8, 8), low, np.float32)
    logits[0, 0] = 8  # thing, left half
    masks[0, :, :4] = big
    logits[1, 1] = 8  # stuff class 1, top right
    masks[1, :4, 4:] = big
    logits[2, 1] = 7  # stuff class 1 again, bottom right -> merged into the same segment
    masks[2, 4:, 4:] = big
    logits[3, 3] = 9  # "no object": dropped
    masks[3] = big
    logits[4, 2], logits[4, 3] = 0.5, 0.4  # class 2 with score 0.52: dropped by the threshold
    masks[4, :, :] = big
    logits[5, 0] = 6  # thing overlapping query 0 with a lower score: mostly hidden -> skipped (overlap < 0.8)
    masks[5, :, :5] = big
    return logits, masks


def test_numpy_panoptic_applies_the_official_rules():
    logits, masks = _panoptic_case()
    seg, info = npp.panoptic_inference(logits, masks, (32, 32), [True, False, False])
    assert [(s["id"], s["isthing"], s["category_id"]) for s in info] == [(1, True, 0), (2, False, 1)]
    assert (seg[:, :14] == 1).all() and (seg[:, 22:] == 2).all()  # away from the soft boundaries
    assert set(np.unique(seg)) <= {0, 1, 2}
    none, empty = npp.panoptic_inference(logits[3:4], masks[3:4], (32, 32), [True, False, False])
    assert empty == [] and none.dtype == np.int32 and not none.any()


def _voronoi_case(seed: int, q: int = 12, k: int = 5, h: int = 8, w: int = 12):
    """ "Trained-like" outputs: each low-res pixel claimed by about one query (soft Voronoi cells), confident classes,
    a few queries with low scores or no-object; several queries share a stuff class (merging)."""
    rng = np.random.default_rng(seed)
    centers = rng.uniform(0, 1, (q, 2)) * (h, w)
    yy, xx = np.mgrid[0:h, 0:w]
    d = np.hypot(yy[None] - centers[:, 0, None, None], xx[None] - centers[:, 1, None, None])  # [Q, h, w]
    masks = (3.0 - 10.0 * (d - d.min(0, keepdims=True))).astype(np.float32)
    logits = rng.normal(-2, 0.5, (q, k + 1)).astype(np.float32)
    logits[np.arange(q), rng.integers(0, k, q)] = 6.0
    logits[0, -1], logits[1, :] = 9.0, 0.0  # no-object; uniform (score 1/(k+1)): both dropped
    return logits, masks


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_numpy_panoptic_equals_maskformer_inference(seed):
    inference = pytest.importorskip("maskformer.inference")
    if not hasattr(inference, "panoptic_inference"):
        pytest.skip("maskformer.inference.panoptic_inference is not there yet")
    logits, masks = _voronoi_case(seed)
    is_thing = [True, True, False, False, False]
    out = {"pred_logits": torch.from_numpy(logits)[None], "pred_masks": torch.from_numpy(masks)[None]}
    ref_seg, ref_info = inference.panoptic_inference(out, [(30, 45)], [(52, 70)], thing_ids=[0, 1])[0]
    seg, info = npp.panoptic_inference(logits, masks, (30, 45), is_thing, output_size=(52, 70))
    np.testing.assert_array_equal(seg, np.asarray(ref_seg))
    key = ("id", "isthing", "category_id", "area")
    assert [tuple(s[k] for k in key) for s in info] == [tuple(s[k] for k in key) for s in ref_info]
    assert len(info) >= 4 and [s["score"] for s in info] == pytest.approx([s["score"] for s in ref_info], abs=1e-6)
