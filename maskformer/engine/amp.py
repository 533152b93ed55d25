"""Mixed precision for training: autocast for the network, fp32 for matching and losses.

cfg.train.amp: "none" | "bf16" (CPU or CUDA autocast) | "fp16" (CUDA only, with a GradScaler against underflow).
"""

from __future__ import annotations

import contextlib

import torch

AMP_MODES = ("none", "bf16", "fp16")


def check_amp(amp: str, device: torch.device) -> None:
    if amp not in AMP_MODES:
        raise ValueError(f"train.amp: unknown mode {amp!r}; valid: {', '.join(AMP_MODES)}")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("train.amp=fp16 needs CUDA (fp16 training on the CPU is unsupported); use train.amp=bf16")


def autocast(amp: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context for the forward pass (a no-op for amp="none")."""
    check_amp(amp, device)
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def fp32_region(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast switched off (the criterion and matcher run in fp32)."""
    return torch.autocast(device.type, enabled=False)


def to_float(outputs):
    """Floating tensors of a (nested) model-output structure cast to fp32; other values unchanged."""
    if torch.is_tensor(outputs):
        return outputs.float() if outputs.is_floating_point() else outputs
    if isinstance(outputs, dict):
        return {k: to_float(v) for k, v in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(to_float(v) for v in outputs)
    return outputs


def grad_scaler(amp: str, device: torch.device) -> torch.amp.GradScaler:
    """A GradScaler, enabled only for fp16 (bf16 has fp32's exponent range and needs none)."""
    return torch.amp.GradScaler(device.type, enabled=(amp == "fp16"))
