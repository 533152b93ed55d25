"""One optimizer step: forward (autocast) -> criterion (fp32) -> backward over accumulated micro-batches ->
NaN/inf guard -> unscale -> global grad-norm clipping -> AdamW step -> scheduler step.

Mixed precision, cfg.train.amp: "none" | "bf16" (CPU or CUDA autocast) | "fp16" (CUDA only, with a GradScaler against
underflow; bf16 has fp32's exponent range and needs none) | "auto" (resolved once, by maskformer.precision.resolve_amp:
bf16 on a CPU with native bf16, where the ResNet-18 CamVid step runs 1.4x faster; fp32 on one without). Outputs are
cast to fp32 and the matcher and losses run with autocast off.

Shared by the training loop and benchmarks/bench_train_step.py, so the benchmark times exactly what training runs.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
from torch import nn

from maskformer.config import TrainConfig
from maskformer.engine import distributed as D
from maskformer.engine.optim import build_optimizer, build_scheduler, clip_grad_norm, lr_factor
from maskformer.precision import resolve_amp, to_float

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # train.amp (Config-validated); "none": fp32
STATEFUL = ("optimizer", "scheduler", "scaler")  # the TrainStep parts a checkpoint keeps (+ the iteration)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/inf; the step was abandoned before the weights changed."""


class TrainStep:
    """Owns the optimizer, scheduler and grad scaler of `model`; `net` is what runs forward (the DDP wrapper or model).

    __call__(micro_batches [(ImageBatch | Tensor [B,3,H,W], list[SegTarget], ...)]) -> {loss terms, grad_norm, lr}.
    """

    def __init__(self, model: nn.Module, criterion: nn.Module, train: TrainConfig, device: torch.device, net=None):
        self.amp = resolve_amp(train.amp, device)  # "none" | "bf16" | "fp16"
        if self.amp == "fp16" and device.type != "cuda":
            raise ValueError("train.amp=fp16 needs CUDA (fp16 training on the CPU is unsupported); use train.amp=bf16")
        self.model, self.criterion, self.train, self.device = model, criterion, train, device
        self.net = net if net is not None else model
        self.optimizer = build_optimizer(model, train)
        self.scheduler = build_scheduler(self.optimizer, train)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp == "fp16")
        self.iteration = 0  # optimizer steps taken (kept in sync with the scheduler)

    def __call__(self, micro_batches: list) -> dict[str, float]:
        self.net.train()
        self.optimizer.zero_grad(set_to_none=True)
        # gradients of mean_i(loss_i) over the micro-batches (DDP all-reduces only on the last one)
        n, dev, dtype = len(micro_batches), self.device, AUTOCAST_DTYPES.get(self.amp)
        sums: dict[str, torch.Tensor] = {}
        distributed = isinstance(self.net, nn.parallel.DistributedDataParallel)
        for i, (images, targets, *_) in enumerate(micro_batches):
            with nullcontext() if i == n - 1 or not distributed else self.net.no_sync():
                with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
                    outputs = self.net(images.to(dev))
                with torch.autocast(dev.type, enabled=False):  # matching and losses in fp32
                    losses = self.criterion(to_float(outputs), [t.to(dev) for t in targets])
                self.scaler.scale(losses["loss"] / n).backward()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float() / n
        values = {k: float(v) for k, v in sums.items()}
        if not D.all_true(all(torch.isfinite(v).item() for v in sums.values()), self.device):
            self.optimizer.zero_grad(set_to_none=True)
            bad = {k: v for k, v in values.items() if not math.isfinite(v)}
            raise NonFiniteLossError(f"non-finite loss at iteration {self.iteration + 1}: {bad}")
        self.scaler.unscale_(self.optimizer)
        values["grad_norm"] = float(clip_grad_norm(self.model.parameters(), self.train.clip_grad_norm))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        values["lr"] = self.train.base_lr * lr_factor(self.iteration, self.train)  # the lr this step used
        self.scheduler.step()
        self.iteration += 1
        return values

    def state_dict(self) -> dict:
        return {**{k: getattr(self, k).state_dict() for k in STATEFUL}, "iteration": self.iteration}

    def load_state_dict(self, state: dict) -> None:
        for k in STATEFUL:
            getattr(self, k).load_state_dict(state[k])
        self.iteration = int(state["iteration"])
