#!/usr/bin/env bash
# The GPU checks of the CUDA engine, on a GPU machine with .gpu/ from
# scripts/gpu_bundle.sh (no Rust or network needed there).
# Stages, each on its own so that one failing does not hide the others:
#   rust     tests/gpu.rs: every op and reduction against the oracle, both schemes,
#            f32/f64, block-sparse, device arrays in place, the multi-GPU split, and
#            the in-place and block-sparse tests again without memory pools
#            (KEOPS_CUDA_MEMORY_POOLS=0)
#   cache    cuda_info twice, with a new cache directory: compile time, then the disk
#            hit and wide outputs by columns against whole rows; a third time without
#            memory pools (small calls' cost)
#   python   tests/test_cuda.py (torch CUDA tensors in place, autograd, streams, ...)
#   bench    the issue's benchmark, GPU columns only (keops-rs with the planner's rows
#            and with 1, 2, 4 pinned; PyTorch; pykeops), the Gaussian sum first:
#            BENCH_ARGS replaces its arguments
#   sanitize compute-sanitizer's memcheck and racecheck over the in-place and
#            block-sparse tests (every reduction, both schemes; kernels from the cache)
#   pykeops  (not by default) pykeops 2.3's own test suite on keops, CUDA tensors
#            wherever it uses them (scripts/pykeops_suite.sh, bundled)
#   compile  (not by default) torch.compile with Inductor and CUDA graphs on CUDA
#            tensors (test_cuda.py -k inductor: Triton compiles, tens of seconds)
# Usage: scripts/gpu_check.sh [stage ...]   (default: the first five)
# Sized for a lease of 15 minutes of device time, a start and a rerun included: the
# whole script ends within DEADLINE seconds (default 330; give the device command a
# timeout of 360). Each stage stops at its own limit (LIMIT_<stage>, seconds) or at the
# deadline, whichever comes first, so that one hang cannot take the others' time; a
# stopped benchmark still reports what it measured. While the first stages run, the
# benchmark's kernels (keops-rs' and pykeops', whose first call also builds its own
# binder) are compiled in the background, so that compiling takes none of its time.
# Output: $OUT (or out/) gets check.log (everything printed) and the benchmark's
# bench.md, results.json and bench.png; a table of stages, results and seconds ends
# the output.
set -uo pipefail
cd "$(dirname "$0")/.."
LOG=${OUT:-out}
mkdir -p "$LOG"
: >"$LOG/check.log"
say() { "$@" 2>&1 | tee -a "$LOG/check.log"; }
PY=${PY:-python3}
export PYTHONUNBUFFERED=1 KEOPS_CACHE_DIR=${KEOPS_CACHE_DIR:-/tmp/keops-cache}
if [ ! -d /tmp/site ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/*.whl
fi
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
# NVRTC: the keops package points at the nvidia-cuda-nvrtc wheel where torch has one.
KEOPS_NVRTC=${KEOPS_NVRTC:-$("$PY" -c 'import os, keops; print(os.environ.get("KEOPS_NVRTC", ""))')}
export KEOPS_NVRTC
say nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
# What keops finds there (driver, NVRTC, devices, or why not), before any stage.
say "$PY" -c 'import keops; keops.check_health()'
# What pykeops needs to build its binder on first use (g++, CUDA headers, Python.h for
# pybind11): printed, so that an absent pykeops column says why.
say sh -c "g++ --version | head -n 1; ls /usr/local/cuda/include/cuda.h /usr/local/cuda/include/nvrtc.h;
  '$PY' -c 'import os, sysconfig; p = sysconfig.get_paths()[\"include\"]; print(p, os.path.exists(p + \"/Python.h\"))'"
# A GPU call is short and steady: 0.3 s of repeats gives its best time.
BENCH_ARGS=${BENCH_ARGS:---cases gauss,lse,knn3,knn64 --sizes 1e4,1e5,1e6 --budget 20
  --repeat 0.3 --methods keops-rs-gpu,torch-gpu,pykeops-gpu --gpu-rows 1,2,4}
DEADLINE=${DEADLINE:-330}
stages=${*:-rust cache python bench sanitize}
warm_pid=""
if [[ " $stages " == *" bench "* ]]; then
  # The benchmark at N = 100, untimed and thrown away: its kernels, compiled and cached.
  # shellcheck disable=SC2086  # BENCH_ARGS is a list of words
  timeout -k 5 150 "$PY" benchmarks/bench.py --no-progress --out /tmp/bench-warm $BENCH_ARGS \
    --sizes 100 --repeat 0 --methods keops-rs-gpu,pykeops-gpu >/tmp/bench-warm.log 2>&1 &
  warm_pid=$!
fi
SANITIZER=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
status=0 summary=""
# One line of the closing table: stage, result, seconds.
record() { summary+=$(printf '\n%-8s %-20s %4d s' "$1" "$2" "$3"); }
for s in $stages; do
  limit_var=LIMIT_$s
  case $s in
    rust) cmd=(.gpu/gpu-tests --nocapture) limit=100 ;;
    # A cache directory of its own: the first process compiles, the second reads it and
    # times wide outputs. The third: small calls without the memory pool (cuMemAlloc,
    # frees after the stream).
    cache) cmd=(sh -c 'export KEOPS_CACHE_DIR=$(mktemp -d) && .gpu/cuda_info && .gpu/cuda_info --wide &&
                KEOPS_CUDA_MEMORY_POOLS=0 .gpu/cuda_info')
           limit=30 ;;
    python) cmd=("$PY" -m pytest -q -rs -p no:cacheprovider crates/keops-python/tests/test_cuda.py
                 crates/keops-python/tests/test_torch.py -k "not inductor") limit=60 ;;
    compile) cmd=("$PY" -m pytest -q -rs -p no:cacheprovider crates/keops-python/tests/test_cuda.py
                  -k inductor) limit=120 ;;
    # shellcheck disable=SC2206  # BENCH_ARGS is a list of words
    bench) cmd=("$PY" benchmarks/bench.py --no-progress --out "$LOG" $BENCH_ARGS) limit=220 ;;
    sanitize)
      if [ ! -x "$SANITIZER" ]; then
        status=1; record "$s" "not run: no $SANITIZER" 0
        continue
      fi
      cmd=(sh -c "for tool in memcheck racecheck; do
                   '$SANITIZER' --tool \$tool --error-exitcode 3 .gpu/gpu-tests \
                     device_arrays_are_reduced_in_place block_sparse_matches || exit \$?; done")
              limit=60 ;;
    pykeops) cmd=("$PY" -m pytest -q -rs -p no:cacheprovider .gpu/pykeops-tests) limit=60 ;;
    *) say echo "unknown stage $s"; status=1; continue ;;
  esac
  if [ "$s" = bench ] && [ -n "$warm_pid" ]; then
    wait "$warm_pid"
    say echo "(kernels compiled ahead: exit $?, at $SECONDS s; its absent methods and problems:)"
    say grep -E '^(absent|problem):' /tmp/bench-warm.log
  fi
  limit=${!limit_var:-$limit}
  left=$((DEADLINE - SECONDS - 10))  # 10 s for a stopped stage to report and exit
  if [ "$left" -lt 10 ]; then
    status=1; record "$s" "not run: no time left" 0
    continue
  fi
  [ "$limit" -le "$left" ] || limit=$left
  say echo "== $s (at most $limit s): ${cmd[*]}"
  start=$SECONDS
  # SIGINT first: pytest and the benchmark then report what they did before exiting.
  timeout -s INT -k 8 "$limit" "${cmd[@]}" 2>&1 | tee -a "$LOG/check.log"
  rc=${PIPESTATUS[0]}
  case $rc in 0) result=ok ;; 124|137) result="stopped at $limit s" ;; *) result="FAILED ($rc)" ;; esac
  [ "$rc" -eq 0 ] || status=1
  record "$s" "$result" $((SECONDS - start))
done
say echo "== stages (logs in $LOG; $SECONDS s in all)$summary"
exit $status
