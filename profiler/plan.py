"""Plan a training run: a budget -> compute-optimal N and D -> a concrete model -> wall-clock.

Steps (:func:`plan_budget`):

1. the budget ``C`` (FLOP, model FLOPs) is given, or is ``GPUs x days x 86,400 x peak x MFU``
   (:mod:`profiler.budget`);
2. a scaling law (``lawfit``) allocates ``C`` to parameters ``N`` and tokens ``D``; the FLOPs per
   token are this model family's *exact* count (:func:`profiler.flopcount.flops_per_token`:
   matmuls, causal attention and logits, forward and backward), not only ``6N``;
3. :func:`shape_for` picks a concrete :class:`~profiler.model.GPTConfig` (``n_layer``,
   ``d_model``, heads) whose parameter count, in the law's convention, is closest to ``N``;
4. the shape's exact FLOPs per token fix the tokens the budget buys, and the MFU at that size
   the wall-clock and GPU-days.

The exact count depends on the shape, so the law allocates along a continuous shape family
(:func:`family`: the same formulas with a real-valued width) and N is then rounded to a
concrete shape.  When a measured MFU sweep makes the MFU, and so ``C``, depend on N, the
allocation is iterated to a fixed point in N.

Communication (``comm``, a :class:`profiler.budget.CommModel`): on ``nodes x gpus_per_node``
GPUs a data-parallel step is its compute time plus the part of the gradient all-reduce that
does not overlap the backward pass; the MFU at scale (``MFU x compute / step``) then sets the
budget ``C`` bought by GPUs x days (iterated to a fixed point in N, since the gradient grows
with N) and the wall-clock.

Parameter conventions: the law says what its N counts (``total``, embeddings included, for
Hoffmann et al. 2022 and the Besiroglu et al. 2024 replication; ``non_embedding`` for Kaplan
et al. 2020); the shape is matched in that convention.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from . import budget as _budget
from .flopcount import flops_per_token as _fpt_exact
from .model import GPTConfig, ParamCounts, param_counts
from .plan_law import DEFAULT_LAW, Allocation, LawBackend
from .plan_shapes import (
    DEFAULT_N_CTX,
    DEFAULT_VOCAB,
    MAX_D_MODEL,
    check_shapeable,
    family,
    largest_shapeable,
    law_params,
    preferred_aspect,
    shape_for,
)

__all__ = [
    "DEFAULT_CARD", "DEFAULT_MFU", "DEFAULT_LAW", "DEFAULT_N_CTX", "DEFAULT_VOCAB", "DEFAULT_DTYPE", "MAX_D_MODEL",
    "shape_for", "preferred_aspect", "law_params", "Allocation", "PlanPoint", "plan_budget", "neighbours",
    "LawBackend", "family", "largest_shapeable", "check_shapeable",
]

DEFAULT_CARD = "h100-sxm"
DEFAULT_MFU = 0.40  # an assumption, printed as such wherever it is used
DEFAULT_DTYPE = "bf16"

_MAX_ITER = 30


# ----------------------------------------------------------------------------------------
# one planned budget
# ----------------------------------------------------------------------------------------


@dataclass
class PlanPoint:
    """The plan for one budget (every count in FLOP, N in the law's convention)."""

    compute_flop: float
    budget: _budget.Budget | None
    law: str
    law_count: str
    N_opt: float
    D_opt: float
    loss_opt: float | None
    ci: dict[str, tuple[float, float]]
    ci_level: float | None
    shape: GPTConfig
    params: ParamCounts
    N_shape: float
    flops_per_token: float  # exact, training, per token
    D_shape: float
    loss_shape: float | None
    mfu: float | None
    mfu_note: str | None
    time: _budget.TrainTime | None
    iterations: int
    converged: bool
    notes: list[str] = field(default_factory=list)

    comm: _budget.CommModel | None = None
    step: _budget.StepTime | None = None  # one optimizer step of the shape, with communication
    layouts: Any = None  # profiler.parallel.LayoutSearch: the shape's best layouts on the cluster
    cluster: Any = None  # profiler.parallel.Cluster
    warnings: list[str] = field(default_factory=list)

    @property
    def layout(self) -> Any:
        """The chosen :class:`profiler.parallel.LayoutCost` (None without a cluster)."""
        return self.layouts.best if self.layouts is not None else None

    @property
    def mfu_at_scale(self) -> float | None:
        """MFU including the layout's costs (bubble, exposed communication, recompute); the
        MFU itself without a cluster."""
        if self.mfu is None:
            return None
        if self.layout is not None:
            return self.layout.mfu_at_scale
        return self.step.mfu_at_scale if self.step is not None else self.mfu

    @property
    def pf_days(self) -> float:
        return _budget.pf_days(self.compute_flop)

    @property
    def tokens_per_param(self) -> float:
        return self.D_opt / self.N_opt

    @property
    def ratio_to_6n(self) -> float:
        """Exact FLOPs per token of the shape over ``6 N`` (law convention)."""
        return self.flops_per_token / (6.0 * self.N_shape)

    def to_dict(self) -> dict[str, Any]:
        t = self.time
        return {
            "compute_flop": self.compute_flop,
            "pf_days": self.pf_days,
            "budget": self.budget.to_dict() if self.budget else None,
            "law": self.law,
            "law_counts_params": self.law_count,
            "N": self.N_opt,
            "D": self.D_opt,
            "tokens_per_param": self.tokens_per_param,
            "loss": self.loss_opt,
            "ci": {k: list(v) for k, v in self.ci.items()},
            "ci_level": self.ci_level,
            "shape": self.shape.to_dict(),
            "shape_params": self.params.to_dict(),
            "shape_N": self.N_shape,
            "flops_per_token": self.flops_per_token,
            "flops_per_token_6N": 6.0 * self.N_shape,
            "ratio_exact_to_6N": self.ratio_to_6n,
            "shape_D": self.D_shape,
            "shape_loss": self.loss_shape,
            "mfu": self.mfu,
            "mfu_note": self.mfu_note,
            "wall_clock_days": t.wall_clock_days if t else None,
            "gpu_days": t.gpu_days if t else None,
            "gpu_hours": t.gpu_hours if t else None,
            "gpus": t.gpus if t else None,
            "iterations": self.iterations,
            "converged": self.converged,
            "notes": list(self.notes),
            "mfu_at_scale": self.mfu_at_scale,
            "communication": self.comm.to_dict(self.step) if self.comm is not None else None,
            "layout": self.layout.layout.to_dict() if self.layout is not None else None,
            "memory_per_gpu_bytes": self.layout.memory.total_bytes if self.layout is not None else None,
            "layouts": self.layouts.to_dict() if self.layouts is not None else None,
            "warnings": list(self.warnings),
        }


def plan_budget(
    law: LawBackend,
    *,
    compute: float | None = None,
    gpus: float | None = None,
    days: float | None = None,
    peak_flop_per_s: float | None = None,
    mfu: _budget.MFUModel | None = None,
    device: str | None = None,
    dtype: str | None = None,
    peak_source: str = "datasheet",
    n_ctx: int = DEFAULT_N_CTX,
    vocab: int = DEFAULT_VOCAB,
    tied: bool = False,
    kv_group: int = 1,
    exact_count: bool = True,
    comm: _budget.CommModel | None = None,
    cluster: Any = None,
    layout: dict[str, Any] | None = None,
    batch_tokens: float = _budget.DEFAULT_BATCH_TOKENS,
    arch: str = "gpt2",
    n_experts: int | None = None,
    top_k: int | None = None,
) -> PlanPoint:
    """Plan one budget: either ``compute`` (FLOP) or ``gpus x days`` at ``peak x mfu``.

    The law allocates ``C`` with the exact FLOPs per token along the continuous shape family
    (:func:`family`); when the MFU depends on the size (a measured sweep) and the budget is
    ``gpus x days``, ``C = gpus x days x 86,400 x peak x MFU(N)`` and the allocation is iterated
    to a fixed point in N.  Then :func:`shape_for`
    rounds N to a concrete shape, whose exact count fixes the tokens the budget buys and whose
    MFU fixes the wall-clock.  With ``compute`` given, ``gpus``/``peak``/``mfu`` only turn the
    plan into wall-clock.  ``exact_count=False`` allocates under the law's own ``C = 6ND``.

    ``comm`` (a :class:`profiler.budget.CommModel` for ``gpus`` GPUs) adds the exposed gradient
    all-reduce to every step: the MFU at scale replaces the MFU in ``C`` (GPUs x days) and in
    the wall-clock.

    ``cluster`` (a :class:`profiler.parallel.Cluster` of ``gpus`` GPUs) instead lays every shape
    out over tensor, pipeline and data parallelism (:func:`profiler.parallel.search`; ``layout``
    pins parts of it): memory per GPU must fit, and the best layout's MFU at scale (bubble,
    communication, recompute) sets ``C`` and the wall-clock.  Raises
    :class:`profiler.parallel.NoLayoutError` when no layout fits.
    """
    if compute is None:
        if gpus is None or days is None or peak_flop_per_s is None or mfu is None:
            raise ValueError("give compute, or gpus, days, peak_flop_per_s and mfu")
    else:
        compute = float(compute)
        if not (compute > 0 and math.isfinite(compute)):
            raise ValueError(f"compute budget must be positive, got {compute!r}")
    if gpus is not None:
        _budget._positive("GPUs", gpus)
    if days is not None:
        _budget._positive("days", days)
    if comm is not None:
        if gpus is not None and float(gpus) != float(comm.gpus):
            raise ValueError(f"{gpus:g} GPUs but the cluster has {comm.nodes} x {comm.gpus_per_node} = {comm.gpus}")
        gpus = comm.gpus
        if peak_flop_per_s is None or mfu is None:
            raise ValueError("a communication model needs the peak FLOP/s and an MFU")
    if cluster is not None:
        if gpus is not None and float(gpus) != float(cluster.gpus):
            raise ValueError(f"{gpus:g} GPUs but the cluster has {cluster.nodes} x {cluster.gpus_per_node}")
        gpus = cluster.gpus
        if peak_flop_per_s is None or mfu is None:
            raise ValueError("a layout search needs the peak FLOP/s and an MFU")
    arch_kw = dict(arch=arch, n_experts=n_experts, top_k=top_k)
    fam = dict(count=law.count, n_ctx=n_ctx, vocab=vocab, tied=tied, kv_group=kv_group, **arch_kw)
    shape_kw = dict(n_ctx=n_ctx, vocab=vocab, count=law.count, tied=tied, kv_group=kv_group, **arch_kw)

    searched: dict[GPTConfig, Any] = {}

    def layouts_of(cfg: GPTConfig) -> Any:
        from . import parallel

        if cfg in searched:
            return searched[cfg]
        pc_ = param_counts(cfg)
        searched[cfg] = parallel.search(cfg, pc_, _fpt_exact(cfg), cluster, peak_flop_per_s=peak_flop_per_s,
                               mfu=mfu(pc_.total), batch_tokens=batch_tokens, fixed=layout)  # type: ignore[misc]
        return searched[cfg]

    def fpt(n: Any) -> Any:
        """exact training FLOP per token along the shape family"""
        return family(n, **fam)["flops_per_token"]  # type: ignore[arg-type]

    def efficiency(n_law: float | None) -> float:
        """compute / step time along the shape family at ``n_law`` parameters (1 without comm)"""
        if cluster is not None and n_law is not None:
            check_shapeable(n_law, **fam)  # type: ignore[arg-type]
            return layouts_of(shape_for(n_law, **shape_kw)).best.efficiency  # type: ignore[arg-type]
        if comm is None or n_law is None:
            return 1.0
        f = family(n_law, **fam)  # type: ignore[arg-type]
        total_n = float(f["stored_total"])
        return comm.step(total_n, float(f["flops_per_token"]), peak_flop_per_s, mfu(total_n)).efficiency  # type: ignore[arg-type,misc]

    def budget_at(total_params: float | None, n_law: float | None = None) -> float:
        if compute is not None:
            return compute
        m = mfu(total_params) * efficiency(n_law)  # type: ignore[misc]
        return _budget.compute_budget(gpus, days, peak_flop_per_s, m)  # type: ignore[arg-type]

    n = None
    total = None
    converged = False
    alloc: Allocation | None = None
    it = 0
    for it in range(1, _MAX_ITER + 1):
        C = budget_at(total, n)
        alloc = law.allocate(C, fpt if exact_count else None)
        new_total = float(family(alloc.N, **fam)["stored_total"])  # type: ignore[arg-type]
        done = n is not None and abs(alloc.N - n) <= 1e-7 * n
        n, total = alloc.N, new_total
        if done or compute is not None or mfu is None or (mfu.is_constant and comm is None and cluster is None):
            converged = True
            break
    assert alloc is not None
    check_shapeable(alloc.N, **fam)  # type: ignore[arg-type]
    C = budget_at(total, n)
    cfg = shape_for(alloc.N, **shape_kw)  # type: ignore[arg-type]
    pc = param_counts(cfg)
    n_shape = law_params(pc, law.count)
    fpt = _fpt_exact(cfg)
    d_shape = C / fpt
    notes: list[str] = []
    if law.max_tokens is not None and d_shape > 1.02 * law.max_tokens:
        notes.append(
            f"the budget would buy {d_shape:.3g} tokens for this shape, more than the {law.max_tokens:.3g} "
            "available (--max-tokens): capped, and the rest of the budget is not used"
        )
    if law.max_tokens is not None:
        d_shape = min(d_shape, float(law.max_tokens))
    if abs(math.log(n_shape / alloc.N)) > 0.1:
        notes.append(
            f"no shape in the search matches N = {alloc.N:.3g} within 10% "
            f"(closest: {n_shape:.3g}, of which {pc.embedding + pc.unembedding:.3g} in vocabulary and position matrices)"
        )
    vocab_share = (pc.embedding + pc.unembedding) / pc.total
    if vocab_share > 0.5:
        notes.append(
            f"embedding and output matrices hold {100 * vocab_share:.0f}% of the parameters at this size: a smaller "
            "vocabulary (--vocab) or context (--n-ctx) suits a budget this small better"
        )
    if alloc.note:
        notes.append(alloc.note)
    if not converged:
        notes.append(f"fixed-point iteration stopped after {it} steps; N changed by more than 1e-7 in the last one")
    loss_shape = law.loss(n_shape, d_shape)
    mfu_at = mfu(pc.total) if mfu is not None else None
    mfu_note = mfu.describe(pc.total) if mfu is not None else None
    b = None
    if compute is None:
        eff = efficiency(n)
        src = mfu.source if mfu else None  # type: ignore[union-attr]
        if cluster is not None:
            src = f"{mfu(total):.3f} {src} x {eff:.3f} compute share of a step in the best layout"  # type: ignore[misc]
        elif comm is not None:
            src = f"{mfu(total):.3f} {src} x {eff:.3f} compute share of a step with communication"  # type: ignore[misc]
        b = _budget.Budget(C, float(gpus), float(days), device, dtype, float(peak_flop_per_s), peak_source,  # type: ignore[arg-type]
                           mfu(total) * eff, src)  # type: ignore[misc]
    step = None
    if comm is not None and mfu_at is not None:
        step = comm.step(pc.total, fpt, peak_flop_per_s, mfu_at)  # type: ignore[arg-type]
    lays = layouts_of(cfg) if cluster is not None else None
    time = None
    if peak_flop_per_s is not None and mfu_at is not None:
        m_eff = step.mfu_at_scale if step is not None else mfu_at
        if lays is not None:
            m_eff = lays.best.mfu_at_scale
        time = _budget.train_time(fpt * d_shape, gpus=gpus or 1, peak_flop_per_s=peak_flop_per_s, mfu=m_eff)
    return PlanPoint(
        compute_flop=C,
        budget=b,
        law=law.name,
        law_count=law.count,
        N_opt=alloc.N,
        D_opt=alloc.D,
        loss_opt=alloc.loss,
        ci=alloc.ci,
        ci_level=alloc.ci_level,
        shape=cfg,
        params=pc,
        N_shape=n_shape,
        flops_per_token=fpt,
        D_shape=d_shape,
        loss_shape=loss_shape,
        mfu=mfu_at,
        mfu_note=mfu_note,
        time=time,
        iterations=it,
        converged=converged,
        notes=notes,
        comm=comm,
        step=step,
        layouts=lays,
        cluster=cluster,
        warnings=list(alloc.warnings),
    )


def neighbours(
    law: LawBackend,
    factors: Sequence[float] = (0.25, 0.5, 2.0, 4.0),
    *,
    days: float | None = None,
    compute: float | None = None,
    **kwargs: Any,
) -> list[tuple[float, PlanPoint]]:
    """Plans for budgets ``factor x`` the given one (``days`` scaled at the same GPUs, or
    ``compute`` scaled directly)."""
    out = []
    for f in factors:
        if compute is not None:
            p = plan_budget(law, compute=compute * f, **kwargs)
        else:
            p = plan_budget(law, days=days * f, **kwargs)  # type: ignore[operator]
        out.append((f, p))
    return out
