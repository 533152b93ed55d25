"""Inference backends: the torch model at a precision, or its exported ONNX graph run by onnxruntime.

`build_runner(model, backend=, precision=)` returns what maskformer.pipeline runs in place of the model: a callable
ImageBatch (or raw images [B, 3, H, W]) -> {"pred_logits" [B, Q, K+1], "pred_masks" [B, Q, Hp/4, Wp/4]} | {"sem_seg"},
float32, so the same post-processing follows either backend.

onnxruntime: the graph comes from maskformer.export.export_onnx and is cached as
`<cache_dir>/model-<key>[-HxW].onnx`, key = SHA-256 of the weights (names, shapes, bytes), the module layout and
the torch version, so a changed model is exported again; files are written atomically. cache_dir: the model directory
when it is writable, else `$MASKFORMER_HOME/onnx`. Swin graphs hold the window layout of one padded size, so a Swin
model gets one graph per padded input size (exported on first use of that size: slow once, exact always).

int8 on onnxruntime: static quantization (onnxruntime.quantization.quantize_static, QDQ, per-channel int8 weights,
uint8 activations) of the Conv and MatMul nodes of the cached fp32 graph, activation ranges calibrated (min / max) on
a Calibration: the first CALIBRATION_IMAGES images of a folder by sorted name, else the first of the model's training
split (its config's data), each run at the test size as the pipeline runs it. The quantized graph is cached next to
the fp32 one as `...-int8-<calibration key>.onnx`, key = SHA-256 of the calibration inputs, the settings and the
onnxruntime version, so every process of a sharded run uses the same graph. int8 on torch stays torch's dynamic
quantization of nn.Linear (maskformer.precision): no calibration needed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from maskformer.config import DataConfig, InferenceConfig
from maskformer.data.transforms import resize_image
from maskformer.io import atomic_file
from maskformer.pipeline import load_image, run_size, to_tensor
from maskformer.precision import resolve_precision, with_precision
from maskformer.structures import ImageBatch

BACKENDS = ("torch", "onnxruntime")
ORT_PRECISIONS = ("fp32", "int8")
STATIC_INT8_OPS = ("Conv", "MatMul")  # the node types static int8 quantizes (the convolutions and linear layers)
CALIBRATION_IMAGES = 8  # the calibrator holds every image's activations in memory at once
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Calibration:
    """What int8 on onnxruntime calibrates on. folder: a folder of images like those predicted on (None: the first
    images of the training split of `data`, the model's own data config); inference: the test size they run at."""

    folder: str | os.PathLike | None = None
    data: DataConfig | None = None
    inference: InferenceConfig = field(default_factory=InferenceConfig)


def calibration_files(folder: str | os.PathLike) -> list[Path]:
    """The first CALIBRATION_IMAGES image files of `folder` by sorted name; a one-line ValueError if there are none."""
    path = Path(folder)
    if not path.is_dir():
        raise ValueError(f"--calibration {folder}: not a folder (give a folder of images like those you predict on)")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"--calibration {folder}: no images ({' '.join(IMAGE_SUFFIXES)}) in this folder")
    return files[:CALIBRATION_IMAGES]


def calibration_images(cal: Calibration) -> list[np.ndarray]:
    """The calibration images, uint8 RGB [h, w, 3]: the folder's, else the first of the training split of cal.data."""
    if cal.folder is not None:
        return [load_image(p) for p in calibration_files(cal.folder)]
    from maskformer.data import build_dataset

    data = cal.data or DataConfig()
    try:
        ds = build_dataset(data, data.train_split, train=False)
        return [ds[i][0].permute(1, 2, 0).numpy() for i in range(min(len(ds), CALIBRATION_IMAGES))]
    except (OSError, ValueError, KeyError, IndexError) as e:
        raise ValueError(f"int8 on onnxruntime calibrates on images: pass --calibration DIR (Python: calibration=DIR),"
                         f" a folder of images like those you predict on (the model's training data is not available:"
                         f" {str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


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


def build_runner(model: nn.Module, *, backend: str = "torch", precision: str = "fp32", cache_dir=None,
                 calibration: Calibration | str | os.PathLike | None = None):
    """`model` ready to run on `backend` at `precision` (see the module docstring and `resolve`); calibration: a
    Calibration or a folder of images, for int8 on onnxruntime (else unused)."""
    p = next(model.parameters(), None)
    resolved = resolve(backend, precision, p.device if p is not None else "cpu")
    if backend == "torch":
        return with_precision(model, resolved)
    return OnnxRuntimeModel(model, int8=resolved == "int8", cache_dir=cache_dir, calibration=calibration)


class OnnxRuntimeModel:
    """The exported graph of `model` on onnxruntime (intra-op threads = torch's thread count, i.e. the cores); int8:
    statically quantized, calibrated on `calibration` (a Calibration or a folder; default Calibration())."""

    def __init__(self, model: nn.Module, *, int8: bool = False, cache_dir: str | os.PathLike | None = None,
                 calibration: Calibration | str | os.PathLike | None = None):  # fmt: skip
        from maskformer.export import output_names

        if not isinstance(calibration, Calibration):
            calibration = Calibration(calibration)
        self.calibration = calibration.inference
        self.calibration_images = calibration_images(calibration) if int8 else []  # read first: errors before any work
        self.source, self.int8 = model, int8  # exported in eval mode; its modes are left as they are
        self.size_divisibility = getattr(model, "size_divisibility", 32)
        self.fixed_size = any(type(m).__module__.endswith("backbones.swin") for m in model.modules())
        self.key = weights_key(model)
        self.cache_dir = writable_cache_dir(cache_dir)
        self.names = output_names(model)
        self.sessions: dict = {}

    def graph_path(self, padded: tuple[int, int] | None) -> Path:
        """The cached fp32 graph for inputs padded to `padded` (None: any size)."""
        size = f"-{padded[0]}x{padded[1]}" if padded else ""
        return self.cache_dir / f"model-{self.key[:16]}{size}.onnx"

    def calibration_inputs(self, padded: tuple[int, int] | None) -> list[np.ndarray]:
        """The calibration images as the graph gets them: raw float32 [1, 3, H, W], each resized to the test size and
        padded as the pipeline does, or (a graph fixed to `padded`) resized to exactly that size."""
        inf, d = self.calibration, max(1, self.size_divisibility)
        images = self.calibration_images
        sizes = [padded or run_size(*a.shape[:2], inf.min_size_test, inf.max_size_test) for a in images]
        tensors = [to_tensor(resize_image(a, s), "cpu") for a, s in zip(images, sizes)]
        return [ImageBatch.from_images([t], size_divisibility=d).tensor.numpy() for t in tensors]

    def session(self, padded: tuple[int, int]):
        """The session for inputs padded to `padded` (one for all sizes unless the graph is fixed to a size)."""
        from maskformer.export import export_onnx, onnx_session

        size = padded if self.fixed_size else None
        if size not in self.sessions:
            path = self.graph_path(size)
            inputs = self.calibration_inputs(size) if self.int8 else []
            int8 = path.with_name(f"{path.stem}-int8-{calibration_key(inputs)[:16]}.onnx") if self.int8 else None
            if not path.is_file() and not (int8 and int8.is_file()):
                log.info("exporting %s (onnxruntime backend)", path)
                export_onnx(self.source, path, sample_size=(1, *size) if size else (2, 96, 128))
            if int8 and not int8.is_file():  # quantized from the fp32 graph, which stays cached for the fp32 runner
                log.info("quantizing %s (int8, calibrated on %d images)", int8, len(inputs))
                quantize_static_int8(path, int8, inputs)
            self.sessions[size] = onnx_session(int8 or path, threads=torch.get_num_threads())
        return self.sessions[size]

    def __call__(self, images) -> dict:
        x = images.tensor if isinstance(images, ImageBatch) else images  # raw 0..255 [B, 3, H, W]
        d = max(1, self.size_divisibility)
        padded = (-(-x.shape[-2] // d) * d, -(-x.shape[-1] // d) * d)
        outputs = self.session(padded).run(None, {"images": x.detach().cpu().float().numpy()})
        return {n: torch.from_numpy(o).float() for n, o in zip(self.names, outputs)}


def calibration_key(inputs: list[np.ndarray]) -> str:
    """SHA-256 hex of the calibration inputs (shapes, bytes), the quantization settings and the onnxruntime version."""
    import onnxruntime

    h = hashlib.sha256(f"{onnxruntime.__version__} QDQ per-channel U8S8 minmax {STATIC_INT8_OPS}".encode())
    for x in inputs:
        h.update(f"{x.shape}".encode())
        h.update(np.ascontiguousarray(x, np.float32).tobytes())
    return h.hexdigest()


def quantize_static_int8(src: Path, dest: Path, inputs: list[np.ndarray]) -> Path:
    """onnxruntime static int8 quantization (QDQ, per-channel weights) of the STATIC_INT8_OPS nodes of `src`, with
    activation ranges calibrated (min / max) on `inputs` (raw images [1, 3, H, W]); written atomically to `dest`."""
    try:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise ImportError("int8 on onnxruntime needs onnxruntime and onnx: pip install 'maskformer[onnx]'") from None

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter({"images": x} for x in inputs)

        def get_next(self):
            return next(self.feeds, None)

    with tempfile.TemporaryDirectory() as tmp, atomic_file(dest) as out:
        prepared = Path(tmp) / "prepared.onnx"  # constants folded and Identity nodes removed, so weights are found
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=list(STATIC_INT8_OPS))
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
