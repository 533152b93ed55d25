"""`maskformer demo --out DIR` (what `make demo` runs): the whole system on built-in synthetic data, minutes on a CPU.

1. write the synthetic dataset (`maskformer synth`: 4 thing shapes + 4 textured stuff classes, occlusions), 128x128;
2. train the small CPU preset `maskformer_r18_synth` from scratch (panoptic targets, poly schedule);
3. evaluate semantic (mIoU) and panoptic (PQ) quality of the final model on the validation split;
4. write a report folder: metrics.json, curves.png, overlays.png (image / ground truth / prediction), and print it.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

NUM_OVERLAYS = 6


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_output", help="output folder (data/, run/, report/)")
    parser.add_argument("--preset", default="maskformer_r18_synth", help="model preset to train")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    import torch

    from maskformer.config import get_preset
    from maskformer.data.synthetic import write_synthetic
    from maskformer.engine.distributed import cleanup
    from maskformer.engine.loop import Trainer
    from maskformer.io import save_json

    start = time.perf_counter()
    out = Path(args.out)
    data_root = out / "data"
    if not (data_root / "meta.json").is_file():  # written once, kept for later runs
        shutil.rmtree(data_root, ignore_errors=True)
        write_synthetic(data_root)
    data_s = time.perf_counter() - start
    print(f"[1/4] synthetic dataset in {data_root} ({data_s:.1f} s)")
    cfg = get_preset(args.preset, [f"data.root={data_root}", *args.opts])
    shutil.rmtree(out / "run", ignore_errors=True)  # the demo always trains from scratch
    t0 = time.perf_counter()
    kw = dict(device=args.device, threads=args.threads, progress=not args.no_progress)
    trainer = Trainer(cfg, out / "run", evaluate_fn=_semantic_and_panoptic(cfg), **kw)
    try:
        trainer.run()
    finally:
        cleanup()
    train_s = time.perf_counter() - t0
    print(f"[2/4] trained {trainer.iteration} iterations in {train_s / 60:.1f} min")
    metrics = _final_metrics(trainer)
    print(f"[3/4] validation ({metrics['num_val_images']} images): mIoU {metrics['mIoU']:.3f}, PQ {metrics['PQ']:.3f}")
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    if (trainer.out / "curves.png").is_file():
        shutil.copyfile(trainer.out / "curves.png", report / "curves.png")
    _overlay_grid(trainer, report / "overlays.png")
    timing = {"data_s": data_s, "train_and_eval_s": train_s, "total": time.perf_counter() - start}
    doc = dict(preset=args.preset, iterations=trainer.iteration, metrics=metrics)
    doc.update(timing_s={k: round(v, 1) for k, v in timing.items()}, threads_at_end=torch.get_num_threads())
    doc.update(model_dir=str((trainer.out / "model").resolve()), config=trainer.cfg.to_dict())
    save_json(report / "metrics.json", doc, indent=1)
    print(f"[4/4] report: {report.resolve()}  (total {(time.perf_counter() - start) / 60:.1f} min)")
    return 0


def _semantic_and_panoptic(cfg):
    """evaluate_fn for the Trainer: semantic metrics plus the panoptic PQ/SQ/RQ (keys prefixed "pq_" where they clash),
    so the validation curves and the final numbers carry both."""
    from maskformer.evaluation.loop import evaluate_model

    def evaluate(model, dataset) -> dict:
        sem = evaluate_model(model, dataset, task="semantic", cfg=cfg, batch_size=8)
        pan = evaluate_model(model, dataset, task="panoptic", cfg=cfg, batch_size=8)
        return {**sem, **{(k if k not in sem else f"pq_{k}"): v for k, v in pan.items()}}

    return evaluate


def _final_metrics(trainer) -> dict:
    """The headline numbers of the last evaluation (the Trainer evaluates at its final iteration)."""
    m = trainer.last_eval
    keys = ("mIoU", "mACC", "pACC", "PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st")
    out = {k: m[k] for k in keys if k in m}
    out["IoU_per_class"] = {c["name"]: c["iou"] for c in m.get("per_class", [])}
    out["PQ_per_class"] = {c["name"]: c["pq"] for c in m.get("pq_per_class", {}).values()}
    out["num_val_images"] = len(trainer.val_set)
    return out


def _overlay_grid(trainer, path: Path) -> None:
    """Rows of image / ground truth (panoptic) / predicted semantic / predicted panoptic for a few val images."""
    from maskformer.io import read_panoptic, write_image
    from maskformer.pipeline import predict
    from maskformer.visualize import grid, panoptic_overlay, prediction_overlay

    meta = trainer.meta
    model = trainer.model.eval()
    rows = []
    for i in range(min(NUM_OVERLAYS, len(trainer.val_set))):
        image, _, info = trainer.val_set[i]
        rgb = image.permute(1, 2, 0).numpy()
        gt = [(s["id"], meta.contiguous_id(s["category_id"])) for s in info["segments_info"]]
        gt_segs = [{"id": i, "category_id": c, "isthing": meta.is_thing[c]} for i, c in gt]
        row = [rgb, panoptic_overlay(rgb, read_panoptic(info["pan_seg_file_name"]), gt_segs, meta, legend=False)]
        for task in ("semantic", "panoptic"):
            pred = predict(model, [rgb], task=task, meta=meta, inference=trainer.cfg.inference)[0]
            row.append(prediction_overlay(rgb, pred, meta, legend=False))
        rows.append(row)
    write_image(path, grid(rows, ["image", "ground truth", "semantic", "panoptic"]))
