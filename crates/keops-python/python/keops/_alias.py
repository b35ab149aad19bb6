"""``keops.install_as_pykeops()``: keops under pykeops' module names, so that libraries
written for pykeops (GeomLoss, GPyTorch's KeOps kernels, ...) run on keops unchanged.

It registers the modules in ``sys.modules`` (as PyMySQL's ``install_as_MySQLdb``):
nothing is copied, ``pykeops.torch.LazyTensor is keops.torch.LazyTensor``. Where
pykeops has a submodule that keops does not (``pykeops.numpy.operations``,
``pykeops.torch.generic.generic_red``, ``pykeops.common.utils``), the keops module
standing for it is also made an attribute of its parent, so that
``import pykeops.common.utils`` then ``pykeops.common.utils.get_tools`` works as it does
with pykeops.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Dict

#: pykeops' module names and the keops modules that stand for them; the torch ones
#: only where torch is installed.
MODULES: Dict[str, str] = {
    "pykeops": "keops",
    "pykeops.common": "keops._common",
    "pykeops.common.gpu_utils": "keops._common",
    "pykeops.common.lazy_tensor": "keops._common",
    "pykeops.common.utils": "keops._common",
    "pykeops.config": "keops.config",
    "pykeops.numpy": "keops.numpy",
    "pykeops.numpy.cluster": "keops.numpy.cluster",
    "pykeops.numpy.generic": "keops.numpy",
    "pykeops.numpy.generic.generic_ops": "keops.numpy",
    "pykeops.numpy.generic.generic_red": "keops.numpy",
    "pykeops.numpy.operations": "keops.numpy",
    "pykeops.numpy.utils": "keops.numpy.utils",
    "pykeops.torch": "keops.torch",
    "pykeops.torch.cluster": "keops.torch.cluster",
    "pykeops.torch.generic": "keops.torch",
    "pykeops.torch.generic.generic_ops": "keops.torch",
    "pykeops.torch.generic.generic_red": "keops.torch",
    "pykeops.torch.operations": "keops.torch",
    "pykeops.torch.utils": "keops.torch.utils",
}


def install_as_pykeops() -> None:
    """Makes ``import pykeops``, ``from pykeops.torch import LazyTensor``,
    ``from pykeops.torch.cluster import grid_cluster``, ``pykeops.config.gpu_available``
    ... give keops' objects, for the rest of the process. Call it before anything
    imports pykeops; an installed pykeops is then never loaded.

    Raises:
        RuntimeError: pykeops itself is already imported (its objects and keops' would
            be mixed).
    """
    import keops

    current = sys.modules.get("pykeops")
    if current is not None and current is not keops:
        raise RuntimeError(
            "keops.install_as_pykeops(): pykeops is already imported (from "
            f"{getattr(current, '__file__', '?')}); call it before anything imports "
            "pykeops")
    torch_found = importlib.util.find_spec("torch") is not None
    for alias, name in MODULES.items():
        if name.startswith("keops.torch") and not torch_found:
            continue
        module = importlib.import_module(name)
        sys.modules[alias] = module
        parent, _, child = alias.rpartition(".")
        # The import system binds a submodule to its parent only when it loads it, and
        # these are found in sys.modules, never loaded under their pykeops names.
        if parent and not hasattr(sys.modules[parent], child):
            setattr(sys.modules[parent], child, module)
