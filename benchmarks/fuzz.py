"""Run the property-based reader tests (tests/test_fuzz_readers.py, marker `fuzz`) with many examples.

    .venv/bin/python benchmarks/fuzz.py [--examples 2000] [-k pickles]

The same tests run in the normal suite with a few examples each; here each test draws --examples inputs (random and
mutated PNGs, COCO panoptic JSON, folder layouts, config.json, --opts, safetensors headers, pickles). A failure is
printed by hypothesis with the smallest input it found.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=2000, help="inputs per test (default 2000)")
    parser.add_argument("-k", default=None, help="only the tests whose name matches (pytest -k)")
    args = parser.parse_args()
    if args.examples < 1:
        parser.error(f"--examples must be >= 1, got {args.examples}")
    cmd = [sys.executable, "-m", "pytest", "tests/test_fuzz_readers.py", "-m", "fuzz", "-q", "-p", "no:cacheprovider"]
    cmd += ["-k", args.k] if args.k else []
    env = {**os.environ, "MASKFORMER_FUZZ_EXAMPLES": str(args.examples)}
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
