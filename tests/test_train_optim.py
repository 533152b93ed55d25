"""Optimizer groups, gradient clipping and learning-rate schedules against the official rules (reference section 6)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from maskformer.config import TrainConfig, get_preset
from maskformer.engine.optim import (
    build_optimizer,
    build_scheduler,
    clip_grad_norm,
    lr_factor,
    param_groups,
    param_hyperparams,
)


class _Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.relative_position_bias_table = nn.Parameter(torch.zeros(9, 2))
        self.qkv = nn.Linear(4, 12)


class _Toy(nn.Module):
    """Every case of the rules: backbone conv/LN/attention tables, head linear/GN/embedding, a frozen param."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.ModuleDict(
            {"conv": nn.Conv2d(3, 4, 3), "norm": nn.LayerNorm(4), "attn": _Attn(), "bn": nn.BatchNorm2d(4)}
        )
        self.backbone.absolute_pos_embed = nn.Parameter(torch.zeros(1, 4))
        self.head = nn.ModuleDict({"fc": nn.Linear(4, 4), "gn": nn.GroupNorm(2, 4), "query_embed": nn.Embedding(5, 4)})
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def test_param_hyperparams_toy_model_matches_hand_table():
    t = TrainConfig(base_lr=1e-4, weight_decay=0.05, backbone_multiplier=0.1)
    hp = param_hyperparams(_Toy(), t)
    blr = 1e-4 * 0.1
    expected = {
        "backbone.conv.weight": (blr, 0.05),
        "backbone.conv.bias": (blr, 0.05),  # biases keep weight decay
        "backbone.norm.weight": (blr, 0.0),
        "backbone.norm.bias": (blr, 0.0),
        "backbone.attn.relative_position_bias_table": (blr, 0.0),
        "backbone.attn.qkv.weight": (blr, 0.05),
        "backbone.attn.qkv.bias": (blr, 0.05),
        "backbone.bn.weight": (blr, 0.0),
        "backbone.bn.bias": (blr, 0.0),
        "backbone.absolute_pos_embed": (blr, 0.0),
        "head.fc.weight": (1e-4, 0.05),
        "head.fc.bias": (1e-4, 0.05),
        "head.gn.weight": (1e-4, 0.0),
        "head.gn.bias": (1e-4, 0.0),
        "head.query_embed.weight": (1e-4, 0.0),
    }
    assert set(hp) == set(expected)  # the frozen parameters are left out
    for k, v in expected.items():
        assert hp[k] == pytest.approx(v, rel=1e-12), k


def test_groups_merge_equal_hyperparams_and_cover_each_param_once():
    model = _Toy()
    t = TrainConfig(base_lr=2e-4, weight_decay=1e-4, backbone_multiplier=0.1)
    groups = param_groups(model, t)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == sum(p.requires_grad for p in model.parameters())
    assert len({(g["lr"], g["weight_decay"]) for g in groups}) == len(groups) == 4
    hp = param_hyperparams(model, t)
    by_id = {id(p): n for n, p in model.named_parameters()}
    for g in groups:
        for p in g["params"]:
            assert hp[by_id[id(p)]] == (g["lr"], g["weight_decay"])


def test_shared_parameter_counted_once():
    lin = nn.Linear(3, 3)
    model = nn.Sequential(lin, lin)
    assert len(param_hyperparams(model, TrainConfig())) == 2


@pytest.mark.parametrize("preset", ["maskformer_r50_ade20k", "maskformer_swin_t_ade20k"])
def test_groups_on_built_model_follow_reference_rules(preset):
    modeling = pytest.importorskip("maskformer.modeling")
    try:
        model = modeling.build_model(get_preset(preset))
    except ImportError as e:  # backbones not landed yet
        pytest.skip(str(e))
    t = get_preset(preset).train
    hp = param_hyperparams(model, t)
    modules = dict(model.named_modules())
    for name, _ in model.named_parameters():
        mod_name, _, pname = name.rpartition(".")
        mod = modules[mod_name]
        lr = t.base_lr * (t.backbone_multiplier if mod_name.startswith("backbone") else 1.0)
        if isinstance(mod, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d)) or isinstance(mod, nn.Embedding):
            wd = 0.0
        elif pname in ("relative_position_bias_table", "absolute_pos_embed"):
            wd = 0.0
        else:
            wd = t.weight_decay
        assert hp[name] == pytest.approx((lr, wd), rel=1e-12), name
    queries = "sem_seg_head.predictor.query_embed.weight"
    assert hp[queries][1] == 0.0
    opt = build_optimizer(model, t)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.999) and opt.defaults["eps"] == 1e-8
    if preset.startswith("maskformer_swin"):
        assert t.backbone_multiplier == 1.0 and t.weight_decay == 0.01 and t.base_lr == 6e-5
        assert any("relative_position_bias_table" in n and v[1] == 0.0 for n, v in hp.items())
    else:
        assert t.backbone_multiplier == 0.1 and hp["backbone.stem.conv1.weight"][0] == pytest.approx(1e-5)


def test_clip_grad_norm_is_global_l2_against_float64():
    torch.manual_seed(1)
    ps = [nn.Parameter(torch.randn(5, 3)), nn.Parameter(torch.randn(7))]
    for p in ps:
        p.grad = torch.randn_like(p)
    ref = [p.grad.double().clone() for p in ps]
    total = math.sqrt(sum(float((g**2).sum()) for g in ref))
    norm = clip_grad_norm(ps, 0.01)
    assert float(norm) == pytest.approx(total, rel=1e-6)
    for p, g in zip(ps, ref):
        torch.testing.assert_close(p.grad.double(), g * 0.01 / (total + 1e-6), rtol=1e-5, atol=1e-9)
    clipped = math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in ps))
    assert clipped == pytest.approx(0.01, rel=1e-4)


def test_poly_schedule_values():
    t = TrainConfig(max_iter=1000, scheduler="poly", poly_power=0.9)
    assert lr_factor(0, t) == 1.0
    assert lr_factor(500, t) == pytest.approx(0.5**0.9)  # 0.535887...
    assert lr_factor(999, t) == pytest.approx(0.001**0.9)
    assert lr_factor(1000, t) == 0.0


def test_swin_warmup_then_poly():
    t = get_preset("maskformer_swin_t_ade20k").train
    assert (t.warmup_iters, t.warmup_factor, t.max_iter) == (1500, 1e-6, 160000)
    assert lr_factor(0, t) == pytest.approx(1e-6)
    assert lr_factor(750, t) == pytest.approx((0.5 + 0.5e-6) * (1 - 750 / 160000) ** 0.9)
    assert lr_factor(1500, t) == pytest.approx((1 - 1500 / 160000) ** 0.9)


def test_coco_panoptic_multistep():
    t = get_preset("maskformer_r50_6enc_coco_panoptic").train
    assert (t.scheduler, t.steps, t.max_iter, t.warmup_iters, t.warmup_factor) == (
        "multistep",
        (369600,),
        554400,
        10,
        1.0,
    )
    assert lr_factor(0, t) == 1.0 and lr_factor(369599, t) == 1.0
    assert lr_factor(369600, t) == pytest.approx(0.1) and lr_factor(554399, t) == pytest.approx(0.1)
    s = get_preset("maskformer_swin_t_coco_panoptic").train
    assert lr_factor(0, s) == pytest.approx(1e-6) and lr_factor(369600, s) == pytest.approx(0.1)


def test_scheduler_drives_every_group_and_resumes():
    t = TrainConfig(max_iter=20, base_lr=1e-3, backbone_multiplier=0.1, warmup_iters=5, warmup_factor=0.01)
    model = _Toy()
    opt = build_optimizer(model, t)
    sched = build_scheduler(opt, t)
    seen = []
    for _ in range(8):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    for it, lrs in enumerate(seen):
        for lr, g in zip(lrs, opt.param_groups):
            assert lr == pytest.approx(g["initial_lr"] * lr_factor(it, t), rel=1e-12)
    opt2 = build_optimizer(model, t)
    sched2 = build_scheduler(opt2, t)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    assert [g["lr"] for g in opt2.param_groups] == pytest.approx([g["lr"] for g in opt.param_groups])
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt2.param_groups[0]["initial_lr"] * lr_factor(8, t))


def test_bad_scheduler_name_is_clear():
    with pytest.raises(ValueError, match="unknown scheduler 'cosine'"):
        build_scheduler(build_optimizer(_Toy(), TrainConfig()), TrainConfig(scheduler="cosine"))
