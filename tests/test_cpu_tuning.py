"""cpu_tuning: every switch off gives the same outputs; keep_freed_memory keeps freed multi-MB tensors in malloc's
heap for reuse (measured in fresh processes).

For the heap, the allocator's own view (glibc mallinfo2) is the primary measurement: it works in every sandbox. Minor
page faults are checked as well where the kernel reports them (some sandboxes report none).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
import torch

from maskformer import get_preset
from maskformer.cpu_tuning import keep_freed_memory, switched
from maskformer.modeling import build_model

PROBE = """
import ctypes, resource, sys, torch
from maskformer.cpu_tuning import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                     "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
if not hasattr(libc, "mallinfo2"):
    print("no-mallinfo2"); sys.exit()
libc.mallinfo2.restype = MallInfo2
def step():
    tensors = [torch.ones(4 << 20) for _ in range(5)]  # 5 x 16 MiB, freed at once: more than glibc's trim threshold
    alive = libc.mallinfo2()
    del tensors
    after = libc.mallinfo2()
    # bytes given back to the kernel by the free: heap trimmed (arena) or own-mmapped blocks unmapped (hblkhd)
    return (alive.arena - after.arena) + (alive.hblkhd - after.hblkhd)
returned = [step() >> 20 for _ in range(10)]  # MiB given back per step; the heap settles
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
returned += [step() >> 20 for _ in range(10)]
print(applied, ",".join(map(str, returned)), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _probe(mode: str) -> tuple[str, list[int], int]:
    """(applied, MiB returned to the kernel at each of 20 steps, minor page faults in the last 10 steps)."""
    env = {**os.environ, "MASKFORMER_KEEP_FREED_MEMORY": "1"}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, env=env)
    if out.stdout.strip() == "no-mallinfo2":
        pytest.skip("glibc < 2.33 has no mallinfo2")
    applied, returned, faults = out.stdout.split()
    return applied, [int(r) for r in returned.split(",")], int(faults)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc malloc only")
def test_freed_tensors_stay_in_the_heap():
    applied, kept_returned, kept_faults = _probe("keep")
    _, default_returned, default_faults = _probe("default")
    assert applied == "True"
    # glibc's default mmaps blocks this large at first and unmaps them on free (later it trims the heap top, or not,
    # depending on the heap's layout); kept, the 80 MiB freed at each step stay in the heap from the first step on
    assert default_returned[0] >= 80
    assert kept_returned == [0] * 20
    if default_faults:  # where the kernel counts faults (some sandboxes report none): kept memory takes none
        assert kept_faults < 100


def test_opt_out(monkeypatch):
    monkeypatch.setenv("MASKFORMER_KEEP_FREED_MEMORY", "0")
    assert keep_freed_memory() is False


def test_switches_off_give_the_same_outputs_and_are_restored():
    """fold_bn and fuse_mask_conv off (the plain conv + FrozenBN and conv + einsum paths) == on, batch of 2."""
    torch.manual_seed(0)
    model = build_model(get_preset("maskformer_r18_synth", ["model.backbone_norm=FrozenBN"])).eval()
    im = torch.rand(2, 3, 64, 96) * 255
    convs = [m for m in model.modules() if hasattr(m, "fold_bn")]
    assert convs and all(m.fold_bn for m in convs) and model.sem_seg_head.fuse_mask_conv
    with torch.no_grad():
        tuned = model(im)
        with switched(model, False):
            assert not any(m.fold_bn for m in convs) and not model.sem_seg_head.fuse_mask_conv
            plain = model(im)
    assert all(m.fold_bn for m in convs) and model.sem_seg_head.fuse_mask_conv
    for key in ("pred_logits", "pred_masks"):
        torch.testing.assert_close(tuned[key], plain[key], atol=1e-4, rtol=1e-4)


def test_library_calls_leave_threads_alone(tmp_path):
    """Building, running and counting a model do not change torch's thread count (no process-wide side effects)."""
    from maskformer.modeling.flops import measure

    before = torch.get_num_threads()
    model = build_model(get_preset("maskformer_r18_synth")).eval()
    with torch.no_grad():
        model(torch.rand(1, 3, 64, 64) * 255)
    measure(model, (64, 64))
    assert torch.get_num_threads() == before
