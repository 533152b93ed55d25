"""Export the tensor graph to ONNX or torch.export: `images` float [B, 3, H, W] (raw RGB 0..255; normalized and padded
inside the graph) -> `pred_logits` [B, Q, K+1], `pred_masks` [B, Q, Hp/4, Wp/4] (per-pixel baselines: `sem_seg`), with
dynamic batch, height and width. Post-processing stays outside (`inference`, or `numpy_postprocess` for onnxruntime).
ONNX uses torch's TorchScript-based exporter (no extra dependency; it traces the padding arithmetic symbolically).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from maskformer.cpu_tuning import switched
from maskformer.io import atomic_file
from maskformer.pipeline import model_device

FORMATS = ("onnx", "torch-export")
DEFAULT_OPSET = 17


class ExportModule(nn.Module):
    """Eval-mode wrapper returning a tuple: images [B, 3, H, W] -> (pred_logits, pred_masks) or (sem_seg,)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.eval()  # the wrapper too: exporters restore the wrapper's mode afterwards, recursively

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(images)
        if "pred_logits" in out:
            return out["pred_logits"], out["pred_masks"]
        return (out["sem_seg"],)


@contextlib.contextmanager
def traceable(model: nn.Module):
    """Switch off `fuse_mask_conv` while exporting (its Python loop over the batch would be unrolled by a tracer);
    afterwards restore it and the train/eval mode of every module."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        with switched(model, False, ("fuse_mask_conv",)):
            yield model
    finally:
        for m, training in modes:  # exactly the modes the caller had
            m.training = training


def output_names(model: nn.Module, sample: torch.Tensor | None = None) -> list[str]:
    """Names of the exported outputs, from one forward on a tiny sample."""
    sample = sample if sample is not None else sample_images(1, 64, 64)
    with torch.no_grad(), traceable(model):
        out = ExportModule(model)(sample.to(model_device(model)))
    return ["pred_logits", "pred_masks"] if len(out) == 2 else ["sem_seg"]


def sample_images(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Deterministic raw images float [batch, 3, height, width] in 0..255."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, height, width, generator=g) * 255


def export_onnx(
    model: nn.Module, path: str | os.PathLike, *, opset: int = DEFAULT_OPSET, sample_size=(2, 96, 128)
) -> Path:
    """Write an ONNX graph with input "images" [B, 3, H, W] and dynamic B, H, W; sample_size: (batch, height, width)
    of the tracing sample (any size works afterwards). Returns the file path."""
    path = Path(path)
    sample = sample_images(*sample_size).to(model_device(model))
    names = output_names(model, sample)
    maps = {0: "batch", 2: "mask_height", 3: "mask_width"}
    dynamic = {"images": {0: "batch", 2: "height", 3: "width"}, **{n: maps for n in names}}
    if "pred_logits" in names:
        dynamic["pred_logits"] = {0: "batch"}
    with atomic_file(path) as tmp, warnings.catch_warnings(), torch.no_grad(), traceable(model):
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(
            ExportModule(model),
            (sample,),
            str(tmp),
            dynamo=False,
            input_names=["images"],
            output_names=names,
            dynamic_axes=dynamic,
            opset_version=opset,
            do_constant_folding=True,
        )
    return path


def export_torch(
    model: nn.Module, path: str | os.PathLike, *, sample_size: tuple[int, int, int] = (2, 96, 128)
) -> Path:
    """Save a `torch.export` program (.pt2) with dynamic batch, height and width; load with torch.export.load."""
    path = Path(path)
    sample = sample_images(*sample_size).to(model_device(model))
    dyn = torch.export.Dim.DYNAMIC
    with torch.no_grad(), traceable(model):
        program = torch.export.export(
            ExportModule(model), (sample,), dynamic_shapes={"images": {0: dyn, 2: dyn, 3: dyn}}
        )
    with atomic_file(path) as tmp:
        torch.export.save(program, str(tmp))
    return path


def onnx_session(path: str | os.PathLike, *, threads: int | None = None):
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportError("onnxruntime is needed to run ONNX files: pip install 'maskformer[onnx]'") from None
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def check_export(
    model: nn.Module,
    path: str | os.PathLike,
    fmt: str,
    sizes: list[tuple[int, int, int]] = ((2, 64, 96), (1, 100, 75)),
) -> list[dict]:
    """Run the exported file and the eager model at (batch, height, width) sizes -> [{"size", "max_abs_diff",
    "max_abs_ref"}] (largest |difference| and largest |torch output| over outputs). A graph that cannot run at a size
    raises RuntimeError naming it (Swin graphs take only H, W padding to the traced sample's padded size)."""
    program = torch.export.load(str(path)).module() if _exporter(fmt) is export_torch else None
    session = onnx_session(path) if program is None else None

    def run(x: torch.Tensor) -> list:
        if program is not None:
            return [t.cpu() for t in program(x.to(model_device(model)))]
        try:
            return session.run(None, {"images": x.numpy()})
        except Exception as e:  # onnxruntime raises its own exception types
            msg = str(e).splitlines()[0][:300]
            raise RuntimeError(
                f"{path}: the exported graph fails at input {tuple(x.shape)} ({msg}); if the backbone is Swin, "
                "export at the size you will run (maskformer export --size H W)"
            ) from None

    results = []
    for i, (b, h, w) in enumerate(sizes):
        images = sample_images(b, h, w, seed=100 + i)
        with torch.no_grad(), traceable(model):
            ref = ExportModule(model)(images.to(model_device(model)))
            got = run(images)
        diffs, mags = [], []
        for r, o in zip(ref, got):
            o = torch.as_tensor(o)
            if tuple(o.shape) != tuple(r.shape):
                raise AssertionError(f"size {(b, h, w)}: output shape {tuple(o.shape)} != torch {tuple(r.shape)}")
            diffs.append(float((o.float().cpu() - r.float().cpu()).abs().max()))
            mags.append(float(r.abs().max()))
        results.append({"size": (b, h, w), "max_abs_diff": max(diffs), "max_abs_ref": max(mags)})
    return results


def export(model: nn.Module, path: str | os.PathLike, fmt: str, **kwargs) -> Path:
    return _exporter(fmt)(model, path, **kwargs)


def _exporter(fmt: str):
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    return export_onnx if fmt == "onnx" else export_torch
