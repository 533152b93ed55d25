"""Shared fixtures: the ../shared data folder (tests skip when it is absent), seeding, optional oracles."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MASKFORMER_SHARED", REPO.parent / "shared"))


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def shared_data() -> Path:
    """../shared/data, or skip with a message."""
    path = SHARED / "data"
    if not path.is_dir():
        pytest.skip(f"shared data folder {path} is absent")
    return path


def require_transformers():
    """Import transformers' MaskFormer pieces or skip (it is a dev-only oracle)."""
    return pytest.importorskip("transformers", reason="transformers (dev extra) is the parity oracle")
