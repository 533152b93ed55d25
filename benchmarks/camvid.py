"""CamVid: MaskFormer vs PerPixelBaseline vs PerPixelBaseline+ with the same ResNet-18 backbone and the same
wall-clock training budget, from scratch, scored at the native 360x480 (11 classes, void ignored), on the usual
val split and on the held-out-sequence protocol (benchmarks/camvid_protocol.py: train on two of CamVid's three
drives, score on every frame of the third), plus on/off ablations of the recipe (benchmarks/camvid_ablations.py).

For each run: a short calibration measures seconds per iteration and sets max_iter so that the poly schedule ends
at the budget; a fresh model then trains while the mIoU is measured about every `--eval-every` minutes of training
(evaluation time is not counted in the budget), and at each evaluation max_iter is re-fitted to the rate measured
so far (the machine is shared: its speed drifts). Writes <out>/camvid.json, <out>/camvid_curves.png and prints a
markdown table for benchmarks/RESULTS.md. `--ablation NAME` trains the switch's on and off sides (same budget,
protocol and seeds, interleaved) and adds one line per protocol and model to `--ablation-table` (JSON + .md).

Real runs (a quiet 2-core machine, one command at a time; 30 training minutes per run plus evaluations):

  # the three models, usual val beside unseen drive 0016E5 (the drive the val frames are from; 6 runs, ~4 h):
  .venv/bin/python benchmarks/camvid.py --budget-min 30 --threads 2 --holdout val 0016E5 --out benchmarks/out/camvid
  # all three drives held out, MaskFormer only (3 runs):
  .venv/bin/python benchmarks/camvid.py --budget-min 30 --threads 2 --holdout all --models maskformer \
      --out benchmarks/out/camvid_all
  # one recipe change, on vs off (2 runs each), measured on drive 0006R0 so that nothing is tuned on the
  # reported numbers (usual val and unseen 0016E5, both from drive 0016E5):
  .venv/bin/python benchmarks/camvid.py --budget-min 30 --threads 2 --holdout 0006R0 --ablation scale_jitter \
      --out benchmarks/out/camvid_abl/scale_jitter
  #   NAME: scale_jitter crop photometric class_aware_crop lr warmup batch width queries no_object_weight
  #         deep_supervision amp point_loss, or custom --on-opts ... --off-opts ...
  #   the table: benchmarks/out/camvid_ablations.md (+ .json), one line per switch, protocol and model
  .venv/bin/python benchmarks/camvid.py --gather out/a out/b --out out/all    # one table from separate runs

Smoke test (seconds of training, a few scored frames; checks the plumbing only):

  .venv/bin/python benchmarks/camvid.py --budget-min 0.1 --calib-iters 3 --max-eval-images 4 --holdout val 0016E5 \
      --no-progress --threads 1 --opts train.batch_size=2 data.num_workers=0 --out /tmp/camvid_smoke
  (add --ablation NAME --seeds 1 2 --ablation-table /tmp/camvid_smoke/table.json for the ablation path)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the camvid_* modules beside this script

from camvid_ablations import SWITCHES, ablation_line, switch, write_table  # noqa: E402
from camvid_protocol import PROTOCOLS, expand, frame_counts, protocol_datasets  # noqa: E402

from maskformer.config import ConfigError, get_preset  # noqa: E402
from maskformer.engine.loop import Trainer  # noqa: E402
from maskformer.engine.metrics import plot_panels  # noqa: E402
from maskformer.evaluation.loop import evaluate_model  # noqa: E402

PAPER_ARCHS = ("maskformer", "per_pixel_baseline", "per_pixel_baseline_plus")
ARCHS = (*PAPER_ARCHS, "mask2former")  # mask2former: issue 16's same-budget comparison
DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"


class BudgetClock:
    """Training wall-clock (evaluation excluded) and the (minutes, mIoU) curve, fed by the Trainer's evaluate_fn."""

    def __init__(self, cfg, budget_min: float, max_images: int | None = None):
        self.cfg, self.start, self.eval_s, self.curve, self.last = cfg, time.perf_counter(), 0.0, [], {}
        self.budget_min, self.trainer, self.max_images = budget_min, None, max_images

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
        self.last = evaluate_model(model, dataset, task="semantic", cfg=self.cfg, batch_size=4,
                                   max_images=self.max_images)  # fmt: skip
        self.eval_s += time.perf_counter() - t0
        self.curve.append((round(minutes, 2), self.last["mIoU"]))
        print(f"    {minutes:5.1f} min: mIoU {self.last['mIoU']:.4f} (eval {time.perf_counter() - t0:.0f} s)")
        return self.last


def seconds_per_iter(cfg, out: Path, iters: int, args, train_set) -> float:
    """Seconds per iteration of a throw-away run, iterations 3..iters (warm-up excluded)."""
    c = cfg.copy()
    c.train.max_iter, c.train.eval_period, c.train.checkpoint_period = iters, 0, 0
    tr = Trainer(c, out, train_set=train_set, threads=args.threads, progress=False)
    tr.run(stop_at=2)
    t0 = time.perf_counter()
    tr.run(stop_at=iters)
    shutil.rmtree(out, ignore_errors=True)
    return (time.perf_counter() - t0) / (iters - 2)


def run_label(r: dict) -> str:
    """"maskformer", "maskformer [0016E5]", "maskformer [val] crop=on s43" ..."""
    label = r["arch"] if r.get("protocol", "val") == "val" else f"{r['arch']} [{r['protocol']}]"
    return " ".join(x for x in (label, r.get("variant", ""), f"s{r['seed']}" if r.get("multi_seed") else "") if x)


def train_one(spec: dict, args) -> dict:
    """One run. spec: arch, protocol, variant ("" or "NAME=on|off"), opts (overrides), seed, multi_seed."""
    arch, protocol = spec["arch"], spec["protocol"]
    overrides = [f"data.root={args.data_root}", *spec["opts"], f"train.seed={spec['seed']}"]
    cfg = get_preset(f"{arch}_r18_camvid", overrides)
    out = Path(args.out) / protocol / arch / (spec["variant"] or "base") / f"seed{spec['seed']}"
    shutil.rmtree(out, ignore_errors=True)
    train_set, val_set = protocol_datasets(cfg, protocol)
    frames = {"train": frame_counts(train_set), "scored": frame_counts(val_set)}
    spi = seconds_per_iter(cfg, out / "calib", args.calib_iters, args, train_set)
    cfg.train.max_iter = max(10, int(args.budget_min * 60 / spi))
    cfg.train.eval_period = max(1, int(args.eval_every * 60 / spi))
    cfg.train.checkpoint_period = cfg.train.max_iter
    print(f"{run_label(spec)}: train {frames['train']}, scored {frames['scored']}; {spi:.2f} s/iter -> max_iter "
          f"{cfg.train.max_iter}, eval every {cfg.train.eval_period} iters")  # fmt: skip
    clock = BudgetClock(cfg, args.budget_min, args.max_eval_images)
    tr = Trainer(cfg, out, train_set=train_set, val_set=val_set, evaluate_fn=clock.evaluate, threads=args.threads,
                 progress=not args.no_progress)  # fmt: skip
    clock.trainer, clock.start = tr, time.perf_counter()
    tr.run()
    per_class = {c["name"]: round(c["iou"], 4) for c in clock.last.get("per_class", [])}
    return {
        **{k: spec[k] for k in ("arch", "protocol", "variant", "opts", "seed", "multi_seed")},
        "frames": frames,
        "s_per_iter": round(spi, 3),
        "max_iter": tr.iteration,
        "train_minutes": round(clock.train_minutes(), 2),
        "curve": clock.curve,
        "final_mIoU": clock.last.get("mIoU"),
        "best_mIoU": max(v for _, v in clock.curve),
        "per_class_IoU": per_class,
        "params_M": round(sum(p.numel() for p in tr.model.parameters()) / 1e6, 2),
    }


def plan(args) -> list[dict]:
    """The runs, in order: per protocol, model and seed; an ablation's on and off sides next to each other."""
    sw = switch(args.ablation, args.on_opts, args.off_opts) if args.ablation else None
    sides = [("on", sw.on), ("off", sw.off)] if sw else [("", ())]
    return [
        dict(arch=arch, protocol=p, seed=seed, multi_seed=len(args.seeds) > 1,
             variant=f"{args.ablation}={side}" if side else "", opts=[*args.opts, *extra])
        for p in expand(args.holdout) for arch in args.models for seed in args.seeds for side, extra in sides
    ]  # fmt: skip


def markdown(results: list[dict]) -> str:
    lines = [
        "| model | protocol | train / scored frames | variant | seed | params | s/iter | iters | train min "
        "| final mIoU | best mIoU |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        fr = r.get("frames", {})
        n = f"{sum(fr.get('train', {}).values())} / {sum(fr.get('scored', {}).values())}" if fr else "367 / 101"
        lines.append(
            f"| {r['arch']} | {r.get('protocol', 'val')} | {n} | {r.get('variant') or '-'} | {r.get('seed', 42)} "
            f"| {r['params_M']} M "
            f"| {r['s_per_iter']} | {r['max_iter']} | {r['train_minutes']} | {r['final_mIoU']:.4f} "
            f"| {r['best_mIoU']:.4f} |"
        )
    lines += gaps(results)
    names = list(results[0]["per_class_IoU"]) if results else []
    lines += ["", "| class | " + " | ".join(run_label(r) for r in results) + " |", "|---|" + "---:|" * len(results)]
    lines += [
        f"| {n} | " + " | ".join(f"{r['per_class_IoU'].get(n, float('nan')):.3f}" for r in results) + " |"
        for n in names
    ]
    return "\n".join(lines)


def gaps(results: list[dict]) -> list[str]:
    """For each model (variant, seed) run on both the usual val and held-out drives: val - unseen (mean over drives)."""
    out, groups = [], {}
    for r in results:
        groups.setdefault((r["arch"], r.get("variant", ""), r.get("seed")), []).append(r)
    for (arch, variant, _), rs in groups.items():
        val = [r["final_mIoU"] for r in rs if r.get("protocol", "val") == "val"]
        unseen = {r["protocol"]: r["final_mIoU"] for r in rs if r.get("protocol", "val") != "val"}
        if val and unseen:
            mean = sum(unseen.values()) / len(unseen)
            each = ", ".join(f"{k} {v:.4f}" for k, v in unseen.items())
            name = f"{arch} {variant}".strip()
            out.append(f"- {name}: usual val {val[0]:.4f}, unseen drives {mean:.4f} ({each}), gap {val[0] - mean:+.4f}")
    return ["", *out] if out else []


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-min", "--minutes", type=float, default=30.0, help="training minutes per run")
    p.add_argument("--eval-every", type=float, default=5.0, help="minutes of training between evaluations")
    p.add_argument("--models", nargs="+", choices=ARCHS, help="default: the paper's three; maskformer with --ablation")
    p.add_argument("--holdout", nargs="+", default=["val"], choices=[*PROTOCOLS, "all"],
                   help="protocols: val (usual split) and/or a drive held out from training and scored; all = 3")
    p.add_argument("--ablation", metavar="NAME", help=f"on/off pair of one switch: {', '.join(SWITCHES)}, custom")
    p.add_argument("--on-opts", nargs="*", default=[], help="--ablation custom: overrides of the 'on' side")
    p.add_argument("--off-opts", nargs="*", default=[], help="--ablation custom: overrides of the 'off' side")
    p.add_argument("--ablation-table", default="benchmarks/out/camvid_ablations.json", help="JSON (+ .md) table")
    p.add_argument("--seeds", nargs="+", type=int, default=[42], help="train.seed of each run (same for on and off)")
    p.add_argument("--data-root", default=str(DEFAULT_ROOT))
    p.add_argument("--out", default="benchmarks/out/camvid")
    p.add_argument("--opts", nargs="*", default=[], help="config overrides for every run, e.g. loss.num_points=4096")
    p.add_argument("--calib-iters", type=int, default=12)
    p.add_argument("--max-eval-images", type=int, default=None, help="score only the first N frames (smoke tests)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--gather", nargs="+", metavar="DIR", help="no training: combine earlier runs' camvid.json")
    args = p.parse_args()
    args.models = args.models or (["maskformer"] if args.ablation else list(PAPER_ARCHS))
    if args.calib_iters < 3:
        p.error("--calib-iters must be >= 3 (the first 2 iterations are not timed)")
    out = Path(args.out)
    if args.gather:
        results = [r for d in args.gather for r in json.loads(Path(d, "camvid.json").read_text())["results"]]
    else:
        if not Path(args.data_root, "meta.json").is_file():
            raise SystemExit(f"CamVid not found at {args.data_root} (expected meta.json, images/, labels/)")
        specs = plan(args)
        for s in specs:  # every override is checked before any training
            try:
                get_preset(f"{s['arch']}_r18_camvid", [f"data.root={args.data_root}", *s["opts"]])
            except (ConfigError, KeyError) as e:
                raise SystemExit(f"--opts / ablation overrides for {s['arch']}: {e}") from None
        results = []
        for spec in specs:  # camvid.json is rewritten after each run: a stopped run keeps what finished
            results.append(train_one(spec, args))
            out.mkdir(parents=True, exist_ok=True)
            write_json(out / "camvid.json", {"args": vars(args), "results": results})
        if args.ablation:
            sw, common = switch(args.ablation, args.on_opts, args.off_opts), {"budget_min": args.budget_min,
                                                                              "common_opts": " ".join(args.opts)}
            groups = {}
            for r in results:
                groups.setdefault((r["protocol"], r["arch"]), []).append(r)
            lines = [ablation_line(args.ablation, sw, rs, common) for rs in groups.values()]
            print(write_table(Path(args.ablation_table), lines))
    out.mkdir(parents=True, exist_ok=True)
    if args.gather:
        write_json(out / "camvid.json", {"gathered": args.gather, "results": results})
    panels = {}
    for r in results:
        title = "CamVid val mIoU" if r.get("protocol", "val") == "val" else f"CamVid unseen {r['protocol']} mIoU"
        label = " ".join(x for x in (r["arch"], r.get("variant", ""), f"s{r['seed']}" if r.get("multi_seed") else "")
                         if x)  # fmt: skip
        panels.setdefault(title, {})[label] = ([m for m, _ in r["curve"]], [v for _, v in r["curve"]])
    plot_panels(list(panels.items()), out / "camvid_curves.png", xlabel="training minutes")
    print(markdown(results))


if __name__ == "__main__":
    main()
