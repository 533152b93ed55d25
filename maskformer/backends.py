"""Inference backends: the torch model at a precision, or its exported ONNX graph run by onnxruntime.

`build_runner(model, backend=, precision=)` returns what maskformer.pipeline runs in place of the model: a callable
ImageBatch (or raw images [B, 3, H, W]) -> {"pred_logits" [B, Q, K+1], "pred_masks" [B, Q, Hp/4, Wp/4]} | {"sem_seg"},
float32, so the same post-processing follows either backend.

onnxruntime: the graph comes from maskformer.export.export_onnx and is cached as
`<cache_dir>/model-<key>[-HxW][-int8].onnx`, key = SHA-256 of the weights (names, shapes, bytes), the module layout and
the torch version, so a changed model is exported again; files are written atomically. cache_dir: the model directory
when it is writable, else `$MASKFORMER_HOME/onnx`. Swin graphs hold the window layout of one padded size, so a Swin
model gets one graph per padded input size (exported on first use of that size: slow once, exact always). int8 on
onnxruntime: onnxruntime's dynamic quantization of MatMul / Gemm (the graph's linear layers), as torch's int8 does,
applied to the cached fp32 graph (exported once for both).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from pathlib import Path

import torch
from torch import nn

from maskformer.io import atomic_file
from maskformer.precision import resolve_precision, with_precision
from maskformer.structures import ImageBatch

BACKENDS = ("torch", "onnxruntime")
ORT_PRECISIONS = ("fp32", "int8")
log = logging.getLogger(__name__)


def resolve(backend: str, precision: str, device: torch.device | str = "cpu") -> str:
    """The concrete precision ("fp32" | "bf16" | "fp16" | "int8") `precision` runs as on `backend` and `device`.

    onnxruntime runs on the CPU at fp32 ("auto" there) or int8. Bad names or combinations: a one-line ValueError."""
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "torch":
        return resolve_precision(precision, device)
    if torch.device(device).type != "cpu":
        raise ValueError(f"backend 'onnxruntime' runs on the CPU, not on {device} (use --device cpu)")
    resolved = "fp32" if precision == "auto" else resolve_precision(precision, "cpu")
    if resolved not in ORT_PRECISIONS:
        raise ValueError(f"backend 'onnxruntime' runs precision {' or '.join(ORT_PRECISIONS)}, not {precision!r}")
    return resolved


def build_runner(model: nn.Module, *, backend: str = "torch", precision: str = "fp32", cache_dir=None):
    """`model` ready to run on `backend` at `precision` (see the module docstring and `resolve`)."""
    p = next(model.parameters(), None)
    resolved = resolve(backend, precision, p.device if p is not None else "cpu")
    if backend == "torch":
        return with_precision(model, resolved)
    return OnnxRuntimeModel(model, int8=resolved == "int8", cache_dir=cache_dir)


class OnnxRuntimeModel:
    """The exported graph of `model` on onnxruntime (intra-op threads = torch's thread count, i.e. the cores)."""

    def __init__(self, model: nn.Module, *, int8: bool = False, cache_dir: str | os.PathLike | None = None):
        from maskformer.export import output_names

        self.source, self.int8 = model, int8  # exported in eval mode; its modes are left as they are
        self.size_divisibility = getattr(model, "size_divisibility", 32)
        self.fixed_size = any(type(m).__module__.endswith("backbones.swin") for m in model.modules())
        self.key = weights_key(model)
        self.cache_dir = writable_cache_dir(cache_dir)
        self.names = output_names(model)
        self.sessions: dict = {}

    def graph_path(self, padded: tuple[int, int] | None, int8: bool | None = None) -> Path:
        """The cached graph for inputs padded to `padded` (None: any size), int8 (default: this runner's) or fp32."""
        size = f"-{padded[0]}x{padded[1]}" if padded else ""
        quantized = "-int8" if (self.int8 if int8 is None else int8) else ""
        return self.cache_dir / f"model-{self.key[:16]}{size}{quantized}.onnx"

    def session(self, padded: tuple[int, int]):
        """The session for inputs padded to `padded` (one for all sizes unless the graph is fixed to a size)."""
        from maskformer.export import export_onnx, onnx_session

        size = padded if self.fixed_size else None
        if size not in self.sessions:
            path, fp32 = self.graph_path(size), self.graph_path(size, int8=False)
            if not path.is_file() and not fp32.is_file():
                log.info("exporting %s (onnxruntime backend)", fp32)
                export_onnx(self.source, fp32, sample_size=(1, *size) if size else (2, 96, 128))
            if not path.is_file():  # int8: quantized from the fp32 graph, which stays cached for the fp32 runner
                quantize_onnx_int8(fp32, path)
            self.sessions[size] = onnx_session(path, threads=torch.get_num_threads())
        return self.sessions[size]

    def __call__(self, images) -> dict:
        x = images.tensor if isinstance(images, ImageBatch) else images  # raw 0..255 [B, 3, H, W]
        d = max(1, self.size_divisibility)
        padded = (-(-x.shape[-2] // d) * d, -(-x.shape[-1] // d) * d)
        outputs = self.session(padded).run(None, {"images": x.detach().cpu().float().numpy()})
        return {n: torch.from_numpy(o).float() for n, o in zip(self.names, outputs)}


def quantize_onnx_int8(src: Path, dest: Path) -> Path:
    """onnxruntime dynamic int8 quantization of the MatMul / Gemm weights of `src`, written atomically to `dest`."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        raise ImportError("int8 on onnxruntime needs onnxruntime and onnx: pip install 'maskformer[onnx]'") from None
    with atomic_file(dest) as tmp:
        quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    return dest


def weights_key(model: nn.Module) -> str:
    """SHA-256 hex of the state dict (names, dtypes, shapes, bytes), the module layout and the torch version."""
    h = hashlib.sha256(f"{torch.__version__}\n{model!r}".encode())
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name} {t.dtype} {tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def writable_cache_dir(preferred: str | os.PathLike | None) -> Path:
    """`preferred` when it is (or can be made) a writable directory, else `$MASKFORMER_HOME/onnx`."""
    if preferred is not None:
        with contextlib.suppress(OSError):
            Path(preferred).mkdir(parents=True, exist_ok=True)
        if Path(preferred).is_dir() and os.access(preferred, os.W_OK):
            return Path(preferred)
    from maskformer.hub.cache import home

    path = home() / "onnx"
    path.mkdir(parents=True, exist_ok=True)
    return path
