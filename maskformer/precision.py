"""Inference precision: fp32, bf16 / fp16 autocast, int8 dynamic quantization, and `auto` from the hardware.

    auto  CPU: bf16 autocast where the CPU has native bf16 (x86 flags avx512_bf16 or amx_bf16), else fp32;
          CUDA: bf16 autocast where the GPU supports it, else fp16; other devices: fp32
    int8  torch.ao dynamic quantization of every nn.Linear (weights int8, activations quantized per call), CPU only

The CPU's flags are read in one place, `cpu_flags` (/proc/cpuinfo; empty on other systems, so `auto` is fp32 there).
`resolve_amp` makes the same choice for training's train.amp=auto. `with_precision(model, p)` wraps a model so that
its outputs come back as float32: post-processing always runs in fp32. `system_info()` is what `maskformer info
--system` and every eval report show.
"""

from __future__ import annotations

import copy
import functools
import os
import platform
import warnings

import torch
from torch import nn

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # native bf16 dot products (AVX512-BF16, AMX)
# the flags that change which kernels run (x86 vector / matrix units; ARM NEON, bf16, SVE)
SPEED_FLAGS = tuple("avx2 fma avx512f avx512_vnni avx_vnni avx512_bf16 avx512_fp16 amx_tile amx_bf16 amx_int8".split())
SPEED_FLAGS += ("asimd", "bf16", "sve")
CPUINFO = "/proc/cpuinfo"
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
KEEP_FLOAT = ("attn.qkv",)  # Linear layers whose parent reads .weight / .bias itself (Swin adds the qkv bias per token)


@functools.lru_cache(maxsize=8)
def _cpuinfo(path: str) -> dict[str, str]:
    """The "key: value" fields of a /proc/cpuinfo file, the first value of each key (the first processor's); empty
    when unreadable. Read once per path."""
    fields: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for key, sep, value in (line.partition(":") for line in f):
                if sep:
                    fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_flags(path: str | None = None) -> frozenset[str]:
    """The feature flags of the first processor (x86 "flags", ARM "Features"); empty when unreadable."""
    fields = _cpuinfo(path or CPUINFO)
    return frozenset(fields.get("flags", fields.get("Features", "")).split())


def native_bf16(flags: frozenset[str] | set[str]) -> bool:
    """Whether CPU `flags` include native bf16 arithmetic."""
    return any(f in flags for f in BF16_FLAGS)


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """The concrete precision ("fp32" | "bf16" | "fp16" | "int8") that `precision` runs as on `device`.

    Raises ValueError (one line) for an unknown name or int8 off the CPU."""
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "int8" and device.type != "cpu":
        raise ValueError(f"precision 'int8' (dynamic quantization) runs on the CPU only, not on {device}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if device.type == "cpu" and native_bf16(cpu_flags()) else "fp32"


def resolve_amp(amp: str, device: torch.device | str = "cpu") -> str:
    """The training autocast ("none" | "bf16" | "fp16") that cfg.train.amp runs as on `device`: "auto" is what
    precision "auto" picks (fp32 -> "none"); the others are returned as they are."""
    if amp != "auto":
        return amp
    precision = resolve_precision("auto", device)
    return "none" if precision == "fp32" else precision


class AutocastModel(nn.Module):
    """`model` run under torch.autocast(dtype); every floating output tensor comes back as float32.

    forward takes what `model` takes (an ImageBatch or raw images [B, 3, H, W]) and returns its dict of outputs.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model, self.dtype = model, dtype
        self.size_divisibility = getattr(model, "size_divisibility", 32)

    def forward(self, images):
        device = next(self.model.parameters()).device.type
        with torch.autocast(device, dtype=self.dtype):
            out = self.model(images)
        return to_float(out)


def to_float(out):
    """Floating tensors in a (nested) dict / list / tuple of outputs -> float32; everything else unchanged."""
    if torch.is_tensor(out):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, dict):
        return {k: to_float(v) for k, v in out.items()}
    if isinstance(out, list | tuple):
        return type(out)(to_float(v) for v in out)
    return out


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of `model` (eval mode) with its nn.Linear layers dynamically quantized to int8 (CPU), except those named
    in KEEP_FLOAT (by name suffix). The original is kept."""
    names = {n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not n.endswith(KEEP_FLOAT)}
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao; it works as documented
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor", category=UserWarning)
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(copy.deepcopy(model).eval(), names, dtype=torch.qint8)


def with_precision(model: nn.Module, precision: str) -> nn.Module:
    """`model` ready to run at `precision` (auto resolved on the model's device): fp32 -> model itself;
    bf16 / fp16 -> an AutocastModel around it; int8 -> a quantized copy (quantizing takes a moment: do it once)."""
    p = next(model.parameters(), None)
    resolved = resolve_precision(precision, p.device if p is not None else "cpu")
    if resolved in _AUTOCAST:
        return AutocastModel(model, _AUTOCAST[resolved])
    return quantize_int8(model) if resolved == "int8" else model


def cpu_model(path: str | None = None) -> str:
    """The CPU's model name ("model name" in /proc/cpuinfo, ARM "Model" / "Hardware", else platform.processor())."""
    fields = _cpuinfo(path or CPUINFO)
    names = [fields[k] for k in ("model name", "Model", "Hardware") if fields.get(k)]
    return names[0] if names else platform.processor() or platform.machine()


def system_info() -> dict:
    """The facts that decide inference speed: CPU model and its speed flags, cores, torch threads, what `auto` picks
    on the CPU, CUDA devices."""
    flags = cpu_flags()
    gpus = range(torch.cuda.device_count()) if torch.cuda.is_available() else ()
    cuda = [torch.cuda.get_device_name(i) for i in gpus]
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return dict(cpu=cpu_model(), cpu_flags=[f for f in SPEED_FLAGS if f in flags], native_bf16=native_bf16(flags),
                cores=os.cpu_count(), usable_cores=usable, torch=torch.__version__,
                torch_threads=torch.get_num_threads(), auto_precision_cpu=resolve_precision("auto", "cpu"),
                cuda_devices=cuda, auto_precision_cuda=resolve_precision("auto", "cuda") if cuda else None)  # fmt: skip


def describe(info: dict) -> str:
    """system_info() as a few aligned lines."""
    lines = [
        f"CPU          {info['cpu']}",
        f"  flags      {' '.join(info['cpu_flags']) or '(none of note)'}",
        f"  bf16       {'native' if info['native_bf16'] else 'not native'}",
        f"  cores      {info['cores']} ({info['usable_cores']} usable by this process)",
        f"torch        {info['torch']}, {info['torch_threads']} threads",
        f"auto         {info['auto_precision_cpu']} on the CPU"
        + (f", {info['auto_precision_cuda']} on CUDA" if info["cuda_devices"] else ""),
        f"CUDA         {', '.join(info['cuda_devices']) or 'none'}",
    ]
    return "\n".join(lines)
