"""Inference-time switches of the CamVid benchmark (issue 19), measured on runs that `benchmarks/camvid.py` already
trained: each run's final model is scored again on its own protocol's frames with each variant, no training.

A run folder is <out>/<protocol>/<arch>/<variant>/seed<N> (camvid.py's layout; its `model/` holds the final weights
and config). Variants (beside "preset", the run's own inference, which reproduces its final mIoU as a check):

- flip: the mean of the image's and its mirror's semantic scores (official TTA with the one scale 1.0)
- tta: the official semantic TTA, short sides 0.5-1.75x the test size in 6 steps x flip (reference section 5.5)
- test360: one scale, the native short side 360 instead of the preset's 270

Screen on runs of the tuning drive 0006R0 (nothing tuned on drive 0016E5, whose frames the reported numbers
score), then apply a kept switch to the reported runs. Prints a markdown table (mIoU per run and variant, the
difference to preset and its mean over runs) and writes it with the numbers to --out (.json + .md):

  .venv/bin/python benchmarks/camvid_rescore.py benchmarks/out/camvid_abl10/*/0006R0/maskformer/*/seed42 \\
      --variants preset flip tta test360 --out benchmarks/out/camvid_rescore_0006R0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # camvid_protocol beside this script

from camvid_protocol import PROTOCOLS, protocol_datasets  # noqa: E402

from maskformer.config import apply_overrides  # noqa: E402
from maskformer.evaluation.loop import evaluate_model  # noqa: E402
from maskformer.hub import load_model  # noqa: E402

OFFICIAL_TTA_SCALES = "0.5,0.75,1.0,1.25,1.5,1.75"
# name: (what, inference overrides, tta)
VARIANTS = {
    "preset": ("the run's own inference (single scale, short side 270)", (), False),
    "flip": ("mean over the image and its mirror", ("inference.tta_scales=1.0", "inference.tta_flip=true"), True),
    "tta": ("official TTA: 6 scales 0.5-1.75x x flip",
            (f"inference.tta_scales={OFFICIAL_TTA_SCALES}", "inference.tta_flip=true"), True),
    "test360": ("single scale at the native short side 360", ("inference.min_size_test=360",), False),
}  # fmt: skip


def run_protocol(run_dir: Path) -> str:
    """The protocol of a camvid.py run folder <out>/<protocol>/<arch>/<variant>/seed<N>."""
    protocol = run_dir.parts[-4] if len(run_dir.parts) >= 4 else ""
    if protocol not in PROTOCOLS or not run_dir.name.startswith("seed"):
        raise SystemExit(f"{run_dir}: not a camvid.py run folder <out>/<protocol>/<arch>/<variant>/seed<N>")
    if not (run_dir / "model" / "model.safetensors").is_file():
        raise SystemExit(f"{run_dir}: no final model (model/model.safetensors): did the run finish?")
    return protocol


def rescore(run_dir: Path, variants: list[str]) -> dict:
    """{"run", "protocol", "mIoU": {variant: mIoU}, "seconds": {variant: s}, "per_class": {variant: {class: IoU}}}
    for one run folder: its final model loaded once, scored with each variant's inference settings."""
    protocol = run_protocol(run_dir)
    out = {"run": str(run_dir), "protocol": protocol, "mIoU": {}, "seconds": {}, "per_class": {}}
    model, run_cfg, _ = load_model(run_dir / "model")
    _, val_set = protocol_datasets(run_cfg, protocol)  # the variants change inference settings only
    for name in variants:
        _, overrides, tta = VARIANTS[name]
        cfg = apply_overrides(run_cfg, overrides)  # a copy
        t0 = time.perf_counter()
        r = evaluate_model(model, val_set, task="semantic", cfg=cfg, tta=tta, batch_size=1 if tta else 4)
        out["seconds"][name] = round(time.perf_counter() - t0, 1)
        out["mIoU"][name] = r["mIoU"]
        out["per_class"][name] = {c["name"]: round(c["iou"], 4) for c in r["per_class"]}
        print(f"  {run_dir}: {name} {r['mIoU']:.4f} ({out['seconds'][name]:.0f} s)", flush=True)
    return out


def markdown(rows: list[dict], variants: list[str]) -> str:
    base = "preset" if "preset" in variants else None
    head = "| run | protocol | " + " | ".join(variants) + " |"
    lines = [head, "|---|---|" + "---:|" * len(variants)]
    for r in rows:
        cells = []
        for v in variants:
            x = r["mIoU"][v]
            cells.append(f"{x:.4f}" + (f" ({x - r['mIoU'][base]:+.4f})" if base and v != base else ""))
        lines.append(f"| {r['run']} | {r['protocol']} | " + " | ".join(cells) + " |")
    if base and rows:
        means = [sum(r["mIoU"][v] - r["mIoU"][base] for r in rows) / len(rows) for v in variants]
        lines.append("| mean difference to preset | | " + " | ".join(f"{m:+.4f}" for m in means) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="camvid.py run folders <out>/<protocol>/<arch>/<variant>/seedN")
    p.add_argument("--variants", nargs="+", default=["preset", "flip", "tta"], choices=list(VARIANTS))
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--out", type=Path, help="write <out>.json and <out>.md")
    args = p.parse_args()
    for run in args.runs:  # every folder is checked before any scoring
        run_protocol(run)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    rows = [rescore(run, args.variants) for run in args.runs]
    text = markdown(rows, args.variants)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        for path, content in ((args.out.with_suffix(".json"), json.dumps(rows, indent=1)),
                              (args.out.with_suffix(".md"), text + "\n")):  # fmt: skip
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(content)
            os.replace(tmp, path)


if __name__ == "__main__":
    main()
