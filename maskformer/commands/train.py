"""`maskformer train`: train a preset on a dataset; `torchrun --nproc_per_node N -m maskformer train ...` for DDP
(examples: README "Data" and "Training recipe")."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from maskformer.commands.options import at_least
from maskformer.config import Config, apply_overrides, get_preset

DEFAULT_PRESET = "maskformer_r18_camvid"  # ResNet-18, narrow heads, small crops: trains on a CPU
CLASS_FILES = ("meta.json", "classes.txt")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", help=f"model preset (see `maskformer models`; default {DEFAULT_PRESET})")
    parser.add_argument("--config", help="a config.json (e.g. from a previous run) instead of --preset")
    parser.add_argument("--data-root", help="dataset folder (sets data.root)")
    parser.add_argument(
        "--opts", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. train.max_iter=1000"
    )
    parser.add_argument("--out", required=True, help="output folder: checkpoints, metrics.jsonl, curves.png, model/")
    parser.add_argument(
        "--resume", nargs="?", const="latest", metavar="PATH",
        help="continue from the newest intact checkpoint in --out, or from PATH (a checkpoint directory)",
    )  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="replace a previous run in --out (default: refuse)")
    parser.add_argument(
        "--init-weights", metavar="REF",
        help="initial weights: a backbone (file, URL or ImageNet name such as R-50) or a full model (file, model "
        "directory, zoo name, hub id or URL)",
    )  # fmt: skip
    parser.add_argument("--init-kind", choices=("auto", "full", "backbone"), default="auto")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads per process (0: torch's default)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to metrics.jsonl)")


def resolve_config(args: argparse.Namespace) -> Config:
    """Preset / config file / resumed run's config / the default CPU preset, then --data-root, --opts, and for a
    folder of your own (a class-names file in --data-root) the classes, ignore value and recipe of the data."""
    if args.preset and args.config:
        raise SystemExit("maskformer train: give either --preset or --config, not both")
    resumed = args.resume is not None and (Path(args.out) / "config.json").is_file()
    if args.config or (resumed and not args.preset):
        from maskformer.checkpoint import read_json

        doc = read_json(Path(args.config or Path(args.out) / "config.json"))  # bad JSON: an error naming the file
        cfg = Config.from_dict(doc.get("config", doc))  # a model directory's config.json nests it under "config"
    elif args.preset or args.data_root:
        cfg = get_preset(args.preset or DEFAULT_PRESET)
    else:
        raise SystemExit(
            f"maskformer train: --preset NAME is required unless --data-root DIR is given (then "
            f"{DEFAULT_PRESET} is the default), or give --config FILE, or --resume with an existing --out"
        )
    cfg = apply_overrides(cfg, list(args.opts) + ([f"data.root={args.data_root}"] if args.data_root else []))
    return fit_to_folder(cfg, Path(args.data_root), args.opts) if args.data_root else cfg


def fit_to_folder(cfg: Config, root: Path, opts: list[str]) -> Config:
    """A folder dataset (ROOT/labels/ and a class-names file, see maskformer.data.semantic.folder) sets data.format,
    model.num_classes, data.ignore_label, the splits, the semantic recipe and task, unless --opts sets them."""
    folder_format = cfg.data.format in ("folder", "camvid")
    if not (folder_format or (root / "labels").is_dir()) or not any((root / n).is_file() for n in CLASS_FILES):
        return cfg
    from maskformer.data.semantic import read_class_spec

    spec = read_class_spec(root)
    k = len(spec["classes"])
    train_split = cfg.data.train_split if (root / "images" / cfg.data.train_split).is_dir() else "train"
    val_split = cfg.data.val_split if (root / "images" / cfg.data.val_split).is_dir() else "val"
    fitted = {"data.format": "folder", "model.num_classes": k, "data.ignore_label": spec.get("ignore_label", 255)}
    fitted |= {"data.recipe": "semantic", "inference.task": "semantic"}
    fitted |= {"data.train_split": train_split, "data.val_split": val_split}
    if cfg.model.arch == "per_pixel_baseline_plus":
        fitted["model.num_queries"] = k
    given = {o.split("=", 1)[0].strip() for o in opts}
    fit = [f"{key}={value}" for key, value in fitted.items() if key not in given]
    print(f"data: folder dataset {root} with {k} classes ({', '.join(fit)})", file=sys.stderr)
    return apply_overrides(cfg, fit)


def run(args: argparse.Namespace) -> int:
    from maskformer.engine import distributed as D
    from maskformer.engine.loop import NonFiniteLossError, Trainer
    from maskformer.engine.state import prepare_out_dir

    try:
        cfg = resolve_config(args)
        at_least("--threads", args.threads, 0)
        if os.environ.get("RANK", "0") == "0":  # before any work: a writable --out that holds no other run
            prepare_out_dir(Path(args.out), resume=args.resume is not None, overwrite=args.overwrite)
        trainer = Trainer(
            cfg, args.out, init_weights=None if args.resume is not None else args.init_weights,
            init_kind=args.init_kind, device=args.device, threads=args.threads, progress=not args.no_progress,
            overwrite=args.overwrite,
        )  # fmt: skip
        if args.resume is not None:
            ckpt = trainer.resume(args.resume)
            if trainer.dist.is_main:
                print(f"resumed from {ckpt} at iteration {trainer.iteration}")
        trainer.run()
    except NonFiniteLossError as e:
        print(f"maskformer train: {e}", file=sys.stderr)
        return 1
    except (KeyError, ValueError, OSError) as e:  # config, data, checkpoint, device or output folder: one line
        print(f"maskformer train: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr)
        return 2
    finally:
        D.cleanup()
    if trainer.dist.is_main:
        print(f"finished {trainer.iteration} iterations; outputs in {trainer.out}")
        if best := trainer.best:
            print(f"best {best['metric']} = {best['value']:.4f} at iteration {best['iteration']}")
    return 0
