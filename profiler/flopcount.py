"""Analytic FLOP counts of a transformer training step, and the published estimates.

Units: a count is in FLOP (one multiply or one add is one FLOP; a multiply-add is two).
Conventions (the README's counting conventions):

* a matmul ``[M, K] @ [K, N]`` costs ``2*M*N*K``; its backward costs twice that (dX and dW);
* an attention forward costs ``4*B*H*D*P`` with ``P`` the unmasked (query, key) pairs,
  ``S*(S+1)/2`` for causal self-attention; half of it is the scores ``Q @ K^T`` and half the
  product with the values.  Its backward costs ``2x`` the forward; a kernel that recomputes the
  scores in the backward pass *executes* another ``0.5x`` forward, which is not a model FLOP;
* *model* FLOPs are the matmul and attention work the mathematics requires (what MFU
  divides); softmax, normalisation, elementwise work and the optimizer are non-matmul FLOPs
  and are not part of them.

:func:`step_flops` is the exact model count of one training step of
:class:`profiler.model.GPT` for every ``GPTConfig.arch`` (gpt2, llama, moe), group by group;
:func:`flops_per_token` divides it by the tokens.  Per token and layer, forward: QKV
``2 d (d_attn + 2 d_kv)``, attention ``4 H D P / S``, output projection ``2 d_attn d``, MLP
``2 m d d_ff`` with ``m`` = 2 matrices (GELU) or 3 (SwiGLU), times ``top_k`` for an MoE, router
``2 d n_experts`` (MoE only); logits ``2 d V`` once.  Backward = 2x forward.
The published estimates (:func:`six_nd`, :func:`kaplan_training`, :func:`palm_per_token`,
:func:`chinchilla_appendix_f`) are written as their papers state them, and
:func:`estimates` sets each beside a measured count with the terms that explain the gap.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

from .model import GPTConfig, ParamCounts, param_counts

__all__ = [
    "GROUPS",
    "causal_pairs",
    "StepFlops",
    "step_flops",
    "flops_per_token",
    "shape_counts",
    "six_nd",
    "kaplan_params",
    "kaplan_forward_per_token",
    "kaplan_training",
    "palm_per_token",
    "chinchilla_appendix_f",
    "Estimate",
    "StepShape",
    "published_estimates",
    "estimates",
    "sweep",
]

# matmul groups of the model count, in the order reports show them
GROUPS = ("qkv", "attn_scores", "attn_pv", "out_proj", "mlp", "router", "logits")


def causal_pairs(s_q: int, s_k: int | None = None) -> int:
    """Unmasked (query, key) pairs of causal attention, aligned like torch's ``is_causal``.

    Query ``i`` sees keys ``0..i`` (top-left aligned, as
    ``torch.nn.functional.scaled_dot_product_attention(is_causal=True)``): with equal lengths
    ``S*(S+1)/2``.
    """
    s_k = s_q if s_k is None else s_k
    full = min(s_q, s_k)
    # rows 0..full-1 see i+1 keys; rows beyond s_k (if s_q > s_k) see all s_k keys
    return full * (full + 1) // 2 + max(0, s_q - s_k) * s_k


@dataclass(frozen=True)
class StepFlops:
    """Exact model FLOPs of one training step (forward + backward), by group and phase.

    ``forward[g]``/``backward[g]`` for ``g`` in :data:`GROUPS`; ``recompute`` is the executed
    (not model) work of recomputing attention scores in the backward pass, 0 when the attention
    does not recompute.  ``tokens = batch * seq``.
    """

    forward: Mapping[str, int]
    backward: Mapping[str, int]
    recompute: int
    tokens: int

    @property
    def by_group(self) -> dict[str, int]:
        return {g: self.forward[g] + self.backward[g] for g in GROUPS}

    @property
    def total(self) -> int:
        """Model FLOPs: forward + backward, matmul and attention, no recompute."""
        return sum(self.by_group.values())

    @property
    def executed(self) -> int:
        return self.total + self.recompute

    @property
    def attention(self) -> int:
        g = self.by_group
        return g["attn_scores"] + g["attn_pv"]

    @property
    def per_token(self) -> float:
        return self.total / self.tokens

    def to_dict(self) -> dict:
        return {
            "forward": dict(self.forward),
            "backward": dict(self.backward),
            "by_group": self.by_group,
            "recompute": self.recompute,
            "model_flops": self.total,
            "executed_flops": self.executed,
            "tokens": self.tokens,
            "per_token": self.per_token,
        }


def step_flops(cfg: GPTConfig, batch: int, seq: int | None = None, recompute: bool = False) -> StepFlops:
    """Exact model FLOPs of one training step of ``GPT(cfg)`` on ``batch`` sequences of ``seq`` tokens.

    ``seq`` defaults to ``cfg.n_ctx``.  ``recompute=True`` adds the attention kernels'
    backward recompute of the scores (``0.5x`` the attention forward) to the executed count.
    """
    S = cfg.n_ctx if seq is None else int(seq)
    if batch <= 0 or S <= 0:
        raise ValueError("batch and seq must be positive")
    if S > cfg.n_ctx:
        raise ValueError(f"seq {S} exceeds n_ctx {cfg.n_ctx}")
    T = batch * S
    d, L = cfg.d_model, cfg.n_layer
    P = causal_pairs(S)
    half_attn = 2 * batch * cfg.n_head * cfg.head_dim * P  # one of the two attention matmuls
    fwd = {
        "qkv": L * 2 * T * d * (cfg.d_attn + 2 * cfg.d_kv),
        "attn_scores": L * half_attn,
        "attn_pv": L * half_attn,
        "out_proj": L * 2 * T * cfg.d_attn * d,
        "mlp": L * 2 * T * cfg.top_k_ * cfg.mlp_matrices * d * cfg.ff,
        "router": L * 2 * T * d * cfg.experts_ if cfg.arch == "moe" else 0,
        "logits": 2 * T * d * cfg.vocab,
    }
    bwd = {g: 2 * v for g, v in fwd.items()}
    rec = L * half_attn if recompute else 0
    return StepFlops(forward=fwd, backward=bwd, recompute=rec, tokens=T)


def flops_per_token(cfg: GPTConfig, seq: int | None = None) -> float:
    """Exact training model FLOPs per token of ``GPT(cfg)`` (forward + backward), in FLOP.

    Honours ``cfg.arch``; for ``"moe"`` it counts the ``top_k`` experts a token runs and the
    router.  ``seq`` defaults to ``cfg.n_ctx`` (the attention term depends on it)."""
    return step_flops(cfg, 1, seq).per_token


def shape_counts(
    d_model, n_layer, *, arch: str = "gpt2", n_ctx: int, vocab: int, kv_group: float = 1.0, tied: bool = False,
    d_ff=None, n_experts: int = 8, top_k: int = 2,
) -> dict:
    """Parameters and exact training FLOPs per token as plain arithmetic of ``d_model`` and
    ``n_layer`` (floats or numpy arrays: a continuous shape family for allocation).

    Same formulas as :func:`profiler.model.param_counts` and :func:`flops_per_token` with
    ``head_dim`` free (the head count does not enter), K/V width ``d_model / kv_group`` and
    ``d_ff`` defaulting to ``4 d`` (gpt2) or ``8/3 d`` *unrounded* (llama, moe; a concrete
    config rounds up to a multiple of 256).  Equal to them for any concrete config with
    ``d_ff`` given.  Returns ``non_embedding``, ``total``, ``active_non_embedding``, ``active``
    (parameters; active = what one token touches in an MoE) and ``flops_per_token``.
    """
    d, L, S = d_model, n_layer, n_ctx
    m = 2 if arch == "gpt2" else 3
    ff = (4 * d if arch == "gpt2" else 8.0 * d / 3.0) if d_ff is None else d_ff
    E, k = (n_experts, top_k) if arch == "moe" else (1, 1)
    attn = d * d * (2.0 + 2.0 / kv_group)
    expert = m * d * ff
    router = d * E if arch == "moe" else 0.0
    norms = (2 * L + 1) * (2 * d if arch == "gpt2" else d)
    non_emb = L * (attn + router + E * expert) + norms
    active_non_emb = non_emb - L * (E - k) * expert
    emb = vocab * d + (S * d if arch == "gpt2" else 0.0)
    out = 0.0 if tied else vocab * d
    fwd = L * (2.0 * (attn + router + k * expert) + 2.0 * d * (S + 1)) + 2.0 * d * vocab
    return {"non_embedding": non_emb, "total": non_emb + emb + out, "active_non_embedding": active_non_emb,
            "active": active_non_emb + emb + out, "flops_per_token": 3.0 * fwd}


# ----------------------------------------------------------------------------------------
# published estimates
# ----------------------------------------------------------------------------------------


def six_nd(n_params: float, tokens: float) -> float:
    """``C = 6 N D``: training FLOPs of ``N`` parameters on ``D`` tokens (Kaplan et al. 2020)."""
    return 6.0 * n_params * tokens


def kaplan_params(n_layer: int, d_model: int, d_attn: int | None = None, d_ff: int | None = None) -> int:
    """Kaplan et al. 2020, Table 1: non-embedding ``N = 2 d_model n_layer (2 d_attn + d_ff)``.

    With ``d_attn = d_model`` and ``d_ff = 4 d_model`` this is ``12 n_layer d_model**2``.
    """
    d_attn = d_model if d_attn is None else d_attn
    d_ff = 4 * d_model if d_ff is None else d_ff
    return 2 * d_model * n_layer * (2 * d_attn + d_ff)


def kaplan_forward_per_token(n_params: float, n_layer: int, n_ctx: int, d_attn: int) -> float:
    """Kaplan et al. 2020, Table 1: ``C_forward = 2N + 2 n_layer n_ctx d_attn`` FLOP per token.

    ``N`` is the non-embedding parameter count; the de-embedding (logits) is not included.
    """
    return 2.0 * n_params + 2.0 * n_layer * n_ctx * d_attn


def kaplan_training(n_params: float, n_layer: int, n_ctx: int, d_attn: int) -> float:
    """Kaplan's training FLOPs per token: ``3 x C_forward`` (backward = 2x forward)."""
    return 3.0 * kaplan_forward_per_token(n_params, n_layer, n_ctx, d_attn)


def palm_per_token(n_params: float, n_layer: int, n_head: int, head_dim: int, seq: int) -> float:
    """Chowdhery et al. 2022 (PaLM), Appendix B: ``6N + 12 L H Q T`` training FLOP per token.

    ``L`` layers, ``H`` heads, ``Q`` head dimension, ``T`` sequence length; the attention term
    counts every (query, key) pair (no causal halving).  PaLM's N is its total parameter count
    (the shared input/output embedding included).
    """
    return 6.0 * n_params + 12.0 * n_layer * n_head * head_dim * seq


def chinchilla_appendix_f(
    seq_len: int, vocab_size: int, d_model: int, num_layers: int, num_heads: int, key_size: int, ffw_size: int
) -> dict[str, float]:
    """Hoffmann et al. 2022 (Chinchilla), Appendix F: FLOPs of one *sequence*, term by term.

    Forward terms as printed: embeddings ``2 S V d``; per layer the K/Q/V projections
    ``2*3 S d (k H)``, the logits ``K @ Q`` ``2 S S (k H)``, softmax ``3 H S S``, the softmax-query
    reduction ``2 S S (k H)``, the final linear ``2 S (k H) d``, the dense block
    ``2 S (d f + d f)``; final logits ``2 S d V``.  Backward = 2x forward, so ``training = 3 x
    forward``.  Every (query, key) pair is counted and the softmax is included.

    ``training`` is the formula as printed; ``training_table_a4`` leaves the embeddings and the
    final logits out, the convention that reproduces the paper's Table A4 ratios (the printed
    formula with them does not: a known misprint).
    """
    S, V, d, H, k, f = seq_len, vocab_size, d_model, num_heads, key_size, ffw_size
    t = {
        "embeddings": 2.0 * S * V * d,
        "qkv": 2.0 * 3 * S * d * (k * H),
        "attn_logits": 2.0 * S * S * (k * H),
        "softmax": 3.0 * H * S * S,
        "attn_reduce": 2.0 * S * S * (k * H),
        "final_linear": 2.0 * S * (k * H) * d,
        "dense": 2.0 * S * (d * f + d * f),
        "logits": 2.0 * S * d * V,
    }
    per_layer = sum(t[n] for n in ("qkv", "attn_logits", "softmax", "attn_reduce", "final_linear", "dense"))
    forward = t["embeddings"] + num_layers * per_layer + t["logits"]
    t["per_layer"] = per_layer
    t["forward"] = forward
    t["training"] = 3.0 * forward
    t["forward_table_a4"] = num_layers * per_layer
    t["training_table_a4"] = 3.0 * num_layers * per_layer
    return t


# ----------------------------------------------------------------------------------------
# estimates beside a measured count
# ----------------------------------------------------------------------------------------


@dataclass
class Estimate:
    """One published estimate of a training step's FLOPs beside the measured model count.

    ``terms`` are signed FLOP amounts such that ``flops + sum(terms) + residual == measured``:
    what the estimate leaves out (positive) or counts that the model does not execute as model
    FLOPs (negative).  ``residual`` is what the terms do not explain (0 when the measured count
    equals this model's exact count).
    """

    name: str
    formula: str
    flops: float
    measured: float
    terms: dict[str, float] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """measured / estimate."""
        return self.measured / self.flops if self.flops else float("nan")

    @property
    def residual(self) -> float:
        return self.measured - self.flops - sum(self.terms.values())

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "formula": self.formula,
            "flops": self.flops,
            "ratio_measured_to_estimate": self.ratio,
            "terms": dict(self.terms),
            "residual": self.residual,
        }


@dataclass(frozen=True)
class StepShape:
    """What the published estimates need to know about a step: tokens ``D``, sequence
    length, layers, query heads, head dimension, width, MLP width, vocabulary."""

    tokens: int
    seq: int
    n_layer: int
    n_head: int
    head_dim: int
    d_model: int
    d_ff: int
    vocab: int

    @property
    def d_attn(self) -> int:
        return self.n_head * self.head_dim


def published_estimates(
    shape: StepShape,
    params: ParamCounts,
    *,
    measured: float,
    attention: float,
    logits: float,
    qkv: float | None = None,
    weights: float | None = None,
) -> list[Estimate]:
    """6ND, Kaplan, PaLM and Chinchilla Appendix F (as printed and in Table A4's convention)
    for one step of ``shape``, each beside the ``measured`` model FLOPs.

    ``attention`` and ``logits`` are the measured model FLOPs of the attention (scores and
    x V) and of the output layer; everything else measured is taken to be weight matmuls.
    N is the *active* parameter count (``params.active_non_embedding`` / ``params.active``):
    for a dense model the plain count, for a mixture of experts the parameters one token
    touches.  Terms (measured - estimate, in FLOP): ``attention`` (causal pairs against the
    estimate's attention term), ``logits``, ``embeddings``, ``norms`` (parameters that are not
    matmul weights: norms, biases -- counted in N, no matmul), ``softmax`` (non-matmul work an
    estimate counts), ``grouped_query`` (K/V projections Appendix F assumes full-width, when
    ``qkv`` is given) and ``weights`` (the other weight matmuls against Appendix F's dense
    block: a SwiGLU's third matrix, experts, router).  ``weights`` (the weight-matmul FLOPs)
    defaults to ``measured - attention - logits``; give it to see a measured count that
    differs from a known split in the residual.
    """
    T, S, L, H, Q = shape.tokens, shape.seq, shape.n_layer, shape.n_head, shape.head_dim
    pc = params
    meas = float(measured)
    A, Lg = float(attention), float(logits)
    n_ne, n_tot = pc.active_non_embedding, pc.active
    moe = pc.active != pc.total
    what = "active " if moe else ""
    norms = -6.0 * pc.norms * T
    out = [
        Estimate(
            f"6ND ({what}non-embedding N)",
            f"6 * N * D, N = {n_ne:,} {what}non-embedding parameters, D = {T:,} tokens",
            six_nd(n_ne, T), meas, {"attention": A, "logits": Lg, "norms": norms},
        ),
        Estimate(
            f"6ND ({what}total N)",
            f"6 * N * D, N = {n_tot:,} {what}parameters including embeddings, D = {T:,} tokens",
            six_nd(n_tot, T), meas,
            {"attention": A, "logits": Lg - 6.0 * pc.unembedding * T, "embeddings": -6.0 * pc.embedding * T,
             "norms": norms},
        ),
        Estimate(
            "Kaplan (2N + 2 n_layer n_ctx d_attn) x 3",
            f"3 * (2N + 2*{L}*{S}*{shape.d_attn}) * D, N = {n_ne:,} {what}non-embedding",
            kaplan_training(n_ne, L, S, shape.d_attn) * T, meas,
            {"attention": A - 6.0 * L * S * shape.d_attn * T, "logits": Lg, "norms": norms},
        ),
        Estimate(
            "PaLM 6N + 12 L H Q T",
            f"(6N + 12*{L}*{H}*{Q}*{S}) * D, N = {n_tot:,} {what}total parameters",
            palm_per_token(n_tot, L, H, Q, S) * T, meas,
            {"attention": A - 12.0 * L * H * Q * S * T, "logits": Lg - 6.0 * pc.unembedding * T,
             "embeddings": -6.0 * pc.embedding * T, "norms": norms},
        ),
    ]
    cf = chinchilla_appendix_f(S, shape.vocab, shape.d_model, L, H, Q, shape.d_ff)
    n_seq = T / S
    per = 3.0 * n_seq * L  # training (x3) over the step's sequences and the layers
    weights = meas - A - Lg if weights is None else float(weights)
    common = {"attention": A - per * (cf["attn_logits"] + cf["attn_reduce"]), "softmax": -per * cf["softmax"]}
    if qkv is not None:
        common["grouped_query"] = float(qkv) - per * cf["qkv"]
        common["weights"] = weights - float(qkv) - per * (cf["final_linear"] + cf["dense"])
    else:
        common["weights"] = weights - per * (cf["qkv"] + cf["final_linear"] + cf["dense"])
    tag = f"S {S}, V {shape.vocab}, d {shape.d_model}, L {L}, H {H}, k {Q}, f {shape.d_ff}"
    out.append(Estimate(
        "Chinchilla Appendix F (as printed)",
        f"3 x forward per sequence with embeddings and final logits ({tag}) x {n_seq:g} sequences",
        cf["training"] * n_seq, meas,
        {**common, "embeddings": -3.0 * n_seq * cf["embeddings"], "logits": Lg - 3.0 * n_seq * cf["logits"]},
    ))
    out.append(Estimate(
        "Chinchilla Appendix F (Table A4 convention)",
        f"3 x forward per sequence without embeddings and final logits ({tag}) x {n_seq:g} sequences",
        cf["training_table_a4"] * n_seq, meas, {**common, "logits": Lg},
    ))
    return out


def estimates(cfg: GPTConfig, batch: int, measured: float | None = None, seq: int | None = None) -> list[Estimate]:
    """The published estimates (:func:`published_estimates`) for one training step of
    ``GPT(cfg)``, each beside ``measured`` (default: this model's exact count,
    :func:`step_flops`).  D is the step's tokens ``batch * seq``.
    """
    S = cfg.n_ctx if seq is None else int(seq)
    sf = step_flops(cfg, batch, S)
    g = sf.by_group
    shape = StepShape(sf.tokens, S, cfg.n_layer, cfg.n_head, cfg.head_dim, cfg.d_model, cfg.ff, cfg.vocab)
    return published_estimates(
        shape, param_counts(cfg), measured=float(sf.total) if measured is None else float(measured),
        attention=float(sf.attention), logits=float(g["logits"]), qkv=float(g["qkv"]),
        weights=float(sf.total - sf.attention - g["logits"]),
    )


def sweep(configs: Iterable[GPTConfig], seq: int | None = None) -> list[dict]:
    """Exact count per token of each config against 6N (non-embedding and total; active
    parameters for an MoE), per token."""
    rows = []
    for cfg in configs:
        S = cfg.n_ctx if seq is None else seq
        sf = step_flops(cfg, 1, S)
        pc = param_counts(cfg)
        per_tok = sf.per_token
        rows.append(
            {
                "n_layer": cfg.n_layer,
                "d_model": cfg.d_model,
                "n_head": cfg.n_head,
                "n_ctx": S,
                "vocab": cfg.vocab,
                "N_non_embedding": pc.active_non_embedding,
                "N_total": pc.active,
                "flops_per_token": per_tok,
                "ratio_to_6N_non_embedding": per_tok / (6.0 * pc.active_non_embedding),
                "ratio_to_6N_total": per_tok / (6.0 * pc.active),
                "attention_share": sf.attention / sf.total,
                "logits_share": sf.by_group["logits"] / sf.total,
            }
        )
    return rows
