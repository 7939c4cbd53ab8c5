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
from typing import Any, Callable, Sequence

from . import budget as _budget
from .flopcount import flops_per_token as _fpt_exact
from .model import GPTConfig, ParamCounts, param_counts

__all__ = [
    "DEFAULT_CARD",
    "DEFAULT_MFU",
    "DEFAULT_LAW",
    "DEFAULT_N_CTX",
    "DEFAULT_VOCAB",
    "DEFAULT_DTYPE",
    "shape_for",
    "preferred_aspect",
    "law_params",
    "Allocation",
    "PlanPoint",
    "plan_budget",
    "neighbours",
    "LawBackend",
    "family",
]

DEFAULT_CARD = "h100-sxm"
DEFAULT_MFU = 0.40  # an assumption, printed as such wherever it is used
DEFAULT_LAW = "besiroglu2024"
DEFAULT_N_CTX = 2048
DEFAULT_VOCAB = 32000
DEFAULT_DTYPE = "bf16"

_MAX_ITER = 30
#: the widest shape :func:`shape_for` builds (and the family behind it)
MAX_D_MODEL = 65536


# ----------------------------------------------------------------------------------------
# model shapes
# ----------------------------------------------------------------------------------------


def preferred_aspect(n_params: float) -> float:
    """Preferred ``d_model / n_layer``: 64 up to 1e9 parameters, rising log-linearly to 128 at
    1e10 and 128 beyond.

    Published decoders sit near these values (GPT-3's family: 64 at 125M, 85 at 1.3B, 128 at
    6.7B-175B; Chinchilla 70B: 102); Kaplan et al. 2020 (Fig. 5) find the loss nearly flat over
    a wide range of aspect ratios, so this is a convention, not an optimum.
    """
    if n_params <= 1e9:
        return 64.0
    if n_params >= 1e10:
        return 128.0
    return 64.0 * 2.0 ** (math.log10(n_params) - 9.0)


def law_params(pc: ParamCounts, count: str) -> int:
    """The parameter count a law uses: ``"total"`` or ``"non_embedding"`` -- of the parameters
    that touch a token (``active``; every parameter of a dense model, the router and ``top_k``
    experts of a mixture of experts, whose other experts hold memory but do no work)."""
    if count == "total":
        return pc.active
    if count == "non_embedding":
        return pc.active_non_embedding
    raise ValueError(f"count must be 'total' or 'non_embedding', got {count!r}")


def _head_dim(d_model: int) -> int:
    return 64 if d_model < 2048 else 128


def _width_step(d_model: int) -> int:
    """Widths are multiples of 64 below 1024, of 128 below 4096, of 1024 from there (head counts
    that are multiples of 8, so that tensor parallelism over the 8 GPUs of a node divides them)."""
    return 64 if d_model < 1024 else (128 if d_model < 4096 else 1024)


def shape_for(
    n_target: float,
    *,
    n_ctx: int = DEFAULT_N_CTX,
    vocab: int = DEFAULT_VOCAB,
    count: str = "total",
    tied: bool = False,
    kv_group: int = 1,
    aspect: float | None = None,
    arch: str = "gpt2",
    n_experts: int | None = None,
    top_k: int | None = None,
) -> GPTConfig:
    """A concrete shape whose parameter count (in convention ``count``) is close to ``n_target``.

    ``d_model`` runs over multiples of 64 below 1024, of 128 below 4096 and of 1024 from there
    (head dimension 64 below 2048, 128 from there), ``n_head = d_model / head_dim``, ``d_ff = 4 d_model``,
    ``n_kv_head = n_head / kv_group`` (widths whose head count ``kv_group`` does not divide are
    skipped).  For each width the depth that best matches
    ``n_target`` is taken; among those, the score ``20 |ln(N / n_target)| + |ln(aspect /
    preferred)|`` is minimised: a 1% miss in N weighs as much as a 22% departure from the
    preferred ``d_model / n_layer`` (:func:`preferred_aspect`, or ``aspect`` when given).
    """
    if not (n_target > 0 and math.isfinite(n_target)):
        raise ValueError(f"target parameter count must be positive, got {n_target!r}")
    if not (isinstance(kv_group, int) and kv_group >= 1):
        raise ValueError(f"kv_group must be a positive integer, got {kv_group!r}")
    pref = aspect or preferred_aspect(n_target)
    best: tuple[float, GPTConfig] | None = None
    d = 64
    while d <= MAX_D_MODEL:
        hd = _head_dim(d)
        heads = d // hd
        if heads % kv_group:  # grouped-query heads must divide the query heads
            d += _width_step(d)
            continue
        kv = heads // kv_group
        extra = dict(n_kv_head=kv, tied=tied, arch=arch, n_experts=n_experts, top_k=top_k)
        one = law_params(param_counts(GPTConfig(1, d, heads, n_ctx, vocab, **extra)), count)  # type: ignore[arg-type]
        two = law_params(param_counts(GPTConfig(2, d, heads, n_ctx, vocab, **extra)), count)  # type: ignore[arg-type]
        per_layer = two - one
        fixed = one - per_layer
        l_cont = (n_target - fixed) / per_layer
        for L in {max(1, math.floor(l_cont)), max(1, math.ceil(l_cont))}:
            n = fixed + L * per_layer
            score = 20.0 * abs(math.log(n / n_target)) + abs(math.log((d / L) / pref))
            if best is None or score < best[0]:
                best = (score, GPTConfig(L, d, heads, n_ctx, vocab, **extra))  # type: ignore[arg-type]
        d += _width_step(d)
    if best is None:
        raise ValueError(f"no width up to 65536 has a head count divisible by kv_group {kv_group}")
    return best[1]


# ----------------------------------------------------------------------------------------
# the scaling law (lawfit), behind one small adapter
# ----------------------------------------------------------------------------------------


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
        ci = {str(k): (float(v[0]), float(v[1])) for k, v in dict(getattr(res, "ci", None) or {}).items()}
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
        ci = {str(k): (float(v[0]), float(v[1])) for k, v in dict(getattr(res, "ci", None) or {}).items()}
        return Allocation(float(n_params), D, loss, ci, None, getattr(res, "ci_level", None))


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


def _arch_terms(arch: str, n_experts: int | None, top_k: int | None) -> tuple[float, float, float]:
    """(matrices per MLP, experts stored, experts run per token) of an architecture."""
    from .model import DEFAULT_EXPERTS, DEFAULT_TOP_K

    if arch not in ("gpt2", "llama", "moe"):
        raise ValueError(f"arch must be gpt2, llama or moe, got {arch!r}")
    if arch != "moe":
        return (2.0 if arch == "gpt2" else 3.0), 1.0, 1.0
    return 3.0, float(n_experts or DEFAULT_EXPERTS), float(top_k or DEFAULT_TOP_K)


_ARCH_TERMS = {"gpt2": (2.0, 1.0, 1.0), "llama": (3.0, 1.0, 1.0)}


def _family_counts(d: Any, L: Any, *, n_ctx: int, vocab: int, tied: bool, kv_group: int, arch: str,
                   n_experts: int | None, top_k: int | None) -> dict[str, Any]:
    """Parameters (active, i.e. touching a token, and stored) and exact training FLOPs per token
    of a real-valued width ``d`` and depth ``L`` (the formulas of :func:`param_counts` and
    :func:`profiler.flopcount.step_flops`; the SwiGLU width 8d/3 rounded up to 256 is taken as
    ``8d/3 + 128``, its rounding on average)."""
    mats, E, k = _ARCH_TERMS[arch] if arch != "moe" else _arch_terms(arch, n_experts, top_k)
    g, S = float(kv_group), float(n_ctx)
    ff = 4.0 * d if arch == "gpt2" else 8.0 * d / 3.0 + 128.0
    attn = d * d * (2.0 + 2.0 / g)
    router = d * E if arch == "moe" else 0.0
    norm = 2.0 * d if arch == "gpt2" else d
    ne_active = L * (attn + router + k * mats * d * ff + 2.0 * norm) + norm
    ne_stored = ne_active + L * (E - k) * mats * d * ff
    emb = vocab * d + (S * d if arch == "gpt2" else 0.0) + (0.0 if tied else vocab * d)
    fwd = L * (2.0 * d * (d + 2.0 * d / g) + 2.0 * d * (S + 1.0) + 2.0 * d * d + 2.0 * k * mats * d * ff
               + 2.0 * router) + 2.0 * d * vocab
    return {"non_embedding": ne_active, "total": ne_active + emb, "stored_total": ne_stored + emb,
            "flops_per_token": 3.0 * fwd}


def family(
    n_params: Any,
    *,
    count: str = "total",
    n_ctx: int = DEFAULT_N_CTX,
    vocab: int = DEFAULT_VOCAB,
    tied: bool = False,
    kv_group: int = 1,
    arch: str = "gpt2",
    n_experts: int | None = None,
    top_k: int | None = None,
) -> dict[str, Any]:
    """The continuous shape family behind :func:`shape_for`, at ``n_params`` (scalar or array).

    ``d_model`` is real-valued, ``n_layer = max(1, d_model / preferred_aspect(N))``, the MLP
    width that of ``arch`` (``4 d`` for gpt2, SwiGLU ``8d/3`` for llama and for each moe expert),
    K/V width ``d_model / kv_group``; parameters and FLOPs use the same formulas as
    :func:`profiler.model.param_counts` and :func:`profiler.flopcount.step_flops`.
    ``n_params`` counts parameters in convention ``count`` (of the parameters that touch a token,
    see :func:`law_params`).  Returns arrays ``d_model``, ``n_layer``, ``total``,
    ``non_embedding``, ``stored_total`` (every expert) and ``flops_per_token`` (exact training
    FLOP per token).  This gives the allocation a smooth FLOPs-per-token function of N.
    """
    import numpy as np

    N = np.asarray(n_params, dtype=float)
    if count not in ("total", "non_embedding"):
        raise ValueError(f"count must be 'total' or 'non_embedding', got {count!r}")
    asp = np.clip(64.0 * 2.0 ** (np.log10(np.maximum(N, 1.0)) - 9.0), 64.0, 128.0)
    kw = dict(n_ctx=n_ctx, vocab=vocab, tied=tied, kv_group=kv_group, arch=arch, n_experts=n_experts, top_k=top_k)

    def counts(d):
        L = np.maximum(1.0, d / asp)
        return L, _family_counts(d, L, **kw)  # type: ignore[arg-type]

    def excess(x):  # log of (count at width e^x) / N: increasing in x
        return np.log(counts(np.exp(x))[1][count]) - np.log(N)

    # safeguarded Newton in x = ln d_model: a Newton step when it stays inside the bracket,
    # else bisection; stops once every entry matches N to 1e-12 (relative)
    lo = np.full(N.shape, math.log(1e-3))
    hi = np.full(N.shape, math.log(1e7))
    x = 0.5 * (lo + hi)
    for _ in range(100):
        f = excess(x)
        lo = np.where(f < 0, x, lo)
        hi = np.where(f < 0, hi, x)
        if np.all(np.abs(f) < 1e-12):
            break
        slope = (excess(x + 1e-6) - f) / 1e-6
        step = x - f / np.where(slope > 0, slope, np.inf)
        inside = (step > lo) & (step < hi) & np.isfinite(step)
        x = np.where(inside, step, 0.5 * (lo + hi))
    d = np.exp(x)
    L, c = counts(d)
    return {"d_model": d, "n_layer": L, **c}


def largest_shapeable(
    *, count: str = "total", n_ctx: int = DEFAULT_N_CTX, vocab: int = DEFAULT_VOCAB, tied: bool = False,
    kv_group: int = 1, arch: str = "gpt2", n_experts: int | None = None, top_k: int | None = None,
) -> float:
    """The largest parameter count (convention ``count``) the shape family builds: ``d_model``
    :data:`MAX_D_MODEL` at the preferred aspect ratio 128 (``n_layer`` 512)."""
    c = _family_counts(float(MAX_D_MODEL), MAX_D_MODEL / 128.0, n_ctx=n_ctx, vocab=vocab, tied=tied,
                       kv_group=kv_group, arch=arch, n_experts=n_experts, top_k=top_k)
    return float(c[count])


def check_shapeable(n_params: float, **fam: Any) -> None:
    """Raise ValueError when ``n_params`` is beyond the largest shape of the family."""
    top = largest_shapeable(**fam)
    if not (n_params <= top):
        raise ValueError(f"the budget asks for N = {n_params:.3g} parameters, beyond the largest model this family "
                         f"shapes ({top:.3g}: d_model {MAX_D_MODEL}, n_layer 512); plan a smaller budget")


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
