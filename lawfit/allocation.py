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
from . import allocation_laws as _alloc_laws
from . import published as _published
from .allocation_laws import AllocationLaw
from .fitting import FitResult, load_fit
from .isoflop import IsoFLOPResult

FlopsPerToken = Callable[[Any], Any]
_TPP_RANGE = (1e-4, 1e6)   # tokens per parameter searched by the numerical allocator
_GRID = 241
_GOLDEN = 48


@dataclass
class Allocation:
    """A compute-optimal (N, D) for one budget.

    ``compute`` in FLOP (``compute_kind`` says which C: the training FLOP spent, or Kaplan's
    C_min), ``N`` parameters (counted as the law's N, see ``n_counts``), ``D`` training tokens,
    ``loss`` the law's prediction (same unit as the law's loss; None for an allocation law,
    which predicts no loss), ``ci`` maps ``"N"``, ``"D"``, ``"loss"``, ``"tokens_per_param"``
    (and ``"compute"`` for the inverse) to percentile intervals, empty when the law has no
    bootstrap samples.  ``epochs`` = D / unique tokens (1 without ``max_tokens``);
    ``repetition`` (Muennighoff et al. 2023) and ``inference`` (Sardana et al. 2024) hold the
    details of those allocations; ``warnings`` lists what a reader must know.
    """

    compute: float
    N: float
    D: float
    loss: float | None
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
    compute_kind: str = "C: training FLOP spent"
    citation: str = ""
    repetition: dict[str, Any] | None = None
    inference: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def tokens_per_param(self) -> float:
        return self.D / self.N

    @property
    def epochs(self) -> float:
        """Passes over the unique data: D / max_tokens (1.0 when every token is unique)."""
        if self.max_tokens is None:
            return 1.0
        return max(1.0, self.D / self.max_tokens)

    def to_dict(self) -> dict[str, Any]:
        out = {"compute_flop": self.compute, "compute_kind": self.compute_kind, "N": self.N, "D": self.D,
               "tokens_per_param": self.tokens_per_param, "epochs": self.epochs,
               "loss": self.loss, "ci": {k: list(v) for k, v in self.ci.items()}, "ci_level": self.ci_level,
               "law": self.law, "citation": self.citation, "method": self.method,
               "flops_per_token": self.flops_per_token, "n_counts": self.n_counts, "max_tokens": self.max_tokens,
               "constrained": self.constrained, "loss_penalty": self.loss_penalty, "warnings": list(self.warnings)}
        if self.unconstrained is not None:
            u = self.unconstrained
            out["unconstrained"] = {"N": u.N, "D": u.D, "loss": u.loss, "tokens_per_param": u.tokens_per_param}
        if self.repetition is not None:
            out["repetition"] = dict(self.repetition)
        if self.inference is not None:
            out["inference"] = dict(self.inference)
        return out

    def __str__(self) -> str:
        loss = "no loss (allocation law)" if self.loss is None else f"loss {self.loss:.4f}"
        lines = [f"C = {self.compute:.4g} FLOP ({self.compute_kind}): N = {self.N:.4g} parameters, "
                 f"D = {self.D:.4g} tokens ({self.tokens_per_param:.1f} tokens/param), {loss}",
                 f"  law: {self.law}; N counts {self.n_counts}", f"  method: {self.method}"]
        if self.max_tokens is not None:
            lines.append(f"  unique tokens {self.max_tokens:.4g}: {self.epochs:.2f} epochs")
        if self.repetition:
            r = self.repetition
            lines.append(f"  repeated data (Muennighoff et al. 2023, R*_D {r['R_D_star']}, R*_N {r['R_N_star']}): "
                         f"loss cost of repetition +{r['loss_cost']:.4f} against unlimited unique data")
        if self.inference:
            i = self.inference
            lines.append(f"  inference-aware (Sardana et al. 2024), {i['inference_tokens']:.3g} inference tokens: "
                         f"{i['past_chinchilla']:.2f}x Chinchilla's tokens/param, total FLOP "
                         f"{i['total_flop']:.4g} vs {i['chinchilla_total_flop']:.4g} ({i['flop_saved']:.4g} saved)")
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------
@dataclass
class _Source:
    law: Law | None
    label: str
    n_counts: str
    samples: dict[str, np.ndarray] | None
    ci_level: float | None
    kaplan: Any = None
    alloc: AllocationLaw | None = None
    citation: str = ""


def law_names() -> list[str]:
    """Every law name ``allocate`` (and ``flopscale allocate/plan --law``) accepts: the published
    loss fits and the published allocation laws.  ``power:k=...,a=...`` (a user's own
    ``N_opt = k C^a``) and saved fits (a path) are accepted too."""
    return sorted(set(_published.names()) | set(_alloc_laws.LAWS))


def _resolve(law: Any) -> _Source:
    if isinstance(law, bool):
        raise LawfitError(f"cannot allocate with law={law!r}")
    if isinstance(law, str) and law.strip().lower() in _published.FITS:
        law = _published.get(law)
    if isinstance(law, _published.PublishedFit):
        return _Source(law.law, f"{law.name} (published)", law.n_counts, None, None,
                       law if isinstance(law, _published.KaplanFit) else None, citation=law.citation)
    alloc = _alloc_laws.get(law) if isinstance(law, (str, _alloc_laws.AllocationLaw)) else None
    if alloc is None and isinstance(law, IsoFLOPResult):
        alloc = _alloc_laws.from_isoflop(law.to_dict())
    if alloc is not None:
        return _Source(None, f"{alloc.name} (allocation law: {alloc.formula})", alloc.n_counts, None, None,
                       alloc=alloc, citation=alloc.citation)
    if isinstance(law, (str, os.PathLike)) or isinstance(law, Mapping):
        if isinstance(law, (str, os.PathLike)) and not Path(law).exists() and not str(law).lstrip().startswith("{"):
            raise LawfitError(f"unknown law {str(law)!r}: use a published law ({', '.join(law_names())}), "
                              "power:k=K,a=A, a fit result, or the path to a saved fit")
        return _resolve(load_fit(law))
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


# Muennighoff et al. 2023, 'Scaling Data-Constrained Language Models' (arXiv:2305.16264), Eq. 5:
# fitted decay constants of the value of repeated tokens (R*_D) and of excess parameters (R*_N).
R_D_STAR = 15.387
R_N_STAR = 5.309
KAPLAN_C_OVER_CMIN = 2.0
TINY_MODEL = 1e6
"""C / C_min when training at the critical batch size B = B_crit (Kaplan et al. 2020, Eq. 5.5:
C_min = C / (1 + B/B_crit)); with it Kaplan's frontier at C = 1e21 FLOP gives the ~4.7 B
parameters Hoffmann et al. 2022 (Appendix D.4) attribute to it."""


class _Repeated:
    """A Chinchilla-form law evaluated at Muennighoff et al.'s effective data and parameters:
    ``D' = U + U R*_D (1 - exp(-R_D / R*_D))`` with ``R_D = D/U - 1`` repetitions, and
    ``N' = U_N + U_N R*_N (1 - exp(-R_N / R*_N))`` with ``U_N = min(N, N_opt(U))`` (the
    compute-optimal size for one epoch of the U unique tokens) and ``R_N = N/U_N - 1``."""

    def __init__(self, law: Chinchilla, unique: float) -> None:
        self.law, self.U = law, float(unique)

    def effective(self, p, N, D):
        d = self.law.derived(p)
        G, a, b = (np.asarray(d[k], float) for k in ("G", "a", "b"))
        c6 = (self.U * G) ** (1.0 / b)          # budget/6 whose optimal D is U
        NU = G * c6 ** a
        UN = np.minimum(N, NU)
        RN = np.maximum(N / UN - 1.0, 0.0)
        RD = np.maximum(D / self.U - 1.0, 0.0)
        Ne = UN + UN * R_N_STAR * (1.0 - np.exp(-RN / R_N_STAR))
        De = np.where(D > self.U, self.U + self.U * R_D_STAR * (1.0 - np.exp(-RD / R_D_STAR)), D)
        return Ne, De

    def evaluate(self, p, N, D):
        Ne, De = self.effective(p, np.asarray(N, float), np.asarray(D, float))
        return self.law.evaluate(p, N=Ne, D=De)


def _kaplan_cmin(C: np.ndarray, compute_is: str) -> tuple[np.ndarray, str]:
    if compute_is == "C_min":
        return C, "C_min: Kaplan's minimum compute (the budget as given)"
    return C / KAPLAN_C_OVER_CMIN, (f"C: training FLOP spent; Kaplan's frontier applied to C_min = C/"
                                    f"{KAPLAN_C_OVER_CMIN:g} (training at the critical batch size)")


def _solve(src: _Source, C: np.ndarray, fpt: FlopsPerToken | None, compute_is: str):
    """N, D, loss arrays [1 + K, M] (row 0: point estimate), a method description, the compute
    kind and warnings."""
    warns: list[str] = []
    kind = "C: training FLOP spent"
    if src.alloc is not None:
        if fpt is not None:
            warns.append("flops_per_token is not used by an allocation law (its own C definition applies)")
        N, D = src.alloc(C)
        N, D = np.atleast_2d(N), np.atleast_2d(D)
        return {}, N, D, None, f"allocation law {src.alloc.formula}", kind, warns
    law = src.law
    _check_nd(law)
    p = _as_params(src)
    edge = None
    if src.kaplan is not None:
        Cmin, kind = _kaplan_cmin(C, compute_is)
        N = np.asarray(src.kaplan.optimal_params(Cmin), float)[None, :] * np.ones((len(p["alpha_N"]), 1))
        D = C[None, :] / (6.0 * N) if fpt is None else C[None, :] / _call_fpt(fpt, N)
        method = ("Kaplan et al. 2020 frontier N = 1.3e9*(C_min/PF-day)^0.73 (non-embedding N), "
                  + ("C_min = the budget given" if compute_is == "C_min" else f"C_min = C/{KAPLAN_C_OVER_CMIN:g}")
                  + "; D = C/(6N); loss from L(N, D)")
    elif isinstance(law, Chinchilla) and fpt is None:
        N, D = _closed_form(law, p, C)
        method = "closed form N = G*(C/6)^a, D = (C/6)^b/G (C = 6ND)"
    else:
        N, D, edge = _numerical(law, p, C, fpt if fpt is not None else (lambda n: 6.0 * n))
        method = "numerical minimum of L(N, C/f(N)) over N" + (" with C = 6ND" if fpt is None else "")
    L = _loss(law, p, N, D)
    if edge is not None and edge[0].any():
        warns.append("the optimum is at the edge of the searched range of 1e-4..1e6 tokens/param")
        method += " (WARNING: the optimum is at the edge of the searched range of 1e-4..1e6 tokens/param)"
    return p, N, D, L, method, kind, warns


def _check_result(C: np.ndarray, N: np.ndarray, D: np.ndarray, L: np.ndarray | None, label: str) -> None:
    """Refuse a non-finite allocation, and budgets where the law's prediction is not a loss the
    law was made for (a loss above 100 nats or non-finite: a budget far below any training run)."""
    bad = ~(np.isfinite(N[0]) & np.isfinite(D[0]) & (N[0] > 0) & (D[0] > 0))
    if L is not None:
        bad |= ~np.isfinite(L[0])
    if bad.any():
        m = int(np.flatnonzero(bad)[0])
        raise LawfitError(f"{label} gives no finite allocation at C = {C[m]:.4g} FLOP: the law (or fit) is not "
                          "identifiable there")
    if np.any(N[0] < 1.0) or np.any(D[0] < 1.0):
        m = int(np.flatnonzero((N[0] < 1.0) | (D[0] < 1.0))[0])
        raise LawfitError(f"C = {C[m]:.4g} FLOP is too small for any model: {label} gives N = {N[0, m]:.3g} "
                          f"parameters and D = {D[0, m]:.3g} tokens, and its loss there is not a prediction")


def _small_model_warnings(N: np.ndarray) -> list[str]:
    """A warning when an allocation lies far below the model sizes any published law was fitted on."""
    if np.any(N[0] < TINY_MODEL):
        return [f"N = {float(np.min(N[0])):.3g} parameters is far below the models scaling laws are fitted on "
                f"(the published fits start near 1e7): N, D and the loss there are extrapolations"]
    return []


def _cis(lvl, m, Na, Da, La):
    d = {"N": _ci(Na[:, m], lvl), "D": _ci(Da[:, m], lvl), "tokens_per_param": _ci(Da[:, m] / Na[:, m], lvl)}
    if La is not None:
        d["loss"] = _ci(La[:, m], lvl)
    return {k: v for k, v in d.items() if v is not None}


def _allocate_arrays(src: _Source, C: np.ndarray, fpt: FlopsPerToken | None, max_tokens: float | None,
                     label_fpt: str, compute_is: str, repeat: bool,
                     inference_tokens: float | None) -> list[Allocation]:
    p, N, D, L, method, kind, warns = _solve(src, C, fpt, compute_is)
    _check_result(C, N, D, L, src.label)
    warns = warns + _small_model_warnings(N)
    lvl = src.ci_level
    base = dict(law=src.label, flops_per_token=label_fpt, n_counts=src.n_counts, ci_level=lvl,
                max_tokens=max_tokens, compute_kind=kind, citation=src.citation)
    free = [Allocation(compute=float(C[m]), N=float(N[0, m]), D=float(D[0, m]),
                       loss=None if L is None else float(L[0, m]), ci=_cis(lvl, m, N, D, L), method=method,
                       warnings=list(warns), **base) for m in range(len(C))]
    if inference_tokens is not None:
        return [_inference_aware(src, a, float(inference_tokens)) for a in free]
    if max_tokens is None:
        return free
    over = D[0] > max_tokens
    if not over.any():
        return free
    if repeat and src.alloc is None:
        return _repeated(src, p, C, fpt, max_tokens, free)
    # capped: the best N with D = max_tokens
    Nb = _constrained_N(C, max_tokens, fpt, N.shape)
    Db = np.full(N.shape, float(max_tokens))
    Lb = None if L is None else _loss(src.law, p, Nb, Db)
    _check_result(C, Nb, Db, Lb, src.label + f" with D capped at {max_tokens:.3g} tokens")
    out = []
    for m, a in enumerate(free):
        if not over[m]:
            out.append(a)
            continue
        w = list(warns)
        if src.alloc is not None and repeat:
            w.append("an allocation law predicts no loss, so repeated data cannot be traded against model size: "
                     "D is capped at the unique tokens instead")
        out.append(Allocation(compute=a.compute, N=float(Nb[0, m]), D=float(Db[0, m]),
                              loss=None if Lb is None else float(Lb[0, m]),
                              ci=_cis(lvl, m, Nb, Db, Lb), method=method + f"; constrained to D <= {max_tokens:.4g} tokens",
                              constrained=True, loss_penalty=0.0 if Lb is None else float(Lb[0, m] - L[0, m]),
                              unconstrained=a, warnings=w, **base))
    return out


def _repeated(src: _Source, p, C: np.ndarray, fpt, U: float, free: list[Allocation]) -> list[Allocation]:
    """Muennighoff et al. 2023: the best N along each budget when tokens beyond ``U`` repeat."""
    if not isinstance(src.law, Chinchilla):
        raise LawfitError("allocation with repeated data (Muennighoff et al. 2023) needs a law of the Chinchilla "
                          f"form E + A/N^alpha + B/D^beta; {src.label} is not one (repeat=False caps D instead)")
    rep = _Repeated(src.law, U)
    f = fpt if fpt is not None else (lambda n: 6.0 * n)
    N, D, edge = _numerical(rep, p, C, f)
    L = np.asarray(rep.evaluate({k: v[:, None] for k, v in p.items()}, N, D), float)
    Nc = _constrained_N(C, U, fpt, N.shape)
    Lcap = _loss(src.law, p, Nc, np.full(N.shape, U))
    Ne, De = rep.effective({k: v[:, None] for k, v in p.items()}, N, D)
    _check_result(C, N, D, L, src.label + f" with {U:.3g} unique tokens")
    out = []
    for m, a in enumerate(free):
        if a.D <= U:
            out.append(a)
            continue
        cost = float(L[0, m] - a.loss)
        r = {"unique_tokens": U, "epochs": float(D[0, m] / U), "effective_D": float(De[0, m]),
             "effective_N": float(Ne[0, m]), "R_D_star": R_D_STAR, "R_N_star": R_N_STAR,
             "loss_cost": cost, "loss_unlimited_data": a.loss, "loss_if_capped_at_U": float(Lcap[0, m]),
             "N_if_capped_at_U": float(Nc[0, m]),
             "citation": "Muennighoff et al. 2023, 'Scaling Data-Constrained Language Models', arXiv:2305.16264, Eq. 5"}
        w = list(a.warnings)
        if edge[0, m]:
            w.append("the repeated-data optimum is at the edge of the searched range of 1e-4..1e6 tokens/param")
        out.append(Allocation(compute=a.compute, N=float(N[0, m]), D=float(D[0, m]), loss=float(L[0, m]),
                              ci=_cis(src.ci_level, m, N, D, L), law=a.law,
                              method=("numerical minimum over N of L(N', D') with Muennighoff et al. 2023's effective "
                                      f"data and parameters (U = {U:.4g} unique tokens, R*_D {R_D_STAR}, R*_N {R_N_STAR})"),
                              flops_per_token=a.flops_per_token, n_counts=a.n_counts, ci_level=a.ci_level,
                              max_tokens=U, constrained=True, loss_penalty=cost, unconstrained=a,
                              compute_kind=a.compute_kind, citation=a.citation, repetition=r, warnings=w))
    return out


def _inference_aware(src: _Source, a: Allocation, T: float) -> Allocation:
    """Sardana et al. 2024: the (N, D) reaching the loss of the Chinchilla-optimal ``a`` with the
    fewest training + inference FLOP, 6ND + 2NT (T inference tokens)."""
    law = src.law
    if not isinstance(law, Chinchilla) or a.loss is None:
        raise LawfitError("inference-aware allocation (Sardana et al. 2024) needs a law of the Chinchilla form "
                          f"E + A/N^alpha + B/D^beta; {src.label} is not one")
    pr = law.params
    E, A, B, al, be = (pr[k] for k in ("E", "A", "B", "alpha", "beta"))
    target = a.loss

    def tokens(N):
        rest = target - E - A * N ** (-al)
        with np.errstate(all="ignore"):
            return np.where(rest > 0, (B / np.where(rest > 0, rest, 1.0)) ** (1.0 / be), np.inf)

    def total(lN):
        N = np.exp(lN)
        return 6.0 * N * tokens(N) + 2.0 * N * T

    n_min = (A / (target - E)) ** (1.0 / al)
    lo, hi = math.log(n_min) + 1e-9, math.log(a.N) + 1e-9
    grid = np.linspace(lo, hi, 2001)
    j = int(np.argmin(total(grid)))
    x0, x1 = grid[max(j - 1, 0)], grid[min(j + 1, len(grid) - 1)]
    gr = (math.sqrt(5) - 1) / 2
    for _ in range(80):
        c, d = x1 - gr * (x1 - x0), x0 + gr * (x1 - x0)
        if total(np.array(c)) < total(np.array(d)):
            x1 = d
        else:
            x0 = c
    N = float(math.exp(0.5 * (x0 + x1)))
    D = float(tokens(np.array(N)))
    train, inf = 6.0 * N * D, 2.0 * N * T
    ref_total = 6.0 * a.N * a.D + 2.0 * a.N * T
    info = {"inference_tokens": T, "training_flop": train, "inference_flop": inf, "total_flop": train + inf,
            "chinchilla_N": a.N, "chinchilla_D": a.D, "chinchilla_total_flop": ref_total,
            "flop_saved": ref_total - (train + inf), "flop_saved_fraction": (ref_total - train - inf) / ref_total,
            "past_chinchilla": (D / N) / a.tokens_per_param,
            "citation": "Sardana, Portes, Doubov, Frankle 2024, 'Beyond Chinchilla-Optimal: Accounting for "
                        "Inference in Language Model Scaling Laws', arXiv:2401.00448"}
    return Allocation(compute=a.compute, N=N, D=D, loss=float(law(N=N, D=D)), law=a.law,
                      method=("minimum of training + inference FLOP 6ND + 2NT at the loss of the Chinchilla-optimal "
                              "model of this budget (1-D search over N, D from the law); training FLOP "
                              f"{train:.4g} differ from the budget"),
                      flops_per_token="6N (training), 2N (inference)", n_counts=a.n_counts, compute_kind=a.compute_kind,
                      citation=a.citation, inference=info, unconstrained=a, warnings=list(a.warnings))


def _budgets(compute: Any, what: str = "compute") -> np.ndarray:
    if isinstance(compute, (bool, np.bool_)) or (isinstance(compute, (list, tuple)) and
                                                  any(isinstance(c, (bool, np.bool_)) for c in compute)):
        raise LawfitError(f"{what} must be a number of FLOP, got {compute!r}")
    try:
        C = np.atleast_1d(np.asarray(compute, dtype=float)).ravel()
    except (TypeError, ValueError):
        raise LawfitError(f"{what} must be a number, got {compute!r}") from None
    if C.size == 0 or not np.all(np.isfinite(C)) or np.any(C <= 0):
        raise LawfitError(f"{what} must be positive and finite, got {compute!r}")
    return C


def allocate(compute: Any, law: Any = "besiroglu2024", flops_per_token: FlopsPerToken | None = None,
             max_tokens: float | None = None, *, compute_is: str = "C", repeat: bool = False,
             inference_tokens: float | None = None) -> "Allocation | list[Allocation]":
    """Compute-optimal parameters and tokens for a training budget.

    ``compute``: FLOP (a number, or a sequence for several budgets -> a list).  ``law``: a
    name from :func:`law_names` (published loss fits such as ``hoffmann2022``,
    ``besiroglu2024``, ``kaplan2020``; allocation laws such as ``deepseek2024``), a
    ``"power:k=K,a=A"`` spec, a :class:`~lawfit.fitting.FitResult`, an IsoFLOP result, a path
    to a saved fit or IsoFLOP JSON, or a bound law of N and D.
    ``flops_per_token``: training FLOP per token as a function of N (default ``6 N``, so
    ``C = 6ND``); it should increase with N.
    ``compute_is``: ``"C"`` (default: FLOP spent) or ``"C_min"``; only Kaplan et al. 2020 tell
    them apart (its frontier is in C_min = C/2 at the critical batch size); ``.compute_kind``
    says which was used.
    ``max_tokens``: unique tokens available.  When the optimum needs more: ``repeat=False``
    caps D at ``max_tokens`` (``.loss_penalty`` the cost); ``repeat=True`` repeats data and
    allocates with Muennighoff et al. 2023's effective data (``.epochs``, ``.repetition``).
    ``inference_tokens``: allocate for the loss of the Chinchilla-optimal model of this budget
    with the fewest training + inference FLOP (Sardana et al. 2024; ``.inference``).
    """
    scalar = np.ndim(compute) == 0
    C = _budgets(compute)
    if max_tokens is not None:
        max_tokens = float(_budgets(max_tokens, "max_tokens")[0])
        if max_tokens < 1.0:
            raise LawfitError(f"max_tokens must be at least 1 token, got {max_tokens!r}")
    if inference_tokens is not None:
        inference_tokens = float(_budgets(inference_tokens, "inference_tokens")[0])
        if max_tokens is not None:
            raise LawfitError("give max_tokens or inference_tokens, not both")
    if compute_is not in ("C", "C_min"):
        raise LawfitError(f"compute_is must be 'C' (FLOP spent) or 'C_min' (Kaplan's minimum compute), got {compute_is!r}")
    if flops_per_token is not None and not callable(flops_per_token):
        raise LawfitError("flops_per_token must be a callable of N returning training FLOP per token")
    src = _resolve(law)
    if compute_is == "C_min" and src.kaplan is None:
        raise LawfitError(f"compute_is='C_min' applies to kaplan2020 only; {src.label} takes the FLOP spent")
    label = "6N" if flops_per_token is None else "callable f(N)"
    out = _allocate_arrays(src, C, flops_per_token, max_tokens, label, compute_is, bool(repeat), inference_tokens)
    return out[0] if scalar else out


def optimal_for_params(N: Any, law: Any = "besiroglu2024", flops_per_token: FlopsPerToken | None = None
                       ) -> "Allocation | list[Allocation]":
    """The inverse question: for a model of ``N`` parameters, the budget ``C`` (FLOP) for which
    N is compute-optimal, and the tokens ``D`` to train it on.  Returns :class:`Allocation`
    (``.compute``, ``.D``, ``.loss``; ``.ci`` holds ``"compute"`` too for bootstrapped fits)."""
    scalar = np.ndim(N) == 0
    Ns = _budgets(N, "N")
    if np.any(Ns < 1.0):
        raise LawfitError(f"N must be at least 1 parameter, got {N!r}")
    src = _resolve(law)
    if src.alloc is not None:
        with np.errstate(all="ignore"):
            Cs, Ds = src.alloc.inverse(Ns)
        if not (np.all(np.isfinite(Cs)) and np.all(np.isfinite(Ds))):
            raise LawfitError(f"N = {N!r} parameters is outside what {src.label} can answer: the budget overflows")
        out = [Allocation(compute=float(c), N=float(n), D=float(d), loss=None, law=src.label,
                          method=f"allocation law {src.alloc.formula}, inverted", n_counts=src.n_counts,
                          citation=src.citation) for c, n, d in zip(Cs, Ns, Ds)]
        return out[0] if scalar else out
    _check_nd(src.law)
    p = _as_params(src)
    K = len(next(iter(p.values())))
    fpt = flops_per_token
    kind = "C: training FLOP spent"
    if src.kaplan is not None:
        c = src.kaplan.constants
        Cmin = PF_DAY * (Ns / c["N_opt_coef"]) ** (1.0 / c["N_opt_exponent"])
        Nm = np.ones((K, 1)) * Ns[None, :]
        f = 6.0 * Nm if fpt is None else _call_fpt(fpt, Nm)
        Cm = np.ones((K, 1)) * (Cmin * KAPLAN_C_OVER_CMIN)[None, :]
        Dm = Cm / f
        method = (f"Kaplan et al. 2020 frontier inverted: C_min = PF-day*(N/1.3e9)^(1/0.73), C = "
                  f"{KAPLAN_C_OVER_CMIN:g}*C_min")
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
    bad = ~(np.isfinite(Cm[0]) & np.isfinite(Dm[0]) & np.isfinite(Lm[0]))
    if bad.any():
        m = int(np.flatnonzero(bad)[0])
        raise LawfitError(f"N = {Ns[m]:.4g} parameters is outside what {src.label} can answer: the budget, tokens "
                          "or loss overflow")
    lvl = src.ci_level
    out = []
    for m in range(len(Ns)):
        ci = {"compute": _ci(Cm[:, m], lvl), "D": _ci(Dm[:, m], lvl), "loss": _ci(Lm[:, m], lvl),
              "tokens_per_param": _ci(Dm[:, m] / Nm[:, m], lvl)}
        out.append(Allocation(compute=float(Cm[0, m]), N=float(Ns[m]), D=float(Dm[0, m]), loss=float(Lm[0, m]),
                              ci={k: v for k, v in ci.items() if v is not None}, law=src.label, method=method,
                              flops_per_token="6N" if fpt is None else "callable f(N)", n_counts=src.n_counts,
                              ci_level=lvl, compute_kind=kind, citation=src.citation))
    return out[0] if scalar else out


def predict_loss(N: Any, D: Any, law: Any = "besiroglu2024") -> Any:
    """The law's loss for ``N`` parameters trained on ``D`` tokens (vectorised)."""
    src = _resolve(law)
    if src.alloc is not None:
        raise LawfitError(f"{src.alloc.name} is an allocation law: it predicts N and D, not a loss")
    _check_nd(src.law)
    return src.law(N=N, D=D)
