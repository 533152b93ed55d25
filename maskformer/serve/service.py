"""The model side of the server: request parameters, image decoding, and a `MicroBatcher` over one `Predictor`.

    service = ModelService.load("runs/synth/model", max_batch=8)      # any model reference `--model` accepts
    params = service.parse_params({"task": "panoptic", "format": "segments"})     # ParamError (422) if bad
    image = decode_image(body, max_pixels=service.max_pixels)                     # BadInput (4xx) if bad
    prediction = service.submit(image, params).result()                           # QueueFull -> 503

Jobs with the same task, thresholds and run size (the size the pipeline resizes an image to) share one padded batch,
so an image gets the same result whoever else is in the queue. All model calls happen on the batcher's one thread.
"""

from __future__ import annotations

import dataclasses
import io as bytes_io
import os
import warnings
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from maskformer.backends import resolve
from maskformer.config import Config
from maskformer.pipeline import ImageError, load_image, model_device, run_size
from maskformer.predict import Predictor
from maskformer.serve.batcher import Job, MicroBatcher, QueueFull
from maskformer.serve.encode import FORMATS
from maskformer.serve.metrics import Metrics
from maskformer.structures import TASKS, DatasetMeta

__all__ = ["BadInput", "ModelService", "ParamError", "PredictParams", "QueueFull", "decode_image", "load_reference"]

DEFAULT_MAX_PIXELS = 40_000_000  # ~ 7300 x 5500; Pillow's own bomb guard only errors past ~179 M pixels


class BadInput(ValueError):
    """A request the server refuses; `status` is the HTTP code (400, 413, 422)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class ParamError(BadInput):
    def __init__(self, message: str):
        super().__init__(message, 422)


@dataclass(frozen=True)
class PredictParams:
    """What a POST /predict may ask; None thresholds mean the model config's."""

    task: str
    format: str = "segments"
    threshold: float = 0.5  # instances (and pipeline entries) with a lower score are left out
    object_mask_threshold: float | None = None
    overlap_threshold: float | None = None
    masks: bool = False  # pipeline format: base64 PNG masks


PARAM_NAMES = tuple(f.name for f in dataclasses.fields(PredictParams))


def load_reference(ref: str | os.PathLike, device: str = "cpu", overrides: Iterable[str] = ()):
    """(model, cfg, meta) from anything `--model` accepts: model directory, checkpoint, preset, and (with
    maskformer.hub) zoo names, hub ids and URLs."""
    try:
        from maskformer.hub import load_model
    except ImportError:  # without the hub layer: local references only
        from maskformer.convert import load_model
    return load_model(ref, device, overrides=list(overrides))


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "upload") -> np.ndarray:
    """Image file bytes -> uint8 RGB [h, w, 3] (EXIF orientation applied). The pixel count is checked from the
    header before decoding (decompression bombs: 413); unreadable or truncated data is a 400."""
    if not data:
        raise BadInput(f"{name}: empty body; send an image file (multipart field or raw body)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit below decides
            img = Image.open(bytes_io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise BadInput(f"{name}: image too large ({e})", 413) from None
    except UnidentifiedImageError:
        raise BadInput(f"{name}: not an image file (no format Pillow reads: PNG, JPEG, WebP, ...)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadInput(f"{name}: not an image Pillow can read ({type(e).__name__}: {e})") from None
    w, h = img.size
    if w * h > max_pixels:
        raise BadInput(f"{name}: image has {w} x {h} = {w * h} pixels; this server accepts at most {max_pixels}", 413)
    try:
        img.load()
        return load_image(ImageOps.exif_transpose(img), name)
    except (OSError, SyntaxError, ValueError, ImageError) as e:
        raise BadInput(f"{name}: cannot decode the image ({type(e).__name__}: {e}); truncated or corrupt?") from None


class ModelService:
    """A loaded model + its label space + the micro-batcher that runs it (see the module docstring)."""

    def __init__(self, model, cfg: Config, meta: DatasetMeta, *, task: str | None = None, reference: str = "",
                 max_batch: int = 8, max_wait_s: float = 0.005, max_queue: int = 64,
                 max_pixels: int = DEFAULT_MAX_PIXELS, precision: str = "fp32", backend: str = "torch",
                 cache_dir=None, calibration=None):  # fmt: skip
        """precision / backend / cache_dir / calibration: as Predictor's (maskformer.backends; what runs: info())."""
        self.model, self.cfg, self.meta, self.reference = model.eval(), cfg, meta, reference
        self.device, self.task = model_device(model), task or cfg.inference.task
        self.tasks = ("semantic",) if cfg.model.arch.startswith("per_pixel") else TASKS
        if self.task not in self.tasks:
            raise ValueError(f"task={self.task!r}; this model serves {', '.join(self.tasks)}")
        self.max_pixels, self.metrics = max_pixels, Metrics()
        self.predictor = Predictor(model, task=self.task, device=self.device, config=cfg, meta=meta,
                                   precision=precision, backend=backend, cache_dir=cache_dir,
                                   calibration=calibration)  # fmt: skip
        self.inference = self.predictor.inference  # the model's settings; requests may change the thresholds
        self.batcher = MicroBatcher(self._run_batch, max_batch=max_batch, max_wait_s=max_wait_s, max_queue=max_queue)

    @classmethod
    def load(cls, reference: str, *, device: str = "cpu", overrides: Iterable[str] = (), **kwargs) -> ModelService:
        """The service of anything `--model` accepts; a bad precision / backend is refused before loading."""
        resolve(kwargs.get("backend", "torch"), kwargs.get("precision", "fp32"), device)
        model, cfg, meta = load_reference(reference, device, overrides)
        cache = reference if os.path.isdir(reference) else None  # the onnxruntime graph is cached with the model
        return cls(model, cfg, meta, reference=str(reference), cache_dir=cache, **kwargs)

    def close(self) -> None:
        self.batcher.close()

    # ------------------------------------------------------------------------------------------ parameters
    def parse_params(self, query: Mapping[str, str]) -> PredictParams:
        """Query / form fields -> PredictParams; an unknown name or bad value is a ParamError naming it."""
        unknown = sorted(set(query) - set(PARAM_NAMES))
        if unknown:
            raise ParamError(f"unknown parameter(s) {', '.join(unknown)}; valid: {', '.join(PARAM_NAMES)}")
        task = query.get("task", self.task)
        if task not in self.tasks:
            raise ParamError(f"task={task!r}; choose one of {', '.join(self.tasks)}")
        fmt = query.get("format", "segments")
        if fmt not in FORMATS:
            raise ParamError(f"format={fmt!r}; choose one of {', '.join(FORMATS)}")
        masks = query.get("masks", "false").lower()
        if masks not in ("true", "false", "1", "0"):
            raise ParamError(f"masks={masks!r}; use true or false")
        floats = {k: _unit_float(k, query[k]) for k in ("threshold", "object_mask_threshold", "overlap_threshold")
                  if k in query}  # fmt: skip
        return PredictParams(task=task, format=fmt, masks=masks in ("true", "1"), **floats)

    # ------------------------------------------------------------------------------------------ running
    def submit(self, image: np.ndarray, params: PredictParams) -> Future:
        """Queue uint8 RGB [h, w, 3] for prediction -> Future[Prediction]. Raises QueueFull."""
        return self.batcher.submit((image, params))

    def _run_batch(self, jobs: list[Job]) -> None:
        """Group jobs by (task, thresholds, run size), one predict_arrays call per group; a group's error fails
        only that group. The one Predictor is set to each group's task and thresholds (only this thread uses it)."""
        inf, groups = self.predictor.inference, {}
        for job in jobs:
            image, p = job.payload
            size = run_size(*image.shape[:2], inf.min_size_test, inf.max_size_test)
            groups.setdefault((p.task, p.object_mask_threshold, p.overlap_threshold, size), []).append(job)
        for (task, object_mask, overlap, _), group in groups.items():
            try:
                self.predictor.task = task
                self.predictor.inference = dataclasses.replace(
                    self.inference,
                    object_mask_threshold=self.inference.object_mask_threshold if object_mask is None else object_mask,
                    overlap_threshold=self.inference.overlap_threshold if overlap is None else overlap,
                )
                preds = self.predictor.predict_arrays([job.payload[0] for job in group], ["upload"] * len(group))
            except Exception as e:
                for job in group:
                    job.future.set_exception(e)
                continue
            self.metrics.observe_batch(len(group))
            for job, pred in zip(group, preds):
                job.future.set_result(pred)

    # ------------------------------------------------------------------------------------------ description
    def info(self) -> dict:
        """What GET /model returns: the label space, tasks, and the model's shape and input size."""
        cfg, meta, inf = self.cfg, self.meta, self.inference
        from maskformer.config import PRESETS

        rows = enumerate(zip(meta.class_names, meta.is_thing, meta.palette, meta.dataset_ids))
        classes = [dict(id=i, name=n, is_thing=bool(t), color=list(c), dataset_id=int(d)) for i, (n, t, c, d) in rows]
        return dict(
            model=self.reference, preset=self.reference if self.reference in PRESETS else None, arch=cfg.model.arch,
            backbone=cfg.model.backbone, num_queries=cfg.model.num_queries, dataset=meta.name, classes=classes,
            tasks=list(self.tasks), default_task=self.task, formats=list(FORMATS),
            input_size=dict(min_size_test=inf.min_size_test, max_size_test=inf.max_size_test),
            thresholds=dict(object_mask_threshold=inf.object_mask_threshold, overlap_threshold=inf.overlap_threshold),
            device=str(self.device), precision=self.predictor.precision, backend=self.predictor.backend,  # what runs
            max_batch=self.batcher.max_batch, max_queue=self.batcher.max_queue, max_pixels=self.max_pixels,
        )  # fmt: skip


def _unit_float(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ParamError(f"{name}={text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise ParamError(f"{name}={value} must lie in [0, 1]")
    return value
