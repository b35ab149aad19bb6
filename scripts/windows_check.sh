#!/usr/bin/env bash
# Windows run, not only compiled: the library's Rust tests built for x86_64 Windows
# (MinGW) and run under Wine. This runs what differs on Windows: the NVRTC DLL names
# and loader errors, the per-user cache folder (LocalAppData), replacing cache files
# that another reader holds open, paths; and the CPU engine itself.
#
# What it needs is installed where it can be: Wine and the MinGW C toolchain (apt-get,
# as root) and the Rust target (rustup). Where one cannot be had, it says so and skips
# (exit 0).
#
# Two tests are skipped: math.rs' sine and cosine accuracy tests take the platform's
# libm as the truth, and Wine's is the inaccurate side there (sin(91.106186954104):
# ours -1.2379612731767154e-18, mpmath at 300 bits -1.23796127317671540e-18, Wine's
# -1.3552527156068805e-18). The op tests run under Wine too, but slowly (2 min), so
# they are left to `scripts/windows_check.sh all`.
#
# The build is unoptimised (profile ci-unopt): optimised, it took 210 s to build for 8 s
# of tests; unoptimised, 20 s and 70 s.
set -euo pipefail
cd "$(dirname "$0")/.."

T=x86_64-pc-windows-gnu
PREFIX=$PWD/target/wine-prefix
WINE=/usr/lib/wine/wine64
TESTS=(--lib --test errors --test dispatch --test ranges --test reductions --test robustness)
[ "${1:-}" = all ] && TESTS+=(--test ops)

CHECK=windows-check
. scripts/check_lib.sh

if [ ! -x "$WINE" ] || ! command -v x86_64-w64-mingw32-gcc >/dev/null; then
    apt_install --no-install-recommends wine64 gcc-mingw-w64-x86-64 ||
        skip "needs Wine and MinGW: apt-get install wine64 gcc-mingw-w64-x86-64"
fi
need_target "$T"

# A Wine prefix of our own. Rust's standard library (1.78+) takes its randomness from
# bcryptprimitives.dll's ProcessPrng, which Wine 8 lacks: a shim DLL provides it.
if [ ! -f "$PREFIX/drive_c/windows/system32/bcryptprimitives.dll" ]; then
    WINEDEBUG=-all WINEPREFIX=$PREFIX "$WINE" wineboot --init >/dev/null 2>&1 || true
    [ -d "$PREFIX/drive_c/windows/system32" ] || skip "Wine could not create its prefix"
    cat >target/prng_shim.c <<'EOF'
#include <windows.h>
#include <bcrypt.h>
__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
    return BCryptGenRandom(NULL, data, (ULONG)len, BCRYPT_USE_SYSTEM_PREFERRED_RNG) == 0;
}
EOF
    x86_64-w64-mingw32-gcc -shared -O2 -o "$PREFIX/drive_c/windows/system32/bcryptprimitives.dll" \
        target/prng_shim.c -lbcrypt
fi

echo "windows-check: Rust tests on $T (Wine)"
CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=x86_64-w64-mingw32-gcc \
    CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER="env WINEDEBUG=-all WINEPREFIX=$PREFIX $WINE" \
    cargo test --quiet --profile ci-unopt --target "$T" -p keops "${TESTS[@]}" -- \
    --skip math::tests::sin_cos_f32_accuracy --skip math::tests::sin_cos_f64_accuracy
