"""How each library computes the cases: one class per way of computing.

:class:`LazyMethod` serves keops-rs and pykeops alike (the same pykeops-compatible
``LazyTensor`` / ``KernelSolve`` code, on the CPU or the GPU); :class:`TorchDense` and
:class:`NumpyDense` materialise the N x M matrix. Each method turns a case and its data
into a thunk; converting or moving the inputs happens before, untimed.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .cases import ALPHA_SOLVE, EPS_SOLVE, GAMMA_SOLVE, K_NN, Case, Data, Thunk

SOLVE_FORMULA = "Exp(-SqDist(x,y) * g) * a"
SOLVE_ALIASES = ["x = Vi(3)", "y = Vj(3)", "a = Vj(1)", "g = Pm(1)"]


def method_key(name: str) -> str:
    """A method's name on the command line: lower case, dashes (``torch-gpu``)."""
    return name.lower().replace(" ", "-").replace("pytorch", "torch")


class Method:
    """A way of computing the cases: a column of the tables, a line of the plots."""

    #: Column label, e.g. ``"keops-rs"`` or ``"PyTorch GPU"``.
    name: str = ""
    #: ``"CPU"`` or ``"GPU"``: ratios compare methods on the same kind of device.
    device: str = "CPU"
    #: Whether it builds the N x M matrix (its memory is then checked before it runs).
    dense: bool = False
    #: The library and its version, for the report.
    version: str = ""

    @property
    def key(self) -> str:
        """The name on the command line (``--methods``)."""
        return method_key(self.name)

    def thunk(self, case: Case, data: Data) -> Thunk:
        """The measured computation of ``case`` on ``data``."""
        return getattr(self, case.kind)(case, self.prepare(data))

    def prepare(self, data: Data) -> Any:
        """The inputs in this method's form (device, array type); not timed."""
        return data

    def sync(self) -> None:
        """Waits for queued device work, so that a timing covers it."""

    def mem_bytes(self, case: Case, n: int) -> float:
        """Peak memory of one call at N = M = n, for the dense methods (else 0)."""
        return 0.0


class TorchMethod(Method):
    """A method on torch tensors of one device (inputs moved there, untimed)."""

    torch_device = torch.device("cpu")

    def prepare(self, data: Data) -> Data:
        d = self.torch_device
        return Data(data.x.to(d), data.y.to(d), data.b.to(d), data.g.to(d))

    def sync(self) -> None:
        if self.torch_device.type == "cuda":
            torch.cuda.synchronize(self.torch_device)


# --------------------------------------------------------------------------- LazyTensor
class LazyMethod(TorchMethod):
    """keops-rs or pykeops through their torch front end (``LazyTensor``, ``KernelSolve``),
    with an explicit backend; inputs on ``torch_device``."""

    def __init__(self, name: str, module: Any, backend: str, torch_device: str,
                 version: str) -> None:
        self.name, self.module, self.backend = name, module, backend
        self.device = "GPU" if backend.startswith("GPU") else "CPU"
        self.torch_device = torch.device(torch_device)
        self.version = version

    def _sqdist(self, x: torch.Tensor, y: torch.Tensor) -> Any:
        LT = self.module.LazyTensor
        return ((LT(x[:, None, :]) - LT(y[None, :, :])) ** 2).sum(-1)

    def _gauss(self, x: torch.Tensor, d: Data) -> Any:
        b_j = self.module.LazyTensor(d.b[None, :, :])
        return ((-self._sqdist(x, d.y)).exp() * b_j).sum(dim=1, backend=self.backend)

    def gauss(self, case: Case, d: Data) -> Thunk:
        return lambda: self._gauss(d.x, d)

    def grad(self, case: Case, d: Data) -> Thunk:
        def run() -> torch.Tensor:
            x = d.x.detach().requires_grad_(True)
            return torch.autograd.grad(self._gauss(x, d), [x], d.g)[0]
        return run

    def knn(self, case: Case, d: Data) -> Thunk:
        return lambda: self._sqdist(d.x, d.y).argKmin(K_NN, dim=1, backend=self.backend)

    def lse(self, case: Case, d: Data) -> Thunk:
        return lambda: (-self._sqdist(d.x, d.y)).logsumexp(dim=1, backend=self.backend)

    def solve(self, case: Case, d: Data) -> Thunk:
        ks = self.module.KernelSolve(SOLVE_FORMULA, SOLVE_ALIASES, "a", axis=1)
        gamma = torch.tensor([GAMMA_SOLVE], dtype=d.x.dtype, device=d.x.device)
        return lambda: ks(d.x, d.x, d.b, gamma, alpha=ALPHA_SOLVE, eps=EPS_SOLVE,
                          backend=self.backend)


class PinnedRows(LazyMethod):
    """keops-rs on the GPU with ``rows`` output rows per thread (``KEOPS_GPU_ROWS``, capped
    by what each kernel allows), for comparing them with the planner's choice."""

    def __init__(self, rows: int, module: Any, torch_device: str, version: str) -> None:
        super().__init__(f"keops-rs GPU rows={rows}", module, "GPU", torch_device, version)
        self.rows = rows

    def thunk(self, case: Case, data: Data) -> Thunk:
        inner = super().thunk(case, data)

        def run() -> Any:
            os.environ["KEOPS_GPU_ROWS"] = str(self.rows)
            try:
                return inner()
            finally:
                del os.environ["KEOPS_GPU_ROWS"]
        return run


# --------------------------------------------------------------------------- dense torch
class TorchDense(TorchMethod):
    """Plain PyTorch: the N x M matrix, then a matrix product, ``topk``, ``logsumexp``
    or a Cholesky solve; autograd for the gradient."""

    dense = True

    def __init__(self, torch_device: str) -> None:
        self.torch_device = torch.device(torch_device)
        self.device = "GPU" if self.torch_device.type == "cuda" else "CPU"
        self.name = "PyTorch" + (" GPU" if self.device == "GPU" else "")
        self.version = f"torch {torch.__version__}"

    def mem_bytes(self, case: Case, n: int) -> float:
        # Matrices of N x M held at once: cdist and its temporaries, exp, autograd's saved
        # tensors for the gradient, the factor for the solve.
        held = {"gauss": 3, "grad": 5, "knn": 3, "lse": 3, "solve": 3}[case.kind]
        return held * n * n * case.itemsize

    @staticmethod
    def _kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.exp(-torch.cdist(x, y).square())

    def gauss(self, case: Case, d: Data) -> Thunk:
        @torch.no_grad()
        def run() -> torch.Tensor:
            return self._kernel(d.x, d.y) @ d.b
        return run

    def grad(self, case: Case, d: Data) -> Thunk:
        def run() -> torch.Tensor:
            x = d.x.detach().requires_grad_(True)
            return torch.autograd.grad(self._kernel(x, d.y) @ d.b, [x], d.g)[0]
        return run

    def knn(self, case: Case, d: Data) -> Thunk:
        @torch.no_grad()
        def run() -> torch.Tensor:
            return torch.cdist(d.x, d.y).topk(K_NN, dim=1, largest=False).indices
        return run

    def lse(self, case: Case, d: Data) -> Thunk:
        @torch.no_grad()
        def run() -> torch.Tensor:
            return torch.logsumexp(-torch.cdist(d.x, d.y).square(), dim=1, keepdim=True)
        return run

    def solve(self, case: Case, d: Data) -> Thunk:
        @torch.no_grad()
        def run() -> torch.Tensor:
            k = torch.exp(-GAMMA_SOLVE * torch.cdist(d.x, d.x).square())
            k.diagonal().add_(ALPHA_SOLVE)
            return torch.cholesky_solve(d.b, torch.linalg.cholesky(k))
        return run


# --------------------------------------------------------------------------- dense NumPy
class NumpyDense(Method):
    """Plain NumPy: the N x M matrix built in place, then BLAS, ``argpartition``, a
    log-sum-exp, an explicit gradient or ``numpy.linalg.solve``."""

    name = "NumPy"
    dense = True

    def __init__(self) -> None:
        self.version = f"numpy {np.__version__}"

    def prepare(self, data: Data) -> Tuple[np.ndarray, ...]:
        return tuple(t.numpy() for t in (data.x, data.y, data.b, data.g))

    def mem_bytes(self, case: Case, n: int) -> float:
        # argpartition returns int64 indices beside the float matrix; solve copies K.
        held = {"gauss": 2, "grad": 2, "knn": 4, "lse": 2, "solve": 3}[case.kind]
        return held * n * n * case.itemsize

    @staticmethod
    def _sqdist(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        d = x @ y.T
        d *= -2
        d += (x * x).sum(1)[:, None]
        d += (y * y).sum(1)[None, :]
        return np.maximum(d, 0, out=d)

    def _kernel(self, x: np.ndarray, y: np.ndarray, gamma: float = 1.0) -> np.ndarray:
        k = self._sqdist(x, y)
        k *= -gamma
        return np.exp(k, out=k)

    def gauss(self, case: Case, d: Sequence[np.ndarray]) -> Thunk:
        x, y, b, _ = d
        return lambda: self._kernel(x, y) @ b

    def grad(self, case: Case, d: Sequence[np.ndarray]) -> Thunk:
        x, y, b, g = d

        def run() -> np.ndarray:
            # d/dx_i sum_i g_i sum_j exp(-|x_i - y_j|^2) b_j
            #   = -2 g_i (x_i (K b)_i - (K (b y))_i)
            k = self._kernel(x, y)
            return -2 * g * (x * (k @ b) - k @ (b * y))
        return run

    def knn(self, case: Case, d: Sequence[np.ndarray]) -> Thunk:
        x, y, _, _ = d

        def run() -> np.ndarray:
            dist = self._sqdist(x, y)
            idx = np.argpartition(dist, K_NN - 1, axis=1)[:, :K_NN]
            order = np.argsort(np.take_along_axis(dist, idx, axis=1), axis=1)
            return np.take_along_axis(idx, order, axis=1)
        return run

    def lse(self, case: Case, d: Sequence[np.ndarray]) -> Thunk:
        x, y, _, _ = d

        def run() -> np.ndarray:
            s = self._sqdist(x, y)
            s *= -1
            m = s.max(axis=1, keepdims=True)
            s -= m
            return np.log(np.exp(s, out=s).sum(axis=1, keepdims=True)) + m
        return run

    def solve(self, case: Case, d: Sequence[np.ndarray]) -> Thunk:
        x, _, b, _ = d

        def run() -> np.ndarray:
            k = self._kernel(x, x, GAMMA_SOLVE)
            k[np.diag_indices_from(k)] += ALPHA_SOLVE
            return np.linalg.solve(k, b)
        return run


# --------------------------------------------------------------------------- discovery
def _quiet_import(module: str) -> Any:
    """Imports a module, swallowing what it prints (pykeops' warnings)."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        return __import__(module, fromlist=["LazyTensor", "KernelSolve"])


#: Every method's key on the command line (``--methods``), present on this machine or not.
ALL_METHODS = ("keops-rs", "keops-rs-gpu", "numpy", "torch", "torch-gpu", "pykeops",
               "pykeops-gpu")


def find_methods(wanted: Optional[Sequence[str]] = None,
                 gpu_rows: Sequence[int] = ()) -> Tuple[List[Method], Dict[str, str]]:
    """The methods this machine can run (restricted to the keys in ``wanted``), and why
    each missing one is missing; with ``gpu_rows``, keops-rs GPU also with each of these
    numbers of output rows per thread. A wanted method this machine lacks is reported
    missing, not an error (a GPU run still measures the others when pykeops cannot
    start); a key no machine knows is a ``ValueError``."""
    cuda = torch.cuda.is_available()
    missing: Dict[str, str] = {}
    methods: List[Method] = []

    import keops
    import keops.torch as kt
    kv = f"keops-rs {keops.__version__}"
    methods.append(LazyMethod("keops-rs", kt, "CPU", "cpu", kv))
    if keops.gpu_available():
        # CUDA tensors, reduced in place (as pykeops GPU); where torch has no CUDA,
        # host tensors, whose times then include the transfers.
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        methods.append(LazyMethod("keops-rs GPU", kt, "GPU", dev, kv))
        methods.extend(PinnedRows(r, kt, dev, kv) for r in gpu_rows)
    else:
        why = "no CUDA device or driver (keops.gpu_available() is False)"
        missing["keops-rs GPU"] = why
        missing.update((f"keops-rs GPU rows={r}", why) for r in gpu_rows)
    methods.append(NumpyDense())
    methods.append(TorchDense("cpu"))
    no_cuda = "torch.cuda.is_available() is False"
    if cuda:
        methods.append(TorchDense("cuda"))
    else:
        missing["PyTorch GPU"] = no_cuda
    try:
        pk = _quiet_import("pykeops.torch")
        sys.modules["pykeops"].set_verbose(False)
        pv = f"pykeops {sys.modules['pykeops'].__version__}"
        methods.append(LazyMethod("pykeops", pk, "CPU", "cpu", pv))
        if cuda:
            methods.append(LazyMethod("pykeops GPU", pk, "GPU", "cuda", pv))
        else:
            missing["pykeops GPU"] = no_cuda
    except Exception as e:  # ImportError, or an install that cannot start
        why = f"not importable ({type(e).__name__}: {e}); " \
            "`.venv/bin/pip install pykeops==2.3` adds it"
        missing["pykeops"] = missing["pykeops GPU"] = why
    if wanted:
        known = set(ALL_METHODS) | {m.key for m in methods} | {method_key(k) for k in missing}
        unknown = set(wanted) - known
        if unknown:
            raise ValueError(f"unknown method(s) {sorted(unknown)}: choose from {sorted(known)}")
        # Pinned rows are asked for by ``gpu_rows`` itself.
        methods = [m for m in methods if m.key in wanted or isinstance(m, PinnedRows)]
        missing = {k: v for k, v in missing.items()
                   if method_key(k) in wanted or k.startswith("keops-rs GPU rows=")}
    return methods, missing
