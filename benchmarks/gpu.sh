#!/usr/bin/env bash
# The GPU checks, in one run of under 10 minutes on one CUDA device:
#   1. the CUDA test subset: every preset in float32 and float64 on the GPU against the CPU,
#      torch.compile against eager, bf16/tf32 training steps (tests/test_cuda.py, and the
#      precision tests of tests/test_precision.py on the GPU);
#   2. model forward + backward, the mace preset against mace-torch's MACE (with its
#      cuEquivariance backend when that is installed in the mace-torch venv), float32;
#   3. a short training run: steps/s and the loader's share of each step.
# usage: benchmarks/gpu.sh [python]   (default: .venv/bin/python, else python3)
# Steps 2 and 3 read the shared sample (../shared/data/mptrj_sample.json.gz) and step 2
# mace-torch's venv (benchmarks/_out/mace-venv, see benchmarks/_mace.py; created on first
# use, which needs the package index): where either is missing the step says so and fails.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${1:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
OUT=benchmarks/_out/gpu
mkdir -p "$OUT"
status=0
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log, remember failures
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit} s)"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - t0)) s"
    [ "$rc" -eq 0 ] || status=1
}

"$PY" - <<'EOF' || { echo "no CUDA device visible to torch; nothing to run"; exit 1; }
import torch
assert torch.cuda.is_available()
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
EOF

step cuda-tests 240 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_precision.py
step model-vs-mace 120 "$PY" benchmarks/model.py --device cuda --repeats 20
step model-vs-mace-cueq 90 "$PY" benchmarks/model.py --device cuda --repeats 20 --mace-cueq
step train 100 "$PY" benchmarks/train.py --device cuda --steps 40 --workers 4 --max-atoms 4096
echo "figures: $OUT/*.log"
exit $status
