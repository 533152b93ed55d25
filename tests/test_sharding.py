"""Sharded eval / predict (maskformer.sharding): 2 processes (gloo, CPU) give one process's numbers to the last digit
and one process's files; a predict run killed halfway resumes with --skip-existing, every output written once.

Processes are forked inside the test with the env vars torchrun sets (as tests/test_train_ddp.py); each runs the real
`maskformer eval` / `maskformer predict` commands.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from maskformer.evaluation.panoptic import PanopticEvaluator
from maskformer.evaluation.sem_seg import SemSegEvaluator
from maskformer.io import read_panoptic
from maskformer.sharding import PARTS

TINY = ["model.num_queries=6", "model.hidden_dim=32", "model.nheads=2", "model.dim_feedforward=32"]
TINY += ["model.dec_layers=1", "model.conv_dim=32", "model.mask_dim=32", "inference.min_size_test=48"]
TINY += ["inference.max_size_test=96", "inference.object_mask_threshold=0.0"]


# ------------------------------------------------------------------------------------------------ exact merging
def _sem_counts(a: int, b: int) -> np.ndarray:
    """Confusion counts [3, 2] of one image whose class-0 IoU is a / (a + b) (PQ^St matched: a / (a + b) > 0.5)."""
    c = np.zeros((3, 2), np.int64)
    c[0, 0], c[0, 1], c[1, 1] = a, b, 5
    return c


def _pan_image(g: np.random.Generator):
    """One 1 x W image: two "thing" GT segments of category 1 and one stuff segment of category 2, each predicted
    with a random overlap (so one image adds several IoUs to the same category's sum)."""
    sizes = g.integers(8, 30, 3)
    gt = np.repeat([1, 2, 3], sizes)[None]
    pred = gt.copy()
    for start in np.concatenate([[0], np.cumsum(sizes)[:-1]]):
        pred[0, start : start + int(g.integers(1, 3))] = 0  # a few pixels of each segment predicted VOID
    ids_cats = ((1, 1), (2, 1), (3, 2))
    gt_segs = [{"id": i, "category_id": c, "iscrowd": 0, "area": int(n)} for (i, c), n in zip(ids_cats, sizes)]
    return pred, [{"id": i, "category_id": c} for i, c in ids_cats], gt, gt_segs


def test_merge_state_of_consecutive_blocks_equals_one_pass_to_the_bit():
    """Integer counts sum exactly; float IoU sums are replayed in order, where adding per-block sums would not be."""
    ab = [(27, 3), (25, 4), (15, 4), (28, 1)]  # (v1 + v2) + (v3 + v4) != ((v1 + v2) + v3) + v4 in float64
    one, blocks = SemSegEvaluator(2), [SemSegEvaluator(2), SemSegEvaluator(2)]
    for b in blocks:
        b.record_additions()
    for i, x in enumerate(ab):
        one.update_counts(_sem_counts(*x))
        blocks[i // 2].update_counts(_sem_counts(*x))
    assert (blocks[0].pq_iou + blocks[1].pq_iou)[0] != one.pq_iou[0]  # the naive reduction is off in the last bit
    merged = SemSegEvaluator(2)
    for b in blocks:
        merged.merge_state(b.state())
    assert _same_json(merged.compute(), one.compute())
    assert merged.pq_iou.tobytes() == one.pq_iou.tobytes() and (merged.confusion == one.confusion).all()

    cats = [{"id": 1, "isthing": 1, "name": "t"}, {"id": 2, "isthing": 0, "name": "s"}]
    for seed in range(200):  # random images until the naive reduction differs (the test must be able to fail)
        images = [_pan_image(np.random.default_rng([seed, i])) for i in range(6)]
        one, halves = PanopticEvaluator(cats), [PanopticEvaluator(cats), PanopticEvaluator(cats)]
        for h in halves:
            h.record_additions()
        for i, img in enumerate(images):
            one.update(*img, image_id=i)
            halves[i // 3].update(*img, image_id=i)
        if (halves[0].iou + halves[1].iou).tobytes() != one.iou.tobytes():
            break
    else:
        pytest.fail("no image set found where summing per-block IoU sums differs from one pass")
    merged = PanopticEvaluator(cats)
    for h in halves:
        merged.merge_state(h.state())
    assert merged.iou.tobytes() == one.iou.tobytes() and _same_json(merged.compute(), one.compute())


def _same_json(a, b) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


# ------------------------------------------------------------------------------------------------ processes
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A synthetic dataset (6 val images), a tiny random-weight model directory of its classes, 6 input images."""
    from maskformer.checkpoint import save_pretrained
    from maskformer.config import get_preset
    from maskformer.data import build_dataset
    from maskformer.data.synthetic import SynthConfig, write_synthetic
    from maskformer.modeling import build_model

    root = tmp_path_factory.mktemp("shard")
    write_synthetic(root / "data", SynthConfig(image_size=(64, 96), num_train=0, num_val=6, max_instances=3))
    cfg = get_preset("maskformer_r18_synth", [f"data.root={root / 'data'}", *TINY])
    meta = build_dataset(cfg.data, "val", train=False, target="panoptic").meta
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():  # spread the classes so panoptic inference keeps a mix of segments
        model.sem_seg_head.predictor.class_embed.weight.mul_(20)
    save_pretrained(model, cfg, meta, root / "model")
    inputs = root / "inputs"
    inputs.mkdir()
    for i in range(6):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (40 + 4 * i, 56, 3), dtype=np.uint8)).save(
            inputs / f"img{i}.png"
        )
    return root


def _worker(rank: int, world: int, port: int, root: str) -> None:
    """One process of `world`: eval semantic + panoptic and predict panoptic through the CLI, outputs under w<world>."""
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
        os.environ["LOCAL_RANK"] = str(rank)
    torch.set_num_threads(1)
    from maskformer.cli import main
    from maskformer.engine import distributed as D

    base, out = Path(root), Path(root) / f"w{world}"
    D.init_distributed("cpu")  # the commands join this group and leave it to its owner
    try:
        with open(out / f"stdout{rank}.txt", "w") as log, contextlib.redirect_stdout(log):
            common = ["--model", str(base / "model"), "--data", str(base / "data"), "--split", "val", "--workers", "0"]
            for task in ("semantic", "panoptic"):
                args = ["eval", *common, "--device", "cpu", "--task", task, "--json", str(out / f"{task}.json")]
                assert main(args) == 0
            args = ["predict", "--model", str(base / "model"), str(base / "inputs"), "--task", "panoptic"]
            assert main([*args, "--out", str(out / "pred")]) == 0
    finally:
        D.cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="gloo backend not available")
def test_two_processes_equal_one_process(setup):
    """mIoU / PQ reports identical to the last digit; predict: same PNG bytes, one panoptic.json in input order."""
    for world in (1, 2):
        (setup / f"w{world}").mkdir()
        mp.start_processes(_worker, args=(world, _free_port(), str(setup)), nprocs=world, start_method="fork")
    one, two = setup / "w1", setup / "w2"
    for task in ("semantic", "panoptic"):
        a, b = (json.loads((d / f"{task}.json").read_text()) for d in (one, two))
        assert a == b and a["num_images"] == 6, task
    assert "mIoU" in a or "PQ" in a
    assert (one / "pred" / "panoptic.json").read_bytes() == (two / "pred" / "panoptic.json").read_bytes()
    doc = json.loads((two / "pred" / "panoptic.json").read_text())
    assert [x["file_name"] for x in doc["annotations"]] == [f"img{i}.png" for i in range(6)]
    for i in range(6):
        name = f"img{i}.png"
        for sub in ("panoptic", "overlay"):
            assert (one / "pred" / sub / name).read_bytes() == (two / "pred" / sub / name).read_bytes()
    lines = [(two / f"stdout{r}.txt").read_text().splitlines()[-1] for r in (0, 1)]  # each process did its half
    assert lines[0].startswith("3 of 3 images; process 1 of 2") and lines[1].startswith("3 of 3 images; process 2 of 2")


# ------------------------------------------------------------------------------------------------ resume
def test_killed_predict_resumes_with_skip_existing(setup, tmp_path):
    """SIGKILL after a few images; --skip-existing finishes the rest, keeps the finished files (same inode and
    mtime), leaves no temporary files, and writes one panoptic.json covering every image, each consistent with its
    PNG."""
    from maskformer.cli import main

    inputs, out = tmp_path / "many", tmp_path / "out"
    inputs.mkdir()
    n = 30
    for i in range(n):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(
            inputs / f"p{i:02d}.png"
        )
    cmd = [sys.executable, "-m", "maskformer", "predict", "--model", str(setup / "model"), str(inputs)]
    cmd += ["--task", "panoptic", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = out / PARTS
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(parts.glob("*.json")) if parts.is_dir() else []) < 3:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(p.stem for p in parts.glob("*.json"))
    assert 3 <= len(done) < n, f"{len(done)} of {n} images were complete at the kill"
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for s in done for p in _outputs(out, s)}
    assert not (out / "panoptic.json").exists()

    args = ["predict", "--model", str(setup / "model"), str(inputs), "--task", "panoptic", "--out", str(out)]
    assert main([*args, "--skip-existing"]) == 0
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in before} == before  # not rewritten
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]  # no half-written files left
    doc = json.loads((out / "panoptic.json").read_text())
    assert [a["file_name"] for a in doc["annotations"]] == [f"p{i:02d}.png" for i in range(n)]
    for ann in doc["annotations"]:
        assert all(p.is_file() for p in _outputs(out, Path(ann["file_name"]).stem))
        ids = read_panoptic(out / "panoptic" / ann["file_name"])
        assert {s["id"]: s["area"] for s in ann["segments_info"]} == {
            int(i): int((ids == i).sum()) for i in np.unique(ids) if i
        }


def _outputs(out: Path, stem: str) -> list[Path]:
    return [out / "panoptic" / f"{stem}.png", out / "overlay" / f"{stem}.png", out / PARTS / f"{stem}.json"]
