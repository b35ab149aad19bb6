#!/usr/bin/env bash
# Linux on ARM (aarch64: Grace Hopper nodes, Graviton) run, not only compiled: the
# library's Rust tests built for aarch64, and the aarch64 wheel installed with NumPy and
# pytest into Debian's aarch64 CPython, running the Python test suite, all under
# qemu-user. This runs the CPU engine's NEON paths and the FPCR flush-to-zero switch,
# which no x86 run reaches.
#
# What it needs is installed where it can be: qemu-user and the aarch64 C toolchain
# (apt-get, as root), the Rust target (rustup), Debian's arm64 CPython packages
# (unpacked under target/arm-root, not installed), NumPy and pytest's aarch64 wheels
# (PyPI). Where one of them cannot be had, it says so and skips (exit 0).
#
# Usage: scripts/arm_check.sh [rust] [python]   (both by default)
set -euo pipefail
cd "$(dirname "$0")/.."

T=aarch64-unknown-linux-gnu
ROOT=target/arm-root
SITE=target/arm-site
PY=${PY:-.venv/bin/python}
STAGES=${*:-rust python}

CHECK=arm-check
. scripts/check_lib.sh

if ! command -v qemu-aarch64 >/dev/null || ! command -v aarch64-linux-gnu-gcc >/dev/null; then
    apt_install qemu-user gcc-aarch64-linux-gnu ||
        skip "needs qemu-aarch64 and aarch64-linux-gnu-gcc: apt-get install qemu-user gcc-aarch64-linux-gnu"
fi
need_target "$T"

for stage in $STAGES; do
    case $stage in
    rust)
        # Every elementwise op (NEON's exp, log, sin, cos...) and reduction against the
        # oracle, the dispatch paths and the engine's unit tests; the vector ops (generic
        # code, 2 minutes under qemu) and the slower suites are x86's business.
        # (The wheel links with zig, for glibc 2.17; the tests with Debian's toolchain.)
        echo "arm-check: Rust tests on $T (qemu)"
        CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
            CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu" \
            cargo test --quiet --profile ci --target "$T" -p keops --lib \
            --test ops --test dispatch --test reductions -- --skip vector_ops
        ;;
    python)
        # Debian's arm64 CPython, unpacked (dpkg -x), with the shared libraries it loads.
        if [ ! -x "$ROOT/usr/bin/python3.11" ]; then
            can_apt || skip "needs apt-get as root for Debian's arm64 CPython"
            dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
            apt-get update -q >/dev/null 2>&1 || skip "apt-get update failed"
            rm -rf target/arm-debs && mkdir -p target/arm-debs "$ROOT"
            (cd target/arm-debs && apt-get download -q \
                python3.11-minimal:arm64 libpython3.11-minimal:arm64 libpython3.11-stdlib:arm64 \
                libc6:arm64 libgcc-s1:arm64 libstdc++6:arm64 zlib1g:arm64 libexpat1:arm64 \
                libffi8:arm64 libssl3:arm64 libbz2-1.0:arm64 liblzma5:arm64 libuuid1:arm64 \
                libsqlite3-0:arm64 libncursesw6:arm64 libtinfo6:arm64 libcrypt1:arm64 \
                libreadline8:arm64 libdb5.3:arm64 libnsl2:arm64 libtirpc3:arm64 \
                >/dev/null 2>&1) || skip "could not download Debian's arm64 CPython"
            for deb in target/arm-debs/*.deb; do dpkg -x "$deb" "$ROOT"; done
        fi
        echo "arm-check: the aarch64 wheel under Debian's aarch64 CPython (qemu)"
        make --no-print-directory wheel WHEEL_TARGET="$T"
        rm -rf "$SITE"
        "$PY" -m pip install --quiet --target "$SITE" --platform manylinux2014_aarch64 \
            --only-binary=:all: --python-version 3.11 --implementation cp \
            numpy pytest "target/wheel-$T"/keops-*.whl || skip "could not fetch NumPy and pytest for aarch64"
        # Deselected: the test that starts sys.executable in a subprocess, which
        # qemu-user cannot do without binfmt_misc; and the three solver tests at
        # N = 1000 (70 of the 81 s under qemu: the float64 one is 182 conjugate-gradient
        # steps over 10^6 pairs, 24 s emulated): the solver is the same code on every
        # platform, its kernels the engine's that the other tests run, and its smaller
        # tests run here.
        # Torch has no part here (keops.torch tests skip).
        PYTHONPATH="$SITE" qemu-aarch64 -L "$ROOT" "$ROOT/usr/bin/python3.11" -m pytest -q \
            -p no:cacheprovider crates/keops-python/tests \
            -k "not gpu_sim and not cuda and not clean_pykeops and not matches_dense_solve \
                and not nystrom_preconditioner and not judged_on_their_true_residual"
        ;;
    *)
        echo "arm-check: unknown stage $stage (rust, python)" >&2
        exit 2
        ;;
    esac
done
