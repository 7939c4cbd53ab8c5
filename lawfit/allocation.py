"""Compute-optimal allocation: a budget C (FLOP) -> parameters N, tokens D, predicted loss.

* Chinchilla form with ``C = 6ND`` (the default ``flops_per_token``): closed form
  ``N_opt = G (C/6)^a``, ``D_opt = (C/6)^b / G`` (Hoffmann et al. 2022, Eq. 4 / Appendix).
* Any other law of (N, D), or ``flops_per_token`` given as a callable of N (training FLOP per
  token, e.g. ``lambda N: 6*N + 6*n_layer*n_ctx*d_model``): minimise ``L(N, C / f(N))`` over N
  numerically (a log-spaced scan, then golden-section refinement), vectorised over budgets
  and bootstrap samples.
* ``kaplan2020``: Kaplan's compute-efficient frontier ``N = 1.3e9 * C_min^0.73`` (PF-days).
* ``max_tokens``: when the optimum wants more tokens than there are, the best N with
  ``D = max_tokens`` (the loss along a budget is unimodal in N), and the loss penalty.

When the law comes from a bootstrapped fit, every number has a percentile interval in ``.ci``.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ._errors import LawfitError
from .laws import PF_DAY, Chinchilla, Law
from . import published as _published

FlopsPerToken = Callable[[Any], Any]
_TPP_RANGE = (1e-4, 1e6)   # tokens per parameter searched by the numerical allocator
_GRID = 241
_GOLDEN = 48


@dataclass
class Allocation:
    """A compute-optimal (N, D) for one budget.

    ``compute`` in FLOP, ``N`` parameters (counted as the law's N, see ``n_counts``), ``D``
    tokens, ``loss`` the law's prediction (same unit as the law's loss), ``ci`` maps
    ``"N"``, ``"D"``, ``"loss"``, ``"tokens_per_param"`` (and ``"compute"`` for the inverse) to
    percentile intervals, empty when the law has no bootstrap samples.
    """

    compute: float
    N: float
    D: float
    loss: float
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    law: str = ""
    method: str = ""
    flops_per_token: str = "6N"
    n_counts: str = ""
    ci_level: float | None = None
    max_tokens: float | None = None
    constrained: bool = False
    loss_penalty: float = 0.0
    unconstrained: "Allocation | None" = None

    @property
    def tokens_per_param(self) -> float:
        return self.D / self.N

    def to_dict(self) -> dict[str, Any]:
        out = {"compute_flop": self.compute, "N": self.N, "D": self.D, "tokens_per_param": self.tokens_per_param,
               "loss": self.loss, "ci": {k: list(v) for k, v in self.ci.items()}, "ci_level": self.ci_level,
               "law": self.law, "method": self.method, "flops_per_token": self.flops_per_token,
               "n_counts": self.n_counts, "max_tokens": self.max_tokens, "constrained": self.constrained,
               "loss_penalty": self.loss_penalty}
        if self.unconstrained is not None:
            u = self.unconstrained
            out["unconstrained"] = {"N": u.N, "D": u.D, "loss": u.loss, "tokens_per_param": u.tokens_per_param}
        return out


# ------------------------------------------------------------------------------------------
@dataclass
class _Source:
    law: Law
    label: str
    n_counts: str
    samples: dict[str, np.ndarray] | None
    ci_level: float | None
    kaplan: Any = None


def _resolve(law: Any) -> _Source:
    from .fitting import FitResult, load_fit

    if isinstance(law, str) and law.strip().lower() in _published.FITS:
        pf = _published.get(law)
        return _Source(pf.law, f"{pf.name} (published)", pf.n_counts, None, None,
                       pf if isinstance(pf, _published.KaplanFit) else None)
    if isinstance(law, _published.PublishedFit):
        return _Source(law.law, f"{law.name} (published)", law.n_counts, None, None,
                       law if isinstance(law, _published.KaplanFit) else None)
    if isinstance(law, (str, os.PathLike)) or isinstance(law, Mapping):
        if isinstance(law, (str, os.PathLike)) and not Path(law).exists() and not str(law).lstrip().startswith("{"):
            raise LawfitError(f"unknown law {str(law)!r}: use a published fit ({', '.join(_published.names())}), "
                              "a fit result, or the path to a saved fit")
        law = load_fit(law)
    if isinstance(law, FitResult):
        label = f"fit: {law.law.name} on {law.n_rows} runs" + (f", bootstrap {law.n_bootstrap}" if law.n_bootstrap else "")
        return _Source(law.law, label, "as in the fitted data", law.bootstrap_samples or None,
                       law.ci_level if law.bootstrap_samples else None)
    if isinstance(law, Law):
        if not law.bound:
            raise LawfitError(f"law {law.name} has no parameter values: fit it first or give a published name")
        return _Source(law, f"{law.name} (given)", "as the law's parameters", None, None)
    raise LawfitError(f"cannot allocate with law={law!r}")


def _check_nd(law: Law) -> None:
    if tuple(law.inputs) != ("N", "D"):
        raise LawfitError(f"allocation needs a law of parameters N and tokens D; {law.name} takes {', '.join(law.inputs)}")


def _call_fpt(fpt: FlopsPerToken, N: np.ndarray) -> np.ndarray:
    """``fpt`` on an array of N; falls back to element by element for scalar-only callables."""
    try:
        out = np.asarray(fpt(N), dtype=float)
        if out.shape != N.shape:
            out = np.broadcast_to(out, N.shape).astype(float)
    except Exception:  # noqa: BLE001 - a scalar-only callable
        try:
            out = np.vectorize(lambda v: float(fpt(float(v))), otypes=[float])(N)
        except Exception as exc:  # noqa: BLE001
            raise LawfitError(f"flops_per_token failed: {type(exc).__name__}: {exc}") from None
    return out


def _as_params(src: _Source) -> dict[str, np.ndarray]:
    """Point parameters as [1] arrays, followed by bootstrap samples: [1 + K]."""
    p = {k: np.array([v]) for k, v in src.law.params.items()}  # type: ignore[union-attr]
    if src.samples:
        for k in p:
            p[k] = np.concatenate([p[k], np.asarray(src.samples[k], float)])
    return p


def _closed_form(law: Chinchilla, p: dict[str, np.ndarray], C: np.ndarray):
    d = law.derived(p)
    G, a, b = (np.asarray(d[k], float)[:, None] for k in ("G", "a", "b"))
    c6 = C[None, :] / 6.0
    with np.errstate(all="ignore"):
        N = G * c6 ** a
        D = c6 ** b / G
    return N, D


def _loss(law: Law, p: dict[str, np.ndarray], N: np.ndarray, D: np.ndarray) -> np.ndarray:
    pp = {k: v.reshape((-1,) + (1,) * (N.ndim - 1)) for k, v in p.items()}
    return np.asarray(law.evaluate(pp, N=N, D=D), float)


def _numerical(law: Law, p: dict[str, np.ndarray], C: np.ndarray, fpt: FlopsPerToken):
    """argmin over N of L(N, C/f(N)) for every parameter set (rows, K) and budget (columns, M).

    ``C`` is [M] (same budgets for every parameter set) or [K, M].  A log-spaced scan over
    1e-4..1e6 tokens per parameter (as if f = 6N) brackets the minimum; golden-section
    search refines it.  Returns N, D [K, M] and a mask of minima found at the scan's edge."""
    K = len(next(iter(p.values())))
    C2 = np.atleast_2d(np.asarray(C, float))
    if C2.shape[0] == 1:
        C2 = np.broadcast_to(C2, (K, C2.shape[1]))
    lo = np.log(np.sqrt(C2 / (6.0 * _TPP_RANGE[1])))             # [K, M]
    hi = np.log(np.sqrt(C2 / (6.0 * _TPP_RANGE[0])))
    u = np.linspace(0.0, 1.0, _GRID)
    Ng = np.exp(lo[..., None] + (hi - lo)[..., None] * u)         # [K, M, G]
    pk3 = {k: v.reshape(K, 1, 1) for k, v in p.items()}
    pk2 = {k: v.reshape(K, 1) for k, v in p.items()}
    fg = _call_fpt(fpt, Ng)
    if np.any(~np.isfinite(fg)) or np.any(fg <= 0):
        raise LawfitError("flops_per_token must return positive FLOP per token for every N")
    with np.errstate(all="ignore"):
        Lg = np.asarray(law.evaluate(pk3, N=Ng, D=C2[..., None] / fg), float)
    Lg = np.where(np.isfinite(Lg), Lg, np.inf)
    j = np.argmin(Lg, axis=2)                                      # [K, M]
    step = (hi - lo) / (_GRID - 1)
    a = lo + step * np.maximum(j - 1, 0)
    b = lo + step * np.minimum(j + 1, _GRID - 1)
    gr = (math.sqrt(5) - 1) / 2

    def f(lN):
        N = np.exp(lN)
        with np.errstate(all="ignore"):
            v = np.asarray(law.evaluate(pk2, N=N, D=C2 / _call_fpt(fpt, N)), float)
        return np.where(np.isfinite(v), v, np.inf)

    x1 = b - gr * (b - a)
    x2 = a + gr * (b - a)
    f1, f2 = f(x1), f(x2)
    for _ in range(_GOLDEN):
        left = f1 < f2
        b = np.where(left, x2, b)
        a = np.where(left, a, x1)
        x2n = np.where(left, x1, a + gr * (b - a))
        x1n = np.where(left, b - gr * (b - a), x2)
        x1, x2 = x1n, x2n
        fn = f(np.where(left, x1, x2))
        f1, f2 = np.where(left, fn, f2), np.where(left, f1, fn)
    N = np.exp(0.5 * (a + b))
    D = C2 / _call_fpt(fpt, N)
    at_edge = (j == 0) | (j == _GRID - 1)
    return N, D, at_edge


def _constrained_N(C: np.ndarray, max_tokens: float, fpt: FlopsPerToken | None, shape) -> np.ndarray:
    """N such that f(N) * max_tokens = C (f increasing in N)."""
    if fpt is None:
        return np.broadcast_to(C[None, :] / (6.0 * max_tokens), shape).copy()
    target = np.broadcast_to(C[None, :] / max_tokens, shape)
    lo = np.full(shape, math.log(1.0))
    hi = np.log(np.broadcast_to(C[None, :], shape)).copy()
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        big = _call_fpt(fpt, np.exp(mid)) > target
        hi = np.where(big, mid, hi)
        lo = np.where(big, lo, mid)
        if np.all(hi - lo < 1e-12):
            break
    return np.exp(0.5 * (lo + hi))


def _ci(v: np.ndarray, level: float | None) -> tuple[float, float] | None:
    if level is None or v.shape[0] <= 1:
        return None
    s = v[1:]
    s = s[np.isfinite(s)]
    if s.size == 0:
        return None
    lo, hi = np.percentile(s, [50 * (1 - level), 50 * (1 + level)])
    return (float(lo), float(hi))


def _solve(src: _Source, C: np.ndarray, fpt: FlopsPerToken | None, max_tokens: float | None):
    """N, D, loss arrays [1 + K, M] (row 0: point estimate) plus a method description."""
    law = src.law
    _check_nd(law)
    p = _as_params(src)
    edge = None
    if src.kaplan is not None:
        N = np.asarray(src.kaplan.optimal_params(C), float)[None, :] * np.ones((len(p["alpha_N"]), 1))
        D = C[None, :] / (6.0 * N) if fpt is None else C[None, :] / _call_fpt(fpt, N)
        method = "Kaplan et al. 2020 frontier N = 1.3e9*(C/PF-day)^0.73 (non-embedding N); loss from L(N, D)"
    elif isinstance(law, Chinchilla) and fpt is None:
        N, D = _closed_form(law, p, C)
        method = "closed form N = G*(C/6)^a, D = (C/6)^b/G (C = 6ND)"
    else:
        N, D, edge = _numerical(law, p, C, fpt if fpt is not None else (lambda n: 6.0 * n))
        method = "numerical minimum of L(N, C/f(N)) over N" + (" with C = 6ND" if fpt is None else "")
    L = _loss(law, p, N, D)
    if edge is not None and edge[0].any():
        method += " (WARNING: the optimum is at the edge of the searched range of 1e-4..1e6 tokens/param)"
    return p, N, D, L, method


def _allocate_arrays(src: _Source, C: np.ndarray, fpt: FlopsPerToken | None, max_tokens: float | None,
                     label_fpt: str) -> list[Allocation]:
    p, N, D, L, method = _solve(src, C, fpt, max_tokens)
    lvl = src.ci_level
    out = []
    constrained = np.zeros_like(N, dtype=bool)
    Nc, Dc, Lc = N, D, L
    if max_tokens is not None:
        constrained = D > max_tokens
        if constrained.any():
            Nb = _constrained_N(C, max_tokens, fpt, N.shape)
            Db = np.full(N.shape, float(max_tokens))
            Lb = _loss(src.law, p, Nb, Db)
            Nc, Dc, Lc = np.where(constrained, Nb, N), np.where(constrained, Db, D), np.where(constrained, Lb, L)
    for m in range(len(C)):
        def cis(Na, Da, La):
            d = {"N": _ci(Na[:, m], lvl), "D": _ci(Da[:, m], lvl), "loss": _ci(La[:, m], lvl),
                 "tokens_per_param": _ci(Da[:, m] / Na[:, m], lvl)}
            return {k: v for k, v in d.items() if v is not None}
        # intervals: each bootstrap sample allocated as it would be (capped where it needs more
        # than max_tokens), so they account for the cap even when the point estimate does not hit it
        free = Allocation(compute=float(C[m]), N=float(N[0, m]), D=float(D[0, m]), loss=float(L[0, m]),
                          ci=cis(Nc, Dc, Lc) if not constrained[0, m] else cis(N, D, L), law=src.label, method=method, flops_per_token=label_fpt,
                          n_counts=src.n_counts, ci_level=lvl, max_tokens=max_tokens)
        if max_tokens is not None and constrained[0, m]:
            a = Allocation(compute=float(C[m]), N=float(Nc[0, m]), D=float(Dc[0, m]), loss=float(Lc[0, m]),
                           ci=cis(Nc, Dc, Lc), law=src.label,
                           method=method + f"; constrained to D <= {max_tokens:.4g} tokens",
                           flops_per_token=label_fpt, n_counts=src.n_counts, ci_level=lvl, max_tokens=max_tokens,
                           constrained=True, loss_penalty=float(Lc[0, m] - L[0, m]), unconstrained=free)
            out.append(a)
        else:
            out.append(free)
    return out


def allocate(compute: Any, law: Any = "besiroglu2024", flops_per_token: FlopsPerToken | None = None,
             max_tokens: float | None = None) -> "Allocation | list[Allocation]":
    """Compute-optimal parameters and tokens for a training budget.

    ``compute``: FLOP (a number, or a sequence for several budgets -> a list).  ``law``: a
    published fit name (``hoffmann2022``, ``besiroglu2024``, ``kaplan2020``), a
    :class:`~lawfit.fitting.FitResult`, a path to a saved fit JSON, or a bound law of N and D.
    ``flops_per_token``: training FLOP per token as a function of N (default ``6 N``, so
    ``C = 6ND``); it should increase with N.  ``max_tokens``: unique tokens available; when the
    optimum needs more, the result is the best allocation with ``D = max_tokens`` and
    ``.loss_penalty`` says how much loss that costs (``.unconstrained`` holds the free optimum).
    """
    scalar = np.ndim(compute) == 0
    try:
        C = np.atleast_1d(np.asarray(compute, dtype=float)).ravel()
    except (TypeError, ValueError):
        raise LawfitError(f"compute must be a number of FLOP, got {compute!r}") from None
    if C.size == 0 or not np.all(np.isfinite(C)) or np.any(C <= 0):
        raise LawfitError(f"compute must be positive and finite FLOP, got {compute!r}")
    if max_tokens is not None and not (math.isfinite(float(max_tokens)) and float(max_tokens) > 0):
        raise LawfitError(f"max_tokens must be a positive number of tokens, got {max_tokens!r}")
    if flops_per_token is not None and not callable(flops_per_token):
        raise LawfitError("flops_per_token must be a callable of N returning training FLOP per token")
    src = _resolve(law)
    label = "6N" if flops_per_token is None else "callable f(N)"
    out = _allocate_arrays(src, C, flops_per_token, None if max_tokens is None else float(max_tokens), label)
    return out[0] if scalar else out


def optimal_for_params(N: Any, law: Any = "besiroglu2024", flops_per_token: FlopsPerToken | None = None
                       ) -> "Allocation | list[Allocation]":
    """The inverse question: for a model of ``N`` parameters, the budget ``C`` (FLOP) for which
    N is compute-optimal, and the tokens ``D`` to train it on.  Returns :class:`Allocation`
    (``.compute``, ``.D``, ``.loss``; ``.ci`` holds ``"compute"`` too for bootstrapped fits)."""
    scalar = np.ndim(N) == 0
    Ns = np.atleast_1d(np.asarray(N, dtype=float)).ravel()
    if Ns.size == 0 or not np.all(np.isfinite(Ns)) or np.any(Ns <= 0):
        raise LawfitError(f"N must be a positive number of parameters, got {N!r}")
    src = _resolve(law)
    _check_nd(src.law)
    p = _as_params(src)
    K = len(next(iter(p.values())))
    fpt = flops_per_token
    if src.kaplan is not None:
        c = src.kaplan.constants
        Cmin = PF_DAY * (Ns / c["N_opt_coef"]) ** (1.0 / c["N_opt_exponent"])
        Nm = np.ones((K, 1)) * Ns[None, :]
        f = 6.0 * Nm if fpt is None else _call_fpt(fpt, Nm)
        Cm = np.ones((K, 1)) * Cmin[None, :]
        Dm = Cm / f
        method = "Kaplan et al. 2020 frontier inverted: C = PF-day*(N/1.3e9)^(1/0.73)"
    elif isinstance(src.law, Chinchilla) and fpt is None:
        d = src.law.derived(p)
        G, a = (np.asarray(d[k], float)[:, None] for k in ("G", "a"))
        Cm = 6.0 * (Ns[None, :] / G) ** (1.0 / a)
        Nm = np.ones((K, 1)) * Ns[None, :]
        Dm = Cm / (6.0 * Nm)
        method = "closed form C = 6*(N/G)^(1/a), D = C/(6N)"
    else:
        f = fpt if fpt is not None else (lambda n: 6.0 * n)
        lo = np.log(6.0 * Ns ** 2 * _TPP_RANGE[0]) + np.zeros((K, 1))
        hi = np.log(6.0 * Ns ** 2 * _TPP_RANGE[1]) + np.zeros((K, 1))
        for _ in range(50):
            mid = 0.5 * (lo + hi)
            Nopt = _numerical(src.law, p, np.exp(mid), f)[0]
            big = Nopt > Ns[None, :]
            hi = np.where(big, mid, hi)
            lo = np.where(big, lo, mid)
        Cm = np.exp(0.5 * (lo + hi))
        Nm = np.ones((K, 1)) * Ns[None, :]
        Dm = Cm / _call_fpt(f, Nm)
        method = "numerical inverse of the compute-optimal N(C)"
    Lm = _loss(src.law, p, Nm, Dm)
    lvl = src.ci_level
    out = []
    for m in range(len(Ns)):
        ci = {"compute": _ci(Cm[:, m], lvl), "D": _ci(Dm[:, m], lvl), "loss": _ci(Lm[:, m], lvl),
              "tokens_per_param": _ci(Dm[:, m] / Nm[:, m], lvl)}
        out.append(Allocation(compute=float(Cm[0, m]), N=float(Ns[m]), D=float(Dm[0, m]), loss=float(Lm[0, m]),
                              ci={k: v for k, v in ci.items() if v is not None}, law=src.label, method=method,
                              flops_per_token="6N" if fpt is None else "callable f(N)", n_counts=src.n_counts,
                              ci_level=lvl))
    return out[0] if scalar else out


def predict_loss(N: Any, D: Any, law: Any = "besiroglu2024") -> Any:
    """The law's loss for ``N`` parameters trained on ``D`` tokens (vectorised)."""
    src = _resolve(law)
    _check_nd(src.law)
    return src.law(N=N, D=D)
