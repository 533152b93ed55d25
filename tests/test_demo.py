"""`maskformer demo` end to end (slow: minutes; CI does not select it, run with `pytest -m slow tests/test_demo.py`).

Targets (issue 7): at most 10 minutes on 2 cores, synthetic data with >= 4 thing and >= 4 stuff classes, and on the
validation split mIoU >= 0.75 and PQ >= 0.50.
"""

from __future__ import annotations

import json
import time

import pytest

from maskformer.cli import main


@pytest.mark.slow
def test_demo_meets_its_targets(tmp_path, capsys):
    t0 = time.perf_counter()
    assert main(["demo", "--out", str(tmp_path), "--no-progress"]) == 0
    minutes = (time.perf_counter() - t0) / 60
    report = tmp_path / "report"
    assert str(report.resolve()) in capsys.readouterr().out  # the path is printed at the end
    for name in ("metrics.json", "curves.png", "overlays.png"):
        assert (report / name).is_file(), name
    doc = json.loads((report / "metrics.json").read_text())
    meta = json.loads((tmp_path / "data" / "meta.json").read_text())
    assert sum(meta["is_thing"]) >= 4 and sum(not t for t in meta["is_thing"]) >= 4
    m = doc["metrics"]
    assert m["mIoU"] >= 0.75 and m["PQ"] >= 0.50, m
    assert minutes <= 10, f"demo took {minutes:.1f} min"
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
