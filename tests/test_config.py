import pytest

from maskformer.config import PRESETS, Config, apply_overrides, get_preset


def test_every_preset_builds_and_round_trips_through_json():
    for name in PRESETS:
        cfg = get_preset(name)
        again = Config.from_dict(cfg.to_dict())
        assert again == cfg, name


def test_overrides_are_typed():
    cfg = apply_overrides(
        get_preset("maskformer_r50_ade20k"),
        ["model.num_queries=50", "data.crop_size=256,320", "loss.deep_supervision=false"],
    )
    assert cfg.model.num_queries == 50
    assert cfg.data.crop_size == (256, 320)
    assert cfg.loss.deep_supervision is False
    assert get_preset("maskformer_r50_ade20k").model.num_queries == 100  # presets are fresh copies


def test_bad_overrides_name_the_problem():
    cfg = get_preset("maskformer_r50_ade20k")
    with pytest.raises(KeyError, match="unknown key 'nqueries'"):
        apply_overrides(cfg, ["model.nqueries=3"])
    with pytest.raises(ValueError, match="model.num_queries"):
        apply_overrides(cfg, ["model.num_queries=many"])
    with pytest.raises(KeyError, match="valid presets"):
        get_preset("maskformer_r9000")


def test_official_recipe_values():
    swin = get_preset("maskformer_swin_b_ade20k")
    assert (swin.train.base_lr, swin.train.weight_decay, swin.train.backbone_multiplier) == (6e-5, 0.01, 1.0)
    assert (swin.train.warmup_iters, swin.train.warmup_factor) == (1500, 1e-6)
    assert swin.data.crop_size == (640, 640) and swin.model.drop_path_rate == 0.3
    r50 = get_preset("maskformer_r50_ade20k")
    assert (
        r50.data.min_size_train[0] == 256 and r50.data.min_size_train[-1] == 1024 and len(r50.data.min_size_train) == 16
    )
    pan = get_preset("maskformer_r50_6enc_coco_panoptic")
    assert pan.model.size_divisibility == 0 and pan.model.pixel_decoder == "transformer_encoder"
    assert pan.train.steps == (369600,) and pan.train.max_iter == 554400 and pan.train.batch_size == 64
    assert get_preset("maskformer_r50_6enc_ade20k_panoptic").inference.object_mask_threshold == 0.7
    assert get_preset("per_pixel_baseline_plus_r50_ade20k").model.num_queries == 150
    assert get_preset("maskformer_swin_l_coco_panoptic").data.max_size_train == 1000


def test_validation_names_the_key_and_range_wherever_a_config_comes_from():
    from maskformer.config import ConfigError

    for name in PRESETS:
        get_preset(name).validate()  # every preset is valid
    doc = get_preset("maskformer_r18_synth").to_dict()
    doc["train"]["amp"] = "fp8"
    with pytest.raises(ConfigError, match="train.amp must be one of none, bf16, fp16, auto, got 'fp8'"):
        Config.from_dict(doc)
    with pytest.raises(ConfigError, match=r"data.pad_size must be -1 \(no padding\) or an integer >= 1, got 0"):
        get_preset("maskformer_r18_synth", ["data.pad_size=0"])
    with pytest.raises(ConfigError, match="model.dropout must be a number in"):
        apply_overrides(get_preset("maskformer_r18_synth"), ["model.dropout=1.5"])
    with pytest.raises(ConfigError, match="not of the form section.key=value"):
        apply_overrides(get_preset("maskformer_r18_synth"), ["train.max_iter"])
    cfg = get_preset("maskformer_r18_synth")
    cfg.train.batch_size = 0  # set directly: validate() (called by the Trainer) still catches it
    with pytest.raises(ConfigError, match="train.batch_size must be an integer >= 1, got 0"):
        cfg.validate()
