"""`maskformer convert SRC OUT_DIR`: official detectron2 (.pkl / .pth) or transformers checkpoints -> a model directory.

The report names every key left out on purpose; a key that does not fit is an error and nothing is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="detectron2 .pkl/.pth file, or a transformers directory (config.json + weights)")
    parser.add_argument("out_dir", help="model directory to write (config.json + model.safetensors)")
    parser.add_argument("--preset", help="preset for the settings weights cannot show (default: inferred)")
    parser.add_argument("--num-classes", type=int, help="new class count: the class head is re-initialised (fine-tune)")
    parser.add_argument("--class-names", default=None, help="text file with one class name per line (optional)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing model directory")


def run(args: argparse.Namespace) -> int:
    from maskformer.checkpoint import save_pretrained
    from maskformer.convert import convert_source
    from maskformer.convert.safe_pickle import UnsafePickleError
    from maskformer.io import read_names

    out = Path(args.out_dir)
    if out.exists() and any(out.iterdir()) and not args.force:
        print(f"error: {out} exists and is not empty (use --force to overwrite)", file=sys.stderr)
        return 2
    try:
        names = read_names(args.class_names) if args.class_names else None
        model, cfg, meta, report = convert_source(
            args.src, preset=args.preset, num_classes=args.num_classes, class_names=names
        )
        save_pretrained(model, cfg, meta, out)
    except (UnsafePickleError, OSError, ValueError) as e:  # CheckpointError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(report)
    print(f"wrote {out} ({cfg.model.arch}, {cfg.model.backbone}, {cfg.model.num_classes} classes)")
    return 0
