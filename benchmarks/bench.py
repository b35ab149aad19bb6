"""keops-rs against dense NumPy, dense PyTorch and pykeops, in one run (``make bench``).

Cases: a Gaussian kernel sum (D = 3), its gradient (forward + backward), ArgKMin K = 10
at D = 3 and D = 64 (and D = 256, the GPU's chunked kernels, when named: ``--cases
knn256``; the Gaussian product with weights of width 1000, the GPU's kernels by columns:
``--cases gauss1000``), LogSumExp (D = 3), all float32; KernelSolve (D = 3, float64) against dense LU
(NumPy) and Cholesky (PyTorch) solves. N = M grows (1, 2, 5 x 10^k from 10^3)
until a size is expected to take longer than the budget (``--budget``, 60 s), so each
method reaches the largest N it runs in about a minute; dense methods stop at the size
whose N x M matrices would not fit in memory, shown as OOM. keops-rs on the GPU, PyTorch
on the GPU and pykeops (CPU, and GPU) are columns when present (``pip install
pykeops==2.3`` into the venv); every result is checked against keops-rs at the same N.

Writes into ``--out`` (default ``benchmarks/out``): ``bench.png`` (time against N,
log-log, one panel per case), ``bench.md`` (the tables in Markdown) and
``results.json`` (every point; ``--redraw`` remakes the tables and plot from it).

Usage::

    .venv/bin/python benchmarks/bench.py [--quick] [--cases gauss,knn3] [--methods keops-rs,numpy]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from keops_bench import report  # noqa: E402
from keops_bench.cases import find_cases  # noqa: E402
from keops_bench.runner import (ERROR, CaseResult, Point, Progress, Settings,  # noqa: E402
                                run_case)

T = TypeVar("T")


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="", help="comma-separated: gauss,grad,knn3,knn64,lse,solve "
                   "(default: all of these); knn256 (D=256) and gauss1000 (b of width 1000) "
                   "only when named")
    p.add_argument("--methods", default="",
                   help="comma-separated: keops-rs,keops-rs-gpu,numpy,torch,torch-gpu,"
                        "pykeops,pykeops-gpu (default: all present)")
    p.add_argument("--gpu-rows", default="",
                   help="comma-separated, e.g. 1,2,4: keops-rs GPU also with these output rows "
                        "per thread (tuning; the plain column is the planner's choice)")
    p.add_argument("--budget", type=float, default=60.0,
                   help="seconds: no size expected to take longer is run (default 60)")
    p.add_argument("--max-n", type=float, default=float("inf"), help="largest N")
    p.add_argument("--sizes", default="",
                   help="comma-separated N = M to measure, e.g. 1e4,1e5,1e6 (default: 1, 2, "
                        "5 x 10^k from 1,000 on, for as long as the budget allows)")
    p.add_argument("--repeat", type=float, default=1.0,
                   help="seconds: a fast call is repeated for this long and the best time "
                        "kept (default 1)")
    p.add_argument("--quick", action="store_true", help="a 5-second budget (a few minutes)")
    p.add_argument("--tiny", action="store_true",
                   help="N <= 2,000 and short timings: a smoke test (CI)")
    p.add_argument("--mem-limit", type=float, default=0.0,
                   help="GiB a dense CPU method may use (default: 90%% of MemAvailable)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                 "out"), help="output folder")
    p.add_argument("--redraw", metavar="JSON", help="remake tables and plot from a run")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def parse_sizes(text: str) -> Tuple[int, ...]:
    """``"1e4,1e5"`` as ``(10000, 100000)``, growing; a clear error for anything else."""
    try:
        sizes = tuple(int(float(t)) for t in text.split(",") if t.strip())
    except ValueError:
        raise SystemExit(f"--sizes {text!r}: expected comma-separated numbers, e.g. 1e4,1e5")
    if any(n < 1 for n in sizes) or list(sizes) != sorted(set(sizes)):
        raise SystemExit(f"--sizes {text!r}: expected growing positive sizes")
    return sizes


def settings_from(args: argparse.Namespace) -> Settings:
    """Budget, sizes and timing from the command line."""
    s = Settings(budget_s=args.budget, max_n=args.max_n, mem_limit=args.mem_limit * 2**30,
                 seed=args.seed, sizes=parse_sizes(args.sizes), repeat_s=args.repeat)
    if args.quick:
        s.budget_s = min(s.budget_s, 5.0)
    if args.tiny:
        s.budget_s, s.repeat_s, s.max_reps = min(s.budget_s, 5.0), 0.05, 5
        s.max_n = min(2000, args.max_n)
    return s


def write_report(payload: Dict, results: Dict[str, CaseResult],
                 out: str) -> List[Tuple[str, str, Point]]:
    """Prints the tables, writes ``bench.md``, ``bench.png`` and ``results.json``; returns
    the problems found (errors, mismatches) as ``(case, method, point)``."""
    cases = find_cases(payload["cases"])
    names = payload["methods_run"]
    budget = payload["settings"]["budget_s"]
    machine = payload["machine"]
    head = [f"machine: {machine['cpu']}" + (f"; GPU {machine['gpu']}" if "gpu" in machine
                                              else "; no GPU"),
            f"software: {', '.join(payload['versions'].values())}; torch threads "
            f"{machine['torch threads']}; Python {machine['python']}, {machine['os']}"]
    head += [f"absent: {k}: {v}" for k, v in payload["missing"].items()]
    if payload.get("interrupted"):
        head.append("stopped early (interrupted or out of time): cases and sizes not shown "
                    "were not reached")
    problems = []
    md = ["# keops-rs benchmark", ""] + [f"- {h}" for h in head] + [""]
    md += ["## Summary", ""] + report.summary_table(cases, results, names, budget) + [""]
    print("\n".join(head))
    for case in cases:
        res = results.get(case.key)
        if res is None:
            continue
        print(f"\n== {case.title} ==")
        print("\n".join(report.case_table(res, names, budget)))
        md += [f"## {case.title}", ""] + report.case_table(res, names, budget, True) + [""]
        for name, pts in res.points.items():
            for p in pts:
                if p.status == ERROR or p.mismatch:
                    problems.append((case.key, name, p))
    legend = report.legend_lines(budget)
    print("\n" + "\n".join(legend))
    md += legend
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "bench.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    title = f"keops-rs vs dense NumPy / PyTorch and pykeops: {machine['cpu']}" + (
        f", {machine['gpu']}" if "gpu" in machine else "")
    report.plot(cases, results, names, title, budget, os.path.join(out, "bench.png"))
    report.save_json(os.path.join(out, "results.json"), payload)
    for key, name, p in problems:
        print(f"problem: {key} {name} N={p.n}: {p.note}")
    print(f"wrote {out}/bench.png, bench.md, results.json")
    return problems


#: The signals received. Python ignores an exception raised in a destructor, so a
#: signal that lands in one (tqdm's ``__del__`` as a bar is replaced) would be lost:
#: the run also stops at its next progress report or case.
_SIGNALS: List[int] = []


def _interrupt(signum: int, frame: object) -> None:
    _SIGNALS.append(signum)
    raise KeyboardInterrupt(f"signal {signum}")


def _stop_if_signalled() -> None:
    """Raises the interrupt of a signal that arrived where it could not be raised."""
    if _SIGNALS:
        raise KeyboardInterrupt(f"signal {_SIGNALS[0]}")


def _checked(report: Callable[[T], None]) -> Callable[[T], None]:
    """``report``, after :func:`_stop_if_signalled`."""
    def call(value: T) -> None:
        _stop_if_signalled()
        report(value)
    return call


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs (or redraws) the benchmark; exit status 1 when keops-rs failed or disagreed."""
    args = parse_args(argv)
    if args.redraw:
        with open(args.redraw) as f:
            payload = json.load(f)
        write_report(payload, report.load_results(payload), args.out)
        return 0

    from tqdm import tqdm

    from keops_bench.methods import find_methods

    cases = find_cases([c for c in args.cases.split(",") if c])
    rows = [int(r) for r in args.gpu_rows.split(",") if r]
    methods, missing = find_methods([m for m in args.methods.split(",") if m], rows)
    settings = settings_from(args)
    payload = {"machine": report.machine_info(),
               "versions": {m.version.split()[0]: m.version for m in methods},
               "missing": missing, "methods_run": [m.name for m in methods],
               "settings": vars(settings), "cases": [c.key for c in cases], "results": {}}
    results: Dict[str, CaseResult] = {}
    start = time.perf_counter()
    # Stopped by a time limit (SIGTERM, or SIGINT from `timeout -s INT`), the run still
    # reports what it measured, the case it was in included.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        for case in cases:
            _stop_if_signalled()
            sizes = settings.sizes_of(case)
            results[case.key] = CaseResult(case.key)
            with tqdm(total=len(sizes) * len(methods), desc=case.key, file=sys.stderr,
                      disable=args.no_progress, leave=False) as bar:
                run_case(case, methods, settings,
                         Progress(_checked(bar.update), _checked(bar.set_postfix_str)),
                         out=results[case.key])
            if args.no_progress:
                print(f"[bench] {case.key} done ({time.perf_counter() - start:.0f} s)",
                      file=sys.stderr)
    except KeyboardInterrupt:
        print("\ninterrupted: reporting what was measured", file=sys.stderr)
        payload["interrupted"] = True
        results = {k: r for k, r in results.items() if any(r.points.values())}
    payload["results"] = results
    payload["cases"] = list(results)
    payload["total_s"] = time.perf_counter() - start
    problems = write_report(payload, results, args.out)
    print(f"total {payload['total_s']:.0f} s")
    return 1 if any(name.startswith("keops-rs") for _, name, _ in problems) else 0


if __name__ == "__main__":
    sys.exit(main())
