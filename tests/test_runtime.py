"""keep_freed_memory: re-allocating a freed multi-MB tensor must not page-fault again (measured in fresh processes)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from maskformer.runtime import keep_freed_memory

FAULTS = """
import resource, sys, torch
from maskformer.runtime import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
def step():
    a, b, c = (torch.ones(4 << 20) for _ in range(3))  # 3 x 16 MiB: 48 MiB of heap freed at once
    del a, b, c
for _ in range(10):  # warm-up: the heap settles (aligned requests do not fit the first freed blocks exactly)
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[str, int]:
    env = {**os.environ, "MASKFORMER_KEEP_FREED_MEMORY": "1"}
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True, env=env)
    applied, faults = out.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc malloc only")
def test_freed_tensors_are_reused_without_page_faults():
    _, default = _faults("default")
    applied, kept = _faults("keep")
    assert applied == "True"
    assert default >= 10 * 1024  # glibc's default gives the freed top of the heap back: thousands of faults per step
    assert kept < default / 20


def test_opt_out(monkeypatch):
    monkeypatch.setenv("MASKFORMER_KEEP_FREED_MEMORY", "0")
    assert keep_freed_memory() is False
