"""CamVid: MaskFormer vs PerPixelBaseline vs PerPixelBaseline+ with the same ResNet-18 backbone and the same
wall-clock training budget, from scratch, on ../shared/data/camvid train; val mIoU at the native 360x480.

For each model: a short calibration measures seconds per iteration and sets max_iter so that the poly schedule ends
at the budget; a fresh model then trains while the validation mIoU is measured about every `--eval-every` minutes
of training (evaluation time is not counted in the budget), and at each evaluation max_iter is re-fitted to the
rate measured so far (the machine is shared: its speed drifts). Writes <out>/camvid.json, <out>/camvid_curves.png and
prints a markdown table for benchmarks/RESULTS.md.

  .venv/bin/python benchmarks/camvid.py --budget-min 30 [--models maskformer per_pixel_baseline ...] [--opts ...]
  .venv/bin/python benchmarks/camvid.py --gather out/a out/b --out out/all    # one table from separate runs
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from maskformer.config import get_preset
from maskformer.engine.loop import Trainer
from maskformer.engine.plots import plot_panels
from maskformer.evaluation.loop import evaluate_model

ARCHS = ("maskformer", "per_pixel_baseline", "per_pixel_baseline_plus")
DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"


class BudgetClock:
    """Training wall-clock (evaluation excluded) and the (minutes, mIoU) curve, fed by the Trainer's evaluate_fn."""

    def __init__(self, cfg, budget_min: float):
        self.cfg, self.start, self.eval_s, self.curve, self.last = cfg, time.perf_counter(), 0.0, [], {}
        self.budget_min, self.trainer = budget_min, None

    def train_minutes(self) -> float:
        return (time.perf_counter() - self.start - self.eval_s) / 60

    def fit_budget(self, trainer, budget_min: float) -> None:
        """Move max_iter so that, at the rate measured so far, the poly schedule ends when the budget does."""
        it, used = trainer.iteration, self.train_minutes()
        if 0 < it < trainer.cfg.train.max_iter and used > 0:  # never re-open a finished schedule
            trainer.cfg.train.max_iter = max(it + 1, int(it * budget_min / used))

    def evaluate(self, model, dataset) -> dict:
        if self.trainer is not None:
            self.fit_budget(self.trainer, self.budget_min)
        minutes, t0 = self.train_minutes(), time.perf_counter()
        self.last = evaluate_model(model, dataset, task="semantic", cfg=self.cfg, batch_size=4)
        self.eval_s += time.perf_counter() - t0
        self.curve.append((round(minutes, 2), self.last["mIoU"]))
        print(f"    {minutes:5.1f} min: val mIoU {self.last['mIoU']:.4f} (eval {time.perf_counter() - t0:.0f} s)")
        return self.last


def seconds_per_iter(cfg, out: Path, iters: int, args) -> float:
    """Seconds per iteration of a throw-away run, iterations 3..iters (warm-up excluded)."""
    c = cfg.copy()
    c.train.max_iter, c.train.eval_period, c.train.checkpoint_period = iters, 0, 0
    tr = Trainer(c, out, threads=args.threads, progress=False)
    tr.run(stop_at=2)
    t0 = time.perf_counter()
    tr.run(stop_at=iters)
    shutil.rmtree(out, ignore_errors=True)
    return (time.perf_counter() - t0) / (iters - 2)


def train_one(arch: str, args) -> dict:
    cfg = get_preset(f"{arch}_r18_camvid", [f"data.root={args.data_root}", *args.opts])
    out = Path(args.out) / arch
    shutil.rmtree(out, ignore_errors=True)
    spi = seconds_per_iter(cfg, out / "calib", args.calib_iters, args)
    cfg.train.max_iter = max(10, int(args.budget_min * 60 / spi))
    cfg.train.eval_period = max(1, int(args.eval_every * 60 / spi))
    cfg.train.checkpoint_period = cfg.train.max_iter
    print(f"{arch}: {spi:.2f} s/iter -> max_iter {cfg.train.max_iter}, eval every {cfg.train.eval_period} iters")
    clock = BudgetClock(cfg, args.budget_min)
    tr = Trainer(cfg, out, evaluate_fn=clock.evaluate, threads=args.threads, progress=not args.no_progress)
    clock.trainer, clock.start = tr, time.perf_counter()
    tr.run()
    per_class = {c["name"]: round(c["iou"], 4) for c in clock.last.get("per_class", [])}
    return {
        "arch": arch,
        "s_per_iter": round(spi, 3),
        "max_iter": tr.iteration,
        "train_minutes": round(clock.train_minutes(), 2),
        "curve": clock.curve,
        "final_mIoU": clock.last.get("mIoU"),
        "best_mIoU": max(v for _, v in clock.curve),
        "per_class_IoU": per_class,
        "params_M": round(sum(p.numel() for p in tr.model.parameters()) / 1e6, 2),
    }


def markdown(results: list[dict]) -> str:
    lines = [
        "| model | params | s/iter | iters | train min | final val mIoU | best val mIoU |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['arch']} | {r['params_M']} M | {r['s_per_iter']} | {r['max_iter']} | {r['train_minutes']} "
            f"| {r['final_mIoU']:.4f} | {r['best_mIoU']:.4f} |"
        )
    names = list(results[0]["per_class_IoU"]) if results else []
    lines += ["", "| class | " + " | ".join(r["arch"] for r in results) + " |", "|---|" + "---:|" * len(results)]
    lines += [
        f"| {n} | " + " | ".join(f"{r['per_class_IoU'].get(n, float('nan')):.3f}" for r in results) + " |"
        for n in names
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-min", type=float, default=30.0, help="training minutes per model")
    p.add_argument("--eval-every", type=float, default=5.0, help="minutes of training between evaluations")
    p.add_argument("--models", nargs="+", default=list(ARCHS), choices=ARCHS)
    p.add_argument("--data-root", default=str(DEFAULT_ROOT))
    p.add_argument("--out", default="benchmarks/out/camvid")
    p.add_argument("--opts", nargs="*", default=[], help="config overrides for every model")
    p.add_argument("--calib-iters", type=int, default=12)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--gather", nargs="+", metavar="DIR", help="no training: combine earlier runs' camvid.json")
    args = p.parse_args()
    out = Path(args.out)
    if args.gather:
        results = [r for d in args.gather for r in json.loads(Path(d, "camvid.json").read_text())["results"]]
    else:
        if not Path(args.data_root, "meta.json").is_file():
            raise SystemExit(f"CamVid not found at {args.data_root} (expected meta.json, images/, labels/)")
        results = []
        for arch in args.models:  # camvid.json is rewritten after each model: a stopped run keeps what finished
            results.append(train_one(arch, args))
            out.mkdir(parents=True, exist_ok=True)
            (out / "camvid.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    out.mkdir(parents=True, exist_ok=True)
    if args.gather:
        (out / "camvid.json").write_text(json.dumps({"gathered": args.gather, "results": results}, indent=1))
    curves = {r["arch"]: ([m for m, _ in r["curve"]], [v for _, v in r["curve"]]) for r in results}
    plot_panels([("CamVid val mIoU (360x480)", curves)], out / "camvid_curves.png", xlabel="training minutes")
    print(markdown(results))


if __name__ == "__main__":
    main()
