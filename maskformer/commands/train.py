"""`maskformer train`: train a preset on a dataset; `torchrun --nproc_per_node N -m maskformer train ...` for DDP.

Examples:
  maskformer train --preset maskformer_r50_ade20k --data-root datasets/ADEChallengeData2016 --out runs/r50
  maskformer train --preset maskformer_r18_camvid --data-root ../shared/data/camvid --out runs/c
  maskformer train --out runs/r50 --resume                 # continue the newest checkpoint with its saved config
  torchrun --nproc_per_node 8 -m maskformer train --preset maskformer_swin_t_ade20k --data-root ... --out runs/swin
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from maskformer.config import Config, apply_overrides, get_preset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", help="model preset (see `maskformer models`); optional with --resume")
    parser.add_argument("--config", help="a config.json (e.g. from a previous run) instead of --preset")
    parser.add_argument("--data-root", help="dataset folder (sets data.root)")
    parser.add_argument(
        "--opts", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. train.max_iter=1000"
    )
    parser.add_argument("--out", required=True, help="output folder: checkpoints, metrics.jsonl, curves.png, model/")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        metavar="PATH",
        help="continue from the newest checkpoint in --out, or from PATH (a checkpoint directory)",
    )
    parser.add_argument("--init-weights", metavar="FILE", help="initial weights: backbone (ImageNet) or full model")
    parser.add_argument("--init-kind", choices=("auto", "full", "backbone"), default="auto")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads per process (0: torch's default)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to metrics.jsonl)")


def resolve_config(args: argparse.Namespace) -> Config:
    """Preset / config file / resumed run's config, then --data-root and --opts."""
    if args.preset and args.config:
        raise SystemExit("maskformer train: give either --preset or --config, not both")
    if args.preset:
        cfg = get_preset(args.preset)
    elif args.config:
        cfg = _read_config(Path(args.config))
    elif args.resume is not None and (Path(args.out) / "config.json").is_file():
        cfg = _read_config(Path(args.out) / "config.json")
    else:
        raise SystemExit(
            "maskformer train: --preset NAME is required (or --config FILE, or --resume with an existing --out)"
        )
    opts = list(args.opts) + ([f"data.root={args.data_root}"] if args.data_root else [])
    return apply_overrides(cfg, opts)


def _read_config(path: Path) -> Config:
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"maskformer train: cannot read config {path}: {e}") from None
    return Config.from_dict(doc.get("config", doc))  # a model directory's config.json nests it under "config"


def run(args: argparse.Namespace) -> int:
    from maskformer.checkpoint import CheckpointError
    from maskformer.data import DatasetError
    from maskformer.engine import distributed as D
    from maskformer.engine.loop import NonFiniteLossError, Trainer

    try:
        cfg = resolve_config(args)
    except (KeyError, ValueError) as e:  # unknown preset / override key / bad value: the message names it
        print(f"maskformer train: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    try:
        trainer = Trainer(
            cfg,
            args.out,
            init_weights=None if args.resume is not None else args.init_weights,
            init_kind=args.init_kind,
            device=args.device,
            threads=args.threads,
            progress=not args.no_progress,
        )
        if args.resume is not None:
            ckpt = trainer.resume(args.resume)
            if trainer.dist.is_main:
                print(f"resumed from {ckpt} at iteration {trainer.iteration}")
        result = trainer.run()
    except NonFiniteLossError as e:
        print(f"maskformer train: {e}", file=sys.stderr)
        return 1
    except (FileNotFoundError, DatasetError, CheckpointError) as e:  # missing/bad data, checkpoint or weights
        print(f"maskformer train: {e}", file=sys.stderr)
        return 2
    finally:
        D.cleanup()
    if trainer.dist.is_main:
        print(f"finished {result.iteration} iterations; outputs in {result.out_dir}")
        if result.best:
            print(f"best {result.best['metric']} = {result.best['value']:.4f} at iteration {result.best['iteration']}")
    return 0
