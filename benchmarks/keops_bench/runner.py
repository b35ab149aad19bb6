"""The sweep: for each case, N grows until each method leaves the time budget or the
memory; every result is checked against keops-rs at the same N."""

from __future__ import annotations

import gc
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .cases import Case
from .methods import Method

OK, OOM, BUDGET, ERROR = "ok", "oom", "budget", "error"


@dataclass
class Point:
    """One method at one N: a time, or why there is none."""

    n: int
    status: str  # OK | OOM | BUDGET | ERROR
    time: Optional[float] = None  # seconds, best of ``reps`` calls
    reps: int = 0
    err: Optional[float] = None  # max |r - ref| / max |ref| against keops-rs
    note: str = ""

    @property
    def mismatch(self) -> bool:
        """Whether the result disagreed with keops-rs (``note`` says by how much)."""
        return self.note.startswith("mismatch")


@dataclass
class Settings:
    """How far and how carefully to measure."""

    budget_s: float = 60.0  # a method stops before a size predicted to take longer
    max_n: float = math.inf
    mem_limit: float = 0.0  # bytes a dense CPU method may use (0: from /proc/meminfo)
    repeat_s: float = 1.0  # fast calls are repeated for this long; the best is kept
    max_reps: int = 50
    seed: int = 0
    sizes: Tuple[int, ...] = ()  # the N to try, in place of each case's own (if any)

    def __post_init__(self) -> None:
        if self.mem_limit <= 0:
            self.mem_limit = 0.9 * available_memory()

    def sizes_of(self, case: Case) -> List[int]:
        """The N at which ``case`` is measured: ``sizes`` or the case's, up to ``max_n``."""
        return [n for n in (self.sizes or case.sizes) if n <= self.max_n]


def available_memory() -> float:
    """Bytes the system can give without swapping (MemAvailable), or the RAM size."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, MemoryError) or (
        isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


def measure(run: Callable[[], Any], sync: Callable[[], None], settings: Settings,
            first: bool) -> Tuple[float, int, Any]:
    """A warm-up call (compilation, allocations), then the best of calls repeated for
    ``repeat_s``. A call slower than ``repeat_s`` at a method's second size or later is
    timed once: its warm-up call is the measurement (nothing is left to warm up)."""
    t0 = time.perf_counter()
    result = run()
    sync()
    warm = time.perf_counter() - t0
    if warm >= settings.repeat_s and not first:
        return warm, 1, result
    best, reps, spent = math.inf, 0, 0.0
    while reps < settings.max_reps and (reps == 0 or spent < settings.repeat_s):
        t0 = time.perf_counter()
        run()
        sync()
        dt = time.perf_counter() - t0
        best, reps, spent = min(best, dt), reps + 1, spent + dt
    return best, reps, result


def predict(points: Sequence[Point], n: int, exponent: float) -> float:
    """Expected time at ``n`` from the last measured sizes: ``t (n / n_last)^p``, ``p``
    the nominal growth or the observed slope, whichever is steeper (capped at 3.5)."""
    done = [p for p in points if p.status == OK and p.time is not None]
    if not done:
        return 0.0
    last = done[-1]
    p = exponent
    if len(done) > 1 and done[-2].time is not None and done[-2].time > 0.1:
        p = max(p, math.log(last.time / done[-2].time) / math.log(last.n / done[-2].n))
    return last.time * (n / last.n) ** min(p, 3.5)


def _exponent(case: Case, method: Method) -> float:
    return 3.0 if case.kind == "solve" and method.dense else case.exponent


def _memory_left(method: Method, settings: Settings) -> float:
    if method.device == "GPU":
        return 0.9 * torch.cuda.mem_get_info()[0]
    return settings.mem_limit


def _gib(b: float) -> str:
    return f"{b / 2**30:.1f} GiB"


@dataclass
class Progress:
    """What the sweep reports as it goes (a tqdm bar in ``bench.py``)."""

    step: Callable[[int], None] = lambda k: None
    status: Callable[[str], None] = lambda s: None


@dataclass
class CaseResult:
    """The points of every method for one case."""

    case: str
    points: Dict[str, List[Point]] = field(default_factory=dict)


def run_case(case: Case, methods: Sequence[Method], settings: Settings,
             progress: Progress = Progress(), out: Optional[CaseResult] = None) -> CaseResult:
    """Measures ``case`` for each method at growing N (keops-rs first: it is the
    reference of the errors). Points go into ``out`` (a new result when ``None``) as they
    are measured, so that a run stopped midway keeps them."""
    sizes = settings.sizes_of(case)
    if out is None:
        out = CaseResult(case.key)
    for m in methods:
        out.points.setdefault(m.name, [])
    # A method runs on until a size gives it no time (OOM, budget, error).
    running = lambda m: all(p.status == OK for p in out.points[m.name][-1:])  # noqa: E731
    for k, n in enumerate(sizes):
        if not any(running(m) for m in methods):
            break
        data = case.data(n, settings.seed)
        ref: Any = None
        for m in methods:
            if not running(m):
                continue
            pts = out.points[m.name]
            point, result = _run_point(case, m, n, data, pts, settings, progress)
            pts.append(point)
            if point.status == OK:
                if ref is None and m.name.startswith("keops-rs"):
                    ref = result
                elif ref is not None:
                    try:
                        point.err = case.error(result, ref, data)
                        if not point.err <= case.tol:
                            point.note = f"mismatch: error {point.err:.1e} > {case.tol:.0e}"
                    except Exception as e:  # a malformed result is the method's failure
                        point.status, point.note = ERROR, f"cannot compare: {e}"
            del result
            if point.status != OK:
                progress.step(len(sizes) - k)  # this size and the ones it will skip
            else:
                progress.step(1)
            gc.collect()
        del ref, data
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    for m in methods:  # the sizes of methods still running when the list ran out
        if running(m):
            progress.step(len(sizes) - len(out.points[m.name]))
    return out


def _run_point(case: Case, m: Method, n: int, data: Any, pts: List[Point],
               settings: Settings, progress: Progress) -> Tuple[Point, Any]:
    """One method at one size: the point and the result (``None`` when none)."""
    if m.dense:  # memory first: a dense method that cannot fit is OOM, whatever the time
        need, have = m.mem_bytes(case, n), _memory_left(m, settings)
        if need > have:
            # Not attempted: Linux kills a process that overcommits rather than raising.
            return Point(n, OOM, note=f"needs ~{_gib(need)}, {_gib(have)} available"), None
    expected = predict(pts, n, _exponent(case, m))
    if expected > settings.budget_s:
        return Point(n, BUDGET, note=f"~{expected:.0f} s expected"), None
    progress.status(f"{m.name} N={n:,}")
    try:
        t, reps, result = measure(m.thunk(case, data), m.sync, settings, first=not pts)
    except Exception as e:
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        status = OOM if _is_oom(e) else ERROR
        return Point(n, status, note=f"{type(e).__name__}: {msg}"), None
    return Point(n, OK, time=t, reps=reps), result
