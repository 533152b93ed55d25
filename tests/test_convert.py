"""Foreign checkpoints: detectron2 .pkl / .pth (old and new names), the safe unpickler, ImageNet weights, transformers
directories, and the `maskformer convert` command."""

from __future__ import annotations

import copy
import os
import pickle
import re

import numpy as np
import pytest
import torch
from ckpt_utils import TINY_HEADS, build, hf_tiny

from maskformer.checkpoint import CheckpointError
from maskformer.config import PRESETS, apply_overrides, get_preset
from maskformer.convert import convert_source, detect_source, load_backbone_weights, load_full_weights
from maskformer.convert.detectron2 import convert_detectron2, infer_backbone_norm, infer_model_fields, infer_preset
from maskformer.convert.safe_pickle import UnsafePickleError, load_weights_pickle
from maskformer.convert.sources import read_state_dict


@pytest.fixture(scope="module")
def r18():
    """A randomized maskformer_r18_synth model (the preset the converter must infer: R18 basic blocks, K=8)."""
    torch.manual_seed(0)
    return build(get_preset("maskformer_r18_synth", TINY_HEADS))


def v1_name(key: str) -> str:
    """Our (v2) name -> the released model-zoo (v1) name: the pixel decoder lives directly under sem_seg_head."""
    return key.replace("sem_seg_head.pixel_decoder.", "sem_seg_head.")


def same_forward(a, b) -> None:
    x = torch.rand(1, 3, 64, 96) * 255
    with torch.no_grad():
        oa, ob = a(x), b(x)
    assert oa.keys() == ob.keys() and all(v.isfinite().all() for v in oa.values() if torch.is_tensor(v))
    assert all(torch.equal(oa[k], ob[k]) for k in oa if torch.is_tensor(oa[k]))


def test_official_pkl_with_v1_names_loads_into_an_identical_forward(r18, tmp_path):
    sd = {v1_name(k): v.numpy().copy() for k, v in r18.state_dict().items()}
    assert any(k.startswith("sem_seg_head.adapter_1.") for k in sd)  # really the old names
    sd["criterion.empty_weight"] = np.ones(9, np.float32)
    path = tmp_path / "model_final_abc123.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": sd, "__author__": "maskformer", "matching_heuristics": False}, f)
    model, cfg, meta, report = convert_detectron2(path)
    notes = report.notes
    assert "preset: maskformer_r18_synth (inferred from the weights)" in notes
    assert report.ok and report.loaded == len(r18.state_dict()) and meta.num_classes == 8
    same_forward(r18, model)


def test_detectron2_pth_with_v2_names_loads_into_an_identical_forward(r18, tmp_path):
    path = tmp_path / "model_0004999.pth"
    trainer = {
        "iteration": 4999,
        "optimizer": {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1e-4}]},
    }
    torch.save({"model": dict(r18.state_dict()), "trainer": trainer, "iteration": 4999}, path)
    model, cfg, _, report = convert_detectron2(path, preset="maskformer_r18_synth")
    assert report.ok and cfg.model.num_queries == 6
    same_forward(r18, model)
    other = build(cfg)  # a different draw (global RNG state moved on)
    assert load_full_weights(other, path).ok
    same_forward(r18, other)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": np.zeros(2)}, "x": _Payload(marker)}, f)
    with pytest.raises(UnsafePickleError, match=r"evil.pkl.*(posix|os|nt)\.system"):
        load_weights_pickle(path)
    with pytest.raises(UnsafePickleError):
        convert_detectron2(path)
    pth = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "x": _Payload(marker)}, pth)
    with pytest.raises(UnsafePickleError, match="evil.pth.*weights_only"):
        load_weights_pickle(pth)
    assert not marker.exists()


def test_plain_pickles_of_tensors_load_through_the_restricted_torch_loader(tmp_path):
    """detectron2's converted Swin .pkl pickles torch tensors with plain pickle (torch.storage._load_from_bytes)."""
    sd = {"a": torch.randn(3, 2), "b": torch.arange(4)}
    path = tmp_path / "swin.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": sd, "__author__": "third_party", "matching_heuristics": True}, f, protocol=2)
    obj = load_weights_pickle(path)
    assert obj["__author__"] == "third_party" and all(torch.equal(obj["model"][k], sd[k]) for k in sd)


def test_truncated_pickle_is_a_clear_error(tmp_path):
    blob = pickle.dumps({"model": {"w": np.zeros(1000, np.float32)}})
    path = tmp_path / "cut.pkl"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="cut.pkl.*truncated or corrupted"):
        load_weights_pickle(path)


# Presets whose architecture the converter must recognise from shapes alone (built on the meta device: no memory).
INFERABLE = [n for n in PRESETS if not re.search(r"^mask2former|_(synth|camvid)$", n)] + ["maskformer_r18_synth",
             "maskformer_r34_camvid", "per_pixel_baseline_plus_r18_camvid", "per_pixel_baseline_r34_synth"]  # fmt: skip


@pytest.mark.parametrize("name", INFERABLE)
def test_architecture_and_preset_are_inferred_from_shapes(name):
    from maskformer.modeling import build_model

    cfg = get_preset(name)
    with torch.device("meta"):
        sd = {v1_name(k): v for k, v in build_model(cfg).state_dict().items()}
    from maskformer.convert.detectron2 import map_detectron2

    fields = infer_model_fields(map_detectron2(sd).tensors)
    assert infer_preset(fields) == name
    for key, value in fields.items():
        assert getattr(cfg.model, key) == value, key


def test_shape_mismatch_names_the_key(r18, tmp_path):
    path = tmp_path / "m.pth"
    torch.save({"model": dict(r18.state_dict())}, path)
    other = build(get_preset("maskformer_r18_synth", [*TINY_HEADS, "model.num_classes=3"]))
    with pytest.raises(CheckpointError, match=r"m.pth.*class_embed.weight: file \(9, 32\) vs model \(4, 32\)"):
        load_full_weights(other, path)


def test_num_classes_reinitialises_only_the_class_head(r18, tmp_path):
    path = tmp_path / "m.pth"
    torch.save({"model": dict(r18.state_dict())}, path)
    model, cfg, _, report = convert_detectron2(path, num_classes=3)
    assert cfg.model.num_classes == 3 and model.sem_seg_head.predictor.class_embed.weight.shape == (4, 32)
    assert report.expected_missing == [
        "sem_seg_head.predictor.class_embed.weight",
        "sem_seg_head.predictor.class_embed.bias",
    ]
    assert not report.missing and not report.unexpected
    assert torch.equal(model.state_dict()["sem_seg_head.predictor.query_embed.weight"],
                       r18.state_dict()["sem_seg_head.predictor.query_embed.weight"])  # fmt: skip


# ------------------------------------------------------------------------------------------------ ImageNet weights
def torchvision_resnet18_keys() -> dict[str, str]:
    """torchvision resnet18 names -> our names, written out from torchvision's layout (BasicBlock conv1/bn1/conv2/bn2,
    downsample.0/1 in block 0 of layers 2-4)."""
    table = {"conv1.weight": "stem.conv1.weight"}
    for p in ("weight", "bias", "running_mean", "running_var"):
        table[f"bn1.{p}"] = f"stem.conv1.norm.{p}"
    for layer in range(1, 5):
        for block in range(2):
            src, dst = f"layer{layer}.{block}.", f"res{layer + 1}.{block}."
            for c in (1, 2):
                table[f"{src}conv{c}.weight"] = f"{dst}conv{c}.weight"
                for p in ("weight", "bias", "running_mean", "running_var"):
                    table[f"{src}bn{c}.{p}"] = f"{dst}conv{c}.norm.{p}"
            if block == 0 and layer > 1:
                table[f"{src}downsample.0.weight"] = f"{dst}shortcut.weight"
                for p in ("weight", "bias", "running_mean", "running_var"):
                    table[f"{src}downsample.1.{p}"] = f"{dst}shortcut.norm.{p}"
    return table


def test_torchvision_resnet_weights_load_into_the_backbone(r18, tmp_path):
    r18 = copy.deepcopy(r18)  # the shared fixture keeps its weights
    own = r18.backbone.state_dict()  # the CPU preset trains BatchNorm: it has num_batches_tracked, FrozenBN not
    counters = sorted(k for k in own if k.endswith("num_batches_tracked"))
    table = torchvision_resnet18_keys()
    assert counters and set(table.values()) == set(own) - set(counters)
    src = {k: torch.randn(own[v].shape).abs() + 0.1 for k, v in table.items()}
    src.update({k.rsplit(".", 1)[0] + ".num_batches_tracked": torch.tensor(7) for k in table if ".running_var" in k})
    src.update({"fc.weight": torch.randn(1000, 512), "fc.bias": torch.randn(1000)})
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(src, path)
    report = load_backbone_weights(r18, path)
    assert report.ok and report.expected_unexpected == ["fc.weight", "fc.bias"] and report.loaded == len(table)
    assert sorted(report.expected_missing) == counters
    now = r18.backbone.state_dict()
    assert all(torch.equal(now[v], src[k]) for k, v in table.items())


def test_detectron2_imagenet_pkl_loads_with_matching_heuristics(r18, tmp_path):
    r18 = copy.deepcopy(r18)
    own = r18.backbone.state_dict()
    src = {k: np.random.rand(*v.shape).astype(np.float32) + 0.1 for k, v in own.items() if v.is_floating_point()}
    src["linear.weight"] = np.zeros((1000, 512), np.float32)
    path = tmp_path / "R-18.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": src, "__author__": "torchvision", "matching_heuristics": True}, f)
    report = load_backbone_weights(r18, path)
    assert report.ok and report.expected_unexpected == ["linear.weight"]
    assert all(np.array_equal(r18.backbone.state_dict()[k].numpy(), src[k]) for k in src if k in own)


def test_caffe2_resnet_names_are_refused(r18, tmp_path):
    path = tmp_path / "R-50-caffe2.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": {"conv1_w": np.zeros((64, 3, 7, 7), np.float32)}, "res2_0_branch2a_w": np.zeros(1)}, f)
    with pytest.raises(ValueError, match="Caffe2"):
        load_backbone_weights(r18, path)


def test_official_swin_pth_reports_the_expected_keys(tmp_path):
    from maskformer.backbones import build_backbone

    swin = build_backbone("swin_t")
    own = swin.state_dict()
    src = {k: torch.randn(v.shape) if v.is_floating_point() else v.clone() for k, v in own.items()}
    for i in range(4):  # the classification checkpoint has no per-stage output norms ...
        del src[f"norm{i}.weight"], src[f"norm{i}.bias"]
    src.update({"norm.weight": torch.ones(768), "norm.bias": torch.zeros(768), "head.weight": torch.zeros(1000, 768),
                "head.bias": torch.zeros(1000), "layers.0.blocks.1.attn_mask": torch.zeros(64, 49, 49)})  # fmt: skip
    path = tmp_path / "swin_tiny_patch4_window7_224.pth"
    torch.save({"model": src}, path)
    report = load_backbone_weights(swin, path)
    assert report.ok and report.loaded == len(own) - 8
    assert sorted(report.expected_missing) == sorted(f"norm{i}.{p}" for i in range(4) for p in ("weight", "bias"))
    assert sorted(report.expected_unexpected) == sorted(
        ["norm.weight", "norm.bias", "head.weight", "head.bias", "layers.0.blocks.1.attn_mask"]
    )
    assert torch.equal(swin.state_dict()["layers.2.blocks.5.attn.qkv.weight"], src["layers.2.blocks.5.attn.qkv.weight"])


def test_convert_cli_writes_a_model_directory(r18, tmp_path, capsys):
    from maskformer.cli import main
    from maskformer.convert import load_model

    pkl = tmp_path / "model_final.pkl"
    with open(pkl, "wb") as f:
        pickle.dump({"model": {v1_name(k): v.numpy() for k, v in r18.state_dict().items()}, "__author__": "x"}, f)
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"thing{i}" for i in range(8)))
    out = tmp_path / "converted"
    assert main(["convert", str(pkl), str(out), "--class-names", str(names)]) == 0
    assert "preset: maskformer_r18_synth" in capsys.readouterr().out
    model, cfg, meta = load_model(out)
    assert meta.class_names[3] == "thing3" and cfg.model.num_classes == 8
    same_forward(r18, model)
    assert main(["convert", str(pkl), str(out)]) == 2  # refuses to overwrite
    evil = tmp_path / "evil.pkl"
    with open(evil, "wb") as f:
        pickle.dump({"model": _Payload(tmp_path / "pwned")}, f)
    assert main(["convert", str(evil), str(tmp_path / "o2")]) == 1
    assert "refusing to load the global" in capsys.readouterr().err and not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("norm", ["FrozenBN", "BN", "GN"])
def test_backbone_norm_is_read_from_the_weights(norm):
    from maskformer.backbones import build_backbone

    sd = {f"backbone.{k}": v for k, v in build_backbone("resnet18", norm=norm).state_dict().items()}
    assert infer_backbone_norm(sd) == norm


@pytest.mark.parametrize(
    "preset,k,first,thing",
    [("maskformer_r50_ade20k", 150, "wall", False), ("maskformer_swin_t_coco_panoptic", 133, "person", True)],
)
def test_converted_official_models_get_their_dataset_class_names(tmp_path, preset, k, first, thing):
    model = build(get_preset("maskformer_r18_synth", [*TINY_HEADS, f"model.num_classes={k}"]))
    path = tmp_path / "model_final.pth"
    torch.save({"model": dict(model.state_dict())}, path)
    _, cfg, meta, report = convert_detectron2(path, preset)
    notes = report.notes
    assert report.ok and cfg.model.num_classes == k == meta.num_classes
    assert meta.class_names[0] == first and meta.is_thing[0] is thing and meta.name == cfg.data.format
    assert any(n.startswith("class names: built-in") for n in notes)


def test_unknown_label_spaces_keep_placeholder_names(r18, tmp_path):
    path = tmp_path / "model_final.pth"
    torch.save({"model": dict(r18.state_dict())}, path)
    _, _, meta, report = convert_detectron2(path)
    notes = report.notes
    assert meta.class_names[:2] == ["class_0", "class_1"]
    assert any("class names: none known for 'synthetic'" in n for n in notes)


# ------------------------------------------------------------------------------------------------ transformers on disk
@pytest.mark.parametrize("kind", ["resnet", "swin"])
@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_transformers_directory_converts_and_matches(kind, weights, tmp_path):
    hf = hf_tiny(kind)
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


def _hf_dir(tmp_path, kind: str, edit=None):
    """A tiny transformers directory; `edit(state_dict)` changes its weights file in place."""
    from safetensors.torch import load_file, save_file

    path = tmp_path / f"hf_{kind}"
    hf_tiny(kind).save_pretrained(path)
    if edit is not None:
        sd = load_file(str(path / "model.safetensors"))
        edit(sd)
        save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


ENC = "model.pixel_level_module.encoder."
QUERY = ENC + "model.encoder.layers.1.blocks.0.attention.self.query.weight"


@pytest.mark.parametrize(
    "edit,named",
    [
        (lambda sd: sd.update({ENC + "model.extra.weight": torch.zeros(2)}), ENC + "model.extra.weight"),
        (lambda sd: sd.pop(QUERY.replace("query", "key")), QUERY),  # an incomplete Swin q/k/v set
        (lambda sd: sd.update({"sem_seg_head.extra": torch.zeros(2)}), "sem_seg_head.extra"),
    ],
    ids=["unknown-backbone-key", "incomplete-qkv", "unknown-head-key"],
)
def test_convert_cli_names_bad_keys_without_a_traceback(tmp_path, capsys, edit, named):
    """Every key problem is the same one-line-per-problem error naming the file and the key by its source name; a
    refused load does not claim to have loaded anything or kept anything at init."""
    from maskformer.cli import main

    src = _hf_dir(tmp_path, "swin", edit)
    capsys.readouterr()  # transformers' own progress output
    assert main(["convert", str(src), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {src}: the weights do not fit the model") and named in err
    assert "Traceback" not in err and "loaded" not in err and "kept at init" not in err
    assert not (tmp_path / "out" / "config.json").exists()
    with pytest.raises(CheckpointError, match=re.escape(named)):
        convert_source(src)


def test_convert_cli_report_lists_dropped_keys_by_source_name(tmp_path, capsys):
    from maskformer.cli import main

    src = _hf_dir(tmp_path, "resnet")
    capsys.readouterr()
    assert main(["convert", str(src), str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    dropped = [line for line in out.splitlines() if "dropped on purpose" in line]
    assert len(dropped) == 1 and "criterion.empty_weight" in dropped[0]
    counters = [k for k in hf_tiny("resnet").state_dict() if k.endswith("num_batches_tracked")]
    assert counters and all(k in dropped[0] for k in counters)  # BatchNorm step counters, as named in the file
    assert f"  {len(counters) + 1} dropped on purpose" in dropped[0]


def test_report_names_unexpected_keys_as_in_the_source_file(r18, tmp_path):
    """A detectron2 v1 name is renamed to v2 (sem_seg_head.x -> sem_seg_head.pixel_decoder.x): an extra key is still
    reported under the name it has in the file."""
    sd = {v1_name(k): v.numpy() for k, v in r18.state_dict().items()}
    sd["sem_seg_head.stray.weight"] = np.zeros(3, np.float32)
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": sd}, f)
    report = load_full_weights(copy.deepcopy(r18), path)
    assert report.unexpected == ["sem_seg_head.stray.weight"] and report.missing == []
    with pytest.raises(CheckpointError, match=r"unexpected: sem_seg_head\.stray\.weight$"):
        convert_source(path)


@pytest.mark.parametrize("kind", ["swin", "resnet"])
def test_custom_backbone_round_trip_through_maskformer_predict(kind, tmp_path):
    """A transformers MaskFormer whose backbone is no named one: `maskformer convert` writes a directory that
    `maskformer predict` loads; its outputs equal transformers' and its labels the in-memory conversion's."""
    from PIL import Image

    from maskformer.cli import main
    from maskformer.convert import load_model
    from maskformer.predict import Predictor

    src, out = _hf_dir(tmp_path, kind), tmp_path / "converted"
    assert detect_source(src) == "transformers"
    assert main(["convert", str(src), str(out)]) == 0
    assert detect_source(out) == "model_dir"
    loaded, cfg, meta = load_model(out)
    depths = [2, 2, 2, 2] if kind == "swin" else [1, 1, 1, 1]
    assert cfg.model.backbone == kind and cfg.model.backbone_args["depths"] == depths
    assert meta.class_names[1] == "label1"
    hf = hf_tiny(kind)
    x = torch.rand(1, 3, 64, 96) * 255
    with torch.no_grad():
        ref = hf(pixel_values=(x - loaded.pixel_mean) / loaded.pixel_std)
        got = loaded(x)
    torch.testing.assert_close(got["pred_logits"], ref.class_queries_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got["pred_masks"], ref.masks_queries_logits, rtol=1e-4, atol=1e-4)
    image = (np.random.default_rng(0).random((64, 96, 3)) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "photo.png")
    sizes = ["inference.min_size_test=64", "inference.max_size_test=96"]
    args = ["predict", str(tmp_path / "photo.png"), "--model", str(out), "--task", "semantic", "--no-overlay"]
    assert main([*args, "--out", str(tmp_path / "pred"), "--opts", *sizes]) == 0
    written = np.array(Image.open(tmp_path / "pred" / "semantic" / "photo.png"))
    model, cfg, meta, _ = convert_source(src)
    expected = Predictor(model, task="semantic", config=apply_overrides(cfg, sizes))(image).semantic.numpy()
    assert written.shape == (64, 96) and np.array_equal(written, expected)
