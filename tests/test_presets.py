"""Every preset builds with the right output shapes (meta device); paper presets match the paper's parameter counts
and GFLOPs; `maskformer models` / `maskformer info`."""

from __future__ import annotations

import json

import pytest
import torch

from maskformer.cli import main
from maskformer.config import PAPER_NUMBERS, PRESETS, get_preset
from maskformer.modeling import build_model
from maskformer.modeling.flops import model_stats, swin_window_padding_macs


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one thread avoids OpenMP barrier stalls on the shared 2-core machine (several x faster here)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("name", sorted(PAPER_NUMBERS))
def test_paper_params_and_gflops(name):
    """Params round to the paper's millions; GFLOPs (multiply-adds, semantic inference included) within 5%."""
    params_m, gflops = PAPER_NUMBERS[name]
    stats = model_stats(get_preset(name), semantic_inference=gflops is not None, executed=False)
    assert round(stats.params / 1e6) == params_m
    if gflops is not None:
        assert abs(stats.gflops / gflops - 1) < 0.05, f"{stats.gflops:.1f} vs paper {gflops}"


def _family(name: str) -> tuple:
    """Head layout x backbone kind (each backbone's own shapes are tested in test_backbones.py)."""
    m = get_preset(name).model
    kind = "swin" if m.backbone.startswith("swin") else "resnet"
    return (m.arch, kind, m.pixel_decoder, m.enforce_input_proj, m.size_divisibility, m.hidden_dim)


def _families() -> list[str]:
    """One preset per family, the smallest backbone of it (r18 / r50 / swin_t first)."""
    chosen: dict[tuple, str] = {}
    for name in sorted(PRESETS, key=lambda n: (not any(s in n for s in ("r18", "r50_", "swin_t")), n)):
        chosen.setdefault(_family(name), name)
    return sorted(chosen.values())


FAMILIES = _families()


@pytest.mark.parametrize("name", FAMILIES)
def test_preset_family_shapes(name):
    """One preset per distinct network family, on the meta device, input 2x3x70x90 (not a multiple of 32)."""
    cfg = get_preset(name)
    m = cfg.model
    with torch.device("meta"):
        model = build_model(cfg)
    x = torch.empty(2, 3, 70, 90, device="meta")
    h, w = (24, 24) if m.size_divisibility == 32 else (18, 23)  # padded to 96x96, or ceil(70/4) x ceil(90/4)
    for training in (False, True):
        out = model.train(training)(x)
        n_aux = 0 if not training or m.arch == "per_pixel_baseline" else 5
        n_aux = m.dec_layers - 1 if training and m.arch == "mask2former" else n_aux
        assert len(out.get("aux_outputs", [])) == n_aux
        if m.arch in ("maskformer", "mask2former"):
            assert out["pred_logits"].shape == (2, m.num_queries, m.num_classes + 1)
            assert out["pred_masks"].shape == (2, m.num_queries, h, w)
        else:
            assert set(out) - {"aux_outputs"} == {"sem_seg"}
            assert out["sem_seg"].shape == (2, m.num_classes, h, w)


def test_official_head_key_names():
    """Section 8 names for the three head layouts (R50 semantic, R50 + 6 Enc, per-pixel baselines)."""
    with torch.device("meta"):
        sem = build_model(get_preset("maskformer_r50_ade20k")).state_dict()
        enc = build_model(get_preset("maskformer_r50_6enc_coco_panoptic")).state_dict()
        ppb = build_model(get_preset("per_pixel_baseline_r50_ade20k")).state_dict()
        plus = build_model(get_preset("per_pixel_baseline_plus_r50_ade20k")).state_dict()
    p = "sem_seg_head.predictor."
    assert sem[p + "input_proj.weight"].shape == (256, 2048, 1, 1)
    assert sem[p + "transformer.decoder.layers.5.self_attn.in_proj_weight"].shape == (768, 256)
    assert sem[p + "transformer.decoder.layers.0.linear1.weight"].shape == (2048, 256)
    assert sem[p + "class_embed.weight"].shape == (151, 256) and sem[p + "query_embed.weight"].shape == (100, 256)
    assert {k for k in sem if k.startswith(p + "mask_embed")} == {
        f"{p}mask_embed.layers.{i}.{t}" for i in range(3) for t in ("weight", "bias")
    }
    assert not any("transformer.encoder" in k for k in sem) and p + "transformer.decoder.norm.weight" in sem
    d = "sem_seg_head.pixel_decoder."
    assert enc[d + "input_proj.weight"].shape == (256, 2048, 1, 1) and d + "input_proj.bias" in enc
    assert enc[d + "layer_4.weight"].shape == (256, 256, 3, 3)
    assert enc[d + "transformer.encoder.layers.5.self_attn.in_proj_weight"].shape == (768, 256)
    assert not any(k.startswith(p + "input_proj") for k in enc)  # identity: no parameters
    assert ppb[p + "weight"].shape == (150, 256, 1, 1) and ppb[p + "bias"].shape == (150,)
    assert plus[p + "query_embed.weight"].shape == (150, 256) and not any("class_embed" in k for k in plus)
    n_head = len([k for k in sem if k.startswith("sem_seg_head.")])
    fpn = 3 * 3 + 4 * 3 + 2  # adapter_1..3 and layer_1..4 (weight + GN weight/bias), mask_features
    decoder = 6 * (4 + 4 + 2 + 2 + 6) + 2  # per layer: 2 attentions, linear1/2, norm1..3; final norm
    heads = 1 + 2 + 2 + 6  # query_embed, input_proj, class_embed, mask_embed
    assert n_head == fpn + decoder + heads


def test_swin_padding_term_by_hand():
    """Swin-T at 512: stage maps 128/64/32/16, window 7 pads to 133/70/35/21; 4 C^2 per padded token and block."""
    with torch.device("meta"):
        swin = build_model(get_preset("maskformer_swin_t_ade20k")).backbone
    by_hand = sum(
        (p * p - s * s) * 4 * c * c * d
        for s, p, c, d in ((128, 133, 96, 2), (64, 70, 192, 2), (32, 35, 384, 6), (16, 21, 768, 2))
    )
    assert swin_window_padding_macs(swin, (512, 512)) == by_hand


def test_cli_models_and_info(capsys):
    assert main(["models", "--json", "--filter", "maskformer_swin_t_ade20k"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows == [
        dict(
            name="maskformer_swin_t_ade20k",
            arch="maskformer",
            backbone="swin_t",
            pixel_decoder="fpn",
            dataset="ade20k",
            classes=150,
            queries=100,
            crop=[512, 512],
            paper_params_m=42,
            paper_gflops=55,
        )
    ]
    assert main(["models"]) == 0
    table = capsys.readouterr().out
    assert all(name in table for name in PRESETS)
    assert main(["info", "maskformer_r18_synth", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["image_size"] == [128, 128] and info["paper_gflops"] is None and info["params"] > 11e6
    assert main(["info", "no_such_preset"]) == 2
    assert "unknown preset" in capsys.readouterr().out
