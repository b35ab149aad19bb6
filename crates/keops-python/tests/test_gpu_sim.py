"""The Python front ends' GPU paths under the CUDA simulator (``KEOPS_CUDA_SIMULATOR=2``:
two simulated devices, the generated kernels run on the CPU): ``backend="GPU"``,
``"GPU_1D"``, ``"GPU_2D"``, ``device_id`` (one GPU, a list, ``"all"``), LazyTensor
reductions, block-sparse ranges, torch autograd and KernelSolve through the GPU engine,
and the errors for devices that do not exist. ``make test`` runs this file under the
simulator; elsewhere it is skipped (a real GPU runs ``test_cuda.py``)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import keops
from keops.numpy import Genred, KernelSolve, LazyTensor

pytestmark = pytest.mark.skipif(
    os.environ.get("KEOPS_CUDA_SIMULATOR", "0") in ("", "0"),
    reason="runs under the CUDA simulator: KEOPS_CUDA_SIMULATOR=2 pytest "
    "crates/keops-python/tests/test_gpu_sim.py (make test does)")

GAUSS = ("Exp(-SqDist(x,y)) * b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"])


def data(n: int = 300, m: int = 500, dtype=np.float32):
    rng = np.random.default_rng(0)
    return (rng.random((n, 3)).astype(dtype), rng.random((m, 3)).astype(dtype),
            rng.standard_normal((m, 2)).astype(dtype))


def gauss_reference(x, y, b, axis: int):
    """The Gaussian sum in float64 and the sum of its terms' magnitudes, the scale of
    the rounding error any summation order makes (a sum that cancels is bounded by the
    size of its terms, not by the size of its result)."""
    X, Y, B = (a.astype(np.float64) for a in (x, y, b))
    K = np.exp(-((X[:, None, :] - Y[None, :, :]) ** 2).sum(-1))
    if axis == 0:  # sum over i of K_ij b_j
        return K.sum(0)[:, None] * B, K.sum(0)[:, None] * np.abs(B)
    return K @ B, K @ np.abs(B)


def i64(a) -> np.ndarray:
    """``a`` as int64 (ranges arrays)."""
    return np.array(a, dtype=np.int64)


def torch_gauss_product(x, y, b):
    """The Gaussian kernel product ``K(x, y) b`` of torch tensors on the GPU engine."""
    from keops.torch import LazyTensor as TLazy

    K = (-TLazy(x[:, None, :]).sqdist(TLazy(y[None, :, :]))).exp()
    return (K * TLazy(b[None, :, :])).sum(dim=1, backend="GPU")


def assert_float32_sum(got, want, scale, ulps: float = 16) -> None:
    """``got`` is within ``ulps`` float32 epsilons of the terms' magnitude from ``want``
    (the simulator's, the CPU's and a GPU's summation orders all differ; a sequential
    float32 sum of 300 terms was seen at 4.4 epsilons)."""
    err = np.abs(got.astype(np.float64) - want) / scale
    assert err.max() <= ulps * np.finfo(np.float32).eps, f"error {err.max():.3g} x |terms|"


def test_the_simulator_is_a_gpu() -> None:
    assert keops.gpu_available()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", ["GPU", "GPU_1D", "GPU_2D"])
def test_backends_match_the_cpu(dtype, backend) -> None:
    x, y, b = data(dtype=dtype)
    for axis in (1, 0):  # axis=0: reduced over i, one row per y_j
        g = Genred(*GAUSS, axis=axis)
        got, cpu = g(x, y, b, backend=backend), g(x, y, b, backend="CPU")
        if dtype == np.float64:
            np.testing.assert_allclose(got, cpu, rtol=1e-12, atol=1e-12)
        else:
            want, scale = gauss_reference(x, y, b, axis)
            assert_float32_sum(cpu, want, scale)
            assert_float32_sum(got, want, scale)


def test_float16_runs_in_float32_on_the_gpu_too() -> None:
    x, y, b = data(dtype=np.float16)
    g = Genred(*GAUSS, axis=1)
    got = g(x, y, b, backend="GPU")
    assert got.dtype == np.float16
    want = g(*(a.astype(np.float32) for a in (x, y, b)), backend="CPU")
    # One rounding to float16 apart (the float32 sums differ in their last bits).
    np.testing.assert_allclose(got, want, rtol=2.0 ** -10, atol=2.0 ** -10)


@pytest.mark.parametrize("device_id", [1, [0, 1], [1, 1, 0], "all"])
def test_devices_and_splits(device_id) -> None:
    x, y, b = data(n=200, m=3000, dtype=np.float64)
    g = Genred(*GAUSS, axis=1)
    want = g(x, y, b, backend="CPU")
    got = g(x, y, b, backend="GPU", device_id=device_id)
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11)
    knn = Genred("SqDist(x,y)", ["x = Vi(3)", "y = Vj(3)"], reduction_op="ArgKMin", axis=1,
                 opt_arg=4)
    np.testing.assert_array_equal(knn(x, y, backend="GPU", device_id=device_id),
                                  knn(x, y, backend="CPU"))


def test_lazytensor_reductions_and_ranges() -> None:
    x, y, _ = data(n=400, m=600, dtype=np.float64)
    D = LazyTensor(x[:, None, :]).sqdist(LazyTensor(y[None, :, :]))
    np.testing.assert_array_equal(D.argKmin(5, dim=1, backend="GPU"),
                                  D.argKmin(5, dim=1, backend="CPU"))
    np.testing.assert_allclose((-D).logsumexp(dim=0, backend="GPU_2D"),
                               (-D).logsumexp(dim=0, backend="CPU"), rtol=1e-12)
    # Block-sparse: rows 0..100 see columns 0..200, rows 100..400 all of them.
    ranges = (i64([[0, 100], [100, 400]]), i64([1, 2]), i64([[0, 200], [0, 600]]),
              i64([[0, 200], [200, 600]]), i64([1, 2]), i64([[0, 400], [100, 400]]))
    K = (-D).exp()
    dense = K.sum(dim=1, backend="GPU")
    K.ranges = ranges
    sparse = K.sum(dim=1, backend="GPU")
    np.testing.assert_allclose(sparse, K.sum(dim=1, backend="CPU"), rtol=1e-12)
    np.testing.assert_allclose(sparse[100:], dense[100:], rtol=1e-12)
    assert (sparse[:100] < dense[:100] - 1e-3).all()
    np.testing.assert_allclose(K.sum(dim=0, backend="GPU"), K.sum(dim=0, backend="CPU"),
                               rtol=1e-12)


def test_kernel_solve_on_the_gpu_engine() -> None:
    x, _, _ = data(n=300, dtype=np.float64)
    b = np.random.default_rng(1).standard_normal((300, 1))
    solve = KernelSolve("Exp(-SqDist(x,y)) * a", ["x = Vi(3)", "y = Vj(3)", "a = Vj(1)"], "a",
                        axis=1)
    a = solve(x, x, b, alpha=1.0, backend="GPU")
    K = np.exp(-((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    np.testing.assert_allclose(K @ a + a, b, rtol=1e-5, atol=1e-5)
    # The Nyström preconditioner's columns and ranges-paired diagonal on the GPU too.
    p, info = solve(x, x, b, alpha=1.0, backend="GPU", precond="nystrom", precond_rank=30,
                    return_info=True)
    assert info.precond_rank == 30 and info.converged
    np.testing.assert_allclose(K @ p + p, b, rtol=1e-5, atol=1e-5)


def test_torch_autograd_through_the_gpu_engine() -> None:
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)
    x, y = (torch.rand(n, 3, generator=g, dtype=torch.float64, requires_grad=True)
            for n in (20, 30))
    b = torch.randn(30, 2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(torch_gauss_product, (x, y, b))


def test_wide_outputs_by_columns() -> None:
    """Weights of width 300 (past what a thread's registers hold: the engine computes
    64 columns per launch), through LazyTensor: the kernel product both ways, soft-max
    weights (attention) and block-sparse ranges, against the CPU engine; and torch
    autograd, whose gradient for the weights is itself a wide product over i."""
    x, y, _ = data(n=120, m=200, dtype=np.float64)
    v = np.random.default_rng(2).standard_normal((200, 300))
    D = LazyTensor(x[:, None, :]).sqdist(LazyTensor(y[None, :, :]))
    K, V = (-D).exp(), LazyTensor(v[None, :, :])
    for backend in ("GPU_1D", "GPU_2D"):
        np.testing.assert_allclose((K * V).sum(dim=1, backend=backend),
                                   (K * V).sum(dim=1, backend="CPU"), rtol=1e-12,
                                   atol=1e-11)
        np.testing.assert_allclose((-D).sumsoftmaxweight(V, dim=1, backend=backend),
                                   (-D).sumsoftmaxweight(V, dim=1, backend="CPU"),
                                   rtol=1e-12, atol=1e-11)
    KV = K * V
    KV.ranges = (i64([[0, 60], [60, 120]]), i64([1, 2]), i64([[0, 100], [0, 200]]),
                 i64([[0, 100], [100, 200]]), i64([1, 2]), i64([[0, 120], [60, 120]]))
    np.testing.assert_allclose(KV.sum(dim=1, backend="GPU"), KV.sum(dim=1, backend="CPU"),
                               rtol=1e-12, atol=1e-11)
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(1)
    xt, yt = (torch.rand(n, 3, generator=g, dtype=torch.float64, requires_grad=True)
              for n in (8, 12))
    bt = torch.randn(12, 300, generator=g, dtype=torch.float64, requires_grad=True)
    f = torch_gauss_product
    # The weights' gradient K^T c (300 wide) against the dense one; the points' by
    # finite differences (gradcheck over the 3,600 weights would take minutes here).
    c = torch.randn(8, 300, generator=g, dtype=torch.float64)
    (grad_b,) = torch.autograd.grad(f(xt, yt, bt), [bt], c)
    Kd = torch.exp(-((xt[:, None, :] - yt[None, :, :]) ** 2).sum(-1)).detach()
    torch.testing.assert_close(grad_b, Kd.T @ c, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x, y: f(x, y, bt.detach()), (xt, yt))


def test_missing_devices_are_named() -> None:
    x, y, b = data()
    g = Genred(*GAUSS, axis=1)
    with pytest.raises(ValueError, match="device_id.*2 CUDA device"):
        g(x, y, b, backend="GPU", device_id=5)
    with pytest.raises(ValueError, match="device_id.*2 CUDA device"):
        g(x, y, b, backend="GPU", device_id=[0, 7])


@pytest.mark.parametrize("var,value", [("KEOPS_GPU_ROWS", "four"), ("KEOPS_GPU_ROWS", "0"),
                                       ("KEOPS_GPU_COLUMNS", "no")])
def test_tuning_variables_are_checked(monkeypatch, var: str, value: str) -> None:
    """A GPU tuning variable the engine does not understand is an error naming it (it
    was silently ignored, so a benchmark could time the planner's choice unawares);
    once unset, the next call runs."""
    x, y, b = data()
    g = Genred(*GAUSS, axis=1)
    monkeypatch.setenv(var, value)
    with pytest.raises(ValueError, match=f"{var}.*'{value}'"):
        g(x, y, b, backend="GPU")
    monkeypatch.delenv(var)
    want, scale = gauss_reference(x, y, b, 1)
    assert_float32_sum(g(x, y, b, backend="GPU"), want, scale)


@pytest.mark.parametrize("offset", [0.0, 10.0])
def test_use_fast_math_reaches_the_gpu_engine(offset: float) -> None:
    """Both settings build and run their own kernels, and both are float32-accurate: the
    fast one computes the Gaussian as exp2 of points scaled as they are loaded (the
    simulator computes the functions exactly; on a GPU the fast one also uses the
    hardware's approximations). Points away from the origin cost the scaled ones
    nothing more: they are centered on a point of each thread block first."""
    x, y, b = data()
    x, y = x + np.float32(offset), y + np.float32(offset)
    want, scale = gauss_reference(x, y, b, axis=1)
    fast = Genred(*GAUSS, axis=1)(x, y, b, backend="GPU")
    strict = Genred(*GAUSS, axis=1, use_fast_math=False)(x, y, b, backend="GPU")
    assert_float32_sum(fast, want, scale)
    assert_float32_sum(strict, want, scale)
    assert not np.array_equal(fast, strict)  # two kernels, two roundings


def test_out_of_device_memory_is_an_error_and_the_next_call_runs() -> None:
    """A reduction too large for the GPU's memory raises RuntimeError naming what did
    not fit, its size and what to do; what it had allocated is freed, so a smaller call
    right after runs. (A child process, whose simulated devices have 1 MiB each.)"""
    code = """
import numpy as np
from keops.numpy import Genred
g = Genred("Exp(-SqDist(x,y)) * b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(1)"], axis=1)
rng = np.random.default_rng(0)
def data(n, m):
    return (rng.random((n, 3), dtype=np.float32), rng.random((m, 3), dtype=np.float32),
            rng.random((m, 1), dtype=np.float32))
try:
    g(*data(20_000, 60_000), backend="GPU")
except RuntimeError as e:
    print("ERROR", e)
small = data(100, 200)
np.testing.assert_allclose(g(*small, backend="GPU"), g(*small, backend="CPU"), rtol=1e-5)
print("SMALL OK")
"""
    env = dict(os.environ, KEOPS_CUDA_SIMULATOR="1", KEOPS_CUDA_SIMULATOR_MEMORY=str(1 << 20))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ERROR" in out.stdout and "SMALL OK" in out.stdout, out.stdout
    assert "copying argument 2 (234.4 KiB): out of memory" in out.stdout, out.stdout
    assert "the GPU's memory is full" in out.stdout, out.stdout
