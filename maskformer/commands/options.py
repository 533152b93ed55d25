"""Checks of command-line option values shared by predict / eval / export / serve: each bad value is one line naming the
option and what is allowed, raised as OptionError before any work starts (no model loaded, nothing written).
Also the CPU thread count a command runs with (not set by the library: a command owns its process).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import uuid
import warnings
from pathlib import Path

MIN_FREE_BYTES = 64 << 20  # an output folder with less free space than this is "full"


class OptionError(ValueError):
    """A command-line option value outside what is allowed; the message names the option."""


def at_least(option: str, value: int | None, low: int = 1) -> None:
    """`value` (None: not given) must be an integer >= low."""
    if value is not None and value < low:
        raise OptionError(f"{option} must be an integer >= {low}, got {value}")


def check_device(device: str | None, option: str = "--device") -> None:
    """cpu, cuda[:N] or mps, and present on this machine."""
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise OptionError(f"{option} {device!r} is not a device; use cpu, cuda, cuda:N or mps")
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise OptionError(f"{option} {device}: CUDA is not available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= count:
            raise OptionError(f"{option} {device}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise OptionError(f"{option} {device}: MPS is not available on this machine; use --device cpu")


def check_writable(folder: str | os.PathLike, option: str = "--out") -> None:
    """`folder` (created later if missing) can take files: not a file, writable, not full. Creates nothing."""
    folder = Path(folder)
    existing = next(p for p in [folder, *folder.parents] if p.exists())
    if not existing.is_dir():
        raise OptionError(f"{option} {folder}: {existing} is a file, not a folder")
    probe = existing / f".maskformer-write-test-{uuid.uuid4().hex[:8]}"
    try:
        probe.write_bytes(b"0" * 4096)
    except OSError as e:
        raise OptionError(f"{option} {folder}: cannot write in {existing} ({e.strerror or e})") from None
    finally:
        probe.unlink(missing_ok=True)
    free = shutil.disk_usage(existing).free
    if free < MIN_FREE_BYTES:
        raise OptionError(f"{option} {folder}: the disk is full ({free >> 20} MiB free, {MIN_FREE_BYTES >> 20} needed)")


# argparse attribute -> (option, smallest allowed integer); checked by check_args where a command has the option
LOWEST = {
    "batch_size": ("--batch-size", 1), "min_size": ("--min-size", 0), "max_size": ("--max-size", 1),
    "workers": ("--workers", 0), "max_images": ("--max-images", 1), "threads": ("--threads", 1),
    "opset": ("--opset", 7),
}  # fmt: skip


def check_args(args: argparse.Namespace, *, out_folder: str | None = None, out_file: str | None = None) -> None:
    """Every option value of `args` that LOWEST, --threshold, --tolerance, --size and --device cover, and that the
    output folder (predict's --out) or the output file's folder (export's --out, eval's --json) can take files."""
    for attr, (option, low) in LOWEST.items():
        at_least(option, getattr(args, attr, None), low)
    if getattr(args, "threshold", None) is not None and not 0 <= args.threshold <= 1:
        raise OptionError(f"--threshold must be a number in [0, 1], got {args.threshold}")
    if getattr(args, "tolerance", None) is not None and not args.tolerance >= 0:
        raise OptionError(f"--tolerance must be a number >= 0, got {args.tolerance}")
    for side in getattr(args, "size", None) or ():
        at_least("--size", side, 32)
    check_device(getattr(args, "device", None))
    if getattr(args, "calibration", None) is not None:
        check_calibration(args.calibration)
    if out_folder is not None:
        check_writable(out_folder)
    if out_file is not None:
        if Path(out_file).is_dir():
            raise OptionError(f"--out {out_file} is a folder; give a file name")
        check_writable(Path(out_file).parent)


def check_calibration(folder: str) -> None:
    """--calibration: a folder with at least one image (maskformer.backends.calibration_files)."""
    from maskformer.backends import calibration_files

    try:
        calibration_files(folder)
    except ValueError as e:
        raise OptionError(str(e)) from None


@contextlib.contextmanager
def loud_warnings():
    """Within the block, each distinct warning (e.g. a preset's RANDOM weights) is printed once, framed, on stderr,
    instead of Python's file:line form."""
    seen: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None):
        text = str(message)
        if text not in seen:
            seen.add(text)
            rule = "!" * min(100, len(text) + 9)
            print(f"{rule}\nWARNING: {text}\n{rule}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        yield


def physical_cores() -> int:
    """Physical CPU cores this process may use (hyper-threads counted once; /proc/cpuinfo where it exists)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        cores, package = set(), "0"
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "physical id":
                package = value.strip()
            elif key.strip() == "core id":
                cores.add((package, value.strip()))
    except OSError:
        cores = set()
    return max(1, min(usable, len(cores) or usable))


def default_threads() -> tuple[int, str]:
    """(threads, why): physical cores minus the 1-minute load average, at least 1, so a busy machine is not
    oversubscribed (torch's default, one thread per core regardless of load, runs many times slower there)."""
    cores = physical_cores()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, int(cores - load + 0.5)), f"{cores} physical cores, load {load:.1f}"


@contextlib.contextmanager
def cpu_threads(requested: int | None):
    """Within the block, torch uses `requested` CPU threads (--threads), else default_threads(); the choice is
    printed on stderr, and the previous count restored afterwards (commands also run inside tests)."""
    import torch

    at_least("--threads", requested)
    threads, why = (requested, "--threads") if requested else default_threads()
    before = torch.get_num_threads()
    print(f"threads: {threads} ({why})", file=sys.stderr)
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)
