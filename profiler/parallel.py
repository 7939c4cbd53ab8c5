"""Parallelism layouts: memory per GPU and the step time a layout costs, and the search over them.

A layout splits ``G`` GPUs into ``tp x pp x dp`` (tensor, pipeline, data parallel), with a
ZeRO stage for the data-parallel ranks, a micro-batch (sequences) and an activation-recompute
policy (``none`` / ``selective`` / ``full``).  Ranks are ordered tensor-parallel fastest, then
data parallel, then pipeline (Megatron-LM's placement): tensor-parallel groups stay inside a
node (``tp <= GPUs per node``).

Step time of one optimizer step (``B`` sequences of ``s`` tokens; ``m = B / (dp b)``
micro-batches of ``b`` sequences per pipeline), all in seconds per GPU:

* ``compute_s``: the step's model FLOPs / (GPUs x peak x MFU); the MFU is the compute
  efficiency of the kernels (given, measured or assumed), the layout adds the rest;
* ``recompute_s``: executed FLOPs that are not model FLOPs at the same rate -- selective
  recompute redoes the attention scores and their product with V (``2 d_attn (s+1)`` FLOP per
  token and layer, causal), full recompute a whole forward pass of the layers
  (Korthikanti et al. 2022, Sec. 5);
* ``tp_s``: per layer and micro-batch, 4 collectives (2 forward, 2 backward; all-reduces, or
  all-gather + reduce-scatter pairs of the same volume with sequence parallelism) of
  ``2 s b h`` bytes on the intra-node link, ``2(t-1)/t`` of it per GPU (Narayanan et al. 2021,
  Sec. 3.2); full recompute adds the 2 forward ones again; not overlapped;
* ``p2p_s``: pipeline sends of ``2 s b h`` bytes (activation forward, gradient backward) per
  micro-batch across nodes;
* ``bubble_s``: ``(p-1)/m`` of the pipeline's busy time (1F1B, Narayanan et al. 2021, Sec. 2.2);
* ``dp_s``: the gradient all-reduce of each GPU's parameters over the ``dp`` ranks,
  hierarchically (inside the node, then across nodes on one rail per GPU) or at a measured bus
  bandwidth; ZeRO-3 moves 1.5x the all-reduce volume (Rajbhandari et al. 2020, Sec. 7);
  ``hidden = min(overlap x dp_s, 2/3 compute_s)`` runs behind the backward pass;
* ``step_s = compute + recompute + tp + p2p + bubble + (dp - hidden)``; MFU at scale
  ``= MFU x compute_s / step_s``.

:func:`search` evaluates every layout that divides the GPUs and fits in memory
(:mod:`profiler.memory`) and ranks them by tokens per second.  The model credits no kernel
efficiency to larger micro-batches (the MFU stays the given one), so a larger micro-batch only
adds memory and bubble; the search keeps micro-batch 1 unless one is pinned.
"""
from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from typing import Any

from . import memory as _mem
from .collectives import allreduce_time_s, intra_node_bandwidth

__all__ = ["Layout", "Cluster", "LayoutCost", "LayoutSearch", "NoLayoutError", "parse_layout", "evaluate", "search",
           "default_cluster"]

ACT_BYTES = 2.0  # 16-bit activations (the Korthikanti forms assume them)


class NoLayoutError(ValueError):
    """No layout of the model fits the GPUs; the message says why and what would."""


@dataclass(frozen=True)
class Layout:
    tp: int = 1
    pp: int = 1
    dp: int = 1
    zero_stage: int = 0
    micro_batch: int = 1
    recompute: str = "none"

    @property
    def gpus(self) -> int:
        return self.tp * self.pp * self.dp

    def to_dict(self) -> dict[str, Any]:
        return {"tp": self.tp, "pp": self.pp, "dp": self.dp, "zero_stage": self.zero_stage,
                "micro_batch": self.micro_batch, "recompute": self.recompute}

    def to_text(self) -> str:
        return (f"tp {self.tp} x pp {self.pp} x dp {self.dp}, ZeRO-{self.zero_stage}, micro-batch {self.micro_batch}, "
                f"recompute {self.recompute}")

    __str__ = to_text


_KEYS = {"tp": "tp", "pp": "pp", "dp": "dp", "zero": "zero_stage", "zero_stage": "zero_stage", "mb": "micro_batch",
         "micro_batch": "micro_batch", "recompute": "recompute"}


def parse_layout(text: str) -> dict[str, Any]:
    """``"tp=8,pp=4,zero=1,mb=1,recompute=selective"`` -> the fixed parts of a layout (the rest is searched)."""
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        m = re.fullmatch(r"([a-z_]+)\s*=\s*([A-Za-z0-9]+)", part)
        if not m or m.group(1) not in _KEYS:
            raise ValueError(f"layout part {part!r}: expected tp=, pp=, dp=, zero=, mb= or recompute=")
        key, val = _KEYS[m.group(1)], m.group(2)
        if key == "recompute":
            if val not in _mem.RECOMPUTE:
                raise ValueError(f"recompute must be one of {', '.join(_mem.RECOMPUTE)}, got {val!r}")
            out[key] = val
        else:
            if not val.isdigit() or int(val) < (0 if key == "zero_stage" else 1):
                raise ValueError(f"layout {m.group(1)} must be a {'' if key == 'zero_stage' else 'positive '}integer, "
                                 f"got {val!r}")
            out[key] = int(val)
    if "zero_stage" in out and out["zero_stage"] not in _mem.ZERO_STAGES:
        raise ValueError(f"ZeRO stage must be 0, 1, 2 or 3, got {out['zero_stage']}")
    return out


@dataclass
class Cluster:
    """GPUs and their links: ``nodes x gpus_per_node``, the intra-node bandwidth per GPU (one
    direction, bytes/s), the inter-node bandwidth per GPU (one rail each), or a measured
    all-reduce (``profiler.collectives.MeasuredAllReduce``) for the data-parallel gradient;
    ``overlap`` is the share of that all-reduce run behind the backward pass; ``memory_bytes``
    the card's memory; ``sources`` says what is measured, given or assumed."""

    nodes: int
    gpus_per_node: int
    intra_Bps: float | None
    inter_Bps: float | None
    memory_bytes: float | None
    overlap: float = 0.0
    measured: Any = None
    bucket_bytes: float = 25 * 2**20
    backward_share: float = 2.0 / 3.0
    grad_bytes_per_param: float = 2.0
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node


@dataclass(frozen=True)
class LayoutCost:
    """One layout of one model on one cluster: memory per GPU and one optimizer step's time."""

    layout: Layout
    memory: _mem.MemoryBreakdown
    batch_sequences: int
    micro_batches: int
    compute_s: float
    recompute_s: float
    tp_s: float
    p2p_s: float
    bubble_s: float
    dp_s: float
    hidden_s: float
    mfu: float
    grad_bytes: float

    @property
    def exposed_dp_s(self) -> float:
        return self.dp_s - self.hidden_s

    @property
    def step_s(self) -> float:
        return self.compute_s + self.recompute_s + self.tp_s + self.p2p_s + self.bubble_s + self.exposed_dp_s

    @property
    def efficiency(self) -> float:
        return self.compute_s / self.step_s if self.step_s > 0 else 1.0

    @property
    def mfu_at_scale(self) -> float:
        return self.mfu * self.efficiency

    @property
    def fits(self) -> bool:
        return self.memory.fits

    def to_dict(self) -> dict[str, Any]:
        return {
            "layout": self.layout.to_dict(),
            "memory": self.memory.to_dict(),
            "memory_per_gpu_bytes": self.memory.total_bytes,
            "fits": self.fits,
            "batch_sequences": self.batch_sequences,
            "micro_batches": self.micro_batches,
            "bubble_fraction": (self.layout.pp - 1) / self.micro_batches,
            "step": {"compute_s": self.compute_s, "recompute_s": self.recompute_s, "tp_comm_s": self.tp_s,
                     "pp_p2p_s": self.p2p_s, "bubble_s": self.bubble_s, "dp_comm_s": self.dp_s,
                     "dp_hidden_s": self.hidden_s, "dp_exposed_s": self.exposed_dp_s, "step_s": self.step_s,
                     "efficiency": self.efficiency, "mfu": self.mfu, "mfu_at_scale": self.mfu_at_scale},
        }

    def to_text(self) -> str:
        ms = 1e3
        return (f"{self.layout}: {self.memory.total_bytes / 2**30:.1f} GiB per GPU; step {self.step_s * ms:.4g} ms = "
                f"compute {self.compute_s * ms:.4g} + recompute {self.recompute_s * ms:.4g} + TP comm "
                f"{self.tp_s * ms:.4g} + PP send {self.p2p_s * ms:.4g} + bubble {self.bubble_s * ms:.4g} + exposed DP "
                f"comm {self.exposed_dp_s * ms:.4g} ms -> MFU {self.mfu_at_scale:.3f}")

    __str__ = to_text


def _stage_params(cfg: Any, pc: Any, pp: int) -> float:
    """Parameters of the most loaded pipeline stage (before tensor-parallel sharding)."""
    L = cfg.n_layer
    per_layer = (pc.non_embedding - pc.norms) / L
    per = _mem.ceil_div(L, pp) * per_layer
    if pp == 1:
        return float(pc.total)
    return per + max(pc.embedding, pc.unembedding)


def _recompute_flops_per_token(cfg: Any, recompute: str, fpt: float) -> float:
    """Executed, not model, FLOPs per token that a recompute policy adds."""
    if recompute == "selective":
        return cfg.n_layer * 2.0 * cfg.d_attn * (cfg.n_ctx + 1)
    if recompute == "full":
        return fpt / 3.0 - 2.0 * cfg.d_model * cfg.vocab  # one forward pass of the layers (not the logits)
    return 0.0


def _dp_allreduce_s(nbytes: float, layout: Layout, cl: Cluster) -> float:
    dp = layout.dp
    if dp <= 1 or nbytes <= 0:
        return 0.0
    if cl.measured is not None:
        t = allreduce_time_s(nbytes, dp, cl.measured.busbw_at(min(cl.bucket_bytes, nbytes)))
    else:
        k = max(1, min(dp, cl.gpus_per_node // layout.tp))  # data-parallel ranks inside one node
        m = dp // k
        t = 0.0
        if k > 1:
            t += 2.0 * (k - 1) / k * nbytes / cl.intra_Bps
        if m > 1:
            t += 2.0 * (m - 1) / m * (nbytes / k) / cl.inter_Bps
    return t * (1.5 if layout.zero_stage == 3 else 1.0)


def evaluate(layout: Layout, cfg: Any, pc: Any, fpt: float, cluster: Cluster, *, peak_flop_per_s: float, mfu: float,
             batch_tokens: float, reserve: float = 0.10, sequence_parallel: bool = True) -> LayoutCost:
    """Memory and step time of ``layout`` for the model ``cfg`` (``pc`` its parameter counts,
    ``fpt`` its exact training FLOPs per token) on ``cluster`` (see the module docstring)."""
    t, p, dp, b = layout.tp, layout.pp, layout.dp, layout.micro_batch
    s, h = cfg.n_ctx, cfg.d_model
    B = max(1, math.ceil(batch_tokens / s))
    m = max(1, _mem.ceil_div(B, dp * b))
    B_eff = m * dp * b
    tokens = float(B_eff * s)
    rate = peak_flop_per_s * mfu
    G = layout.gpus
    compute = fpt * tokens / (G * rate)
    recompute = _recompute_flops_per_token(cfg, layout.recompute, fpt) * tokens / (G * rate)
    layers = _mem.ceil_div(cfg.n_layer, p)
    act_msg = ACT_BYTES * s * b * h
    tp_s = 0.0
    if t > 1:
        n_coll = 6 if layout.recompute == "full" else 4
        tp_s = m * layers * n_coll * 2.0 * (t - 1) / t * act_msg / cluster.intra_Bps
    p2p = 0.0
    if p > 1:
        link = cluster.inter_Bps if t * dp >= cluster.gpus_per_node and cluster.nodes > 1 else cluster.intra_Bps
        p2p = m * 2.0 * act_msg / t / link  # sequence parallel: each GPU sends its 1/t slice
    bubble = (p - 1) / m * (compute + recompute + tp_s)
    params_gpu = _stage_params(cfg, pc, p) / t
    grad_bytes = params_gpu * cluster.grad_bytes_per_param
    dp_s = _dp_allreduce_s(grad_bytes, layout, cluster)
    hidden = min(cluster.overlap * dp_s, cluster.backward_share * compute)
    per = _mem.model_state_bytes_per_param(layout.zero_stage, dp)
    act = layers * min(p, m) * _mem.activation_bytes_per_layer(s, b, h, cfg.n_head, t, layout.recompute,
                                                                sequence_parallel)
    if p == 1:  # output layer and loss (fp32 logits) live with the only stage
        act += 4.0 * s * b * cfg.vocab / t
    mem = _mem.MemoryBreakdown(params_gpu, params_gpu * per["weights"], params_gpu * per["gradients"],
                               params_gpu * per["optimizer"], act, cluster.memory_bytes, reserve)
    return LayoutCost(layout, mem, B_eff, m, compute, recompute, tp_s, p2p, bubble, dp_s, hidden, mfu, grad_bytes)


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


@dataclass
class LayoutSearch:
    """The ranked layouts of one model: ``best`` fits and has the highest tokens/s;
    ``ranked`` the top few that fit; ``considered`` how many were evaluated."""

    ranked: list[LayoutCost]
    considered: int
    fitting: int

    @property
    def best(self) -> LayoutCost:
        return self.ranked[0]

    def why(self) -> list[str]:
        """One reason per runner-up: what it costs against the best."""
        b = self.best
        out = []
        for c in self.ranked[1:]:
            parts = []
            for name, a, z in (("compute+recompute", b.compute_s + b.recompute_s, c.compute_s + c.recompute_s),
                               ("TP comm", b.tp_s, c.tp_s), ("bubble", b.bubble_s, c.bubble_s),
                               ("exposed DP comm", b.exposed_dp_s, c.exposed_dp_s), ("PP send", b.p2p_s, c.p2p_s)):
                if z - a > 0.01 * b.step_s:
                    parts.append(f"+{1e3 * (z - a):.3g} ms {name}")
            out.append(f"{c.layout}: MFU {c.mfu_at_scale:.3f}" + (f" ({', '.join(parts)})" if parts else ""))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"considered": self.considered, "fitting": self.fitting,
                "top": [c.to_dict() for c in self.ranked]}


def search(cfg: Any, pc: Any, fpt: float, cluster: Cluster, *, peak_flop_per_s: float, mfu: float,
           batch_tokens: float, fixed: dict[str, Any] | None = None, top: int = 3,
           reserve: float = 0.10) -> LayoutSearch:
    """Every layout of ``cluster.gpus`` GPUs for ``cfg`` that fits, ranked by tokens per second
    (ties: fewer sharding and recompute tricks first).  ``fixed`` pins parts of the layout
    (``tp``, ``pp``, ``dp``, ``zero_stage``, ``micro_batch``, ``recompute``).  Raises
    :class:`NoLayoutError` with the reason when none fits."""
    fixed = dict(fixed or {})
    G = cluster.gpus
    s = cfg.n_ctx
    B = max(1, math.ceil(batch_tokens / s))
    tps = [t for t in _divisors(min(cluster.gpus_per_node, G)) if G % t == 0 and cfg.n_head % t == 0
           and cfg.kv_heads % t == 0 and cfg.ff % t == 0]
    if cluster.intra_Bps is None:
        tps = [1]
    cands: list[LayoutCost] = []
    smallest: LayoutCost | None = None
    n = 0
    for t in ([fixed["tp"]] if "tp" in fixed else tps):
        if t not in tps:  # a pinned degree must divide the heads and fit in a node with a known link
            continue
        for p in ([fixed["pp"]] if "pp" in fixed else [d for d in _divisors(G // t) if d <= cfg.n_layer]):
            if G % (t * p) or p > cfg.n_layer:
                continue
            dp = G // (t * p)
            if "dp" in fixed and fixed["dp"] != dp:
                continue
            zeros = [fixed["zero_stage"]] if "zero_stage" in fixed else ([0, 1, 2, 3] if dp > 1 else [0])
            # a larger micro-batch only lengthens the bubble here (kernel efficiency is the MFU's,
            # not the micro-batch's), so micro-batch 1 is searched unless one is pinned
            mbs = [fixed["micro_batch"]] if "micro_batch" in fixed else [1]
            recs = [fixed["recompute"]] if "recompute" in fixed else list(_mem.RECOMPUTE)
            for z, b, r in itertools.product(zeros, mbs, recs):
                lay = Layout(t, p, dp, z, b, r)
                c = evaluate(lay, cfg, pc, fpt, cluster, peak_flop_per_s=peak_flop_per_s, mfu=mfu,
                             batch_tokens=batch_tokens, reserve=reserve)
                n += 1
                if c.fits:
                    cands.append(c)
                elif smallest is None or c.memory.total_bytes < smallest.memory.total_bytes:
                    smallest = c
    if not cands:
        if n == 0:
            raise NoLayoutError(f"no layout of {G} GPUs matches {fixed} (tp must divide the heads and fit in a node "
                                f"of {cluster.gpus_per_node}; pp at most n_layer {cfg.n_layer}; tp x pp x dp = {G})")
        need = smallest.memory.total_bytes if smallest else float("nan")
        cap = cluster.memory_bytes or float("nan")
        more = math.ceil(G * need / ((1 - reserve) * cap)) if smallest else None
        raise NoLayoutError(
            f"the model ({pc.total:.3g} parameters, n_layer {cfg.n_layer}, d_model {cfg.d_model}) fits no layout of {G} "
            f"GPUs in {cap / 2**30:.0f} GiB each: the smallest, {smallest.layout if smallest else '-'}, needs "
            f"{need / 2**30:.1f} GiB per GPU (usable {100 * (1 - reserve):.0f}%); about {more} GPUs or a card with more "
            "memory would fit it")
    key = (lambda c: (-(c.batch_sequences * s) / c.step_s, c.layout.zero_stage, _mem.RECOMPUTE.index(c.layout.recompute),
                      c.layout.tp * c.layout.pp, c.layout.micro_batch))
    cands.sort(key=key)
    ranked: list[LayoutCost] = []
    seen = set()
    for c in cands:  # the top few, distinct in (tp, pp, ZeRO, recompute)
        sig = (c.layout.tp, c.layout.pp, c.layout.zero_stage, c.layout.recompute)
        if sig not in seen:
            seen.add(sig)
            ranked.append(c)
        if len(ranked) >= top:
            break
    return LayoutSearch(ranked, n, len(cands))


def default_cluster(gpus: int, device_key: str, memory_bytes: float | None, *, gpus_per_node: int | None = None,
                    inter_Bps: float | None = None, overlap: float = 0.0, measured: Any = None,
                    grad_bytes_per_param: float = 2.0, sources: dict | None = None) -> Cluster:
    """A cluster of ``gpus`` cards: ``gpus_per_node`` (default 8, or all of them below 8) and the
    card's intra-node link rate (:data:`profiler.collectives.INTRA_NODE`)."""
    g = gpus_per_node or (gpus if gpus < 8 else 8)
    if gpus % g:
        raise ValueError(f"{gpus} GPUs do not fill nodes of {g}: give --gpus-per-node")
    found = intra_node_bandwidth(device_key)
    return Cluster(gpus // g, g, found[0] if found else None, inter_Bps, memory_bytes, overlap, measured,
                   grad_bytes_per_param=grad_bytes_per_param, sources=dict(sources or {}))

