#!/usr/bin/env bash
# The GPU check (issue 16): TRM samples/s at the paper's Sudoku shapes (eager reference port, smoltrain eager and
# compiled, bf16), the 26M LM's tokens/s and MFU, the first minutes of `trm-sudoku` on a generated hard 9x9 set,
# and peak memory of each; writes OUT/gpu_check.json and OUT/gpu_check.md. Budget: <= 8 minutes on one H100/H200.
#   bash bench/gpu_check.sh --out /tmp/gpu-check            # on a GPU
#   bash bench/gpu_check.sh --dry-run --out /tmp/gpu-check  # on a CPU, seconds: checks the script works
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PYTHONPATH="$here/../src${PYTHONPATH:+:$PYTHONPATH}"
exec python "$here/gpu_check.py" "$@"
