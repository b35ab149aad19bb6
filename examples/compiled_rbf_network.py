"""A radial-basis-function network trained with ``torch.compile``: ``f(x) = sum_j
exp(-|x - c_j|^2 / (2 s^2)) w_j`` with learnable centres ``c``, weights ``w`` and width
``s``, written with LazyTensors in ``forward`` as with pykeops, and compiled whole
(``fullgraph=True``: the reductions and their gradients are operators of the graphs).
The same model is trained eagerly from the same start: the losses agree, and the time
per step of both is printed. The plot shows the fit and the two loss curves.

    .venv/bin/python examples/compiled_rbf_network.py [--tiny | --large] [--out DIR]
"""

from __future__ import annotations

import copy
import shutil
import time
from typing import List, Tuple

import matplotlib.pyplot as plt
import torch

from _common import parse, save
from keops.torch import LazyTensor


def truth(x: torch.Tensor) -> torch.Tensor:
    return (torch.sin(3 * x[:, :1]) * torch.cos(2 * x[:, 1:])).float()


class RBFNetwork(torch.nn.Module):
    """``m`` Gaussian units in 2-D, evaluated for ``n`` points without an ``(n, m)``
    matrix."""

    def __init__(self, m: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.centres = torch.nn.Parameter(4 * torch.rand(m, 2, generator=g) - 2)
        self.weights = torch.nn.Parameter(torch.zeros(m, 1))
        self.log_width = torch.nn.Parameter(torch.tensor([-1.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d2 = LazyTensor(x[:, None, :]).sqdist(LazyTensor(self.centres[None, :, :]))
        return (-d2 / (2 * self.log_width.exp() ** 2)).exp() @ self.weights


def train(model: torch.nn.Module, step_fn: object, x: torch.Tensor, y: torch.Tensor,
          steps: int) -> Tuple[List[float], float]:
    """Adam on the mean squared error; returns the losses and the seconds per step
    after the first (which compiles)."""
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    losses, start = [], 0.0
    for k in range(steps):
        if k == 1:
            start = time.perf_counter()
        opt.zero_grad()
        loss = ((step_fn(x) - y) ** 2).mean()  # type: ignore[operator]
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, (time.perf_counter() - start) / max(steps - 1, 1)


def main() -> None:
    args = parse(__doc__)
    n, m, steps = (400, 40, 30) if args.tiny else (200_000, 1000, 200) if args.large \
        else (20_000, 300, 150)
    g = torch.Generator().manual_seed(0)
    x = 4 * torch.rand(n, 2, generator=g) - 2
    y = truth(x) + 0.05 * torch.randn(n, 1, generator=g)
    eager_model = RBFNetwork(m)
    model = copy.deepcopy(eager_model)
    # Inductor writes C++ for the CPU: without a compiler, AOTAutograd's eager kernels.
    backend = "inductor" if shutil.which("g++") or shutil.which("c++") else "aot_eager"
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    t = time.perf_counter()
    c_losses, c_step = train(model, compiled, x, y, steps)
    c_total = time.perf_counter() - t
    e_losses, e_step = train(eager_model, eager_model, x, y, steps)
    gap = max(abs(a - b) / b for a, b in zip(c_losses, e_losses))
    print(f"RBF network, {n:,} points, {m} units, {steps} Adam steps")
    print(f"compiled ({backend}, fullgraph): {1e3 * c_step:.1f} ms/step "
          f"({c_total:.1f} s in all, compiling included); eager: {1e3 * e_step:.1f} ms/step")
    print(f"loss: {c_losses[0]:.4f} -> {c_losses[-1]:.4f} compiled, "
          f"{e_losses[-1]:.4f} eager; largest relative gap between them: {gap:.1e}")
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 4))
    grid = torch.linspace(-2, 2, 120)
    gx = torch.stack(torch.meshgrid(grid, grid, indexing="xy"), -1).reshape(-1, 2)
    with torch.no_grad():
        fit = compiled(gx).reshape(120, 120)
    im = ax0.imshow(fit, extent=(-2, 2, -2, 2), origin="lower", cmap="RdBu_r")
    ax0.plot(*model.centres.detach().T, "k.", ms=2)
    ax0.set(title=f"fit and centres ({m} units)")
    fig.colorbar(im, ax=ax0)
    ax1.semilogy(c_losses, label=f"compiled ({backend})")
    ax1.semilogy(e_losses, "--", label="eager")
    ax1.set(xlabel="Adam step", ylabel="mean squared error", title="training")
    ax1.legend()
    save(fig, args, "compiled_rbf_network")


if __name__ == "__main__":
    main()
