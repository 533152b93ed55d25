"""Training objective speed: matcher + criterion forward + backward, this project vs transformers' MaskFormerLoss.

Default case (issue 3): batch 8, 100 queries, 150 classes, 8 targets per image, 512x512 targets (128x128 predictions),
6 decoder layers (final + 5 aux). Variants on the same inputs, interleaved, median of repeats, 2 threads:
  hf     transformers.models.maskformer MaskFormerLoss (+ its matcher), weighted 1/20/1 like ours
  ours   maskformer.criterion.SetCriterion, the paper's full-resolution loss
  point  the same with loss.point_sampling=True (Mask2Former's 12544-point loss)
Also the parts: the matcher alone (6 layers) and the mask loss alone (forward + backward of the 6 layers' matched
pairs, the same pairs for all). Peak memory: each variant runs once in a fresh subprocess; peak = the RSS high-water
mark during forward + backward (reset via /proc/self/clear_refs once the inputs exist) minus the RSS then (Linux).

    .venv/bin/python benchmarks/bench_loss.py                                    # full size (minutes on 2 cores)
    .venv/bin/python benchmarks/bench_loss.py --batch 2 --size 256 --repeats 3   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from maskformer.config import Config, apply_overrides  # noqa: E402
from maskformer.cpu_tuning import keep_freed_memory  # noqa: E402
from maskformer.criterion import build_criterion, prepare_targets  # noqa: E402
from maskformer.mask_losses import full_res_mask_losses, point_sampled_mask_losses  # noqa: E402
from maskformer.structures import SegTarget  # noqa: E402

WEIGHTS = {"loss_ce": 1.0, "loss_mask": 20.0, "loss_dice": 1.0}
VARIANTS = ("hf", "ours", "point")
CPU_S: dict[str, float] = {}  # median process CPU seconds of the last `interleaved` call


def make_inputs(args, seed: int = 0):
    """Random predictions (all layers) and semantic targets: each image a random partition into `targets` classes."""
    g = torch.Generator().manual_seed(seed)
    B, Q, K, S = args.batch, args.queries, args.classes, args.size

    def layer():
        return {
            "pred_logits": torch.randn(B, Q, K + 1, generator=g),
            "pred_masks": 3 * torch.randn(B, Q, S // 4, S // 4, generator=g),
        }

    outputs = layer()
    outputs["aux_outputs"] = [layer() for _ in range(args.layers - 1)]
    yy, xx = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    targets = []
    for _ in range(B):
        seeds = torch.rand(args.targets, 2, generator=g) * S  # Voronoi cells -> blob-like segments
        owner = ((yy[None] - seeds[:, 0, None, None]) ** 2 + (xx[None] - seeds[:, 1, None, None]) ** 2).argmin(0)
        masks = owner[None] == torch.arange(args.targets)[:, None, None]
        targets.append(SegTarget(torch.randperm(K, generator=g)[: args.targets], masks))
    return outputs, targets


def _leaf(t: torch.Tensor) -> torch.Tensor:
    leaf = t.detach().clone().requires_grad_()
    leaf.register_post_accumulate_grad_hook(_drop_grad)
    return leaf


def _drop_grad(t: torch.Tensor) -> None:
    """Free a prediction's gradient once accumulated, as the network's backward would consume it: the peak then
    measures the loss, not 6 layers of [B, Q, h, w] gradient buffers that every variant would hold alike."""
    t.grad = None


def leaves(outputs):
    """Fresh leaf copies of every prediction tensor (each run builds its own graph); made outside timed regions."""
    copy = {k: _leaf(v) for k, v in outputs.items() if k != "aux_outputs"}
    copy["aux_outputs"] = [{k: _leaf(v) for k, v in a.items()} for a in outputs["aux_outputs"]]
    return copy


def criterion_for(variant: str, classes: int):
    cfg = apply_overrides(Config(), [f"model.num_classes={classes}", f"loss.point_sampling={variant == 'point'}"])
    return build_criterion(cfg)


def runner(variant: str, classes: int):
    """A function (leaf outputs, targets) -> {weighted term: value, "loss": total} doing forward + backward."""
    if variant != "hf":
        criterion = criterion_for(variant, classes)

        def ours(out, targets):
            losses = criterion(out, targets)
            losses["loss"].backward()
            return {k: v.item() for k, v in losses.items()}

        return ours
    from transformers.models.maskformer.modeling_maskformer import MaskFormerHungarianMatcher, MaskFormerLoss

    hf = MaskFormerLoss(
        num_labels=classes, matcher=MaskFormerHungarianMatcher(1.0, 20.0, 1.0), weight_dict={}, eos_coef=0.1
    )

    def theirs(out, targets):
        aux = [
            {"masks_queries_logits": a["pred_masks"], "class_queries_logits": a["pred_logits"]}
            for a in out["aux_outputs"]
        ]
        H, W = (4 * s for s in out["pred_masks"].shape[-2:])
        masks = [
            torch.nn.functional.pad(t.masks, (0, W - t.masks.shape[-1], 0, H - t.masks.shape[-2])).float()
            for t in targets
        ]
        losses = hf(out["pred_masks"], out["pred_logits"], masks, [t.labels for t in targets], aux)
        weighted = {
            (name := k.replace("loss_cross_entropy", "loss_ce")): v * WEIGHTS[name.rstrip("_0123456789")]
            for k, v in losses.items()
        }
        total = sum(weighted.values())
        total.backward()
        return {**{k: v.item() for k, v in weighted.items()}, "loss": total.item()}

    return theirs


def interleaved(funcs: dict, make_args, repeats: int) -> dict:
    """Median wall and process-CPU seconds of each function, calls interleaved; make_args() runs untimed.

    Returns {name: wall}; the CPU medians go to CPU_S (with 2 threads they include the threads' spin-waits)."""
    wall, cpu = {name: [] for name in funcs}, {name: [] for name in funcs}
    CPU_S.clear()
    for _ in range(repeats):
        for name, fn in funcs.items():
            args = make_args()
            t0, c0 = time.perf_counter(), time.process_time()
            fn(*args)
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    CPU_S.update({name: statistics.median(ts) for name, ts in cpu.items()})
    return {name: statistics.median(ts) for name, ts in wall.items()}


def part_timings(args, outputs, targets) -> dict:
    """The matcher alone (all layers, ours vs HF's) and the mask loss alone (full resolution vs point-sampled)."""
    from transformers.models.maskformer.modeling_maskformer import MaskFormerHungarianMatcher

    crit = criterion_for("ours", args.classes)
    layers = [outputs] + outputs["aux_outputs"]
    H = 4 * outputs["pred_masks"].shape[-1]
    labels, all_masks = prepare_targets(targets, (H, H), args.classes, torch.device("cpu"))
    split = list(all_masks.split([len(lb) for lb in labels]))
    hf_matcher, hf_masks = MaskFormerHungarianMatcher(1.0, 20.0, 1.0), [m.float() for m in split]
    matchers = {
        "hf": lambda: [hf_matcher(lay["pred_masks"], lay["pred_logits"], hf_masks, labels) for lay in layers],
        "ours": lambda: [crit.matcher(lay["pred_logits"], lay["pred_masks"], labels, split) for lay in layers],
    }
    matcher_s = interleaved({k: (lambda f=f: f()) for k, f in matchers.items()}, tuple, args.repeats)
    matcher_cpu = dict(CPU_S)
    pairs = []  # the matched (logits, targets) of every layer
    offsets = torch.tensor([0] + [len(lb) for lb in labels]).cumsum(0)
    for lay, idx in zip(layers, matchers["ours"]()):
        b = torch.cat([torch.full_like(s, i) for i, (s, _) in enumerate(idx)])
        pairs.append(
            (
                lay["pred_masks"][b, torch.cat([s for s, _ in idx])],
                all_masks[torch.cat([t + offsets[i] for i, (_, t) in enumerate(idx)])],
            )
        )

    def mask_loss(fn, leafs):
        total = sum(20 * f.sum() + d.sum() for f, d in (fn(x, t) for x, (_, t) in zip(leafs, pairs)))
        total.backward()

    fns = {
        "full": lambda leafs: mask_loss(full_res_mask_losses, leafs),
        "point": lambda leafs: mask_loss(point_sampled_mask_losses, leafs),
    }
    loss_s = interleaved(fns, lambda: ([_leaf(x) for x, _ in pairs],), args.repeats)
    return {"matcher_s": matcher_s, "matcher_cpu_s": matcher_cpu, "mask_loss_s": loss_s, "mask_loss_cpu_s": dict(CPU_S)}


def peak_child(args, variant: str) -> float:
    """Peak RSS growth (MiB) of one forward + backward of `variant` in a fresh process."""
    cmd = [sys.executable, __file__, "--peak-of", variant, f"--threads={args.threads}", f"--malloc={args.malloc}"]
    cmd += [f"--{k}={getattr(args, k)}" for k in ("batch", "queries", "classes", "targets", "size", "layers")]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def _status_kib(field: str) -> int:
    """VmRSS / VmHWM of this process from /proc (KiB). ru_maxrss would not do: Linux carries it over from the
    parent across fork + exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_self(args) -> None:
    outputs, targets = make_inputs(args)
    run, out = runner(args.peak_of, args.classes), leaves(outputs)
    base = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current RSS
    run(out, targets)
    print(_status_kib("VmHWM") - base)


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
    p.add_argument("--malloc", choices=("keep", "default"), default="keep", help="keep: keep_freed_memory()")
    args = p.parse_args()
    if args.malloc == "keep":
        keep_freed_memory()  # as the maskformer command: no page faults on re-allocated tensors
    torch.set_num_threads(args.threads)
    if args.peak_of:
        return peak_self(args)
    outputs, targets = make_inputs(args)
    runs = {v: runner(v, args.classes) for v in VARIANTS}
    values = {v: runs[v](leaves(outputs), targets) for v in VARIANTS}  # warm-up, and the values compared
    total_s = interleaved({v: runs[v] for v in VARIANTS}, lambda: (leaves(outputs), targets), args.repeats)
    res = {"case": vars(args), "total_s": total_s, "total_cpu_s": dict(CPU_S), **part_timings(args, outputs, targets)}
    res["max_rel_diff_ours_vs_hf"] = max(
        abs(values["ours"][k] - v) / max(abs(v), 1e-12) for k, v in values["hf"].items()
    )
    res["peak_rss_mib"] = {v: peak_child(args, v) for v in VARIANTS}
    t, m, lo = res["total_s"], res["matcher_s"], res["mask_loss_s"]
    res["ratios"] = {
        "hf/ours total": t["hf"] / t["ours"],
        "ours/point total": t["ours"] / t["point"],
        "hf/point total": t["hf"] / t["point"],
        "hf/ours matcher": m["hf"] / m["ours"],
        "full/point mask loss": lo["full"] / lo["point"],
        "cpu hf/ours total": res["total_cpu_s"]["hf"] / res["total_cpu_s"]["ours"],
        "cpu ours/point total": res["total_cpu_s"]["ours"] / res["total_cpu_s"]["point"],
        "cpu full/point mask loss": res["mask_loss_cpu_s"]["full"] / res["mask_loss_cpu_s"]["point"],
    }
    res["load_average"] = os.getloadavg()
    res["malloc"] = args.malloc
    res["values"] = {
        k: (values["ours"][k], values["hf"][k], values["point"][k])
        for k in ("loss", "loss_ce", "loss_mask", "loss_dice")
    }
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
