"""What the gallery examples share: the command line (``--tiny`` for CI, ``--large``
for a bigger run, ``--out`` for the PNG) and saving a figure."""

from __future__ import annotations

import argparse
import os
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: the examples run headless (CI)


def parse(doc: str) -> argparse.Namespace:
    """``--tiny`` (a seconds-long run, as CI does), ``--large``, ``--out DIR``."""
    p = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--tiny", action="store_true", help="a small run (seconds; used by CI)")
    size.add_argument("--large", action="store_true", help="a larger run")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out"),
                   help="folder for the PNG (default: examples/out)")
    return p.parse_args()


def save(fig: Any, args: argparse.Namespace, name: str) -> str:
    """Saves ``fig`` as ``<out>/<name>.png`` and prints where."""
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"{name}.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")
    return path
