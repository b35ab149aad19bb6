"""Clustering helpers for block-sparse reductions on PyTorch tensors, with pykeops' names
(``from keops.torch.cluster import grid_cluster, ...``); see ``keops._cluster``. Results
are tensors on the device of the input they derive from (the work runs on the CPU)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .._cluster import Helpers
from .._cluster import __all__ as __all__  # noqa: F401


def _to_out(a: np.ndarray, like: Any) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t.to(like.device) if isinstance(like, torch.Tensor) else t


# int32 labels, as pykeops' torch grid_cluster.
Helpers(_to_out, np.int32).install(globals())
