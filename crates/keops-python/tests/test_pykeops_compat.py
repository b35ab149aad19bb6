"""pykeops 2.3's API where code written for it relies on details: ``shape``/``ndim``
semantics, reductions' defaults and options, symbolic variables and callable
LazyTensors, keyword names, NumPy operands on the left, and the module helpers. Each
expectation is pykeops' behaviour (checked against pykeops 2.3 when written)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from frontends import FRONTS, arr, front, npy

N, M, D = 6, 7, 3
R = np.random.default_rng(3)
X, Y, B = R.random((N, D)), R.random((M, D)), R.random((M, 2))
D2 = ((X[:, None] - Y[None]) ** 2).sum(-1)


def close(a: Any, b: np.ndarray, tol: float = 1e-12) -> None:
    np.testing.assert_allclose(npy(a), b, rtol=tol, atol=tol)


@pytest.mark.parametrize("fname", FRONTS)
def test_shape_ndim_dim_and_attributes(fname: str) -> None:
    k = front(fname)
    x_i, y_j = k.Vi(arr(fname, X)), k.Vj(arr(fname, Y))
    K = (-x_i.sqdist(y_j)).exp()
    # pykeops: no last dimension of 1 in shape; ndim is the formula's dimension.
    assert K.shape == (N, M) and K.ndim == 1 and K.dim() == 3
    assert (x_i - y_j).shape == (N, M, D) and (x_i - y_j).ndim == D
    assert x_i.shape == (N, 1, D) and (x_i.ni, x_i.nj, K.ni, K.nj) == (N, None, N, M)
    assert K.dtype == "float64" and not K.is_complex
    assert K.nbatchdims == 0 and K.batchdims is None
    assert len(K.variables) == 2 and K.symbolic_variables == ()
    xb = k.LazyTensor(arr(fname, np.stack([X, X])[:, :, None, :]))
    assert (xb - y_j).shape == (2, N, M, D) and (xb - y_j).nbatchdims == 1


@pytest.mark.parametrize("fname", FRONTS)
def test_reductions_over_the_last_dimension_are_operations(fname: str) -> None:
    """pykeops: ``sum``, ``min``, ``max``, ``argmin``, ``argmax`` default to the last
    dimension, where they are LazyTensors; the ``*_reduction`` names never are."""
    k = front(fname)
    d = k.Vi(arr(fname, X)) - k.Vj(arr(fname, Y))
    diff = X[:, None] - Y[None]
    for lazy, want in ((d.sum(), diff.sum(-1)), (d.min(-1), diff.min(-1)),
                       (d.max(dim=2), diff.max(-1)), (d.argmin(-1), diff.argmin(-1)),
                       (d.argmax(axis=-1), diff.argmax(-1))):
        assert lazy.ndim == 1
        close(lazy.sum(dim=1), want.sum(1)[:, None])
    assert d.min().formula == "Min((v0 - v1))"
    close(d.sum(dim=1), diff.sum(1))
    close((d ** 2).sum().min_reduction(axis=0), D2.min(0)[:, None])
    close((d ** 2).sum().__min__(dim=1), D2.min(1)[:, None])
    with pytest.raises(ValueError, match="needs dim"):
        d.sum_reduction()
    with pytest.raises(TypeError, match="not a reduction"):
        d.sum(-1, backend="CPU")


@pytest.mark.parametrize("fname", FRONTS)
def test_reduction_options_out_and_unknown_keywords(fname: str) -> None:
    k = front(fname)
    K = (-k.Vi(arr(fname, X)).sqdist(k.Vj(arr(fname, Y)))).exp()
    want = np.exp(-D2).sum(1)[:, None]
    out = arr(fname, np.zeros((N, 1)))
    res = K.sum(1, out=out, backend="CPU", enable_chunks=True)
    assert res is out
    close(out, want)
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus_kw'"):
        K.sum(dim=1, bogus_kw=1)
    with pytest.raises(TypeError, match="optional_flags"):
        K.argKmin(2, dim=1, optional_flags=["-O3"])
    close(K.reduction("Sum", axis=1), want)
    close(K.log().reduction("LogSumExp", dim=1), np.log(want))
    np.testing.assert_array_equal(npy(K.reduction("ArgKMin", opt_arg=2, dim=0)),
                                  np.argsort(np.exp(-D2), 0)[:2].T)


@pytest.mark.parametrize("fname", FRONTS)
def test_call_false_returns_a_callable_lazytensor(fname: str) -> None:
    k = front(fname)
    K = (-k.Vi(arr(fname, X)).sqdist(k.Vj(arr(fname, Y)))).exp()
    f = K.sum(dim=1, call=False)
    assert f.reduction_op == "Sum" and "reduction: Sum (axis=1)" in repr(f)
    close(f(), np.exp(-D2).sum(1)[:, None])
    close(f(backend="CPU"), np.exp(-D2).sum(1)[:, None])
    close(K.__matmul__(arr(fname, B), call=False)(), np.exp(-D2) @ B)
    with pytest.raises(ValueError, match="result of a reduction"):
        K()
    with pytest.raises(TypeError, match="takes 0 arrays"):
        f(arr(fname, X))


@pytest.mark.parametrize("fname", FRONTS)
def test_symbolic_variables(fname: str) -> None:
    k = front(fname)
    x, y, b = arr(fname, X), arr(fname, Y), arr(fname, B)
    gauss = (-k.Vi(0, D).sqdist(k.Vj(1, D))).exp()
    assert gauss.symbolic_variables == ((0, D, 0), (1, D, 1)) and gauss.dtype is None
    conv = (gauss * k.LazyTensor((2, 2, 1))).sum(dim=1)     # callable: no array yet
    assert conv.reduction_op == "Sum"
    close(conv(x, y, b), np.exp(-D2) @ B)
    # Symbolic variables and arrays together: the arrays come after the arguments.
    mixed = (gauss * k.Vj(b)).sum(dim=0)
    close(mixed(x, y), np.exp(-D2).T[:, :, None].sum(1) * B)
    # t() swaps symbolic categories too: sum over i of K(y_j, x_i) = rows of x.
    close(gauss.t().sum(dim=0)(x, y), np.exp(-D2).sum(1)[:, None])
    # Symbolic gradients.
    e = k.Vi(2, 1)
    grad = gauss.grad(k.Vi(0, D), e).sum(dim=1)
    want = (-2 * (X[:, None] - Y[None]) * np.exp(-D2)[:, :, None]).sum(1)
    close(grad(x, y, arr(fname, np.ones((N, 1)))), want)
    with pytest.raises(TypeError, match="takes 3 arrays"):
        conv(x, y)
    with pytest.raises(ValueError, match="declared twice"):
        k.Vi(0, 3) + k.Vj(0, 3)
    with pytest.raises(ValueError, match="symbolic variable is"):
        k.LazyTensor((0, 3, 5))
    with pytest.raises(ValueError, match="symbolic variables"):
        gauss.dense()


@pytest.mark.parametrize("fname", FRONTS)
def test_solve_with_a_symbolic_unknown_and_call_false(fname: str) -> None:
    k = front(fname)
    x, rhs = arr(fname, X), R.random((N, 2))
    b = arr(fname, rhs)
    K = (-k.Vi(x).sqdist(k.Vj(x)) * 4.0).exp()
    A = np.exp(-4 * ((X[:, None] - X[None]) ** 2).sum(-1)) + 0.5 * np.eye(N)
    want = np.linalg.solve(A, rhs)
    close(K.solve(b, alpha=0.5), want, 1e-5)
    pending = K.solve(b, alpha=0.5, call=False)
    assert pending.reduction_op == "Solve"
    close(pending(), want, 1e-5)
    # The unknown as a symbolic variable of the formula K a.
    Ka = K * k.Vj(0, 2)
    close(Ka.solve(b, var=k.Vj(0, 2), alpha=0.5), want, 1e-5)
    with pytest.raises(TypeError, match="unexpected keyword argument 'tol'"):
        K.solve(b, tol=1e-3)
    with pytest.raises(ValueError, match="does not use var"):
        Ka.solve(b, var=k.Vj(1, 2))


@pytest.mark.parametrize("fname", FRONTS)
def test_numpy_arrays_on_the_left_and_lists(fname: str) -> None:
    k = front(fname)
    K = (-k.Vi(arr(fname, X)).sqdist(k.Vj(arr(fname, Y)))).exp()
    want = np.exp(-D2).sum(1)[:, None]
    if fname == "numpy":
        # NumPy defers to the LazyTensor (__array_ufunc__ = None), as pykeops.
        close((np.array([2.0]) * K).sum(dim=1), 2 * want)
        close((np.ones((1, 1, 1)) + K).sum(dim=1), want + M)
    # A list of numbers is a constant vector (torch too).
    w = [0.5, 1.0, 2.0]
    got = (k.Vi(arr(fname, X)) * k.LazyTensor(w) - k.Vj(arr(fname, Y))).sum().sum(dim=1)
    close(got, (M * X @ np.array(w) - Y.sum())[:, None])
    with pytest.raises(ValueError, match="real numbers"):
        k.LazyTensor([])


@pytest.mark.parametrize("fname", FRONTS)
def test_pykeops_keyword_names_and_concatenate(fname: str) -> None:
    k = front(fname)
    x_i, y_j = k.Vi(arr(fname, X)), k.Vj(arr(fname, Y))
    diff = X[:, None] - Y[None]
    cases = [
        (x_i.round(other=1) + 0.0 * y_j, np.broadcast_to(np.round(X[:, None], 1), (N, M, D))),
        ((x_i - y_j).clamp(other1=-0.2, other2=0.3), np.clip(diff, -0.2, 0.3)),
        ((x_i - y_j).ifelse(other1=1.0, other2=-1.0), np.where(diff >= 0, 1.0, -1.0)),
        (x_i.sqdist(other=y_j), D2[..., None]),
        (x_i.sqdist(y_j).grad(other=x_i, gradin=1.0), 2 * diff),
        ((x_i - y_j).weightedsqnorm(other=2.0), 2 * D2[..., None]),
        (x_i.weightedsqdist(g=y_j, s=2.0), 2 * D2[..., None]),
        (x_i.concat(other=y_j), np.concatenate(np.broadcast_arrays(X[:, None], Y[None]), -1)),
        (k.LazyTensor.concatenate((x_i, y_j, x_i)),
         np.concatenate(np.broadcast_arrays(X[:, None], Y[None], X[:, None]), -1)),
        (k.LazyTensor.cat((x_i, y_j), dim=-1),
         np.concatenate(np.broadcast_arrays(X[:, None], Y[None]), -1)),
    ]
    for lazy, want in cases:
        close(lazy.sum(dim=1), np.broadcast_to(want, (N, M, want.shape[-1])).sum(1), 1e-10)
    with pytest.raises(ValueError, match="last dimension"):
        k.LazyTensor.concatenate((x_i, y_j), axis=0)


@pytest.mark.parametrize("fname", FRONTS)
def test_generic_argkmin_reads_K_from_the_output(fname: str) -> None:
    k = front(fname)
    knn = k.generic_argkmin("SqDist(x, y)", "a = Vi(3)", "x = Vi(3)", "y = Vj(3)")
    np.testing.assert_array_equal(npy(knn(arr(fname, X), arr(fname, Y))),
                                  np.argsort(D2, 1)[:, :3])
    lse = k.Genred("-SqDist(x,y)", ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"],
                   reduction_op="LogSumExp", axis=1, formula2="b")
    close(lse(arr(fname, X), arr(fname, Y), arr(fname, B)), np.log(np.exp(-D2) @ B))
    # pykeops 2.3 returns KeOps' raw state (m, sum exp(F - m) w) for these, also for
    # LogSumExpWeight (run as Max_SumShiftExpWeight, not finalized): refused, so that
    # ported code never takes a finished value for that state.
    for name, f2 in (("Max_SumShiftExp", None), ("Max_SumShiftExpWeight", "b"),
                     ("LogSumExpWeight", "b")):
        with pytest.raises(ValueError, match="raw state"):
            k.Genred("-SqDist(x,y)", ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"],
                     reduction_op=name, axis=1, formula2=f2)


def test_kernel_solve_positional_arguments_follow_each_front_end() -> None:
    """pykeops.numpy.KernelSolve(formula, aliases, varinvalias, axis, dtype, opt_arg,
    dtype_acc, ...) and pykeops.torch.KernelSolve(formula, aliases, varinvalias, axis,
    dtype_acc, use_double_acc, ...)."""
    torch = pytest.importorskip("torch")
    from keops import numpy as kn
    from keops import torch as kt
    f, al = "Exp(-SqDist(x,y)) * a", ["x = Vi(3)", "y = Vj(3)", "a = Vj(2)"]
    assert kn.KernelSolve(f, al, "a", 1, None, None, "float64").opts.dtype_acc == "float64"
    assert kt.KernelSolve(f, al, "a", 1, "float64").opts.dtype_acc == "float64"
    with pytest.raises(ValueError, match="dtype_acc"):
        kt.KernelSolve(f, al, "a", 1, "float128")
    x = torch.from_numpy(X)
    a = kt.KernelSolve(f, al, "a", 1)(x, x, torch.from_numpy(R.random((N, 2))), alpha=1.0)
    assert a.shape == (N, 2)


@pytest.mark.parametrize("fname", FRONTS)
def test_complex_lazytensor_is_exported(fname: str) -> None:
    k = front(fname)
    z = (X + 1j * X[:, ::-1]).astype(np.complex128)
    zi = k.ComplexLazyTensor(arr(fname, z[:, None, :]))
    assert zi.is_complex and zi.dtype == "complex128"
    close(zi.sum(dim=1), z)  # no j variable: one column
    lifted = k.ComplexLazyTensor(arr(fname, X[:, None, :]))
    assert lifted.is_complex
    close(lifted.sum(dim=1), X.astype(np.complex128))
    assert k.LazyTensor(arr(fname, X[:, None, :]), is_complex=True).is_complex
    # As in pykeops, complex LazyTensors are ComplexLazyTensors, real ones are not.
    zl = k.LazyTensor(arr(fname, z[:, None, :]))
    assert isinstance(zl, k.ComplexLazyTensor) and isinstance(zl * 2.0, k.ComplexLazyTensor)
    assert isinstance(lifted, k.LazyTensor) and isinstance(lifted, k.ComplexLazyTensor)
    assert not isinstance(k.LazyTensor(arr(fname, X[:, None, :])), k.ComplexLazyTensor)
    assert not isinstance(zl.real, k.ComplexLazyTensor) and not isinstance(z, k.ComplexLazyTensor)


def test_module_helpers(capsys: Any) -> None:
    import keops
    keops.test_numpy_bindings()
    if importlib.util.find_spec("torch") is not None:
        keops.test_torch_bindings()
    assert "bindings is working" in capsys.readouterr().out
    keops.set_verbose(True)
    assert keops.verbose
    keops.set_verbose(False)


def test_build_folder_and_clean_pykeops(tmp_path: Any) -> None:
    """In a fresh process (the kernel cache's folder is fixed when a process first uses
    it): set_build_folder moves the GPU kernel cache; clean_pykeops removes the cached
    kernels and nothing else."""
    code = f"""
import os, keops
keops.set_build_folder({str(tmp_path)!r})
d = keops.get_build_folder()
assert d == os.path.join({str(tmp_path)!r}, "cubin"), d
os.makedirs(os.path.join(d, "failed"))
for name in ("a.cubin", "b.cubin", ".tmpX1", "notes.txt", os.path.join("failed", "k.cu")):
    open(os.path.join(d, name), "w").write("x")
keops.clean_pykeops()
print(sorted(os.listdir(d)), os.listdir(os.path.join(d, "failed")))
"""
    env = dict(os.environ)
    env.pop("KEOPS_CACHE_DIR", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['failed', 'notes.txt'] []"


def test_a_bad_isa_variable_is_an_error(capsys: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """``KEOPS_CPU_ISA`` naming no instruction set (it was silently ignored: the best
    one ran) is an error naming it, in calls and in ``check_health``'s report."""
    import keops
    from keops.numpy import Genred
    x = np.ones((3, 2), dtype=np.float32)
    g = Genred("SqDist(x,y)", ["x = Vi(2)", "y = Vj(2)"], reduction_op="Sum", axis=1)
    monkeypatch.setenv("KEOPS_CPU_ISA", "avx-512")
    with pytest.raises(ValueError, match="KEOPS_CPU_ISA.*'avx-512'"):
        g(x, x, backend="CPU")
    assert keops.check_health() is False
    assert "CPU engine: " in capsys.readouterr().out
    monkeypatch.setenv("KEOPS_CPU_ISA", "SSE41")  # any case
    assert keops._keops.cpu_status()[0] in ("sse41", "baseline")
    monkeypatch.delenv("KEOPS_CPU_ISA")
    assert float(g(x, x, backend="CPU")[0, 0]) == 0.0


def test_check_health_reports_and_says_what_failed(capsys: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import keops
    import keops._tools as tools
    assert keops.check_health() is True
    out = capsys.readouterr().out
    isa, threads = keops._keops.cpu_status()
    assert f"CPU engine: {isa}, {threads} thread(s)" in out
    assert "GPU driver: " in out and "GPU compiler: " in out and "GPU kernel cache: " in out
    assert "numpy bindings is working" in out
    if not keops.gpu_available():
        assert "[missing]" in out  # with the reason on the same line

    def broken() -> None:
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(tools, "test_numpy_bindings", broken)
    assert keops.check_health() is False
    assert "test_numpy_bindings FAILED: RuntimeError: simulated failure" in capsys.readouterr().out


def test_config_module() -> None:
    import keops
    import keops.config
    assert keops.config.gpu_available is keops.gpu_available()
    assert keops.config.numpy_found
    assert keops.config.torch_found == (importlib.util.find_spec("torch") is not None)
    assert keops.config.get_build_folder() == keops.get_build_folder()
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        keops.config.nope  # noqa: B018


def test_common_module() -> None:
    """``pykeops.common``'s names that user code imports: the LazyTensor base classes
    (``isinstance`` checks across both front ends), ``get_gpu_number``, ``get_tools`` and
    the axis/category helpers."""
    import keops
    from keops import _common as c
    from keops.numpy import LazyTensor
    from keops.numpy.utils import numpytools

    real = LazyTensor(X[:, None, :])
    cplx = LazyTensor((X + 1j * X).astype(np.complex128)[:, None, :])
    assert isinstance(real, c.GenericLazyTensor) and isinstance(cplx, c.GenericLazyTensor)
    assert isinstance(cplx, c.ComplexGenericLazyTensor) and c.is_complex_lazytensor(cplx * 2.0)
    assert not isinstance(real, c.ComplexGenericLazyTensor) and not c.is_complex_lazytensor(X)
    with pytest.raises(TypeError, match="for isinstance checks"):
        c.ComplexGenericLazyTensor()
    n, text = c.get_gpu_props()
    assert c.get_gpu_number() == n and (n > 0) == keops.config.gpu_available
    assert "driver" in text and "compiler" in text
    assert isinstance(c.get_tools("numpy"), numpytools)
    with pytest.raises(ValueError, match="'numpy', 'torch' or 'pytorch', got 'jax'"):
        c.get_tools("jax")
    assert [c.axis2cat(0), c.axis2cat(1), c.cat2axis(0), c.cat2axis(1)] == [1, 0, 1, 0]
    with pytest.raises(ValueError, match="axis should be 0 or 1, got 2"):
        c.axis2cat(2)
    with pytest.raises(ValueError, match="category should be 0"):
        c.cat2axis(-1)


@pytest.mark.parametrize("fname", FRONTS)
def test_utils_modules(fname: str) -> None:
    """``pykeops.numpy.utils`` / ``pykeops.torch.utils``: the array tools that code
    written for both front ends reads (``numpytools``, ``torchtools``) and the dense
    kernels of pykeops' tests and tutorials."""
    k = front(fname)
    u = importlib.import_module(f"keops.{fname}.utils")
    tools = u.numpytools if fname == "numpy" else u.torchtools
    assert tools.Genred is k.Genred and tools.KernelSolve is k.KernelSolve
    x, y = arr(fname, X), arr(fname, Y)
    assert tools.is_tensor(x) and not tools.is_tensor(X.tolist())
    close(u.squared_distances(x, y), D2)
    close(tools.solve(arr(fname, np.eye(2) * 2), arr(fname, np.ones((2, 1)))), np.full((2, 1), .5))
    z = arr(fname, np.ascontiguousarray(X[:, :2]))
    close(tools.view_as_real(tools.view_as_complex(z)), X[:, :2])
    assert tools.dtypename(x.dtype) == "float64" and tools.size(x) == N * D
    assert tools.device_type_index(x)[0] == "cpu"
    gauss = u.np_kernel if fname == "numpy" else u.torch_kernel
    for name, want in (("gaussian", np.exp(-D2 / 0.25)), ("cauchy", 1 / (1 + D2 / 0.25)),
                       ("laplacian", np.exp(-np.sqrt(D2) / 0.5)),
                       ("inverse_multiquadric", 1 / np.sqrt(1 + D2 / 0.25))):
        close(gauss(x, y, 0.5, name), want, 1e-10)
    with pytest.raises(ValueError, match="unknown kernel 'gauss'"):
        gauss(x, y, 0.5, "gauss")
    if fname == "numpy":
        # The derivative in |x-y|^2 against a central difference of the kernel.
        for name in ("gaussian", "laplacian", "cauchy", "inverse_multiquadric"):
            h = 1e-6
            f = u._KERNELS[name]
            fd = (f(D2 + h, 0.5, np) - f(D2 - h, 0.5, np)) / (2 * h)
            close(u.grad_np_kernel(X, Y, 0.5, name), fd, 1e-6)
            close(u.log_np_kernel(X, Y, 0.5, name), np.log(u.np_kernel(X, Y, 0.5, name)), 1e-10)
        close(u.log_sum_exp(-D2, axis=1), np.log(np.exp(-D2).sum(1)))
        assert u.differences(X, Y).shape == (D, N, M)


@pytest.mark.parametrize("fname", FRONTS)
def test_pykeops_test_suite_idioms(fname: str) -> None:
    """What pykeops' own tests write: integer lists in brackets in formula strings (as
    its LazyTensor prints them), ``logsumexp(other=w)``, ``sum(-1, keepdim=True)``, and
    variables written in a formula that simplification removes, which still take their
    argument positions."""
    k = front(fname)
    x, y = arr(fname, X), arr(fname, Y)
    kron = k.Genred("Kron(x, y, [1, 3], [3, 1])", ["x = Vi(0,3)", "y = Vj(1,3)"], "Sum", axis=1)
    want = sum(np.stack([np.kron(a.reshape(1, 3), b.reshape(3, 1)).ravel() for a in X])
               for b in Y)
    close(kron(x, y), want)
    x_i, y_j = k.Vi(x), k.Vj(y)
    b_j = k.Vj(arr(fname, B[:, :1]))
    d2 = ((x_i - y_j) ** 2).sum(-1, keepdim=True)
    assert d2.formula == ((x_i - y_j) ** 2).sum().formula
    want = np.log((np.exp(-D2) * B[None, :, 0]).sum(1))[:, None]
    close((-d2).logsumexp(dim=1, other=b_j), want)
    close((-d2).logsumexp(dim=1, weight=b_j), want)
    with pytest.raises(TypeError, match="twice"):
        (-d2).logsumexp(dim=1, weight=b_j, other=b_j)
    with pytest.raises(TypeError, match="options"):
        d2.sum(-1, backend="CPU")
    g = k.Genred("Grad(Grad(x + Var(1,3,1), x, Var(2,3,0)),x, Var(3,3,0))", ["x=Vi(0,3)"],
                 "Sum", axis=1)
    close(g(x, y, x, x), np.zeros((N, D)))


@pytest.mark.parametrize("fname", FRONTS)
def test_callfun_is_the_routine_a_callable_lazytensor_runs(fname: str) -> None:
    """pykeops' ``callfun``: the front end's Genred (KernelSolve) of a callable
    LazyTensor, taking the symbolic variables' arrays then the wrapped ones."""
    k = front(fname)
    x, y, b = arr(fname, X), arr(fname, Y), arr(fname, B)
    K = (-k.Vi(0, 3).sqdist(k.Vj(y)))
    lse = K.logsumexp(dim=1, weight=k.Vj(b), call=False)
    assert isinstance(lse.callfun, k.Genred)
    close(lse.callfun(x, y, b), npy(lse(x)))
    kmin = K.Kmin(2, dim=1, call=False)
    close(kmin.callfun(x, y), npy(kmin(x)))
    rhs = arr(fname, R.random((N, 2)))
    solve = (-k.Vi(0, 3).sqdist(k.Vj(x))).exp().solve(rhs, alpha=2.0, call=False)
    routine = solve.callfun
    assert isinstance(routine, k.KernelSolve)
    assert routine._init["aliases"][routine.var] == "v1 = Vj(2,2)"
    close(routine(x, x, rhs, alpha=2.0), npy(solve(x)))
    with pytest.raises(AttributeError, match="callable LazyTensor"):
        K.callfun


@pytest.mark.parametrize("fname", FRONTS)
def test_unary_binary_ternary_apply_any_operation_by_name(fname: str) -> None:
    """pykeops' ``unary``/``binary``/``ternary``: a KeOps operation by its name, with
    pykeops' keywords (``dimres``, ``is_operator``, ``opt_arg``/``opt_pos``,
    ``rversion``, ``dimcheck``)."""
    k = front(fname)
    x, y = k.Vi(arr(fname, X)), k.Vj(arr(fname, Y))
    close(x.binary(y, "SqDist", dimres=1).exp().sum(dim=1), np.exp(D2).sum(1)[:, None])
    close((x.unary("Exp") * y).sum(dim=1), (np.exp(X)[:, None] * Y[None]).sum(1))
    close((x.unary("Round", opt_arg=1) + y).sum(dim=1),
          (np.round(X, 1)[:, None] + Y[None]).sum(1))
    close(x.binary(y, "-", is_operator=True, rversion=True).sum(dim=1),
          (Y[None] - X[:, None]).sum(1))
    close((x.ternary(0.2, 0.5, "Clamp") + y).sum(dim=1),
          (np.clip(X, 0.2, 0.5)[:, None] + Y[None]).sum(1))
    assert x.binary(y, "Foo", opt_arg=3, opt_pos="middle").formula == "Foo(v0, 3, v1)"
    # The checks: dimensions, keywords, and unknown names when the formula is reduced.
    with pytest.raises(ValueError, match="dimensions 3, 2 fail dimcheck='sameor1'"):
        x.binary(k.Vj(arr(fname, B)), "Atan2")
    with pytest.raises(ValueError, match="dimensions 3, 2 fail dimcheck='same'"):
        x.binary(k.Vj(arr(fname, B)), "Atan2", dimcheck="same")
    with pytest.raises(ValueError, match="dimcheck='foo'"):
        x.binary(y, "Atan2", dimcheck="foo")
    with pytest.raises(ValueError, match="opt_pos='first'"):
        x.binary(y, "Foo", opt_arg=1, opt_pos="first")
    with pytest.raises(TypeError, match="opt_arg"):
        x.unary("Round", opt_arg=y)
    with pytest.raises(ValueError, match='unknown operation "Nope"'):
        (x.unary("Nope") + y).sum(dim=1)


@pytest.mark.parametrize("fname", FRONTS)
def test_a_reduction_kept_for_later_takes_no_operation(fname: str) -> None:
    """As pykeops: a LazyTensor holding a reduction (``call=False``) refuses operations,
    instead of quietly dropping its reduction."""
    k = front(fname)
    x, y = k.Vi(arr(fname, X)), k.Vj(arr(fname, Y))
    f = x.sqdist(y).sum(dim=1, call=False)
    for op in (lambda: f + 1, lambda: f.exp(), lambda: x.sqdist(y) * f, lambda: f.sum(dim=0),
               lambda: f.unary("Exp")):
        with pytest.raises(ValueError, match="reduction kept for later"):
            op()
    close(f(), D2.sum(1)[:, None])
