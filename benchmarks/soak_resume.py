"""Crash soak of `maskformer train --resume`: a run killed with SIGKILL at random moments ends bit-identical.

A tiny CPU training run (maskformer_r18_synth, 64x64 synthetic images, batch 2) is run once uninterrupted, then
again while being killed (SIGKILL to its whole process group) `--kills` times and resumed with `--resume` after each
kill. Kill moments cycle through three kinds:
  iteration   a random fraction of the way into a random iteration (seen in metrics.jsonl, log_period=1)
  checkpoint  the moment a checkpoint write starts (a new entry under checkpoints/), plus 0-30 ms
  startup     a random time after the process starts (imports, model build, resume loading)
At the end the final model/model.safetensors must equal the uninterrupted run's tensor for tensor (bitwise), and the
metrics (losses, lr, grad norm per iteration; timings excluded) must be identical, including iterations re-run after
a kill. Prints a table; with --write replaces its section of benchmarks/RESULTS.md.

    python benchmarks/soak_resume.py --kills 20 --write      # a few minutes on a quiet machine
    python benchmarks/soak_resume.py --kills 3 --iters 12    # a quick check that it runs
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
SECTION = "## crash soak: train --resume after SIGKILL"
KINDS = ("iteration", "checkpoint", "iteration", "startup", "checkpoint", "iteration")
SKIP_KEYS = ("time", "data_time")  # wall-clock values differ between runs by nature


def train_command(data: Path, out: Path, args, resume: bool) -> list[str]:
    opts = [
        f"train.max_iter={args.iters}", "train.batch_size=2", f"train.checkpoint_period={args.period}",
        "train.eval_period=0", "train.log_period=1", "train.keep_last=0", f"data.num_workers={args.workers}",
        "data.crop_size=64,64", "data.min_size_train=64", "data.max_size_train=64", "data.pad_size=64",
    ]  # fmt: skip
    cmd = [sys.executable, "-m", "maskformer", "train", "--preset", "maskformer_r18_synth", "--data-root", str(data)]
    resume_flag = ["--resume"] if resume else []
    return cmd + ["--out", str(out), "--threads", "1", "--no-progress", *resume_flag, "--opts", *opts]


def start(cmd: list[str], log) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)


def logged_iters(out: Path) -> int:
    """The newest iteration in metrics.jsonl (0 when none)."""
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    iters = [json.loads(line).get("iter", 0) for line in lines if line.strip().endswith("}")]
    return max(iters, default=0)


def checkpoint_entries(out: Path) -> set[str]:
    """Names under checkpoints/ (complete checkpoints, temporary ones being written, the latest pointer)."""
    ckpt = out / "checkpoints"
    return set(os.listdir(ckpt)) if ckpt.is_dir() else set()


def has_checkpoint(out: Path) -> bool:
    """A complete checkpoint to resume from (not a temporary one a kill left behind)."""
    return any(n.startswith("iter_") and not n.endswith(".tmp") for n in checkpoint_entries(out))


def kill_once(proc: subprocess.Popen, out: Path, kind: str, rng: random.Random, iter_s: float, args) -> str:
    """Wait for the chosen moment, then SIGKILL the process group. Returns what the moment was."""
    t0, done0 = time.monotonic(), logged_iters(out)
    if kind == "startup":
        delay = rng.uniform(0.2, args.startup_s)
        while time.monotonic() - t0 < delay and proc.poll() is None:
            time.sleep(0.005)
        what = f"{delay:.2f} s after start"
    elif kind == "checkpoint":
        before = checkpoint_entries(out)
        while proc.poll() is None and checkpoint_entries(out) <= before:
            time.sleep(0.002)
        extra = rng.uniform(0, 0.03)
        time.sleep(extra)
        what = f"checkpoint write +{extra * 1000:.0f} ms ({sorted(checkpoint_entries(out) - before)[:1]})"
    else:
        target = min(args.iters - 1, done0 + rng.randint(1, args.period + 1))
        while proc.poll() is None and logged_iters(out) < target:
            time.sleep(0.005)
        frac = rng.random()
        time.sleep(frac * iter_s)
        what = f"{frac:.2f} into iteration {target + 1}"
    if proc.poll() is not None:
        if proc.returncode != 0:
            raise SystemExit(f"a run failed (exit {proc.returncode}) before the kill at {what}; see killed.log")
        return f"finished before the kill ({what})"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return what


def read_metrics(out: Path) -> tuple[dict[int, dict], int]:
    """{iter: values without timings}; and how many re-run iterations agreed with their first run (else raises)."""
    by_iter, repeats = {}, 0
    for line in (out / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "iter" not in rec or not any(k.startswith("loss") for k in rec):
            continue
        rec = {k: v for k, v in rec.items() if k not in SKIP_KEYS}
        if rec["iter"] in by_iter:
            repeats += 1
            if by_iter[rec["iter"]] != rec:
                raise AssertionError(f"iteration {rec['iter']} re-run after a kill gave other metrics")
        by_iter[rec["iter"]] = rec
    return by_iter, repeats


def same_weights(a: Path, b: Path) -> tuple[bool, str]:
    from safetensors.torch import load_file

    ta, tb = load_file(a), load_file(b)
    if ta.keys() != tb.keys():
        return False, f"keys differ: {sorted(ta.keys() ^ tb.keys())[:3]}"
    bad = [k for k in ta if ta[k].dtype != tb[k].dtype or not ta[k].equal(tb[k])]
    return not bad, f"{len(ta)} tensors, {len(bad)} differ" + (f" (e.g. {bad[0]})" if bad else "")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--iters", type=int, default=40, help="training iterations")
    p.add_argument("--period", type=int, default=4, help="checkpoint period (iterations)")
    p.add_argument("--workers", type=int, default=0, help="data-loading workers")
    p.add_argument("--startup-s", type=float, default=4.0, help="startup kills: up to this many seconds after start")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", action="store_true", help="keep the working folder")
    p.add_argument("--write", action="store_true", help="write the section of benchmarks/RESULTS.md")
    args = p.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="soak_resume_"))
    data, ref, run = work / "synth", work / "reference", work / "killed"
    subprocess.run([sys.executable, "-m", "maskformer", "synth", "--out", str(data), "--train", "16", "--val", "2",
                    "--size", "64"], check=True, capture_output=True, cwd=ROOT)  # fmt: skip
    with open(work / "reference.log", "w") as log:
        t0 = time.monotonic()
        if start(train_command(data, ref, args, False), log).wait() != 0:
            raise SystemExit(f"the uninterrupted run failed; see {work / 'reference.log'}")
        ref_s = time.monotonic() - t0
    times = [r.get("time", 0.0) for r in map(json.loads, (ref / "metrics.jsonl").read_text().splitlines())]
    iter_s = sorted(times)[len(times) // 2] if times else 0.3
    rows, starts, t0 = [], 0, time.monotonic()
    with open(work / "killed.log", "w") as log:
        for k in range(args.kills):
            kind = KINDS[k % len(KINDS)]
            resume = has_checkpoint(run)
            if not resume and run.exists():
                shutil.rmtree(run)  # killed before its first checkpoint: nothing to resume, start afresh
            proc = start(train_command(data, run, args, resume), log)
            starts += 1
            at = logged_iters(run)
            what = kill_once(proc, run, kind, rng, iter_s, args)
            rows.append((k + 1, kind, at, what, logged_iters(run)))
            print(f"kill {k + 1:2d} {kind:10s} resumed at iter {at:3d}: {what}", flush=True)
            if what.startswith("finished"):
                break
        resume = has_checkpoint(run)
        if not resume and run.exists():
            shutil.rmtree(run)
        while not (run / "model" / "model.safetensors").is_file() or logged_iters(run) < args.iters:
            starts += 1
            if start(train_command(data, run, args, resume), log).wait() != 0:
                raise SystemExit(f"a resumed run failed; see {work / 'killed.log'}")
    soak_s = time.monotonic() - t0
    ok_w, weights = same_weights(ref / "model" / "model.safetensors", run / "model" / "model.safetensors")
    m_ref, _ = read_metrics(ref)
    m_run, repeats = read_metrics(run)
    ok_m = m_ref == m_run
    lines = [
        SECTION, "",
        f"`python benchmarks/soak_resume.py --kills {args.kills} --iters {args.iters} --period {args.period}` "
        f"(maskformer_r18_synth, 64x64, batch 2, 1 thread, {args.workers} workers, seed {args.seed}): uninterrupted "
        f"{ref_s:.0f} s ({iter_s:.2f} s/iteration); {len(rows)} SIGKILLs + {starts} starts in {soak_s:.0f} s.", "",
        "| kill | kind | resumed at iter | moment | iters logged at kill |", "|---:|---|---:|---|---:|",
        *(f"| {n} | {kind} | {at} | {what} | {logged} |" for n, kind, at, what, logged in rows), "",
        f"- final weights bit-identical: **{'yes' if ok_w else 'NO'}** ({weights})",
        f"- metrics identical (losses, lr, grad norm; {len(m_ref)} iterations, {repeats} re-run after kills): "
        f"**{'yes' if ok_m else 'NO'}**", "",
    ]  # fmt: skip
    text = "\n".join(lines)
    print(text)
    if args.write:
        old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
        begin = old.find(SECTION)
        end = old.find("\n## ", begin + len(SECTION)) if begin >= 0 else -1
        new = old.rstrip("\n") + "\n\n" + text if begin < 0 else old[:begin] + text + (old[end:] if end >= 0 else "")
        RESULTS.write_text(new.rstrip("\n") + "\n")
    if args.keep or not (ok_w and ok_m):
        print(f"working folder kept: {work}")
    else:
        shutil.rmtree(work)
    return 0 if ok_w and ok_m else 1


if __name__ == "__main__":
    sys.exit(main())
