"""The training loop: iteration-based AdamW + poly/multistep schedule, gradient accumulation, mixed precision,
DDP (torchrun), periodic evaluation with best-model tracking, exact resume, JSONL metrics and PNG curves.

Batch semantics: `cfg.train.batch_size` is the total batch of one optimizer step, over all processes and all
accumulation steps (like detectron2's IMS_PER_BATCH), so each process loads micro-batches of
batch_size / (world_size * grad_accum) images. The loss of each micro-batch is divided by grad_accum.
The output folder (engine.state.RUN_FILES) is described in docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import inspect
import json
import random
import time
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from maskformer import checkpoint as CK
from maskformer.config import Config, TrainConfig
from maskformer.convert import load_backbone_weights, load_full_weights, read_state_dict
from maskformer.criterion import build_criterion
from maskformer.data import build_dataset, build_loader
from maskformer.engine import distributed as D
from maskformer.engine import state as S
from maskformer.engine.metrics import MetricsLogger, Progress, WindowMeter, plot_training_curves, read_jsonl
from maskformer.engine.step import NonFiniteLossError, TrainStep
from maskformer.evaluation.loop import evaluate_model
from maskformer.hub import BACKBONE_WEIGHTS, backbone_weights, resolve
from maskformer.modeling import build_model

# key prefixes only a full model's weights have (detectron2, transformers): --init-weights auto -> "full"
HEAD_KEYS = ("sem_seg_head.", "module.sem_seg_head.", "model.transformer_module.", "model.pixel_level_module.decoder.")


def load_init_weights(model: nn.Module, path: str, kind: str = "auto"):
    """`--init-weights`: a full model (model dir, detectron2 / transformers checkpoint) or backbone-only weights.

    kind: "auto" (full when the file holds head weights, else backbone), "full" or "backbone". Prints the key report.
    """
    if not Path(path).exists():  # a zoo name, hub id or URL (full model), or an ImageNet weights name (backbone)
        path = str(backbone_weights(path) if path in BACKBONE_WEIGHTS or kind == "backbone" else resolve(path))
    if kind == "auto":
        sd, info = read_state_dict(path)
        kind = "full" if info["kind"] == "model_dir" or any(k.startswith(HEAD_KEYS) for k in sd) else "backbone"
    if kind not in ("full", "backbone"):
        raise ValueError(f"init-weights kind must be auto, full or backbone, got {kind!r}")
    report = load_full_weights(model, path) if kind == "full" else load_backbone_weights(model, path)
    print(f"--init-weights ({kind}): {report}")
    return report


def micro_batch_size(train: TrainConfig, world_size: int) -> int:
    """Images per process per forward pass: batch_size / (world_size * grad_accum), which must divide exactly."""
    parts = world_size * max(train.grad_accum, 1)
    if train.batch_size % parts:
        raise ValueError(
            f"train.batch_size={train.batch_size} is not divisible by world_size ({world_size}) x "
            f"train.grad_accum ({train.grad_accum}); the total batch must split evenly"
        )
    return train.batch_size // parts


BEST_METRIC = {"semantic": "mIoU", "panoptic": "PQ", "instance": "AP"}  # per task: selects the best checkpoint


class Trainer:
    """One training run. Components not given are built from `cfg` (model, criterion, datasets).

    model/criterion: nn.Modules meeting docs/ARCHITECTURE.md; train_set/val_set: map-style datasets with `.meta`.
    evaluate_fn(model, dataset) -> dict of metrics; defaults to maskformer.evaluation's `evaluate_model`.
    device: "cpu", "cuda" or None (cuda when available). Under torchrun each process is one rank.
    threads: torch's CPU threads while `run` runs, restored after (None or 0: leave torch's setting).
    overwrite: a new run (not resumed) may replace an old run in out_dir; otherwise that is a RunExistsError.
    Bad config values, a class count that differs from the dataset's and a missing validation split are errors here,
    before any training.
    """

    def __init__(
        self,
        cfg: Config,
        out_dir: str | Path,
        *,
        model: nn.Module | None = None,
        criterion: nn.Module | None = None,
        train_set=None,
        val_set=None,
        evaluate_fn=None,
        init_weights: str | None = None,
        init_kind: str = "auto",
        device: str | None = None,
        threads: int | None = None,
        progress: bool = True,
        overwrite: bool = False,
    ):
        self.cfg, self.out = cfg.validate(), Path(out_dir)
        self.checkpoint_root = self.out / "checkpoints"
        self.threads, self.overwrite = threads, overwrite
        self.dist = D.init_distributed(device)
        self.micro_batch = micro_batch_size(cfg.train, self.dist.world_size)
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        model = model if model is not None else build_model(cfg)
        if init_weights:
            load_init_weights(model, init_weights, init_kind)
        self.model = model.to(self.dist.device)
        self.criterion = (criterion if criterion is not None else build_criterion(cfg)).to(self.dist.device)
        self.step = TrainStep(self.model, self.criterion, cfg.train, self.dist.device, net=self._wrap_ddp(self.model))
        self.train_set = train_set if train_set is not None else build_dataset(cfg.data, cfg.data.train_split, True)
        self.meta = getattr(self.train_set, "meta", None)
        if self.meta is not None and self.meta.num_classes != cfg.model.num_classes:
            raise ValueError(
                f"model.num_classes={cfg.model.num_classes} but the training set {self.meta.name!r} has "
                f"{self.meta.num_classes} classes; set model.num_classes={self.meta.num_classes}"
            )
        self._val_set = val_set
        self.evaluate_fn = evaluate_fn or partial(evaluate_model, task=cfg.inference.task, cfg=cfg, batch_size=4)
        if cfg.train.eval_period > 0 and self.dist.is_main:
            _ = self.val_set  # a missing validation split fails now, not after the first eval_period iterations
        seed = cfg.train.seed + self.dist.rank  # different augmentation streams per rank
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        if len(self.train_set) < self.dist.world_size:
            raise ValueError(f"{len(self.train_set)} training images are fewer than {self.dist.world_size} processes")
        # infinite, sharded by rank (one shared permutation per epoch), per-sample augmentation seeds: exact resume
        self.loader = build_loader(
            self.train_set,
            batch_size=self.micro_batch,
            shuffle=True,
            num_workers=cfg.data.num_workers,
            seed=cfg.train.seed,
            infinite=True,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            size_divisibility=max(cfg.model.size_divisibility, 1),
        )
        self.iteration, self.best, self.last_eval = 0, None, {}
        self.logger: MetricsLogger | None = None  # opened once the output folder is claimed (run or resume)
        self.progress = progress and self.dist.is_main

    def _wrap_ddp(self, model: nn.Module) -> nn.Module:
        if self.dist.world_size == 1:
            return model
        ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
        ddp = nn.parallel.DistributedDataParallel
        if getattr(getattr(model, "backbone", None), "channels_last", False):
            model.backbone.to(memory_format=torch.channels_last)  # grads come channels-last: match DDP's buckets
        # buffers (FrozenBN statistics, pixel mean/std) are identical on all ranks: no per-forward broadcast
        new_api = "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
        return ddp(model, device_ids=ids, **{"forward_sync_buffers" if new_api else "broadcast_buffers": False})

    def resume(self, path: str | Path | None = "latest") -> Path | None:
        """Continue from a checkpoint ("latest"/"" = newest under out_dir, or a path). Returns the path used.

        With "latest", a damaged newest checkpoint (unreadable state or weights) is named in a warning, set aside as
        `<name>.damaged`, and the previous intact one is used."""
        ckpt = S.resolve_resume(None if path is None else str(path), self.out)
        if ckpt is None:
            return None
        fallback = S.resume_candidates(self.checkpoint_root)[1:] if str(path) in ("", "latest") else []
        while True:
            try:
                state, weights = S.load_train_state(ckpt), CK.load_safetensors(ckpt / CK.WEIGHTS_NAME)
                break
            except (RuntimeError, ValueError, OSError) as e:  # CheckpointError (checksums) is a ValueError
                if not fallback:
                    raise CK.CheckpointError(f"{ckpt} is damaged and no intact checkpoint precedes it: {e}") from None
                if self.dist.is_main:
                    warnings.warn(f"{ckpt} is damaged ({e}); set aside, resuming from {fallback[0]}", stacklevel=2)
                    S.set_aside(ckpt)
                ckpt = fallback.pop(0)
        self._claim_out(resumed=True)
        _warn_config_changes(state.get("config", {}), self.cfg, ckpt)
        CK.load_checked(self.model, weights, source=str(ckpt / CK.WEIGHTS_NAME), strict=True)
        self.step.load_state_dict(state["step"])
        self.iteration, self.best = int(state["iteration"]), state.get("best")
        rngs = state["rng"]
        S.restore_rng(rngs[self.dist.rank] if len(rngs) == self.dist.world_size else rngs[0])
        if len(rngs) != self.dist.world_size:
            warnings.warn(f"resuming {ckpt} with {self.dist.world_size} processes instead of {len(rngs)}", stacklevel=2)
        self.loader.load_state_dict(state["loader"])  # exact data position
        self.logger.truncate_after(self.iteration)
        return ckpt

    def _claim_out(self, resumed: bool) -> None:
        """Check out_dir once (writable; no other run in it unless resumed or overwrite) and open the metrics log."""
        if self.logger is None:
            if self.dist.is_main:
                S.prepare_out_dir(self.out, resume=resumed, overwrite=self.overwrite)
            self.logger = MetricsLogger(self.out, enabled=self.dist.is_main)

    def run(self, stop_at: int | None = None) -> None:
        """Train until cfg.train.max_iter (or stop after iteration `stop_at`, checkpointing there); the outcome is in
        `iteration`, `best` and `last_eval`.

        max_iter is re-read every iteration, so a caller may move the end (and with it the schedule) while running,
        e.g. to fit a wall-clock budget (benchmarks/camvid.py)."""
        t = self.cfg.train
        self._claim_out(resumed=False)
        if self.dist.is_main:
            CK.atomic_write(self.out / "config.json", self.cfg.to_json())
        meter = WindowMeter()
        bar = Progress(total=t.max_iter, initial=self.iteration, enabled=self.progress)
        data = iter(self.loader)
        threads = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            while self.iteration < (end := t.max_iter if stop_at is None else min(stop_at, t.max_iter)):
                t0 = time.perf_counter()
                batches = [next(data) for _ in range(max(t.grad_accum, 1))]
                t1 = time.perf_counter()
                values = self._step(batches)
                self.iteration += 1
                meter.add(values, data_time=t1 - t0, step_time=time.perf_counter() - t1)
                bar.update(self.iteration, values, meter, images=t.batch_size)
                if self.iteration % t.log_period == 0 or self.iteration == end:
                    self.logger.log(self.iteration, D.all_reduce_mean(meter.averages(), self.dist.device))
                    meter.reset()
                if _due(self.iteration, t.checkpoint_period) or self.iteration == end:
                    self.save_checkpoint()
                if _due(self.iteration, t.eval_period) or (self.iteration == t.max_iter and t.eval_period > 0):
                    self.evaluate()
        finally:
            bar.close()
            torch.set_num_threads(threads)
        if self.iteration >= t.max_iter:  # the final model directory and curves (rank 0)
            if self.dist.is_main:
                S.save_checkpoint(self.out, "model", self._write_model, None, mark_latest=False)
                plot_training_curves(read_jsonl(self.logger.path), self.out / "curves.png")
            self.logger.close()

    def _step(self, batches: list) -> dict[str, float]:
        try:
            return self.step(batches)
        except NonFiniteLossError as e:
            last = S.latest_checkpoint(self.checkpoint_root)
            where = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
            hint = "(try a lower train.base_lr, or train.amp=none)"
            raise NonFiniteLossError(f"{e}; the weights of this step were not updated and {where} {hint}") from None

    def save_checkpoint(self) -> Path:
        """Write checkpoints/iter_N (rank 0) with every rank's RNG state; prune to keep_last."""
        rngs = [S.capture_rng()] * D.world_size()  # every rank's RNG state, in rank order
        if D.is_distributed():
            torch.distributed.all_gather_object(rngs, rngs[0])
        path = self.checkpoint_root / S.checkpoint_name(self.iteration)
        if self.dist.is_main:
            state = dict(
                iteration=self.iteration,
                step=self.step.state_dict(),
                rng=rngs,
                best=self.best,
                loader=self.loader.state_dict(),
                config=self.cfg.to_dict(),
                world_size=self.dist.world_size,
            )
            S.save_checkpoint(self.checkpoint_root, path.name, self._write_model, state)
            S.prune_checkpoints(self.checkpoint_root, self.cfg.train.keep_last)
        D.barrier()
        return path

    def _write_model(self, folder: Path) -> None:
        """A model directory (config.json + model.safetensors) loadable by `maskformer eval/predict`."""
        meta = self.meta if self.meta is not None else CK.generic_meta(self.cfg)
        CK.save_pretrained(self.model, self.cfg, meta, folder)

    def evaluate(self) -> dict:
        """Evaluate on the validation split (rank 0), log "val/*" metrics, keep the best model directory."""
        metrics: dict = {}
        self._claim_out(resumed=False)
        if self.dist.is_main:
            rng = S.capture_rng()  # evaluation must not shift the training random streams
            self.model.eval()
            with torch.no_grad():
                metrics = self.evaluate_fn(self.model, self.val_set)
            self.model.train()
            S.restore_rng(rng)
            scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            key = BEST_METRIC.get(self.cfg.inference.task, "mIoU")
            if key in metrics and (self.best is None or not metrics[key] <= self.best["value"]):  # a new best model
                self.best = {"metric": key, "value": float(metrics[key]), "iteration": self.iteration}
                S.save_checkpoint(self.out, "best", self._write_model, None, mark_latest=False)
                CK.atomic_write(self.out / "best" / "best.json", json.dumps({**self.best, "metrics": scalars}))
            self.logger.log(self.iteration, {f"val/{k}": v for k, v in scalars.items()})
        D.barrier()
        self.last_eval = metrics
        return metrics

    @property
    def val_set(self):
        if self._val_set is None:
            self._val_set = build_dataset(self.cfg.data, self.cfg.data.val_split, False)
        return self._val_set


def _due(iteration: int, period: int) -> bool:
    return period > 0 and iteration % period == 0


def _warn_config_changes(saved: dict, cfg: Config, where: Path) -> None:
    """Name the config keys that differ from the checkpoint's (allowed, e.g. a longer max_iter, but worth seeing)."""
    now = cfg.to_dict()
    diffs = [
        f"{sec}.{k}: {saved[sec][k]!r} -> {v!r}"
        for sec, fields in now.items()
        for k, v in fields.items()
        if sec in saved and k in saved[sec] and _norm(saved[sec][k]) != _norm(v)
    ]
    if diffs:
        warnings.warn(f"resuming {where} with a changed config: {'; '.join(diffs)}", stacklevel=3)


def _norm(v):
    return list(v) if isinstance(v, (list, tuple)) else v
