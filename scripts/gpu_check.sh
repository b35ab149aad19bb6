#!/usr/bin/env bash
# The GPU checks of the CUDA engine, on a GPU machine with .gpu/ from
# scripts/gpu_bundle.sh (no Rust or network needed there). Logs go to $OUT (or out/).
# Stages, each on its own so that one failing does not hide the others:
#   rust   tests/gpu.rs: every op and reduction against the oracle, both schemes,
#          f32/f64, block-sparse, device arrays in place, the multi-GPU split
#   cache  cuda_info twice, with one cache directory: compile time, then the disk hit
#   python tests/test_cuda.py (torch CUDA tensors in place, autograd, streams, ...)
#   bench  make bench's suite, GPU columns (pykeops GPU beside): ARGS to bench.py
# Usage: scripts/gpu_check.sh [stage ...]   (default: rust cache python)
set -uo pipefail
cd "$(dirname "$0")/.."
LOG=${OUT:-out}
mkdir -p "$LOG"
PY=${PY:-python3}
export PYTHONUNBUFFERED=1 KEOPS_CACHE_DIR=${KEOPS_CACHE_DIR:-/tmp/keops-cache}
if [ ! -d /tmp/site ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/*.whl
fi
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
# NVRTC: the keops package points at the nvidia-cuda-nvrtc wheel where torch has one.
KEOPS_NVRTC=${KEOPS_NVRTC:-$("$PY" -c 'import os, keops; print(os.environ.get("KEOPS_NVRTC", ""))')}
export KEOPS_NVRTC
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$LOG/gpu.txt"
status=0
for stage in "${@:-rust cache python}"; do
  for s in $stage; do
    echo "== $s"
    case $s in
      rust) .gpu/gpu-tests --test-threads=1 --nocapture 2>&1 | tee "$LOG/rust.log" ;;
      cache) { .gpu/cuda_info; .gpu/cuda_info; } 2>&1 | tee "$LOG/cache.log" ;;
      python) "$PY" -m pytest -q -rs -p no:cacheprovider crates/keops-python/tests/test_cuda.py \
                  crates/keops-python/tests/test_torch.py 2>&1 | tee "$LOG/python.log" ;;
      bench) "$PY" benchmarks/bench.py --no-progress ${BENCH_ARGS:-} 2>&1 | tee "$LOG/bench.log"
             cp -f benchmarks/out/* "$LOG/" 2>/dev/null ;;
      *) echo "unknown stage $s"; false ;;
    esac
    [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "== $s FAILED"; status=1; }
  done
done
exit $status
