"""The CPU engine's threads seen from Python: the importing thread is a member of the
engine's pool (its reductions start on it), other threads use rayon's global pool, and
a forked child (``multiprocessing``'s default start method on Linux, PyTorch's
``DataLoader`` workers) reduces on its own thread instead of waiting for pool threads
that the fork did not copy."""

from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np
import pytest

from keops.numpy import Genred, KernelSolve

GAUSS = "Exp(-SqDist(x, y)) * b"
ALIASES = ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"]


def problem(n: int = 700, m: int = 800):
    """Enough pairs (560,000) for the pool; float64, so one thread and several agree
    exactly (the jobs are the same, only who runs them changes)."""
    r = np.random.default_rng(0)
    return r.random((n, 3)), r.random((m, 3)), r.random((m, 2))


def test_main_thread_and_other_threads_agree_with_one_thread() -> None:
    op = Genred(GAUSS, ALIASES, axis=1)
    x, y, b = problem()
    # Run the reductions in a pool's thread and on the global pool, several times each.
    want = op(x, y, b)
    out: list = []
    t = threading.Thread(target=lambda: out.extend(op(x, y, b) for _ in range(3)))
    t.start()
    mine = [op(x, y, b) for _ in range(3)]
    t.join()
    d2 = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(want, np.exp(-d2) @ b, rtol=1e-12)
    for a in mine + out:
        np.testing.assert_array_equal(a, want)
    assert len(out) == 3


# Python 3.12 warns that forking a process with threads may deadlock: the point here.
# Two iterations do not reach eps: a ConvergenceWarning, expected.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::keops.numpy.ConvergenceWarning")
@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin",
                    reason="needs os.fork (Linux): a forked child's reductions")
def test_a_forked_child_reduces_instead_of_hanging() -> None:
    """The parent's pool threads are not in the child; handing them work would wait
    forever (it did before keops ran a child's reductions on its own thread)."""
    op = Genred(GAUSS, ALIASES, axis=1)
    x, y, b = problem()
    # A preconditioned solve of 9,000 points: the Nystrom preconditioner's loops are
    # parallel too (3 chunks of 4,096 rows).
    ks = KernelSolve("Exp(-SqDist(x, y) * 20) * a", ["x = Vi(3)", "y = Vj(3)", "a = Vj(2)"],
                     "a", axis=1)
    p = np.random.default_rng(1).random((9000, 3))
    q = np.random.default_rng(2).random((9000, 2))

    def solve() -> np.ndarray:
        return ks(p, p, q, alpha=1.0, eps=1e-4, max_iter=2, precond="nystrom",
                  precond_rank=6)

    want = op(x, y, b)  # the pools run (and are made) in the parent first
    other: list = []
    t = threading.Thread(target=lambda: other.extend([op(x, y, b), solve()]))
    start = time.monotonic()
    t.start()
    t.join()
    took = time.monotonic() - start
    solved = other[1]
    pid = os.fork()
    if pid == 0:  # the child: from its main thread and from a new thread
        code = 3
        try:
            got: list = [op(x, y, b)]
            t = threading.Thread(target=lambda: got.extend([op(x, y, b), solve()]))
            t.start()
            t.join()
            same = len(got) == 3 and all(np.array_equal(g, want) for g in got[:2])
            code = 0 if same and np.array_equal(got[2], solved) else 4
        finally:
            os._exit(code)
    # The child does what the parent's thread did once more, on one thread: a hang, not
    # a slow machine (under qemu the parent's part takes 40 s), is what fails.
    deadline = time.monotonic() + 60 + 4 * took
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0, "the child's results differ"
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail(f"the forked child's reduction did not finish within {60 + 4 * took:.0f} s")
