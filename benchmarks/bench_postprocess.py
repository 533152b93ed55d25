"""Post-processing speed: maskformer.inference (fast=True) vs transformers' MaskFormerImageProcessorPil, same logits.

100 queries, 150 classes, outputs at 512x512 (masks 128x128) and 1024x2048 (masks 256x512). The logits are
trained-like (transformers-oracle.md section 3): a soft Voronoi partition (stuff), overlapping blobs (things) and
no-object queries with arbitrary smooth masks and a little residual class probability. Calls are interleaved,
median of repeats, torch.set_num_threads(2). Ratios = transformers time / ours (wall clock and process CPU time).

    .venv/bin/python benchmarks/bench_postprocess.py [--repeats 5] [--write]   (--write: update RESULTS.md)
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from maskformer import inference as inf

Q, K = 100, 150
THINGS = list(range(0, K, 2))
STUFF = sorted(set(range(K)) - set(THINGS))


def trained_like(h: int, w: int, seed: int = 0, n_stuff: int = 20, n_things: int = 15) -> dict:
    """Outputs [1, Q, K+1] / [1, Q, h, w] resembling a trained model's (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)
    grid_y, grid_x = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    unit = (h * w) ** 0.5 / 128  # distances scale with the map, so both sizes show the same scene
    masks = torch.empty(Q, h, w)
    centres = torch.rand(n_stuff, 2, generator=g) * torch.tensor([h, w])
    d = ((grid_y - centres[:, 0, None, None]) ** 2 + (grid_x - centres[:, 1, None, None]) ** 2).sqrt() / unit
    nearest = d.min(0).values
    second = d.topk(2, dim=0, largest=False).values[1]
    own = torch.where(d == nearest, second, nearest)  # distance to the closest other centre
    masks[:n_stuff] = (1.5 * (own - d)).clamp(-15, 15)  # > 0 inside the own cell, soft across borders
    blob_c = torch.rand(n_things, 2, generator=g) * torch.tensor([h, w])
    radius = (4 + 8 * torch.rand(n_things, generator=g)) * unit
    db = (grid_y - blob_c[:, 0, None, None]) ** 2 + (grid_x - blob_c[:, 1, None, None]) ** 2
    masks[n_stuff : n_stuff + n_things] = 8 * (1 - db / radius[:, None, None] ** 2).clamp(min=-2)
    covered = masks[n_stuff : n_stuff + n_things].amax(0).clamp(min=0)  # things sit on top of the stuff
    masks[:n_stuff] -= 6 * covered
    rest = Q - n_stuff - n_things  # unmatched queries: arbitrary smooth masks
    noise = torch.randn(rest, 1, 8, 8, generator=g) * 4 - 3
    masks[n_stuff + n_things :] = F.interpolate(noise, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    masks += 0.3 * torch.randn(Q, h, w, generator=g)
    logits = torch.randn(Q, K + 1, generator=g)
    n_seg = n_stuff + n_things
    cls = torch.cat([torch.tensor(STUFF)[torch.randint(0, len(STUFF), (n_stuff,), generator=g)],
                     torch.tensor(THINGS)[torch.randint(0, len(THINGS), (n_things,), generator=g)],
                     torch.randint(0, K, (rest,), generator=g)])  # fmt: skip
    logits[torch.arange(Q), cls] += 8 + 3 * torch.rand(Q, generator=g)
    logits[n_seg:, K] += 12 + 2 * torch.rand(rest, generator=g)  # no-object wins for the unmatched queries
    return {"pred_logits": logits[None], "pred_masks": masks[None]}


def calls(out: dict, size: tuple[int, int]) -> dict:
    from transformers.models.maskformer.image_processing_pil_maskformer import MaskFormerImageProcessorPil

    hf = MaskFormerImageProcessorPil()
    hf_out = SimpleNamespace(class_queries_logits=out["pred_logits"], masks_queries_logits=out["pred_masks"])
    sizes = [size]
    return {
        "semantic": {
            "transformers": lambda: hf.post_process_semantic_segmentation(hf_out, target_sizes=sizes),
            "ours fast order": lambda: inf.semantic_labels(out, sizes, order="fast", fast=True),
            "ours official order": lambda: inf.semantic_labels(out, sizes, fast=True),
        },
        "panoptic": {
            "transformers": lambda: hf.post_process_panoptic_segmentation(
                hf_out, threshold=0.8, label_ids_to_fuse=set(STUFF), target_sizes=sizes
            ),
            "ours": lambda: inf.panoptic_inference(out, sizes, thing_ids=THINGS, fast=True),
        },
        "instance": {
            "transformers": lambda: hf.post_process_instance_segmentation(hf_out, target_sizes=sizes),
            "ours": lambda: inf.instance_inference(out, sizes, fast=True),
        },
    }


def measure(fns: dict, repeats: int) -> dict:
    """Interleaved timing: {name: (median wall ms, median CPU ms)}."""
    wall, cpu = {k: [] for k in fns}, {k: [] for k in fns}
    for f in fns.values():
        f()  # warm-up
    for _ in range(repeats):
        for name, f in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            f()
            wall[name].append(1000 * (time.perf_counter() - w0))
            cpu[name].append(1000 * (time.process_time() - c0))
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in fns}


def agreement(out: dict, size) -> dict:
    """Label agreement of our fast order with transformers (same rule) and of the tiled official path with the dense."""
    from transformers.models.maskformer.image_processing_pil_maskformer import MaskFormerImageProcessorPil

    hf_out = SimpleNamespace(class_queries_logits=out["pred_logits"], masks_queries_logits=out["pred_masks"])
    hf = MaskFormerImageProcessorPil().post_process_semantic_segmentation(hf_out, target_sizes=[size])[0]
    fast = inf.semantic_labels(out, [size], order="fast", fast=True)[0]
    official = inf.semantic_labels(out, [size], fast=True)[0]
    dense = inf.semantic_labels(out, [size])[0]  # the plain reference
    pan = inf.panoptic_inference(out, [size], thing_ids=THINGS, fast=True)[0][1]
    return {
        "fast vs transformers": (fast == hf).float().mean().item(),
        "official tiled vs dense": (official == dense).float().mean().item(),
        "segments": len(pan),
    }


def run(repeats: int) -> tuple[list[str], str]:
    rows, notes = [], []
    for low, size in (((128, 128), (512, 512)), ((256, 512), (1024, 2048))):
        out = trained_like(*low)
        torch.set_num_threads(2)
        with torch.inference_mode():
            agree = agreement(out, size)
            for task, fns in calls(out, size).items():
                rows += table_rows(size, task, measure(fns, repeats if size[0] <= 512 else max(3, repeats // 2)))
        notes.append(
            f"{size[0]}x{size[1]}: label agreement fast order vs transformers {agree['fast vs transformers']:.6f}, "
            f"tiled official order vs dense official {agree['official tiled vs dense']:.6f}; "
            f"{agree['segments']} panoptic segments"
        )
    torch.set_num_threads(1)  # the same at 512x512 on one thread (no fork/join costs on either side)
    out, one = trained_like(128, 128), []
    with torch.inference_mode():
        for task, fns in calls(out, (512, 512)).items():
            res = measure(fns, repeats)
            one += [
                f"{task} {name} {res['transformers'][1] / c:.1f}x" for name, (_, c) in res.items() if "ours" in name
            ]
    notes.append("one thread, 512x512, CPU-time speed-up: " + ", ".join(one))
    torch.set_num_threads(2)
    return rows, "\n".join(f"- {n}" for n in notes)


def table_rows(size, task: str, res: dict) -> list[str]:
    base_w, base_c = res["transformers"]
    return [
        f"| {size[0]}x{size[1]} | {task} | {name} | {w:.1f} | {c:.1f} | {base_w / w:.2f}x | {base_c / c:.2f}x |"
        for name, (w, c) in res.items()
    ]


ONE_THREAD_NOTE = (
    "- both sides run with the same intra-op thread setting; on a loaded machine every multi-threaded op pays a "
    "fork/join wait (transformers' per-query loops most), so the one-thread line is the like-for-like comparison."
)


def report(rows: list[str], notes: str, repeats: int) -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    head = (
        f"{datetime.date.today()}, `benchmarks/bench_postprocess.py`, CPU, torch.set_num_threads(2), batch 1, "
        f"Q={Q}, K={K}, trained-like logits, interleaved, median of {repeats} (3 at 1024x2048); load average "
        f"{load:.1f} at the end (shared machine: absolute times are noisy, ratios are from the same run).\n\n"
        "| output | task | implementation | wall ms | CPU ms | speed-up (wall) | speed-up (CPU) |\n"
        "|---|---|---|---:|---:|---:|---:|\n"
    )
    return head + "\n".join(rows) + "\n\n" + notes + "\n" + ONE_THREAD_NOTE + "\n"


def write_results(text: str, section: str = "inference (post-processing)") -> None:
    path = Path(__file__).with_name("RESULTS.md")
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    block = f"## {section}\n\n{text}\n"
    pattern = re.compile(rf"^## {re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    new = pattern.sub(lambda _: block, old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + block
    path.write_text(new)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="write the table into benchmarks/RESULTS.md")
    args = parser.parse_args()
    rows, notes = run(args.repeats)
    text = report(rows, notes, args.repeats)
    print(text)
    if args.write:
        write_results(text)
