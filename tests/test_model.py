"""The GPT decoder: parameter counts, the torch reference path, and the kernels path against it."""
from __future__ import annotations

import math
import random

import pytest
import torch

from flopscale.profiler.model import GPT, GPTConfig, param_counts


def configs(n, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        hd = rng.choice([4, 8, 12])
        kv = rng.choice([1, 2])
        heads = kv * rng.choice([1, 3])
        out.append(GPTConfig(rng.randint(1, 3), hd * heads, heads, rng.randint(2, 40), rng.randint(3, 200),
                             n_kv_head=kv, d_ff=rng.choice([None, rng.randint(5, 70)]), tied=rng.random() < 0.4))
    return out


@pytest.mark.parametrize("cfg", configs(8, seed=3))
def test_param_counts_match_the_modules(cfg):
    model = GPT(cfg)
    pc = param_counts(cfg)
    named = dict(model.named_parameters())
    assert pc.total == sum(p.numel() for p in model.parameters())
    emb = named["tok_emb.weight"].numel() + named["pos_emb.weight"].numel()
    assert pc.embedding == emb
    assert pc.unembedding == (0 if cfg.tied else named["lm_head.weight"].numel())
    assert pc.norms == sum(p.numel() for n, p in named.items() if ".ln" in n or n.startswith("ln_f"))
    assert pc.non_embedding == pc.total - emb - pc.unembedding
    assert pc.kaplan == 12 * cfg.n_layer * cfg.d_model**2


def test_kaplan_count_is_the_matmul_weights_for_the_standard_shape():
    cfg = GPTConfig(6, 96, 3, 64, 500)  # d_ff = 4 d_model, no grouped-query heads
    pc = param_counts(cfg)
    assert pc.matmul_weights == pc.kaplan


def test_bad_configs_raise():
    with pytest.raises(ValueError, match="divisible by n_head"):
        GPTConfig(2, 100, 3, 16, 10)
    with pytest.raises(ValueError, match="divisible by n_kv_head"):
        GPTConfig(2, 96, 6, 16, 10, n_kv_head=4)
    with pytest.raises(ValueError, match="positive"):
        GPTConfig(0, 64, 2, 16, 10)
    with pytest.raises(ValueError, match="impl"):
        GPT(GPTConfig(1, 16, 2, 8, 10), impl="cuda")
    with pytest.raises(ValueError, match="exceeds n_ctx"):
        GPT(GPTConfig(1, 16, 2, 8, 10))(torch.zeros(1, 9, dtype=torch.long))


def naive_forward(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """The same network written out in float64 with an explicit causal mask."""
    cfg = model.cfg
    P = {n: p.detach().double() for n, p in model.named_parameters()}
    B, S = idx.shape
    x = P["tok_emb.weight"][idx] + P["pos_emb.weight"][:S]
    hd = cfg.head_dim
    g = cfg.n_head // cfg.kv_heads
    mask = torch.ones(S, S, dtype=torch.bool).tril()
    for i in range(cfg.n_layer):
        pre = f"blocks.{i}."
        h = torch.nn.functional.layer_norm(x, (cfg.d_model,), P[pre + "ln1.weight"], P[pre + "ln1.bias"])
        qkv = h @ P[pre + "attn.qkv.weight"]
        q, k, v = qkv.split([cfg.n_head * hd, cfg.kv_heads * hd, cfg.kv_heads * hd], dim=-1)
        q = q.view(B, S, cfg.n_head, hd).transpose(1, 2)
        k = k.view(B, S, cfg.kv_heads, hd).transpose(1, 2).repeat_interleave(g, dim=1)
        v = v.view(B, S, cfg.kv_heads, hd).transpose(1, 2).repeat_interleave(g, dim=1)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, S, -1)
        x = x + y @ P[pre + "attn.proj.weight"]
        h = torch.nn.functional.layer_norm(x, (cfg.d_model,), P[pre + "ln2.weight"], P[pre + "ln2.bias"])
        x = x + torch.nn.functional.gelu(h @ P[pre + "mlp.fc.weight"], approximate="tanh") @ P[pre + "mlp.proj.weight"]
    x = torch.nn.functional.layer_norm(x, (cfg.d_model,), P["ln_f.weight"], P["ln_f.bias"])
    w = P["tok_emb.weight"].t() if cfg.tied else P["lm_head.weight"]
    return x @ w


@pytest.mark.parametrize("cfg", configs(4, seed=5))
def test_torch_path_matches_a_float64_reference(cfg):
    torch.manual_seed(1)
    model = GPT(cfg)
    S = random.Random(2).randint(1, cfg.n_ctx)
    idx = torch.randint(0, cfg.vocab, (2, S))
    out = model(idx).double()
    ref = naive_forward(model, idx)
    err = ((out - ref).norm() / ref.norm()).item()
    assert err < 1e-5


def test_kernels_path_matches_the_torch_path():
    """Forward and gradients through kernels.matmul / kernels.attention (Triton; interpreter on a CPU)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = GPTConfig(1, 32, 2, 16, 50, n_kv_head=1)
    torch.manual_seed(0)
    model = GPT(cfg).to(device)
    idx = torch.randint(0, cfg.vocab, (2, 13), device=device)
    tgt = torch.randint(0, cfg.vocab, (2, 13), device=device)
    _, l_ref = model(idx, tgt)
    l_ref.backward()
    g_ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    model.set_impl("kernels")
    assert all(m.impl == "kernels" for m in model.modules() if hasattr(m, "impl") and not isinstance(m, GPT))
    _, l_k = model(idx, tgt)
    l_k.backward()
    assert torch.isfinite(l_k)
    assert abs(l_k.item() - l_ref.item()) < 1e-5 * abs(l_ref.item())
    for n, p in model.named_parameters():
        err = ((p.grad - g_ref[n]).norm() / g_ref[n].norm()).item()
        assert err < 1e-4, n


# ---------------------------------------------------------------- architectures (gpt2, llama, moe)

from flopscale.profiler.model import llama_ff  # noqa: E402


def test_llama_ff_is_eight_thirds_rounded_up_to_256():
    # Touvron et al. 2023 (LLaMA): d 4096 -> 11008, d 5120 -> 13824, d 8192 -> 22016 (Llama 2 70B: 28672
    # uses a multiplier, not the default rule)
    assert [llama_ff(d) for d in (4096, 5120, 8192)] == [11008, 13824, 22016]
    assert GPTConfig(1, 64, 4, 8, 10, arch="llama").ff == 256
    assert GPTConfig(1, 64, 4, 8, 10).ff == 256 and GPTConfig(1, 96, 4, 8, 10).ff == 384


@pytest.mark.parametrize("arch,extra", [("llama", {}), ("moe", {"n_experts": 5, "top_k": 2}),
                                        ("moe", {"n_experts": 3, "top_k": 3})])
def test_param_counts_match_the_modules_for_each_arch(arch, extra):
    cfg = GPTConfig(2, 48, 4, 16, 37, n_kv_head=2, d_ff=40, arch=arch, **extra)
    model = GPT(cfg)
    pc = param_counts(cfg)
    named = dict(model.named_parameters())
    assert pc.total == sum(p.numel() for p in model.parameters())
    assert pc.embedding == named["tok_emb.weight"].numel() and "pos_emb.weight" not in named
    assert pc.norms == sum(p.numel() for n, p in named.items() if ".ln" in n or n.startswith("ln_f"))
    assert pc.norms == (2 * cfg.n_layer + 1) * cfg.d_model  # RMSNorm: a weight only
    experts = sum(p.numel() for n, p in named.items() if ".experts." in n)
    router = sum(p.numel() for n, p in named.items() if "router" in n)
    assert (pc.experts, pc.router) == ((experts, router) if arch == "moe" else (0, 0))
    if arch == "moe":
        E, k = cfg.n_experts, cfg.top_k
        assert pc.total - pc.active == experts * (E - k) // E
        assert pc.non_embedding - pc.active_non_embedding == pc.total - pc.active
    else:
        assert pc.active == pc.total and pc.active_non_embedding == pc.non_embedding


def test_moe_routes_each_token_to_top_k_experts_only():
    """The MoE layer against a dense loop over tokens written here."""
    torch.manual_seed(0)
    cfg = GPTConfig(1, 32, 2, 8, 11, d_ff=24, arch="moe", n_experts=4, top_k=2)
    moe = GPT(cfg).blocks[0].mlp.double()
    x = torch.randn(3, 5, 32, dtype=torch.float64)
    out = moe(x)
    flat = x.reshape(-1, 32)
    ref = torch.zeros_like(flat)
    for t in range(flat.shape[0]):
        s = flat[t] @ moe.router.weight
        top, which = s.topk(2)
        w = torch.softmax(top, 0)
        for j in range(2):
            e = moe.experts[int(which[j])]
            h = flat[t] @ e.fc.weight
            g, u = h.chunk(2)
            ref[t] += w[j] * ((torch.nn.functional.silu(g) * u) @ e.proj.weight)
    assert torch.allclose(out.reshape(-1, 32), ref, rtol=1e-10, atol=1e-12)


def test_bad_arch_fields_raise():
    with pytest.raises(ValueError, match="arch"):
        GPTConfig(1, 16, 2, 8, 10, arch="mamba")
    with pytest.raises(ValueError, match="apply to arch 'moe'"):
        GPTConfig(1, 16, 2, 8, 10, n_experts=4)
    with pytest.raises(ValueError, match="exceeds n_experts"):
        GPTConfig(1, 16, 2, 8, 10, arch="moe", n_experts=2, top_k=3)
    with pytest.raises(ValueError, match="even head_dim"):
        GPTConfig(1, 18, 2, 8, 10, arch="llama")
