"""A GPT-style decoder built from the :mod:`kernels` ops, with a pure-torch reference path.

Architecture (what the FLOP counts in :mod:`profiler.flopcount` assume):

* token embedding ``[vocab, d_model]`` plus learned position embedding ``[n_ctx, d_model]``;
* ``n_layer`` pre-norm blocks: ``x + attn(LN(x))`` then ``x + mlp(LN(x))``;
  attention = one fused QKV projection ``d_model -> (n_head + 2*n_kv_head)*head_dim``,
  causal self-attention (grouped-query when ``n_kv_head < n_head``), an output projection
  ``n_head*head_dim -> d_model``; MLP = ``d_model -> d_ff`` (GELU, tanh form) ``-> d_model``;
* a final LayerNorm and an output projection to the vocabulary, untied from the token
  embedding unless ``tied=True``.

Linear layers have no bias; LayerNorms have a weight and a bias.  Every weight is stored
``[in, out]`` so that the kernels' ``matmul(x, w)`` (``x [..., M, K] @ w [K, N]``) applies it
directly.

``impl="kernels"`` sends every matmul through ``kernels.matmul`` and the attention through
``kernels.attention(q, k, v, causal=True)`` (Triton: a GPU, or the slow interpreter on a CPU);
``impl="torch"`` uses ``torch.matmul`` and ``torch.nn.functional.scaled_dot_product_attention``
(``is_causal=True``), the reference path and the fast one on a CPU.  Both compute the same
function of the same parameters.

Parameter counts (:func:`param_counts`), in parameters:

* ``total`` -- every parameter (a tied vocabulary matrix counted once);
* ``embedding`` -- token and position embeddings;
* ``unembedding`` -- the untied output projection (0 when tied);
* ``non_embedding`` -- ``total - embedding - unembedding``: the blocks and the final norm.
  This is Kaplan et al.'s N (their model ties the de-embedding to the embedding);
* ``kaplan`` -- Kaplan's approximation ``12 * n_layer * d_model**2``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["GPTConfig", "ParamCounts", "param_counts", "GPT", "IMPLS"]

IMPLS = ("torch", "kernels")


@dataclass(frozen=True)
class GPTConfig:
    """Shape of the decoder.  ``n_kv_head`` defaults to ``n_head`` and ``d_ff`` to ``4*d_model``."""

    n_layer: int
    d_model: int
    n_head: int
    n_ctx: int
    vocab: int
    n_kv_head: int | None = None
    d_ff: int | None = None
    tied: bool = False

    def __post_init__(self) -> None:
        for name in ("n_layer", "d_model", "n_head", "n_ctx", "vocab"):
            value = getattr(self, name)
            if not isinstance(value, (int,)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) is not divisible by n_head ({self.n_head})")
        if self.n_kv_head is not None:
            if not isinstance(self.n_kv_head, int) or self.n_kv_head <= 0:
                raise ValueError(f"n_kv_head must be a positive integer, got {self.n_kv_head!r}")
            if self.n_head % self.n_kv_head:
                raise ValueError(f"n_head ({self.n_head}) is not divisible by n_kv_head ({self.n_kv_head})")
        if self.d_ff is not None and (not isinstance(self.d_ff, int) or self.d_ff <= 0):
            raise ValueError(f"d_ff must be a positive integer, got {self.d_ff!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def ff(self) -> int:
        return 4 * self.d_model if self.d_ff is None else self.d_ff

    @property
    def d_attn(self) -> int:
        """Query width ``n_head * head_dim`` (= d_model here), Kaplan's d_attn."""
        return self.n_head * self.head_dim

    @property
    def d_kv(self) -> int:
        """Width of the keys (and of the values): ``n_kv_head * head_dim``."""
        return self.kv_heads * self.head_dim

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["n_kv_head"] = self.kv_heads
        out["d_ff"] = self.ff
        out["head_dim"] = self.head_dim
        return out


@dataclass(frozen=True)
class ParamCounts:
    total: int
    non_embedding: int
    embedding: int
    unembedding: int
    norms: int
    kaplan: int

    @property
    def matmul_weights(self) -> int:
        """Parameters that multiply activations in a matmul inside the blocks."""
        return self.non_embedding - self.norms

    def to_dict(self) -> dict[str, int]:
        return {
            "total": self.total,
            "non_embedding": self.non_embedding,
            "embedding": self.embedding,
            "unembedding": self.unembedding,
            "norms": self.norms,
            "kaplan_12Ld2": self.kaplan,
        }


def param_counts(cfg: GPTConfig) -> ParamCounts:
    """Parameter counts of :class:`GPT` with this config, computed from the shape alone."""
    d, L = cfg.d_model, cfg.n_layer
    per_block_matmul = d * (cfg.d_attn + 2 * cfg.d_kv) + cfg.d_attn * d + 2 * d * cfg.ff
    norms = (2 * L + 1) * 2 * d
    embedding = cfg.vocab * d + cfg.n_ctx * d
    unembedding = 0 if cfg.tied else d * cfg.vocab
    non_embedding = L * per_block_matmul + norms
    total = non_embedding + embedding + unembedding
    return ParamCounts(
        total=total,
        non_embedding=non_embedding,
        embedding=embedding,
        unembedding=unembedding,
        norms=norms,
        kaplan=12 * L * d * d,
    )


# ----------------------------------------------------------------------------------------
# torch modules (torch imported lazily so that the pure functions above stay cheap)
# ----------------------------------------------------------------------------------------

try:  # pragma: no cover - exercised whenever torch is installed, which it always is here
    import torch
    from torch import nn
    import torch.nn.functional as F
except ImportError:  # pragma: no cover
    torch = None  # type: ignore[assignment]
    nn = None  # type: ignore[assignment]


def _check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return impl


if torch is not None:

    class Linear(nn.Module):
        """``y = x @ W`` with ``W [in_features, out_features]``, no bias."""

        def __init__(self, in_features: int, out_features: int, std: float = 0.02):
            super().__init__()
            self.weight = nn.Parameter(torch.empty(in_features, out_features))
            nn.init.normal_(self.weight, mean=0.0, std=std)
            self.impl = "torch"

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.impl == "kernels":
                from flopscale import kernels

                return kernels.matmul(x, self.weight)
            return torch.matmul(x, self.weight)

        def extra_repr(self) -> str:
            return f"in={self.weight.shape[0]}, out={self.weight.shape[1]}, impl={self.impl}"

    class TiedHead(nn.Module):
        """Logits through the token embedding's transpose (``tied=True``)."""

        def __init__(self, embedding: nn.Embedding):
            super().__init__()
            self._embedding = [embedding]  # not a submodule: its parameter is counted once
            self.impl = "torch"

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            w = self._embedding[0].weight.t()
            if self.impl == "kernels":
                from flopscale import kernels

                return kernels.matmul(x, w)
            return torch.matmul(x, w)

    class CausalAttention(nn.Module):
        """Causal scaled-dot-product attention on ``q [B, H, S, D]``, ``k, v [B, H_kv, S, D]``."""

        def __init__(self, n_head: int, n_kv_head: int):
            super().__init__()
            self.n_head, self.n_kv_head = n_head, n_kv_head
            self.impl = "torch"

        def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            if self.impl == "kernels":
                from flopscale import kernels

                return kernels.attention(q, k, v, causal=True)
            if self.n_kv_head != self.n_head:
                g = self.n_head // self.n_kv_head
                B, Hkv, S, D = k.shape
                k = k[:, :, None].expand(B, Hkv, g, S, D).reshape(B, Hkv * g, S, D)
                v = v[:, :, None].expand(B, Hkv, g, S, D).reshape(B, Hkv * g, S, D)
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    class Attention(nn.Module):
        def __init__(self, cfg: GPTConfig):
            super().__init__()
            self.cfg = cfg
            out_std = 0.02 / math.sqrt(2 * cfg.n_layer)
            self.qkv = Linear(cfg.d_model, cfg.d_attn + 2 * cfg.d_kv)
            self.core = CausalAttention(cfg.n_head, cfg.kv_heads)
            self.proj = Linear(cfg.d_attn, cfg.d_model, std=out_std)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            cfg = self.cfg
            B, S, _ = x.shape
            qkv = self.qkv(x)
            q, k, v = qkv.split([cfg.d_attn, cfg.d_kv, cfg.d_kv], dim=-1)
            q = q.reshape(B, S, cfg.n_head, cfg.head_dim).transpose(1, 2)
            k = k.reshape(B, S, cfg.kv_heads, cfg.head_dim).transpose(1, 2)
            v = v.reshape(B, S, cfg.kv_heads, cfg.head_dim).transpose(1, 2)
            if self.core.impl == "kernels":
                q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
            y = self.core(q, k, v)
            y = y.transpose(1, 2).reshape(B, S, cfg.d_attn)
            return self.proj(y)

    class MLP(nn.Module):
        def __init__(self, cfg: GPTConfig):
            super().__init__()
            self.fc = Linear(cfg.d_model, cfg.ff)
            self.proj = Linear(cfg.ff, cfg.d_model, std=0.02 / math.sqrt(2 * cfg.n_layer))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(F.gelu(self.fc(x), approximate="tanh"))

    class Block(nn.Module):
        def __init__(self, cfg: GPTConfig):
            super().__init__()
            self.ln1 = nn.LayerNorm(cfg.d_model)
            self.attn = Attention(cfg)
            self.ln2 = nn.LayerNorm(cfg.d_model)
            self.mlp = MLP(cfg)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x + self.attn(self.ln1(x))
            return x + self.mlp(self.ln2(x))

    class GPT(nn.Module):
        """The decoder.  ``forward(idx, targets=None)`` -> logits, or ``(logits, loss)``.

        ``idx`` and ``targets`` are ``[B, S]`` token ids with ``S <= n_ctx``; the loss is the
        mean cross-entropy in fp32.
        """

        def __init__(self, cfg: GPTConfig, impl: str = "torch"):
            super().__init__()
            self.cfg = cfg
            self.tok_emb = nn.Embedding(cfg.vocab, cfg.d_model)
            self.pos_emb = nn.Embedding(cfg.n_ctx, cfg.d_model)
            nn.init.normal_(self.tok_emb.weight, std=0.02)
            nn.init.normal_(self.pos_emb.weight, std=0.02)
            self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
            self.ln_f = nn.LayerNorm(cfg.d_model)
            self.lm_head = TiedHead(self.tok_emb) if cfg.tied else Linear(cfg.d_model, cfg.vocab)
            self.set_impl(impl)

        @property
        def impl(self) -> str:
            return self._impl

        def set_impl(self, impl: str) -> "GPT":
            """Switch every matmul and attention between ``"kernels"`` and ``"torch"``."""
            self._impl = _check_impl(impl)
            for m in self.modules():
                if isinstance(m, (Linear, TiedHead, CausalAttention)):
                    m.impl = impl
            return self

        def param_counts(self) -> ParamCounts:
            return param_counts(self.cfg)

        def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
            B, S = idx.shape
            if S > self.cfg.n_ctx:
                raise ValueError(f"sequence length {S} exceeds n_ctx {self.cfg.n_ctx}")
            pos = torch.arange(S, device=idx.device)
            x = self.tok_emb(idx) + self.pos_emb(pos)
            for block in self.blocks:
                x = block(x)
            logits = self.lm_head(self.ln_f(x))
            if targets is None:
                return logits
            loss = F.cross_entropy(logits.float().reshape(B * S, -1), targets.reshape(B * S))
            return logits, loss
