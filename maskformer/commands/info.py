"""`maskformer info PRESET`: parameters and GFLOPs (multiply-adds, semantic inference included) at the crop size,
counted on the meta device (no weights are allocated; what is counted: maskformer/modeling/flops.py).
`maskformer info --system`: this machine as inference sees it (maskformer.precision.system_info).
"""

from __future__ import annotations

import argparse
import json

from maskformer.config import PAPER_NUMBERS, get_preset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("preset", nargs="?", help="preset name (see `maskformer models`)")
    parser.add_argument("--system", action="store_true", help="describe this machine (CPU, flags, threads, auto)")
    parser.add_argument("--size", nargs=2, type=int, metavar=("H", "W"), help="input size (default: the crop size)")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--no-inference", action="store_true", help="count the network forward only")
    parser.add_argument("--json", action="store_true", help="print JSON")


def _text(d: dict) -> str:
    h, w = d["image_size"]
    lines = [
        f"{d['preset']}",
        f"  parameters  {d['params'] / 1e6:8.2f} M   (backbone {d['params_backbone'] / 1e6:.2f} M)"
        + (f"   paper {d['paper_params_m']} M" if d["paper_params_m"] else ""),
        f"  GFLOPs      {d['gflops']:8.2f}     at {h}x{w}, multiply-adds"
        + (f"   paper {d['paper_gflops']}" if d["paper_gflops"] else ""),
    ]
    parts = ("backbone", "pixel_decoder", "predictor", "inference")
    lines += [f"    {part:<14}{d['gflops_' + part]:8.2f}" for part in parts]
    executed = "(this implementation in eval: fused mask conv, no Swin padding)"
    return "\n".join([*lines, f"  executed    {d['gflops_executed']:8.2f}     {executed}"])


def run(args: argparse.Namespace) -> int:
    if args.system:
        from maskformer.precision import describe, system_info

        print(json.dumps(system_info(), indent=1) if args.json else describe(system_info()))
        if not args.preset:
            return 0
    if not args.preset:
        print("maskformer info: give a preset name or --system")
        return 2
    from maskformer.modeling.flops import model_stats

    try:
        cfg = get_preset(args.preset, list(args.opts))
        size = tuple(args.size) if args.size else None
        stats = model_stats(cfg, size, semantic_inference=not args.no_inference).to_dict()
    except KeyError as e:
        print(f"maskformer info: {e.args[0]}")
        return 2
    params, gflops = PAPER_NUMBERS.get(args.preset, (None, None))
    d = dict(preset=args.preset, **stats, paper_params_m=params, paper_gflops=gflops)
    print(json.dumps(d, indent=1) if args.json else _text(d))
    return 0
