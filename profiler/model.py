"""Decoders built from the :mod:`kernels` ops, with a pure-torch reference path.

Three architectures, chosen by ``GPTConfig.arch`` (what the FLOP counts in
:mod:`profiler.flopcount` assume):

* ``"gpt2"`` (the default, described below): learned positions, LayerNorm, GELU MLP;
* ``"llama"``: no position table (rotary embeddings on queries and keys, no parameters),
  RMSNorm (a weight, no bias), SwiGLU MLP ``proj(silu(x W_gate) * (x W_up))`` with
  ``d_ff`` defaulting to ``256 * ceil(int(8 d / 3) / 256)`` (8/3 d rounded *up* to a multiple
  of 256, as in Meta's LLaMA code; d = 4096 gives 11008), grouped-query attention through
  ``n_kv_head``, output layer untied unless ``tied=True``;
* ``"moe"``: the llama block with its MLP replaced by ``n_experts`` SwiGLU experts (each of
  width ``d_ff``) and a router ``d_model -> n_experts`` (a bias-free linear layer, counted in
  the parameters and the FLOPs); every token goes to its ``top_k`` highest-scoring experts
  (softmax over the top-k scores), no capacity limit and no dropped tokens, so each token
  costs exactly ``top_k`` experts' FLOPs however the tokens are spread.

The GPT-2 layout:

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
* ``kaplan`` -- Kaplan's approximation ``12 * n_layer * d_model**2``;
* ``active`` / ``active_non_embedding`` -- parameters that touch one token: for ``"moe"``
  the experts a token is not routed to are left out (router and ``top_k`` experts in); for
  dense models equal to ``total`` / ``non_embedding``.  ``6 * active_non_embedding * D`` is
  the 6ND an MoE user checks;
* ``experts`` / ``router`` -- parameters in all experts and in the routers (0 when dense).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["GPTConfig", "ParamCounts", "param_counts", "GPT", "IMPLS", "ARCHS", "llama_ff"]

IMPLS = ("torch", "kernels")
ARCHS = ("gpt2", "llama", "moe")
LLAMA_FF_MULTIPLE = 256
DEFAULT_EXPERTS = 8
DEFAULT_TOP_K = 2


def llama_ff(d_model: int, multiple: int = LLAMA_FF_MULTIPLE) -> int:
    """SwiGLU width ``8/3 d`` rounded up to a multiple of ``multiple``: ``m * ceil(int(8d/3) / m)``."""
    return multiple * -(-int(8 * d_model / 3) // multiple)


@dataclass(frozen=True)
class GPTConfig:
    """Shape of the decoder.  ``n_kv_head`` defaults to ``n_head``; ``d_ff`` to ``4*d_model``
    (gpt2) or :func:`llama_ff` (llama, moe).  ``arch`` is ``"gpt2"``, ``"llama"`` or ``"moe"``;
    ``n_experts`` (default 8) and ``top_k`` (default 2) only apply to ``"moe"``."""

    n_layer: int
    d_model: int
    n_head: int
    n_ctx: int
    vocab: int
    n_kv_head: int | None = None
    d_ff: int | None = None
    tied: bool = False
    arch: str = "gpt2"
    n_experts: int | None = None
    top_k: int | None = None

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
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
        if self.arch != "moe":
            if self.n_experts is not None or self.top_k is not None:
                raise ValueError(f"n_experts and top_k apply to arch 'moe', not {self.arch!r}")
        else:
            for name in ("n_experts", "top_k"):
                v = getattr(self, name)
                if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
                    raise ValueError(f"{name} must be a positive integer, got {v!r}")
            if self.top_k_ > self.experts_:
                raise ValueError(f"top_k ({self.top_k_}) exceeds n_experts ({self.experts_})")
        if self.arch != "gpt2" and self.head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head_dim, got {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def ff(self) -> int:
        """MLP width (per expert for ``"moe"``)."""
        if self.d_ff is not None:
            return self.d_ff
        return 4 * self.d_model if self.arch == "gpt2" else llama_ff(self.d_model)

    @property
    def experts_(self) -> int:
        """Experts per layer: ``n_experts`` (default 8) for ``"moe"``, else 1."""
        if self.arch != "moe":
            return 1
        return DEFAULT_EXPERTS if self.n_experts is None else self.n_experts

    @property
    def top_k_(self) -> int:
        """Experts per token: ``top_k`` (default 2) for ``"moe"``, else 1."""
        if self.arch != "moe":
            return 1
        return DEFAULT_TOP_K if self.top_k is None else self.top_k

    @property
    def mlp_matrices(self) -> int:
        """Weight matrices of one MLP (one expert): 2 for GELU, 3 for SwiGLU."""
        return 2 if self.arch == "gpt2" else 3

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
        if self.arch == "moe":
            out["n_experts"] = self.experts_
            out["top_k"] = self.top_k_
        else:
            del out["n_experts"], out["top_k"]
        return out


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts in parameters (module docstring).  ``active`` and
    ``active_non_embedding`` default to ``total`` and ``non_embedding`` (a dense model)."""

    total: int
    non_embedding: int
    embedding: int
    unembedding: int
    norms: int
    kaplan: int
    active: int | None = None
    active_non_embedding: int | None = None
    experts: int = 0
    router: int = 0

    def __post_init__(self) -> None:
        if self.active is None:
            object.__setattr__(self, "active", self.total)
        if self.active_non_embedding is None:
            object.__setattr__(self, "active_non_embedding", self.non_embedding)

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
            "active": self.active,
            "active_non_embedding": self.active_non_embedding,
            "experts": self.experts,
            "router": self.router,
        }


def param_counts(cfg: GPTConfig) -> ParamCounts:
    """Parameter counts of :class:`GPT` with this config, computed from the shape alone."""
    d, L = cfg.d_model, cfg.n_layer
    attn = d * (cfg.d_attn + 2 * cfg.d_kv) + cfg.d_attn * d
    expert = cfg.mlp_matrices * d * cfg.ff
    router = d * cfg.experts_ if cfg.arch == "moe" else 0
    norms = (2 * L + 1) * (2 * d if cfg.arch == "gpt2" else d)
    embedding = cfg.vocab * d + (cfg.n_ctx * d if cfg.arch == "gpt2" else 0)
    unembedding = 0 if cfg.tied else d * cfg.vocab
    non_embedding = L * (attn + router + cfg.experts_ * expert) + norms
    inactive = L * (cfg.experts_ - cfg.top_k_) * expert
    total = non_embedding + embedding + unembedding
    return ParamCounts(
        total=total,
        non_embedding=non_embedding,
        embedding=embedding,
        unembedding=unembedding,
        norms=norms,
        kaplan=12 * L * d * d,
        active=total - inactive,
        active_non_embedding=non_embedding - inactive,
        experts=L * cfg.experts_ * expert if cfg.arch == "moe" else 0,
        router=L * router,
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

    def rotary(x: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
        """Rotary position embedding of ``x [B, H, S, D]`` (halves rotated, as in GPT-NeoX/LLaMA-HF)."""
        S = x.shape[-2]
        ang = torch.arange(S, device=x.device, dtype=torch.float32)[:, None] * inv_freq[None, :]
        ang = torch.cat([ang, ang], dim=-1)
        cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin

    class Attention(nn.Module):
        def __init__(self, cfg: GPTConfig):
            super().__init__()
            self.cfg = cfg
            out_std = 0.02 / math.sqrt(2 * cfg.n_layer)
            self.qkv = Linear(cfg.d_model, cfg.d_attn + 2 * cfg.d_kv)
            self.core = CausalAttention(cfg.n_head, cfg.kv_heads)
            self.proj = Linear(cfg.d_attn, cfg.d_model, std=out_std)
            self.rope = cfg.arch != "gpt2"
            if self.rope:
                hd = cfg.head_dim
                inv = 1.0 / (10000.0 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
                self.register_buffer("inv_freq", inv, persistent=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            cfg = self.cfg
            B, S, _ = x.shape
            qkv = self.qkv(x)
            q, k, v = qkv.split([cfg.d_attn, cfg.d_kv, cfg.d_kv], dim=-1)
            q = q.reshape(B, S, cfg.n_head, cfg.head_dim).transpose(1, 2)
            k = k.reshape(B, S, cfg.kv_heads, cfg.head_dim).transpose(1, 2)
            v = v.reshape(B, S, cfg.kv_heads, cfg.head_dim).transpose(1, 2)
            if self.rope:
                inv = self.inv_freq.float()
                q, k = rotary(q, inv), rotary(k, inv)
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

    class SwiGLU(nn.Module):
        """``proj(silu(gate) * up)`` with gate and up from one fused ``fc`` ``d -> 2 d_ff``."""

        def __init__(self, cfg: GPTConfig):
            super().__init__()
            self.fc = Linear(cfg.d_model, 2 * cfg.ff)
            self.proj = Linear(cfg.ff, cfg.d_model, std=0.02 / math.sqrt(2 * cfg.n_layer))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            gate, up = self.fc(x).chunk(2, dim=-1)
            return self.proj(F.silu(gate) * up)

    class MoE(nn.Module):
        """Top-k routed SwiGLU experts, dropless: each token runs exactly ``top_k`` experts.

        ``router`` scores the experts, the top ``k`` scores are soft-maxed into the weights
        that combine the chosen experts' outputs.
        """

        def __init__(self, cfg: GPTConfig):
            super().__init__()
            self.top_k = cfg.top_k_
            self.router = Linear(cfg.d_model, cfg.experts_)
            self.experts = nn.ModuleList(SwiGLU(cfg) for _ in range(cfg.experts_))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            shape = x.shape
            flat = x.reshape(-1, shape[-1])
            scores = self.router(flat)
            top, which = scores.topk(self.top_k, dim=-1)
            weights = torch.softmax(top.to(torch.promote_types(top.dtype, torch.float32)), dim=-1).to(x.dtype)
            out = torch.zeros_like(flat)
            for e, expert in enumerate(self.experts):
                tok, slot = (which == e).nonzero(as_tuple=True)
                if tok.numel() == 0:
                    continue
                y = expert(flat.index_select(0, tok)) * weights[tok, slot][:, None]
                out = out.index_add(0, tok, y)
            return out.reshape(shape)

    class Block(nn.Module):
        def __init__(self, cfg: GPTConfig):
            super().__init__()
            norm = nn.LayerNorm if cfg.arch == "gpt2" else nn.RMSNorm
            self.ln1 = norm(cfg.d_model)
            self.attn = Attention(cfg)
            self.ln2 = norm(cfg.d_model)
            self.mlp = {"gpt2": MLP, "llama": SwiGLU, "moe": MoE}[cfg.arch](cfg)

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
            nn.init.normal_(self.tok_emb.weight, std=0.02)
            self.pos_emb = nn.Embedding(cfg.n_ctx, cfg.d_model) if cfg.arch == "gpt2" else None
            if self.pos_emb is not None:
                nn.init.normal_(self.pos_emb.weight, std=0.02)
            self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
            self.ln_f = nn.LayerNorm(cfg.d_model) if cfg.arch == "gpt2" else nn.RMSNorm(cfg.d_model)
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
            x = self.tok_emb(idx)
            if self.pos_emb is not None:
                x = x + self.pos_emb(torch.arange(S, device=idx.device))
            for block in self.blocks:
                x = block(x)
            logits = self.lm_head(self.ln_f(x))
            if targets is None:
                return logits
            loss = F.cross_entropy(logits.float().reshape(B * S, -1), targets.reshape(B * S))
            return logits, loss
