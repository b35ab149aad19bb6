"""Dense NumPy and pykeops references for `keops bench` (embedded in the keops binary).

Usage: python bench_ref.py DIR KIND BUDGET G K

DIR holds x.npy, y.npy (float32, (N, D)), b.npy (float32, (N, 1), when the formula uses
it) and keops.npy (the keops-rs result, to check against). KIND is gauss, knn, lse or
generic. Each reference gets about BUDGET seconds: past that, it is timed on the first
rows only and its time is extrapolated to all N rows (marked "est").

Prints lines "RESULT numpy|pykeops SECONDS EXACT|EST CHECK" or "RESULT NAME n/a REASON".
"""
import os
import sys
import time

DIR, KIND = sys.argv[1], sys.argv[2]
BUDGET, G, K = float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])


def emit(*words):
    print("RESULT", *words, flush=True)


try:
    import numpy as np
except Exception as e:  # noqa: BLE001 - any import failure means "not available"
    emit("numpy", "n/a", type(e).__name__)
    emit("pykeops", "n/a", "numpy-missing")
    sys.exit(0)

x = np.load(os.path.join(DIR, "x.npy"))
y = np.load(os.path.join(DIR, "y.npy"))
bpath = os.path.join(DIR, "b.npy")
b = np.load(bpath) if os.path.exists(bpath) else None
ref = np.load(os.path.join(DIR, "keops.npy"))
g32 = np.float32(G)
N, D = x.shape
# Rows of the dense matrix at a time: at most 2000 rows and 2**24 entries, so that memory
# stays bounded (and temporaries stay small enough to be fast).
CHUNK = max(16, min(2000, 2**24 // max(1, y.shape[0])))


def sqdist(a):
    if D > 8:  # the usual BLAS expansion in high dimension
        r = (a * a).sum(1)[:, None] - 2 * (a @ y.T) + (y * y).sum(1)[None, :]
        return np.maximum(r, 0, out=r)
    r = (a[:, 0, None] - y[None, :, 0]) ** 2
    for k in range(1, D):
        r += (a[:, k, None] - y[None, :, k]) ** 2
    return r


def dense(a):
    if KIND == "gauss":
        return np.exp(-sqdist(a) * g32) @ b
    if KIND == "lse":
        s = -sqdist(a) * g32
        m = s.max(1, keepdims=True)
        return m + np.log(np.exp(s - m).sum(1, keepdims=True))
    if KIND == "generic":
        return (np.exp(-np.sqrt(sqdist(a) + np.float32(1))) * np.cos(a @ y.T)) @ b
    if KIND == "knn":
        s = sqdist(a)
        idx = np.argpartition(s, K - 1, axis=1)[:, :K]
        order = np.take_along_axis(s, idx, 1).argsort(1, kind="stable")
        return np.take_along_axis(idx, order, 1)
    raise SystemExit("unknown kind " + KIND)


def check(res, rows):
    """Max error relative to the largest |value| (indices: fraction that differ)."""
    r = ref[:rows]
    res = np.asarray(res).reshape(r.shape)
    if KIND == "knn":
        return "idx-diff=%.2g" % float((res.astype(np.int64) != r).mean())
    scale = max(float(np.abs(r).max()), 1e-30)
    return "err=%.1e" % (float(np.abs(res.astype(np.float64) - r).max()) / scale)


def time_numpy():
    best, out, spent = None, None, 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        parts, rows = [], 0
        for s in range(0, N, CHUNK):
            parts.append(dense(x[s : s + CHUNK]))
            rows = min(N, s + CHUNK)
            if rows < N and time.perf_counter() - t0 > BUDGET:
                break
        t = time.perf_counter() - t0
        spent += t
        if rows < N:
            return t * N / rows, "est", check(np.concatenate(parts), rows)
        if best is None or t < best:
            best, out = t, np.concatenate(parts)
        if spent + best > BUDGET:
            break
    return best, "exact", check(out, N)


t, how, chk = time_numpy()
emit("numpy", "%.6g" % t, how, chk)

try:
    import pykeops

    pykeops.set_verbose(False)
    from pykeops.numpy import Genred
except Exception as e:  # noqa: BLE001
    emit("pykeops", "n/a", type(e).__name__)
    sys.exit(0)

v = ["x = Vi(%d)" % D, "y = Vj(%d)" % D]
g = np.array([G], dtype=np.float32)
if KIND == "gauss":
    spec = ("Exp(-SqDist(x,y)*g)*b", v + ["g = Pm(1)", "b = Vj(1)"], "Sum", None, [y, g, b])
elif KIND == "lse":
    spec = ("-SqDist(x,y)*g", v + ["g = Pm(1)"], "LogSumExp", None, [y, g])
elif KIND == "generic":
    spec = ("Exp(-Sqrt(SqDist(x,y)+1))*Cos(Scalprod(x,y))*b", v + ["b = Vj(1)"], "Sum", None, [y, b])
else:
    spec = ("SqDist(x,y)", v, "ArgKMin", K, [y])
formula, aliases, red, opt, rest = spec
try:
    fn = Genred(formula, aliases, reduction_op=red, axis=1, opt_arg=opt)

    def run(rows):
        t0 = time.perf_counter()
        r = fn(x[:rows], *rest, backend="CPU")
        return time.perf_counter() - t0, r

    run(min(N, 200))  # compiles (cached on disk by pykeops) and warms up
    rows = min(N, 1000)
    t, r = run(rows)
    est_full = t * N / rows
    if rows == N or est_full <= BUDGET:
        best, out, spent = None, None, 0.0
        for _ in range(3):
            t, r = run(N)
            spent += t
            if best is None or t < best:
                best, out = t, r
            if spent + best > BUDGET:
                break
        emit("pykeops", "%.6g" % best, "exact", check(out, N))
    else:
        rows = max(rows, min(N, int(N * BUDGET / est_full)))
        t, r = run(rows)
        emit("pykeops", "%.6g" % (t * N / rows), "est", check(r, rows))
except Exception as e:  # noqa: BLE001
    emit("pykeops", "n/a", type(e).__name__ + ":" + str(e).replace("\n", " ")[:120])
