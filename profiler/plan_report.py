"""The Markdown report of a plan, with its figures beside it (each file written atomically)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ._io import atomic_path


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def _frontier_figure(path: Path, law: Any, points: list[tuple[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cs = [q.compute_flop for _, q in points]
    grid = np.logspace(math.log10(min(cs) / 30), math.log10(max(cs) * 30), 40)
    losses = []
    for C in grid:
        try:
            losses.append(law.allocate(float(C), None).loss)
        except Exception:  # noqa: BLE001 - a point the law cannot allocate is left out of the curve
            losses.append(float("nan"))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(grid, [float("nan") if v is None else v for v in losses], "-", color="C0",
            label=f"compute-optimal loss ({law.name}, C = 6ND)")
    for k, (name, q) in enumerate(points):
        if q.loss_opt is not None:
            style = dict(marker="*", ms=14, color="k") if k == 0 else dict(marker="o", ms=6)
            ax.plot([q.compute_flop], [q.loss_opt], linestyle="none", label=name, **style)
    ax.set_xscale("log")
    ax.set_xlabel("training compute C (FLOP)")
    ax.set_ylabel("predicted loss")
    ax.set_title("Loss against compute, plan marked")
    ax.legend(fontsize=8)
    _save(fig, path)


def _mfu_figure(path: Path, mfu_model: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(p["N"], p["mfu"]) for p in mfu_model["points"] if p["N"] is not None]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot([n for n, _ in pts], [m for _, m in pts], "o-", label="measured (interpolated in log N)")
    ax.set_xscale("log")
    ax.set_xlabel("parameters N (total)")
    ax.set_ylabel("MFU (of the datasheet peak)")
    ax.set_title("MFU against model size")
    ax.legend(fontsize=8)
    _save(fig, path)


def write_report(result: Any, path: str) -> list[str]:
    """Write ``path`` (Markdown: the printed plan and its figures); returns every path written."""
    md = Path(path)
    stem = md.stem
    figures, written = [], []
    p, law = result.plan, result.law
    if p is not None and law is not None and p.loss_opt is not None:
        points = [("this plan", p)] + [(f"x{f:g}", q) for f, q in result.neighbours]
        points += [(f"{g:g} GPUs x {d:g} days", q) for (g, d), q in result.table]
        fig = md.with_name(f"{stem}_frontier.png")
        _frontier_figure(fig, law, points)
        figures.append(("Loss against compute (the law's compute-optimal frontier, the plan marked)", fig.name))
        written.append(str(fig))
    mm = result.data.get("mfu_model")
    if mm and not mm.get("constant"):
        fig = md.with_name(f"{stem}_mfu.png")
        _mfu_figure(fig, mm)
        figures.append(("MFU against model size (measured)", fig.name))
        written.append(str(fig))
    text = ["# flopscale plan", "", "```", result.to_text(), "```", ""]
    for caption, name in figures:
        text += [f"## {caption}", "", f"![{caption}]({name})", ""]
    text += ["Units: FLOP, FLOP/s; 1 PF-day = 8.64e19 FLOP; memory in GiB (2**30 bytes). Peaks are dense datasheet "
             "rates; every MFU above says whether it was given, assumed or measured.", ""]
    with atomic_path(md) as tmp:
        tmp.write_text("\n".join(text))
    written.append(str(md))
    return written
