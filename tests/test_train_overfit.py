"""Overfitting: a tiny MaskFormer trained by the loop memorizes 4 synthetic images (mIoU >= 0.95 on them).

mIoU is computed here from a float64 confusion matrix of the predicted label maps (independent of the evaluators).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from train_helpers import TinyBackbone, tiny_config, write_tiny_synth

from maskformer.data import build_dataset, collate
from maskformer.engine.loop import Trainer
from maskformer.engine.metrics import read_jsonl
from maskformer.inference import semantic_labels
from maskformer.modeling import build_model


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def miou(preds: list[np.ndarray], gts: list[np.ndarray], k: int, ignore: int = 255) -> float:
    conf = np.zeros((k, k), np.float64)
    for p, g in zip(preds, gts):
        v = g != ignore
        np.add.at(conf, (g[v], p[v]), 1.0)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    return float((tp[union > 0] / union[union > 0]).mean())


def test_miou_helper_on_a_hand_example():
    g = np.array([[0, 0, 1, 1]])
    p = np.array([[0, 1, 1, 1]])
    assert miou([p], [g], 2) == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_tiny_model_overfits_four_images(tmp_path):
    root = write_tiny_synth(tmp_path / "synth", size=64, num_train=4, num_val=1)
    cfg = tiny_config(
        root,
        "train.max_iter=300",
        "train.batch_size=4",
        "train.base_lr=1e-3",
        "model.num_queries=12",
        "train.checkpoint_period=0",
        "train.log_period=10",
        "data.recipe=semantic",
    )
    torch.manual_seed(0)
    model = build_model(cfg, backbone=TinyBackbone((32, 32, 64, 64)))
    Trainer(cfg, tmp_path / "run", model=model, progress=False).run()
    losses = [r["loss"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert losses[-1] < 0.1 * losses[0]
    data = build_dataset(cfg.data, "train", train=False)
    images, targets, _ = collate([data[i] for i in range(len(data))])
    model.eval()
    with torch.no_grad():
        labels = semantic_labels(model(images), images.image_sizes)
    score = miou([p.numpy() for p in labels], [t.sem_seg.numpy() for t in targets], cfg.model.num_classes)
    assert score >= 0.95
