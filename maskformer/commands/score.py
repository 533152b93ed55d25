"""`maskformer score`: score prediction files against ground-truth files (mIoU & co. or PQ), no model involved.

Semantic: `--gt GT_DIR --pred PRED_DIR --num-classes K [--ignore 255] [--reduce-zero-label]` (label maps by file stem).
Panoptic: `--gt panoptic_val.json --pred predictions.json [--gt-folder D] [--pred-folder D]` (COCO format).
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gt", required=True, help="GT label-map folder (semantic) or COCO panoptic GT JSON")
    parser.add_argument("--pred", required=True, help="predicted label-map folder (semantic) or prediction JSON")
    parser.add_argument("--task", choices=("semantic", "panoptic"), help="default: panoptic when --gt is a .json")
    parser.add_argument("--gt-folder", help="panoptic GT PNG folder (default: the GT JSON path without .json)")
    parser.add_argument("--pred-folder", help="panoptic prediction PNG folder (default: the JSON path without .json)")
    parser.add_argument("--num-classes", type=int, help="semantic: number of classes K (labels 0..K-1)")
    parser.add_argument("--ignore", type=int, default=255, help="semantic: GT ignore label (default 255)")
    parser.add_argument("--reduce-zero-label", action="store_true", help="semantic: GT 0 -> ignore, x -> x-1 (ADE20K)")
    parser.add_argument("--class-names", help="semantic: JSON list or text file (one name a line) of class names")
    parser.add_argument("--workers", type=int, help="decoding processes (0: in this process; default: CPU count, <=8)")
    parser.add_argument("--json", help="write the full results (per class included) to this JSON file")
    parser.add_argument("--no-per-class", action="store_true", help="print only the summary")


def run(args: argparse.Namespace) -> int:
    from maskformer.evaluation.files import score_panoptic, score_semantic
    from maskformer.evaluation.report import format_panoptic, format_semantic
    from maskformer.io import read_names, save_json

    task = args.task or ("panoptic" if args.gt.endswith(".json") else "semantic")
    try:
        if task == "panoptic":
            results = score_panoptic(
                args.gt, args.pred, gt_folder=args.gt_folder, pred_folder=args.pred_folder, workers=args.workers
            )
            text = format_panoptic(results, per_class=not args.no_per_class)
        else:
            if args.num_classes is None:
                print("error: semantic scoring needs --num-classes K", file=sys.stderr)
                return 2
            names = read_names(args.class_names) if args.class_names else None
            results = score_semantic(
                args.gt, args.pred, num_classes=args.num_classes, ignore_label=args.ignore,
                reduce_zero_label=args.reduce_zero_label, class_names=names, workers=args.workers,
            )  # fmt: skip
            text = format_semantic(results, per_class=not args.no_per_class)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(text)
    if args.json:
        save_json(args.json, {"task": task, "gt": args.gt, "pred": args.pred, **results}, indent=1)  # NaN -> null
        print(f"wrote {args.json}")
    return 0
