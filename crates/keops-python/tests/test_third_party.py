"""Libraries written for pykeops, run on keops through ``keops.install_as_pykeops()``:
GeomLoss (optimal transport, kernel norms; its multiscale mode uses the cluster helpers
and block-sparse ranges), GPyTorch's KeOps kernels (Gaussian processes) and TorchDR's
neighbour embeddings (SNE, t-SNE, LargeVis, UMAP's k-NN graph). Each is checked against
the same library's dense PyTorch path (and where the library's keops path computes
something else, GeomLoss's multiscale mode and TorchDR's TSNEkhorn, against pykeops
2.3's figures). The aliases are removed after this module's tests."""

from __future__ import annotations

import importlib
import sys
from typing import Iterator

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import keops  # noqa: E402
from keops._alias import MODULES  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def as_pykeops() -> Iterator[None]:
    """keops under pykeops' names for this module's tests, removed afterwards."""
    if "pykeops" in sys.modules and sys.modules["pykeops"] is not keops:
        pytest.skip("the real pykeops is imported in this process")
    keops.install_as_pykeops()
    yield
    for name in MODULES:
        sys.modules.pop(name, None)


@pytest.fixture
def lazy_count(monkeypatch: pytest.MonkeyPatch) -> list:
    """Counts the keops LazyTensors and Genreds made, so that a library quietly falling
    back to its dense path fails the test."""
    made = [0]
    for cls in (keops.torch.LazyTensor, keops.torch.Genred):
        def counting(self: object, *args: object, _init=cls.__init__, **kwargs: object) -> None:
            made[0] += 1
            _init(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__init__", counting)
    return made


def test_aliases_are_keops_objects() -> None:
    import pykeops
    import pykeops.config
    from pykeops.numpy import LazyTensor as NumpyLazyTensor
    from pykeops.torch import Genred, LazyTensor
    from pykeops.torch.cluster import grid_cluster

    import keops.numpy
    import keops.torch
    import keops.torch.cluster

    assert pykeops is keops
    assert LazyTensor is keops.torch.LazyTensor and Genred is keops.torch.Genred
    assert NumpyLazyTensor is keops.numpy.LazyTensor
    assert grid_cluster is keops.torch.cluster.grid_cluster
    from pykeops.numpy.operations import KernelSolve as NumpySolve
    from pykeops.numpy.utils import numpytools
    from pykeops.torch.operations import KernelSolve
    from pykeops.torch.utils import torchtools

    import keops.numpy.utils
    import keops.torch.utils
    assert KernelSolve is keops.torch.KernelSolve and NumpySolve is keops.numpy.KernelSolve
    assert numpytools is keops.numpy.utils.numpytools
    assert torchtools is keops.torch.utils.torchtools
    assert isinstance(pykeops.config.gpu_available, bool)
    assert set(MODULES) <= set(sys.modules)
    # pykeops.common's names, and submodules reached as attributes after `import a.b.c`
    # (keops has no such submodules: the aliases are bound to their parents).
    import pykeops.common.utils
    import pykeops.numpy.operations
    from pykeops.common.gpu_utils import get_gpu_number
    from pykeops.common.lazy_tensor import ComplexGenericLazyTensor, GenericLazyTensor
    assert isinstance(LazyTensor(torch.ones(3, 1, 2)), GenericLazyTensor)
    assert not isinstance(LazyTensor(torch.ones(3, 1, 2)), ComplexGenericLazyTensor)
    assert isinstance(pykeops.common.utils.get_tools("torch"), torchtools)
    assert pykeops.numpy.operations.KernelSolve is NumpySolve
    assert (get_gpu_number() > 0) == pykeops.config.gpu_available
    # Low-level imports found in code written for pykeops.
    from pykeops.numpy.generic.generic_red import Genred as NumpyGenred
    from pykeops.torch.generic.generic_ops import generic_sum
    from pykeops.torch.generic.generic_red import Genred as TorchGenred
    assert NumpyGenred is keops.numpy.Genred and TorchGenred is Genred
    assert generic_sum is keops.torch.generic_sum


def test_refused_after_the_real_pykeops(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = type(sys)("pykeops")
    monkeypatch.setitem(sys.modules, "pykeops", fake)
    with pytest.raises(RuntimeError, match="already imported"):
        keops.install_as_pykeops()


def _loss_and_grad(loss: object, x: "torch.Tensor", y: "torch.Tensor") -> tuple:
    v = loss(x, y)  # type: ignore[operator]
    (g,) = torch.autograd.grad(v, [x])
    return v.item(), g


#: GeomLoss's multiscale mode under pykeops 2.3 on the data of ``test_geomloss``: the
#: loss, the norm of its gradient and the gradient's first entry. It prunes blocks
#: (ranges from the cluster helpers) and anneals from a coarse scale, so its figures are
#: its own, not the dense ones.
PYKEOPS_MULTISCALE = {
    ("sinkhorn", 2): (0.491484121068, 0.0554165145081, -0.00173976944994),
    ("sinkhorn", 1): (0.65440684293, 0.0377254067237, -0.00102836969945),
    ("gaussian", 2): (0.00295171487274, 0.000583733392071, -3.96255580882e-06),
    ("laplacian", 2): (0.00298126082152, 0.000329985397874, -3.32021987682e-06),
    ("energy", 2): (0.142522686605, 0.0191587355143, -0.000815726010638),
}


@pytest.mark.parametrize("name,p", list(PYKEOPS_MULTISCALE))
def test_geomloss(name: str, p: int, lazy_count: list) -> None:
    geomloss = pytest.importorskip("geomloss")
    backends = importlib.import_module("geomloss._backends.keops")
    assert backends.keops_available and backends.torch_LazyTensor is keops.torch.LazyTensor
    rng = np.random.default_rng(0)
    x0 = torch.from_numpy(rng.standard_normal((300, 3)))
    y = torch.from_numpy(rng.standard_normal((400, 3))) + 0.5
    got = {be: _loss_and_grad(geomloss.SamplesLoss(name, p=p, blur=0.1, backend=be),
                              x0.clone().requires_grad_(), y)
           for be in ("tensorized", "online", "multiscale")}
    assert lazy_count[0] > 0
    (v0, g0), (v1, g1), (v2, g2) = got["tensorized"], got["online"], got["multiscale"]
    # "online" is the tensorized computation reduced by keops; GeomLoss's dense distance
    # is sqrt(max(d2, 1e-8)), hence 1e-4 (the diagonals of the kernels) for |x - y|.
    exact = name in ("sinkhorn", "gaussian") and p == 2
    assert v1 == pytest.approx(v0, rel=1e-8 if exact else 2e-4)
    assert float((g1 - g0).abs().max()) <= (1e-6 if exact else 1e-3) * float(g0.abs().max())
    want = PYKEOPS_MULTISCALE[(name, p)]
    assert (v2, float(g2.norm()), float(g2[0, 0])) == pytest.approx(want, rel=1e-8)


@pytest.mark.parametrize("kernel", ["RBFKernel", "MaternKernel", "PeriodicKernel"])
def test_gpytorch_keops_kernels(kernel: str, lazy_count: list) -> None:
    gpytorch = pytest.importorskip("gpytorch")
    gen = torch.Generator().manual_seed(0)
    X = torch.rand(300, 2, dtype=torch.float64, generator=gen)
    Y = torch.sin(6 * X[:, 0]) + torch.cos(4 * X[:, 1]) \
        + 0.1 * torch.randn(300, dtype=torch.float64, generator=gen)

    class GP(gpytorch.models.ExactGP):  # type: ignore[misc]
        def __init__(self, k: object, lik: object) -> None:
            super().__init__(X, Y, lik)
            self.mean = gpytorch.means.ConstantMean()
            self.cov = gpytorch.kernels.ScaleKernel(k)

        def forward(self, x: torch.Tensor) -> object:
            return gpytorch.distributions.MultivariateNormal(self.mean(x), self.cov(x))

    def fit(cls: type) -> tuple:
        torch.manual_seed(1)  # GPyTorch's stochastic log-determinant probes
        lik = gpytorch.likelihoods.GaussianLikelihood().double()
        model = GP(cls(ard_num_dims=2), lik).double()
        mll = gpytorch.mlls.ExactMarginalLogLikelihood(lik, model)
        # Above max_cholesky_size the KeOps kernels reduce with keops (CG and Lanczos).
        with gpytorch.settings.max_cholesky_size(100):
            loss = -mll(model(X), Y)
            loss.backward()
            grads = torch.cat([q.grad.flatten() for q in model.parameters()])
            model.eval()
            lik.eval()
            with torch.no_grad():
                pred = lik(model(X[:20] + 0.01)).mean
        return loss.item(), grads, pred

    l0, g0, p0 = fit(getattr(gpytorch.kernels, kernel))
    assert lazy_count[0] == 0
    l1, g1, p1 = fit(getattr(gpytorch.kernels.keops, kernel))
    assert lazy_count[0] > 0
    assert l1 == pytest.approx(l0, rel=1e-6)
    assert float((g1 - g0).abs().max()) <= 1e-5 * (1 + float(g0.abs().max()))
    # Predictions go through CG, stopped at GPyTorch's tolerance.
    assert float((p1 - p0).abs().max()) <= 1e-2


#: TorchDR's TSNEkhorn on the data of ``test_torchdr_embeddings`` under pykeops 2.3: the
#: sum of the embedding's absolute values and two entries. Its keops path stops its
#: Sinkhorn loops differently from its dense one (1e-3 apart, with pykeops too).
PYKEOPS_TSNEKHORN = (0.08398230430154988, -0.00035150521976271833, -1.9576864526116064e-06)


@pytest.mark.parametrize("method", ["SNE", "TSNE", "InfoTSNE", "LargeVis", "TSNEkhorn"])
def test_torchdr_embeddings(method: str, lazy_count: list) -> None:
    torchdr = pytest.importorskip("torchdr")
    X = torch.randn(300, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def embed(backend: object) -> torch.Tensor:
        torch.manual_seed(0)  # the initial embedding, the negative samples
        model = getattr(torchdr, method)(n_components=2, backend=backend, max_iter=20,
                                         random_state=0, device="cpu", verbose=False)
        return model.fit_transform(X).detach()

    dense = embed(None)
    assert lazy_count[0] == 0
    lazy = embed("keops")
    assert lazy_count[0] > 0
    if method == "TSNEkhorn":
        got = (float(lazy.abs().sum()), float(lazy[0, 0]), float(lazy[1, 1]))
        assert got == pytest.approx(PYKEOPS_TSNEKHORN, rel=1e-8)
        return
    # Only rounding differs; optimising amplifies it (1e-11 here, as pykeops 2.3's).
    assert float((lazy - dense).abs().max()) <= 1e-8 * float(dense.abs().max())


def test_torchdr_neighbour_graph(lazy_count: list) -> None:
    """UMAP's input: the k-NN graph (Kmin_argKmin of a LazyTensor, the diagonal
    excluded by a symbolic identity) and its affinities. UMAP's optimisation itself is
    not compared: its discrete sampling schedule turns rounding into other samples (with
    pykeops 2.3 as well)."""
    torchdr = pytest.importorskip("torchdr")
    X = torch.randn(300, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    graph = {be: torchdr.UMAPAffinity(n_neighbors=15, backend=be, verbose=False)(X)
             for be in (None, "keops")}
    assert lazy_count[0] > 0
    (v0, i0), (v1, i1) = graph[None], graph["keops"]
    assert torch.equal(i0, i1)
    assert float((v1 - v0).abs().max()) <= 1e-12
