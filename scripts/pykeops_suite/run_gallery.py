"""Runs pykeops 2.3's gallery (the plot_*.py scripts of its examples and tutorials) on
keops under pykeops' names, each in its own process, and prints one line per script:
ok, failed (with the last line of its error) or skipped (with why).

Usage: run_gallery.py GALLERY_DIR [TIMEOUT_SECONDS]
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict

HERE = Path(__file__).resolve().parent

#: Scripts that need a GPU (run where keops finds one).
GPU: Dict[str, str] = {
    "plot_gpu_select_example.py": "selects GPUs",
    "plot_multi_gpu.py": "runs one thread per CUDA device",
}
#: Scripts that need what keops or this project does not provide, and what.
SKIP: Dict[str, str] = {
    "plot_knn_mnist.py": "downloads MNIST from openml.org",
    "plot_LDDMM_Surface.py": "needs plotly and downloads a mesh",
}

# keops as pykeops through the test suite's conftest (its directory is argv[2]);
# matplotlib draws off screen (MPLBACKEND=Agg in the environment).
RUN = """
import os, runpy, sys
sys.path.insert(0, sys.argv[2])
import conftest
path = sys.argv[1]
sys.argv = [path]
sys.path.insert(0, os.path.dirname(path))
runpy.run_path(path, run_name="__main__")
"""


def main() -> int:
    root = Path(sys.argv[1]).resolve()
    timeout = float(sys.argv[2]) if len(sys.argv) > 2 else 300.0
    failed = 0
    import keops
    skip = dict(SKIP)
    if not keops.gpu_available():
        skip.update({k: f"no GPU here; it {why}" for k, why in GPU.items()})
    for path in sorted(root.rglob("plot_*.py")):
        name = path.relative_to(root)
        if path.name in skip:
            print(f"skipped {name}: {skip[path.name]}")
            continue
        start = time.perf_counter()
        try:
            r = subprocess.run([sys.executable, "-c", RUN, str(path), str(HERE)],
                               cwd=path.parent,
                               capture_output=True, text=True, timeout=timeout,
                               env={**os.environ, "MPLBACKEND": "Agg"})
            ok, why = r.returncode == 0, (r.stderr.strip().splitlines() or ["?"])[-1]
        except subprocess.TimeoutExpired:
            ok, why = False, f"over {timeout:.0f} s"
        took = time.perf_counter() - start
        print(f"{'ok' if ok else 'FAILED'} {name} ({took:.1f} s){'' if ok else ': ' + why}",
              flush=True)
        failed += not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
