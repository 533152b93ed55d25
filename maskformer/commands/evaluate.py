"""`maskformer eval`: run a model over a dataset split and report mIoU (+ PQ^St), PQ or mask AP.

Prints the per-class table and the summary, and writes the full results as JSON (default eval_<task>.json).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from maskformer.backends import BACKENDS, resolve
from maskformer.commands.options import check_args, loud_warnings
from maskformer.precision import PRECISIONS, system_info
from maskformer.structures import TASKS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a model directory (maskformer convert / train) or a preset")
    parser.add_argument("--data", help="dataset root (default: the model config's data.root)")
    parser.add_argument("--split", help="dataset split (default: the config's data.val_split)")
    parser.add_argument("--task", choices=TASKS, help="default: the config's task")
    parser.add_argument("--tta", action="store_true", help="multi-scale + flip test-time augmentation (semantic)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="auto: bf16 where the hardware has it")
    parser.add_argument("--backend", choices=BACKENDS, default="torch", help="onnxruntime: the exported graph (CPU)")
    parser.add_argument("--calibration", metavar="DIR", help="int8 on onnxruntime: images to calibrate on")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2, help="data-loading worker processes")
    parser.add_argument("--max-images", type=int, help="evaluate only the first N images")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--json", help="where to write the results (default: eval_<task>.json)")
    parser.add_argument("--no-per-class", action="store_true", help="print only the summary")


def run(args: argparse.Namespace) -> int:
    import torch

    from maskformer.data import DatasetError, build_dataset
    from maskformer.evaluation.loop import evaluate_model
    from maskformer.evaluation.report import format_instance, format_panoptic, format_semantic
    from maskformer.hub import load_model
    from maskformer.io import save_json
    from maskformer.sharding import is_main, process_group

    check_args(args, out_folder=str(Path(args.json).parent) if args.json else ".")  # before any work
    with process_group(args.device or (None if args.backend == "torch" else "cpu")), loud_warnings():  # sharded
        device = args.device or ("cuda" if torch.cuda.is_available() and args.backend == "torch" else "cpu")
        try:
            resolve(args.backend, args.precision, device)  # a bad combination: one line before loading anything
            model, cfg, meta = load_model(args.model, device, overrides=args.opts)
            task = args.task or cfg.inference.task
            data_cfg = replace(cfg.data, root=args.data) if args.data else cfg.data
            target = "semantic" if task == "semantic" else "panoptic"
            dataset = build_dataset(data_cfg, args.split or cfg.data.val_split, train=False, target=target)
            results = evaluate_model(  # the pipeline checks the model's classes against the dataset's
                model, dataset, task=task, tta=args.tta, cfg=cfg, batch_size=args.batch_size, num_workers=args.workers,
                max_images=args.max_images, progress=sys.stderr.isatty(), precision=args.precision,
                backend=args.backend, calibration=args.calibration,
                cache_dir=args.model if Path(args.model).is_dir() else None,
            )  # fmt: skip
        except (ValueError, KeyError, FileNotFoundError, DatasetError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        if not is_main():  # several processes (torchrun): the first one reports
            return 0
        fmt = {"semantic": format_semantic, "panoptic": format_panoptic, "instance": format_instance}[task]
        print(fmt(results, per_class=not args.no_per_class))
        system = system_info()
        print(
            f"precision {results['precision']} (asked {args.precision}), backend {results['backend']}, "
            f"device {device}; CPU {system['cpu']}, native bf16 {'yes' if system['native_bf16'] else 'no'}, "
            f"auto -> {system['auto_precision_cpu']}"
        )
        out = args.json or f"eval_{task}.json"
        doc = {"model": str(args.model), "dataset": dataset.source, "tta": args.tta, **results, "device": str(device)}
        save_json(out, {**doc, "system": system}, indent=1)
        print(f"wrote {out}")
        return 0
