#!/usr/bin/env bash
# pykeops 2.3's own test suite (pykeops/test in its source distribution), run on keops
# through keops.install_as_pykeops(): code written for pykeops, with pykeops' own
# expectations. The sdist is downloaded once (pinned by its SHA-256) into target/; only
# its test files are used, and pykeops itself is never installed or imported.
# `pykeops_suite.sh examples` runs its gallery instead (examples and tutorials, each
# script in its own process; scripts/pykeops_suite/run_gallery.py); `fetch` only
# prepares $DIR/tests (for make gpu-bundle). Other arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
VPY=${VPY:-.venv/bin/python}
VPY=$(cd "$(dirname "$VPY")" && pwd)/$(basename "$VPY")  # absolute, links kept (venv)
DIR=target/pykeops-suite
SDIST=$DIR/pykeops-2.3.tar.gz
SHA256=458fa77985efd2161be9c719e8dd41e495526cd735d3262aec09902505f5bdba

mkdir -p "$DIR"
if [ ! -f "$SDIST" ] || ! echo "$SHA256  $SDIST" | sha256sum -c --quiet 2>/dev/null; then
    rm -f "$SDIST"
    "$VPY" -m pip download --quiet --no-deps --no-binary :all: \
        pykeops==2.3 -d "$DIR"
    echo "$SHA256  $SDIST" | sha256sum -c --quiet
fi
if [ "${1:-}" = examples ]; then
    rm -rf "$DIR/gallery" && mkdir -p "$DIR/gallery"
    tar -xzf "$SDIST" -C "$DIR/gallery" --strip-components=2 \
        'pykeops-2.3/pykeops/examples' 'pykeops-2.3/pykeops/tutorials'
    exec "$VPY" scripts/pykeops_suite/run_gallery.py "$DIR/gallery"
fi
rm -rf "$DIR/tests" && mkdir -p "$DIR/tests"
tar -xzf "$SDIST" -C "$DIR/tests" --strip-components=3 --wildcards 'pykeops-2.3/pykeops/test/*.py'
rm -f "$DIR/tests/__init__.py"
cp scripts/pykeops_suite/conftest.py "$DIR/tests/conftest.py"
[ "${1:-}" != fetch ] || exit 0
cd "$DIR/tests"
exec "$VPY" -m pytest -q -rs -p no:cacheprovider . "$@"
