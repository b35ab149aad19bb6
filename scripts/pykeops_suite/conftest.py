"""pytest configuration for pykeops 2.3's own test suite run on keops
(scripts/pykeops_suite.sh): every ``import pykeops`` gives keops."""

import sys
import types

import keops

keops.install_as_pykeops()
# test_torch_func.py sets ``keopscore.auto_factorize = False`` (pykeops' code generator,
# which keops has no use for: formulas are factorized only where asked).
sys.modules.setdefault("keopscore", types.ModuleType("keopscore"))
