"""The ``make bench`` suite (``benchmarks/bench.py``) at its ``--tiny`` size, and its
pieces: the sweep's budget and memory guard, the check against keops-rs, the report."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, List

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[3] / "benchmarks"

pytest.importorskip("matplotlib", reason="the bench plots need matplotlib (make venv installs it)")
pytest.importorskip("tqdm", reason="the bench needs tqdm (make venv installs it)")
sys.path.insert(0, str(BENCH))

from keops_bench import report  # noqa: E402
from keops_bench.cases import CASES, find_cases  # noqa: E402
from keops_bench.methods import NumpyDense, find_methods, method_key  # noqa: E402
from keops_bench.runner import (BUDGET, OK, OOM, Point, Settings, measure,  # noqa: E402
                                predict, run_case)

PEERS = "keops-rs,numpy,torch"  # pykeops, when installed, compiles for minutes


def bench(tmp_path: Path, *extra: str) -> str:
    out = subprocess.run([sys.executable, str(BENCH / "bench.py"), "--tiny", "--no-progress",
                          "--methods", PEERS, "--out", str(tmp_path), *extra],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_tiny_run_measures_every_case_and_writes_the_report(tmp_path: Path) -> None:
    text = bench(tmp_path)
    for case in find_cases([]):
        assert f"== {case.title} ==" in text
    run = json.loads((tmp_path / "results.json").read_text())
    assert run["methods_run"] == ["keops-rs", "NumPy", "PyTorch"]
    for key, res in run["results"].items():
        tol = next(c.tol for c in CASES if c.key == key)
        for name, pts in res["points"].items():
            assert [p["n"] for p in pts][-2:] == [1000, 2000], (key, name)
            assert all(p["status"] == OK and p["time"] > 0 for p in pts), (key, name, pts)
            if name != "keops-rs":  # checked against keops-rs at each N
                assert all(p["err"] is not None and p["err"] <= tol for p in pts), (key, pts)
    assert (tmp_path / "bench.png").stat().st_size > 20_000
    md = (tmp_path / "bench.md").read_text()
    assert "## Summary" in md and "| N = M | keops-rs | NumPy | PyTorch |" in md
    # the plot and tables can be remade from the JSON
    again = tmp_path / "again"
    out = subprocess.run([sys.executable, str(BENCH / "bench.py"), "--redraw",
                          str(tmp_path / "results.json"), "--out", str(again)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert (again / "bench.png").exists()


def test_out_of_memory_and_budget_are_shown_not_run(tmp_path: Path) -> None:
    # 1 MiB for dense methods: N = 1,000 needs 8 MB; a 1 ms budget stops keops-rs after
    # its first size.
    text = bench(tmp_path, "--cases", "gauss,knn3", "--mem-limit", str(2**-10),
                 "--budget", "0.001")
    run = json.loads((tmp_path / "results.json").read_text())
    gauss = run["results"]["gauss"]["points"]
    assert [p["status"] for p in gauss["NumPy"]] == [OK, OOM]  # N = 100 fits
    assert "needs" in gauss["NumPy"][1]["note"]
    assert gauss["keops-rs"][-1]["status"] == BUDGET
    knn = run["results"]["knn3"]["points"]
    assert knn["PyTorch"][0]["status"] == OOM
    assert "OOM" in text and "> 0.001 s" in text


def test_a_wrong_result_is_flagged() -> None:
    class Wrong(NumpyDense):
        name = "wrong"

        def gauss(self, case: Any, d: Any) -> Any:
            right = super().gauss(case, d)
            return lambda: right() * (1 + 1e-3)

    case = find_cases(["gauss"])[0]
    keops = [m for m in find_methods(["keops-rs"])[0]]
    res = run_case(case, keops + [Wrong()], Settings(max_n=1000, repeat_s=0.01))
    pts = res.points["wrong"]
    assert all(p.status == OK and p.mismatch for p in pts), pts
    assert all(abs(p.err - 1e-3) < 1e-4 for p in pts)
    assert not any(p.mismatch for p in res.points["keops-rs"])


def test_predict_uses_the_steeper_of_nominal_and_observed_growth() -> None:
    pts: List[Point] = [Point(1000, OK, time=0.2), Point(2000, OK, time=1.6)]  # slope 3
    assert predict([], 10, 2.0) == 0.0
    assert predict(pts, 4000, 2.0) == pytest.approx(12.8)
    assert predict(pts[1:], 4000, 2.0) == pytest.approx(6.4)
    fast = [Point(1000, OK, time=0.001), Point(2000, OK, time=0.0011)]  # noise: nominal
    assert predict(fast, 4000, 2.0) == pytest.approx(0.0044)


def test_measure_times_slow_calls_once_after_the_first_size() -> None:
    calls: List[int] = []
    run = lambda: calls.append(1) or np.zeros(1)  # noqa: E731
    t, reps, _ = measure(run, lambda: None, Settings(repeat_s=0.0, max_reps=3), first=False)
    assert reps == 1 and len(calls) == 1  # the warm-up call counted
    calls.clear()
    t, reps, _ = measure(run, lambda: None, Settings(repeat_s=1e9, max_reps=3), first=True)
    assert reps == 3 and len(calls) == 4


def test_sizes_and_formats() -> None:
    assert find_cases(["knn3"])[0].sizes[:4] == [1000, 2000, 5000, 10_000]
    # D = 256 (the GPU's chunked kernels) runs only when named.
    assert "knn256" not in [c.key for c in find_cases([])]
    assert find_cases(["knn256"])[0].dim == 256
    assert report.fmt_n(200_000) == "2e5" and report.fmt_n(200_000, True) == "2·10^5"
    assert report.fmt_n(100) == "100" and report.fmt_n(3_000) == "3e3"
    assert report.cell_text(Point(10, OK, time=2.0), Point(10, OK, time=0.5), 60) == \
        "2 s (4.00x)"
    assert report.cell_text(Point(10, OOM), None, 60) == "OOM"
    with pytest.raises(ValueError, match="unknown case"):
        find_cases(["nope"])
    with pytest.raises(ValueError, match="unknown method"):
        find_methods(["nope"])


def test_sizes_option_replaces_each_cases_sizes(tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCH))
    from bench import parse_sizes

    assert parse_sizes("1e3, 3e3") == (1000, 3000) and parse_sizes("") == ()
    for bad in ("1e3,x", "2e3,1e3", "0"):
        with pytest.raises(SystemExit, match="--sizes"):
            parse_sizes(bad)
    s = Settings(sizes=(500, 1500, 5000), max_n=2000)
    assert s.sizes_of(find_cases(["gauss"])[0]) == [500, 1500]
    bench(tmp_path, "--cases", "lse", "--sizes", "300,700")
    run = json.loads((tmp_path / "results.json").read_text())
    for pts in run["results"]["lse"]["points"].values():
        assert [p["n"] for p in pts] == [300, 700]


def test_cases_run_in_the_order_named() -> None:
    assert [c.key for c in find_cases(["lse", "gauss", "lse"])] == ["lse", "gauss"]
    assert [c.key for c in find_cases([])][:2] == ["gauss", "grad"]


def test_a_method_this_machine_lacks_is_reported_absent_not_an_error() -> None:
    # The GPU check names pykeops GPU; where pykeops or CUDA is missing, the others run.
    wanted = ["keops-rs", "keops-rs-gpu", "torch-gpu", "pykeops-gpu"]
    methods, missing = find_methods(wanted, gpu_rows=[2])
    keys = [m.key for m in methods] + [method_key(k) for k in missing]
    assert set(keys) == set(wanted) | {"keops-rs-gpu-rows=2"}, (keys, missing)
    assert methods[0].name == "keops-rs"
    assert all(why for why in missing.values())


def test_a_stopped_run_reports_what_it_measured(tmp_path: Path) -> None:
    # Stopped (SIGTERM, as by a time limit) while the second case runs: the first case's
    # table and the second's points so far are written, and the report says it stopped.
    # --repeat 5 keeps the second case busy for seconds at N = 20,000.
    proc = subprocess.Popen([sys.executable, str(BENCH / "bench.py"), "--no-progress",
                             "--methods", "keops-rs", "--cases", "gauss,lse", "--sizes",
                             "100,20000", "--repeat", "5", "--out", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("[bench] gauss done"):
            break
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    assert "interrupted" in err and "stopped early" in out
    run = json.loads((tmp_path / "results.json").read_text())
    assert run["interrupted"] is True
    assert [p["n"] for p in run["results"]["gauss"]["points"]["keops-rs"]] == [100, 20000]
    assert set(run["results"]) <= {"gauss", "lse"}


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_signal_swallowed_by_a_destructor_still_stops_the_run(monkeypatch) -> None:
    """Python ignores an exception raised in ``__del__``: a SIGTERM whose handler ran in
    one (tqdm's, as a bar is replaced; this made the test above flaky) is still acted on
    at the next progress report."""
    import importlib

    bench_module = importlib.import_module("bench")
    monkeypatch.setattr(bench_module, "_SIGNALS", [])

    class Dies:
        def __del__(self) -> None:
            bench_module._interrupt(signal.SIGTERM, None)

    Dies()  # the KeyboardInterrupt is printed as ignored
    reported: List[int] = []
    with pytest.raises(KeyboardInterrupt, match="signal"):
        bench_module._checked(reported.append)(1)
    assert reported == []
