"""The recipe switches of the CamVid benchmark (issue 19) and the on/off ablation table.

Each switch is a pair of config-override lists applied on top of the `maskformer_r18_camvid` preset (and of the
run's common `--opts`): "on" is the change named, "off" the alternative; `preset` says which side the preset is
today. `benchmarks/camvid.py --ablation NAME` trains both sides at the same budget, protocol and seeds and adds one
line to the table (`write_table`). Test short side: 270 (cfg.inference.min_size_test), native frames 360x480.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

# the official semantic recipe's scale jitter: short side 0.5..2.0 x the test short side in 16 steps (ADE20K:
# 256..1024 for 512, Cityscapes 512..2048 for 1024), long side capped at 4x it (ADE20K: 2048 for 512)
OFFICIAL_SIZES = ",".join(str(int(270 * x / 10)) for x in range(5, 21))


@dataclass(frozen=True)
class Switch:
    what: str
    on: tuple[str, ...]
    off: tuple[str, ...]
    preset: str  # "on" | "off": the side the camvid preset uses today


SWITCHES = {
    "scale_jitter": Switch(
        "short side 0.5-2.0x the test size (135..540, official) vs 0.4-0.8x native (144..288)",
        (f"data.min_size_train={OFFICIAL_SIZES}", "data.max_size_train=1440"),
        ("data.min_size_train=144,180,216,252,288", "data.max_size_train=640"), "on"),
    "crop": Switch("crops of the test size 270x360 (official: crop = test size) vs 180x240",
                   ("data.crop_size=270,360",), (), "off"),
    "photometric": Switch("SSD colour augmentation (brightness, contrast, saturation, hue) on vs off", (),
                          ("data.color_aug_ssd=false",), "on"),
    "class_aware_crop": Switch(
        "category-area crop rule: retry (10x) until no class covers >= 75% of the crop vs plain random crop",
        ("data.single_category_max_area=0.75",), ("data.single_category_max_area=1.0",), "on"),
    "lr": Switch("AdamW lr 1e-4 (official) vs 4e-4", ("train.base_lr=0.0001",), (), "off"),
    "warmup": Switch("linear warm-up over 100 iterations from 0.01x vs none", ("train.warmup_iters=100",
                     "train.warmup_factor=0.01"), (), "off"),
    "batch": Switch("batch 4 (about twice the iterations in the budget) vs 8", ("train.batch_size=4",), (), "off"),
    "width": Switch("heads 256 wide (official; FFN 1024, 8 heads) vs 128 (FFN 512, 4 heads)",
                    ("model.conv_dim=256", "model.mask_dim=256", "model.hidden_dim=256", "model.nheads=8",
                     "model.dim_feedforward=1024"), (), "off"),
    "queries": Switch("100 queries (official) vs 50", ("model.num_queries=100",), (), "off"),
    "no_object_weight": Switch("no-object class weight 0.1 (official) vs 1.0", (), ("loss.no_object_weight=1.0",),
                               "on"),
    "deep_supervision": Switch("loss on every decoder layer (official) vs the last one only", (),
                               ("loss.deep_supervision=false",), "on"),
    "amp": Switch("bf16 autocast training (the official recipes train with AMP; a CPU with native bf16 runs more "
                  "iterations in the budget) vs fp32; the preset's train.amp=auto is bf16 on such a CPU",
                  ("train.amp=bf16",), ("train.amp=none",), "on"),
    "point_loss": Switch("point-sampled mask loss (Mask2Former, 12544 importance-sampled points) vs full resolution",
                         ("loss.point_sampling=true",), (), "off"),
}  # fmt: skip


def switch(name: str, on_opts: list[str] | None = None, off_opts: list[str] | None = None) -> Switch:
    """The named switch, or "custom" built from the given on/off override lists."""
    if name == "custom":
        if not on_opts and not off_opts:
            raise SystemExit("--ablation custom needs --on-opts and/or --off-opts")
        return Switch("custom: " + " ".join(on_opts or ["(preset)"]) + " vs " + " ".join(off_opts or ["(preset)"]),
                      tuple(on_opts or ()), tuple(off_opts or ()), "off")  # fmt: skip
    if name not in SWITCHES:
        raise SystemExit(f"--ablation {name!r}: unknown; valid: {', '.join(SWITCHES)}, custom")
    return SWITCHES[name]


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def ablation_line(name: str, sw: Switch, results: list[dict], args_common: dict) -> dict:
    """One table line: final mIoU of each side (mean over seeds), the difference on - off and the iterations run."""
    side = {s: [r for r in results if r["variant"] == f"{name}={s}"] for s in ("on", "off")}
    return {
        "name": name, "what": sw.what, "preset": sw.preset, "on_opts": list(sw.on), "off_opts": list(sw.off),
        "arch": results[0]["arch"], "protocol": results[0]["protocol"], **args_common,
        "seeds": sorted({r["seed"] for r in results}),
        "on": _mean([r["final_mIoU"] for r in side["on"]]), "off": _mean([r["final_mIoU"] for r in side["off"]]),
        "on_iters": [r["max_iter"] for r in side["on"]], "off_iters": [r["max_iter"] for r in side["off"]],
    }  # fmt: skip


def _key(line: dict) -> tuple:
    return line["name"], line["arch"], line["protocol"], line["budget_min"], tuple(line["seeds"]), line["common_opts"]


def write_table(path: Path, lines: list[dict]) -> str:
    """Merge `lines` into the JSON table at `path` (a line with the same switch, model, protocol, budget, seeds and
    common overrides is replaced) and write its markdown beside it (.md). Both atomically. Returns the markdown."""
    path = Path(path)
    table = json.loads(path.read_text()) if path.is_file() else []
    keys = {_key(x) for x in lines}
    table = [x for x in table if _key(x) not in keys] + lines
    path.parent.mkdir(parents=True, exist_ok=True)
    text = markdown(table)
    for p, content in ((path, json.dumps(table, indent=1)), (path.with_suffix(".md"), text + "\n")):
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(content)
        os.replace(tmp, p)
    return text


def markdown(table: list[dict]) -> str:
    rows = [
        "| change | model | protocol | budget | seeds | on | off | on - off | iters on / off | preset "
        "| on: overrides |",
        "|---|---|---|---:|---|---:|---:|---:|---|---|---|",
    ]
    for x in table:
        opts = " ".join(x["on_opts"]) or "(preset)"
        if x["off_opts"]:
            opts += "; off: " + " ".join(x["off_opts"])
        iters = f"{'/'.join(map(str, x['on_iters']))} / {'/'.join(map(str, x['off_iters']))}"
        rows.append(
            f"| {x['name']}: {x['what']} | {x['arch']} | {x['protocol']} | {x['budget_min']} min "
            f"| {','.join(map(str, x['seeds']))} | {x['on']:.4f} | {x['off']:.4f} | {x['on'] - x['off']:+.4f} "
            f"| {iters} | {x['preset']} | `{opts}` |"
        )
    return "\n".join(rows)
