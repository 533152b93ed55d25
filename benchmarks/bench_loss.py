"""Training objective speed: matcher + criterion forward + backward, this project vs transformers' MaskFormerLoss.

Default case (issue 3): batch 8, 100 queries, 150 classes, 8 targets per image, 512x512 targets (128x128 predictions),
6 decoder layers (final + 5 aux). Three variants on the same inputs, interleaved, median of repeats, 2 threads:
  hf     transformers.models.maskformer MaskFormerLoss (+ its matcher), weighted 1/20/1 like ours
  ours   maskformer.criterion.SetCriterion, the paper's full-resolution loss
  point  the same with loss.point_sampling=True (Mask2Former's 12544-point loss)
Peak memory: each variant runs once in a fresh subprocess; peak = ru_maxrss after forward+backward minus ru_maxrss
after building the inputs (Linux, KiB).

    .venv/bin/python benchmarks/bench_loss.py                      # full size (heavy: minutes on 2 cores)
    .venv/bin/python benchmarks/bench_loss.py --batch 2 --size 256 --repeats 3   # quick
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from maskformer.config import Config, apply_overrides  # noqa: E402
from maskformer.criterion import build_criterion  # noqa: E402
from maskformer.structures import SegTarget  # noqa: E402

WEIGHTS = {"loss_ce": 1.0, "loss_mask": 20.0, "loss_dice": 1.0}


def make_inputs(args, seed: int = 0):
    """Random predictions (6 layers) and semantic targets: each image a random partition into `targets` classes."""
    g = torch.Generator().manual_seed(seed)
    B, Q, K, S = args.batch, args.queries, args.classes, args.size
    h = S // 4

    def layer():
        return {
            "pred_logits": torch.randn(B, Q, K + 1, generator=g),
            "pred_masks": 3 * torch.randn(B, Q, h, h, generator=g),
        }

    outputs = layer()
    outputs["aux_outputs"] = [layer() for _ in range(args.layers - 1)]
    targets = []
    for _ in range(B):
        classes = torch.randperm(K, generator=g)[: args.targets]
        seeds = torch.rand(args.targets, 2, generator=g) * S  # Voronoi cells -> blob-like segments
        yy, xx = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
        d = (yy[None] - seeds[:, 0, None, None]) ** 2 + (xx[None] - seeds[:, 1, None, None]) ** 2  # [T, S, S]
        owner = d.argmin(0)
        masks = owner[None] == torch.arange(args.targets)[:, None, None]
        targets.append(SegTarget(classes, masks))
    return outputs, targets


def with_grad(outputs):
    """A fresh leaf copy of every prediction tensor (so each run has its own graph)."""
    leaf = {k: v.detach().clone().requires_grad_() for k, v in outputs.items() if k != "aux_outputs"}
    leaf["aux_outputs"] = [
        {k: v.detach().clone().requires_grad_() for k, v in a.items()} for a in outputs["aux_outputs"]
    ]
    return leaf


def run_ours(criterion, outputs, targets):
    out = with_grad(outputs)
    losses = criterion(out, targets)
    losses["loss"].backward()
    return {k: v.item() for k, v in losses.items()}


def build_hf(num_classes: int):
    from transformers.models.maskformer.modeling_maskformer import MaskFormerHungarianMatcher, MaskFormerLoss

    matcher = MaskFormerHungarianMatcher(cost_class=1.0, cost_mask=20.0, cost_dice=1.0)
    return MaskFormerLoss(num_labels=num_classes, matcher=matcher, weight_dict={}, eos_coef=0.1)


def run_hf(loss_fn, outputs, targets):
    out = with_grad(outputs)
    aux = [
        {"masks_queries_logits": a["pred_masks"], "class_queries_logits": a["pred_logits"]} for a in out["aux_outputs"]
    ]
    h = out["pred_masks"].shape[-1] * 4
    masks = [
        torch.nn.functional.pad(t.masks.float(), (0, h - t.masks.shape[-1], 0, h - t.masks.shape[-2])) for t in targets
    ]
    losses = loss_fn(out["pred_masks"], out["pred_logits"], masks, [t.labels for t in targets], aux)
    weighted = {}
    for k, v in losses.items():
        ours = k.replace("loss_cross_entropy", "loss_ce")
        weighted[ours] = v * WEIGHTS[ours.rstrip("_0123456789")]
    total = sum(weighted.values())
    total.backward()
    return {**{k: v.item() for k, v in weighted.items()}, "loss": total.item()}


def criterion_for(variant: str, classes: int):
    cfg = apply_overrides(Config(), [f"model.num_classes={classes}", f"loss.point_sampling={variant == 'point'}"])
    return build_criterion(cfg)


def runner(variant: str, classes: int):
    if variant == "hf":
        fn = build_hf(classes)
        return lambda o, t: run_hf(fn, o, t)
    crit = criterion_for(variant, classes)
    return lambda o, t: run_ours(crit, o, t)


def timing(args) -> dict:
    outputs, targets = make_inputs(args)
    variants = ["hf", "ours", "point"]
    runs = {v: runner(v, args.classes) for v in variants}
    values = {v: runs[v](outputs, targets) for v in variants}  # warm-up + values
    times = {v: [] for v in variants}
    for _ in range(args.repeats):
        for v in variants:
            t0 = time.perf_counter()
            runs[v](outputs, targets)
            times[v].append(time.perf_counter() - t0)
    med = {v: statistics.median(ts) for v, ts in times.items()}
    diff = max(abs(values["ours"][k] - values["hf"][k]) / max(abs(values["hf"][k]), 1e-8) for k in values["hf"])
    return {"median_s": med, "values": values, "max_rel_diff_ours_vs_hf": diff}


def peak_child(args, variant: str) -> int:
    """ru_maxrss growth (KiB) of one forward+backward of `variant` in a fresh process."""
    cmd = [sys.executable, __file__, "--peak-of", variant] + [
        f"--{k}={getattr(args, k)}" for k in ("batch", "queries", "classes", "targets", "size", "layers")
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def peak_self(args) -> None:
    outputs, targets = make_inputs(args)
    run = runner(args.peak_of, args.classes)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run(outputs, targets)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (
        ("batch", 8),
        ("queries", 100),
        ("classes", 150),
        ("targets", 8),
        ("size", 512),
        ("layers", 6),
    ):
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--peak-of", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.peak_of:
        return peak_self(args)
    res = timing(args)
    res["peak_rss_mib"] = {v: peak_child(args, v) / 1024 for v in ("hf", "ours", "point")}
    med = res["median_s"]
    print(json.dumps({k: v for k, v in res.items() if k != "values"}, indent=1))
    print(f"ours vs hf: {med['hf'] / med['ours']:.2f}x faster; point vs ours: {med['ours'] / med['point']:.2f}x faster")
    print(
        "values (ours / hf):",
        {
            k: (round(res["values"]["ours"][k], 5), round(res["values"]["hf"][k], 5))
            for k in ("loss", "loss_mask", "loss_dice", "loss_ce")
        },
    )


if __name__ == "__main__":
    main()
