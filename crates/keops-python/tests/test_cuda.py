"""``keops.torch`` on CUDA tensors: reduced in place on their GPU (PyTorch's current
stream, no host copies), autograd (``gradcheck`` on the GPU), strided and broadcast
inputs, k-NN indices, a reduction split over GPUs, ``KernelSolve``, errors. Skipped,
with the reason, where PyTorch sees no CUDA device or keops cannot run on it."""

from __future__ import annotations

from typing import Optional

import pytest

torch = pytest.importorskip("torch")
import keops  # noqa: E402
from keops.torch import Genred, KernelSolve, LazyTensor  # noqa: E402

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and keops.gpu_available()),
    reason="no CUDA device usable by both PyTorch and keops "
    f"(torch.cuda.is_available()={torch.cuda.is_available()}, "
    f"keops.gpu_available()={keops.gpu_available()})")

GAUSS = ("Exp(-SqDist(x,y)) * b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"])


def data(n: int = 300, m: int = 500, dtype=torch.float32, device: str = "cuda"):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, generator=g, dtype=dtype)
    y = torch.rand(m, 3, generator=g, dtype=dtype)
    b = torch.randn(m, 2, generator=g, dtype=dtype)
    return x.to(device), y.to(device), b.to(device)


def dense_gauss(x, y, b):
    return torch.exp(-((x[..., :, None, :] - y[..., None, :, :]) ** 2).sum(-1)) @ b


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", ["GPU", "GPU_1D", "GPU_2D"])
def test_sum_in_place(dtype, backend) -> None:
    x, y, b = data(dtype=dtype)
    out = Genred(*GAUSS, axis=1)(x, y, b, backend=backend)
    assert out.device == x.device and out.dtype == dtype
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(out, dense_gauss(x, y, b), rtol=tol, atol=tol)


def test_strided_and_broadcast_inputs() -> None:
    """A strided batch (a slice), a broadcast batch (expand: stride 0), and rows that are
    not contiguous (copied first)."""
    x, y, b = data()
    xb = torch.stack([x, x + 1, x - 1])[::2]          # batch stride 2 * n * 3
    yb = y.expand(2, *y.shape)                         # batch stride 0
    bt = b.t().contiguous().t()                        # rows not contiguous
    out = Genred(*GAUSS, axis=1)(xb, yb, bt, backend="GPU")
    torch.testing.assert_close(out, dense_gauss(xb, yb, b), rtol=1e-4, atol=1e-4)


def test_current_stream_is_used() -> None:
    x, y, b = data(n=2000, m=3000)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        out = Genred(*GAUSS, axis=1)(x, y, b, backend="GPU")
        out2 = out * 2  # queued after the reduction on the same stream
    s.synchronize()
    torch.testing.assert_close(out2, 2 * dense_gauss(x, y, b), rtol=1e-4, atol=1e-3)


def test_autograd_on_the_gpu() -> None:
    x, y, b = [t.requires_grad_() for t in data(n=20, m=30, dtype=torch.float64)]

    def f(x, y, b):
        K = (-LazyTensor(x[:, None, :]).sqdist(LazyTensor(y[None, :, :]))).exp()
        return (K * LazyTensor(b[None, :, :])).sum(dim=1, backend="GPU")

    assert torch.autograd.gradcheck(f, (x, y, b))
    assert torch.autograd.gradgradcheck(f, (x, y, b))
    (gx,) = torch.autograd.grad(f(x, y, b).sum(), [x])
    assert gx.device == x.device


def test_knn_indices_on_the_gpu() -> None:
    x, y, _ = data(n=1000, m=2000)
    D = LazyTensor(x[:, None, :]).sqdist(LazyTensor(y[None, :, :]))
    idx = D.argKmin(10, dim=1, backend="GPU")
    assert idx.device == x.device and idx.dtype == torch.int64
    want = torch.cdist(x.double(), y.double()).topk(10, largest=False).indices
    # Ties aside, the same neighbours (compare the distances they give).
    d = lambda i: ((x.double()[:, None, :] - y.double()[i]) ** 2).sum(-1)  # noqa: E731
    torch.testing.assert_close(d(idx), d(want), rtol=1e-5, atol=1e-6)
    vals = D.Kmin(10, dim=1, backend="GPU")
    torch.testing.assert_close(vals.double(), d(want), rtol=1e-4, atol=1e-5)


def test_logsumexp_and_auto_backend() -> None:
    x, y, b = data()
    F = -LazyTensor(x[:, None, :]).sqdist(LazyTensor(y[None, :, :]))
    want = torch.logsumexp(-torch.cdist(x, y) ** 2, dim=1, keepdim=True)
    torch.testing.assert_close(F.logsumexp(dim=1, backend="GPU"), want, rtol=1e-4, atol=1e-4)
    out = F.logsumexp(dim=1)  # "auto": in place or through host copies; on x's device
    assert out.device == x.device
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4)


def test_split_over_gpus() -> None:
    """Device 0 listed three times runs the split-and-combine path on one GPU."""
    x, y, b = data(n=500, m=5000)
    g = Genred(*GAUSS, axis=1)
    for ids in ([0, 0, 0], "all"):
        out = g(x, y, b, backend="GPU", device_id=ids)
        assert out.device == x.device
        torch.testing.assert_close(out, dense_gauss(x, y, b), rtol=1e-4, atol=1e-4)
        out = g(x.cpu(), y.cpu(), b.cpu(), backend="GPU", device_id=ids)
        assert out.device.type == "cpu"
        torch.testing.assert_close(out, dense_gauss(x, y, b).cpu(), rtol=1e-4, atol=1e-4)


def test_kernel_solve_on_cuda_tensors() -> None:
    x, _, _ = data(n=400, dtype=torch.float64)
    b = torch.randn(400, 1, dtype=torch.float64, device=x.device)
    solve = KernelSolve("Exp(-SqDist(x,y)) * a", ["x = Vi(3)", "y = Vj(3)", "a = Vj(1)"], "a",
                        axis=1)
    a = solve(x, x, b, alpha=1.0, backend="GPU")
    assert a.device == x.device
    K = torch.exp(-torch.cdist(x, x) ** 2)
    torch.testing.assert_close(K @ a + a, b, rtol=1e-5, atol=1e-5)


def test_float32_solve_reports_its_true_residual(capsys: pytest.CaptureFixture) -> None:
    """A float32 solve on the GPU is judged on its true residual (one float64 reduction
    per check): against the dense float64 residual, with the float32 iteration's and the
    float64 check's times printed (on GPUs with slow float64 the check costs many
    iterations)."""
    import time
    import warnings

    n = 10_000
    x = torch.rand(n, 3, generator=torch.Generator().manual_seed(1)).cuda()
    b = torch.randn(n, 1, generator=torch.Generator().manual_seed(2)).cuda()
    aliases = ["x = Vi(3)", "y = Vj(3)", "a = Vj(1)"]
    formula = "Exp(-SqDist(x,y) * 10) * a"
    solve = KernelSolve(formula, aliases, "a", axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # float32 may stop at its precision
        a, info = solve(x, x, b, alpha=0.1, backend="GPU", return_info=True)
    x64, a64 = x.double(), a.double()
    r = b.double() - torch.exp(-torch.cdist(x64, x64) ** 2 * 10) @ a64 - 0.1 * a64
    truth = float(r.pow(2).mean().sqrt())
    assert info.residual == pytest.approx(truth, rel=1e-3), (info, truth)
    assert info.converged == (truth < 1e-6), (info, truth)
    k = Genred(formula, aliases, axis=1)
    times = {}
    for t in (torch.float32, torch.float64):
        args = (x.to(t), x.to(t), a.to(t))
        k(*args, backend="GPU")
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(5):
            k(*args, backend="GPU")
        torch.cuda.synchronize()
        times[t] = (time.perf_counter() - start) / 5
    with capsys.disabled():
        print(f"\nKernelSolve float32, N = {n}: {info}; one float32 product "
              f"{times[torch.float32] * 1e3:.2f} ms, one float64 check "
              f"{times[torch.float64] * 1e3:.2f} ms ({torch.cuda.get_device_name()})")


def test_errors_name_the_device() -> None:
    x, y, b = data()
    with pytest.raises(RuntimeError, match="argument 1 is on cpu but argument 0 is on cuda"):
        Genred(*GAUSS, axis=1)(x, y.cpu(), b, backend="GPU")


def test_the_current_device_is_kept() -> None:
    """A reduction on another GPU, and the health check, leave PyTorch's current device
    as they found it (it follows the driver's current context, which keops binds while
    it works)."""
    x, y, b = data()
    last = torch.cuda.device_count() - 1
    with torch.cuda.device(0):
        keops.check_health()
        assert torch.cuda.current_device() == 0
        xs, ys, bs = (t.to(f"cuda:{last}") for t in (x, y, b))
        out = Genred(*GAUSS, axis=1)(xs, ys, bs, backend="GPU")
        assert out.device == xs.device and torch.cuda.current_device() == 0
    torch.testing.assert_close(out.to(x.device), dense_gauss(x, y, b), rtol=1e-4, atol=1e-4)


def test_cuda_graph_capture_is_refused_clearly() -> None:
    """Captured into a CUDA graph, a reduction would copy host tables that are freed
    before a replay: an error that says so, and the next call outside the graph runs."""
    x, y, b = data()
    g = Genred(*GAUSS, axis=1)
    g(x, y, b, backend="GPU")  # compiled before the capture
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(Exception) as err:
        with torch.cuda.graph(graph):
            g(x, y, b, backend="GPU")
    # torch.cuda.graph ends the capture on the way out; keep looking through what it adds.
    chain = [err.value, err.value.__context__, err.value.__cause__]
    assert any("CUDA graph" in str(e) for e in chain if e is not None), chain
    torch.testing.assert_close(g(x, y, b, backend="GPU"), dense_gauss(x, y, b),
                               rtol=1e-4, atol=1e-4)



def _compiled_loss_matches(backend: str, mode: Optional[str] = None) -> None:
    """``loss`` compiled whole on CUDA tensors: values and gradients as eager's, on
    the tensors' device, over three calls (CUDA graphs record on the later ones)."""
    from keops.torch import _compile
    if not _compile.SUPPORTED:
        pytest.skip("this PyTorch has no torch.library.custom_op / nonstrict_trace")
    x, y, b = data(n=2000, m=3000)
    x.requires_grad_()

    def loss(x, y, b):
        K = (-LazyTensor(x[:, None, :]).sqdist(LazyTensor(y[None, :, :]))).exp()
        return ((K @ b) ** 2).sum()

    want = loss(x, y, b)
    (want_g,) = torch.autograd.grad(want, [x])
    torch._dynamo.reset()
    compiled = torch.compile(loss, backend=backend, fullgraph=True, mode=mode)
    for _ in range(3):
        got = compiled(x, y, b)
        (g,) = torch.autograd.grad(got, [x])
    assert got.device == x.device and g.device == x.device
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(g, want_g, rtol=1e-4, atol=1e-3)


def test_torch_compile_on_cuda_tensors() -> None:
    """The ``keops::`` operators on CUDA tensors, in place, forward and backward."""
    _compiled_loss_matches("aot_eager")


def test_inductor_and_cuda_graphs() -> None:
    """Inductor, with CUDA graphs (``mode="reduce-overhead"``): the operators are
    ``cudagraph_unsafe`` and run outside the graphs. (Compiles Triton kernels: the
    GPU check runs it in a stage of its own, ``compile``.)"""
    _compiled_loss_matches("inductor", "reduce-overhead")
