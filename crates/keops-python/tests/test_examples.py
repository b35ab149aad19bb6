"""The gallery (``examples/*.py``) at its ``--tiny`` size: each runs, prints a result
within its stated bound, and saves its PNG."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"

pytest.importorskip("matplotlib", reason="the gallery needs matplotlib (make venv installs it)")
pytest.importorskip("sklearn", reason="the gallery needs scikit-learn (make venv installs it)")
pytest.importorskip("tqdm", reason="the gallery needs tqdm (make venv installs it)")


def run(name: str, tmp_path: Path) -> str:
    out = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py"), "--tiny",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    png = tmp_path / f"{name}.png"
    assert png.exists() and png.stat().st_size > 10_000, f"{png} missing or empty"
    return out.stdout


def number(pattern: str, text: str) -> float:
    m = re.search(pattern, text)
    assert m, f"{pattern!r} not in {text!r}"
    return float(m.group(1))


def test_kde(tmp_path: Path) -> None:
    mass = number(r"total mass on the grid: ([\d.]+)", run("kde", tmp_path))
    assert abs(mass - 1) < 0.02


def test_knn_digits(tmp_path: Path) -> None:
    assert number(r"accuracy: ([\d.]+)", run("knn_digits", tmp_path)) > 0.95


def test_kmeans(tmp_path: Path) -> None:
    text = run("kmeans", tmp_path)
    inertia = [float(v) for v in re.search(r"inertia: (.*)", text).group(1).split()]
    assert all(b <= a * (1 + 1e-6) for a, b in zip(inertia, inertia[1:])), inertia
    assert inertia[-1] < inertia[0]


def test_gp_regression(tmp_path: Path) -> None:
    err = number(r"RMS error of the mean on 1000 held-out points: ([\d.]+)",
                 run("gp_regression", tmp_path))
    assert err < 0.12  # noise 0.2, 300 points


def test_sinkhorn(tmp_path: Path) -> None:
    text = run("sinkhorn", tmp_path)
    m = re.search(r"marginal errors \(L1\): ([\d.e+-]+) \(a\), ([\d.e+-]+) \(b\)", text)
    assert m and float(m.group(1)) < 1e-3 and float(m.group(2)) < 1e-3, text


def test_compiled_rbf_network(tmp_path: Path) -> None:
    text = run("compiled_rbf_network", tmp_path)
    assert number(r"largest relative gap between them: ([\d.e+-]+)", text) < 1e-4
    first = number(r"loss: ([\d.]+) ->", text)
    assert number(r"-> ([\d.]+) compiled", text) < 0.1 * first
