#!/usr/bin/env bash
# The one prepared GPU check (issue 18), at most ~8 minutes on a machine with one CUDA GPU and a CUDA PyTorch.
# Nothing else in the project depends on a GPU. Usage, from anywhere:
#   bash benchmarks/gpu_check.sh [OUT_DIR]      (results: OUT_DIR/gpu_results.md, append it to benchmarks/RESULTS.md)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-gpu_check_out}}
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT_DIR/gpu.txt" || true
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"
timeout 470 "$PY" benchmarks/gpu_check.py --out "$OUT_DIR/gpu_results.md" --repeats "${REPEATS:-20}" 2>&1 | tee "$OUT_DIR/gpu_log.txt"
