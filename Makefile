# keops-rs entry points. `make demo` and `make test` are all a fresh machine needs:
# cargo fetches the crates; Python tools go into a local .venv.

CARGO ?= cargo
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
# Extra arguments for the demo, e.g. `make demo ARGS="--n 1000000"`.
ARGS ?=

.PHONY: fuzz pykeops-suite arm-check windows-check cross-check demo test tests lint bench bench-rust gpu-bundle venv wheel wheel-check python clean

demo: python
	$(CARGO) build --workspace --release
	$(CARGO) run --release -p keops --example kde -- $(ARGS)

# AddressSanitizer for the simulated kernels, where the C compiler has it: kernels built
# with -fsanitize=address, its runtime preloaded into the test binaries alone (cargo's
# runner), so that a kernel reading or writing out of its buffers is stopped there, as
# compute-sanitizer's memcheck does on a GPU.
ASAN_LIB := $(shell cc -print-file-name=libasan.so 2>/dev/null)
HOST := $(shell rustc -vV 2>/dev/null | sed -n 's/^host: //p' | tr a-z.- A-Z__)
ifneq ($(wildcard $(ASAN_LIB)),)
SIM_ASAN := KEOPS_SIM_CXXFLAGS=-fsanitize=address \
	CARGO_TARGET_$(HOST)_RUNNER="env LD_PRELOAD=$(ASAN_LIB) ASAN_OPTIONS=detect_leaks=0"
endif

# lint (CPU-bound) and the venv's installs (network-bound) at once; then the rest.
test:
	$(MAKE) --no-print-directory -j2 --output-sync=target lint venv
	$(MAKE) --no-print-directory tests

# The CUDA tests compile every generated kernel with NVRTC (no GPU needed): the
# nvidia-cuda-nvrtc wheel of the venv, found by the package's own lookup. The GPU suite
# then runs again under the CUDA simulator (two simulated devices, kernels on the CPU,
# under AddressSanitizer where there is one).
tests: python wheel-check
	KEOPS_NVRTC="$$($(VPY) -c 'import os, keops; print(os.environ.get("KEOPS_NVRTC", ""))')" \
	KEOPS_REQUIRE_NVRTC=1 $(CARGO) test --workspace --profile ci --all-features
	KEOPS_CUDA_SIMULATOR=2 $(SIM_ASAN) $(CARGO) test --workspace --profile ci --all-features --test gpu
	$(VPY) -m pytest -q -rs crates/keops-python/tests
	KEOPS_CUDA_SIMULATOR=2 $(VPY) -m pytest -q -rs crates/keops-python/tests/test_gpu_sim.py
	$(MAKE) --no-print-directory pykeops-suite arm-check windows-check

# pykeops 2.3's own test suite, run on keops under pykeops' names: its test files are
# taken from its source distribution (downloaded once, checked by SHA-256); pykeops
# itself is never installed. `scripts/pykeops_suite.sh examples` also runs its gallery
# of examples and tutorials (not part of `make test`: about 80 s).
pykeops-suite: venv
	VPY=$(VPY) scripts/pykeops_suite.sh

# Linux on ARM run, not only compiled: the Rust tests built for aarch64 and the aarch64
# wheel's Python tests, under qemu-user (scripts/arm_check.sh installs what it needs,
# or says what is missing and skips).
arm-check: venv
	PY=$(VPY) scripts/arm_check.sh

# Windows run, not only compiled: the Rust tests built for x86_64 Windows (MinGW), under
# Wine (scripts/windows_check.sh; `scripts/windows_check.sh all` adds the op tests).
windows-check:
	scripts/windows_check.sh

# The Python package `keops`: the wheel users install (on Linux manylinux2014, glibc >=
# 2.17, linked by zig from the venv's `ziglang`; abi3, any CPython >= 3.9), installed
# into the venv, so the tests run what users get. `wheel-check` installs it into a bare
# venv (numpy only, no Rust on PATH) and runs the install check from outside the tree.
# `make wheel WHEEL_TARGET=aarch64-unknown-linux-gnu` cross-builds the ARM wheel (Grace
# Hopper nodes; `rustup target add` it first), `WHEEL_TARGET=aarch64-apple-darwin` the
# macOS one (no Apple SDK needed; not run here).
WHEEL_DIR := target/wheel$(if $(WHEEL_TARGET),-$(WHEEL_TARGET))
ifeq ($(shell uname -s),Linux)
WHEEL_FLAGS ?= --zig --compatibility manylinux2014
endif

wheel: venv
	rm -rf $(WHEEL_DIR)
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VPY) -m maturin build --release --quiet \
		$(WHEEL_FLAGS) $(if $(WHEEL_TARGET),--target $(WHEEL_TARGET)) \
		-m crates/keops-python/Cargo.toml -o $(WHEEL_DIR)

python: wheel
	$(VPY) -m pip install --quiet --force-reinstall --no-deps $(WHEEL_DIR)/*.whl

wheel-check: wheel
	rm -rf target/bare-venv
	$(PYTHON) -m venv target/bare-venv
	target/bare-venv/bin/pip install --quiet $(WHEEL_DIR)/*.whl
	cd "$$(mktemp -d)" && env -i PATH=/usr/bin:/bin HOME="$$HOME" \
		$(abspath target/bare-venv)/bin/python -c \
		'import sys, keops; sys.exit(0 if keops.check_health() else 1)'

# rustdoc too: a broken link in the public crates' docs is an error.
lint: cross-check
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --all-features --profile ci -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --quiet --no-deps -p keops -p keops-python

# The library and the Python extension must build for the platforms users install on:
# clippy for macOS (Apple silicon), Windows and Linux on ARM, no linking, so no SDK is
# needed. A target rustup cannot fetch (offline) is skipped with a line that says so.
CROSS_TARGETS ?= aarch64-apple-darwin x86_64-pc-windows-msvc aarch64-unknown-linux-gnu
cross-check:
	@for t in $(CROSS_TARGETS); do \
		if rustup target list --installed 2>/dev/null | grep -qx "$$t" || rustup target add "$$t" >/dev/null 2>&1; then \
			echo "cross-check: $$t"; \
			PYO3_CROSS_PYTHON_VERSION=3.9 $(CARGO) clippy --quiet --target "$$t" -p keops -p keops-python \
				--all-features --lib --tests -- -D warnings || exit 1; \
		else echo "cross-check: SKIPPED $$t (rustup could not add the target)"; fi; \
	done

# Benchmarks, not tests: side-by-side ratios measured in one run, e.g.
# `make bench ARGS="--quick"`. Dense NumPy and PyTorch are the peers, and pykeops when it
# is installed in the venv (`.venv/bin/pip install pykeops==2.3`). Tables, bench.png and
# results.json go to benchmarks/out/.
bench: python
	$(VPY) benchmarks/bench.py $(ARGS)

# The Rust engine alone (`keops bench`: no Python in the timed path), NumPy and pykeops
# as references.
bench-rust: venv
	KEOPS_PYTHON=$(VPY) $(CARGO) run --release -p keops-cli -- bench $(ARGS)

# For a GPU machine without Rust or network: the GPU test binary, cuda_info, the keops
# wheel and pykeops' wheels into .gpu/; there, `scripts/gpu_check.sh [rust cache python
# bench]` runs the GPU checks (README, "GPU checks").
gpu-bundle: wheel
	VPY=$(VPY) scripts/gpu_bundle.sh

# Coverage-guided fuzzing of formula text (`formula`) and block-sparse ranges (`ranges`)
# with libFuzzer, not part of `make test`: `make fuzz TARGET=ranges SECONDS=600`. Needs
# `cargo install cargo-fuzz`; RUSTC_BOOTSTRAP lets the stable toolchain take the
# sanitizer flags. Findings land in fuzz/artifacts/ (pin each as a test). An input is
# slow past 60 s: a differential operator over a wide variable legitimately expands up
# to 2^20 nodes (`Laplacian(x,y)` with y of dimension 310,403: 20 s under the sanitizer);
# the targets skip inputs that write a size from 65 to 2^32 (fuzz_targets/common.rs).
TARGET ?= formula
SECONDS ?= 300
fuzz:
	cd fuzz && mkdir -p corpus/$(TARGET) && RUSTC_BOOTSTRAP=1 cargo fuzz run $(TARGET) \
		corpus/$(TARGET) seeds/$(TARGET) -- -dict=formula.dict -max_total_time=$(SECONDS) \
		-max_len=256 -timeout=60 -rss_limit_mb=4096

venv: $(VENV)/.installed

# Pinned: the libraries written for pykeops that tests/test_third_party.py runs on keops.
$(VENV)/.installed: Makefile
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet numpy pytest maturin torch nvidia-cuda-nvrtc matplotlib scikit-learn tqdm ziglang \
		geomloss==0.3.1 gpytorch==1.15.2 torchdr==0.5
	touch $@

clean:
	$(CARGO) clean
	rm -rf $(VENV)
