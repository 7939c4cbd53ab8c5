"""Figures (PNG, matplotlib with the Agg backend; imported only when a figure is drawn).

* :func:`plot_fit`: the runs and the fitted law (loss against compute, coloured by N, with
  iso-N curves and the compute-optimal frontier), and N_opt(C) with its interval band; for
  one-variable laws, the data with the fitted curve and the residuals.
* :func:`plot_isoflop`: IsoFLOP curves with their minima, and N_opt(C) with its band.
* :func:`plot_allocation`: N_opt(C) and D_opt(C) over a range of budgets, with bands.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> None:
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    _plt().close(fig)


def plot_fit(result: Any, path: str | os.PathLike) -> None:
    """Draw a :class:`~lawfit.fitting.FitResult` to a PNG file."""
    plt = _plt()
    law = result.law
    data = result.data
    y = data["loss"].to_numpy(float)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    if tuple(law.inputs) == ("N", "D"):
        from .allocation import allocate

        N = data["N"].to_numpy(float)
        D = data["D"].to_numpy(float)
        C = 6.0 * N * D
        ax = axes[0]
        sc = ax.scatter(C, y, c=np.log10(N), cmap="viridis", s=14, label="runs")
        fig.colorbar(sc, ax=ax, label="log10 N [parameters]")
        cgrid = np.geomspace(C.min() / 3, C.max() * 3, 200)
        cmap = plt.get_cmap("viridis")
        lo, hi = np.log10(N.min()), np.log10(N.max())
        for ln in np.linspace(lo, hi, 6):
            n = 10 ** ln
            ax.plot(cgrid, law(N=n, D=cgrid / (6 * n)), color=cmap((ln - lo) / max(hi - lo, 1e-9)), lw=1, alpha=0.8)
        allocs = allocate(cgrid, law=result)
        ax.plot(cgrid, [a.loss for a in allocs], "k--", lw=1.5, label="compute-optimal frontier")
        ax.set_xscale("log")
        ax.set_xlabel("C = 6ND [FLOP]")
        ax.set_ylabel("loss")
        ax.set_title(f"{law.name} fit to {len(y)} runs")
        ax.set_ylim(min(y.min(), min(a.loss for a in allocs)) * 0.97, np.percentile(y, 99) * 1.05)
        ax.legend(loc="upper right", fontsize=8)
        ax = axes[1]
        cwide = np.geomspace(C.min() / 10, max(C.max() * 1e4, 1e25), 100)
        allocs = allocate(cwide, law=result)
        nopt = np.array([a.N for a in allocs])
        ax.plot(cwide, nopt, "C0", label="N_opt(C)")
        if allocs[0].ci.get("N"):
            band = np.array([a.ci["N"] for a in allocs])
            ax.fill_between(cwide, band[:, 0], band[:, 1], color="C0", alpha=0.25,
                            label=f"{int(round(result.ci_level * 100))}% interval (bootstrap)")
        ax.scatter(C, N, s=6, color="gray", alpha=0.5, label="runs")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("C [FLOP]")
        ax.set_ylabel("N [parameters]")
        ax.set_title("compute-optimal model size")
        ax.legend(fontsize=8)
    else:
        v = law.inputs[0]
        xv = data[v].to_numpy(float)
        ax = axes[0]
        ax.scatter(xv, y, s=14, label="runs")
        xg = np.geomspace(xv.min() / 2, xv.max() * 2, 200)
        ax.plot(xg, law(**{v: xg}), "k-", lw=1.5, label="fit")
        if result.bootstrap_samples:
            lo_, hi_ = result.predict_interval(**{v: xg})
            ax.fill_between(xg, lo_, hi_, color="gray", alpha=0.3, label="interval (bootstrap)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(v)
        ax.set_ylabel("loss")
        ax.set_title(f"{law.name}: {law.formula}")
        ax.legend(fontsize=8)
        ax = axes[1]
        ax.scatter(xv, result.residuals, s=10)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel(v)
        ax.set_ylabel("log(predicted) - log(observed)")
        ax.set_title("residuals")
    _save(fig, path)


def plot_isoflop(result: Any, path: str | os.PathLike) -> None:
    """Draw an :class:`~lawfit.isoflop.IsoFLOPResult` to a PNG file."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    data = result.data
    ax = axes[0]
    cmap = plt.get_cmap("plasma")
    b = result.budgets
    lcs = np.log10(b["C"].to_numpy(float))
    span = max(lcs.max() - lcs.min(), 1e-9)
    for _, r in b.iterrows():
        col = cmap(0.85 * (np.log10(r.C) - lcs.min()) / span)
        grp = data[data["budget"] == r.group]
        x = np.log(grp["N"].to_numpy(float))
        Lr = grp["loss"].to_numpy(float)
        ax.scatter(np.exp(x), Lr, s=12, color=col)
        if len(x) >= 3:
            c = np.polyfit(x - x.mean(), Lr, 2)
            xs = np.linspace(x.min(), x.max(), 100)
            ax.plot(np.exp(xs), np.polyval(c, xs - x.mean()), color=col, lw=1, label=f"C={r.C:.2e}")
        ax.plot(r.N_opt, r.loss_opt, "k*", ms=9)
    ax.set_xscale("log")
    ax.set_xlabel("N [parameters]")
    ax.set_ylabel("loss")
    ax.set_title("IsoFLOP curves (stars: minima)")
    ax.legend(fontsize=7, ncol=2)
    ax = axes[1]
    C = b["C"].to_numpy(float)
    cg = np.geomspace(C.min() / 3, C.max() * 100, 100)
    ax.scatter(C, b["N_opt"], color="C0", zorder=3, label="N_opt per budget")
    ax.plot(cg, result.n_opt(cg), "C0-", label=f"N_opt = {result.n_opt.coef:.3g} C^{result.n_opt.exponent:.3f}")
    ax.scatter(C, b["D_opt"], color="C1", zorder=3, label="D_opt per budget")
    ax.plot(cg, result.d_opt(cg), "C1-", label=f"D_opt = {result.d_opt.coef:.3g} C^{result.d_opt.exponent:.3f}")
    if result.n_opt.samples:
        for pf, col in ((result.n_opt, "C0"), (result.d_opt, "C1")):
            lo, hi = pf.interval(cg)
            ax.fill_between(cg, lo, hi, color=col, alpha=0.2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("C [FLOP]")
    ax.set_ylabel("N [parameters] / D [tokens]")
    ax.set_title("compute-optimal N and D")
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_allocation(compute: Any, law: Any, path: str | os.PathLike, **kwargs: Any) -> None:
    """N_opt(C) and D_opt(C) from ``lawfit.allocate`` over a range around ``compute``."""
    from .allocation import allocate

    plt = _plt()
    C = np.atleast_1d(np.asarray(compute, float))
    cg = np.geomspace(C.min() / 100, C.max() * 100, 120)
    allocs = allocate(cg, law=law, **kwargs)
    fig, ax = plt.subplots(figsize=(7, 4.8))
    for key, col, unit in (("N", "C0", "parameters"), ("D", "C1", "tokens")):
        v = np.array([getattr(a, key) for a in allocs])
        ax.plot(cg, v, color=col, label=f"{key}_opt [{unit}]")
        if allocs[0].ci.get(key):
            band = np.array([a.ci[key] for a in allocs])
            ax.fill_between(cg, band[:, 0], band[:, 1], color=col, alpha=0.25)
    for c in C:
        ax.axvline(c, color="gray", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("C [FLOP]")
    ax.set_title(f"compute-optimal allocation ({allocs[0].law})")
    ax.legend(fontsize=8)
    _save(fig, path)
