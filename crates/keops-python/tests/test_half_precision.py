"""float16 (both front ends) and bfloat16 (PyTorch) arguments: computed in float32, the
values rounded back to the arguments' dtype. Checked against float64 references on the
same (half-rounded) inputs, to within one rounding of the result: a sum accumulated in
half precision would miss that by far."""

from __future__ import annotations

from typing import Any, List, Tuple

import numpy as np
import pytest

from frontends import front, npy

# (front end, dtype name, unit roundoff of that dtype)
CASES: List[Tuple[str, str, float]] = [
    ("numpy", "float16", 2.0 ** -11),
    ("torch", "float16", 2.0 ** -11),
    ("torch", "bfloat16", 2.0 ** -8),
]
IDS = [f"{f}-{d}" for f, d, _ in CASES]


def _half(front_name: str, dtype: str, a: np.ndarray, grad: bool = False) -> Any:
    """``a`` rounded to ``dtype`` as an array of the front end."""
    if front_name == "numpy":
        return a.astype(dtype)
    import torch
    t = torch.from_numpy(a).to(getattr(torch, dtype))
    return t.requires_grad_() if grad else t


def _f64(a: Any) -> np.ndarray:
    """A half array's exact values in float64."""
    if hasattr(a, "detach"):
        return a.detach().double().numpy()
    return np.asarray(a, dtype=np.float64)


def _dtype_name(a: Any) -> str:
    return str(a.dtype).rsplit(".", 1)[-1]


def _data(n: int = 200, m: int = 300) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((n, 3)), rng.random((m, 3)), rng.random((m, 2))


def _within_one_rounding(got: Any, ref: np.ndarray, u: float) -> None:
    """``got`` is ``ref`` rounded once to the half precision (float32 accumulation adds
    far less than that rounding)."""
    err = np.abs(_f64(got) - ref)
    bound = 1.01 * u * np.abs(ref) + 1e-6 * np.abs(ref).max()
    assert np.all(err <= bound), f"max excess {np.max(err - bound)}"


@pytest.mark.parametrize("front_name,dtype,u", CASES, ids=IDS)
@pytest.mark.parametrize("red", ["Sum", "LogSumExp", "SumSoftMaxWeight"])
def test_smooth_reductions(front_name: str, dtype: str, u: float, red: str) -> None:
    mod = front(front_name)
    x, y, b = (_half(front_name, dtype, a) for a in _data())
    xd, yd, bd = _f64(x), _f64(y), _f64(b)
    f = -((xd[:, None, :] - yd[None, :, :]) ** 2).sum(-1)
    if red == "Sum":
        g = mod.Genred("Exp(-SqDist(x,y)) * b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"],
                       reduction_op="Sum", axis=1)
        ref = np.exp(f) @ bd
        got = g(x, y, b)
    elif red == "LogSumExp":
        g = mod.Genred("-SqDist(x,y)", ["x = Vi(3)", "y = Vj(3)"], reduction_op="LogSumExp",
                       axis=1)
        ref = np.log(np.exp(f).sum(1, keepdims=True))
        got = g(x, y)
    else:
        g = mod.Genred("-SqDist(x,y)", ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"],
                       reduction_op="SumSoftMaxWeight", formula2="b", axis=1)
        w = np.exp(f)
        ref = (w @ bd) / w.sum(1, keepdims=True)
        got = g(x, y, b)
    assert _dtype_name(got) == dtype
    _within_one_rounding(got, ref, u)


@pytest.mark.parametrize("front_name,dtype,u", CASES, ids=IDS)
def test_selections_give_the_float32_indices(front_name: str, dtype: str, u: float) -> None:
    mod = front(front_name)
    x, y, _ = (_half(front_name, dtype, a) for a in _data())
    g = mod.Genred("SqDist(x,y)", ["x = Vi(3)", "y = Vj(3)"], reduction_op="KMin_ArgKMin",
                   axis=1, opt_arg=4)
    vals, idx = g(x, y)
    vals32, idx32 = g(*(a.float() if hasattr(a, "float") else a.astype(np.float32)
                        for a in (x, y)))
    assert _dtype_name(vals) == dtype and _dtype_name(idx) == "int64"
    assert np.array_equal(npy(idx), npy(idx32))
    d = ((_f64(x)[:, None, :] - _f64(y)[None, :, :]) ** 2).sum(-1)
    _within_one_rounding(vals, np.sort(d, axis=1)[:, :4], u)


@pytest.mark.parametrize("front_name,dtype,u", CASES, ids=IDS)
def test_lazytensor(front_name: str, dtype: str, u: float) -> None:
    mod = front(front_name)
    x, y, b = (_half(front_name, dtype, a) for a in _data())
    K = (-mod.LazyTensor(x[:, None, :]).sqdist(mod.LazyTensor(y[None, :, :]))).exp()
    assert K.dtype == dtype
    got = K @ b
    d = ((_f64(x)[:, None, :] - _f64(y)[None, :, :]) ** 2).sum(-1)
    assert _dtype_name(got) == dtype
    _within_one_rounding(got, np.exp(-d) @ _f64(b), u)


@pytest.mark.parametrize("dtype,u", [("float16", 2.0 ** -11), ("bfloat16", 2.0 ** -8)])
def test_torch_gradients_come_back_in_the_half_precision(dtype: str, u: float) -> None:
    torch = pytest.importorskip("torch")
    from keops.torch import LazyTensor
    xn, yn, bn = _data()
    x, y = _half("torch", dtype, xn, grad=True), _half("torch", dtype, yn, grad=True)
    b = _half("torch", dtype, bn)
    K = (-LazyTensor(x[:, None, :]).sqdist(LazyTensor(y[None, :, :]))).exp()
    gx, gy = torch.autograd.grad((K @ b).sum(), [x, y])
    assert gx.dtype == gy.dtype == getattr(torch, dtype)
    xd, yd = (torch.from_numpy(_f64(a)).requires_grad_() for a in (x, y))
    dense = torch.exp(-((xd[:, None, :] - yd[None, :, :]) ** 2).sum(-1)) @ \
        torch.from_numpy(_f64(b))
    rx, ry = torch.autograd.grad(dense.sum(), [xd, yd])
    _within_one_rounding(gx, rx.numpy(), u)
    _within_one_rounding(gy, ry.numpy(), u)


@pytest.mark.parametrize("front_name,dtype,u", CASES, ids=IDS)
def test_kernel_solve(front_name: str, dtype: str, u: float) -> None:
    mod = front(front_name)
    rng = np.random.default_rng(1)
    x = _half(front_name, dtype, rng.random((150, 2)))
    b = _half(front_name, dtype, rng.random((150, 1)))
    solve = mod.KernelSolve("Exp(-SqDist(x,y) * g) * b",
                            ["x = Vi(2)", "y = Vj(2)", "b = Vj(1)", "g = Pm(1)"], "b", axis=1)
    g = _half(front_name, dtype, np.array([4.0]))
    a = solve(x, x, b, g, alpha=1.0, eps=1e-6)
    assert _dtype_name(a) == dtype
    xd = _f64(x)
    K = np.exp(-4.0 * ((xd[:, None, :] - xd[None, :, :]) ** 2).sum(-1)) + np.eye(150)
    ref = np.linalg.solve(K, _f64(b))
    assert np.abs(_f64(a) - ref).max() <= 2 * u * np.abs(ref).max()


@pytest.mark.parametrize("front_name,dtype,u", CASES, ids=IDS)
def test_half_beside_float32_is_refused(front_name: str, dtype: str, u: float) -> None:
    mod = front(front_name)
    x, y, _ = _data()
    g = mod.Genred("SqDist(x,y)", ["x = Vi(3)", "y = Vj(3)"], reduction_op="Sum", axis=1)
    y32 = y.astype(np.float32)
    if front_name == "torch":
        import torch
        y32 = torch.from_numpy(y32)
    with pytest.raises(TypeError, match="argument 1"):
        g(_half(front_name, dtype, x), y32)


def test_other_dtypes_are_still_refused() -> None:
    from keops.numpy import LazyTensor as NL
    with pytest.raises(TypeError, match="float16 array, got dtype int32"):
        NL(np.zeros((3, 1, 2), dtype=np.int32))
    torch = pytest.importorskip("torch")
    from keops.torch import Genred
    g = Genred("SqDist(x,y)", ["x = Vi(3)", "y = Vj(3)"], reduction_op="Sum", axis=1)
    with pytest.raises(TypeError, match="argument 0: expected a float32, float64, float16"):
        g(torch.zeros(3, 3, dtype=torch.int32), torch.zeros(3, 3, dtype=torch.int32))
