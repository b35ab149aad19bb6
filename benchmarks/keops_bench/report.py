"""The report: console and Markdown tables, ``results.json`` and the log-log plots."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict
from typing import Any, Dict, List, Optional, Sequence

from .cases import Case
from .runner import BUDGET, ERROR, OK, OOM, CaseResult, Point

#: Line styles of the plots, by method (the same in every panel).
STYLES: Dict[str, Dict[str, Any]] = {
    "keops-rs": dict(color="C0", ls="-", lw=2.2, marker="o"),
    "keops-rs GPU": dict(color="C0", ls="--", lw=2.2, marker="o"),
    "NumPy": dict(color="C2", ls="-", lw=1.4, marker="s"),
    "PyTorch": dict(color="C1", ls="-", lw=1.4, marker="^"),
    "PyTorch GPU": dict(color="C1", ls="--", lw=1.4, marker="^"),
    "pykeops": dict(color="C3", ls="-", lw=1.4, marker="D"),
    "pykeops GPU": dict(color="C3", ls="--", lw=1.4, marker="D"),
}


def machine_info() -> Dict[str, str]:
    """The CPU (model, cores, memory), the GPU when there is one, and the OS."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    info = {"cpu": f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB",
            "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(),
            "torch threads": str(torch.get_num_threads())}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# --------------------------------------------------------------------------- tables
def fmt_time(s: float) -> str:
    """Seconds with three significant digits and a unit."""
    if s < 1e-3:
        return f"{s * 1e6:.3g} µs"
    if s < 1.0:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.3g} s"


def fmt_n(n: int, markdown: bool = False) -> str:
    """``100``, ``1e4``, ``2e5`` (``2·10^5`` in Markdown)."""
    e = len(str(n)) - 1
    mant = n // 10**e
    if n < 1000 or mant * 10**e != n:
        return f"{n:,}"
    if markdown:
        return f"10^{e}" if mant == 1 else f"{mant}·10^{e}"
    return f"{mant}e{e}"


def reference_name(method: str, names: Sequence[str]) -> Optional[str]:
    """The keops-rs column a method's ratio divides by: same device, else the CPU one."""
    gpu = "GPU" in method.split()
    for cand in (("keops-rs GPU" if gpu else "keops-rs"), "keops-rs"):
        if cand in names:
            return cand
    return None


def cell_text(p: Optional[Point], ref: Optional[Point], budget_s: float) -> str:
    """``0.70 s (22x)``: the time and the ratio to keops-rs, or why there is no time."""
    if p is None:
        return ""
    if p.status == OOM:
        return "OOM"
    if p.status == BUDGET:
        return f"> {budget_s:g} s"
    if p.status == ERROR:
        return "error"
    text = fmt_time(p.time)
    if ref is not None and ref is not p and ref.status == OK and ref.time:
        r = p.time / ref.time
        text += f" ({r:.2f}x)" if r < 10 else f" ({r:.1f}x)" if r < 100 else f" ({r:.0f}x)"
    return text + (" !" if p.mismatch else "")


def _grid(rows: List[List[str]], markdown: bool, n_left: int = 1) -> List[str]:
    if markdown:
        head, body = rows[0], rows[1:]
        rule = ["---" if k < n_left else "---:" for k in range(len(head))]
        return ["| " + " | ".join(r) + " |" for r in [head, rule] + body]
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    fmt = lambda r: "  ".join(c.ljust(w) if k < n_left else c.rjust(w)  # noqa: E731
                              for k, (c, w) in enumerate(zip(r, widths))).rstrip()
    return [fmt(rows[0]), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows[1:]]


def case_table(result: CaseResult, names: Sequence[str], budget_s: float,
               markdown: bool = False) -> List[str]:
    """One row per N, one column per method."""
    by_n: Dict[int, Dict[str, Point]] = {}
    for name in names:
        for p in result.points.get(name, []):
            by_n.setdefault(p.n, {})[name] = p
    rows = [["N = M"] + list(names)]
    for n in sorted(by_n):
        cells = by_n[n]
        row = [fmt_n(n, markdown)]
        for name in names:
            ref = reference_name(name, names)
            row.append(cell_text(cells.get(name), cells.get(ref) if ref else None, budget_s))
        rows.append(row)
    return _grid(rows, markdown)


def summary_table(cases: Sequence[Case], results: Dict[str, CaseResult],
                  names: Sequence[str], budget_s: float, at: int = 10_000) -> List[str]:
    """Markdown: per case, the row at N = ``at`` and the largest N keops-rs reached (on
    the CPU or the GPU)."""
    rows = [["case", "N = M"] + list(names)]
    for case in cases:
        res = results.get(case.key)
        if res is None:
            continue
        keops = [p.n for name in ("keops-rs", "keops-rs GPU")
                 for p in res.points.get(name, []) if p.status == OK]
        for n in sorted({at, max(keops)} if keops else {at}):
            cells = {name: next((p for p in res.points.get(name, []) if p.n == n), None)
                     for name in names}
            if not any(cells.values()):
                continue
            row = [case.title, fmt_n(n, True)]
            for name in names:
                ref = reference_name(name, names)
                text = cell_text(cells[name], cells.get(ref) if ref else None, budget_s)
                if not text:  # stopped at a smaller N
                    last = res.points.get(name, [])
                    text = ("OOM" if last and last[-1].status == OOM
                            else f"> {budget_s:g} s" if last else "")
                row.append(text)
            rows.append(row)
    return _grid(rows, True, n_left=2)


def legend_lines(budget_s: float) -> List[str]:
    """What the cells mean."""
    return [
        "Cells: best time of repeated calls after a warm-up call (compilation not counted);",
        "  a call over 1 s is timed once. (r x) = its time / keops-rs' time on the same kind",
        "  of device: r > 1 means keops-rs is faster.",
        "  OOM: the dense N x M matrices would not fit in memory (not attempted: Linux kills",
        "  the process instead of raising) or the library raised out-of-memory.",
        f"  > {budget_s:g} s: expected over the time budget from the smaller sizes; not run.",
        "  !: the result differs from keops-rs' beyond the case's tolerance (see problems).",
    ]


# --------------------------------------------------------------------------- files
def save_json(path: str, payload: Dict[str, Any]) -> None:
    """Writes the run (machine, versions, settings, every point) as JSON."""
    def enc(o: Any) -> Any:
        if isinstance(o, (Point, CaseResult)):
            return asdict(o)
        raise TypeError(type(o))
    with open(path, "w") as f:
        json.dump(payload, f, indent=1, default=enc)


def load_results(payload: Dict[str, Any]) -> Dict[str, CaseResult]:
    """The case results of a payload read back from ``results.json``."""
    return {k: CaseResult(v["case"], {m: [Point(**p) for p in pts]
                                      for m, pts in v["points"].items()})
            for k, v in payload["results"].items()}


def plot(cases: Sequence[Case], results: Dict[str, CaseResult], names: Sequence[str],
         title: str, budget_s: float, path: str) -> None:
    """Time against N, log-log, one panel per case, one line per method; OOM marked
    where a dense method stopped."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    shown = [c for c in cases if c.key in results]
    cols = min(3, len(shown))
    rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.0 * rows), squeeze=False)
    used = set()
    for ax, case in zip(axes.flat, shown):
        res = results[case.key]
        for name in names:
            pts = res.points.get(name, [])
            ok = [p for p in pts if p.status == OK]
            style = STYLES.get(name, dict(marker="."))
            if ok:
                ax.plot([p.n for p in ok], [p.time for p in ok], ms=4, label=name, **style)
                used.add(name)
            for p in pts:
                if p.status == OOM:
                    ax.plot([p.n], [0.93], transform=ax.get_xaxis_transform(), marker="x",
                            ms=9, mew=2, color=style.get("color"), ls="none")
                    ax.annotate("OOM", (p.n, 0.93), xycoords=ax.get_xaxis_transform(),
                                xytext=(0, -14), textcoords="offset points", ha="center",
                                fontsize=7, color=style.get("color"))
                    used.add(name)
        ax.axhline(budget_s, color="0.6", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(case.title, fontsize=10)
        ax.set_xlabel("N = M (points)")
        ax.set_ylabel("time (s)")
        ax.grid(True, which="major", alpha=0.3)
    for ax in axes.flat[len(shown):]:
        ax.set_visible(False)
    handles = [Line2D([], [], ms=4, **STYLES.get(n, {})) for n in names if n in used]
    labels = [n for n in names if n in used]
    handles.append(Line2D([], [], color="0.6", ls=":"))
    labels.append(f"time budget ({budget_s:g} s)")
    handles.append(Line2D([], [], color="k", marker="x", ls="none"))
    labels.append("out of memory")
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 7), frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.07 if rows > 1 else 0.12, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
