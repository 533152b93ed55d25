"""Typed configuration: nested dataclasses, named presets, and "a.b=c" overrides.

A `Config` is resolved once (preset + overrides) and saved inside every checkpoint/model directory, so a model can
always be rebuilt exactly. Only `build_*` functions read it; modules take plain keyword arguments.
Numbers come from the official configs (see the reference notes, sections 3 and 6).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field


def _sizes(size: int, top: float = 2.0) -> tuple[int, ...]:
    """Multi-scale training short sides 0.5, 0.6, ..., top x size (the official lists, e.g. 256, 307, ..., 1024)."""
    return tuple(int(size * s / 10) for s in range(5, round(top * 10) + 1))


@dataclass
class ModelConfig:
    """The network. arch: "maskformer" | "mask2former" | "per_pixel_baseline" | "per_pixel_baseline_plus".

    Mask2Former's dec_layers counts the predictions as the official DEC_LAYERS does: 10 = the raw-query prediction +
    9 masked-attention layers.
    """

    arch: str = "maskformer"
    backbone: str = "resnet50"
    backbone_norm: str = "FrozenBN"  # ResNet norm: "FrozenBN" (official, pretrained weights) | "BN" | "GN" (scratch)
    drop_path_rate: float = 0.0  # Swin stochastic depth (0.3 in every official Swin config)
    # backbone "resnet" | "swin": any size, built from these ResNet / SwinTransformer keywords (converted models)
    backbone_args: dict = field(default_factory=dict)
    pixel_decoder: str = "fpn"  # "fpn" | "transformer_encoder" ("+6 Enc") | "msdeformattn" (Mask2Former)
    num_classes: int = 150
    num_queries: int = 100
    conv_dim: int = 256
    mask_dim: int = 256
    hidden_dim: int = 256
    nheads: int = 8
    dim_feedforward: int = 2048
    dropout: float = 0.1
    dec_layers: int = 6
    enc_layers: int = 6  # only for pixel_decoder="transformer_encoder" / "msdeformattn"
    enc_dim_feedforward: int = 1024  # only for "msdeformattn" (hard-coded 1024 in the official code)
    deform_points: int = 4  # only for "msdeformattn": sampling points per head and level
    enforce_input_proj: bool = False
    size_divisibility: int = 32  # 0: pad only to the largest image (COCO panoptic)
    pixel_mean: tuple[float, float, float] = (123.675, 116.280, 103.530)
    pixel_std: tuple[float, float, float] = (58.395, 57.120, 57.375)


@dataclass
class LossConfig:
    """Matcher and criterion weights (official: class 1, focal 20, dice 1, no-object 0.1, deep supervision)."""

    class_weight: float = 1.0
    mask_weight: float = 20.0
    dice_weight: float = 1.0
    no_object_weight: float = 0.1
    deep_supervision: bool = True
    point_sampling: bool = False  # Mask2Former's point-sampled BCE + dice (its presets turn it on)
    num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75


@dataclass
class InferenceConfig:
    """Post-processing and test-time resizing. task: "semantic" | "panoptic" | "instance".

    fast: post-process with the tiled fast path (maskformer.fast_postprocess; same results up to float rounding at
    near-ties) instead of the plain reference in maskformer.inference.
    """

    task: str = "semantic"
    object_mask_threshold: float = 0.8
    overlap_threshold: float = 0.8
    instance_topk: int = 100
    min_size_test: int = 512
    max_size_test: int = 2048
    tta_scales: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    tta_flip: bool = True
    postprocess_before_inference: bool = False
    fast: bool = True


@dataclass
class DataConfig:
    """Dataset and augmentation. format: a reader name in maskformer.data (e.g. "ade20k", "coco_panoptic", "folder").

    recipe: "semantic" (official semantic mapper), "panoptic" (ADE20K panoptic mapper) or "detr" (COCO panoptic).
    """

    format: str = "ade20k"
    root: str = ""
    train_split: str = "training"
    val_split: str = "validation"
    recipe: str = "semantic"
    crop_size: tuple[int, int] = (512, 512)
    min_size_train: tuple[int, ...] = _sizes(512)
    max_size_train: int = 2048
    single_category_max_area: float = 1.0
    color_aug_ssd: bool = True
    pad_size: int = 512  # pad train images to exactly pad_size x pad_size (-1: no padding)
    ignore_label: int = 255
    reduce_zero_label: str = "auto"  # folder datasets: "auto" (detect, explain if ambiguous) | "true" | "false"
    num_workers: int = 2


@dataclass
class TrainConfig:
    """Optimizer, schedule and loop. scheduler: "poly" | "multistep". amp: "none" | "bf16" | "fp16" | "auto" (bf16 on
    a CPU with native bf16 and on a bf16-capable GPU, fp16 on other GPUs, none otherwise: maskformer.precision)."""

    max_iter: int = 160000
    batch_size: int = 16
    base_lr: float = 1e-4
    weight_decay: float = 1e-4
    weight_decay_norm: float = 0.0
    weight_decay_embed: float = 0.0
    backbone_multiplier: float = 0.1
    clip_grad_norm: float = 0.01
    scheduler: str = "poly"
    poly_power: float = 0.9
    warmup_iters: int = 0
    warmup_factor: float = 1.0
    steps: tuple[int, ...] = ()
    gamma: float = 0.1
    grad_accum: int = 1
    amp: str = "none"
    seed: int = 42
    log_period: int = 20
    checkpoint_period: int = 5000
    eval_period: int = 5000
    keep_last: int = 3


class ConfigError(ValueError):
    """A config value outside its allowed range or of the wrong type; the message names the key and the range."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        """Inverse of to_dict; unknown keys are an error naming them, missing keys take defaults. Validated."""
        return _from_dict(cls, d, "").validate()

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def copy(self) -> Config:
        return copy.deepcopy(self)

    def validate(self) -> Config:
        """Raise ConfigError naming the first value outside its range (see LIMITS); returns self."""
        for key, (allowed, ok) in LIMITS.items():
            section, name = key.split(".")
            value = getattr(getattr(self, section), name)
            values = value if isinstance(value, tuple) else (value,)
            if key == "data.crop_size" and len(values) != 2:
                raise ConfigError(f"data.crop_size must be two integers (height,width) >= 1, got {value!r}")
            if not all(ok(v) for v in values):
                raise ConfigError(f"{key} must be {allowed}, got {value!r}")
        return self


def _at_least(low):
    return lambda v: isinstance(v, (int, float)) and low <= v < math.inf


def _one_of(*choices):
    return f"one of {', '.join(choices)}", lambda v: v in choices


_POSITIVE_INT = ("an integer >= 1", _at_least(1))
_COUNT = ("an integer >= 0", _at_least(0))
_POSITIVE_INT_KEYS = (
    "model.num_classes model.num_queries model.dec_layers model.hidden_dim model.nheads data.crop_size "
    "data.min_size_train data.max_size_train inference.min_size_test inference.max_size_test train.max_iter "
    "train.batch_size train.grad_accum train.log_period"
).split()
# "section.key" -> (the allowed values in words, test of one value); a tuple's elements are tested one by one.
LIMITS = {
    **dict.fromkeys(_POSITIVE_INT_KEYS, _POSITIVE_INT),
    **dict.fromkeys(["model.size_divisibility", "data.ignore_label", "data.num_workers", "train.warmup_iters"], _COUNT),
    "model.dropout": ("a number in [0, 1)", lambda v: 0 <= v < 1),
    "data.pad_size": ("-1 (no padding) or an integer >= 1", lambda v: v == -1 or v >= 1),
    "data.reduce_zero_label": _one_of("auto", "true", "false"),
    "inference.task": _one_of("semantic", "panoptic", "instance"),
    "train.base_lr": ("a number > 0", lambda v: 0 < v < math.inf),
    "train.weight_decay": ("a number >= 0", _at_least(0)),
    "train.clip_grad_norm": ("a number >= 0 (0: no clipping)", _at_least(0)),
    "train.scheduler": _one_of("poly", "multistep"),
    "train.amp": _one_of("none", "bf16", "fp16", "auto"),
    "train.checkpoint_period": ("an integer >= 0 (0: only at the end)", _at_least(0)),
    "train.eval_period": ("an integer >= 0 (0: never)", _at_least(0)),
    "train.keep_last": ("an integer >= 0 (0: keep all)", _at_least(0)),
}


def _from_dict(cls, d: dict, where: str):
    if not isinstance(d, dict):
        raise ConfigError(f"config section {where.rstrip('.') or 'config'} must be a JSON object, got {d!r}")
    hints = typing.get_type_hints(cls)
    unknown = set(d) - set(hints)
    if unknown:
        raise KeyError(f"unknown config keys {sorted(unknown)} in {where or 'config'}")
    kwargs = {}
    for name, value in d.items():
        typ, key = hints[name], f"{where}{name}"
        kwargs[name] = _from_dict(typ, value, key + ".") if dataclasses.is_dataclass(typ) else _coerce(value, typ, key)
    return cls(**kwargs)


_BOOLS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def _coerce(value, typ, key: str):
    """A JSON / command-line value as the field's annotated type (tuples from lists or "a,b", numbers from strings)."""
    try:
        if typ is dict:
            out = json.loads(value) if isinstance(value, str) else dict(value)
            if not isinstance(out, dict):
                raise TypeError
            return out
        if typing.get_origin(typ) is tuple:
            if isinstance(value, str):
                value = [v for v in value.strip("()[] ").split(",") if v.strip()]
            return tuple(_coerce(v, typing.get_args(typ)[0], key) for v in value)
        if typ is bool:
            return _BOOLS[value.lower()] if isinstance(value, str) else bool(value)
        if typ is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        if typ in (int, float):
            return typ(value)
    except (TypeError, ValueError, KeyError, json.JSONDecodeError, OverflowError):
        raise ConfigError(f"{key}: expected {_TYPE_WORDS.get(typ, typ)}, got {value!r}") from None
    return str(value) if value is not None else value


_TYPE_WORDS = {int: "an integer", float: "a number", bool: "a boolean (true/false)", dict: "a JSON object"}


def apply_overrides(cfg: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """A validated copy of `cfg` with "section.key=value" overrides applied, e.g. "model.num_queries=50"."""
    cfg = cfg.copy()
    for item in overrides:
        path, eq, value = item.partition("=")
        section, _, key = path.strip().partition(".")
        if not eq or not key or "." in key:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        obj = getattr(cfg, section, None)
        if not dataclasses.is_dataclass(obj):
            valid = ", ".join(f.name for f in dataclasses.fields(Config))
            raise KeyError(f"override {item!r}: no config section {section!r}; valid: {valid}")
        fields = typing.get_type_hints(type(obj))
        if key not in fields:
            raise KeyError(f"override {item!r}: unknown key {key!r}; valid: {sorted(fields)}")
        setattr(obj, key, _coerce(value, fields[key], path.strip()))
    return cfg.validate()


# ----------------------------------------------------------------------------------------------------------------
# Presets. Each is a function of no arguments returning a fresh Config; PRESETS maps names to them.

SWIN_BACKBONE_TRAIN = dict(
    base_lr=6e-5, weight_decay=0.01, backbone_multiplier=1.0, warmup_iters=1500, warmup_factor=1e-6
)


def _cfg(model: dict, data: dict, train: dict, inference: dict | None = None) -> Config:
    if model.get("arch") == "per_pixel_baseline_plus":  # one query per class
        model = dict(model, num_queries=model["num_classes"])
    sections = dict(model=ModelConfig(**model), data=DataConfig(**data), train=TrainConfig(**train))
    return Config(**sections, inference=InferenceConfig(**(inference or {})))


def _backbone_model(backbone: str) -> dict:
    """Model fields for a backbone short name: r50, r101, r101c, swin_t, swin_s, swin_b, swin_l, r18, r34."""
    names = dict(r18="resnet18", r34="resnet34", r50="resnet50", r101="resnet101", r101c="resnet101c")
    if backbone.startswith("swin"):
        return dict(backbone=backbone, drop_path_rate=0.3)
    return dict(backbone=names[backbone])


DATASETS = {
    # name: (num_classes, data fields, train fields, inference fields)
    "ade20k": (150, dict(format="ade20k"), dict(max_iter=160000), dict(min_size_test=512, max_size_test=2048)),
    "ade20k_640": (
        150,
        dict(format="ade20k", crop_size=(640, 640), min_size_train=_sizes(640), max_size_train=2560, pad_size=640),
        dict(max_iter=160000), dict(min_size_test=640, max_size_test=2560),
    ),
    "coco_stuff": (
        171,
        dict(format="coco_stuff", train_split="train2014", val_split="test2014", crop_size=(640, 640),
             min_size_train=_sizes(640, 1.5), max_size_train=2560, pad_size=640),
        dict(max_iter=60000, batch_size=32), dict(min_size_test=640, max_size_test=2560),
    ),
    "ade20k_full": (
        847, dict(format="ade20k_full", ignore_label=65535), dict(max_iter=200000),
        dict(min_size_test=512, max_size_test=2048),
    ),
    "cityscapes": (
        19,
        dict(format="cityscapes", train_split="train", val_split="val", crop_size=(512, 1024),
             min_size_train=_sizes(1024), max_size_train=4096, pad_size=-1),
        dict(max_iter=90000), dict(min_size_test=1024, max_size_test=2048),
    ),
    "mapillary": (
        65,
        dict(format="mapillary", train_split="training", val_split="validation", crop_size=(1280, 1280),
             min_size_train=_sizes(2048), max_size_train=8192, pad_size=1280, ignore_label=65),
        dict(max_iter=300000), dict(min_size_test=2048, max_size_test=2048),
    ),
    "ade20k_panoptic": (
        150,
        dict(format="ade20k_panoptic", recipe="panoptic", crop_size=(640, 640), min_size_train=_sizes(640),
             max_size_train=2560, pad_size=640),
        dict(max_iter=720000),
        dict(task="panoptic", object_mask_threshold=0.7, min_size_test=640, max_size_test=2560),
    ),
    "coco_panoptic": (
        133,
        dict(format="coco_panoptic", train_split="train2017", val_split="val2017", recipe="detr",
             min_size_train=tuple(range(480, 801, 32)), max_size_train=1333, pad_size=-1, color_aug_ssd=False),
        dict(max_iter=554400, batch_size=64, scheduler="multistep", steps=(369600,), warmup_iters=10),
        dict(task="panoptic", object_mask_threshold=0.8, min_size_test=800, max_size_test=1333),
    ),
}  # fmt: skip


def maskformer_preset(backbone: str, dataset: str, *, six_enc: bool = False, arch: str = "maskformer") -> Config:
    """The official config for (backbone, dataset), e.g. ("r50", "ade20k")."""
    k, data, train, inference = DATASETS[dataset]
    model = dict(arch=arch, num_classes=k, **_backbone_model(backbone))
    train = {**(SWIN_BACKBONE_TRAIN if backbone.startswith("swin") else {}), **train}
    if dataset == "coco_panoptic":
        model["size_divisibility"] = 0
        if backbone.startswith("swin"):
            model["enforce_input_proj"] = True
            train.update(warmup_iters=1500, warmup_factor=1e-6)
        if backbone == "swin_l":
            data = dict(data, max_size_train=1000)
    if six_enc:
        model["pixel_decoder"] = "transformer_encoder"
    return _cfg(model, data, train, inference)


def cpu_preset(backbone: str, dataset: str, arch: str = "maskformer") -> Config:
    """Small CPU presets: ResNet-18/34, narrower heads, small crops. For the demo, CamVid and experiments.

    Trained from scratch (no ImageNet weights here), so the ResNet uses trainable BatchNorm: with the official
    FrozenBN (identity statistics) the synthetic demo reached 0.20 mIoU / 0.0 PQ after 100 iterations, with BN
    0.87 / 0.78. The synthetic preset trains on panoptic targets (one mask per thing instance), so one model gives
    both the semantic and the panoptic numbers of `maskformer demo`.
    """
    width = dict(conv_dim=128, mask_dim=128, hidden_dim=128, nheads=4, dim_feedforward=512, dropout=0.0)
    width["backbone_norm"] = "BN"
    common_train = dict(batch_size=8, base_lr=4e-4, backbone_multiplier=1.0, log_period=10)
    if dataset == "synth":
        model = dict(arch=arch, num_classes=8, num_queries=20, **width, **_backbone_model(backbone))
        data = dict(
            format="synthetic", train_split="train", val_split="val", recipe="panoptic", color_aug_ssd=False,
            crop_size=(128, 128), min_size_train=(96, 112, 128, 144, 160), max_size_train=320, pad_size=128,
            num_workers=1,
        )  # fmt: skip
        train = dict(common_train, max_iter=200, weight_decay=1e-4, checkpoint_period=100, eval_period=50)
        inference = dict(min_size_test=128, max_size_test=512, object_mask_threshold=0.6)
    elif dataset == "camvid":
        model = dict(arch=arch, num_classes=11, num_queries=50, **width, **_backbone_model(backbone))
        # the recipe screened on CamVid's held-out drive 0006R0 (benchmarks/RESULTS.md "CamVid on an unseen drive"):
        # official scale jitter (short side 0.5-2.0x the test size 270, in 16 steps; long side <= 1440), the official
        # category-area crop rule, bf16 autocast where the CPU has native bf16 (1.4x the iterations in a budget)
        data = dict(
            format="camvid", train_split="train", val_split="val", crop_size=(180, 240), ignore_label=11,
            min_size_train=tuple(270 * x // 10 for x in range(5, 21)), max_size_train=1440, pad_size=-1,
            single_category_max_area=0.75,
        )  # fmt: skip
        train = dict(common_train, max_iter=4000, checkpoint_period=500, eval_period=500, amp="auto")
        inference = dict(min_size_test=270, max_size_test=640)  # predict at 0.75x, scored at the native 360x480
    else:
        raise KeyError(f"no CPU preset for dataset {dataset!r}")
    return _cfg(model, data, train, inference)


# Mask2Former (mask2former.md sections 1, 7, 8); COCO trains with large-scale jitter (data.recipes.lsj_recipe).
M2F_MODEL = dict(arch="mask2former", pixel_decoder="msdeformattn", dropout=0.0, dec_layers=10, size_divisibility=32)
M2F_LOSS = dict(class_weight=2.0, mask_weight=5.0, dice_weight=5.0, no_object_weight=0.1, point_sampling=True)
M2F_TRAIN = dict(base_lr=1e-4, weight_decay=0.05, backbone_multiplier=0.1, warmup_iters=0, amp="fp16")
M2F_COCO_DATA = dict(recipe="lsj", crop_size=(1024, 1024), min_size_train=(1024,), max_size_train=1024, pad_size=1024)
M2F_COCO_TRAIN = dict(max_iter=368750, scheduler="multistep", steps=(327778, 355092), warmup_iters=10, batch_size=16)
M2F_COCO_TRAIN_100EP = dict(M2F_COCO_TRAIN, max_iter=737500, steps=(655556, 710184))
M2F_DATASETS = {
    # name: (num_classes, base dataset in DATASETS, data, train, inference overrides)
    "ade20k": (150, "ade20k", {}, {}, {}),
    "ade20k_640": (150, "ade20k_640", {}, {}, {}),
    "ade20k_panoptic": (150, "ade20k_panoptic", {}, dict(max_iter=160000), dict(object_mask_threshold=0.8)),
    "coco_panoptic": (133, "coco_panoptic", dict(M2F_COCO_DATA, color_aug_ssd=False), M2F_COCO_TRAIN, {}),
    "coco_instance": (
        80,
        "coco_panoptic",
        dict(M2F_COCO_DATA, format="coco_instance", color_aug_ssd=False),
        M2F_COCO_TRAIN,
        dict(task="instance"),
    ),
    "cityscapes": (19, "cityscapes", {}, {}, {}),
    "cityscapes_panoptic": (
        19,
        "cityscapes",
        dict(format="cityscapes_panoptic", recipe="panoptic"),
        {},
        dict(task="panoptic", object_mask_threshold=0.8),
    ),
    "cityscapes_instance": (
        8,
        "cityscapes",
        dict(format="cityscapes_instance", recipe="panoptic"),
        {},
        dict(task="instance"),
    ),
}


def mask2former_preset(backbone: str, dataset: str) -> Config:
    """The official Mask2Former config for (backbone, dataset), e.g. ("r50", "ade20k"), ("swin_l", "coco_panoptic")."""
    k, base, data_kw, train_kw, inference_kw = M2F_DATASETS[dataset]
    _, data, train, inference = DATASETS[base]
    model = dict(M2F_MODEL, num_classes=k, **_backbone_model(backbone))
    if backbone == "swin_l" and dataset not in ("ade20k", "ade20k_640", "cityscapes"):
        model["num_queries"] = 200
    if backbone.startswith("r") and (dataset.startswith("cityscapes") or (dataset, backbone) == ("ade20k", "r101")):
        model["backbone_norm"] = "SyncBN"
    train = dict(train, batch_size=16, **M2F_TRAIN)
    train.update(M2F_COCO_TRAIN_100EP if dataset.startswith("coco") and backbone == "swin_l" else train_kw)
    if dataset not in ("ade20k", "ade20k_640", "cityscapes"):  # panoptic/instance: crop + resize before inference
        inference_kw = dict(inference_kw, postprocess_before_inference=True)
    data = dict(data, ignore_label=data.get("ignore_label", 255), **data_kw)
    cfg = _cfg(model, data, train, dict(inference, **inference_kw))
    cfg.loss = LossConfig(**M2F_LOSS)
    return cfg


def _mask2former_presets() -> dict[str, typing.Callable[[], Config]]:
    """The official model zoo (mask2former.md section 8) plus CPU presets (ResNet-18/34, synthetic / CamVid)."""
    zoo = {
        "ade20k": ("r50", "r101", "swin_t", "swin_s"),
        "ade20k_640": ("swin_b", "swin_l"),
        "ade20k_panoptic": ("r50", "swin_l"),
        "coco_panoptic": ("r50", "r101", "swin_t", "swin_s", "swin_b", "swin_l"),
        "coco_instance": ("r50", "r101", "swin_t", "swin_s", "swin_b", "swin_l"),
        "cityscapes": ("r50", "r101", "swin_t", "swin_s", "swin_b", "swin_l"),
        "cityscapes_panoptic": ("r50", "r101", "swin_t", "swin_s", "swin_b", "swin_l"),
        "cityscapes_instance": ("r50", "r101", "swin_t", "swin_s", "swin_b", "swin_l"),
    }
    p: dict[str, typing.Callable[[], Config]] = {}
    for ds, backbones in zoo.items():
        name_ds = "ade20k" if ds == "ade20k_640" else ds
        for bb in backbones:
            p[f"mask2former_{bb}_{name_ds}"] = lambda bb=bb, ds=ds: mask2former_preset(bb, ds)
    for bb in ("r18", "r34"):
        for ds in ("synth", "camvid"):
            p[f"mask2former_{bb}_{ds}"] = lambda bb=bb, ds=ds: mask2former_cpu_preset(bb, ds)
    return p


def mask2former_cpu_preset(backbone: str, dataset: str) -> Config:
    """The MaskFormer CPU preset's data, schedule and widths with the Mask2Former network and loss: 3 encoder layers,
    6 predictions (5 masked-attention layers), 1024 sampled points (the crops are 128 / 180 x 240 pixels)."""
    cfg = cpu_preset(backbone, dataset)
    m = cfg.model
    m.arch, m.pixel_decoder = "mask2former", "msdeformattn"
    m.dec_layers, m.enc_layers, m.enc_dim_feedforward = 6, 3, 256
    cfg.loss = LossConfig(**M2F_LOSS, num_points=1024)
    cfg.train.weight_decay = 0.05
    return cfg


def _paper_presets() -> dict[str, typing.Callable[[], Config]]:
    p: dict[str, typing.Callable[[], Config]] = {}
    for bb in ("r50", "r101", "r101c", "swin_t", "swin_s", "swin_b", "swin_l"):
        ds = "ade20k_640" if bb in ("swin_b", "swin_l") else "ade20k"  # the large Swins train on 640 x 640 crops
        p[f"maskformer_{bb}_ade20k"] = lambda bb=bb, ds=ds: maskformer_preset(bb, ds)
    pairs = [(bb, ds) for ds in ("coco_stuff", "ade20k_full") for bb in ("r50", "r101", "r101c")]
    for bb, ds in [*pairs, ("r101", "cityscapes"), ("r101c", "cityscapes"), ("r50", "mapillary")]:
        p[f"maskformer_{bb}_{ds}"] = lambda bb=bb, ds=ds: maskformer_preset(bb, ds)
    for bb in ("r50", "r101"):
        for ds in ("coco_panoptic", "ade20k_panoptic"):
            p[f"maskformer_{bb}_6enc_{ds}"] = lambda bb=bb, ds=ds: maskformer_preset(bb, ds, six_enc=True)
    for bb in ("swin_t", "swin_s", "swin_b", "swin_l"):
        p[f"maskformer_{bb}_coco_panoptic"] = lambda bb=bb: maskformer_preset(bb, "coco_panoptic")
    for arch in ("per_pixel_baseline", "per_pixel_baseline_plus"):
        for ds in ("ade20k", "coco_stuff", "ade20k_full"):
            p[f"{arch}_r50_{ds}"] = lambda arch=arch, ds=ds: maskformer_preset("r50", ds, arch=arch)
        p[f"{arch}_r101_cityscapes"] = lambda arch=arch: maskformer_preset("r101", "cityscapes", arch=arch)
    for arch in ("maskformer", "per_pixel_baseline", "per_pixel_baseline_plus"):
        for bb in ("r18", "r34"):
            for ds in ("synth", "camvid"):
                p[f"{arch}_{bb}_{ds}"] = lambda arch=arch, bb=bb, ds=ds: cpu_preset(bb, ds, arch=arch)
    p.update(_mask2former_presets())
    return p


PRESETS: dict[str, typing.Callable[[], Config]] = _paper_presets()

# Models of the paper's tables (used by the parameter/GFLOP tests and `maskformer models`).
PAPER_NUMBERS = {
    # name: (params M, GFLOPs at crop size or None)
    "maskformer_r50_ade20k": (41, 53),
    "maskformer_r101_ade20k": (60, 73),
    "maskformer_r101c_ade20k": (60, 80),
    "maskformer_swin_t_ade20k": (42, 55),
    "maskformer_swin_s_ade20k": (63, 79),
    "maskformer_swin_b_ade20k": (102, 195),
    "maskformer_swin_l_ade20k": (212, 375),
    "maskformer_r50_6enc_coco_panoptic": (45, None),
    "maskformer_r101_6enc_coco_panoptic": (64, None),
    # Mask2Former (paper Tables I-III; COCO GFLOPs are averaged over val images at 800 x 1333, so not checked here)
    "mask2former_r50_ade20k": (44, 71),
    "mask2former_r101_ade20k": (63, 90),
    "mask2former_swin_t_ade20k": (47, 74),
    "mask2former_swin_s_ade20k": (69, 98),
    "mask2former_swin_b_ade20k": (107, 223),
    "mask2former_swin_l_ade20k": (215, 403),
    "mask2former_r50_coco_panoptic": (44, None),
    "mask2former_r101_coco_panoptic": (63, None),
    "mask2former_swin_t_coco_panoptic": (47, None),
    "mask2former_swin_s_coco_panoptic": (69, None),
    "mask2former_swin_b_coco_panoptic": (107, None),
    "mask2former_swin_l_coco_panoptic": (216, None),
    "mask2former_r50_coco_instance": (44, None),
    "mask2former_r101_coco_instance": (63, None),
    "mask2former_swin_t_coco_instance": (47, None),
    "mask2former_swin_s_coco_instance": (69, None),
    "mask2former_swin_b_coco_instance": (107, None),
    "mask2former_swin_l_coco_instance": (216, None),
}


def get_preset(name: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """A fresh Config for preset `name` with overrides applied; an unknown name lists the valid ones."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; valid presets: {', '.join(sorted(PRESETS))}")
    return apply_overrides(PRESETS[name](), overrides)
