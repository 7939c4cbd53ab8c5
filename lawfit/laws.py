"""Scaling laws: vectorised, with named parameters and a readable formula.

Every law maps inputs (parameters ``N``, tokens ``D``, compute ``C`` in FLOP, or a generic ``x``)
to a loss.  A law is *unbound* (a form to fit) or *bound* (parameter values attached)::

    >>> law = Chinchilla(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
    >>> law(N=7e10, D=1.4e12)          # broadcasts like numpy
    >>> law.evaluate(params, N=..., D=...)   # any parameter values, also arrays

Units: ``N`` counts parameters (whether embeddings are included is a property of the data or
of the published fit, see :mod:`lawfit.published`), ``D`` counts training tokens, ``C`` is
training compute in FLOP (1 PF-day = 8.64e19 FLOP).  Losses are in whatever unit the data
used (nats per token for the published language-model fits).

For fitting, each law also has an internal parameter vector ``theta`` (log of the positive
scales, exponents as they are) and computes ``log(prediction)`` with its analytic gradient,
batched over many parameter vectors at once (see :mod:`lawfit.fitting`).
"""
from __future__ import annotations

import itertools
import math
import re
from typing import Any, Callable, Mapping

import numpy as np

from ._errors import LawfitError

PF_DAY = 8.64e19
"""FLOP in one PF-day (1e15 FLOP/s for 86,400 s)."""

Backward = Callable[[np.ndarray], np.ndarray]


def _fmt(v: float) -> str:
    v = float(v)
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
        return f"{v:.4g}"
    return f"{v:.5g}"


def _lse2(t1: np.ndarray, t2: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """log(exp(t1) + exp(t2)) and the two softmax weights, stably."""
    m = np.maximum(t1, t2)
    e1 = np.exp(t1 - m)
    e2 = np.exp(t2 - m)
    s = e1 + e2
    return m + np.log(s), e1 / s, e2 / s


def _softplus(z: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, z)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


class Law:
    """Base class of a scaling law.

    Subclasses define ``name``, ``inputs``, ``formula``, the parameter names and the four
    fitting hooks (``_to_theta``, ``_from_theta``, ``_logpred_backward``, ``_starts``).
    """

    name: str = "law"
    formula: str = ""
    reference: str = ""
    _inputs: tuple[str, ...] = ()
    _param_names: tuple[str, ...] = ()
    _option_names: tuple[str, ...] = ()

    def __init__(self, params: Mapping[str, float] | None = None, **kwargs: Any) -> None:
        opts = {k: kwargs.pop(k) for k in list(kwargs) if k in self._option_names}
        self._set_options(**opts)
        merged = dict(params or {})
        merged.update(kwargs)
        self._params: dict[str, float] | None = None
        if merged:
            self._params = self._check_params(merged)

    # -- structure ---------------------------------------------------------------------
    def _set_options(self, **opts: Any) -> None:
        if opts:
            raise TypeError(f"unexpected options {sorted(opts)}")

    def options(self) -> dict[str, Any]:
        """Structural options (for ``to_json`` and ``with_params``)."""
        return {}

    @property
    def inputs(self) -> tuple[str, ...]:
        """Names of the input variables, e.g. ``("N", "D")``."""
        return self._inputs

    @property
    def param_names(self) -> tuple[str, ...]:
        return self._param_names

    @property
    def n_params(self) -> int:
        return len(self.param_names)

    @property
    def params(self) -> dict[str, float] | None:
        """Parameter values (a copy), or None for an unfitted law."""
        return None if self._params is None else dict(self._params)

    @property
    def bound(self) -> bool:
        return self._params is not None

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "options": self.options()}

    def with_params(self, params: Mapping[str, float] | None = None, **kwargs: Any) -> "Law":
        """The same law form with these parameter values."""
        merged = dict(params or {})
        merged.update(kwargs)
        return type(self)(merged, **self.options())

    def unbound(self) -> "Law":
        return type(self)(None, **self.options())

    def _check_params(self, p: Mapping[str, float]) -> dict[str, float]:
        names = self.param_names
        missing = [n for n in names if n not in p]
        extra = [n for n in p if n not in names]
        if missing or extra:
            raise LawfitError(
                f"{self.name} takes parameters {', '.join(names)}"
                + (f"; missing {', '.join(missing)}" if missing else "")
                + (f"; unknown {', '.join(extra)}" if extra else "")
            )
        out = {}
        for n in names:
            v = float(p[n])
            if not math.isfinite(v):
                raise LawfitError(f"{self.name}: parameter {n} must be finite, got {p[n]!r}")
            out[n] = v
        return out

    def __repr__(self) -> str:
        opts = "".join(f", {k}={v!r}" for k, v in self.options().items())
        if self._params is None:
            vals = "unfitted"
        else:
            vals = ", ".join(f"{k}={_fmt(v)}" for k, v in self._params.items())
        return f"{type(self).__name__}({self.formula}; {vals}{opts})"

    # -- evaluation --------------------------------------------------------------------
    def _check_inputs(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        missing = [n for n in self.inputs if n not in inputs]
        extra = [n for n in inputs if n not in self.inputs]
        if missing or extra:
            raise LawfitError(
                f"{self.name} takes inputs {', '.join(self.inputs)}"
                + (f"; missing {', '.join(missing)}" if missing else "")
                + (f"; unknown {', '.join(extra)}" if extra else "")
            )
        return {n: np.asarray(inputs[n], dtype=float) for n in self.inputs}

    def evaluate(self, params: Mapping[str, Any], **inputs: Any) -> Any:
        """The law at ``inputs`` for the given parameter values (scalars or broadcastable arrays)."""
        x = self._check_inputs(inputs)
        p = {n: np.asarray(params[n], dtype=float) for n in self.param_names}
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            out = np.asarray(self._evaluate(p, x), dtype=float)
        return float(out) if out.ndim == 0 else out

    def __call__(self, **inputs: Any) -> Any:
        if self._params is None:
            raise LawfitError(f"{self.name} has no parameter values: fit it or use with_params(...)")
        return self.evaluate(self._params, **inputs)

    predict = __call__

    def _evaluate(self, p: dict[str, np.ndarray], x: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def derived(self, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Quantities derived from the parameters (none for most laws)."""
        return {}

    _units: dict[str, str] = {}

    def unit(self, name: str) -> str:
        """The unit of a parameter, in words ("1" for a pure number)."""
        if name in self._units:
            return self._units[name]
        if name.startswith("c") or name.startswith("f") or name.startswith("alpha") or name == "beta":
            return "1"
        if name.startswith("d"):
            return f"{self.inputs[0]} units"
        return "1"

    # -- fitting hooks -----------------------------------------------------------------
    @property
    def theta_names(self) -> tuple[str, ...]:
        return self.param_names

    def _to_theta(self, p: Mapping[str, float]) -> np.ndarray:
        raise NotImplementedError

    def _from_theta(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _logpred_backward(self, theta: np.ndarray, x: dict[str, np.ndarray]) -> tuple[np.ndarray, Backward]:
        """log(prediction) for each row of ``theta`` [S, P] at the n data points -> [S, n], and
        ``backward(u [S, n]) -> [S, P]`` = sum_i u_i * d logpred_i / d theta."""
        raise NotImplementedError

    def _starts(self, x: dict[str, np.ndarray], logy: np.ndarray, n_random: int | None,
                rng: np.random.Generator) -> np.ndarray:
        """Initial ``theta`` rows: the default grid (``n_random is None``) or a random design."""
        raise NotImplementedError


def _safe_median(v: np.ndarray, axis: int = -1) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        out = np.nanmedian(np.where(np.isfinite(v), v, np.nan), axis=axis)
    return np.where(np.isfinite(out), out, 0.0)


# ==========================================================================================
# Chinchilla
# ==========================================================================================
class Chinchilla(Law):
    """``L(N, D) = E + A/N^alpha + B/D^beta`` (Hoffmann et al. 2022, Approach 3).

    ``N`` parameters, ``D`` training tokens, ``L`` loss (nats/token in the paper).  Under
    ``C = 6ND`` the compute-optimal allocation is closed-form: ``N_opt = G (C/6)^a``,
    ``D_opt = (C/6)^b / G`` with ``a = beta/(alpha+beta)``, ``b = alpha/(alpha+beta)``,
    ``G = (alpha A / (beta B))^(1/(alpha+beta))`` (see :meth:`derived`).

    Fitting parametrisation (Hoffmann et al.): ``theta = (a, b, e, alpha, beta)`` with
    ``A = exp(a)``, ``B = exp(b)``, ``E = exp(e)``, so that
    ``log L = LSE(a - alpha log N, b - beta log D, e)``.
    """

    name = "chinchilla"
    formula = "L(N, D) = E + A/N^alpha + B/D^beta"
    reference = "Hoffmann et al. 2022, Training Compute-Optimal Large Language Models, Approach 3"
    _inputs = ("N", "D")
    _param_names = ("E", "A", "B", "alpha", "beta")
    _units = {"E": "loss", "A": "loss*params^alpha", "B": "loss*tokens^beta", "alpha": "1", "beta": "1",
              "a": "1", "b": "1", "G": "params/FLOP^a"}
    # Hoffmann et al. 2022, Appendix D.2: alpha, beta in {0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1},
    # a, b in {0, 5, ..., 25}: 5 * 5 * 5 * 6 * 6 = 4,500 starts.
    GRID_A = np.arange(0.0, 30.0, 5.0)
    GRID_B = np.arange(0.0, 30.0, 5.0)
    GRID_E = np.arange(-1.0, 1.5, 0.5)
    GRID_ALPHA = np.arange(0.0, 2.5, 0.5)
    GRID_BETA = np.arange(0.0, 2.5, 0.5)

    def _evaluate(self, p, x):
        return p["E"] + p["A"] * x["N"] ** (-p["alpha"]) + p["B"] * x["D"] ** (-p["beta"])

    def derived(self, params=None):
        """``a``, ``b`` (exponents of N_opt and D_opt in C) and ``G`` (see the class docstring)."""
        p = self._params if params is None else params
        if p is None:
            return {}
        al, be = np.asarray(p["alpha"], float), np.asarray(p["beta"], float)
        A, B = np.asarray(p["A"], float), np.asarray(p["B"], float)
        with np.errstate(all="ignore"):
            s = al + be
            out = {"a": be / s, "b": al / s, "G": (al * A / (be * B)) ** (1.0 / s)}
        return {k: (float(v) if np.ndim(v) == 0 else v) for k, v in out.items()}

    @property
    def theta_names(self):
        return ("log_A", "log_B", "log_E", "alpha", "beta")

    def _to_theta(self, p):
        return np.array([math.log(p["A"]), math.log(p["B"]), math.log(p["E"]), p["alpha"], p["beta"]])

    def _from_theta(self, theta):
        theta = np.asarray(theta, float)
        with np.errstate(over="ignore"):
            return {"E": np.exp(theta[..., 2]), "A": np.exp(theta[..., 0]), "B": np.exp(theta[..., 1]),
                    "alpha": theta[..., 3], "beta": theta[..., 4]}

    def _logpred_backward(self, theta, x):
        a, b, e, al, be = (theta[:, i:i + 1] for i in range(5))
        lN, lD = x["log_N"], x["log_D"]
        t1 = a - al * lN
        t2 = b - be * lD
        t3 = np.broadcast_to(e, t1.shape)
        m = np.maximum(np.maximum(t1, t2), t3)
        e1, e2, e3 = np.exp(t1 - m), np.exp(t2 - m), np.exp(t3 - m)
        s = e1 + e2 + e3
        lp = m + np.log(s)
        w1, w2, w3 = e1 / s, e2 / s, e3 / s

        def backward(u):
            u1, u2 = u * w1, u * w2
            return np.stack([u1.sum(1), u2.sum(1), (u * w3).sum(1), -(u1 @ lN), -(u2 @ lD)], axis=1)

        return lp, backward

    def _starts(self, x, logy, n_random, rng):
        if n_random is None:
            return np.array(list(itertools.product(self.GRID_A, self.GRID_B, self.GRID_E,
                                                   self.GRID_ALPHA, self.GRID_BETA)), dtype=float)
        lo = np.array([self.GRID_A[0], self.GRID_B[0], self.GRID_E[0], self.GRID_ALPHA[0], self.GRID_BETA[0]])
        hi = np.array([self.GRID_A[-1], self.GRID_B[-1], self.GRID_E[-1], self.GRID_ALPHA[-1], self.GRID_BETA[-1]])
        return lo + (hi - lo) * rng.random((n_random, 5))


# ==========================================================================================
# Kaplan et al. 2020
# ==========================================================================================
class _KaplanSingle(Law):
    """``L(v) = (v_c / v)^alpha``: one-variable pure power law of Kaplan et al. 2020."""

    _var = "N"

    @property
    def _pn(self):
        return self._param_names  # (alpha_X, X_c)

    def _evaluate(self, p, x):
        a, vc = self._pn
        return (p[vc] / x[self._var]) ** p[a]

    @property
    def theta_names(self):
        return (self._pn[0], "log_" + self._pn[1])

    def _to_theta(self, p):
        return np.array([p[self._pn[0]], math.log(p[self._pn[1]])])

    def _from_theta(self, theta):
        theta = np.asarray(theta, float)
        with np.errstate(over="ignore"):
            return {self._pn[0]: theta[..., 0], self._pn[1]: np.exp(theta[..., 1])}

    def _logpred_backward(self, theta, x):
        al, lc = theta[:, 0:1], theta[:, 1:2]
        lv = x["log_" + self._var]
        diff = lc - lv
        lp = al * diff

        def backward(u):
            return np.stack([(u * diff).sum(1), (u * al).sum(1)], axis=1)

        return lp, backward

    def _starts(self, x, logy, n_random, rng):
        lv = x["log_" + self._var]
        if n_random is None:
            al = np.geomspace(0.005, 2.0, 24)
        else:
            al = np.exp(rng.uniform(math.log(0.005), math.log(2.0), n_random))
        lc = np.mean(logy[None, :] / al[:, None] + lv[None, :], axis=1)  # exact least squares for each alpha
        return np.stack([al, lc], axis=1)


class KaplanN(_KaplanSingle):
    """``L(N) = (N_c/N)^alpha_N`` (Kaplan et al. 2020, Eq. 1.1; N excludes embeddings)."""

    name = "kaplan_n"
    formula = "L(N) = (N_c/N)^alpha_N"
    reference = "Kaplan et al. 2020, Scaling Laws for Neural Language Models, Eq. 1.1"
    _inputs = ("N",)
    _param_names = ("alpha_N", "N_c")
    _units = {"alpha_N": "1", "N_c": "params"}
    _var = "N"


class KaplanD(_KaplanSingle):
    """``L(D) = (D_c/D)^alpha_D`` (Kaplan et al. 2020, Eq. 1.2; D in tokens, early-stopped)."""

    name = "kaplan_d"
    formula = "L(D) = (D_c/D)^alpha_D"
    reference = "Kaplan et al. 2020, Scaling Laws for Neural Language Models, Eq. 1.2"
    _inputs = ("D",)
    _param_names = ("alpha_D", "D_c")
    _units = {"alpha_D": "1", "D_c": "tokens"}
    _var = "D"


class KaplanC(_KaplanSingle):
    """``L(C_min) = (C_c/C_min)^alpha_C`` (Kaplan et al. 2020, Eq. 1.3).

    Here ``C`` is in FLOP and so is ``C_c`` (the paper quotes C_c in PF-days; multiply by
    :data:`PF_DAY`).  ``C_min`` is the compute at the critical batch size, see
    :func:`minimum_compute`.
    """

    name = "kaplan_c"
    formula = "L(C) = (C_c/C)^alpha_C"
    reference = "Kaplan et al. 2020, Scaling Laws for Neural Language Models, Eq. 1.3"
    _inputs = ("C",)
    _param_names = ("alpha_C", "C_c")
    _units = {"alpha_C": "1", "C_c": "FLOP"}
    _var = "C"


class KaplanND(Law):
    """``L(N, D) = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D`` (Kaplan et al. 2020, Eq. 1.5)."""

    name = "kaplan_nd"
    formula = "L(N, D) = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D"
    reference = "Kaplan et al. 2020, Scaling Laws for Neural Language Models, Eq. 1.5"
    _inputs = ("N", "D")
    _param_names = ("alpha_N", "alpha_D", "N_c", "D_c")
    _units = {"alpha_N": "1", "alpha_D": "1", "N_c": "params", "D_c": "tokens"}

    def _evaluate(self, p, x):
        return ((p["N_c"] / x["N"]) ** (p["alpha_N"] / p["alpha_D"]) + p["D_c"] / x["D"]) ** p["alpha_D"]

    @property
    def theta_names(self):
        return ("alpha_N", "alpha_D", "log_N_c", "log_D_c")

    def _to_theta(self, p):
        return np.array([p["alpha_N"], p["alpha_D"], math.log(p["N_c"]), math.log(p["D_c"])])

    def _from_theta(self, theta):
        theta = np.asarray(theta, float)
        with np.errstate(over="ignore"):
            return {"alpha_N": theta[..., 0], "alpha_D": theta[..., 1],
                    "N_c": np.exp(theta[..., 2]), "D_c": np.exp(theta[..., 3])}

    def _logpred_backward(self, theta, x):
        aN, aD, lNc, lDc = (theta[:, i:i + 1] for i in range(4))
        dN = lNc - x["log_N"]
        r = aN / aD
        u1 = r * dN
        u2 = lDc - x["log_D"]
        ls, w1, w2 = _lse2(u1, u2)
        lp = aD * ls

        def backward(u):
            uw1 = u * w1
            return np.stack([(uw1 * dN).sum(1), (u * (ls - w1 * u1)).sum(1),
                             (uw1 * aN).sum(1), (u * w2 * aD).sum(1)], axis=1)

        return lp, backward

    def _starts(self, x, logy, n_random, rng):
        lN, lD = x["log_N"], x["log_D"]
        if n_random is None:
            aN = np.array([0.03, 0.07, 0.15, 0.3, 0.6])
            aD = np.array([0.03, 0.07, 0.15, 0.3, 0.6])
            off = np.array([-2.0, 0.0, 2.0])
            g = np.array(list(itertools.product(aN, aD, off, off)))
        else:
            g = np.column_stack([np.exp(rng.uniform(math.log(0.01), math.log(1.0), (n_random, 2))),
                                 rng.uniform(-3, 3, (n_random, 2))])
        lNc = np.mean(logy[None] / g[:, 0:1] + lN[None], axis=1) + g[:, 2]
        lDc = np.mean(logy[None] / g[:, 1:2] + lD[None], axis=1) + g[:, 3]
        return np.column_stack([g[:, 0], g[:, 1], lNc, lDc])


def critical_batch_size(loss: Any, b_star: float = 2e8, alpha_b: float = 0.21) -> Any:
    """Critical batch size in tokens, ``B_crit(L) = B* / L^(1/alpha_B)`` (Kaplan et al. 2020, Eq. 1.4).

    ``loss`` in nats/token (Kaplan's WebText2 tokenisation); ``B* ~ 2e8`` tokens, ``alpha_B ~ 0.21``.
    Training at ``B = B_crit`` costs twice the minimum compute and twice the minimum steps.
    """
    with np.errstate(all="ignore"):
        out = b_star / np.asarray(loss, float) ** (1.0 / alpha_b)
    return float(out) if np.ndim(out) == 0 else out


def compute_overhead(batch_size: Any, loss: Any, b_star: float = 2e8, alpha_b: float = 0.21) -> Any:
    """``C / C_min = 1 + B / B_crit(L)``: how much more compute a batch of ``B`` tokens costs than
    the minimum at the same loss (Kaplan et al. 2020, Eq. 5.5)."""
    out = 1.0 + np.asarray(batch_size, float) / np.asarray(critical_batch_size(loss, b_star, alpha_b))
    return float(out) if np.ndim(out) == 0 else out


def minimum_compute(compute: Any, batch_size: Any, loss: Any, b_star: float = 2e8, alpha_b: float = 0.21) -> Any:
    """``C_min = C / (1 + B/B_crit(L))`` in the unit of ``compute`` (Kaplan et al. 2020, Eq. 5.5)."""
    out = np.asarray(compute, float) / compute_overhead(batch_size, loss, b_star, alpha_b)
    return float(out) if np.ndim(out) == 0 else out


def minimum_steps(steps: Any, batch_size: Any, loss: Any, b_star: float = 2e8, alpha_b: float = 0.21) -> Any:
    """``S_min = S / (1 + B_crit(L)/B)`` (Kaplan et al. 2020, Eq. 5.4)."""
    bc = np.asarray(critical_batch_size(loss, b_star, alpha_b))
    out = np.asarray(steps, float) / (1.0 + bc / np.asarray(batch_size, float))
    return float(out) if np.ndim(out) == 0 else out


def kaplan_optimal_params(c_min: Any, coef: float = 1.3e9, exponent: float = 0.73) -> Any:
    """Kaplan's compute-efficient model size ``N_opt = 1.3e9 * (C_min / 1 PF-day)^0.73``.

    ``c_min`` in FLOP (converted to PF-days inside); the result counts non-embedding parameters.
    """
    out = coef * (np.asarray(c_min, float) / PF_DAY) ** exponent
    return float(out) if np.ndim(out) == 0 else out


# ==========================================================================================
# One-variable laws
# ==========================================================================================
class _OneVar(Law):
    _option_names = ("variable",)
    _default_var = "x"

    def _set_options(self, variable: str | None = None, **rest: Any) -> None:
        super()._set_options(**rest)
        self.variable = variable or self._default_var

    def options(self):
        return {"variable": self.variable} if self.variable != self._default_var else {}

    @property
    def inputs(self):
        return (self.variable,)

    def _xv(self, x):
        return x[self.variable]

    def _lx(self, x):
        return x["log_" + self.variable]


class PowerLaw(_OneVar):
    """``y = a + b * x^(-c)`` (Henighan et al. 2020 form); ``offset=False`` gives ``y = b * x^(-c)``.

    ``variable`` names the input column (default ``x``; e.g. ``PowerLaw(variable="N")``).
    """

    name = "power_law"
    reference = "Henighan et al. 2020, Scaling Laws for Autoregressive Generative Modeling"
    _option_names = ("variable", "offset")

    def _set_options(self, variable: str | None = None, offset: bool = True, **rest: Any) -> None:
        super()._set_options(variable=variable, **rest)
        self.offset = bool(offset)

    def options(self):
        out = super().options()
        if not self.offset:
            out["offset"] = False
        return out

    @property
    def formula(self):  # type: ignore[override]
        v = self.variable
        return f"y = a + b*{v}^(-c)" if self.offset else f"y = b*{v}^(-c)"

    @property
    def param_names(self):
        return ("a", "b", "c") if self.offset else ("b", "c")

    def unit(self, name):
        return {"a": "y", "b": f"y*{self.variable}^c", "c": "1"}.get(name, "1")

    def _evaluate(self, p, x):
        out = p["b"] * self._xv(x) ** (-p["c"])
        return out + p["a"] if self.offset else out

    @property
    def theta_names(self):
        return ("log_a", "log_b", "c") if self.offset else ("log_b", "c")

    def _to_theta(self, p):
        t = [math.log(p["b"]), p["c"]]
        return np.array(([math.log(p["a"])] if self.offset else []) + t)

    def _from_theta(self, theta):
        theta = np.asarray(theta, float)
        with np.errstate(over="ignore"):
            if self.offset:
                return {"a": np.exp(theta[..., 0]), "b": np.exp(theta[..., 1]), "c": theta[..., 2]}
            return {"b": np.exp(theta[..., 0]), "c": theta[..., 1]}

    def _logpred_backward(self, theta, x):
        lx = self._lx(x)
        if not self.offset:
            lb, c = theta[:, 0:1], theta[:, 1:2]
            lp = lb - c * lx

            def backward(u):
                return np.stack([u.sum(1), -(u @ lx)], axis=1)

            return lp, backward
        la, lb, c = theta[:, 0:1], theta[:, 1:2], theta[:, 2:3]
        t2 = lb - c * lx
        lp, w1, w2 = _lse2(np.broadcast_to(la, t2.shape), t2)

        def backward(u):
            u2 = u * w2
            return np.stack([(u * w1).sum(1), u2.sum(1), -(u2 @ lx)], axis=1)

        return lp, backward

    def _starts(self, x, logy, n_random, rng):
        lx = self._lx(x)
        y = np.exp(logy)
        if n_random is None:
            cs = np.geomspace(0.02, 3.0, 10)
            fr = np.array([0.05, 0.3, 0.6, 0.85, 0.95, 0.99])
            g = np.array(list(itertools.product(fr, cs)))
        else:
            g = np.column_stack([rng.uniform(0.01, 0.995, n_random),
                                 np.exp(rng.uniform(math.log(0.01), math.log(4.0), n_random))])
        if not self.offset:
            c = np.unique(g[:, 1])
            lb = np.mean(logy[None] + c[:, None] * lx[None], axis=1)
            return np.column_stack([lb, c])
        a = g[:, 0] * y.min()
        c = g[:, 1]
        with np.errstate(invalid="ignore", divide="ignore"):
            lb = _safe_median(np.log(y[None] - a[:, None]) + c[:, None] * lx[None], axis=1)
        return np.column_stack([np.log(a), lb, c])


class BNSL(_OneVar):
    """Smoothly broken power law of Caballero et al. 2022 with any number of breaks::

        y = a + b * x^(-c0) * prod_i (1 + (x/d_i)^(1/f_i))^(-c_i * f_i)

    ``a >= 0`` (limit), ``b > 0``, ``c0`` the first slope, and per break ``i``: ``c_i`` the change
    of slope, ``d_i > 0`` where it happens, ``f_i > 0`` how sharp it is (smaller is sharper).
    Parameters are named ``a, b, c0, c1, d1, f1, c2, d2, f2, ...``.  Default starts: a grid of
    216 for one break (breaks at the 20-80% quantiles of log x), 500 random ones (seeded)
    for more breaks; ``b`` of each start is set from the data.
    """

    name = "bnsl"
    formula = "y = a + b*x^(-c0) * prod_i (1 + (x/d_i)^(1/f_i))^(-c_i*f_i)"
    reference = "Caballero et al. 2022, Broken Neural Scaling Laws"
    _option_names = ("variable", "n_breaks")

    def __init__(self, params: Mapping[str, float] | None = None, **kwargs: Any) -> None:
        if "n_breaks" not in kwargs:
            names = (set(params or {}) | set(kwargs)) - set(self._option_names)
            k = 0
            while {f"c{k + 1}", f"d{k + 1}", f"f{k + 1}"} <= names:
                k += 1
            kwargs["n_breaks"] = k if names else 1
        super().__init__(params, **kwargs)

    def _set_options(self, variable: str | None = None, n_breaks: int = 1, **rest: Any) -> None:
        super()._set_options(variable=variable, **rest)
        if int(n_breaks) != n_breaks or n_breaks < 0:
            raise LawfitError(f"bnsl: n_breaks must be a non-negative integer, got {n_breaks!r}")
        self.n_breaks = int(n_breaks)

    def options(self):
        out = super().options()
        out["n_breaks"] = self.n_breaks
        return out

    @property
    def param_names(self):
        return ("a", "b", "c0") + tuple(f"{s}{i}" for i in range(1, self.n_breaks + 1) for s in "cdf")

    def unit(self, name):
        if name == "a":
            return "y"
        if name == "b":
            return f"y*{self.variable}^c0"
        if name.startswith("d"):
            return f"{self.variable} units"
        return "1"

    def _evaluate(self, p, x):
        xv = self._xv(x)
        out = p["b"] * xv ** (-p["c0"])
        for i in range(1, self.n_breaks + 1):
            out = out * (1.0 + (xv / p[f"d{i}"]) ** (1.0 / p[f"f{i}"])) ** (-p[f"c{i}"] * p[f"f{i}"])
        return p["a"] + out

    @property
    def theta_names(self):
        return ("log_a", "log_b", "c0") + tuple(
            n for i in range(1, self.n_breaks + 1) for n in (f"c{i}", f"log_d{i}", f"log_f{i}"))

    def _to_theta(self, p):
        t = [math.log(p["a"]), math.log(p["b"]), p["c0"]]
        for i in range(1, self.n_breaks + 1):
            t += [p[f"c{i}"], math.log(p[f"d{i}"]), math.log(p[f"f{i}"])]
        return np.array(t)

    def _from_theta(self, theta):
        theta = np.asarray(theta, float)
        with np.errstate(over="ignore"):
            out = {"a": np.exp(theta[..., 0]), "b": np.exp(theta[..., 1]), "c0": theta[..., 2]}
            for i in range(1, self.n_breaks + 1):
                j = 3 * i
                out[f"c{i}"] = theta[..., j]
                out[f"d{i}"] = np.exp(theta[..., j + 1])
                out[f"f{i}"] = np.exp(theta[..., j + 2])
        return out

    def _logpred_backward(self, theta, x):
        lx = self._lx(x)
        la, lb, c0 = theta[:, 0:1], theta[:, 1:2], theta[:, 2:3]
        t = lb - c0 * lx
        parts = []
        for i in range(1, self.n_breaks + 1):
            j = 3 * i
            ci, ldi, lfi = theta[:, j:j + 1], theta[:, j + 1:j + 2], theta[:, j + 2:j + 3]
            fi = np.exp(lfi)
            z = (lx - ldi) / fi
            sp = _softplus(z)
            sg = _sigmoid(z)
            t = t - ci * fi * sp
            parts.append((ci, fi, z, sp, sg))
        lp, w1, w2 = _lse2(np.broadcast_to(la, t.shape), t)

        def backward(u):
            u2 = u * w2
            cols = [(u * w1).sum(1), u2.sum(1), -(u2 @ lx)]
            for ci, fi, z, sp, sg in parts:
                cols += [-(u2 * fi * sp).sum(1), (u2 * ci * sg).sum(1), -(u2 * ci * fi * (sp - sg * z)).sum(1)]
            return np.stack(cols, axis=1)

        return lp, backward

    def _starts(self, x, logy, n_random, rng):
        lx = self._lx(x)
        y = np.exp(logy)
        k = self.n_breaks
        q = np.quantile(lx, [0.2, 0.4, 0.6, 0.8])
        per_break = list(itertools.product([-0.5, 0.2, 1.0], q, np.log([0.1, 1.0])))
        base = list(itertools.product([0.1, 0.6, 0.95], [0.05, 0.3, 1.0]))
        if n_random is None and k <= 1:
            rows = [list(b) + [v for br in brs for v in br]
                    for b in base for brs in itertools.product(per_break, repeat=k)]
            g = np.array(rows, float)
        else:
            n = n_random if n_random is not None else 500
            r = rng if n_random is not None else np.random.default_rng(0)
            cols = [r.uniform(0.05, 0.99, n), np.exp(r.uniform(math.log(0.02), math.log(2.0), n))]
            for _ in range(k):
                cols += [r.uniform(-1.0, 1.5, n), r.uniform(lx.min(), lx.max(), n), r.uniform(math.log(0.05), math.log(2.0), n)]
            g = np.column_stack(cols)
        a = g[:, 0] * y.min()
        c0 = g[:, 1]
        t = -c0[:, None] * lx[None]
        for i in range(k):
            ci, ldi, fi = g[:, 2 + 3 * i:3 + 3 * i], g[:, 3 + 3 * i:4 + 3 * i], np.exp(g[:, 4 + 3 * i:5 + 3 * i])
            t = t - ci * fi * _softplus((lx[None] - ldi) / fi)
        with np.errstate(invalid="ignore", divide="ignore"):
            lb = _safe_median(np.log(y[None] - a[:, None]) - t, axis=1)
        out = [np.log(a), lb, c0]
        for i in range(k):
            out += [g[:, 2 + 3 * i], g[:, 3 + 3 * i], g[:, 4 + 3 * i]]
        return np.column_stack(out)


class Saturating(_OneVar):
    """``E = a * (C + d)^(-b) + c`` (Zhai et al. 2022, Scaling Vision Transformers).

    ``c`` is the irreducible limit, ``d`` shifts the input (so the curve flattens for small C).
    ``variable`` names the input (default ``C``, compute in FLOP).
    """

    name = "saturating"
    reference = "Zhai et al. 2022, Scaling Vision Transformers"
    _default_var = "C"
    _param_names = ("a", "b", "c", "d")

    def unit(self, name):
        v = self.variable
        return {"a": f"E*{v}^b", "b": "1", "c": "E (same as the target)", "d": f"{v} units"}.get(name, "1")

    @property
    def formula(self):  # type: ignore[override]
        v = self.variable
        return f"E = a*({v} + d)^(-b) + c"

    def _evaluate(self, p, x):
        return p["a"] * (self._xv(x) + p["d"]) ** (-p["b"]) + p["c"]

    @property
    def theta_names(self):
        return ("log_a", "b", "log_c", "log_d")

    def _to_theta(self, p):
        return np.array([math.log(p["a"]), p["b"], math.log(p["c"]), math.log(p["d"])])

    def _from_theta(self, theta):
        theta = np.asarray(theta, float)
        with np.errstate(over="ignore"):
            return {"a": np.exp(theta[..., 0]), "b": theta[..., 1], "c": np.exp(theta[..., 2]), "d": np.exp(theta[..., 3])}

    def _logpred_backward(self, theta, x):
        xv = self._xv(x)
        la, b, lc, ld = (theta[:, i:i + 1] for i in range(4))
        d = np.exp(ld)
        xd = xv + d
        lxd = np.log(xd)
        t1 = la - b * lxd
        lp, w1, w2 = _lse2(t1, np.broadcast_to(lc, t1.shape))
        dfrac = d / xd

        def backward(u):
            u1 = u * w1
            return np.stack([u1.sum(1), -(u1 * lxd).sum(1), (u * w2).sum(1), -(u1 * b * dfrac).sum(1)], axis=1)

        return lp, backward

    def _starts(self, x, logy, n_random, rng):
        xv = self._xv(x)
        y = np.exp(logy)
        if n_random is None:
            g = np.array(list(itertools.product(
                [0.05, 0.5, 0.9, 0.99], np.geomspace(0.02, 3.0, 8),
                np.log(np.concatenate([[xv.min() * 1e-3], np.quantile(xv, [0.0, 0.25, 0.5, 0.9, 1.0])])))))
        else:
            lxv = np.log(xv)
            g = np.column_stack([rng.uniform(0.01, 0.995, n_random),
                                 np.exp(rng.uniform(math.log(0.01), math.log(4.0), n_random)),
                                 rng.uniform(lxv.min() - 7, lxv.max(), n_random)])
        c = g[:, 0] * y.min()
        b = g[:, 1]
        ld = g[:, 2]
        with np.errstate(invalid="ignore", divide="ignore"):
            la = _safe_median(np.log(y[None] - c[:, None]) + b[:, None] * np.log(xv[None] + np.exp(ld)[:, None]), axis=1)
        return np.column_stack([la, b, np.log(c), ld])


# ==========================================================================================
# Registry
# ==========================================================================================
LAWS: dict[str, Callable[..., Law]] = {
    "chinchilla": Chinchilla,
    "kaplan": KaplanND,
    "kaplan_nd": KaplanND,
    "kaplan_n": KaplanN,
    "kaplan_d": KaplanD,
    "kaplan_c": KaplanC,
    "power_law": PowerLaw,
    "power_law_no_offset": lambda params=None, **kw: PowerLaw(params, offset=False, **kw),
    "bnsl": BNSL,
    "saturating": Saturating,
}
"""Law forms by name.  ``"bnsl:K"`` (or ``"bnslK"``) selects K breaks."""


def get_law(law: "str | Law | type") -> Law:
    """An (unbound) law from a name, a law instance or a law class."""
    if isinstance(law, Law):
        return law
    if isinstance(law, type) and issubclass(law, Law):
        return law()
    if not isinstance(law, str):
        raise LawfitError(f"a law is a name or a lawfit.laws.Law, got {type(law).__name__}")
    key = law.strip().lower().replace("-", "_")
    m = re.fullmatch(r"bnsl[:_]?(\d+)", key)
    if m:
        return BNSL(n_breaks=int(m.group(1)))
    if key not in LAWS:
        raise LawfitError(f"unknown law {law!r}; choose from {', '.join(sorted(LAWS))} (or bnsl:K for K breaks)")
    return LAWS[key]()


def law_from_spec(spec: Mapping[str, Any], params: Mapping[str, float] | None = None) -> Law:
    """Rebuild a law from ``Law.spec()`` (used by ``load_fit``)."""
    base = get_law(spec["name"])
    opts = dict(base.options())
    opts.update(spec.get("options") or {})
    return type(base)(params, **opts)
