#!/usr/bin/env bash
# Builds, on this (x86-64, CUDA-less) machine, everything the GPU checks need into .gpu/,
# for a GPU machine that has CUDA, PyTorch and Python but no Rust and no network (the
# device machines this project is lent): the Rust GPU test binary, the cuda_info
# example, the keops wheel, pykeops 2.3 + keopscore as wheels for the side-by-side
# benchmark, and pykeops' test files. Then run scripts/gpu_check.sh there with .gpu
# carried (`make gpu-bundle`).
set -euo pipefail
cd "$(dirname "$0")/.."
VPY=${VPY:-.venv/bin/python}
OUT=.gpu
rm -rf "$OUT" && mkdir -p "$OUT"

# The test binary (tests/gpu.rs, built as make test builds it) and the example.
exe=$(cargo test --workspace --profile ci --all-features --test gpu --no-run --message-format=json 2>/dev/null |
      "$VPY" -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "gpu":
        print(m["executable"])')
cp "$exe" "$OUT/gpu-tests"
cargo build --release -p keops --example cuda_info
cp target/release/examples/cuda_info "$OUT/cuda_info"

# The Python package (abi3: any CPython >= 3.9) and pykeops for the comparison.
cp target/wheel/*.whl "$OUT"  # make wheel's (manylinux2014: any glibc >= 2.17)
"$VPY" -m pip wheel -q --no-deps pykeops==2.3 keopscore==2.3 -w "$OUT"
# pykeops' own test suite with its conftest (gpu_check.sh's pykeops stage).
VPY="$VPY" scripts/pykeops_suite.sh fetch
cp -r target/pykeops-suite/tests "$OUT/pykeops-tests"
ls -la "$OUT"
du -sh "$OUT"
