"""Side-by-side CPU benchmark of the ``keops`` Python package (float32).

Run from the repository root::

    .venv/bin/python benchmarks/python_bench.py [--quick] [--no-pykeops] [--torch-threads N]

``--quick`` runs only the smallest sizes (a smoke test, under a minute); ``--no-pykeops``
leaves pykeops out even when it is installed; ``--torch-threads`` changes the torch
thread count (default 2). Progress goes to stderr, the table to stdout. The default run
takes 2 to 3 minutes on two cores, most of it in pykeops.

Compared in the same process, each only if it imports:

* ``keops-np``: ``keops.numpy`` (``LazyTensor``, and ``Genred`` for the Genred row);
* ``keops-t``: ``keops.torch`` (same syntax on torch tensors, gradients via autograd);
* ``dense``: plain torch, materialising the N x M matrix (``torch.cdist``,
  ``torch.logsumexp``, ``torch.topk``); skipped when one N x M float32 matrix would
  exceed ~2 GB;
* ``pyk-np`` / ``pyk-t``: pykeops 2.3's CPU backend (``pykeops.numpy`` /
  ``pykeops.torch``), when installed (``.venv/bin/pip install pykeops==2.3``; it is
  not a dependency of this project). Its columns are omitted when it is absent. Each
  pykeops formula is compiled by the warm-up call, which is not timed.

Cases (D = 3): Gaussian kernel sum ``a_i = sum_j exp(-|x_i - y_j|^2) b_j`` with
``LazyTensor`` (N = M = 1e3, 1e4, 5e4) and with ``Genred`` (1e4); its gradient with
respect to x through torch autograd, forward + backward timed together (1e4);
LogSumExp over j of ``-|x_i - y_j|^2`` (1e4); k-NN, ``argKmin(K=10)`` of the squared
distance (1e4); and the Python overhead per call at N = M = 100 (median of many calls,
``LazyTensor`` built anew in each call, as user code does).

Timing: one warm-up call (compilation, allocations), then the best of several calls
with ``time.perf_counter`` (fewer for slow calls, at least one). Nothing is asserted:
the table reports times and ratios. Ratios are *other / keops* for the same front end,
so a ratio above 1 means keops is faster: ``dense/kt`` = dense torch / keops-torch,
``pyk-t/kt`` = pykeops-torch / keops-torch, ``pyk-np/knp`` = pykeops-numpy /
keops-numpy.

Correctness: every result is compared with keops-torch's (keops-numpy's where there is
no torch result): ``err`` = max |a - a_ref| / max |a_ref|. For k-NN, indices are not
compared directly (near-ties may order differently): the squared distances at the
returned neighbours are recomputed in float64, sorted per row, and compared that way.

Threads: torch is set to 2 threads (``torch.set_num_threads(2)``). keops uses all the
cores through rayon and pykeops all of them through OpenMP; on a 2-core machine all
three use the same two cores. On small virtual machines torch's OpenMP threads can be
erratic for small matrices (milliseconds of synchronisation per op); compare the dense
column with ``--torch-threads 1`` (or ``OMP_WAIT_POLICY=PASSIVE``) when it looks slow.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

Thunk = Callable[[], Any]
#: A cell's callable, or why there is none: ``None`` (not applicable) or SKIP_MEMORY.
Entry = Union[Thunk, str, None]

SKIP_MEMORY = "skipped (memory)"
DENSE_LIMIT_BYTES = 2e9
K_NN = 10
TORCH_THREADS = 2
FORMULA = "Exp(-SqDist(x,y))*b"
ALIASES = ["x = Vi(3)", "y = Vj(3)", "b = Vj(1)"]

#: Columns, in print order.
KEOPS_NP, KEOPS_T, DENSE, PYK_NP, PYK_T = "keops-np", "keops-t", "dense", "pyk-np", "pyk-t"
COLUMNS = [KEOPS_NP, KEOPS_T, DENSE, PYK_NP, PYK_T]
#: Ratio columns: (label, numerator column, denominator column).
RATIOS = [("dense/kt", DENSE, KEOPS_T), ("pyk-t/kt", PYK_T, KEOPS_T),
          ("pyk-np/knp", PYK_NP, KEOPS_NP)]


# --------------------------------------------------------------------------- front ends
@dataclass
class FrontEnd:
    """A LazyTensor/Genred front end: keops or pykeops, on NumPy or on torch."""

    column: str
    lazy: Any
    genred: Any
    is_torch: bool


def _quiet_import(module: str) -> Any:
    """Imports a module, swallowing what it prints (pykeops' CUDA warning)."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        return __import__(module, fromlist=["LazyTensor", "Genred"])


def load_front_ends(use_pykeops: bool) -> Tuple[Dict[str, FrontEnd], Dict[str, str]]:
    """The importable front ends by column, and the versions of what was found."""
    specs = [(KEOPS_NP, "keops.numpy", False), (KEOPS_T, "keops.torch", True)]
    if use_pykeops:
        specs += [(PYK_NP, "pykeops.numpy", False), (PYK_T, "pykeops.torch", True)]
    found: Dict[str, FrontEnd] = {}
    versions: Dict[str, str] = {}
    for column, module, is_torch in specs:
        try:
            mod = _quiet_import(module)
        except Exception as e:  # ImportError, or a broken install
            print(f"[bench] {module} not available: {type(e).__name__}: {e}", file=sys.stderr)
            continue
        found[column] = FrontEnd(column, mod.LazyTensor, mod.Genred, is_torch)
        root = module.split(".")[0]
        versions[root] = getattr(sys.modules[root], "__version__", "?")
    if "pykeops" in versions:
        sys.modules["pykeops"].set_verbose(False)
    return found, versions


# --------------------------------------------------------------------------- data
@dataclass
class Data:
    """Random inputs of one case, as torch tensors (NumPy views share their memory)."""

    x: torch.Tensor
    y: torch.Tensor
    b: torch.Tensor
    g: torch.Tensor

    @property
    def n(self) -> int:
        return self.x.shape[0]

    @property
    def m(self) -> int:
        return self.y.shape[0]

    def arrays(self, is_torch: bool) -> Tuple[Any, Any, Any]:
        """``(x, y, b)`` as tensors or as NumPy arrays."""
        if is_torch:
            return self.x, self.y, self.b
        return self.x.numpy(), self.y.numpy(), self.b.numpy()


def make_data(n: int, seed: int, dim: int = 3) -> Data:
    """Standard normal points x (n, dim), y (n, dim), weights b and cotangent g (n, 1)."""
    gen = torch.Generator().manual_seed(seed + n)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float32)  # noqa: E731
    return Data(x=r(n, dim), y=r(n, dim), b=r(n, 1), g=r(n, 1))


# --------------------------------------------------------------------------- formulas
def lazy_sqdist(LT: Any, x: Any, y: Any) -> Any:
    """``D_ij = |x_i - y_j|^2`` as a (pykeops or keops) LazyTensor."""
    x_i = LT(x[:, None, :])
    y_j = LT(y[None, :, :])
    return ((x_i - y_j) ** 2).sum(-1)


def lazy_gauss_sum(LT: Any, x: Any, y: Any, b: Any) -> Any:
    """``a_i = sum_j exp(-D_ij) b_j``."""
    b_j = LT(b[None, :, :])
    return ((-lazy_sqdist(LT, x, y)).exp() * b_j).sum(dim=1)


def lazy_lse(LT: Any, x: Any, y: Any) -> Any:
    """``log sum_j exp(-D_ij)``."""
    return (-lazy_sqdist(LT, x, y)).logsumexp(dim=1)


def lazy_knn(LT: Any, x: Any, y: Any) -> Any:
    """Indices of the K nearest y_j of each x_i."""
    return lazy_sqdist(LT, x, y).argKmin(K_NN, dim=1)


def dense_sqdist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.cdist(x, y).square()


def dense_gauss_sum(x: torch.Tensor, y: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.exp(-dense_sqdist(x, y)) @ b


def dense_lse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(-dense_sqdist(x, y), dim=1, keepdim=True)


def dense_knn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.topk(dense_sqdist(x, y), K_NN, dim=1, largest=False).indices


def grad_x(reduce: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
           g: torch.Tensor) -> torch.Tensor:
    """Forward and backward: the vjp ``g^T d reduce(x) / dx`` through torch autograd."""
    x = x.detach().requires_grad_(True)
    (gx,) = torch.autograd.grad(reduce(x), [x], g)
    return gx


# --------------------------------------------------------------------------- cases
@dataclass
class Case:
    """One row of the table: what to run per column, and how to compare results."""

    label: str
    kind: str  # "sum", "genred", "grad", "lse", "knn"
    n: int
    overhead: bool = False


def dense_fits(data: Data) -> bool:
    return data.n * data.m * 4 <= DENSE_LIMIT_BYTES


def lazy_entry(kind: str, fe: FrontEnd, data: Data) -> Entry:
    """The callable of a LazyTensor (or Genred) front end for one case."""
    x, y, b = data.arrays(fe.is_torch)
    LT = fe.lazy
    if kind == "sum":
        return lambda: lazy_gauss_sum(LT, x, y, b)
    if kind == "genred":
        routine = fe.genred(FORMULA, ALIASES, reduction_op="Sum", axis=1)
        return lambda: routine(x, y, b)
    if kind == "grad":
        if not fe.is_torch:
            return None
        return lambda: grad_x(lambda xx: lazy_gauss_sum(LT, xx, y, b), x, data.g)
    if kind == "lse":
        return lambda: lazy_lse(LT, x, y)
    if kind == "knn":
        return lambda: lazy_knn(LT, x, y)
    raise ValueError(kind)


def dense_entry(kind: str, data: Data) -> Entry:
    """The callable of dense torch for one case."""
    if not dense_fits(data):
        return SKIP_MEMORY
    x, y, b = data.x, data.y, data.b
    if kind in ("sum", "genred"):
        return lambda: dense_gauss_sum(x, y, b)
    if kind == "grad":
        return lambda: grad_x(lambda xx: dense_gauss_sum(xx, y, b), x, data.g)
    if kind == "lse":
        return lambda: dense_lse(x, y)
    if kind == "knn":
        return lambda: dense_knn(x, y)
    raise ValueError(kind)


def case_entries(case: Case, data: Data, fes: Dict[str, FrontEnd]) -> Dict[str, Entry]:
    """What each present column runs for this case."""
    entries: Dict[str, Entry] = {}
    for column in COLUMNS:
        if column == DENSE:
            entries[column] = dense_entry(case.kind, data)
        elif column in fes:
            entries[column] = lazy_entry(case.kind, fes[column], data)
    return entries


def default_cases(quick: bool) -> List[Case]:
    sums = [1000] if quick else [1000, 10_000, 50_000]
    mid = 1000 if quick else 10_000
    cases = [Case("gauss sum", "sum", n) for n in sums]
    cases += [Case("gauss Genred", "genred", mid), Case("gauss grad x", "grad", mid),
              Case("logsumexp", "lse", mid), Case(f"argKmin K={K_NN}", "knn", mid),
              Case("overhead/call", "sum", 100, overhead=True),
              Case("overhead Genred", "genred", 100, overhead=True)]
    return cases


# --------------------------------------------------------------------------- timing
@dataclass
class Timing:
    min_reps: int = 3
    max_reps: int = 10
    budget_s: float = 1.0  # stop after min_reps once this much was spent
    cap_s: float = 10.0  # stop after this much, even before min_reps
    overhead_calls: int = 2000
    overhead_warmup: int = 100


def best_time(fn: Thunk, t: Timing) -> Tuple[float, Any]:
    """Warm-up call (its result is returned), then the best of a few timed calls."""
    result = fn()
    times: List[float] = []
    start = time.perf_counter()
    while len(times) < t.max_reps:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        spent = time.perf_counter() - start
        if (len(times) >= t.min_reps and spent >= t.budget_s) or spent >= t.cap_s:
            break
    return min(times), result


def median_call_time(fn: Thunk, t: Timing) -> Tuple[float, Any]:
    """Warm-up calls, then the median time of many individually timed calls."""
    result = fn()
    for _ in range(t.overhead_warmup):
        fn()
    times = []
    for _ in range(t.overhead_calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


# --------------------------------------------------------------------------- checks
def to_numpy(r: Any, dtype: Any = np.float64) -> np.ndarray:
    if isinstance(r, torch.Tensor):
        r = r.detach().cpu().numpy()
    return np.asarray(r).astype(dtype)


def value_error(r: Any, ref: Any) -> float:
    """max |r - ref| / max |ref|."""
    a, b = to_numpy(r), to_numpy(ref)
    if a.shape != b.shape:
        a = a.reshape(b.shape)  # raises on a real shape mismatch
    scale = float(np.max(np.abs(b))) or 1.0
    return float(np.max(np.abs(a - b))) / scale


def knn_distances(idx: Any, data: Data) -> np.ndarray:
    """Squared distances (float64) at the returned neighbours, sorted per row."""
    i = to_numpy(idx, np.int64).reshape(data.n, K_NN)
    x = data.x.numpy().astype(np.float64)
    y = data.y.numpy().astype(np.float64)
    d = ((x[:, None, :] - y[i]) ** 2).sum(-1)
    return np.sort(d, axis=1)


def result_error(kind: str, r: Any, ref: Any, data: Data) -> float:
    if kind == "knn":
        return value_error(knn_distances(r, data), knn_distances(ref, data))
    return value_error(r, ref)


# --------------------------------------------------------------------------- running
@dataclass
class Cell:
    """One column of one row: a time and an error, or a note instead of a time."""

    time: Optional[float] = None
    result: Any = None
    err: Optional[float] = None
    note: str = "-"


@dataclass
class Row:
    case: Case
    cells: Dict[str, Cell] = field(default_factory=dict)
    ref: Optional[str] = None


def run_cell(entry: Entry, overhead: bool, timing: Timing, notes: List[str],
             where: str) -> Cell:
    if entry is None:
        return Cell()
    if isinstance(entry, str):
        return Cell(note=entry)
    try:
        t, result = (median_call_time if overhead else best_time)(entry, timing)
    except Exception as e:  # keep going: the failure is shown in the table and below
        notes.append(f"{where}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        return Cell(note="error")
    return Cell(time=t, result=result)


def check_row(row: Row, data: Data, notes: List[str]) -> None:
    """Fills the errors against keops-torch (keops-numpy where torch has no result)."""
    for ref in (KEOPS_T, KEOPS_NP):
        if ref in row.cells and row.cells[ref].time is not None:
            row.ref = ref
            break
    if row.ref is None:
        return
    ref_result = row.cells[row.ref].result
    for column, cell in row.cells.items():
        if column == row.ref or cell.time is None:
            continue
        try:
            cell.err = result_error(row.case.kind, cell.result, ref_result, data)
        except Exception as e:
            notes.append(f"{row.case.label} N={row.case.n} {column}: cannot compare: "
                         f"{type(e).__name__}: {e}")
            cell.note = "error"
    for cell in row.cells.values():
        cell.result = None  # free memory


def run_case(case: Case, fes: Dict[str, FrontEnd], timing: Timing, seed: int,
             notes: List[str]) -> Row:
    data = make_data(case.n, seed)
    row = Row(case)
    for column, entry in case_entries(case, data, fes).items():
        where = f"{case.label} N={case.n} {column}"
        print(f"[bench] {where} ...", file=sys.stderr, flush=True)
        row.cells[column] = run_cell(entry, case.overhead, timing, notes, where)
        gc.collect()
    check_row(row, data, notes)
    return row


# --------------------------------------------------------------------------- printing
def fmt_time(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    if s < 1.0:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def fmt_size(n: int) -> str:
    e = len(str(n)) - 1
    mantissa = n / 10**e
    if n >= 1000 and mantissa.is_integer():
        return f"{int(mantissa)}e{e}"
    return str(n)


def time_text(cell: Optional[Cell]) -> str:
    if cell is None:
        return "-"
    return fmt_time(cell.time) if cell.time is not None else cell.note


def ratio_text(row: Row, num: str, den: str) -> str:
    a, b = row.cells.get(num), row.cells.get(den)
    if a is None or b is None or a.time is None or b.time is None:
        return "-"
    return f"{a.time / b.time:.2f}x"


def err_text(row: Row, column: str) -> str:
    cell = row.cells.get(column)
    if column == row.ref:
        return "ref"
    if cell is None or cell.err is None:
        return "-"
    return f"{cell.err:.1e}"


def format_table(rows: Sequence[Row], columns: Sequence[str]) -> List[str]:
    ratios = [r for r in RATIOS if r[1] in columns and r[2] in columns]
    err_cols = [c for c in columns if c != KEOPS_T]
    header = (["case", "N=M"] + list(columns) + [r[0] for r in ratios]
              + [f"err {c}" for c in err_cols])
    body = []
    for row in rows:
        body.append([row.case.label, fmt_size(row.case.n)]
                    + [time_text(row.cells.get(c)) for c in columns]
                    + [ratio_text(row, num, den) for _, num, den in ratios]
                    + [err_text(row, c) for c in err_cols])
    widths = [max(len(line[k]) for line in [header] + body) for k in range(len(header))]
    n_left = 2

    def line(cells: Sequence[str]) -> str:
        parts = [c.ljust(w) if k < n_left else c.rjust(w)
                 for k, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(parts).rstrip()

    out = [line(header), line(["-" * w for w in widths])]
    out += [line(b) for b in body]
    return out


def legend(columns: Sequence[str]) -> List[str]:
    lines = [
        "times: best of up to 10 calls after a warm-up call (compilation not counted);",
        "       overhead rows: median us per call over many calls at N=M=100.",
        "ratios: other / keops with the same front end (>1: keops is faster):",
    ]
    lines += [f"        {label} = {num} / {den}" for label, num, den in RATIOS
              if num in columns and den in columns]
    lines += [
        "err: max|a - a_ref| / max|a_ref| against keops-t (keops-np where keops-t has no "
        "result);",
        "     k-NN: on the sorted float64 squared distances at the returned indices.",
        "'-': not applicable (no autograd in the NumPy front ends) or not run.",
    ]
    return lines


def header_lines(versions: Dict[str, str]) -> List[str]:
    libs = ", ".join(f"{k} {v}" for k, v in
                     [("keops", versions.get("keops", "absent")), ("torch", torch.__version__),
                      ("numpy", np.__version__),
                      ("pykeops", versions.get("pykeops", "absent"))])
    return [f"# {libs}",
            f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"torch threads {torch.get_num_threads()}, float32, D=3, python "
            f"{platform.python_version()}"]


# --------------------------------------------------------------------------- main
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="only the smallest sizes")
    p.add_argument("--no-pykeops", action="store_true", help="leave pykeops out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--torch-threads", type=int, default=TORCH_THREADS,
                   help=f"torch.set_num_threads (default {TORCH_THREADS})")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.torch_threads)
    fes, versions = load_front_ends(not args.no_pykeops)
    if not fes:
        print("neither keops.numpy nor keops.torch imports", file=sys.stderr)
        return 1
    timing = Timing(overhead_calls=500) if args.quick else Timing()
    columns = [c for c in COLUMNS if c in fes or c == DENSE]
    notes: List[str] = []
    start = time.perf_counter()
    rows = [run_case(case, fes, timing, args.seed, notes) for case in default_cases(args.quick)]
    elapsed = time.perf_counter() - start
    print("\n".join(header_lines(versions)))
    print("\n".join(format_table(rows, columns)))
    print()
    print("\n".join(legend(columns)))
    for note in notes:
        print(f"problem: {note}")
    print(f"total {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
