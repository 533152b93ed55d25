"""Backbones: contract (keys, channels, strides) for every preset, parameter counts against the architecture formula
and published numbers, parity with transformers' backbones, gradients, FrozenBN folding, Swin details, R101c."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import require_transformers

from maskformer.backbones import BACKBONES, build_backbone, num_parameters
from maskformer.backbones.resnet import ConvNorm, ResNet
from maskformer.backbones.swin import DropPath, SwinBlock, SwinTransformer, WindowAttention, window_layout
from maskformer.convert.hf_backbone import hf_backbone_to_official
from maskformer.layers import FrozenBatchNorm2d

NAMES = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet101c", "swin_t", "swin_s", "swin_b", "swin_l"]
S4 = ["stage1", "stage2", "stage3", "stage4"]
TINY_SWIN = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=4, mlp_ratio=2.0)
TINY_RESNET = dict(depths=(1, 1, 1, 1), stage_channels=(32, 64, 96, 128), bottleneck_channels=(8, 16, 24, 32))


def tiny_swin(**kw) -> SwinTransformer:
    return SwinTransformer(**TINY_SWIN, **kw)


def tiny_resnet(**kw) -> ResNet:
    return ResNet(**TINY_RESNET, stem_channels=16, **kw)


def expected_sizes(h: int, w: int) -> list[tuple[int, int]]:
    """Stride-4..32 map sizes: ceil(/4), then ceil of halves (conv/pool padding arithmetic and Swin padding)."""
    sizes, h, w = [], math.ceil(h / 4), math.ceil(w / 4)
    for _ in range(4):
        sizes.append((h, w))
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return sizes


def randomize_(module: torch.nn.Module) -> None:
    """Re-draw every norm affine, BN statistic, bias and Swin bias table so that each one changes the output."""
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if t.dtype in (torch.int64, torch.long) or name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                t.uniform_(0.5, 2.0)
            elif "bias_table" in name:
                t.normal_(0.0, 0.5)
            elif t.dim() == 1:
                t.normal_(1.0 if name.endswith("weight") else 0.0, 0.2)


# ----------------------------------------------------------------------------------------------- contract
def test_all_names_in_table():
    assert list(BACKBONES) == NAMES


def test_unknown_name_lists_valid_names():
    with pytest.raises(KeyError) as err:
        build_backbone("resnet51")
    assert "resnet51" in str(err.value) and all(n in str(err.value) for n in NAMES)


def test_unknown_keyword_is_clear():
    with pytest.raises(TypeError, match="drop_path_rate"):
        build_backbone("resnet50", drop_path_rate=0.3)


@pytest.mark.parametrize("name", NAMES)
def test_contract_on_odd_input(name):
    small = name == "resnet18"
    device = torch.device("cpu") if small else torch.device("meta")  # big ones: shapes only
    with device:
        model = build_backbone(name).eval()
        x = torch.randn(2, 3, 70, 90)
    out = model(x)
    assert list(out) == ["res2", "res3", "res4", "res5"]
    assert model.strides == {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
    assert model.size_divisibility == 32
    for (key, y), (h, w) in zip(out.items(), expected_sizes(70, 90)):
        assert tuple(y.shape) == (2, model.out_channels[key], h, w), key
        if small:
            assert torch.isfinite(y).all()


def test_bad_input_errors():
    model = tiny_resnet()
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        tiny_swin()(torch.randn(1, 4, 32, 32))
    with pytest.raises(TypeError, match="floating"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


# --------------------------------------------------------------------------------------- parameter counts
def resnet_formula(depths, outs, mids, stem="basic", stem_ch=64) -> int:
    """Conv weights + 2 affine terms per norm channel, from the architecture description alone."""

    def conv(cin, cout, k):
        return cin * cout * k * k + 2 * cout

    if stem == "basic":
        n, cin = conv(3, stem_ch, 7), stem_ch
    else:
        n, cin = (
            conv(3, stem_ch // 2, 3) + conv(stem_ch // 2, stem_ch // 2, 3) + conv(stem_ch // 2, stem_ch, 3),
            stem_ch,
        )
    for depth, cout, mid in zip(depths, outs, mids or [None] * 4):
        for _ in range(depth):
            if mid is None:
                n += conv(cin, cout, 3) + conv(cout, cout, 3)
            else:
                n += conv(cin, mid, 1) + conv(mid, mid, 3) + conv(mid, cout, 1)
            n += conv(cin, cout, 1) if cin != cout else 0  # projection shortcut (block 0 only)
            cin = cout
    return n


def swin_formula(C, depths, heads, window) -> int:
    """Patch embed + blocks + merging + output norms, from the architecture description alone."""
    n = 3 * 16 * C + C + 2 * C
    for i, (depth, h) in enumerate(zip(depths, heads)):
        c = C * 2**i
        block = 4 * c + (3 * c * c + 3 * c) + (c * c + c) + (2 * window - 1) ** 2 * h + (4 * c * c + 4 * c)
        n += depth * (block + 4 * c * c + c) + 2 * c  # fc2 = 4c*c + c; norm_i
        n += (8 * c + 8 * c * c) if i < 3 else 0  # patch merging: LN(4c) + Linear(4c -> 2c, no bias)
    return n


R_BOTTLENECK = dict(outs=(256, 512, 1024, 2048), mids=(64, 128, 256, 512))
FORMULAS = {
    "resnet18": resnet_formula((2, 2, 2, 2), (64, 128, 256, 512), None),
    "resnet34": resnet_formula((3, 4, 6, 3), (64, 128, 256, 512), None),
    "resnet50": resnet_formula((3, 4, 6, 3), **R_BOTTLENECK),
    "resnet101": resnet_formula((3, 4, 23, 3), **R_BOTTLENECK),
    "resnet101c": resnet_formula((3, 4, 23, 3), **R_BOTTLENECK, stem="deeplab", stem_ch=128),
    "swin_t": swin_formula(96, (2, 2, 6, 2), (3, 6, 12, 24), 7),
    "swin_s": swin_formula(96, (2, 2, 18, 2), (3, 6, 12, 24), 7),
    "swin_b": swin_formula(128, (2, 2, 18, 2), (4, 8, 16, 32), 12),
    "swin_l": swin_formula(192, (2, 2, 18, 2), (6, 12, 24, 48), 12),
}
# Published classification counts (torchvision ResNets, Swin-T/S 224, Swin-B/L window-7 224) minus the classifier
# head and final norm, plus norm0..3, plus the larger window-12 bias tables for B/L (360 extra rows per head).
PUBLISHED = {
    "resnet18": 11_689_512 - 513_000,
    "resnet34": 21_797_672 - 513_000,
    "resnet50": 25_557_032 - 2_049_000,  # the 23.5 M trunk
    "resnet101": 44_549_160 - 2_049_000,
    "swin_t": 28_288_354 - 769_000 - 1_536 + 2 * (96 + 192 + 384 + 768),
    "swin_s": 49_606_258 - 769_000 - 1_536 + 2 * (96 + 192 + 384 + 768),
    "swin_b": 87_768_224 - 1_025_000 - 2_048 + 2 * (128 + 256 + 512 + 1024) + 360 * (8 + 16 + 288 + 64),
    "swin_l": 196_532_476 - 1_537_000 - 3_072 + 2 * (192 + 384 + 768 + 1536) + 360 * (12 + 24 + 432 + 96),
}


@pytest.mark.parametrize("name", NAMES)
def test_parameter_counts(name):
    with torch.device("meta"):
        model = build_backbone(name)
    n = num_parameters(model)
    assert n == FORMULAS[name]
    if name in PUBLISHED:
        assert n == PUBLISHED[name]
    assert abs(PUBLISHED["resnet50"] - 23.5e6) < 0.05e6


# ------------------------------------------------------------------------------------- transformers parity
def test_swin_parity_with_transformers():
    require_transformers()
    from transformers.models.maskformer.configuration_maskformer_swin import MaskFormerSwinConfig
    from transformers.models.maskformer.modeling_maskformer_swin import MaskFormerSwinBackbone

    cfg = MaskFormerSwinConfig(**{k: list(v) if isinstance(v, tuple) else v for k, v in TINY_SWIN.items()})
    cfg.out_features = S4
    hf = MaskFormerSwinBackbone(cfg).eval()
    randomize_(hf)
    ours = tiny_swin(drop_path_rate=0.3).eval()
    ours.load_state_dict(hf_backbone_to_official(hf.state_dict(), "swin"), strict=True)
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        expected, got = hf(x).feature_maps, ours(x)
    for (key, y), ref in zip(got.items(), expected):
        assert y.shape == ref.shape, key
        torch.testing.assert_close(y, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("layer_type", ["bottleneck", "basic"])
def test_resnet_parity_with_transformers(layer_type):
    transformers = require_transformers()
    if layer_type == "bottleneck":
        kw = dict(embedding_size=16, hidden_sizes=[32, 64, 96, 128], depths=[1, 1, 1, 1])
        ours = tiny_resnet()
    else:
        kw = dict(embedding_size=16, hidden_sizes=[16, 32, 48, 64], depths=[2, 1, 1, 1])
        ours = ResNet(depths=(2, 1, 1, 1), stage_channels=(16, 32, 48, 64), stem_channels=16)
    hf = transformers.ResNetBackbone(transformers.ResNetConfig(**kw, layer_type=layer_type, out_features=S4)).eval()
    randomize_(hf)
    ours.load_state_dict(hf_backbone_to_official(hf.state_dict(), "resnet"), strict=True)
    ours.eval()
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        expected, got = hf(x).feature_maps, ours(x)
    for (key, y), ref in zip(got.items(), expected):
        torch.testing.assert_close(y, ref, atol=1e-4, rtol=0, msg=key)


def test_hf_mapping_errors():
    with pytest.raises(KeyError, match="unrecognized"):
        hf_backbone_to_official(
            {"embedder.embedder.convolution.weight": torch.zeros(1), "foo.bar": torch.zeros(1)}, "resnet"
        )
    q = "model.encoder.layers.0.blocks.0.attention.self.query.weight"
    with pytest.raises(KeyError, match="key"):
        hf_backbone_to_official({q: torch.zeros(2, 2)}, "swin")
    with pytest.raises(ValueError, match="kind"):
        hf_backbone_to_official({}, "vit")


# ------------------------------------------------------------------------------- training / eval behaviour
@pytest.mark.parametrize("make", [tiny_resnet, tiny_swin], ids=["resnet", "swin"])
def test_gradients_reach_every_parameter(make):
    model = make().train()
    randomize_(model)
    out = model(torch.randn(2, 3, 64, 80))
    sum(y.square().mean() for y in out.values()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    for name, b in model.named_buffers():
        assert not b.requires_grad and b.grad is None, name
    frozen = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(frozen) == (17 if make is tiny_resnet else 0)  # stem + 4 x (3 convs + shortcut)


@pytest.mark.parametrize("make", [tiny_resnet, lambda: tiny_swin(drop_path_rate=0.3)], ids=["resnet", "swin"])
def test_eval_is_deterministic(make):
    model = make().eval()
    x = torch.randn(1, 3, 64, 80)
    a, b = model(x), model(x)
    for key in a:
        assert torch.equal(a[key], b[key])


def test_frozen_bn_folding_is_exact_and_tracks_changes():
    model = tiny_resnet()
    randomize_(model)
    keys = set(model.state_dict())
    assert "stem.conv1.norm.running_var" in keys and "res2.0.shortcut.norm.weight" in keys
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        unfolded = model.train()(x)  # FrozenBN ignores train mode: same function, separate conv + scale/shift
        folded = model.optimize_for_inference()(x)
        for key in unfolded:
            torch.testing.assert_close(folded[key], unfolded[key], atol=1e-5, rtol=1e-5)
        model.res3[0].conv2.norm.running_mean.add_(0.5)  # the cached fold must notice
        model.stem.conv1.weight.mul_(1.5)
        changed_folded = model(x)
        changed_unfolded = model.train()(x)
    assert set(model.state_dict()) == keys
    assert not torch.allclose(changed_folded["res5"], folded["res5"])
    torch.testing.assert_close(changed_folded["res5"], changed_unfolded["res5"], atol=1e-5, rtol=1e-5)


def test_folded_eval_still_gives_weight_gradients():
    model = tiny_resnet().eval()
    model(torch.randn(1, 3, 32, 32))["res5"].sum().backward()
    assert model.stem.conv1.weight.grad is not None and model.res5[0].conv3.weight.grad.abs().sum() > 0


# -------------------------------------------------------------------------------------------- Swin details
def official_shift_mask(Hp, Wp, ws, shift) -> torch.Tensor:
    """The official construction: 3x3 slice regions on the padded map, window partition, -100 across regions."""
    img = torch.zeros(Hp, Wp)
    cnt = 0
    for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            img[hs, wsl] = cnt
            cnt += 1
    win = img.view(Hp // ws, ws, Wp // ws, ws).permute(0, 2, 1, 3).reshape(-1, ws * ws)
    diff = win[:, None, :] - win[:, :, None]
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


@pytest.mark.parametrize("hw", [(16, 20), (2, 3), (7, 7)])
def test_window_layout_matches_pad_roll_partition(hw):
    H, W, ws, shift = *hw, 4, 2
    layout = window_layout(H, W, ws, shift, torch.device("cpu"))
    Hp, Wp = -(-H // ws) * ws, -(-W // ws) * ws
    x = torch.randn(1, H, W, 5)
    ref = F.pad(x, (0, 0, 0, Wp - W, 0, Hp - H)).roll((-shift, -shift), dims=(1, 2))
    ref = ref.view(1, Hp // ws, ws, Wp // ws, ws, 5).permute(0, 1, 3, 2, 4, 5).reshape(1, -1, 5)
    got = x.view(1, H * W, 5).index_select(1, layout.gather)
    if layout.pad_slots is not None:
        got[:, layout.pad_slots] = 0.0
    assert torch.equal(got, ref)
    assert torch.equal(got.index_select(1, layout.scatter), x.view(1, H * W, 5))  # reverse = roll back + crop
    assert torch.equal(layout.shift_mask.squeeze(1), official_shift_mask(Hp, Wp, ws, shift))


def test_layouts_are_cached_per_size(monkeypatch):
    import maskformer.backbones.swin as swin

    calls = []
    original = swin.window_layout
    monkeypatch.setattr(swin, "window_layout", lambda *a: calls.append(a) or original(*a))
    model = tiny_swin().eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 80))
        model(torch.randn(1, 3, 64, 80))
    assert len(calls) == 8  # 4 stages x (regular, shifted), built once for both forwards
    assert {c[2:4] for c in calls} == {(4, 0), (4, 2)}


def test_sdpa_equals_explicit_softmax(monkeypatch):
    model = tiny_swin().eval()
    randomize_(model)
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        fast = model(x)
        monkeypatch.setattr(WindowAttention, "use_sdpa", False)
        slow = model(x)
    for key in fast:
        torch.testing.assert_close(fast[key], slow[key], atol=1e-5, rtol=1e-5)


def test_drop_path_on_both_residual_branches():
    block = SwinBlock(16, num_heads=2, window_size=4, mlp_ratio=2.0, drop_path=1.0 - 1e-7).train()
    layout = window_layout(4, 4, 4, 0, torch.device("cpu"))
    x = torch.randn(3, 16, 16)
    assert torch.equal(block(x, layout), x)  # both branches dropped (transformers drops only the attention one)
    block.eval()
    assert not torch.allclose(block(x, layout), x)


def test_drop_path_statistics():
    torch.manual_seed(0)
    dp = DropPath(0.25).train()
    y = dp(torch.ones(4000, 3))
    kept = y[:, 0] != 0
    assert torch.all(y[kept] == 1 / 0.75) and torch.all(y[~kept] == 0)
    assert abs(kept.float().mean().item() - 0.75) < 0.03
    assert torch.equal(dp.eval()(y), y)


def test_drop_path_rates_are_linear():
    model = build_backbone("swin_t", drop_path_rate=0.3)
    rates = [b.drop_path.p for stage in model.layers for b in stage.blocks]
    torch.testing.assert_close(torch.tensor(rates), torch.linspace(0, 0.3, 12))


def test_swin_names_and_buffers():
    keys = set(tiny_swin().state_dict())
    for key in [
        "patch_embed.proj.weight",
        "patch_embed.norm.bias",
        "layers.0.blocks.1.attn.qkv.weight",
        "layers.0.blocks.1.attn.relative_position_bias_table",
        "layers.0.blocks.1.attn.relative_position_index",
        "layers.0.blocks.1.mlp.fc2.bias",
        "layers.2.downsample.reduction.weight",
        "norm3.weight",
    ]:
        assert key in keys, key
    assert "layers.3.downsample.reduction.weight" not in keys and "norm.weight" not in keys


# ------------------------------------------------------------------------------------------------ R101c
def test_resnet101c_stem_and_dilations():
    with torch.device("meta"):
        model = build_backbone("resnet101c")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["stem.conv1.weight"] == (64, 3, 3, 3)
    assert shapes["stem.conv2.weight"] == (64, 64, 3, 3)
    assert shapes["stem.conv3.weight"] == (128, 64, 3, 3)
    assert shapes["res2.0.conv1.weight"] == (64, 128, 1, 1) and shapes["res2.0.shortcut.weight"] == (256, 128, 1, 1)
    assert model.stem.conv1.stride == (2, 2)
    convs = [block.conv2 for block in model.res5]
    assert [c.dilation[0] for c in convs] == [1, 2, 4] and [c.padding[0] for c in convs] == [1, 2, 4]
    assert [c.stride[0] for c in convs] == [2, 1, 1]
    assert all(b.shortcut is None for b in list(model.res4)[1:]) and len(model.res4) == 23


def test_dilated_res5_matches_reference_conv():
    """A dilated res5 block computes the float64 reference conv (dilation 4, padding 4)."""
    model = ResNet(**TINY_RESNET, stem_channels=16, res5_dilations=(4,)).double().train()
    randomize_(model)
    conv = model.res5[0].conv2
    assert isinstance(conv, ConvNorm) and conv.dilation == (4, 4)
    x = torch.randn(1, conv.in_channels, 9, 11, dtype=torch.float64)
    scale, shift = conv.norm.scale_shift()
    ref = F.relu(
        F.conv2d(x, conv.weight, stride=2, padding=4, dilation=4) * scale[:, None, None] + shift[:, None, None]
    )
    torch.testing.assert_close(conv(x), ref)
    torch.testing.assert_close(conv.eval()(x), ref)


# ------------------------------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("make", [tiny_resnet, tiny_swin], ids=["resnet", "swin"])
def test_bf16_autocast_close_to_fp32(make):
    model = make().eval()
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    for key in ref:
        err = (low[key].float() - ref[key]).abs().max() / ref[key].abs().max()
        assert err < 0.05, key


# ------------------------------------------------------------------------------------------------- export
@pytest.mark.parametrize("make", [tiny_resnet, tiny_swin], ids=["resnet", "swin"])
def test_onnx_export_matches(make, tmp_path):
    pytest.importorskip("onnx", reason="onnx (dev extra) is needed for export")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime (dev extra) runs the exported graph")
    model = make().eval()
    randomize_(model)

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return tuple(self.model(x).values())

    x = torch.randn(1, 3, 64, 80)
    path = tmp_path / "backbone.onnx"
    torch.onnx.export(Wrapped().eval(), (x,), str(path), dynamo=False, opset_version=17)
    session = ort.InferenceSession(str(path))
    outputs = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = model(x)
    for got, ref in zip(outputs, expected.values()):
        torch.testing.assert_close(torch.from_numpy(got), ref, atol=1e-4, rtol=1e-4)


def test_inference_mode_then_training():
    """Caches filled under inference_mode (window layouts, folded weights) must not break a later autograd pass."""
    for model in (tiny_swin(), tiny_resnet()):
        x = torch.randn(1, 3, 64, 80)
        with torch.inference_mode():
            model.eval()(x)
        model.train()(x)["res5"].sum().backward()
        model.eval()(x)["res5"].sum().backward()
