"""The ``make bench`` suite: keops-rs against dense NumPy / PyTorch and pykeops.

* :mod:`.cases`: what is measured (the problems, their data, how results are compared);
* :mod:`.methods`: how each library computes them (one class per way of computing);
* :mod:`.runner`: the sweep over N, timing, the memory guard and the time budget;
* :mod:`.report`: the console and Markdown tables, ``results.json`` and the plots.

The entry point is ``benchmarks/bench.py``.
"""
