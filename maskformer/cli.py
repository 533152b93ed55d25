"""`maskformer` command line: one subcommand per module in maskformer/commands/, imported only when used.

Each command module defines `add_arguments(parser)` and `run(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> (module under maskformer.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("models", "list the model presets"),
    "info": ("info", "parameters and GFLOPs of a preset"),
    "synth": ("synth", "write the built-in synthetic dataset (COCO panoptic + semantic PNGs)"),
    "prepare": ("prepare", "convert a raw dataset download into the training format"),
    "train": ("train", "train a model (torchrun for several processes)"),
    "eval": ("evaluate", "evaluate a model on a dataset (mIoU / PQ)"),
    "score": ("score", "score prediction files against ground-truth files"),
    "predict": ("predict", "run a model on images and write label maps, panoptic PNGs and overlays"),
    "convert": ("convert", "convert official detectron2 / transformers checkpoints into a model directory"),
    "cache": ("cache", "list or remove downloaded and converted models (MASKFORMER_HOME)"),
    "export": ("export", "export a model to ONNX or torch.export"),
    "serve": ("serve", "HTTP API (POST /predict) and a web page to look at segmentations"),
    "demo": ("demo", "synthetic data -> train a small model -> evaluate -> report, in minutes on a CPU"),
}


def build_parser() -> argparse.ArgumentParser:
    description = "MaskFormer: per-pixel classification is not all you need"
    parser = argparse.ArgumentParser(prog="maskformer", description=description)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser = build_parser()
        if argv and argv[0] not in ("-h", "--help"):
            parser.error(f"unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}")
        parser.print_help()
        return 0 if argv else 2
    name = argv[0]
    module = importlib.import_module(f"maskformer.commands.{COMMANDS[name][0]}")
    parser = argparse.ArgumentParser(prog=f"maskformer {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    from maskformer.cpu_tuning import keep_freed_memory  # imports no torch (score runs without it)

    keep_freed_memory()  # no page faults on re-allocated tensors; MASKFORMER_KEEP_FREED_MEMORY=0: off
    try:
        return int(module.run(args) or 0)
    except ValueError as e:  # OptionError, a bad option value: one line, before any work
        options = sys.modules.get("maskformer.commands.options")  # imported by the commands checking options only
        if options is None or not isinstance(e, options.OptionError):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `maskformer models | head`: the reader left; stop quietly, no traceback at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
