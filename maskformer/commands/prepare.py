"""`maskformer prepare DATASET --root DIR`: convert a raw dataset download into the training format."""

from __future__ import annotations

import argparse
import sys

from ..data.prepare import PREPARERS
from ..io import DatasetError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", choices=sorted(PREPARERS), help="which conversion to run")
    parser.add_argument("--root", required=True, help="folder holding the raw download (as the reference describes)")
    parser.add_argument(
        "--categories",
        help="ade20k_full only: JSON list of {id, trainId, name} (the official 847-class mapping); "
        "default: derive the classes present in both splits from the index",
    )
    parser.add_argument(
        "--splits", default="train2017,val2017", help="coco_panoptic_semantic only: comma-separated splits"
    )


def run(args: argparse.Namespace) -> int:
    kw = {}
    if args.dataset == "ade20k_full":
        kw["categories"] = args.categories
    if args.dataset == "coco_panoptic_semantic":
        kw["splits"] = tuple(s for s in args.splits.split(",") if s)
    try:
        PREPARERS[args.dataset](args.root, **kw)
    except (DatasetError, FileNotFoundError) as e:
        print(f"maskformer prepare {args.dataset}: {e}", file=sys.stderr)
        return 1
    return 0
