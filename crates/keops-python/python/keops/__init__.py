"""keops: kernel operations on CPUs (and GPUs) with a Rust core.

Symbolic matrices ``M[i, j] = F(x_i, y_j, p)`` are reduced over ``i`` or ``j`` tile by
tile, so memory stays linear while the work is quadratic. The API follows pykeops:
``from keops.numpy import Genred`` replaces ``from pykeops.numpy import Genred``.
"""

from ._keops import __version__

__all__ = ["__version__"]
