"""Tests of the NumPy front end (``keops.numpy``) against dense NumPy computations."""

from __future__ import annotations

import threading

import numpy as np

import keops
import pytest

from keops.numpy import Genred

ALIASES = ["x = Vi(3)", "y = Vj(3)", "b = Vj(1)", "g = Pm(1)"]
GAUSS = "Exp(-SqDist(x, y) * g) * b"


def data(dtype: type, n: int = 50, m: int = 70, seed: int = 0):
    r = np.random.default_rng(seed)
    x = r.random((n, 3)).astype(dtype)
    y = r.random((m, 3)).astype(dtype)
    b = r.random((m, 1)).astype(dtype)
    g = np.array([2.0], dtype=dtype)
    return x, y, b, g


def dense_gauss(x, y, b, g):
    d2 = ((x[:, None, :].astype(np.float64) - y[None, :, :]) ** 2).sum(-1)
    return np.exp(-d2 * g[0]) @ b.astype(np.float64)


@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-5), (np.float64, 1e-12)])
def test_gaussian_sum_matches_numpy(dtype, tol):
    x, y, b, g = data(dtype)
    out = Genred(GAUSS, ALIASES, reduction_op="Sum", axis=1)(x, y, b, g)
    assert out.dtype == dtype and out.shape == (50, 1)
    want = dense_gauss(x, y, b, g)
    assert np.abs(out - want).max() <= tol * np.abs(want).max()


def test_axis_0_and_logsumexp():
    x, y, b, g = data(np.float64)
    out = Genred("-SqDist(x, y) * g", ALIASES[:2] + ["g = Pm(1)"], reduction_op="LogSumExp", axis=0)(x, y, g)
    d2 = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    want = np.log(np.exp(-d2 * g[0]).sum(0))[:, None]
    assert out.shape == (70, 1)
    np.testing.assert_allclose(out, want, rtol=1e-12)


def test_argkmin_gives_int64_indices_and_kmin_argkmin_a_tuple():
    x, y, _, _ = data(np.float32)
    knn = Genred("SqDist(x, y)", ALIASES[:2], reduction_op="ArgKMin", axis=1, opt_arg=5)(x, y)
    d2 = ((x[:, None, :].astype(np.float64) - y[None, :, :]) ** 2).sum(-1)
    assert knn.dtype == np.int64 and knn.shape == (50, 5)
    np.testing.assert_array_equal(knn, np.argsort(d2, axis=1)[:, :5])
    vals, idx = Genred("SqDist(x, y)", ALIASES[:2], reduction_op="KMin_ArgKMin", axis=1, opt_arg=2)(x, y)
    assert vals.shape == idx.shape == (50, 2)


def test_non_contiguous_inputs_are_copied_not_misread():
    x, y, b, g = data(np.float64)
    xt = np.asfortranarray(x)
    ys = np.concatenate([y, y], axis=1)[:, ::2]  # strided view: same values as y
    assert not xt.flags.c_contiguous and not ys.flags.c_contiguous
    out = Genred(GAUSS, ALIASES, axis=1)(xt, np.ascontiguousarray(y), b, g)
    np.testing.assert_allclose(out, dense_gauss(x, y, b, g), rtol=1e-12)
    ys = np.stack([y[:, 0], y[:, 0], y[:, 1], y[:, 1], y[:, 2], y[:, 2]], axis=1)[:, ::2]
    out2 = Genred(GAUSS, ALIASES, axis=1)(x, ys, b, g)
    np.testing.assert_allclose(out2, dense_gauss(x, y, b, g), rtol=1e-12)


def test_batch_dimensions_broadcast():
    r = np.random.default_rng(1)
    x = r.random((2, 10, 3))
    y = r.random((1, 12, 3))
    b = r.random((12, 1))
    g = np.array([[1.0], [3.0]])  # one parameter per batch entry: shape (batch, 1)
    out = Genred(GAUSS, ALIASES, axis=1)(x, y, b, g)
    assert out.shape == (2, 10, 1)
    for k in range(2):
        np.testing.assert_allclose(out[k], dense_gauss(x[k], y[0], b, g[k]), rtol=1e-12)


def test_errors_name_the_problem():
    x, y, b, g = data(np.float64)
    with pytest.raises(ValueError, match="position"):
        Genred("Exp(-SqDist(x, y) * ", ALIASES)
    with pytest.raises(ValueError, match="Unknown|unknown"):
        Genred("Foo(x)", ALIASES)
    op = Genred(GAUSS, ALIASES, axis=1)
    with pytest.raises(TypeError, match="argument 1"):
        op(x, y.astype(np.float32), b, g)
    with pytest.raises(TypeError, match="argument 0"):
        op(x.astype(np.int64), y, b, g)
    with pytest.raises(ValueError, match="argument 1"):
        op(x, y[:, :2].copy(), b, g)
    with pytest.raises(ValueError, match="argument"):
        op(x, y, b)
    if not keops.gpu_available():
        with pytest.raises(RuntimeError, match="GPU is not available"):
            op(x, y, b, g, backend="GPU")
    with pytest.raises(ValueError, match="opt_arg"):
        Genred("SqDist(x, y)", ALIASES[:2], reduction_op="ArgKMin")


def test_sizes_past_memory_are_errors_not_crashes():
    """Absurd sizes are a ValueError when the formula is read, and an output past memory a
    MemoryError when it is computed: never an abort of the interpreter."""
    with pytest.raises(ValueError, match="argument 40000000000"):
        Genred("Vj(40000000000, 2)", [], axis=1)
    with pytest.raises(ValueError, match="at most 16777216"):
        Genred("SumT(Sum(x), 16777217)", ALIASES[:1], axis=1)
    op = Genred("SumT(a, 16777216)", ["a = Vi(1)"], axis=1)
    a = np.ones((1 << 22, 1), dtype=np.float32)  # output: 2^48 bytes
    with pytest.raises(MemoryError, match="out of memory: the output needs 281474976710656 bytes"):
        op(a)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sine_and_cosine_at_large_arguments(dtype) -> None:
    """Past 2^30 the CPU engine computes sine and cosine by libm: as NumPy, not 0 or 1."""
    x = np.array([[0.5], [1e10], [3e15], [-7e20], [1.5e30]], dtype=dtype)
    op = Genred("Sin(x) * Cos(x + y)", ["x = Vi(1)", "y = Vj(1)"], axis=1)
    got = op(x, np.zeros((1, 1), dtype), backend="CPU")[:, 0]
    x64 = x[:, 0].astype(np.float64)
    tol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(got, np.sin(x64) * np.cos(x64), rtol=0, atol=tol)

def test_threads_run_in_parallel_with_the_right_answers():
    x, y, b, g = data(np.float64, n=400, m=500)
    op = Genred(GAUSS, ALIASES, axis=1)
    want = dense_gauss(x, y, b, g)
    results: list = [None] * 4
    errors: list = []

    def work(k: int) -> None:
        try:
            results[k] = op(x * (1 + k), y * (1 + k), b, g)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for k in range(4):
        np.testing.assert_allclose(results[k], dense_gauss(x * (1 + k), y * (1 + k), b, g), rtol=1e-12)
    np.testing.assert_allclose(results[0], want, rtol=1e-12)


def test_docstring_examples_run():
    import doctest

    import keops.numpy

    assert doctest.testmod(keops.numpy).failed == 0


def test_out_receives_the_result() -> None:
    """``out=`` is written in place and returned, as in pykeops."""
    rng = np.random.default_rng(0)
    x, y = rng.random((5, 2)), rng.random((7, 2))
    op = Genred("SqDist(x, y)", ["x = Vi(0,2)", "y = Vj(1,2)"], reduction_op="Sum", axis=1)
    out = np.empty((5, 1))
    assert op(x, y, out=out) is out
    np.testing.assert_allclose(out, ((x[:, None] - y[None]) ** 2).sum((1, 2))[:, None])
    # Never a silent cast or broadcast.
    with pytest.raises(TypeError, match="out: expected dtype float64 .* got int32"):
        op(x, y, out=np.empty((5, 1), dtype=np.int32))
    with pytest.raises(ValueError, match=r"out: expected shape \(5, 1\), got \(5,\)"):
        op(x, y, out=np.empty(5))


def test_use_fast_math_is_pykeops_option() -> None:
    """pykeops' ``use_fast_math`` (on by default): accepted by Genred, KernelSolve and
    LazyTensor reductions, kept by pickling; float64 and normal float32 values are the
    same on the CPU with and without it."""
    import pickle

    from keops.numpy import KernelSolve, LazyTensor

    rng = np.random.default_rng(3)
    x, y, b = rng.random((50, 3)), rng.random((60, 3)), rng.random((60, 1))
    aliases = ["x = Vi(3)", "y = Vj(3)", "b = Vj(1)"]
    fast = Genred("Exp(-SqDist(x,y)) * b", aliases, axis=1)
    strict = Genred("Exp(-SqDist(x,y)) * b", aliases, axis=1, use_fast_math=False)
    assert fast.opts.fast_math and not strict.opts.fast_math
    assert not pickle.loads(pickle.dumps(strict)).opts.fast_math
    np.testing.assert_array_equal(fast(x, y, b, backend="CPU"), strict(x, y, b, backend="CPU"))
    K = (-LazyTensor(x[:, None, :]).sqdist(LazyTensor(y[None, :, :]))).exp()
    np.testing.assert_array_equal(K.sum(dim=1, use_fast_math=False), K.sum(dim=1))
    solve = KernelSolve("Exp(-SqDist(x,y)) * a", ["x = Vi(3)", "y = Vj(3)", "a = Vj(1)"], "a",
                        axis=1, use_fast_math=False)
    assert not pickle.loads(pickle.dumps(solve)).opts.fast_math
    x32, y32, b32 = (a.astype(np.float32) for a in (x, y, b))
    np.testing.assert_array_equal(fast(x32, y32, b32), strict(x32, y32, b32))


@pytest.mark.parametrize("n", [5, 400])  # on the calling thread, and on the pool
def test_use_fast_math_flushes_float32_subnormals_on_the_cpu(n: int) -> None:
    """Every term exp(-95) = 5.5e-42 is a float32 subnormal: flushed to 0 with
    ``use_fast_math`` (as on the GPU), kept without it; float64's are never flushed."""
    aliases = ["x = Vi(1)", "y = Vj(1)", "b = Vj(1)", "g = Pm(1)"]
    x, y, b = np.zeros((n, 1)), np.ones((n, 1)), np.ones((n, 1))
    for dtype, g in [(np.float32, 95.0), (np.float64, 720.0)]:
        args = [a.astype(dtype) for a in (x, y, b, np.array([g]))]
        want = n * np.exp(-g)
        fast = Genred(GAUSS, aliases, axis=1)(*args, backend="CPU")
        strict = Genred(GAUSS, aliases, axis=1, use_fast_math=False)(*args, backend="CPU")
        np.testing.assert_allclose(strict.astype(np.float64), want, rtol=1e-3)
        if dtype == np.float32:
            assert (fast == 0).all()
        else:
            np.testing.assert_allclose(fast, want, rtol=1e-3)
    # The calling thread is left with IEEE subnormals.
    assert np.float32(1.1754944e-38) * np.float32(0.5) > 0
