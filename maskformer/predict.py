"""`Predictor`: a model + its config + its label space -> results on file paths, PIL images or arrays.

    predictor = Predictor("path/to/model_dir", task="panoptic")
    result = predictor("photo.jpg")            # Prediction: .semantic / .panoptic + .segments / .instances
    predictor.pipeline_output("photo.jpg")     # [{"score", "label", "mask"}] as transformers' segmentation pipeline
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from PIL import Image
from torch import nn

from maskformer import pipeline
from maskformer.backends import Calibration, build_runner, calibration_files, resolve
from maskformer.config import Config
from maskformer.pipeline import ImageError, Prediction, load_image
from maskformer.structures import TASKS, DatasetMeta

__all__ = ["ImageError", "Prediction", "Predictor", "load_image"]


class Predictor:
    """Load a model once, then predict on any number of images through maskformer.pipeline.

    model_or_path: an nn.Module (with `config`/`meta` given here or defaults) or a model directory / preset name
    (maskformer.hub.load_model). task: "semantic" | "panoptic" | "instance" (default: the config's).
    min_size_test / max_size_test: test-time resize (default: the config's; min_size_test=0 keeps the size).
    tta: multi-scale + flip averaging (semantic only; the config's tta_scales and tta_flip). Attributes: model, cfg,
    meta, task, inference (cfg.inference with the test sizes given here: the settings that run), precision (what
    it resolved to), backend, runner (what runs in place of the model: maskformer.backends.build_runner).
    meta: the label space (default: the model directory's, else placeholder names "class_0", ...).
    precision: "fp32" | "auto" | "bf16" | "fp16" | "int8" (maskformer.precision); backend: "torch" | "onnxruntime"
    (the exported graph, cached in cache_dir: default the model directory, else $MASKFORMER_HOME/onnx; CPU only).
    calibration: a folder of images that int8 on onnxruntime calibrates on (default: the model's training images).
    """

    def __init__(
        self, model_or_path: nn.Module | str | os.PathLike, *, task: str | None = None,
        device: str | torch.device = "cpu", meta: DatasetMeta | None = None, config: Config | None = None,
        min_size_test: int | None = None, max_size_test: int | None = None, batch_size: int = 1, tta: bool = False,
        overrides: Sequence[str] = (), precision: str = "fp32", backend: str = "torch",
        cache_dir: str | os.PathLike | None = None, calibration: str | os.PathLike | None = None,
    ):  # fmt: skip
        self.precision = resolve(backend, precision, device)  # checked before loading
        self.backend = backend
        if calibration is not None:  # int8 on onnxruntime calibrates on this folder's images (default: training data)
            calibration_files(calibration)
        if isinstance(model_or_path, nn.Module):
            model, cfg, loaded_meta = model_or_path, config or Config(), None
        else:
            from maskformer.hub import load_model  # lazily: the checkpoint layer is optional here

            model, cfg, loaded_meta = load_model(model_or_path, device, overrides=list(overrides))
            cfg = config or cfg
        self.model = model.to(device).eval()
        self.cfg = cfg
        self.task = task or cfg.inference.task
        if self.task not in TASKS:
            raise ValueError(f"task={self.task!r}; choose one of {', '.join(TASKS)}")
        if self.task != "semantic" and cfg.model.arch.startswith("per_pixel"):
            raise ValueError(f"task={self.task!r} needs a mask-classification model, not arch={cfg.model.arch!r}")
        self.meta = meta or loaded_meta
        if self.meta is None:  # placeholder names; a module given without config: as many as its outputs have
            k = cfg.model.num_classes
            if config is None:
                outputs, _ = pipeline.forward(self.model, [torch.zeros(3, 64, 64, device=pipeline.model_device(model))])
                k = pipeline.num_classes(outputs)
            self.meta = DatasetMeta(name="model", class_names=[f"class_{i}" for i in range(k)])
        sizes = {"min_size_test": min_size_test, "max_size_test": max_size_test}
        self.inference = replace(cfg.inference, **{k: v for k, v in sizes.items() if v is not None})  # what runs
        self.batch_size = max(1, int(batch_size))
        self.tta = tta
        if cache_dir is None and not isinstance(model_or_path, nn.Module) and os.path.isdir(model_or_path):
            cache_dir = model_or_path
        kw = dict(backend=backend, precision=self.precision, cache_dir=cache_dir)
        self.runner = build_runner(self.model, calibration=Calibration(calibration, cfg.data, self.inference), **kw)

    def __call__(self, images):
        """One image -> Prediction; a list -> list[Prediction]."""
        return self.predict(images) if isinstance(images, list | tuple) else self.predict([images])[0]

    def predict(self, images: Sequence) -> list[Prediction]:
        """Images of any kind load_image takes -> predictions, run batch_size at a time."""
        results = []
        for b0 in range(0, len(images), self.batch_size):
            chunk = images[b0 : b0 + self.batch_size]
            names = [str(x) if isinstance(x, str | os.PathLike) else f"image {b0 + i}" for i, x in enumerate(chunk)]
            results.extend(self.predict_arrays([load_image(x, n) for x, n in zip(chunk, names)], names))
        return results

    def predict_arrays(self, arrays: Sequence[np.ndarray], names: Sequence[str] = ()) -> list[Prediction]:
        """uint8 RGB [h, w, 3] images (one padded batch) -> predictions at their original sizes."""
        return pipeline.predict(
            self.runner, arrays, task=self.task, meta=self.meta, inference=self.inference,
            tta=self.tta and self.task == "semantic", names=names, rule=self.cfg.model.arch,
        )  # fmt: skip

    def pipeline_output(self, images, *, threshold: float = 0.5):
        """transformers-style output: per image a list of {"score", "label", "mask" (PIL "L", 255 inside)}.

        semantic: one entry per class present (score None); panoptic: one per segment; instance: one per instance
        with score >= threshold. One image -> a list; a list of images -> a list of lists.
        """
        single = not isinstance(images, list | tuple)
        preds = self.predict([images] if single else images)
        out = [[self._pipeline_entry(r) for r in pipeline.regions(p, threshold)] for p in preds]
        return out[0] if single else out

    def _pipeline_entry(self, r: pipeline.Region) -> dict:
        mask = Image.fromarray(r.mask.astype(np.uint8) * 255)  # mode L
        return {"score": r.score, "label": self.meta.class_names[r.label_id], "mask": mask}
