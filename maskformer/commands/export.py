"""`maskformer export --model DIR --format onnx|torch-export --out FILE [--check]`: see maskformer.export."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="model directory, checkpoint file, transformers directory or preset (random)"
    )
    parser.add_argument("--format", choices=("onnx", "torch-export"), default="onnx")
    parser.add_argument("--out", required=True, help="output file (.onnx or .pt2)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset")
    parser.add_argument(
        "--size", type=int, nargs=2, metavar=("H", "W"), default=None,
        help="sample image size for tracing (default: the config's crop size). Swin graphs accept only inputs that "
        "pad to the same multiple of 32 as this size; ResNet graphs accept any size",
    )  # fmt: skip
    parser.add_argument("--check", action="store_true", help="compare the exported graph with torch on samples")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="--check: max |difference| relative to max |out|")


def run(args: argparse.Namespace) -> int:
    from maskformer.commands.options import check_args, loud_warnings
    from maskformer.convert.safe_pickle import UnsafePickleError
    from maskformer.export import check_export, export
    from maskformer.hub import load_model

    check_args(args, out_file=args.out)  # bad values, an --out that cannot be written: before loading and tracing
    with loud_warnings():
        try:
            model, cfg, _ = load_model(args.model)
        except (ValueError, UnsafePickleError) as e:  # CheckpointError is a ValueError
            print(f"error: {e}", file=sys.stderr)
            return 1
        h, w = args.size or cfg.data.crop_size
        kwargs = {"opset": args.opset} if args.format == "onnx" else {}
        path = export(model, args.out, args.format, sample_size=(2, h, w), **kwargs)
        print(f"wrote {path} ({args.format}; input images [B, 3, H, W] raw RGB 0..255, dynamic B/H/W)")
        if not args.check:
            return 0
        sizes = [(2, h, w), (1, max(32, h - 13), max(32, w - 7)), (1, h // 2 + 5, w // 2 + 3)]
        try:
            results = check_export(model, path, args.format, sizes)
        except RuntimeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        for r in results:
            print(f"check {r['size']}: max |diff| {r['max_abs_diff']:.3g} (max |out| {r['max_abs_ref']:.3g})")
        worst = max(r["max_abs_diff"] / max(1.0, r["max_abs_ref"]) for r in results)
        if worst > args.tolerance:
            print(f"error: exported outputs differ from torch by {worst:.3g} > {args.tolerance}", file=sys.stderr)
            return 1
        print("check passed")
        return 0
