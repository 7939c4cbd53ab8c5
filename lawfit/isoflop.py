"""IsoFLOP analysis (Hoffmann et al. 2022, Approach 2).

Runs are grouped by compute budget C; within each budget the loss is fitted by a parabola in
log N and its minimum gives the budget's optimal N (and D, with the budget's own FLOP-per-
parameter-token ratio, 6 when D was derived as C/(6N)).  Power laws ``N_opt = k_N C^a`` and
``D_opt = k_D C^b`` are then fitted by least squares in log-log space.  Intervals come from a
bootstrap that resamples runs within each budget.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ._data import load_runs
from ._errors import LawfitError, LawfitWarning

FORMAT = "lawfit.isoflop/1"


@dataclass
class PowerFit:
    """``y = coef * C^exponent`` (C in FLOP) with bootstrap intervals."""

    coef: float
    exponent: float
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    samples: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    ci_level: float = 0.95

    def __call__(self, C: Any) -> Any:
        out = self.coef * np.asarray(C, float) ** self.exponent
        return float(out) if np.ndim(out) == 0 else out

    def interval(self, C: Any) -> tuple[Any, Any]:
        """Percentile band of the prediction at ``C`` over the bootstrap samples."""
        if not self.samples:
            raise LawfitError("no bootstrap samples for this power law")
        Cv = np.asarray(C, float)
        v = self.samples["coef"].reshape((-1,) + (1,) * Cv.ndim) * Cv ** self.samples["exponent"].reshape((-1,) + (1,) * Cv.ndim)
        lo, hi = np.nanpercentile(v, [50 * (1 - self.ci_level), 50 * (1 + self.ci_level)], axis=0)
        return (float(lo) if lo.ndim == 0 else lo, float(hi) if hi.ndim == 0 else hi)

    def to_dict(self) -> dict[str, Any]:
        return {"coef": self.coef, "exponent": self.exponent, "ci": {k: list(v) for k, v in self.ci.items()}}


@dataclass
class IsoFLOPResult:
    """``budgets``: one row per budget used (C, n_runs, N_opt, D_opt, loss_opt,
    tokens_per_param, flop_per_param_token, curvature of the parabola, group = the runs'
    ``budget`` label in ``data``).  ``n_opt``, ``d_opt``: :class:`PowerFit`.
    ``skipped``: budgets left out, with the reason.  ``data``: the runs with their budget."""

    budgets: pd.DataFrame
    n_opt: PowerFit
    d_opt: PowerFit
    skipped: list[tuple[float, str]]
    data: pd.DataFrame
    notes: list[str]
    n_bootstrap: int
    ci_level: float

    def __str__(self) -> str:
        return self.summary()

    def summary(self) -> str:
        pct = int(round(self.ci_level * 100))
        lines = [f"IsoFLOP analysis (Approach 2): {len(self.budgets)} budgets, {len(self.data)} runs"
                 + (f" ({'; '.join(self.notes)})" if self.notes else "")]
        lines.append(f"  {'C [FLOP]':>11} {'runs':>5} {'N_opt [params]':>15} {'D_opt [tokens]':>15} {'D/N':>8} {'loss':>8}")
        for _, r in self.budgets.iterrows():
            lines.append(f"  {r.C:>11.3e} {int(r.n_runs):>5d} {r.N_opt:>15.4e} {r.D_opt:>15.4e} "
                         f"{r.tokens_per_param:>8.2f} {r.loss_opt:>8.4f}")
        for name, pf in (("N_opt", self.n_opt), ("D_opt", self.d_opt)):
            ci = pf.ci.get("exponent")
            cis = f" ({pct}% interval of exponent [{ci[0]:.4f}, {ci[1]:.4f}], bootstrap n={self.n_bootstrap})" if ci else ""
            lines.append(f"  {name} = {pf.coef:.4e} * C^{pf.exponent:.4f}{cis}")
        for c, why in self.skipped:
            lines.append(f"  skipped budget C={c:.3e}: {why}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "budgets": self.budgets.to_dict(orient="records"), "n_opt": self.n_opt.to_dict(),
                "d_opt": self.d_opt.to_dict(), "skipped": [{"C": c, "reason": w} for c, w in self.skipped],
                "n_runs": len(self.data), "notes": self.notes, "n_bootstrap": self.n_bootstrap,
                "ci_level": self.ci_level}


def _group(C: np.ndarray, bins: Any) -> tuple[np.ndarray, str]:
    """Budget labels per run: exact values, or clusters of log10 C split at gaps wider than ``bins`` decades."""
    uniq = np.unique(C)
    if bins == "exact" or (bins == "auto" and len(uniq) <= len(C) / 2):
        return np.searchsorted(uniq, C), "budgets grouped by exact C"
    width = 0.05 if bins == "auto" else float(bins)
    if not width > 0:
        raise LawfitError(f"bins must be 'auto', 'exact' or a positive width in decades, got {bins!r}")
    lc = np.log10(C)
    order = np.argsort(lc)
    gaps = np.diff(lc[order]) > width
    lab_sorted = np.concatenate([[0], np.cumsum(gaps)])
    lab = np.empty(len(C), dtype=int)
    lab[order] = lab_sorted
    return lab, f"budgets binned: log10 C split at gaps > {width:g} decades"


def _wparabola(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted least-squares parabola coefficients [..., 3] (c0 + c1 x + c2 x^2) for weight rows w [..., n]."""
    X = np.stack([np.ones_like(x), x, x * x], axis=1)                 # [n, 3]
    XtWX = np.einsum("...i,ij,ik->...jk", w, X, X)
    XtWy = np.einsum("...i,ij,i->...j", w, X, y)
    with np.errstate(all="ignore"):
        try:
            return np.linalg.solve(XtWX, XtWy[..., None])[..., 0]
        except np.linalg.LinAlgError:
            out = np.full(XtWy.shape, np.nan)
            for idx in np.ndindex(XtWy.shape[:-1]):
                try:
                    out[idx] = np.linalg.solve(XtWX[idx], XtWy[idx])
                except np.linalg.LinAlgError:
                    pass
            return out


def _minimum(coef: np.ndarray, xmin: float, xmax: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    c0, c1, c2 = coef[..., 0], coef[..., 1], coef[..., 2]
    with np.errstate(all="ignore"):
        xs = -c1 / (2 * c2)
        ys = c0 + c1 * xs + c2 * xs * xs
    ok = (c2 > 0) & np.isfinite(xs) & (xs >= xmin) & (xs <= xmax)
    return xs, ys, ok


def _loglog_fit(lc: np.ndarray, ly: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares ly = log k + e lc over the masked budgets, per row."""
    m = mask.astype(float)
    n = m.sum(-1)
    with np.errstate(all="ignore"):
        mx = (m * lc).sum(-1) / n
        my = (m * np.where(mask, ly, 0)).sum(-1) / n
        sxx = (m * (lc - mx[..., None]) ** 2).sum(-1)
        sxy = (m * (lc - mx[..., None]) * (np.where(mask, ly, 0) - my[..., None])).sum(-1)
        e = sxy / sxx
        lk = my - e * mx
    bad = n < 2
    return np.where(bad, np.nan, lk), np.where(bad, np.nan, e)


def isoflop(table: Any, columns: "str | Mapping[str, str] | None" = None, *, bins: Any = "auto",
            min_runs: int = 3, bootstrap: int = 1000, seed: int = 0, ci_level: float = 0.95,
            exclude: Any = None) -> IsoFLOPResult:
    """IsoFLOP (Approach 2) analysis of a table with columns N (parameters), C (FLOP) and loss
    (``D`` tokens optional; C = 6ND or D = C/(6N) are derived when one is missing).

    ``bins``: ``"auto"`` (exact C values when they repeat, else clusters of log10 C split at gaps
    wider than 0.05 decades), ``"exact"``, or a gap width in decades.  Budgets with fewer than
    ``min_runs`` runs, or whose parabola has no minimum inside the sampled N range, are skipped
    with a :class:`LawfitWarning`.  ``exclude`` leaves runs out as in :func:`lawfit.fit`
    (``"highest-loss:K"`` or ``"COLUMN OP NUMBER"``).  ``table`` may name a shipped data set.
    """
    df, notes = load_runs(table, ["N", "C", "D"], columns, min_rows=3, exclude=exclude)
    N = df["N"].to_numpy(float)
    C = df["C"].to_numpy(float)
    D = df["D"].to_numpy(float)
    L = df["loss"].to_numpy(float)
    lab, how = _group(C, bins)
    notes.append(how)
    rng = np.random.default_rng(seed)
    groups = []
    skipped: list[tuple[float, str]] = []
    for g in np.unique(lab):
        idx = np.flatnonzero(lab == g)
        Cb = float(np.exp(np.mean(np.log(C[idx]))))
        if len(idx) < min_runs or len(np.unique(N[idx])) < 3:
            skipped.append((Cb, f"{len(idx)} runs ({len(np.unique(N[idx]))} distinct N), fewer than {max(min_runs, 3)}"))
            continue
        x = np.log(N[idx])
        xc = x.mean()
        coef = _wparabola(x - xc, L[idx], np.ones(len(idx)))
        xs, ys, ok = _minimum(coef, x.min() - xc, x.max() - xc)
        if not ok:
            why = "the loss has no minimum in log N" if not coef[2] > 0 else "the minimum lies outside the sampled N range"
            skipped.append((Cb, why))
            continue
        k = float(np.median(C[idx] / (N[idx] * D[idx])))
        groups.append(dict(g=int(g), idx=idx, x=x, xc=xc, C=Cb, k=k, xs=float(xs), ys=float(ys), c2=float(coef[2])))
    for c, why in skipped:
        warnings.warn(f"isoflop: skipped budget C={c:.3e}: {why}", LawfitWarning, stacklevel=2)
    if len(groups) < 2:
        raise LawfitError(f"isoflop needs at least two budgets with a minimum; found {len(groups)} "
                          f"(of {len(np.unique(lab))} budgets)")
    Cb = np.array([g["C"] for g in groups])
    Nopt = np.exp(np.array([g["xs"] + g["xc"] for g in groups]))
    kb = np.array([g["k"] for g in groups])
    Dopt = Cb / (kb * Nopt)
    budgets = pd.DataFrame({"C": Cb, "n_runs": [len(g["idx"]) for g in groups], "N_opt": Nopt, "D_opt": Dopt,
                            "loss_opt": [g["ys"] for g in groups], "tokens_per_param": Dopt / Nopt,
                            "flop_per_param_token": kb, "curvature": [g["c2"] for g in groups],
                            "group": [g["g"] for g in groups]})
    lcb = np.log(Cb)
    lkN, eN = _loglog_fit(lcb, np.log(Nopt), np.ones(len(Cb), bool))
    lkD, eD = _loglog_fit(lcb, np.log(Dopt), np.ones(len(Cb), bool))
    samples_n: dict[str, np.ndarray] = {}
    samples_d: dict[str, np.ndarray] = {}
    if bootstrap:
        B = int(bootstrap)
        lnb = np.full((B, len(groups)), np.nan)
        for j, g in enumerate(groups):
            n = len(g["idx"])
            W = rng.multinomial(n, np.full(n, 1.0 / n), size=B).astype(float)
            coef = _wparabola(g["x"] - g["xc"], L[g["idx"]], W)
            xs, _, ok = _minimum(coef, g["x"].min() - g["xc"], g["x"].max() - g["xc"])
            lnb[:, j] = np.where(ok, xs + g["xc"], np.nan)
        mask = np.isfinite(lnb)
        bkN, beN = _loglog_fit(lcb[None], lnb, mask)
        bkD, beD = _loglog_fit(lcb[None], np.log(Cb / kb)[None] - lnb, mask)
        samples_n = {"coef": np.exp(bkN), "exponent": beN}
        samples_d = {"coef": np.exp(bkD), "exponent": beD}

    def pf(lk, e, s):
        ci = {}
        for name, v in s.items():
            v = v[np.isfinite(v)]
            if v.size:
                lo, hi = np.percentile(v, [50 * (1 - ci_level), 50 * (1 + ci_level)])
                ci[name] = (float(lo), float(hi))
        return PowerFit(float(np.exp(lk)), float(e), ci, s, ci_level)

    data = df.copy()
    data["budget"] = lab
    return IsoFLOPResult(budgets=budgets, n_opt=pf(lkN, eN, samples_n), d_opt=pf(lkD, eD, samples_d),
                         skipped=skipped, data=data, notes=notes, n_bootstrap=int(bootstrap), ci_level=ci_level)
