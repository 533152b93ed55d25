"""The model zoo as a table in code: every official MaskFormer checkpoint, and ImageNet backbone weights by name.

A zoo entry says where the file lives (`source`: an http(s) URL or a Hugging Face hub id `org/name[@revision]`),
which preset supplies what the weights cannot show, which built-in dataset meta (class names, thing/stuff flags,
dataset ids) labels its outputs, and the paper's number for it. Official files are detectron2 pickles at
`https://dl.fbaipublicfiles.com/maskformer/<task-dataset>/<config>/model_final_<id>.pkl` (MODEL_ZOO.md); the 6-hex
`<id>` is a training-job id, not a checksum, so those entries carry no sha256 (none was verified here).

ImageNet backbone weights (`BACKBONE_WEIGHTS`) are the files the official configs start from. torchvision names its
files `<name>-<first 8 hex digits of the file's SHA-256>.pth` (torch.hub's `check_hash` convention, enforced by
torchvision when it downloads them), so those entries are checked against that prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

from maskformer.structures import DatasetMeta

OFFICIAL_BASE = "https://dl.fbaipublicfiles.com/maskformer"


@dataclass(frozen=True)
class ZooEntry:
    """One pretrained model: `name` -> `source` (URL or hub id), converted with `preset`, labelled by `dataset`."""

    name: str
    source: str
    preset: str
    dataset: str  # a built-in meta name (maskformer.data.meta.BUILTIN_META), e.g. "ade20k", "coco_panoptic"
    task: str  # "semantic" | "panoptic"
    metric: str  # the paper's / model zoo's number, e.g. "mIoU 44.5"
    sha256: str | None = None  # known SHA-256 of the file (checked after download)
    size: int | None = None  # known size in bytes (checked after download)

    def meta(self) -> DatasetMeta:
        """The dataset meta of this model's label space (built in)."""
        from maskformer.data.meta import BUILTIN_META

        return BUILTIN_META[self.dataset]()


@dataclass(frozen=True)
class WeightsEntry:
    """ImageNet backbone weights: a file loaded as is by `checkpoint.load_backbone_weights`."""

    name: str
    url: str
    backbone: str  # the backbone (BACKBONES table name) these weights fit
    sha256_prefix: str | None = None


# dataset (built-in meta name) -> (task-dataset folder of the official URLs, task, metric name)
_FOLDERS = {
    "ade20k": ("semantic-ade20k", "semantic", "mIoU"),
    "coco_stuff": ("semantic-coco-stuff-10k", "semantic", "mIoU"),
    "ade20k_full": ("semantic-ade20k-full", "semantic", "mIoU"),
    "cityscapes": ("semantic-cityscapes", "semantic", "mIoU"),
    "mapillary": ("semantic-mapillary-vistas", "semantic", "mIoU"),
    "coco_panoptic": ("panoptic-coco", "panoptic", "PQ"),
    "ade20k_panoptic": ("panoptic-ade20k", "panoptic", "PQ"),
}

# (zoo name, dataset, official config name, file id, single-scale metric) from MODEL_ZOO.md; the preset has the
# zoo name unless _PRESET says otherwise
_OFFICIAL = [
    ("per_pixel_baseline_r50_ade20k", "ade20k", "per_pixel_baseline_R50_bs16_160k", "1043f3", 39.2),
    ("per_pixel_baseline_plus_r50_ade20k", "ade20k", "per_pixel_baseline_plus_R50_bs16_160k", "833630", 41.9),
    ("maskformer_r50_ade20k", "ade20k", "maskformer_R50_bs16_160k", "d8dbeb", 44.5),
    ("maskformer_r101_ade20k", "ade20k", "maskformer_R101_bs16_160k", "1aeb94", 45.5),
    ("maskformer_r101c_ade20k", "ade20k", "maskformer_R101c_bs16_160k", "b432ea", 46.0),
    ("maskformer_swin_t_ade20k", "ade20k", "maskformer_swin_tiny_bs16_160k", "8657a5", 46.7),
    ("maskformer_swin_s_ade20k", "ade20k", "maskformer_swin_small_bs16_160k", "528157", 49.8),
    ("maskformer_swin_b_ade20k", "ade20k", "maskformer_swin_base_IN21k_384_bs16_160k_res640", "45388b", 52.7),
    ("maskformer_swin_l_ade20k", "ade20k", "maskformer_swin_large_IN21k_384_bs16_160k_res640", "aefa3b", 54.1),
    ("per_pixel_baseline_r50_coco_stuff", "coco_stuff", "per_pixel_baseline_R50_bs32_60k", "275ab0", 32.4),
    ("per_pixel_baseline_plus_r50_coco_stuff", "coco_stuff", "per_pixel_baseline_plus_R50_bs32_60k", "1fa920", 34.2),
    ("maskformer_r50_coco_stuff", "coco_stuff", "maskformer_R50_bs32_60k", "cb03eb", 37.1),
    ("maskformer_r101_coco_stuff", "coco_stuff", "maskformer_R101_bs32_60k", "eb19bb", 38.1),
    ("maskformer_r101c_coco_stuff", "coco_stuff", "maskformer_R101c_bs32_60k", "bffd25", 38.0),
    ("per_pixel_baseline_r50_ade20k_full", "ade20k_full", "per_pixel_baseline_R50_bs16_200k", "9f66a9", 12.4),
    ("per_pixel_baseline_plus_r50_ade20k_full", "ade20k_full", "per_pixel_baseline_plus_R50_bs16_200k", "4d31f2", 13.9),
    ("maskformer_r50_ade20k_full", "ade20k_full", "maskformer_R50_bs16_200k", "f4e3f6", 16.0),
    ("maskformer_r101_ade20k_full", "ade20k_full", "maskformer_R101_bs16_200k", "88df33", 16.8),
    ("maskformer_r101c_ade20k_full", "ade20k_full", "maskformer_R101c_bs16_200k", "75d34e", 17.4),
    ("maskformer_r101_cityscapes", "cityscapes", "maskformer_R101_bs16_90k", "38c00c", 78.5),
    ("maskformer_r101c_cityscapes", "cityscapes", "maskformer_R101c_bs16_90k", "4f8ff9", 79.7),
    ("maskformer_r50_mapillary", "mapillary", "maskformer_R50_bs16_300k", "f3fc73", 53.1),
    ("maskformer_r50_coco_panoptic", "coco_panoptic", "maskformer_panoptic_R50_bs64_554k", "6f60dc", 46.5),
    ("maskformer_r101_coco_panoptic", "coco_panoptic", "maskformer_panoptic_R101_bs64_554k", "57b049", 47.6),
    ("maskformer_swin_t_coco_panoptic", "coco_panoptic", "maskformer_panoptic_swin_tiny_bs64_554k", "539394", 47.7),
    ("maskformer_swin_s_coco_panoptic", "coco_panoptic", "maskformer_panoptic_swin_small_bs64_554k", "5bf6b1", 49.7),
    ("maskformer_swin_b_coco_panoptic", "coco_panoptic", "maskformer_panoptic_swin_base_IN21k_384_bs64_554k", "4b7f49", 51.8),  # noqa: E501
    ("maskformer_swin_l_coco_panoptic", "coco_panoptic", "maskformer_panoptic_swin_large_IN21k_384_bs64_554k", "7505c4", 52.7),  # noqa: E501
    ("maskformer_r50_ade20k_panoptic", "ade20k_panoptic", "maskformer_panoptic_R50_bs16_720k", "7aa977", 34.7),
    ("maskformer_r101_ade20k_panoptic", "ade20k_panoptic", "maskformer_panoptic_R101_bs16_720k", "0b3cc8", 35.7),
]
# the "+6 Enc" panoptic models (the only ResNet ones of their datasets)
_PRESET = {
    "maskformer_r50_coco_panoptic": "maskformer_r50_6enc_coco_panoptic",
    "maskformer_r101_coco_panoptic": "maskformer_r101_6enc_coco_panoptic",
    "maskformer_r50_ade20k_panoptic": "maskformer_r50_6enc_ade20k_panoptic",
    "maskformer_r101_ade20k_panoptic": "maskformer_r101_6enc_ade20k_panoptic",
}


def official_url(dataset: str, config_name: str, file_id: str) -> str:
    """The model-zoo URL of an official MaskFormer checkpoint."""
    return f"{OFFICIAL_BASE}/{_FOLDERS[dataset][0]}/{config_name}/model_final_{file_id}.pkl"


def _official_entries() -> dict[str, ZooEntry]:
    table = {}
    for name, dataset, config_name, file_id, value in _OFFICIAL:
        _, task, metric = _FOLDERS[dataset]
        url = official_url(dataset, config_name, file_id)
        table[name] = ZooEntry(name, url, _PRESET.get(name, name), dataset, task, f"{metric} {value}")
    return table


# Mask2Former (facebookresearch/Mask2Former MODEL_ZOO.md): `<base>/mask2former/<dataset>/<task>/<config>/
# model_final_<id>.pkl`; the preset is the zoo name without "_in1k" (Swin-B from ImageNet-1K weights; the plain
# Swin-B/L names are the ImageNet-22K models). Instance models (COCO, ADE20K, Cityscapes) and Cityscapes panoptic
# wait for built-in metas of their label spaces.
_M2F_FOLDERS = {"ade20k": "ade20k/semantic", "ade20k_panoptic": "ade20k/panoptic", "coco_panoptic": "coco/panoptic",
                "cityscapes": "cityscapes/semantic"}  # fmt: skip
_M2F = [
    ("mask2former_r50_ade20k", "ade20k", "maskformer2_R50_bs16_160k", "500878", 47.2),
    ("mask2former_r101_ade20k", "ade20k", "maskformer2_R101_bs16_90k", "0d68be", 47.8),
    ("mask2former_swin_t_ade20k", "ade20k", "maskformer2_swin_tiny_bs16_160k", "5274a6", 47.7),
    ("mask2former_swin_s_ade20k", "ade20k", "maskformer2_swin_small_bs16_160k", "011c6d", 51.3),
    ("mask2former_swin_b_in1k_ade20k", "ade20k", "maskformer2_swin_base_384_bs16_160k_res640", "503e96", 52.4),
    ("mask2former_swin_b_ade20k", "ade20k", "maskformer2_swin_base_IN21k_384_bs16_160k_res640", "7e47bf", 53.9),
    ("mask2former_swin_l_ade20k", "ade20k", "maskformer2_swin_large_IN21k_384_bs16_160k_res640", "6b4a3a", 56.1),
    ("mask2former_r50_ade20k_panoptic", "ade20k_panoptic", "maskformer2_R50_bs16_160k", "5c90d4", 39.7),
    ("mask2former_swin_l_ade20k_panoptic", "ade20k_panoptic", "maskformer2_swin_large_IN21k_384_bs16_160k", "e0c58e", 48.1),  # noqa: E501
    ("mask2former_r50_coco_panoptic", "coco_panoptic", "maskformer2_R50_bs16_50ep", "94dc52", 51.9),
    ("mask2former_r101_coco_panoptic", "coco_panoptic", "maskformer2_R101_bs16_50ep", "b807bd", 52.6),
    ("mask2former_swin_t_coco_panoptic", "coco_panoptic", "maskformer2_swin_tiny_bs16_50ep", "9fd0ae", 53.2),
    ("mask2former_swin_s_coco_panoptic", "coco_panoptic", "maskformer2_swin_small_bs16_50ep", "a407fd", 54.6),
    ("mask2former_swin_b_in1k_coco_panoptic", "coco_panoptic", "maskformer2_swin_base_384_bs16_50ep", "9d7f02", 55.1),
    ("mask2former_swin_b_coco_panoptic", "coco_panoptic", "maskformer2_swin_base_IN21k_384_bs16_50ep", "54b88a", 56.4),
    ("mask2former_swin_l_coco_panoptic", "coco_panoptic", "maskformer2_swin_large_IN21k_384_bs16_100ep", "f07440", 57.8),  # noqa: E501
    ("mask2former_r50_cityscapes", "cityscapes", "maskformer2_R50_bs16_90k", "cc1b1f", 79.4),
    ("mask2former_r101_cityscapes", "cityscapes", "maskformer2_R101_bs16_90k", "257ce8", 80.1),
    ("mask2former_swin_t_cityscapes", "cityscapes", "maskformer2_swin_tiny_bs16_90k", "2d58d4", 82.1),
    ("mask2former_swin_s_cityscapes", "cityscapes", "maskformer2_swin_small_bs16_90k", "fa26ae", 82.6),
    ("mask2former_swin_b_cityscapes", "cityscapes", "maskformer2_swin_base_IN21k_384_bs16_90k", "1c6b65", 83.3),
    ("mask2former_swin_l_cityscapes", "cityscapes", "maskformer2_swin_large_IN21k_384_bs16_90k", "17c1ee", 83.3),
]


def _mask2former_entries() -> dict[str, ZooEntry]:
    table = {}
    for name, dataset, config_name, file_id, value in _M2F:
        _, task, metric = _FOLDERS[dataset]
        url = f"{OFFICIAL_BASE}/mask2former/{_M2F_FOLDERS[dataset]}/{config_name}/model_final_{file_id}.pkl"
        table[name] = ZooEntry(name, url, name.replace("_in1k", ""), dataset, task, f"{metric} {value}")
    return table


# name -> entry
ZOO: dict[str, ZooEntry] = {**_official_entries(), **_mask2former_entries()}

_TV = "https://download.pytorch.org/models"
_SWIN = "https://github.com/SwinTransformer/storage/releases/download/v1.0.0"
_D2 = "https://dl.fbaipublicfiles.com/detectron2"

# name -> ImageNet weights. The official MaskFormer configs use R-50.pkl (R50), R-101 from torchvision's
# resnet101 (R101), R-103.pkl (R101c) and the official Swin files (Swin-B/L: the ImageNet-22K 384 ones).
BACKBONE_WEIGHTS: dict[str, WeightsEntry] = {
    e.name: e
    for e in [
        WeightsEntry("resnet18", f"{_TV}/resnet18-f37072fd.pth", "resnet18", "f37072fd"),
        WeightsEntry("resnet34", f"{_TV}/resnet34-b627a593.pth", "resnet34", "b627a593"),
        WeightsEntry("resnet50", f"{_TV}/resnet50-0676ba61.pth", "resnet50", "0676ba61"),
        WeightsEntry("resnet101", f"{_TV}/resnet101-63fe2227.pth", "resnet101", "63fe2227"),
        WeightsEntry("R-50", f"{_D2}/ImageNetPretrained/torchvision/R-50.pkl", "resnet50"),
        WeightsEntry("R-103", f"{_D2}/DeepLab/R-103.pkl", "resnet101c"),
        WeightsEntry("swin_tiny_patch4_window7_224", f"{_SWIN}/swin_tiny_patch4_window7_224.pth", "swin_t"),
        WeightsEntry("swin_small_patch4_window7_224", f"{_SWIN}/swin_small_patch4_window7_224.pth", "swin_s"),
        WeightsEntry("swin_base_patch4_window12_384", f"{_SWIN}/swin_base_patch4_window12_384.pth", "swin_b"),
        WeightsEntry("swin_base_patch4_window12_384_22k", f"{_SWIN}/swin_base_patch4_window12_384_22k.pth", "swin_b"),
        WeightsEntry("swin_large_patch4_window12_384_22k", f"{_SWIN}/swin_large_patch4_window12_384_22k.pth", "swin_l"),
    ]
}

# backbone (BACKBONES name) -> the weights the official configs start from
OFFICIAL_INIT = {
    "resnet18": "resnet18",
    "resnet34": "resnet34",
    "resnet50": "R-50",
    "resnet101": "resnet101",
    "resnet101c": "R-103",
    "swin_t": "swin_tiny_patch4_window7_224",
    "swin_s": "swin_small_patch4_window7_224",
    "swin_b": "swin_base_patch4_window12_384_22k",
    "swin_l": "swin_large_patch4_window12_384_22k",
}
