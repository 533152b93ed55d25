"""Mask2Former: this package vs transformers' Mask2Former with the same weights (ADE20K config, 150 classes).

A. Forward at 512x512, batch 1, fp32, one process, interleaved (ours, transformers, ours through onnxruntime in
   turn), R50 and Swin-T: medians of --repeats and the median of the paired ratios (target: ours >= 1.3x faster).
B. Peak RSS, each measurement in a fresh subprocess on the same inputs: a training step (R50, 512x512, batch 2,
   point-sampled matching + loss over all 10 predictions, backward) and inference at 1024x2048 (R50, batch 1,
   the network forward under inference_mode). Reported: peak RSS of the process and the growth of the peak over the
   resident size after building the model and inputs (the part the step itself costs).

  .venv/bin/python benchmarks/bench_mask2former.py [--repeats 7] [--kinds r50 swin_t] [--no-onnx] [--no-memory]
                                                   [--out FILE]

Prints a markdown table (and writes it to --out if given). `hf_mask2former_and_ours(kind)` is the shared builder
(benchmarks/gpu_check.py uses it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from maskformer.convert.hf_mask2former import build_hf_mask2former_model, load_hf_mask2former_state_dict

S4 = ["stage1", "stage2", "stage3", "stage4"]
KINDS = ("r50", "swin_t")


def hf_config(kind: str):
    """transformers' Mask2FormerConfig for ADE20K semantic (150 classes, 100 queries) with an R50 or Swin-T backbone."""
    import transformers as tr

    if kind == "r50":
        bb = tr.ResNetConfig(embedding_size=64, depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048],
                             layer_type="bottleneck", out_features=S4)  # fmt: skip
    elif kind == "swin_t":
        bb = tr.SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
                           drop_path_rate=0.3, out_features=S4)  # fmt: skip
    else:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return tr.Mask2FormerConfig(backbone_config=bb, num_labels=150, num_queries=100)


def hf_mask2former_and_ours(kind: str):
    """(transformers Mask2FormerForUniversalSegmentation, this package's model) in eval mode with the same random
    weights, for kind "r50" | "swin_t". transformers takes normalized `pixel_values`, ours raw RGB 0..255 images."""
    import transformers as tr

    torch.manual_seed(0)
    cfg = hf_config(kind)
    hf = tr.Mask2FormerForUniversalSegmentation(cfg).eval()
    ours = build_hf_mask2former_model(cfg.to_dict())
    load_hf_mask2former_state_dict(ours, hf.state_dict())
    return hf, ours.eval()


def normalized(ours, images: torch.Tensor) -> torch.Tensor:
    """transformers' input for raw images: the same mean/std normalization as ours."""
    return (images - ours.pixel_mean) / ours.pixel_std


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------------------ A. forward speed
def bench_forward(kind: str, repeats: int, onnx: bool) -> dict:
    hf, ours = hf_mask2former_and_ours(kind)
    if hasattr(ours, "optimize_for_inference"):
        ours.optimize_for_inference()
    x = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(0)) * 255
    xn = normalized(ours, x)
    runs = {"ours": lambda: ours(x), "transformers": lambda: hf(pixel_values=xn)}
    with tempfile.TemporaryDirectory() as tmp:
        if onnx:
            from maskformer.export import export, onnx_session

            _, ours_plain = hf_mask2former_and_ours(kind)  # the exported graph: no CPU-only speed switches
            session = onnx_session(export(ours_plain, Path(tmp) / "m2f.onnx", "onnx", sample_size=(1, 512, 512)))
            feed = {session.get_inputs()[0].name: x.numpy()}
            runs["onnxruntime"] = lambda: session.run(None, feed)
            runs["torch (exported model)"] = lambda: ours_plain(x)
        with torch.inference_mode():
            ref, theirs = ours(x), hf(pixel_values=xn)
            parity = ((ref["pred_masks"] - theirs.masks_queries_logits).abs().max()
                      / theirs.masks_queries_logits.abs().max()).item()  # fmt: skip
            onnx_parity = None
            if onnx:
                out = torch.from_numpy(runs["onnxruntime"]()[1])
                onnx_parity = ((out - ref["pred_masks"]).abs().max() / ref["pred_masks"].abs().max()).item()
            for fn in runs.values():
                fn()  # warm-up
            times = {k: [] for k in runs}
            for _ in range(repeats):
                for k, fn in runs.items():
                    times[k].append(_timed(fn))
    median = {k: statistics.median(v) for k, v in times.items()}
    speedup = statistics.median(h / o for h, o in zip(times["transformers"], times["ours"]))
    return dict(kind=kind, median=median, speedup=speedup, parity=parity, onnx_parity=onnx_parity)


# ------------------------------------------------------------------------------------------------ B. peak memory
def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _train_inputs(batch: int, size: int, k: int = 150, per_image: int = 5):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, size, size, generator=g) * 255
    labels, masks = [], []
    for _ in range(batch):
        region = torch.randint(0, per_image, (size // 16, size // 16), generator=g)
        region = region.repeat_interleave(16, 0).repeat_interleave(16, 1)  # blocky segments
        masks.append(torch.stack([region == i for i in range(per_image)]))
        labels.append(torch.randperm(k, generator=g)[:per_image])
    return images, labels, masks


def measure(case: str, impl: str, kind: str) -> dict:
    """One measurement in this process (called in a fresh subprocess): case "train" | "infer", impl "ours" |
    "transformers". Returns peak RSS (MiB) and its growth over the RSS before the step."""
    torch.manual_seed(0)
    hf, ours = hf_mask2former_and_ours(kind)
    model = ours if impl == "ours" else hf
    other = hf if impl == "ours" else ours
    del other
    if case == "train":
        from maskformer.config import get_preset
        from maskformer.criterion import build_criterion
        from maskformer.structures import SegTarget

        images, labels, masks = _train_inputs(batch=2, size=512)
        model.train()
        if impl == "ours":
            criterion = build_criterion(get_preset(f"mask2former_{kind}_ade20k"))
            targets = [SegTarget(labels=lb, masks=m) for lb, m in zip(labels, masks)]

            def step():
                criterion(model(images), targets)["loss"].backward()
        else:
            xn = normalized(ours, images)

            def step():
                out = model(pixel_values=xn, mask_labels=[m.float() for m in masks], class_labels=labels)
                out.loss.backward()
    else:
        images = torch.rand(1, 3, 1024, 2048, generator=torch.Generator().manual_seed(0)) * 255
        x = images if impl == "ours" else normalized(ours, images)

        def step():
            with torch.inference_mode():
                model(x) if impl == "ours" else model(pixel_values=x)

    before = _rss_kib("VmRSS")
    exact = _reset_peak()
    step()
    peak = _rss_kib("VmHWM")
    return dict(case=case, impl=impl, kind=kind, peak_mib=peak / 1024, step_mib=(peak - before) / 1024,
                peak_reset=exact)  # fmt: skip


def measure_in_subprocess(case: str, impl: str, kind: str) -> dict:
    cmd = [sys.executable, __file__, "--child", case, impl, kind]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1])
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------ report
def report(forward: list[dict], memory: list[dict], repeats: int) -> str:
    lines = [f"Mask2Former vs transformers {_tr_version()}, torch {torch.__version__}, {torch.get_num_threads()} "
             f"threads, load {os.getloadavg()[0]:.1f}, median of {repeats}", ""]  # fmt: skip
    if forward:
        names = list(forward[0]["median"])
        lines += ["| backbone | " + " | ".join(names) + " | speed-up vs transformers | parity | onnx parity |",
                  "|---|" + "---:|" * (len(names) + 3)]  # fmt: skip
        for r in forward:
            cells = " | ".join(f"{r['median'][n] * 1000:.0f} ms" for n in names)
            onnx = "-" if r["onnx_parity"] is None else f"{r['onnx_parity']:.1e}"
            lines.append(f"| {r['kind']} | {cells} | {r['speedup']:.2f}x | {r['parity']:.1e} | {onnx} |")
        lines.append("")
    if memory:
        lines += ["| case | implementation | peak RSS | step's growth of the peak |", "|---|---|---:|---:|"]
        for m in memory:
            label = {"train": "train step R50 512x512 b2", "infer": "inference R50 1024x2048"}[m["case"]]
            lines.append(f"| {label} | {m['impl']} | {m['peak_mib']:.0f} MiB | {m['step_mib']:.0f} MiB |")
    return "\n".join(lines) + "\n"


def _tr_version() -> str:
    import transformers

    return transformers.__version__


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--no-onnx", action="store_true")
    parser.add_argument("--no-forward", action="store_true")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--out", default=None, help="also write the table to this file")
    parser.add_argument("--child", nargs=3, metavar=("CASE", "IMPL", "KIND"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child)))
        return
    forward = [] if args.no_forward else [bench_forward(k, args.repeats, not args.no_onnx) for k in args.kinds]
    memory = []
    if not args.no_memory:
        for case in ("train", "infer"):
            for impl in ("ours", "transformers"):
                memory.append(measure_in_subprocess(case, impl, "r50"))
    text = report(forward, memory, args.repeats)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
