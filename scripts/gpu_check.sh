#!/usr/bin/env bash
# The GPU checks of the CUDA engine, on a GPU machine with .gpu/ from
# scripts/gpu_bundle.sh (no Rust or network needed there). Logs go to $OUT (or out/).
# Stages, each on its own so that one failing does not hide the others:
#   rust   tests/gpu.rs: every op and reduction against the oracle, both schemes,
#          f32/f64, block-sparse, device arrays in place, the multi-GPU split
#   cache  cuda_info twice, with a new cache directory: compile time, then the disk hit
#   python tests/test_cuda.py (torch CUDA tensors in place, autograd, streams, ...)
#   bench  the issue's benchmark, GPU columns only (keops-rs with the planner's rows and
#          with 1, 2, 4 pinned; PyTorch; pykeops), the Gaussian sum first: BENCH_ARGS
#          replaces its arguments
# Usage: scripts/gpu_check.sh [stage ...]   (default: all four)
# Sized for a lease of 15 minutes of device time, a start and a rerun included: the
# whole script ends within DEADLINE seconds (default 330; give the device command a
# timeout of 360). Each stage stops at its own limit (LIMIT_<stage>, seconds) or at the
# deadline, whichever comes first, so that one hang cannot take the others' time; a
# stopped benchmark still reports what it measured. A table of stages, results and
# seconds ends the output.
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
# What keops finds there (driver, NVRTC, devices, or why not), before any stage.
"$PY" -c 'import keops; keops.check_health()' 2>&1 | tee -a "$LOG/gpu.txt"
# A GPU call is short and steady: 0.3 s of repeats gives its best time.
BENCH_ARGS=${BENCH_ARGS:---cases gauss,lse,knn3,knn64 --sizes 1e4,1e5,1e6 --budget 20
  --repeat 0.3 --methods keops-rs-gpu,torch-gpu,pykeops-gpu --gpu-rows 1,2,4}
DEADLINE=${DEADLINE:-330}
status=0 summary=""
for stage in "${@:-rust cache python bench}"; do
  for s in $stage; do
    limit_var=LIMIT_$s
    case $s in
      rust) cmd=(.gpu/gpu-tests --nocapture) limit=100 ;;
      # A cache directory of its own: the first process compiles, the second reads it.
      cache) cmd=(sh -c 'export KEOPS_CACHE_DIR=$(mktemp -d) && .gpu/cuda_info && .gpu/cuda_info')
             limit=20 ;;
      python) cmd=("$PY" -m pytest -q -rs -p no:cacheprovider crates/keops-python/tests/test_cuda.py
                   crates/keops-python/tests/test_torch.py) limit=60 ;;
      # shellcheck disable=SC2206  # BENCH_ARGS is a list of words
      bench) cmd=("$PY" benchmarks/bench.py --no-progress --out "$LOG" $BENCH_ARGS) limit=220 ;;
      *) echo "unknown stage $s"; status=1; continue ;;
    esac
    limit=${!limit_var:-$limit}
    left=$((DEADLINE - SECONDS - 10))  # 10 s for a stopped stage to report and exit
    if [ "$left" -lt 10 ]; then
      status=1 summary+=$(printf '\n%-7s %-20s %4d s' "$s" "not run: no time left" 0)
      continue
    fi
    [ "$limit" -le "$left" ] || limit=$left
    echo "== $s (at most $limit s): ${cmd[*]}"
    start=$SECONDS
    # SIGINT first: pytest and the benchmark then report what they did before exiting.
    timeout -s INT -k 8 "$limit" "${cmd[@]}" 2>&1 | tee "$LOG/$s.log"
    rc=${PIPESTATUS[0]}
    case $rc in 0) result=ok ;; 124|137) result="stopped at $limit s" ;; *) result="FAILED ($rc)" ;; esac
    [ "$rc" -eq 0 ] || status=1
    summary+=$(printf '\n%-7s %-20s %4d s' "$s" "$result" $((SECONDS - start)))
  done
done
echo "== stages (logs in $LOG; $SECONDS s in all)$summary"
exit $status
