"""onnxruntime vs torch CPU latency of the exported tensor graph (default: R50 ADE20K preset, 1 x 3 x 512 x 512).

Run: .venv/bin/python benchmarks/bench_onnx.py [--preset maskformer_r50_ade20k] [--size 512] [--repeats 7]
Both runtimes use 2 threads; calls are interleaved (torch eager, torch optimize_for_inference, onnxruntime) in one
process, median of the repeats after warm-up; the outputs are compared too. Writes the section "## checkpoints and
interop" of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import re
import statistics
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION = "## checkpoints and interop"


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def measure(preset: str, size: int, repeats: int, warmup: int) -> dict:
    from maskformer.convert import load_model
    from maskformer.export import export_onnx, onnx_session, sample_images

    torch.set_num_threads(2)
    model, _, _ = load_model(preset)
    tuned = copy.deepcopy(model).optimize_for_inference()
    x = sample_images(1, size, size)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = export_onnx(model, Path(tmp) / "model.onnx")
        export_s = time.perf_counter() - t0
        session = onnx_session(path, threads=2)
        feed = {"images": x.numpy()}
        runs = {
            "torch eager": lambda: model(x),
            "torch optimize_for_inference": lambda: tuned(x),
            "onnxruntime": lambda: session.run(None, feed),
        }
        times: dict[str, list[float]] = {k: [] for k in runs}
        with torch.inference_mode():
            for i in range(warmup + repeats):
                for name, fn in runs.items():
                    t = timed(fn)
                    if i >= warmup:
                        times[name].append(t)
            ref, got = model(x), session.run(None, feed)
        refs = (ref["pred_logits"], ref["pred_masks"])
        diff = max(float((torch.from_numpy(g) - r).abs().max() / r.abs().max()) for g, r in zip(got, refs))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"median_ms": med, "export_s": export_s, "rel_diff": diff, "load": os.getloadavg()[1]}


def report(preset: str, size: int, repeats: int, res: dict) -> str:
    med = res["median_ms"]
    base = med["torch eager"]
    lines = [
        SECTION,
        "",
        f"`benchmarks/bench_onnx.py`, {datetime.date.today().isoformat()}: {preset}, 1x3x{size}x{size}, fp32, "
        f"2 threads, interleaved, median of {repeats}. Export took {res['export_s']:.1f} s; "
        f"onnxruntime vs torch: max |diff| / max |output| = {res['rel_diff']:.2g} (random weights). "
        f"5-minute load average during the run: {res['load']:.1f} on this machine's cores (shared).",
        "",
        "| runtime | median ms | torch eager / this |",
        "|---|---:|---:|",
    ]
    lines += [f"| {k} | {v:.0f} | {base / v:.2f}x |" for k, v in med.items()]
    return "\n".join(lines) + "\n"


def write_section(text: str) -> None:
    """Replace (or append) this part's section of RESULTS.md, leaving the other sections untouched."""
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    new = pattern.sub(lambda _: text + "\n", old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + text
    RESULTS.write_text(new)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="maskformer_r50_ade20k")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = ap.parse_args()
    res = measure(args.preset, args.size, args.repeats, args.warmup)
    text = report(args.preset, args.size, args.repeats, res)
    print(text)
    if not args.no_write:
        write_section(text)


if __name__ == "__main__":
    main()
