"""Fitting scaling laws to training runs: robust loss, many starts, bootstrap intervals.

The objective (Hoffmann et al. 2022, Approach 3; Besiroglu et al. 2024) is the **sum** over
runs of the Huber loss (``delta = 1e-3`` by default) of the residual between the log of the
predicted and the log of the observed loss.  It is minimised with L-BFGS from a grid of starts
(for the Chinchilla form the 4,500 starts of Hoffmann et al.), all starts batched in numpy with
analytic gradients; the best end point (and up to two distinct others within 0.1% of its
objective) is then refined with scipy's L-BFGS-B at tight tolerances.  With ``bootstrap=k`` the runs are resampled with replacement ``k`` times and each
replicate is refitted (batched, warm-started from the optimum and from any other local optimum
within 10% of its objective); percentile intervals are reported for every parameter and
derived quantity.

Stopping rules (``FIT_TOL``, ``BOOT_TOL``) are relative to the objective itself.  scipy's
default rule is relative to ``max(|f|, 1)``; a summed Huber objective is ~1e-3, so that rule
stops most starts early, and a bootstrap replicate warm-started at the optimum would barely
move (intervals several times too narrow).  A start "reached the best optimum" when its end
objective is within ``SAME_OPTIMUM_RTOL`` (1e-5, relative) of the best.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ._data import load_runs
from ._errors import LawfitError
from ._optim import BAD_START, STATUS_TEXT, BatchResult, Conditioned, Objective, _duplicates, batched_lbfgs, polish
from ._parallel import can_fork, resolve_workers, run_blocks, workers_now
from .allocation_laws import from_isoflop
from .isoflop import FORMAT as ISOFLOP_FORMAT
from .laws import Chinchilla, Law, get_law, law_from_spec

FORMAT = "lawfit.fit/1"
# Stopping rules of the batched L-BFGS.  Both are relative to the objective itself (fscale=0):
# scipy's default, relative to max(|f|, 1), stops a summed-Huber objective of ~1e-3 almost at
# once, which leaves many grid starts short of their optimum and bootstrap replicates near
# their warm start (intervals far too narrow).
# Starts still running after 300 iterations at more than twice the best objective so far are
# stopped (slow drifts along degenerate directions, far from any good optimum).
FIT_TOL = dict(ftol=1e-9, fscale=0.0, gtol=1e-8, maxiter=1000, abandon_after=300, abandon_ratio=2.0)
# Duplicate starts (see lawfit._optim.batched_lbfgs and Objective.merge_key): before the first
# step and after these iterations, running starts whose terms agree to 1e-6 in log at every run
# (terms below 1e-7 of the observed loss everywhere count as absent) are the same model; they
# are merged, one runs on, and a merged start is counted with that start's outcome.  On the
# 4,500-start grid and the 240 Epoch runs 2,462 starts merge, which saves 41% of the
# evaluations, and merging changes no outcome within 10x of the best objective: the same 562
# starts reach the best as when every start runs alone; 210 starts stuck in degenerate fits
# (objective >= 10.8x the best) end at another degenerate point (tested).  Laws without a
# merge key (all but Chinchilla, whose default grids are small) merge nothing.
FIT_MERGE = dict(merge_at=(1, 2, 4, 8, 16, 32, 64, 128), merge_tol=1e-6, term_floor=1e-7)
BOOT_TOL = dict(ftol=1e-12, fscale=0.0, gtol=1e-10, maxiter=1000)
# From this many starts (after merging duplicates before the first step) or bootstrap starts on,
# the starts are split into two fixed blocks (first and second half) that never interact; the
# blocks run in two processes when there are CPUs for them, else together in one batch.  The
# split is the same on every machine, so the result does not depend on how many CPUs ran it
# (up to rounding: about 1e-8 relative in the polished parameters).
SPLIT_MIN = 500
SAME_OPTIMUM_RTOL = 1e-5
POLISH_GAP = 1e-3
"""A start 'reached the best optimum' when its end objective is within this relative gap of the
best (or its parameters within 1e-3 of the best, for near-zero objectives)."""


def _inputs_of(df: pd.DataFrame, names: Sequence[str]) -> dict[str, np.ndarray]:
    x: dict[str, np.ndarray] = {}
    for n in names:
        v = df[n].to_numpy(dtype=float)
        x[n] = v
        x["log_" + n] = np.log(v)
    return x


def _percentile_ci(samples: np.ndarray, level: float) -> tuple[float, float]:
    s = np.asarray(samples, float)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return (math.nan, math.nan)
    lo, hi = np.percentile(s, [50 * (1 - level), 50 * (1 + level)])
    return (float(lo), float(hi))


def _distinct(thetas: np.ndarray, order: np.ndarray, k: int, tol: float) -> list[int]:
    chosen: list[int] = []
    for i in order:
        if not np.all(np.isfinite(thetas[i])):
            continue
        if all(np.max(np.abs(thetas[i] - thetas[j])) > tol for j in chosen):
            chosen.append(int(i))
        if len(chosen) >= k:
            break
    return chosen


class FitResult:
    """A fitted scaling law.

    Attributes: ``law`` (the bound law), ``params`` (dict), ``objective`` (sum of Huber
    losses at the optimum), ``converged``, ``message``, ``n_starts``, ``n_at_best`` (starts whose
    end point reached the best optimum), ``residuals`` (log predicted - log observed loss per
    run), ``data`` (the runs used, canonical column names), ``notes`` (how columns were found,
    rows dropped), ``ci`` (``name -> (lo, hi)`` bootstrap percentile intervals, empty without
    bootstrap), ``bootstrap_samples`` (``name -> array``), ``derived`` (e.g. a, b, G).
    """

    def __init__(self, *, law: Law, objective: float, converged: bool, message: str, n_starts: int,
                 n_at_best: int, starts: str, delta: float, data: pd.DataFrame, notes: list[str],
                 bootstrap_samples: Mapping[str, np.ndarray] | None = None, ci_level: float = 0.95,
                 bootstrap_failed: int = 0, seed: int = 0, seconds: float = math.nan,
                 start_outcomes: Mapping[str, int] | None = None, processes: int = 1) -> None:
        self.law = law
        self.objective = float(objective)
        self.converged = bool(converged)
        self.message = message
        self.n_starts = int(n_starts)
        self.n_at_best = int(n_at_best)
        self.starts = starts
        self.delta = float(delta)
        self.data = data
        self.notes = list(notes)
        self.ci_level = float(ci_level)
        self.bootstrap_failed = int(bootstrap_failed)
        self.seed = int(seed)
        self.seconds = float(seconds)
        self.processes = int(processes)
        self.start_outcomes = dict(start_outcomes or {})
        self.bootstrap_samples: dict[str, np.ndarray] = {k: np.asarray(v, float) for k, v in (bootstrap_samples or {}).items()}
        self.ci: dict[str, tuple[float, float]] = {
            k: _percentile_ci(v, self.ci_level) for k, v in self.bootstrap_samples.items()}

    # -- basic views -------------------------------------------------------------------
    @property
    def params(self) -> dict[str, float]:
        return self.law.params  # type: ignore[return-value]

    @property
    def law_name(self) -> str:
        return self.law.name

    @property
    def derived(self) -> dict[str, float]:
        return self.law.derived()

    @property
    def n_rows(self) -> int:
        return len(self.data)

    @property
    def n_bootstrap(self) -> int:
        if not self.bootstrap_samples:
            return 0
        return len(next(iter(self.bootstrap_samples.values())))

    @property
    def observed(self) -> np.ndarray:
        return self.data["loss"].to_numpy(dtype=float)

    @property
    def fitted(self) -> np.ndarray:
        """The law's prediction at each run."""
        return np.asarray(self.law(**{n: self.data[n].to_numpy(dtype=float) for n in self.law.inputs}), float)

    @property
    def residuals(self) -> np.ndarray:
        """log(predicted loss) - log(observed loss), one per run."""
        return np.log(self.fitted) - np.log(self.observed)

    def predict(self, **inputs: Any) -> Any:
        """The fitted law at ``inputs`` (e.g. ``N=..., D=...``), vectorised."""
        return self.law(**inputs)

    def loss(self, N: Any = None, D: Any = None, **inputs: Any) -> Any:
        """Predicted loss at parameters ``N`` and tokens ``D`` (or the law's own inputs)."""
        if N is not None:
            inputs["N"] = N
        if D is not None:
            inputs["D"] = D
        return self.law(**inputs)

    def predict_interval(self, **inputs: Any) -> tuple[Any, Any]:
        """Bootstrap percentile interval of the prediction at ``inputs`` (needs ``bootstrap > 0``)."""
        if not self.bootstrap_samples:
            raise LawfitError("no bootstrap samples: fit with bootstrap=k to get intervals")
        p = {n: self.bootstrap_samples[n].reshape((-1,) + (1,) * np.ndim(np.broadcast(*inputs.values())))
             for n in self.law.param_names}
        vals = np.asarray(self.law.evaluate(p, **inputs), float)
        lo, hi = np.nanpercentile(vals, [50 * (1 - self.ci_level), 50 * (1 + self.ci_level)], axis=0)
        return (float(lo) if np.ndim(lo) == 0 else lo, float(hi) if np.ndim(hi) == 0 else hi)

    # -- text --------------------------------------------------------------------------
    def summary(self) -> str:
        """A printable table of the fit: parameters with units and intervals, diagnostics."""
        law = self.law
        lines = [f"{law.name} fit: {law.formula}",
                 f"  runs used: {self.n_rows}" + (f" ({'; '.join(self.notes)})" if self.notes else "")]
        lines.append(f"  objective: {self.objective:.6e} (sum over runs of Huber(delta={self.delta:g}) "
                     f"of log-loss residuals); converged: {'yes' if self.converged else 'NO'} ({self.message})")
        lines.append(f"  starts: {self.n_starts} ({self.starts}); {self.n_at_best} reached the best optimum "
                     f"(objective within {SAME_OPTIMUM_RTOL:g} relative, or parameters within 1e-3; batched "
                     f"L-BFGS, a count that depends on the optimiser's path)")
        has_ci = bool(self.ci)
        ci_head = f"{int(round(self.ci_level * 100))}% interval (bootstrap, n={self.n_bootstrap})" if has_ci else ""
        rows = [(n, v, law.unit(n)) for n, v in self.params.items()]
        der = self.derived
        if der:
            rows += [(n, v, law.unit(n)) for n, v in der.items()]
        w = max(len(r[0]) for r in rows) + 2
        lines.append(f"  {'param'.ljust(w)}{'value':>12}  {ci_head:<34}unit")
        for n, v, u in rows:
            ci = self.ci.get(n)
            cis = f"[{_g(ci[0])}, {_g(ci[1])}]" if ci and all(map(math.isfinite, ci)) else ""
            lines.append(f"  {n.ljust(w)}{_g(v):>12}  {cis:<34}{u}")
        if der and isinstance(law, Chinchilla):
            lines.append("  compute-optimal under C = 6ND: N_opt = G*(C/6)^a, D_opt = (C/6)^b/G "
                         "(N in parameters, D in tokens, C in FLOP)")
        r = self.residuals
        lines.append(f"  residuals of log loss: RMS {np.sqrt(np.mean(r ** 2)):.4f}, max |r| {np.max(np.abs(r)):.4f}")
        if self.bootstrap_failed:
            lines.append(f"  {self.bootstrap_failed} bootstrap replicates failed and were left out")
        if math.isfinite(self.seconds):
            lines.append(f"  time: {self.seconds:.2f} s wall clock, {self.processes} "
                         f"process{'es' if self.processes > 1 else ''}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        vals = ", ".join(f"{k}={_g(v)}" for k, v in self.params.items())
        return f"FitResult({self.law.name}: {vals}; objective={self.objective:.4e}, n={self.n_rows})"

    # -- persistence -------------------------------------------------------------------
    def to_dict(self, include_samples: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": FORMAT,
            "law": self.law.spec(),
            "formula": self.law.formula,
            "params": self.params,
            "derived": self.derived,
            "objective": self.objective,
            "converged": self.converged,
            "message": self.message,
            "n_starts": self.n_starts,
            "n_at_best": self.n_at_best,
            "start_outcomes": self.start_outcomes,
            "starts": self.starts,
            "delta": self.delta,
            "n_rows": self.n_rows,
            "notes": self.notes,
            "seed": self.seed,
            "seconds": self.seconds,
            "processes": self.processes,
            "ci_level": self.ci_level,
            "ci": {k: list(v) for k, v in self.ci.items()},
            "n_bootstrap": self.n_bootstrap,
            "bootstrap_failed": self.bootstrap_failed,
            "data": {c: self.data[c].astype(float).tolist() for c in self.data.columns},
        }
        if include_samples and self.bootstrap_samples:
            out["bootstrap_samples"] = {k: v.tolist() for k, v in self.bootstrap_samples.items()}
        return out

    def to_json(self, include_samples: bool = True) -> str:
        def clean(o):
            if isinstance(o, float) and not math.isfinite(o):
                return None
            if isinstance(o, dict):
                return {k: clean(v) for k, v in o.items()}
            if isinstance(o, list):
                return [clean(v) for v in o]
            if isinstance(o, (np.floating, np.integer)):
                return clean(o.item())
            return o
        return json.dumps(clean(self.to_dict(include_samples)))

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FitResult":
        if not isinstance(d, Mapping) or d.get("format") != FORMAT:
            raise LawfitError(f"not a lawfit fit (expected \"format\": \"{FORMAT}\")")
        try:
            law = law_from_spec(d["law"], d["params"])
            samples = {k: np.array([math.nan if v is None else v for v in vals], float)
                       for k, vals in (d.get("bootstrap_samples") or {}).items()}
            res = cls(law=law, objective=_num(d.get("objective")), converged=d.get("converged", False),
                      message=d.get("message", ""), n_starts=d.get("n_starts", 0), n_at_best=d.get("n_at_best", 0),
                      starts=d.get("starts", ""), delta=_num(d.get("delta", 1e-3)),
                      data=pd.DataFrame({k: np.asarray(v, float) for k, v in (d.get("data") or {}).items()}),
                      notes=d.get("notes", []), bootstrap_samples=samples, ci_level=d.get("ci_level", 0.95),
                      bootstrap_failed=d.get("bootstrap_failed", 0), seed=d.get("seed", 0),
                      seconds=_num(d.get("seconds")), start_outcomes=d.get("start_outcomes"),
                      processes=int(d.get("processes", 1)))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, LawfitError):
                raise
            raise LawfitError(f"malformed lawfit fit: {type(exc).__name__}: {exc}") from None
        if not samples and d.get("ci"):
            res.ci = {k: (_num(v[0]), _num(v[1])) for k, v in d["ci"].items()}
        return res


def _num(v: Any) -> float:
    return math.nan if v is None else float(v)


def _g(v: float) -> str:
    v = float(v)
    if not math.isfinite(v):
        return "nan"
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
        return f"{v:.4e}"
    return f"{v:.5g}"


def load_fit(source: "str | os.PathLike | Mapping[str, Any]") -> Any:
    """A saved fit from a path, its JSON text, or the parsed dict: a :class:`FitResult`, or for a
    saved IsoFLOP analysis (``flopscale fit --law isoflop --save``) its allocation law
    (:class:`lawfit.allocation_laws.AllocationLaw`); both are accepted by ``lawfit.allocate``."""
    if isinstance(source, Mapping):
        d = source
    else:
        if isinstance(source, str) and source.lstrip().startswith("{"):
            text = source
        else:
            path = Path(source)
            if not path.exists():
                raise LawfitError(f"fit file not found: {path}")
            if path.is_dir():
                raise LawfitError(f"{path} is a directory, not a saved fit")
            try:
                text = path.read_bytes().decode("utf-8")
            except UnicodeDecodeError as exc:
                raise LawfitError(f"{path} is not a lawfit fit: not UTF-8 text (byte {exc.start})") from None
            except OSError as exc:
                raise LawfitError(f"cannot read {path}: {exc.strerror or exc}") from None
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LawfitError(f"fit file is not JSON: {exc.msg} at line {exc.lineno}") from None
    if isinstance(d, Mapping) and (d.get("format") == ISOFLOP_FORMAT or ("n_opt" in d and "d_opt" in d
                                                                           and "format" not in d)):
        return from_isoflop(d)
    return FitResult.from_dict(d)


# ==========================================================================================
def _make_starts(law: Law, x, logy, starts, rng) -> tuple[np.ndarray, str]:
    if isinstance(starts, str):
        if starts != "grid":
            raise LawfitError(f"starts must be 'grid', a number of random starts, or a list of parameter dicts; got {starts!r}")
        th = law._starts(x, logy, None, rng)
        desc = "grid of Hoffmann et al. 2022" if isinstance(law, Chinchilla) else "default grid"
        return th, desc
    if isinstance(starts, (int, np.integer)) and not isinstance(starts, bool):
        if starts < 1:
            raise LawfitError(f"starts must be at least 1, got {starts}")
        return law._starts(x, logy, int(starts), rng), "random design"
    if isinstance(starts, Sequence) and starts and all(isinstance(s, Mapping) for s in starts):
        return np.array([law._to_theta(law._check_params(s)) for s in starts]), "given"
    raise LawfitError(f"starts must be 'grid', a number of random starts, or a list of parameter dicts; got {starts!r}")


def fit(table: Any, law: "str | Law" = "chinchilla", columns: "str | Mapping[str, str] | None" = None,
        delta: float = 1e-3, starts: Any = "grid", bootstrap: int = 0, seed: int = 0, *,
        ci_level: float = 0.95, n_polish: int = 3, workers: "int | None" = None,
        exclude: Any = None) -> FitResult:
    """Fit a scaling law to a table of training runs.

    ``table``: a DataFrame or CSV path with the columns the law needs (``N`` parameters, ``D``
    tokens, ``C`` FLOP, ``loss``; ``columns={"N": "params"}`` maps names; ``D`` missing is
    derived as ``C/(6N)`` and said so in ``notes``).  ``law``: a name (``chinchilla``,
    ``kaplan_nd``, ``kaplan_n``, ``kaplan_d``, ``kaplan_c``, ``power_law``, ``bnsl``/``bnsl:K``,
    ``saturating``) or a :class:`lawfit.laws.Law`.  ``delta``: Huber threshold on log-loss
    residuals (``inf`` gives least squares).  ``starts``: ``"grid"`` (Hoffmann's 4,500 for
    Chinchilla), an int for a random design (seeded by ``seed``), or a list of parameter dicts.
    ``bootstrap``: number of resampled refits for percentile intervals at ``ci_level``.
    ``workers``: processes for large batches (default ``$LAWFIT_WORKERS`` or the usable CPUs;
    at most two are used, and the result is the same for any number; see ``SPLIT_MIN``).
    ``exclude``: runs to leave out: an int k (the k highest losses; Besiroglu et al. 2024 drop
    five), ``"highest-loss:5"``, ``"N < 1e8"`` (a row filter on N, D, C, loss or any column), or
    a list of these; each exclusion is listed in ``notes``.
    ``table`` may also name a shipped data set (``lawfit.datasets.names()``).

    Memory is bounded: the objective runs in row chunks sized to the number of runs, duplicate
    starts are merged only while their keys fit ``MERGE_BYTES``, and requests whose working set
    would pass ``MEMORY_LIMIT_BYTES`` (starts x parameters, bootstrap x runs) are refused.
    A fit whose data cannot determine the law (fewer distinct points than parameters + 1, or
    all losses equal) raises :class:`LawfitError` saying "not identifiable".
    """
    with _blas_single_thread():
        return _fit(table, law, columns, delta, starts, bootstrap, seed, ci_level, n_polish, workers, exclude)


class _blas_single_thread:
    """BLAS limited to one thread for the duration of a fit (threadpoolctl): the fit's own
    products are small, and a multithreaded BLAS's spinning threads would take the core that a
    second worker process (or another program) needs."""

    def __enter__(self):
        try:
            from threadpoolctl import threadpool_limits
            self._ctl = threadpool_limits(limits=1, user_api="blas")
        except Exception:  # noqa: BLE001 - threadpoolctl missing or unable: the fit still runs
            self._ctl = None
        return self

    def __exit__(self, *exc):
        if self._ctl is not None:
            self._ctl.restore_original_limits()
        return False


def _fit(table, law, columns, delta, starts, bootstrap, seed, ci_level, n_polish, workers, exclude) -> FitResult:
    t0 = time.perf_counter()
    base = get_law(law).unbound()
    if not (delta > 0):
        raise LawfitError(f"delta must be positive, got {delta}")
    if int(bootstrap) != bootstrap or bootstrap < 0:
        raise LawfitError(f"bootstrap must be a non-negative integer, got {bootstrap!r}")
    if not 0 < ci_level < 1:
        raise LawfitError(f"ci_level must be in (0, 1), got {ci_level}")
    _check_request(base, starts, int(bootstrap))
    df, notes = load_runs(table, base.inputs, columns, min_rows=1, exclude=exclude)
    _check_identifiable(base, df)
    _check_request(base, starts, int(bootstrap), len(df))
    x = _inputs_of(df, base.inputs)
    logy = np.log(df["loss"].to_numpy(dtype=float))
    rng = np.random.default_rng(seed)
    theta0, start_desc = _make_starts(base, x, logy, starts, rng)
    n_workers = resolve_workers(workers, lazy=True)     # CPUs measured only if a batch is split
    obj = Objective(base, x, logy, delta).conditioned()
    res = _multistart(obj, theta0, n_workers)
    finite = np.isfinite(res.f)
    if not finite.any():
        raise LawfitError(f"the {base.name} fit failed: the objective is not finite at any start")
    order = np.argsort(np.where(finite, res.f, np.inf))
    # polish the best end point and up to n_polish - 1 distinct others nearly as good: a
    # converged end point further than POLISH_GAP above the best cannot overtake it by a polish
    near_best = res.f <= res.f[order[0]] * (1 + POLISH_GAP)
    cand = _distinct(res.x, order[near_best[order]], n_polish, tol=1e-3)
    best = None
    for i in cand:
        p = polish(obj, obj.to_internal(res.x[i]))
        th, fv = (obj.to_external(p.x), float(p.fun)) if np.isfinite(p.fun) and p.fun <= res.f[i] else (res.x[i], float(res.f[i]))
        # a line-search stall or rounding-error stop at the optimum counts as converged;
        # an iteration limit does not
        ok = bool(p.success) or str(p.message).startswith("ABNORMAL") or "ROUNDING ERRORS" in str(p.message)
        if best is None or fv < best[1]:
            best = (th, fv, ok, _polish_message(p), int(p.nit))
    theta, fbest, ok, msg, _ = best
    params = {k: float(v) for k, v in base._from_theta(theta).items()}
    if not all(math.isfinite(v) for v in params.values()):
        ok = False
        msg = "non-finite parameters at the best optimum"
    fitted_law = base.with_params(params)
    gap_tol = SAME_OPTIMUM_RTOL * abs(fbest)
    near = (res.f <= fbest + gap_tol) | (np.max(np.abs(res.x - theta), axis=1) <= 1e-3)
    n_at_best = int(np.sum(near & finite))
    outcomes = {STATUS_TEXT[s]: int(np.sum(res.status == s)) for s in np.unique(res.status)}
    if res.n_merged:
        outcomes["merged with a duplicate start (counted in its outcome)"] = res.n_merged
    samples: dict[str, np.ndarray] = {}
    failed = boot_proc = 0
    if bootstrap:
        # warm starts: the optimum, and other local optima nearly as good (objective within 10%)
        warm = [theta] + [res.x[i] for i in _distinct(res.x, order, 8, tol=1e-2)
                          if np.max(np.abs(res.x[i] - theta)) > 1e-2 and res.f[i] <= 1.1 * fbest][:3]
        samples, failed, boot_proc = _bootstrap(base, x, logy, delta, np.array(warm), int(bootstrap), rng, n_workers)
    if ok and not _well_determined(base, theta, fbest, obj):
        raise LawfitError(f"the {base.name} fit is not identifiable from these {len(df)} runs: the best optimum "
                          "is flat in some parameter (the data do not determine every parameter); add runs "
                          "that vary N and D, or fit a law with fewer parameters")
    message = f"scipy L-BFGS-B polish: {msg}" if ok else f"did not converge: {msg}"
    return FitResult(law=fitted_law, objective=fbest, converged=ok, message=message, n_starts=len(theta0),
                     n_at_best=n_at_best, starts=start_desc, delta=delta, data=df, notes=notes,
                     bootstrap_samples=samples, ci_level=ci_level, bootstrap_failed=failed, seed=seed,
                     seconds=time.perf_counter() - t0, start_outcomes=outcomes, processes=max(res.processes, boot_proc))


# Memory.  The objective's working set per chunk of starts is a few arrays of chunk x runs
# (lawfit._optim.Objective sizes its chunk from the number of runs); what else grows with the
# request is checked here before any work: L-BFGS keeps ~2m+8 vectors of P numbers per start,
# a bootstrap keeps one weight per run per replicate, and merge keys hold 2n+1 numbers per start.
MEMORY_LIMIT_BYTES = 2 * 1024 ** 3
MERGE_BYTES = 256 * 1024 ** 2
MAX_STARTS = 2_000_000


def _check_request(law: Law, starts: Any, bootstrap: int, n_rows: int | None = None) -> None:
    """Refuse a request whose working set would pass ``MEMORY_LIMIT_BYTES`` (a clear error
    instead of a MemoryError or the OOM killer)."""
    P = law.n_params
    S = int(starts) if isinstance(starts, (int, np.integer)) and not isinstance(starts, bool) else 0
    if S > MAX_STARTS:
        raise LawfitError(f"starts={S:,} is more than lawfit's limit of {MAX_STARTS:,} starts "
                          f"(memory grows with the number of starts); use fewer starts")
    warm = 4
    if bootstrap * warm > MAX_STARTS:
        raise LawfitError(f"bootstrap={bootstrap:,} is more than lawfit's limit of {MAX_STARTS // warm:,} "
                          "replicates (each refit from up to 4 warm starts); use fewer replicates")
    if n_rows is None:
        return
    need = 8 * (max(S, 4500) * P * 30 + bootstrap * n_rows * 2 + bootstrap * warm * P * 30)
    if S and law.name != "chinchilla":
        need += 8 * S * n_rows * 4          # random starts are placed from the data, [S, n] arrays
    if need > MEMORY_LIMIT_BYTES:
        raise LawfitError(f"this fit would need about {need / 1024 ** 3:.1f} GiB ({n_rows:,} runs, "
                          f"{S or 'grid'} starts, bootstrap {bootstrap:,}); lawfit's limit is "
                          f"{MEMORY_LIMIT_BYTES / 1024 ** 3:.0f} GiB: use fewer bootstrap replicates or starts")


def _check_identifiable(law: Law, df: pd.DataFrame) -> None:
    """Raise "not identifiable" when the runs cannot determine every parameter of the law:
    fewer distinct input points than parameters + 1, or one loss value for every run."""
    pts = df[list(law.inputs)].drop_duplicates()
    n_pts, P = len(pts), law.n_params
    if n_pts < P + 1:
        raise LawfitError(f"the {law.name} fit is not identifiable: {n_pts} distinct "
                          f"({', '.join(law.inputs)}) point{'s' if n_pts != 1 else ''} for {P} parameters "
                          f"(at least {P + 1} are needed, more for a meaningful fit)")
    y = df["loss"].to_numpy(float)
    if np.ptp(y) <= 1e-12 * np.max(np.abs(y)):
        raise LawfitError(f"the {law.name} fit is not identifiable: every run has the same loss ({y[0]:g}), "
                          "so no scaling can be measured")


def _polish_message(p) -> str:
    """scipy's stop reason in words (its line-search stop reads 'ABNORMAL: ' in recent versions)."""
    msg = str(p.message).strip()
    if msg.startswith("ABNORMAL") or "ROUNDING ERRORS" in msg or "LNSRCH" in msg:
        return "stopped at the optimum: the line search found no further decrease"
    return msg or ("converged" if p.success else "stopped")


def _well_determined(law: Law, theta: np.ndarray, f: float, obj: "Objective | Conditioned") -> bool:
    """False when the optimum is not finite or its parameters run off to a degenerate limit
    (an exponent at ~0 with a scale that absorbs the loss: the data do not pin them down)."""
    params = law._from_theta(theta)
    vals = np.array([float(v) for v in params.values()])
    if not np.all(np.isfinite(vals)):
        return False
    if isinstance(law, Chinchilla):
        al, be = float(params["alpha"]), float(params["beta"])
        if al < 1e-6 or be < 1e-6 or abs(theta[0]) > 200 or abs(theta[1]) > 200:
            return False
    return True


def _multistart(obj: "Objective | Conditioned", theta0: np.ndarray, workers: int, merge: bool = True) -> BatchResult:
    """Batched L-BFGS of ``obj`` from every start in ``theta0`` (the law's own parameters):
    duplicates merged before the first step and on ``FIT_MERGE``'s schedule (``merge=False``:
    every start runs alone), the rest split into blocks (``_run_split``).  End points and
    gradients are returned in the law's own parameters."""
    z0 = obj.to_internal(theta0)
    floor = FIT_MERGE["term_floor"]
    # merge keys are [starts, 2 runs + 1]: with very many runs they would not fit in memory,
    # and merging is only a saving (the outcome is the same), so it is skipped
    merge = merge and len(z0) * (2 * getattr(obj, "obj", obj).n + 1) * 8 <= MERGE_BYTES
    key0 = obj.merge_key(z0, floor) if merge else None
    if key0 is None:                          # nothing to merge: every start runs
        rep0, key = np.arange(len(z0)), None
    else:                                     # the same model before any step
        rep0, key = _duplicates(key0, FIT_MERGE["merge_tol"]), (lambda Zs, r: obj.merge_key(Zs, floor))
    uniq = np.flatnonzero(rep0 == np.arange(len(z0)))
    res = _run_split(lambda Z, rows, lab: batched_lbfgs(lambda Zs, r: obj(Zs), Z, merge_key=key, labels=lab,
                                                        merge_at=FIT_MERGE["merge_at"], merge_tol=FIT_MERGE["merge_tol"],
                                                        **FIT_TOL),
                     z0[uniq], workers).spread(uniq, rep0)
    res.x = obj.to_external(res.x)
    res.g = obj.gradient_to_external(res.g)
    return res


def _run_split(run, z0: np.ndarray, workers: "int | str", unit: int = 1) -> BatchResult:
    """``run(Z, rows, labels)`` on all starts ``z0``; from ``SPLIT_MIN`` starts on, as two blocks
    (halves, cut at a multiple of ``unit`` starts) run in parallel processes, or together in one
    call with block labels when only one CPU is usable."""
    S = len(z0)
    if S < SPLIT_MIN:
        return run(z0, np.arange(S), None)
    cut = (S // unit // 2) * unit
    labels = (np.arange(S) >= cut).astype(np.int64)
    workers = workers_now(workers)
    if workers < 2 or not can_fork():
        return run(z0, np.arange(S), labels)
    index = [np.arange(cut), np.arange(cut, S)]
    parts, in_children = run_blocks(lambda i: run(z0[index[i]], index[i], None), 2, workers)
    return BatchResult.join(parts, index, S, processes=1 + in_children)


def _bootstrap(law: Law, x, logy, delta: float, warm: np.ndarray, k: int, rng: np.random.Generator,
               workers: int = 1) -> tuple[dict[str, np.ndarray], int, int]:
    """Refit ``k`` resamples of the runs (multinomial weights), all replicates and warm starts
    batched together; returns natural-parameter samples (and derived ones) and the failure count."""
    n = len(logy)
    W = rng.multinomial(n, np.full(n, 1.0 / n), size=k).astype(float)
    s = len(warm)
    theta0 = np.tile(warm, (k, 1))
    groups = np.repeat(np.arange(k), s)
    obj = Objective(law, x, logy, delta, weights=W).conditioned()
    res = _run_split(lambda Z, rows, lab: batched_lbfgs(lambda Zs, r: obj(Zs, groups[rows[r]]), Z, **BOOT_TOL),
                     obj.to_internal(theta0), workers, unit=s)
    res.x = obj.to_external(res.x)
    f = np.where(np.isfinite(res.f) & (res.status != BAD_START), res.f, np.inf).reshape(k, s)
    pick = np.argmin(f, axis=1)
    thetas = res.x.reshape(k, s, -1)[np.arange(k), pick]
    good = np.isfinite(f[np.arange(k), pick]) & np.all(np.isfinite(thetas), axis=1)
    thetas = thetas[good]
    p = law._from_theta(thetas)
    out = {name: np.asarray(p[name], float) for name in law.param_names}
    for name, v in law.derived(out).items():
        out[name] = np.asarray(v, float)
    return out, int(k - good.sum()), res.processes
