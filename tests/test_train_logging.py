"""Metrics JSONL log, windowed averages, progress-bar terms and the curve plots."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from maskformer.engine.metrics import (
    COLORS,
    MetricsLogger,
    WindowMeter,
    bar_terms,
    plot_panels,
    plot_training_curves,
    read_jsonl,
    training_panels,
)


def test_logger_writes_reads_and_truncates(tmp_path):
    log = MetricsLogger(tmp_path, tensorboard=False)
    log.log(10, {"loss": 2.0, "lr": 1e-4})
    log.log(20, {"loss": float("nan")})
    log.log(20, {"val/mIoU": 0.5})
    with open(log.path, "a") as f:
        f.write('{"iter": 30, "lo')  # a torn line from a killed run
    recs = read_jsonl(log.path)
    assert recs == [{"iter": 10, "loss": 2.0, "lr": 1e-4}, {"iter": 20, "loss": "nan"}, {"iter": 20, "val/mIoU": 0.5}]
    log.truncate_after(10)
    assert [r["iter"] for r in read_jsonl(log.path)] == [10]


def test_logger_disabled_writes_nothing(tmp_path):
    MetricsLogger(tmp_path / "x", enabled=False).log(1, {"loss": 1.0})
    assert not (tmp_path / "x").exists()


def test_window_meter_averages():
    m = WindowMeter()
    m.add({"loss": 1.0}, data_time=0.1, step_time=0.9)
    m.add({"loss": 3.0}, data_time=0.3, step_time=0.7)
    avg = m.averages()
    assert avg["loss"] == 2.0 and abs(avg["time"] - 1.0) < 1e-12 and abs(avg["data_time"] - 0.2) < 1e-12
    m.reset()
    assert m.count == 0 and "loss" not in m.averages()


def test_bar_terms_show_final_layer_terms_only():
    shown = bar_terms({"loss": 1.5, "loss_ce": 0.25, "loss_ce_0": 9.0, "grad_norm": 3.0, "lr": 1e-4})
    assert shown == {"loss": "1.500", "loss_ce": "0.250", "lr": "1.00e-04"}


def test_training_panels_from_records():
    recs = [
        {"iter": 10, "loss": 3.0, "loss_ce": 1.0, "loss_ce_0": 1.2, "lr": 1e-4},
        {"iter": 20, "loss": 2.0, "loss_ce": 0.5, "loss_ce_0": 0.9, "lr": 9e-5},
        {"iter": 20, "val/mIoU": 0.4, "val/PQ": 0.3, "val/fwIoU": 0.5, "val/num_images": 50},
    ]
    panels = dict(training_panels(recs))
    assert panels["total loss"] == {"loss": ([10, 20], [3.0, 2.0])}
    assert set(panels["loss terms"]) == {"loss_ce"}
    assert panels["validation"] == {"mIoU": ([20], [0.4]), "PQ": ([20], [0.3])}  # main fractions only


def test_loss_spanning_decades_is_plotted_in_log10():
    panels = dict(training_panels([{"iter": 1, "loss": 100.0}, {"iter": 2, "loss": 1.0}]))
    assert panels["total loss (log10)"] == {"loss": ([1, 2], [2.0, 0.0])}


def test_plot_draws_each_series(tmp_path):
    path = plot_panels([("p", {"a": ([0, 1, 2], [0.0, 1.0, 0.5]), "b": ([0, 2], [1.0, 0.0])})], tmp_path / "c.png")
    img = np.asarray(Image.open(path).convert("RGB"))
    for color in COLORS[:2]:
        assert (np.abs(img.astype(int) - np.array(color)).sum(-1) == 0).sum() > 50  # the line is drawn in its colour
    assert plot_training_curves([], tmp_path / "none.png") is None


def test_plot_training_curves_writes_png(tmp_path):
    recs = [{"iter": i, "loss": 1.0 / i, "lr": 1e-4} for i in range(1, 20)]
    path = plot_training_curves(recs, tmp_path / "curves.png")
    assert path.is_file() and Image.open(path).size[0] >= 400
    json.dumps(recs)
