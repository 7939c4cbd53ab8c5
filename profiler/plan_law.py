"""The scaling law a plan uses, behind one small adapter over ``lawfit``: any name
``lawfit.allocate`` knows (published fits and allocation laws), a fit result or a saved fit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["DEFAULT_LAW", "Allocation", "LawBackend"]

DEFAULT_LAW = "besiroglu2024"


# ----------------------------------------------------------------------------------------
# the scaling law (lawfit), behind one small adapter
# ----------------------------------------------------------------------------------------


def _finite_ci(res: Any) -> dict[str, tuple[float, float]]:
    """The result's intervals, leaving out any with a NaN or infinite end (never printed)."""
    out = {}
    for k, v in dict(getattr(res, "ci", None) or {}).items():
        if v is not None and all(math.isfinite(float(x)) for x in v[:2]):
            out[str(k)] = (float(v[0]), float(v[1]))
    return out


@dataclass
class Allocation:
    """Compute-optimal ``N`` (parameters, law convention), ``D`` (tokens) and predicted loss."""

    N: float
    D: float
    loss: float | None
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    note: str | None = None
    ci_level: float | None = None
    warnings: list[str] = field(default_factory=list)


class LawBackend:
    """The scaling law a plan uses: a ``lawfit`` published name, a fit result or a saved fit.

    ``allocate(C, flops_per_token)`` -> :class:`Allocation`; ``loss(N, D)`` -> float;
    ``count`` is what the law's N counts (``"total"`` or ``"non_embedding"``, read from the
    law's ``n_counts``; a user's fit says nothing, so ``count`` may be given); ``name``,
    ``citation`` and ``n_counts`` describe it.  ``allocator``/``loss_fn`` replace lawfit (tests).
    """

    def __init__(
        self,
        law: Any = DEFAULT_LAW,
        *,
        max_tokens: float | None = None,
        allocator: Callable[..., Any] | None = None,
        loss_fn: Callable[[float, float], float] | None = None,
        count: str | None = None,
        name: str | None = None,
    ):
        self.law = law
        self.max_tokens = max_tokens
        self._allocator = allocator
        self._loss_fn = loss_fn
        self.citation: str | None = None
        self.n_counts: str | None = None
        if allocator is None:
            from flopscale import lawfit

            if isinstance(law, str):
                try:
                    pub = lawfit.published.get(law)
                except lawfit.LawfitError:
                    pub = None
                if pub is not None:
                    self.law = pub.name
                    self.citation = pub.citation
                    self.n_counts = pub.n_counts
                    name = name or pub.name
                else:  # any other name lawfit.allocate knows (LawfitError for an unknown one)
                    probe = lawfit.allocate(1e21, law=law)
                    self.n_counts = getattr(probe, "n_counts", None) or None
                    self.citation = getattr(probe, "law", None) or None
                    name = name or law
            else:
                name = name or getattr(getattr(law, "law", None), "name", None) or type(law).__name__
                self.n_counts = "as in the fitted data"
        self.name = name or str(law)
        self.count = count or self._count_from(self.n_counts)

    @staticmethod
    def _count_from(n_counts: str | None) -> str:
        s = (n_counts or "").lower()
        return "non_embedding" if ("non-embedding" in s or "non_embedding" in s or "exclud" in s) else "total"

    def allocate(self, compute: float, flops_per_token: Callable[[float], float] | None) -> Allocation:
        if self._allocator is not None:
            res = self._allocator(compute, flops_per_token=flops_per_token, max_tokens=self.max_tokens)
        else:
            from flopscale import lawfit

            res = lawfit.allocate(compute, law=self.law, flops_per_token=flops_per_token, max_tokens=self.max_tokens)
        ci = _finite_ci(res)
        note = None
        if getattr(res, "constrained", False):
            note = (f"D_opt capped at the {res.max_tokens:.4g} available tokens (--max-tokens): predicted loss "
                    f"{res.loss_penalty:+.4f} against the unconstrained optimum")
        loss = getattr(res, "loss", None)
        warns = [str(w) for w in (getattr(res, "warnings", None) or [])]
        method = str(getattr(res, "method", "") or "")
        if "WARNING" in method and not warns:
            warns.append(method[method.index("WARNING"):].strip(" ():").replace("WARNING: ", ""))
        N, D = float(res.N), float(res.D)
        loss = None if loss is None else float(loss)
        if not (math.isfinite(N) and math.isfinite(D) and N > 0 and D > 0):
            raise ValueError(f"the law {self.name} gives no finite allocation at C = {compute:.4g} FLOP "
                             f"(N = {N:g}, D = {D:g}): the fit is not identifiable or the budget is outside it")
        if loss is not None and not math.isfinite(loss):
            loss = None
            warns.append("the law predicts no finite loss here")
        return Allocation(N, D, loss, ci, note, getattr(res, "ci_level", None), warns)

    def loss(self, n_params: float, tokens: float) -> float | None:
        if self._loss_fn is not None:
            v = float(self._loss_fn(n_params, tokens))
            return v if math.isfinite(v) else None
        from flopscale import lawfit

        try:
            v = float(lawfit.predict_loss(n_params, tokens, law=self.law))
        except lawfit.LawfitError:  # a law that allocates without a loss
            return None
        return v if math.isfinite(v) else None

    def optimal_for_params(self, n_params: float, flops_per_token: Callable[[float], float] | None) -> Allocation:
        """The budget and tokens for which ``n_params`` is compute-optimal (``lawfit.optimal_for_params``)."""
        from flopscale import lawfit

        res = lawfit.optimal_for_params(n_params, law=self.law, flops_per_token=flops_per_token)
        D, C = float(res.D), float(res.compute)
        if not (math.isfinite(D) and D > 0 and math.isfinite(C) and C > 0):
            raise ValueError(f"the law {self.name} gives no finite compute-optimal tokens for N = {n_params:.4g}")
        loss = getattr(res, "loss", None)
        loss = float(loss) if loss is not None and math.isfinite(float(loss)) else None
        ci = _finite_ci(res)
        return Allocation(float(n_params), D, loss, ci, None, getattr(res, "ci_level", None))
