"""Analytic FLOP counts of a transformer training step, and the published estimates.

Units: a count is in FLOP (one multiply or one add is one FLOP; a multiply-add is two).
Conventions (``../shared/DESIGN.md``):

* a matmul ``[M, K] @ [K, N]`` costs ``2*M*N*K``; its backward costs twice that (dX and dW);
* an attention forward costs ``4*B*H*D*P`` with ``P`` the unmasked (query, key) pairs,
  ``S*(S+1)/2`` for causal self-attention; half of it is the scores ``Q @ K^T`` and half the
  product with the values.  Its backward costs ``2x`` the forward; a kernel that recomputes the
  scores in the backward pass *executes* another ``0.5x`` forward, which is not a model FLOP;
* *model* FLOPs are the matmul and attention work the mathematics requires (what MFU
  divides); softmax, normalisation, elementwise work and the optimizer are non-matmul FLOPs
  and are not part of them.

:func:`step_flops` is the exact model count of one training step of
:class:`profiler.model.GPT`, group by group; :func:`flops_per_token` divides it by the tokens.
The published estimates (:func:`six_nd`, :func:`kaplan_training`, :func:`palm_per_token`,
:func:`chinchilla_appendix_f`) are written as their papers state them, and
:func:`estimates` sets each beside a measured count with the terms that explain the gap.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

from .model import GPTConfig, param_counts

__all__ = [
    "GROUPS",
    "causal_pairs",
    "StepFlops",
    "step_flops",
    "flops_per_token",
    "six_nd",
    "kaplan_params",
    "kaplan_forward_per_token",
    "kaplan_training",
    "palm_per_token",
    "chinchilla_appendix_f",
    "Estimate",
    "estimates",
    "sweep",
]

# matmul groups of the model count, in the order reports show them
GROUPS = ("qkv", "attn_scores", "attn_pv", "out_proj", "mlp", "logits")


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
        "mlp": L * 2 * T * 2 * d * cfg.ff,
        "logits": 2 * T * d * cfg.vocab,
    }
    bwd = {g: 2 * v for g, v in fwd.items()}
    rec = L * half_attn if recompute else 0
    return StepFlops(forward=fwd, backward=bwd, recompute=rec, tokens=T)


def flops_per_token(cfg: GPTConfig, seq: int | None = None) -> float:
    """Exact training model FLOPs per token of ``GPT(cfg)`` (forward + backward), in FLOP."""
    return step_flops(cfg, 1, seq).per_token


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


def estimates(cfg: GPTConfig, batch: int, measured: float | None = None, seq: int | None = None) -> list[Estimate]:
    """The four published estimates for one training step, each beside ``measured``.

    ``measured`` defaults to this model's exact count (:func:`step_flops`).  D is the step's
    tokens ``batch * seq``.  Term names: ``attention`` (the estimate's attention term against
    the causal count), ``logits`` (the output projection), ``embeddings`` (lookups counted as
    matmuls or as parameters), ``norms`` (LayerNorm parameters counted in N, no matmul),
    ``softmax`` (non-matmul work an estimate counts), ``grouped_query`` (K/V projections an
    estimate assumes full-width).
    """
    S = cfg.n_ctx if seq is None else int(seq)
    sf = step_flops(cfg, batch, S)
    pc = param_counts(cfg)
    T = sf.tokens
    exact = float(sf.total)
    meas = exact if measured is None else float(measured)
    A = float(sf.attention)
    Lg = float(sf.by_group["logits"])
    norms = -6.0 * pc.norms * T
    L, H, Q = cfg.n_layer, cfg.n_head, cfg.head_dim

    out = []
    out.append(
        Estimate(
            "6ND (non-embedding N)",
            f"6 * N * D, N = {pc.non_embedding:,} non-embedding parameters, D = {T:,} tokens",
            six_nd(pc.non_embedding, T),
            meas,
            {"attention": A, "logits": Lg, "norms": norms},
        )
    )
    out.append(
        Estimate(
            "6ND (total N)",
            f"6 * N * D, N = {pc.total:,} parameters including embeddings, D = {T:,} tokens",
            six_nd(pc.total, T),
            meas,
            {
                "attention": A,
                "logits": Lg - 6.0 * pc.unembedding * T,
                "embeddings": -6.0 * pc.embedding * T,
                "norms": norms,
            },
        )
    )
    kap = kaplan_training(pc.non_embedding, L, S, cfg.d_attn) * T
    out.append(
        Estimate(
            "Kaplan (2N + 2 n_layer n_ctx d_attn) x 3",
            f"3 * (2N + 2*{L}*{S}*{cfg.d_attn}) * D, N = {pc.non_embedding:,} non-embedding",
            kap,
            meas,
            {"attention": A - 6.0 * L * S * cfg.d_attn * T, "logits": Lg, "norms": norms},
        )
    )
    palm = palm_per_token(pc.total, L, H, Q, S) * T
    out.append(
        Estimate(
            "PaLM 6N + 12 L H Q T",
            f"(6N + 12*{L}*{H}*{Q}*{S}) * D, N = {pc.total:,} total parameters",
            palm,
            meas,
            {
                "attention": A - 12.0 * L * H * Q * S * T,
                "logits": Lg - 6.0 * pc.unembedding * T,
                "embeddings": -6.0 * pc.embedding * T,
                "norms": norms,
            },
        )
    )
    cf = chinchilla_appendix_f(S, cfg.vocab, cfg.d_model, L, H, Q, cfg.ff)
    n_seq = T / S
    appf_attn = 3.0 * n_seq * L * (cf["attn_logits"] + cf["attn_reduce"])
    appf_qkv = 3.0 * n_seq * L * cf["qkv"]
    out.append(
        Estimate(
            "Chinchilla Appendix F",
            f"3 x forward per sequence (embeddings, K/Q/V, logits, softmax, reductions, dense, output) x {n_seq:g} sequences",
            cf["training"] * n_seq,
            meas,
            {
                "attention": A - appf_attn,
                "softmax": -3.0 * n_seq * L * cf["softmax"],
                "embeddings": -3.0 * n_seq * cf["embeddings"],
                "grouped_query": float(sf.by_group["qkv"]) - appf_qkv,
            },
        )
    )
    return out


def sweep(configs: Iterable[GPTConfig], seq: int | None = None) -> list[dict]:
    """Exact count per token of each config against 6N (non-embedding and total), per token."""
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
                "N_non_embedding": pc.non_embedding,
                "N_total": pc.total,
                "flops_per_token": per_tok,
                "ratio_to_6N_non_embedding": per_tok / (6.0 * pc.non_embedding),
                "ratio_to_6N_total": per_tok / (6.0 * pc.total),
                "attention_share": sf.attention / sf.total,
                "logits_share": sf.by_group["logits"] / sf.total,
            }
        )
    return rows
