"""`maskformer convert SRC OUT_DIR`: official detectron2 (.pkl / .pth) or transformers checkpoints -> a model directory.

The architecture of a detectron2 file is read from its keys and shapes (backbone, R101c stem, "+6 Enc", per-pixel
baselines, K, Q); `--preset` names the preset to take the remaining settings from. Every missing or unexpected key is
reported by name; a shape mismatch is an error naming the key.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="detectron2 .pkl/.pth file, or a transformers directory (config.json + weights)")
    parser.add_argument("out_dir", help="model directory to write (config.json + model.safetensors)")
    parser.add_argument(
        "--preset", default=None, help="preset for the settings weights cannot show (default: inferred)"
    )
    parser.add_argument(
        "--num-classes", type=int, default=None, help="new class count: the class head is re-initialised (fine-tuning)"
    )
    parser.add_argument("--class-names", default=None, help="text file with one class name per line (optional)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing model directory")


def run(args: argparse.Namespace) -> int:
    from maskformer.checkpoint import CheckpointError, convert_transformers, is_model_dir, save_pretrained
    from maskformer.convert.safe_pickle import UnsafePickleError

    src, out = Path(args.src), Path(args.out_dir)
    if out.exists() and any(out.iterdir()) and not args.force:
        print(f"error: {out} exists and is not empty (use --force to overwrite)", file=sys.stderr)
        return 2
    try:
        if src.is_dir():
            if is_model_dir(src):
                raise CheckpointError(f"{src}: already a maskformer model directory")
            model, cfg, meta, report = convert_transformers(src)
            notes = ["source: transformers directory"]
        else:
            from maskformer.convert.detectron2 import convert_detectron2

            model, cfg, meta, report, notes = convert_detectron2(src, args.preset, args.num_classes)
        if args.class_names:
            meta = _with_class_names(meta, args.class_names)
        save_pretrained(model, cfg, meta, out)
    except (CheckpointError, UnsafePickleError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for line in [*notes, *report.lines()]:
        print(line)
    print(f"wrote {out} ({cfg.model.arch}, {cfg.model.backbone}, {cfg.model.num_classes} classes)")
    return 0


def _with_class_names(meta, path: str):
    """A copy of `meta` with the class names read from `path` (one per line); the count must match. Thing flags,
    dataset ids and the ignore label are kept; the palette too."""
    import dataclasses

    names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if len(names) != meta.num_classes:
        raise ValueError(f"{path}: {len(names)} class names, but the model has {meta.num_classes} classes")
    return dataclasses.replace(meta, class_names=names)
