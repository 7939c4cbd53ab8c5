"""Analytic FLOP counts: the exact count of our model and the published estimates.

Published numbers used here:
* Brown et al. 2020 (GPT-3), Table D.1: GPT-3 175B trained on 300B tokens used 3.14e23 FLOP,
  computed as 6ND with N = 174.6e9; the architecture (Table 2.1) has n_layer 96, d_model 12288.
* Kaplan et al. 2020, Table 1: N = 2 d_model n_layer (2 d_attn + d_ff) = 12 n_layer d_model^2.
* Chowdhery et al. 2022 (PaLM), Appendix B: 6N + 12LHQT model FLOPs per token; PaLM 540B
  (540.35e9 parameters, L 118, H 48, Q 256, T 2048) trained at 238.3K tokens/s on 6144 TPU v4
  chips (275 TFLOP/s bf16 peak each) at 46.2% MFU.
* Hoffmann et al. 2022 (Chinchilla), Appendix F: the per-sequence forward count, term by term.
"""
from __future__ import annotations

import random

import pytest

from flopscale.profiler import flopcount
from flopscale.profiler.flopcount import (
    causal_pairs,
    chinchilla_appendix_f,
    estimates,
    kaplan_params,
    kaplan_training,
    palm_per_token,
    six_nd,
    step_flops,
)
from flopscale.profiler.model import GPTConfig, param_counts


def random_configs(n, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        hd = rng.choice([8, 16, 24, 64])
        kv = rng.choice([1, 2, 3])
        heads = kv * rng.choice([1, 2, 4])
        out.append(GPTConfig(rng.randint(1, 7), hd * heads, heads, rng.randint(3, 300), rng.randint(5, 5000),
                             n_kv_head=kv, d_ff=rng.choice([None, rng.randint(7, 900)]), tied=rng.random() < 0.3))
    return out


def test_causal_pairs_match_a_brute_force_mask():
    for s_q, s_k in [(1, 1), (7, 7), (37, 37), (5, 9), (9, 5), (130, 100)]:
        # torch's is_causal: query i sees keys j <= i (top-left aligned)
        brute = sum(1 for i in range(s_q) for j in range(s_k) if j <= i)
        assert causal_pairs(s_q, s_k) == brute


def independent_step_count(cfg: GPTConfig, B: int, S: int) -> dict[str, int]:
    """Written out from the architecture, matmul by matmul (forward), x3 for training."""
    d, L, V = cfg.d_model, cfg.n_layer, cfg.vocab
    hd = d // cfg.n_head
    kv = cfg.n_kv_head or cfg.n_head
    ff = cfg.d_ff or 4 * d
    T = B * S
    P = S * (S + 1) // 2
    fwd = {
        "qkv": L * (2 * T * d * (cfg.n_head * hd) + 2 * 2 * T * d * (kv * hd)),  # Q, then K and V
        "attn_scores": L * B * cfg.n_head * 2 * hd * P,
        "attn_pv": L * B * cfg.n_head * 2 * hd * P,
        "out_proj": L * 2 * T * (cfg.n_head * hd) * d,
        "mlp": L * (2 * T * d * ff + 2 * T * ff * d),
        "router": 0,
        "logits": 2 * T * d * V,
    }
    return {k: 3 * v for k, v in fwd.items()}


@pytest.mark.parametrize("cfg", random_configs(12, seed=7))
def test_step_flops_equals_an_independent_sum(cfg):
    B, S = 3, max(1, cfg.n_ctx - 2)
    sf = step_flops(cfg, B, S)
    ref = independent_step_count(cfg, B, S)
    assert sf.by_group == ref
    assert sf.total == sum(ref.values())
    assert sf.recompute == 0
    # recompute of the scores: half of the attention forward, i.e. the forward Q K^T once more
    assert step_flops(cfg, B, S, recompute=True).executed == sf.total + ref["attn_scores"] // 3
    assert flopcount.flops_per_token(cfg, S) == pytest.approx(sf.total / (B * S), rel=1e-12)


@pytest.mark.parametrize("cfg", random_configs(10, seed=11))
def test_every_estimate_is_explained_term_by_term(cfg):
    B = 2
    exact = step_flops(cfg, B).total
    for e in estimates(cfg, B):
        # estimate + the named terms = the exact count; nothing left unexplained
        assert e.flops + sum(e.terms.values()) == pytest.approx(exact, rel=1e-12)
        assert abs(e.residual) <= 1e-9 * exact
        assert e.ratio == pytest.approx(exact / e.flops)
    # a measured count that differs shows up in the residual, not in the terms
    for e in estimates(cfg, B, measured=exact + 1000):
        assert e.residual == pytest.approx(1000, abs=1e-9 * exact)


def test_six_nd_gpt3_matches_brown_2020():
    # Brown et al. 2020, Table D.1: 3.14e23 FLOP for 174.6B parameters on 300B tokens
    assert six_nd(174.6e9, 300e9) == pytest.approx(3.14e23, rel=2e-3)


def test_kaplan_parameter_count_gpt3():
    # Kaplan et al. 2020, Table 1; GPT-3 175B: n_layer 96, d_model 12288 (Brown et al. 2020, Table 2.1)
    n = kaplan_params(96, 12288)
    assert n == 12 * 96 * 12288**2
    assert n == pytest.approx(174.6e9, rel=5e-3)
    cfg = GPTConfig(96, 12288, 96, 2048, 50257)
    pc = param_counts(cfg)
    # our non-embedding count = Kaplan's matmul weights + the LayerNorms
    assert pc.non_embedding - pc.norms == n
    assert pc.kaplan == n


def test_palm_540b_reported_mfu_is_reproduced():
    # Chowdhery et al. 2022, Appendix B: 238.3K tokens/s on 6144 TPU v4 (275 TFLOP/s) is 46.2% MFU
    per_token = palm_per_token(540.35e9, 118, 48, 256, 2048)
    mfu = 238.3e3 * per_token / (6144 * 275e12)
    assert mfu == pytest.approx(0.462, abs=0.002)


def test_kaplan_attention_term_is_the_causal_count_up_to_one_token():
    cfg = GPTConfig(4, 256, 4, 512, 1000)
    S = cfg.n_ctx
    sf = step_flops(cfg, 1)
    # per token, Kaplan's 2*n_layer*n_ctx*d_attn forward (x3) versus the causal count 6*L*d*(S+1)
    kap_attn = 3 * 2 * cfg.n_layer * S * cfg.d_model
    assert sf.attention / S == 6 * cfg.n_layer * cfg.d_model * (S + 1)
    assert sf.attention / S - kap_attn == 6 * cfg.n_layer * cfg.d_model
    assert kaplan_training(10, 2, 3, 4) == 3 * (2 * 10 + 2 * 2 * 3 * 4)


def test_chinchilla_appendix_f_as_printed():
    S, V, d, L, H, k, f = 2048, 32000, 640, 10, 10, 64, 2560
    t = chinchilla_appendix_f(S, V, d, L, H, k, f)
    attention = 2 * 3 * S * d * (k * H) + 2 * S * S * (k * H) + 3 * H * S * S + 2 * S * S * (k * H) + 2 * S * (k * H) * d
    dense = 2 * S * (d * f + d * f)
    forward = 2 * S * V * d + L * (attention + dense) + 2 * S * d * V
    assert t["forward"] == pytest.approx(forward, rel=1e-15)
    assert t["training"] == pytest.approx(3 * forward, rel=1e-15)


def test_sweep_ratio_tends_to_one_when_d_model_dominates():
    rows = flopcount.sweep([GPTConfig(24, d, d // 64, 2048, 32000) for d in (512, 2048, 8192)])
    ratios = [r["ratio_to_6N_non_embedding"] for r in rows]
    assert ratios[0] > ratios[1] > ratios[2] > 1.0
    assert ratios[2] < 1.05


def test_flop_counter_mode_agrees_on_the_matmuls():
    """FlopCounterMode's count of our torch-path step: every mm equals our matmul groups."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from flopscale.profiler.model import GPT

    cfg = GPTConfig(2, 48, 4, 24, 61, n_kv_head=2, d_ff=80)
    torch.manual_seed(0)
    model = GPT(cfg)
    idx = torch.randint(0, cfg.vocab, (3, 19))
    with FlopCounterMode(display=False) as fc:
        _, loss = model(idx, idx)
        loss.backward()
    counts = {str(k): int(v) for k, v in fc.get_flop_counts()["Global"].items()}
    sf = step_flops(cfg, 3, 19)
    matmuls = sf.total - sf.attention
    assert counts["aten.mm"] == matmuls
    if not any("attention" in k for k in counts):  # the CPU SDPA kernel has no formula
        assert fc.get_total_flops() == matmuls


@pytest.mark.parametrize("arch", ["llama", "moe"])
def test_step_flops_of_each_arch_equals_an_independent_sum(arch):
    extra = {"n_experts": 6, "top_k": 2} if arch == "moe" else {}
    cfg = GPTConfig(3, 96, 6, 50, 301, n_kv_head=2, arch=arch, **extra)
    B, S = 2, 47
    d, L, T, hd = 96, 3, B * S, 16
    ff = 256  # 8/3 * 96 = 256, already a multiple of 256
    P = S * (S + 1) // 2
    k = 2 if arch == "moe" else 1
    fwd = (L * (2 * T * d * (6 + 2 * 2) * hd + 4 * B * 6 * hd * P + 2 * T * d * d + k * 3 * 2 * T * d * ff)
           + (L * 2 * T * d * 6 if arch == "moe" else 0) + 2 * T * d * 301)
    assert cfg.ff == ff
    assert step_flops(cfg, B, S).total == 3 * fwd
    assert flopcount.flops_per_token(cfg, S) == pytest.approx(3 * fwd / T, rel=1e-12)
    # 6 N_active D covers every weight matmul: the difference is attention + logits - norms
    pc = param_counts(cfg)
    sf = step_flops(cfg, B, S)
    assert sf.total - 6 * pc.active_non_embedding * T == sf.attention + sf.by_group["logits"] - 6 * pc.norms * T


# Hoffmann et al. 2022 (Chinchilla), Table A4 ("FLOPs comparison"): exact FLOPs (Appendix F) / 6ND for
# six models at sequence length 2048 and vocabulary 32,000 (Section 4 / Appendix F). Shapes
# (n_layers, d_model, ffw_size, n_heads, kv_size) are the paper's Table A4/A9 rows; N is the
# parameter count of the same rows in Table A9 (74M, 306M, 552M, 1,143M, 1,593M, 6,796M).
# Transcription cross-checked against karpathy/nanoGPT scaling_laws.ipynb (Table A4 reproduction).
TABLE_A4 = [  # (L, d_model, ffw, heads, kv_size, N (Table A9), ratio printed in Table A4)
    (10, 640, 2560, 10, 64, 74e6, 1.03),
    (20, 1024, 4096, 16, 64, 306e6, 1.10),
    (24, 1280, 5120, 10, 128, 552e6, 1.08),
    (26, 1792, 7168, 14, 128, 1143e6, 1.04),
    (28, 2048, 8192, 16, 128, 1593e6, 1.03),
    (40, 3584, 14336, 28, 128, 6796e6, 0.99),
]


@pytest.mark.parametrize("L,d,f,H,k,N,ratio", TABLE_A4)
def test_chinchilla_table_a4_ratios_need_the_table_a4_convention(L, d, f, H, k, N, ratio):
    t = chinchilla_appendix_f(2048, 32000, d, L, H, k, f)
    six_nd_one_sequence = 6 * N * 2048
    assert t["training_table_a4"] / six_nd_one_sequence == pytest.approx(ratio, rel=0.01)
    # the convention: no embeddings and no final logits
    assert t["training_table_a4"] == pytest.approx(t["training"] - 3 * (t["embeddings"] + t["logits"]), rel=1e-12)


def test_chinchilla_formula_as_printed_misses_table_a4_for_small_models():
    """With embeddings and logits (the formula as printed) the 73M model's ratio is far from 1.03."""
    L, d, f, H, k, N, ratio = TABLE_A4[0]
    t = chinchilla_appendix_f(2048, 32000, d, L, H, k, f)
    assert t["training"] / (6 * N * 2048) > 1.5 * ratio


def test_estimates_report_appendix_f_both_ways_labelled():
    cfg = GPTConfig(3, 64, 4, 32, 500)
    names = [e.name for e in estimates(cfg, 2)]
    assert "Chinchilla Appendix F (as printed)" in names
    assert "Chinchilla Appendix F (Table A4 convention)" in names
    printed, a4 = (next(e for e in estimates(cfg, 2) if e.name == n) for n in names[-2:])
    assert printed.flops - a4.flops == pytest.approx(3 * 2 * (2 * 32 * 500 * 64) * 2, rel=1e-12)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "moe"])
def test_shape_counts_is_the_exact_count_of_concrete_configs(arch):
    """The arithmetic family used for allocation equals param_counts / flops_per_token at concrete shapes."""
    import numpy as np

    extra = {"n_experts": 5, "top_k": 2} if arch == "moe" else {}
    for L, d, h, kv, ff, tied in [(3, 96, 6, 2, 200, False), (2, 64, 4, 4, 100, True), (5, 128, 8, 1, 344, False)]:
        cfg = GPTConfig(L, d, h, 40, 500, n_kv_head=kv, d_ff=ff, tied=tied, arch=arch, **extra)
        pc = param_counts(cfg)
        got = flopcount.shape_counts(float(d), float(L), arch=arch, n_ctx=40, vocab=500, kv_group=h // kv,
                                     tied=tied, d_ff=ff, **extra)
        assert got["total"] == pytest.approx(pc.total, rel=1e-12)
        assert got["non_embedding"] == pytest.approx(pc.non_embedding, rel=1e-12)
        assert got["active"] == pytest.approx(pc.active, rel=1e-12)
        assert got["active_non_embedding"] == pytest.approx(pc.active_non_embedding, rel=1e-12)
        assert got["flops_per_token"] == pytest.approx(flopcount.flops_per_token(cfg), rel=1e-12)
    arr = flopcount.shape_counts(np.array([64.0, 128.0]), np.array([2.0, 4.0]), arch=arch, n_ctx=40, vocab=500)
    assert arr["flops_per_token"].shape == (2,) and np.all(np.diff(arr["flops_per_token"]) > 0)
