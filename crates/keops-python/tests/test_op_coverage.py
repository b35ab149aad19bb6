"""Every op of the Rust op table is reachable from the Python ``LazyTensor``: each name
maps to the method (or operator) that builds it, and that method exists in both front
ends. Adding an op to the table without a Python way to build it fails here."""

from __future__ import annotations

import importlib

import pytest

from keops._keops import op_names

# op name -> LazyTensor attribute that produces it.
METHOD = {
    # variables and constants
    "Vi": "__init__", "Vj": "__init__", "Pm": "__init__", "Var": "__init__",
    "IntCst": "__add__", "RatCst": "__truediv__", "IntInv": "__truediv__", "Zero": "__mul__",
    # elementwise
    "Minus": "__neg__", "Square": "square", "Sqrt": "sqrt", "Rsqrt": "rsqrt", "Inv": "inv",
    "Exp": "exp", "Log": "log", "XLogX": "xlogx", "Abs": "abs", "Sign": "sign", "Step": "step",
    "ReLU": "relu", "Sin": "sin", "Cos": "cos", "SinXDivX": "sinxdivx", "Sinc": "sinc",
    "Floor": "floor", "Atan": "atan", "Asin": "asin", "Acos": "acos", "Round": "round",
    "Pow": "__pow__", "Powf": "__pow__", "ClampInt": "clamp", "DiffClampInt": "grad",
    "Add": "__add__", "Subtract": "__sub__", "Mult": "__mul__", "Divide": "__truediv__",
    "Atan2": "atan2", "LessThan": "__lt__", "LessOrEqual": "__le__", "Equal": "__eq__",
    "NotEqual": "__ne__", "IfElse": "ifelse", "Clamp": "clamp", "Mod": "mod",
    # vectors
    "Sum": "sum", "SumT": "grad", "SqNorm2": "sqnorm2", "Norm2": "norm2",
    "Normalize": "normalize", "SqDist": "sqdist", "Scalprod": "__or__",
    "WeightedSqNorm": "weightedsqnorm", "WeightedSqDist": "weightedsqdist",
    "SqNormIso": "weightedsqnorm", "SqNormDiag": "weightedsqnorm", "SymSqNorm": "weightedsqnorm",
    "Extract": "extract", "ExtractT": "grad", "Concat": "concat", "Elem": "elem",
    "ElemT": "grad", "OneHot": "one_hot", "TensorDot": "keops_tensordot",
    "MatVecMult": "matvecmult", "VecMatMult": "vecmatmult", "TensorProd": "tensorprod",
    "Kron": "keops_kron", "DifferenceMatrix": "difference_matrix",
    "BSpline": "bspline", "SoftDTW_SqDist": "softdtw_sqdist",
    "Factorize": "factorize", "AutoFactorize": "auto_factorize",
    "Min": "min", "Max": "max", "ArgMin": "argmin", "ArgMax": "argmax",
    # complex
    "ComplexReal": "real", "ComplexImag": "imag", "Real2Complex": "real2complex",
    "Imag2Complex": "imag2complex", "ComplexAdd": "__add__", "ComplexSubtract": "__sub__",
    "ComplexMult": "__mul__", "ComplexDivide": "__truediv__", "ComplexRealScal": "__mul__",
    "Conj": "conj", "ComplexExp": "exp", "ComplexExp1j": "exp1j",
    "ComplexSquareAbs": "abs", "ComplexAbs": "abs", "ComplexAngle": "angle",
    "ComplexSum": "sum", "ComplexSumT": "grad",
    # differential operators
    "Grad": "grad", "GradFromPos": "grad", "Diff": "diff", "Divergence": "divergence",
    "Laplacian": "laplacian", "GradMatrix": "grad_matrix", "TraceOperator": "trace_operator",
}


def test_every_op_of_the_table_has_a_python_method() -> None:
    missing = [n for n in op_names() if n not in METHOD]
    assert not missing, f"ops without a LazyTensor method: {missing}"
    stale = [n for n in METHOD if n not in op_names()]
    assert not stale, f"mapped names not in the op table: {stale}"


@pytest.mark.parametrize("fname", ["numpy", "torch"])
def test_the_methods_exist(fname: str) -> None:
    if fname == "torch":
        pytest.importorskip("torch")
    lazy = importlib.import_module(f"keops.{fname}").LazyTensor
    absent = sorted({m for m in METHOD.values() if not hasattr(lazy, m)})
    assert not absent, f"LazyTensor lacks {absent}"
