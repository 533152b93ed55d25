"""`Predictor`: a model + its config + its label space -> results on file paths, PIL images or arrays.

    predictor = Predictor("path/to/model_dir", task="panoptic")
    result = predictor("photo.jpg")            # Prediction: .semantic / .panoptic + .segments / .instances
    predictor.pipeline_output("photo.jpg")     # [{"score", "label", "mask"}] as transformers' segmentation pipeline

Images are converted to 8-bit RGB (grayscale, RGBA, palette, 16-bit and float inputs), resized so the short side is
min_size_test with the long side capped at max_size_test (detectron2's rule), run in batches, and every result is
mapped back to the original size with the official post-processing (maskformer.inference).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import nn

from maskformer.config import Config
from maskformer.inference import Instances, instance_inference, panoptic_inference, semantic_labels
from maskformer.structures import DatasetMeta, ImageBatch
from maskformer.tta import model_device, resize_image, semantic_tta, shortest_edge_size, to_tensor, tta_sizes

TASKS = ("semantic", "panoptic", "instance")


class ImageError(ValueError):
    """An input image that cannot be read or converted; the message names it."""


@dataclass
class Prediction:
    """Results for one image at its original size (h, w); fields of other tasks are None."""

    image_size: tuple[int, int]
    semantic: torch.Tensor | None = None  # int64 [h, w] contiguous class ids
    panoptic: torch.Tensor | None = None  # int32 [h, w] segment ids, 0 = VOID
    segments: list[dict] = field(default_factory=list)  # segments_info of `panoptic`
    instances: Instances | None = None  # masks bool [N, h, w], scores, labels
    source: str = ""


# ------------------------------------------------------------------------------------------------ image input
def load_image(image, name: str = "") -> np.ndarray:
    """A path, PIL image, numpy array ([h, w], [h, w, 1|3|4], or [1|3|4, h, w]) or tensor -> uint8 RGB [h, w, 3]."""
    if isinstance(image, str | os.PathLike):
        return _from_pil(_open(Path(image)), str(image))
    if isinstance(image, Image.Image):
        return _from_pil(image, name or "PIL image")
    if torch.is_tensor(image):
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray):
        return _from_array(image, name or "array")
    raise ImageError(
        f"{name or 'input'}: expected a path, PIL image, numpy array or tensor, got {type(image).__name__}"
    )


def _open(path: Path) -> Image.Image:
    if not path.is_file():
        raise ImageError(f"{path}: image file not found")
    try:
        img = Image.open(path)
        img.load()
        return ImageOps.exif_transpose(img)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: cannot read the image ({type(e).__name__}: {e})") from None


def _from_pil(img: Image.Image, name: str) -> np.ndarray:
    if img.mode.startswith("I") or img.mode == "F":  # 16/32-bit integer or float grayscale
        return _from_array(np.asarray(img), name)
    return np.asarray(img.convert("RGB"))


def _from_array(a: np.ndarray, name: str) -> np.ndarray:
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = a.transpose(1, 2, 0)  # CHW -> HWC
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] not in (3, 4) or min(a.shape[:2]) < 1:
        raise ImageError(f"{name}: cannot use an image of shape {a.shape}; expected [h, w], [h, w, 3] or [h, w, 4]")
    return _to_uint8(a[..., :3], name)


def _to_uint8(a: np.ndarray, name: str) -> np.ndarray:
    """8-bit as is; 16-bit (or larger ints up to 65535) scaled by 1/256; floats in [0, 1] scaled by 255."""
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.integer):
        if a.min(initial=0) < 0 or a.max(initial=0) > 65535:
            raise ImageError(f"{name}: integer pixel values {a.min()}..{a.max()} are outside 0..65535")
        return (a >> 8).astype(np.uint8) if a.max(initial=0) > 255 or a.dtype == np.uint16 else a.astype(np.uint8)
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ImageError(f"{name}: float image has NaN or infinite values")
        scale = 255.0 if a.max(initial=0) <= 1.0 else 1.0
        return (a * scale).round().clip(0, 255).astype(np.uint8)
    raise ImageError(f"{name}: unsupported pixel type {a.dtype}")


# ------------------------------------------------------------------------------------------------ predictor
class Predictor:
    """Load a model once, then predict on any number of images (see the module docstring).

    model_or_path: an nn.Module (with `config`/`meta` given here or defaults) or a model directory / preset name
    (maskformer.checkpoint.load_model). task: "semantic" | "panoptic" | "instance" (default: the config's).
    min_size_test / max_size_test: test-time resize (default: the config's; min_size_test=0 keeps the size).
    tta: multi-scale + flip averaging (semantic only; the config's tta_scales and tta_flip).
    """

    def __init__(
        self,
        model_or_path: nn.Module | str | os.PathLike,
        *,
        task: str | None = None,
        device: str | torch.device = "cpu",
        meta: DatasetMeta | None = None,
        config: Config | None = None,
        min_size_test: int | None = None,
        max_size_test: int | None = None,
        batch_size: int = 1,
        tta: bool = False,
        overrides: Sequence[str] = (),
    ):
        if isinstance(model_or_path, nn.Module):
            model, cfg, loaded_meta = model_or_path, config or Config(), None
        else:
            from maskformer.convert import load_model  # lazily: the checkpoint layer is optional here

            model, cfg, loaded_meta = load_model(model_or_path, device, overrides=list(overrides))
            cfg = config or cfg
        self.model = model.to(device).eval()
        self.cfg = cfg
        self._generic = meta is None and loaded_meta is None
        self.meta = meta or loaded_meta or _generic_meta(cfg.model.num_classes)
        self.task = task or cfg.inference.task
        if self.task not in TASKS:
            raise ValueError(f"task={self.task!r}; choose one of {', '.join(TASKS)}")
        if self.task != "semantic" and cfg.model.arch != "maskformer":
            raise ValueError(f"task={self.task!r} needs a mask-classification model, not arch={cfg.model.arch!r}")
        self.min_size = cfg.inference.min_size_test if min_size_test is None else min_size_test
        self.max_size = cfg.inference.max_size_test if max_size_test is None else max_size_test
        self.batch_size = max(1, int(batch_size))
        self.tta = tta

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    def __call__(self, images):
        """One image -> Prediction; a list -> list[Prediction]."""
        if isinstance(images, list | tuple):
            return self.predict(images)
        return self.predict([images])[0]

    def predict(self, images: Sequence) -> list[Prediction]:
        results = []
        for b0 in range(0, len(images), self.batch_size):
            chunk = images[b0 : b0 + self.batch_size]
            names = [str(x) if isinstance(x, str | os.PathLike) else f"image {b0 + i}" for i, x in enumerate(chunk)]
            arrays = [load_image(x, n) for x, n in zip(chunk, names)]
            results.extend(self.predict_arrays(arrays, names))
        return results

    @torch.no_grad()
    def predict_arrays(self, arrays: Sequence[np.ndarray], names: Sequence[str] = ()) -> list[Prediction]:
        """uint8 RGB [h, w, 3] images (one batch) -> predictions at their original sizes."""
        names = list(names) or [""] * len(arrays)
        originals = [tuple(a.shape[:2]) for a in arrays]
        if self.tta and self.task == "semantic":
            return [self._tta(a, n) for a, n in zip(arrays, names)]
        tensors = [to_tensor(self._resize(a), self.device) for a in arrays]
        batch = ImageBatch.from_images(tensors, size_divisibility=getattr(self.model, "size_divisibility", 32))
        outputs = self.model(batch)
        self._check_classes(outputs)
        kw = dict(padded_size=tuple(batch.tensor.shape[-2:]))
        preds = [Prediction(image_size=s, source=n) for s, n in zip(originals, names)]
        if self.task == "semantic":
            for p, lab in zip(preds, semantic_labels(outputs, batch.image_sizes, originals, **kw)):
                p.semantic = lab.cpu()
        elif self.task == "panoptic":
            inf = self.cfg.inference
            res = panoptic_inference(
                outputs, batch.image_sizes, originals, thing_ids=self.meta.thing_ids, meta=self.meta,
                object_mask_threshold=inf.object_mask_threshold, overlap_threshold=inf.overlap_threshold, **kw,
            )  # fmt: skip
            for p, (ids, segments) in zip(preds, res):
                p.panoptic, p.segments = ids.cpu(), segments
        else:
            things = self.meta.thing_ids if any(self.meta.is_thing) else None
            res = instance_inference(
                outputs, batch.image_sizes, originals, thing_ids=things, topk=self.cfg.inference.instance_topk, **kw
            )
            for p, inst in zip(preds, res):
                p.instances = Instances(inst.masks.cpu(), inst.scores.cpu(), inst.labels.cpu())
        return preds

    def _check_classes(self, outputs: dict) -> None:
        k = outputs["sem_seg"].shape[1] if "sem_seg" in outputs else outputs["pred_logits"].shape[-1] - 1
        if k == self.meta.num_classes:
            return
        if not self._generic:
            raise ValueError(
                f"the model predicts {k} classes but DatasetMeta {self.meta.name!r} has {self.meta.num_classes}"
            )
        self.meta = _generic_meta(k)

    def _resize(self, image: np.ndarray) -> np.ndarray:
        if self.min_size <= 0:
            return image
        return resize_image(image, shortest_edge_size(*image.shape[:2], self.min_size, self.max_size))

    def _tta(self, image: np.ndarray, name: str) -> Prediction:
        inf = self.cfg.inference
        sizes, cap = tta_sizes(self.min_size, inf.tta_scales, self.max_size)
        scores = semantic_tta(self.model, image, min_sizes=sizes, max_size=cap, flip=inf.tta_flip)
        return Prediction(image_size=tuple(image.shape[:2]), semantic=scores.argmax(0).cpu(), source=name)

    def pipeline_output(self, images, *, threshold: float = 0.5):
        """transformers-style output: per image a list of {"score", "label", "mask" (PIL "L", 255 inside)}.

        semantic: one entry per class present (score None); panoptic: one per segment; instance: one per instance
        with score >= threshold. One image -> a list; a list of images -> a list of lists.
        """
        single = not isinstance(images, list | tuple)
        out = [self._pipeline_entries(p, threshold) for p in self.predict([images] if single else images)]
        return out[0] if single else out

    def _pipeline_entries(self, p: Prediction, threshold: float) -> list[dict]:
        names = self.meta.class_names

        def mask_image(mask: torch.Tensor) -> Image.Image:
            return Image.fromarray(mask.numpy().astype(np.uint8) * 255, mode="L")

        if p.semantic is not None:
            return [
                {"score": None, "label": names[c], "mask": mask_image(p.semantic == c)}
                for c in p.semantic.unique().tolist()
            ]
        if p.panoptic is not None:
            return [
                {"score": s["score"], "label": names[s["category_id"]], "mask": mask_image(p.panoptic == s["id"])}
                for s in p.segments
            ]
        inst = p.instances
        return [
            {"score": float(s), "label": names[int(c)], "mask": mask_image(m)}
            for m, s, c in zip(inst.masks, inst.scores, inst.labels)
            if s >= threshold
        ]


def _generic_meta(k: int) -> DatasetMeta:
    """Placeholder names "class_0", ... for a model given without its label space."""
    return DatasetMeta(name="model", class_names=[f"class_{i}" for i in range(k)])
