"""evaluate_model against the file route: Predictor outputs written as PNG (+ JSON), scored by panopticapi or a
float64 per-class reference; plus the `maskformer eval` command end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _eval_data import id2rgb, panopticapi_stats, semantic_reference
from PIL import Image
from torch import nn

from maskformer.config import get_preset
from maskformer.data import build_dataset
from maskformer.data.synthetic import SynthConfig, write_synthetic
from maskformer.evaluation.loop import evaluate_model
from maskformer.predict import Predictor
from maskformer.structures import ImageBatch


class ColourModel(nn.Module):
    """A stand-in MaskFormer: query q predicts class q (p ~ .95), mask logits = closeness to the class colour."""

    size_divisibility = 32

    def __init__(self, palette: list[tuple[int, int, int]]):
        super().__init__()
        self.register_buffer("palette", torch.tensor(palette, dtype=torch.float32))
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, batch: ImageBatch) -> dict:
        low = nn.functional.avg_pool2d(batch.tensor, 4)  # [B, 3, H/4, W/4]
        dist = (low[:, None] - self.palette[None, :, :, None, None]).abs().sum(2) / 60  # [B, K, H/4, W/4]
        k = len(self.palette)
        logits = torch.cat([torch.eye(k) * 6, torch.zeros(k, 1)], 1).expand(len(low), k, k + 1)  # [B, Q=K, K+1]
        return {"pred_logits": logits, "pred_masks": self.scale * (2.0 - dist)}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    write_synthetic(root, SynthConfig(image_size=(64, 96), num_train=0, num_val=4, max_instances=3))
    cfg = get_preset("maskformer_r18_synth", [f"data.root={root}", "inference.min_size_test=80"])
    return root, cfg


def test_panoptic_equals_file_route_scored_by_panopticapi(synth, tmp_path):
    root, cfg = synth
    ds = build_dataset(cfg.data, "val", train=False, target="panoptic")
    model = ColourModel(ds.meta.palette)
    res = evaluate_model(model, ds, task="panoptic", cfg=cfg, batch_size=2)
    predictor = Predictor(model, task="panoptic", config=cfg, meta=ds.meta)
    anns = []
    (tmp_path / "pred").mkdir()
    for rec in ds.records:
        p = predictor(rec.image)
        name = f"{rec.image_id}.png"
        Image.fromarray(id2rgb(p.panoptic.numpy())).save(tmp_path / "pred" / name)
        segs = [{"id": s["id"], "category_id": ds.meta.dataset_ids[s["category_id"]]} for s in p.segments]
        anns.append({"image_id": rec.image_id, "file_name": name, "segments_info": segs})
    (tmp_path / "pred.json").write_text(json.dumps({"annotations": anns}))
    gt_json = root / "annotations" / "panoptic_val.json"
    oracle, counts = panopticapi_stats(gt_json, tmp_path / "pred.json", gt_folder=root / "panoptic_val")
    assert sum(c[0] for c in counts.values()) >= 4  # some segments matched: a meaningful comparison
    assert res["num_images"] == 4 and res["task"] == "panoptic"
    for name in ("All", "Things", "Stuff"):
        for m in ("pq", "sq", "rq"):
            assert abs(res[name][m] - oracle[name][m]) < 1e-9, (name, m)


def test_semantic_equals_reference_on_predictor_outputs(synth):
    root, cfg = synth
    ds = build_dataset(cfg.data, "val", train=False, target="semantic")
    model = ColourModel(ds.meta.palette)
    res = evaluate_model(model, ds, task="semantic", cfg=cfg)
    predictor = Predictor(model, task="semantic", config=cfg, meta=ds.meta)
    pairs = [
        (predictor(r.image).semantic.numpy(), np.asarray(Image.open(root / "panoptic_semseg_val" / Path(r.image).name)))
        for r in ds.records
    ]
    ref = semantic_reference(pairs, ds.meta.num_classes, 255)
    assert 0.1 < res["mIoU"] < 1.0
    for key in ("mIoU", "mIoU_gt", "mACC", "pACC", "fwIoU"):
        assert abs(res[key] - ref[key]) < 1e-12, key


def test_instance_and_tta_run(synth):
    pytest.importorskip("pycocotools")
    root, cfg = synth
    ds = build_dataset(cfg.data, "val", train=False, target="panoptic")
    model = ColourModel(ds.meta.palette)
    res = evaluate_model(model, ds, task="instance", cfg=cfg, max_images=2)
    assert res["num_images"] == 2 and -1.0 <= res["AP"] <= 1.0 and set(res["per_class"]) == {1, 2, 3, 4}
    sem = build_dataset(cfg.data, "val", train=False, target="semantic")
    tta_cfg = get_preset("maskformer_r18_synth", [f"data.root={root}", "inference.min_size_test=64"])
    tta_cfg.inference.tta_scales = (1.0, 1.5)
    res = evaluate_model(model, sem, task="semantic", cfg=tta_cfg, tta=True, max_images=2)
    assert res["num_images"] == 2 and 0.0 < res["mIoU"] <= 1.0
    with pytest.raises(ValueError, match="semantic evaluation only"):
        evaluate_model(model, ds, task="panoptic", cfg=cfg, tta=True)


def test_cli_eval_writes_report(synth, tmp_path, capsys):
    """A random preset model end to end: loads, evaluates, prints, writes the JSON report."""
    from maskformer.cli import main

    root, _ = synth
    out = tmp_path / "report.json"
    args = ["eval", "--model", "maskformer_r18_synth", "--data", str(root), "--split", "val", "--max-images", "1"]
    args += ["--workers", "0", "--device", "cpu"]
    assert main([*args, "--opts", "inference.min_size_test=64", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["task"] == "semantic" and report["num_images"] == 1 and len(report["per_class"]) == 8
    assert "mIoU" in capsys.readouterr().out
