#!/usr/bin/env bash
# The GPU check in one command: build the packed-attention kernel, run its correctness tests against PyTorch, time
# it against varlen_attn / flash SDPA / a dense mask, and run the PyTorch NaViT with varlen attention against dense;
# one JSON report in OUT (default out/gpu_check). Needs a CUDA GPU, a Python with CUDA PyTorch, nvcc and cmake;
# no TensorRT. Takes about 3-5 minutes, at most --budget seconds (420 by default).
#
#   scripts/gpu_check.sh [--out DIR] [--arch 90] [--kernel-lib LIB] [--budget S] [--python PY]
#   scripts/gpu_check.sh --dry-run [--out DIR]    # no GPU: compile with nvcc and check every step's no-GPU path
#
# Python: --python, else $PYTHON, else python3. See docs/gpu_check.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
args=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --python) PY="$2"; shift 2 ;;
        -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
        *) args+=("$1"); shift ;;
    esac
done
command -v "$PY" >/dev/null || { echo "error: $PY not found (set PYTHON or pass --python)" >&2; exit 2; }
cd "$ROOT"
exec "$PY" scripts/gpu_check.py --python "$(command -v "$PY")" ${args[@]+"${args[@]}"}
