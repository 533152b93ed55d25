"""Backbone forward speed at 512x512, batch 1, eval, 2 threads: this package vs transformers' with the same weights.

One process, variants interleaved round by round, median of --repeats:
  swin_t          ours (SDPA attention, cached window layouts, qkv/proj on real tokens only)
  swin_t/eager    ours with the explicit softmax attention
  swin_t/hf       transformers' MaskFormerSwinBackbone
  r50             ours (FrozenBN folded into the convs, channels-last)
  r50/unfolded    ours with conv + separate FrozenBN scale/shift (train mode: same function for FrozenBN)
  r50/hf          transformers' ResNetBackbone (BatchNorm2d, eval), NCHW
  r50/hf-cl       the same with a channels-last input
  */bf16          ours under torch.autocast("cpu", bfloat16) (slow on CPUs without native bf16)
FLOPs (2 per multiply-add) from torch.utils.flop_counter with explicit attention; "floor" = FLOPs / the best GFLOP/s of
an fp32 2048^3 matmul and a channels-last 3x3 conv, timed interleaved with the variants (same load).

  .venv/bin/python benchmarks/bench_backbones.py [--repeats 7] [--size 512] [--no-bf16] [--no-write]

Writes the table under "## A: backbones" in benchmarks/RESULTS.md (only that section).
"""

from __future__ import annotations

import argparse
import datetime
import re
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from maskformer.backbones import build_backbone  # noqa: E402
from maskformer.backbones.swin import WindowAttention  # noqa: E402
from maskformer.convert.hf_backbone import hf_backbone_to_official  # noqa: E402

RESULTS = ROOT / "benchmarks" / "RESULTS.md"
SECTION = "## A: backbones"
S4 = ["stage1", "stage2", "stage3", "stage4"]


def hf_backbones():
    """transformers' Swin-T (MaskFormer variant) and ResNet-50 backbones, eval."""
    import transformers as tr
    from transformers.models.maskformer.configuration_maskformer_swin import MaskFormerSwinConfig
    from transformers.models.maskformer.modeling_maskformer_swin import MaskFormerSwinBackbone

    swin = MaskFormerSwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7)
    swin.out_features = S4
    r50 = tr.ResNetConfig(embedding_size=64, depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048], out_features=S4)
    return MaskFormerSwinBackbone(swin).eval(), tr.ResNetBackbone(r50).eval()


def randomize_(module: torch.nn.Module) -> None:
    """Non-trivial norms, biases, BN statistics and bias tables (HF inits many to constants)."""
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.uniform_(0.5, 2.0)
            elif "bias_table" in name or t.dim() == 1:
                t.normal_(1.0 if name.endswith("weight") and t.dim() == 1 else 0.0, 0.1)


class EagerAttention:
    """Context: our Swin with the explicit softmax attention."""

    def __enter__(self):
        WindowAttention.use_sdpa = False

    def __exit__(self, *exc):
        WindowAttention.use_sdpa = True


def flops(fn) -> float:
    """Hardware FLOPs (2 per MAC) of one call, explicit attention so the counter sees the matmuls."""
    from torch.utils.flop_counter import FlopCounterMode

    with EagerAttention(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def peak_jobs() -> dict:
    """Reference kernels {name: (fn, FLOPs)}: fp32 2048^3 matmul, channels-last conv3x3 256->256 at 128x128."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    x = torch.randn(1, 256, 128, 128).contiguous(memory_format=torch.channels_last)
    w = torch.randn(256, 256, 3, 3).contiguous(memory_format=torch.channels_last)
    return {
        "peak/matmul": (lambda: a @ b, 2 * 2048**3),
        "peak/conv3x3": (lambda: F.conv2d(x, w, padding=1), 2 * 256 * 2304 * 128**2),
    }


def rel_diff(a: dict, b) -> float:
    """max |a - b| / max |b| over the four maps."""
    return max(((x.float() - y.float()).abs().max() / y.abs().max()).item() for x, y in zip(a.values(), b))


def build(args):
    """Variants {name: (callable, model-for-flops-or-None)} sharing one input; weights mapped from transformers."""
    hf_swin, hf_r50 = hf_backbones()
    randomize_(hf_swin)
    randomize_(hf_r50)
    swin = build_backbone("swin_t").eval()
    swin.load_state_dict(hf_backbone_to_official(hf_swin.state_dict(), "swin"))
    r50 = build_backbone("resnet50").eval()
    r50.load_state_dict(hf_backbone_to_official(hf_r50.state_dict(), "resnet"))
    r50_unfolded = build_backbone("resnet50").train()  # FrozenBN: identical function, conv and scale/shift apart
    r50_unfolded.load_state_dict(r50.state_dict())
    x = torch.randn(1, 3, args.size, args.size)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        print(f"max |ours - hf| / max |hf|: swin_t {rel_diff(swin(x), hf_swin(x).feature_maps):.1e}", end=", ")
        print(f"r50 {rel_diff(r50(x), hf_r50(x).feature_maps):.1e}, folded vs unfolded "
              f"{rel_diff(r50(x), r50_unfolded(x).values()):.1e}")  # fmt: skip

    def bf16(model):
        def run():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model(x)

        return run

    def eager(model):
        def run():
            with EagerAttention():
                return model(x)

        return run

    variants = {
        "swin_t": lambda: swin(x),
        "swin_t/eager": eager(swin),
        "swin_t/hf": lambda: hf_swin(x),
        "r50": lambda: r50(x),
        "r50/unfolded": lambda: r50_unfolded(x),
        "r50/hf": lambda: hf_r50(x),
        "r50/hf-cl": lambda: hf_r50(x_cl),
    }
    if args.bf16:
        variants.update({"swin_t/bf16": bf16(swin), "r50/bf16": bf16(r50)})
    counts = {"swin_t": flops(lambda: swin(x)), "swin_t/hf": flops(lambda: hf_swin(x))}
    counts.update({"r50": flops(lambda: r50(x)), "r50/hf": flops(lambda: hf_r50(x))})
    return variants, counts


def run(args) -> tuple[dict, dict, float]:
    """Medians (ms) of every variant and of the peak kernels, interleaved round by round (same load for all)."""
    torch.set_num_threads(2)
    torch.manual_seed(0)
    variants, counts = build(args)
    peaks = peak_jobs()
    variants.update({k: fn for k, (fn, _) in peaks.items()})
    times = {k: [] for k in variants}
    with torch.inference_mode():
        for fn in variants.values():
            fn()
        for _ in range(args.repeats):
            for name, fn in variants.items():
                times[name].append(timed(fn))
    medians = {k: statistics.median(v) * 1000 for k, v in times.items()}
    peak = max(n / medians.pop(k) / 1e6 for k, (_, n) in peaks.items())  # GFLOP/s
    return medians, counts, peak


def table(args, medians: dict, counts: dict, peak: float) -> str:
    date = datetime.date.today().isoformat()
    lines = [
        SECTION,
        "",
        f"`benchmarks/bench_backbones.py`, {date}: 1x3x{args.size}x{args.size}, eval, fp32 unless noted, "
        f"2 threads, interleaved, median of {args.repeats}. Peak (best of fp32 matmul / channels-last conv3x3, "
        f"timed in the same rounds): {peak:.0f} GFLOP/s. FLOPs: 2 per multiply-add, explicit attention. "
        "Absolute times are noisy on this shared machine; compare ratios.",
        "",
        "| variant | median ms | vs transformers | GFLOP | achieved GFLOP/s | x floor |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, ms in medians.items():
        family = name.split("/")[0]
        ref = medians[f"{family}/hf"]
        n = counts.get(name) or counts.get(family)
        gf = n / 1e9
        lines.append(
            f"| {name} | {ms:.0f} | {ref / ms:.2f}x | {gf:.2f} | {gf / ms * 1e3:.0f} | {ms / (gf / peak * 1e3):.2f} |"
        )
    lines.append("")
    lines.append(
        "GFLOP of `swin_t` rows = what ours executes (qkv/proj skip window-padding tokens); `swin_t/hf` = "
        "transformers' count, which includes them. `/bf16` rows run bf16 autocast; CPUs without AVX512-BF16/AMX "
        "emulate it (slower)."
    )
    return "\n".join(lines) + "\n"


def write_section(text: str) -> None:
    """Replace (or append) this part's section of RESULTS.md, leaving the other sections untouched."""
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    new = pattern.sub(lambda _: text + "\n", old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + text
    RESULTS.write_text(new.rstrip("\n") + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--no-bf16", dest="bf16", action="store_false")
    parser.add_argument("--no-write", dest="write", action="store_false")
    args = parser.parse_args()
    medians, counts, peak = run(args)
    text = table(args, medians, counts, peak)
    print(text)
    if args.write:
        write_section(text)


if __name__ == "__main__":
    main()
