"""Inference backends and precisions at 512x512, batch 1: ours fp32 / bf16 (where native) / int8 / onnxruntime
fp32 / onnxruntime int8 against transformers fp32, R50 and Swin-T with the same (random) weights.

ours int8 = torch dynamic quantization of nn.Linear; onnxruntime int8 = static QDQ quantization of Conv + MatMul,
calibrated on --calibration (default: the ADE20K sample's validation images in ../shared/data, else deterministic
noise images written under --cache).

One process, every variant interleaved in each repeat, median of --repeats; speed-ups are the medians of the paired
per-repeat ratios to ours fp32. The CPU's flags and the load average before and after are printed (and written).
agree = share of pixels with the fp32 semantic label at mask resolution (random weights: near-ties make this a lower
bound of what a trained model shows). Export / quantization happen before timing; onnxruntime graphs are cached
under --cache (Swin: one graph for the padded size).

Floors: the fp32 2048^3 matmul and the FPN's 3x3 convolution (bench_forward's peak kernels) are timed in the same
loop; floor = GFLOP / the faster kernel's GFLOP/s, for what each fp32 runner executes (ours eager: the fused mask
product, `gflops_executed`; the exported graph: the network as exported, without the fusion). A runner at 1.0x its
floor runs every FLOP at the machine's best dense rate; the onnxruntime target needs the graph at `need` x its floor.

  .venv/bin/python benchmarks/bench_backends.py [--repeats 7] [--models r50 swin_t] [--size 512] [--threads N]
                                                [--no-int8] [--no-onnx] [--calibration DIR] [--write]

Writes its section of benchmarks/RESULTS.md only with --write.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import tempfile
from pathlib import Path

import torch
from bench_forward import deviation, hf_model, peak_kernels, timed, write_section

from maskformer.backends import CALIBRATION_IMAGES, Calibration, OnnxRuntimeModel
from maskformer.config import InferenceConfig
from maskformer.convert.hf import build_hf_model, load_hf_state_dict
from maskformer.cpu_tuning import keep_freed_memory
from maskformer.export import sample_images
from maskformer.io import write_image
from maskformer.modeling.flops import measure
from maskformer.precision import AutocastModel, quantize_int8, system_info

SECTION = "## G: inference backends and precision"
TARGETS = {"bf16": 1.8, "onnxruntime": 1.2, "int8": 1.5}
ADE_VAL = Path(__file__).resolve().parents[1] / "../shared/data/ade20k-sample/ADEChallengeData2016/images/validation"


def calibration_folder(cache: Path) -> Path:
    """The ADE20K sample's validation images when present, else 4 deterministic noise images under `cache`."""
    if ADE_VAL.is_dir():
        return ADE_VAL
    folder = cache / "calibration"
    for i in range(4):
        if not (folder / f"{i}.png").is_file():
            write_image(folder / f"{i}.png", sample_images(1, 512, 512, seed=i)[0].permute(1, 2, 0).byte().numpy())
    return folder


def variants(ours, *, bf16: bool, int8: bool, onnx: bool, cache: Path, calibration: Calibration) -> dict:
    """{name: callable raw images [B, 3, H, W] -> outputs dict} (each prepared once, before any timing)."""
    runs = {"ours fp32": ours}
    if bf16:
        runs["ours bf16"] = AutocastModel(ours, torch.bfloat16)
    if int8:
        runs["ours int8"] = quantize_int8(ours)
    if onnx:
        runs["onnxruntime fp32"] = OnnxRuntimeModel(ours, cache_dir=cache)
        if int8:
            runs["onnxruntime int8"] = OnnxRuntimeModel(ours, int8=True, cache_dir=cache, calibration=calibration)
    return runs


def bench_model(kind: str, size: int, repeats: int, cache: Path, **which) -> dict:
    hf, hf_cfg = hf_model(kind)
    ours = build_hf_model(hf_cfg)
    load_hf_state_dict(ours, hf.state_dict())
    ours.optimize_for_inference()
    ours.eval()
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 255
    xn = (x - ours.pixel_mean) / ours.pixel_std
    runs = {k: (lambda f=f: f(x)) for k, f in variants(ours, cache=cache, **which).items()}
    runs["transformers fp32"] = lambda: hf(pixel_values=xn)
    kernels = peak_kernels()
    timed_fns = {**runs, **{k: fn for k, (fn, _) in kernels.items()}}  # the peak kernels interleaved with the runs
    with torch.inference_mode():
        ref = ours(x)
        agree = {k: deviation(ref, fn())["argmax_agree"] for k, fn in runs.items() if k != "transformers fp32"}
        for fn, _ in kernels.values():
            fn()  # warm-up
        times = {k: [] for k in timed_fns}
        for _ in range(repeats):
            for k, fn in timed_fns.items():
                times[k].append(timed(fn))
    base = times["ours fp32"]
    paired = {k: statistics.median(b / times[k][i] for i, b in enumerate(base)) for k in runs}
    peak = max(flops / statistics.median(times[k]) / 1e9 for k, (_, flops) in kernels.items())  # GFLOP/s
    st = measure(ours, (size, size), semantic_inference=False)
    gflop = {
        "ours": 2 * st.gflops_executed,
        "graph": 2 * (st.gflops - st.gflops_skipped - st.gflops_inference),  # exported: unfused, no Swin padding
    }
    median = {k: statistics.median(times[k]) for k in runs}
    return dict(kind=kind, median=median, paired=paired, agree=agree, peak=peak, gflop=gflop)


def floor_line(r: dict) -> str:
    """One sentence: each fp32 runner against its floor (GFLOP / peak GFLOP/s, seconds), and where the onnxruntime
    target would put the graph."""
    med, fl = r["median"], {k: g / r["peak"] for k, g in r["gflop"].items()}
    text = (
        f"{r['kind']}: peak {r['peak']:.0f} GFLOP/s; ours eager executes {r['gflop']['ours']:.1f} GFLOP (floor"
        f" {fl['ours'] * 1e3:.0f} ms), ours fp32 = {med['ours fp32'] / fl['ours']:.2f}x its floor"
    )
    if "onnxruntime fp32" in med:
        need = med["ours fp32"] / TARGETS["onnxruntime"] / fl["graph"]
        text += (
            f"; the exported graph executes {r['gflop']['graph']:.1f} GFLOP (floor {fl['graph'] * 1e3:.0f} ms),"
            f" onnxruntime fp32 = {med['onnxruntime fp32'] / fl['graph']:.2f}x it; the {TARGETS['onnxruntime']}x"
            f" target needs {need:.2f}x"
        )
    return text + "."


def report(results: list[dict], args, info: dict, load: tuple[float, float]) -> str:
    names = list(results[0]["median"])
    lines = [
        SECTION,
        "",
        f"{datetime.date.today()}, `benchmarks/bench_backends.py`: forward 1x3x{args.size}x{args.size} (no"
        f" post-processing), {args.threads} threads, median of {args.repeats}, all variants interleaved. CPU:"
        f" {info['cpu']}; flags {' '.join(info['cpu_flags'])}; native bf16: {info['native_bf16']}; torch"
        f" {info['torch']}. Load average {load[0]:.1f} before, {load[1]:.1f} after. Cells: median ms, speed-up vs"
        " ours fp32 (median of paired ratios), agree = pixels with the fp32 semantic label (random weights). ours"
        " int8: torch dynamic quantization of nn.Linear; onnxruntime int8: static QDQ quantization of Conv + MatMul"
        f" calibrated on {args.calibration_used}."
        f" Targets (issue 18): {', '.join(f'{k} >= {v}x' for k, v in TARGETS.items())} ours fp32.",
        "",
        "| model | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for r in results:
        cells = [
            f"{r['median'][k] * 1e3:.0f} ms, {r['paired'][k]:.2f}x"
            + (f", agree {r['agree'][k]:.4f}" if k in r["agree"] and k != "ours fp32" else "")
            for k in names
        ]
        lines.append(f"| {r['kind']} | " + " | ".join(cells) + " |")
    lines += ["", "Floors (the peak kernels timed in the same loop; see the module docstring):", ""]
    lines += [f"- {floor_line(r)}" for r in results]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--models", nargs="+", default=["r50", "swin_t"], choices=["r50", "swin_t"])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-int8", action="store_true")
    parser.add_argument("--no-onnx", action="store_true")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "maskformer_bench_onnx")
    parser.add_argument("--calibration", type=Path, help="images for onnxruntime int8 (default: see the docstring)")
    parser.add_argument("--write", action="store_true", help="write the section into benchmarks/RESULTS.md")
    args = parser.parse_args()
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    info = system_info()
    print(f"CPU {info['cpu']}; flags {' '.join(info['cpu_flags'])}; native bf16 {info['native_bf16']}", flush=True)
    before = os.getloadavg()[0]
    print(f"load average before: {before:.2f}", flush=True)
    folder = args.calibration or calibration_folder(args.cache)
    args.calibration_used = f"the first images of {folder.name}/ (up to {CALIBRATION_IMAGES})"
    test_size = InferenceConfig(min_size_test=args.size, max_size_test=4 * args.size)  # calibrated at the timed size
    which = dict(bf16=info["native_bf16"], int8=not args.no_int8, onnx=not args.no_onnx,
                 calibration=Calibration(folder, inference=test_size))
    results = []
    for kind in args.models:
        r = bench_model(kind, args.size, args.repeats, args.cache, **which)
        results.append(r)
        cells = {k: f"{v * 1e3:.0f} ms {r['paired'][k]:.2f}x" for k, v in r["median"].items()}
        print(kind, cells, {k: round(v, 4) for k, v in r["agree"].items()}, flush=True)
        print(floor_line(r), flush=True)
    after = os.getloadavg()[0]
    print(f"load average after: {after:.2f}")
    text = report(results, args, info, (before, after))
    print(text)
    if args.write:
        write_section(text, Path(__file__).with_name("RESULTS.md"), SECTION)


if __name__ == "__main__":
    main()
