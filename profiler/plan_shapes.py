"""Model shapes for plans: a concrete :class:`~profiler.model.GPTConfig` of N parameters
(:func:`shape_for`) and the continuous family behind it (:func:`family`), whose exact FLOPs per
token give the allocation a smooth function of N.  Architectures ``gpt2``, ``llama`` and ``moe``
(:mod:`profiler.model`); N counts the parameters a token uses (:func:`law_params`).
"""
from __future__ import annotations

import math
from typing import Any

from .model import GPTConfig, ParamCounts, param_counts

__all__ = ["DEFAULT_N_CTX", "DEFAULT_VOCAB", "MAX_D_MODEL", "preferred_aspect", "law_params", "shape_for", "family",
           "largest_shapeable", "check_shapeable"]

DEFAULT_N_CTX = 2048
DEFAULT_VOCAB = 32000
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
