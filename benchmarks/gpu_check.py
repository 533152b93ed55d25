"""The prepared GPU check (issue 18): one CUDA device, at most ~8 minutes, nothing else depends on it.

Sections (each guarded, so one failure does not lose the rest; every number is printed as soon as it exists):
  A. forward 512x512, batch 1 and 8: ours fp32 / bf16 / fp16 autocast vs transformers' MaskFormer with the same
     weights (fp32 and bf16), R50 and Swin-T; parity (fp32 max |diff|) and the autocast deviation / label agreement.
  B. a training step with AMP (bf16 and fp16) vs fp32: ours (TrainStep, the paper's 6-layer loss) at batch 8.
  C. predict throughput: `Predictor` (resize, pad, forward, semantic post-processing) on 8 images per batch.
  D. Mask2Former (when the preset exists): ours vs transformers' Mask2Former with the same weights, fp32 and bf16.
Results go to --out as a markdown section to append to benchmarks/RESULTS.md.

    PYTHONPATH=. python3 benchmarks/gpu_check.py --out gpu_results.md
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks.*` helpers, run from anywhere

from maskformer.config import PRESETS, get_preset
from maskformer.modeling import build_model

MF = {"r50": "maskformer_r50_ade20k", "swin_t": "maskformer_swin_t_ade20k"}
M2F = {"r50": "mask2former_r50_ade20k", "swin_t": "mask2former_swin_t_ade20k"}
LINES: list[str] = []
RUN = {"device": "cuda", "size": 512, "batches": (1, 8)}  # --smoke: a tiny CPU run that checks the script itself


def emit(line: str = "") -> None:
    print(line, flush=True)
    LINES.append(line)


def cuda_time(fn, repeats: int, warmup: int = 3) -> float:
    """Median seconds of fn() over `repeats` calls, CUDA-synchronized."""
    sync = torch.cuda.synchronize if RUN["device"] == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def empty_cache() -> None:
    if RUN["device"] == "cuda":
        torch.cuda.empty_cache()


def autocast(precision: str):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(RUN["device"], dtype=dtype, enabled=dtype is not None)


def ours_and_hf(kind: str):
    """(our MaskFormer, transformers' MaskFormer) with the same random weights, on the GPU, eval mode."""
    from benchmarks.bench_forward import hf_model
    from maskformer.convert.hf import load_hf_state_dict

    torch.manual_seed(0)
    hf, _ = hf_model(kind)
    ours = build_model(get_preset(MF[kind]))
    load_hf_state_dict(ours, hf.state_dict())
    return ours.to(RUN["device"]).eval(), hf.to(RUN["device"]).eval()


def hf_forward(hf, images: torch.Tensor):
    mean = torch.tensor([123.675, 116.280, 103.530], device=images.device).view(1, 3, 1, 1)
    std = torch.tensor([58.395, 57.120, 57.375], device=images.device).view(1, 3, 1, 1)
    return hf(pixel_values=(images - mean) / std)


def labels(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Semantic argmax at mask resolution: [B,Q,K+1], [B,Q,h,w] -> [B,h,w]."""
    return torch.einsum("bqk,bqhw->bkhw", logits.float().softmax(-1)[..., :-1], masks.float().sigmoid()).argmax(1)


def section_forward(repeats: int) -> None:
    emit("| model | batch | ours fp32 | ours bf16 | ours fp16 | transformers fp32 | transformers bf16 | "
         "fp32 speed-up | bf16 speed-up | parity fp32 | bf16 label agree | fp16 label agree | "
         "ours fp32 channels-last | ours bf16 channels-last |")  # fmt: skip
    emit("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for kind in MF:
        ours, hf = ours_and_hf(kind)
        for batch in RUN["batches"]:
            x = torch.rand(batch, 3, RUN["size"], RUN["size"], device=RUN["device"]) * 255
            t, out = {}, {}
            with torch.inference_mode():
                for prec in ("fp32", "bf16", "fp16"):
                    with autocast(prec):
                        out[prec] = ours(x)
                        t[f"ours {prec}"] = cuda_time(lambda: ours(x), repeats)  # noqa: B023
                for prec in ("fp32", "bf16"):
                    with autocast(prec):
                        o = hf_forward(hf, x)
                        t[f"hf {prec}"] = cuda_time(lambda: hf_forward(hf, x), repeats)  # noqa: B023
                    if prec == "fp32":
                        parity = (o.masks_queries_logits - out["fp32"]["pred_masks"]).abs().max().item()
                ours.optimize_for_inference()  # the documented inference set-up: eval + channels-last
                for prec in ("fp32", "bf16"):
                    with autocast(prec):
                        t[f"opt {prec}"] = cuda_time(lambda: ours(x), repeats)  # noqa: B023
                ours.to(memory_format=torch.contiguous_format)
                ref = labels(out["fp32"]["pred_logits"], out["fp32"]["pred_masks"])
                agree = {p: (labels(out[p]["pred_logits"], out[p]["pred_masks"]) == ref).float().mean().item()
                         for p in ("bf16", "fp16")}  # fmt: skip
            ms = {k: f"{v * 1000:.1f} ms" for k, v in t.items()}
            emit(f"| {kind} | {batch} | {ms['ours fp32']} | {ms['ours bf16']} | {ms['ours fp16']} | {ms['hf fp32']} | "
                 f"{ms['hf bf16']} | {t['hf fp32'] / t['ours fp32']:.2f}x | {t['hf bf16'] / t['ours bf16']:.2f}x | "
                 f"{parity:.1e} | {agree['bf16']:.5f} | {agree['fp16']:.5f} | {ms['opt fp32']} | "
                 f"{ms['opt bf16']} |")  # fmt: skip
        ours = hf = None
        empty_cache()


def section_train(repeats: int) -> None:
    from benchmarks.bench_train_step import make_inputs
    from maskformer.criterion import build_criterion
    from maskformer.engine.step import TrainStep

    emit("| model | batch | fp32 step | bf16 AMP step | fp16 AMP step | bf16 speed-up | fp16 speed-up | "
         "peak GiB (fp32/bf16/fp16) |")  # fmt: skip
    emit("|---|---:|---:|---:|---:|---:|---:|---|")
    for kind, preset in MF.items():
        images, targets = make_inputs(RUN["batches"][-1], RUN["size"], 150)
        images = images.to(RUN["device"])
        row, peaks = {}, []
        for amp in ("none", "bf16", "fp16"):
            cfg = get_preset(preset, [f"train.amp={amp}"])
            torch.manual_seed(0)
            model, criterion = build_model(cfg).to(RUN["device"]), build_criterion(cfg).to(RUN["device"])
            step = TrainStep(model, criterion, cfg.train, torch.device(RUN["device"]))
            if RUN["device"] == "cuda":
                torch.cuda.reset_peak_memory_stats()
            row[amp] = cuda_time(lambda: step([(images, targets)]), repeats, warmup=2)  # noqa: B023
            peaks.append(torch.cuda.max_memory_allocated() / 2**30 if RUN["device"] == "cuda" else 0.0)
            model = criterion = step = None
            empty_cache()
        emit(f"| {kind} | 8 | {row['none'] * 1000:.0f} ms | {row['bf16'] * 1000:.0f} ms | {row['fp16'] * 1000:.0f} ms "
             f"| {row['none'] / row['bf16']:.2f}x | {row['none'] / row['fp16']:.2f}x | "
             f"{' / '.join(f'{p:.1f}' for p in peaks)} |")  # fmt: skip


def section_predict(repeats: int) -> None:
    import numpy as np

    from maskformer.predict import Predictor

    emit("| model | precision | batch | images/s (512x512 in, semantic labels out) |")
    emit("|---|---|---:|---:|")
    rng = np.random.default_rng(0)
    n, size = RUN["batches"][-1], RUN["size"]
    images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]
    for kind, preset in MF.items():
        cfg = get_preset(preset)
        model = build_model(cfg).to(RUN["device"]).eval()
        predictor = Predictor(model, task="semantic", config=cfg, device=RUN["device"])
        for prec in ("fp32", "bf16"):
            with autocast(prec):
                dt = cuda_time(lambda: predictor.predict_arrays(images), repeats, warmup=2)  # noqa: B023
            emit(f"| {kind} | {prec} | {n} | {n / dt:.1f} |")
        model = predictor = None
        empty_cache()


def section_mask2former(repeats: int) -> None:
    if not all(p in PRESETS for p in M2F.values()):
        emit("Mask2Former presets not present: skipped.")
        return
    from benchmarks.bench_mask2former import hf_mask2former_and_ours  # built with the Mask2Former work

    emit("| model | batch | ours fp32 | transformers fp32 | fp32 speed-up | ours bf16 | transformers bf16 | "
         "bf16 speed-up | parity fp32 |")  # fmt: skip
    emit("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for kind in M2F:
        hf, ours = hf_mask2former_and_ours(kind)
        hf, ours = hf.to(RUN["device"]).eval(), ours.to(RUN["device"]).eval()
        for batch in RUN["batches"]:
            x = torch.rand(batch, 3, RUN["size"], RUN["size"], device=RUN["device"]) * 255
            t = {}
            with torch.inference_mode():
                for prec in ("fp32", "bf16"):
                    with autocast(prec):
                        o = ours(x)
                        h = hf_forward(hf, x)
                        t[f"ours {prec}"] = cuda_time(lambda: ours(x), repeats)  # noqa: B023
                        t[f"hf {prec}"] = cuda_time(lambda: hf_forward(hf, x), repeats)  # noqa: B023
                    if prec == "fp32":
                        parity = (h.masks_queries_logits - o["pred_masks"]).abs().max().item()
            emit(f"| {kind} | {batch} | {t['ours fp32'] * 1000:.1f} ms | {t['hf fp32'] * 1000:.1f} ms | "
                 f"{t['hf fp32'] / t['ours fp32']:.2f}x | {t['ours bf16'] * 1000:.1f} ms | "
                 f"{t['hf bf16'] * 1000:.1f} ms | "
                 f"{t['hf bf16'] / t['ours bf16']:.2f}x | {parity:.1e} |")  # fmt: skip
        hf = ours = None
        empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_results.md")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run (64x64, batch 1-2) to check the script")
    args = parser.parse_args()
    if args.smoke:
        RUN.update(device="cpu", size=64, batches=(1, 2))
        return run_sections(args.out, 1, "CPU smoke run")
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device visible; this script is for a GPU machine only")
    import transformers

    props = torch.cuda.get_device_properties(0)
    emit(f"## GPU check ({props.name})\n")
    emit(f"{datetime.date.today()}, `benchmarks/gpu_check.sh`: {props.name} ({props.total_memory / 2**30:.0f} GiB), "
         f"torch {torch.__version__}, transformers {transformers.__version__}, python {platform.python_version()}; "
         f"TF32 matmul {torch.backends.cuda.matmul.allow_tf32}, TF32 cuDNN {torch.backends.cudnn.allow_tf32}; "
         f"median of {args.repeats} after warm-up, CUDA-synchronized wall time; random weights, the same in both "
         "implementations; 512x512 inputs.\n")  # fmt: skip
    torch.backends.cudnn.benchmark = True
    run_sections(args.out, args.repeats, props.name)


def run_sections(out: str, repeats: int, name: str) -> None:
    """Run sections A-D; each one's failure is recorded, not fatal; the file is rewritten after each section."""
    sections = (("A. forward", section_forward), ("B. training step (AMP)", section_train),
                ("C. predict throughput", section_predict), ("D. Mask2Former", section_mask2former))  # fmt: skip
    for title, fn in sections:
        emit(f"\n### {title} ({name})\n")
        t0 = time.perf_counter()
        try:
            fn(repeats)
        except Exception:  # one section's failure must not lose the others' numbers
            emit(f"section failed:\n```\n{traceback.format_exc()[-1500:]}\n```")
        print(f"[{title}: {time.perf_counter() - t0:.0f} s]", flush=True)
        with open(out, "w") as f:
            f.write("\n".join(LINES) + "\n")

if __name__ == "__main__":
    main()
