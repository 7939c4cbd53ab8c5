"""kernels.attention: fused attention against a float64 reference, costs, bad input.

Under the Triton interpreter (no GPU) the kernels run on the CPU with one small tile
configuration (32 x 16), so the ragged lengths below cross several tiles and the causal
diagonal band.  Kernel outputs are NaN-poisoned before every launch (``POISON_OUTPUTS``),
so an element the kernel forgets to write fails the comparison.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from flopscale import kernels
from flopscale.kernels import attention_layer as al  # registers the ops before any FlopCounterMode exists
from flopscale.kernels.attention_layer import attention_reference

TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-2}


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    monkeypatch.setattr(al, "POISON_OUTPUTS", True)


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    x = x.detach().double().cpu()
    ref = ref.detach().double().cpu()
    assert not torch.isnan(x).any(), "NaN in kernel output"
    denom = ref.norm().item()
    return (x - ref).norm().item() / (denom if denom > 0 else 1.0)


def make_qkv(B, H, H_kv, S_q, S_k, D, dtype, device, gen):
    q = torch.randn(B, H, S_q, D, generator=gen).to(dtype).to(device)
    k = torch.randn(B, H_kv, S_k, D, generator=gen).to(dtype).to(device)
    v = torch.randn(B, H_kv, S_k, D, generator=gen).to(dtype).to(device)
    return [t.requires_grad_() for t in (q, k, v)]


def check_fwd_bwd(q, k, v, causal, sm_scale=None, tol=None, gen=None):
    """Kernel forward and q/k/v gradients against the float64 reference on the same inputs."""
    tol = TOL[q.dtype] if tol is None else tol
    o = kernels.attention(q, k, v, causal=causal, sm_scale=sm_scale)
    assert o.shape == q.shape and o.dtype == q.dtype
    do = torch.randn(o.shape, generator=gen).to(o.dtype).to(o.device)
    o.backward(do)
    q64, k64, v64 = (t.detach().double().cpu().requires_grad_() for t in (q, k, v))
    ref = attention_reference(q64, k64, v64, causal=causal, sm_scale=sm_scale)
    ref.backward(do.double().cpu())
    errs = {
        "o": rel_err(o, ref),
        "dq": rel_err(q.grad, q64.grad),
        "dk": rel_err(k.grad, k64.grad),
        "dv": rel_err(v.grad, v64.grad),
    }
    bad = {name: e for name, e in errs.items() if not e < tol}
    assert not bad, f"relative errors above {tol}: {bad} (all: {errs})"
    return errs


# (B, H, H_kv, S_q, S_k, D, causal, dtype): ragged lengths 1, 7, 37, 100, 130, S_q != S_k both
# ways, grouped-query (H_kv < H) and multi-query (H_kv = 1) heads
CASES = [
    (1, 2, 2, 1, 1, 16, False, torch.float32),
    (1, 2, 1, 7, 7, 16, True, torch.float32),
    (2, 2, 1, 37, 37, 32, True, torch.float16),
    (1, 4, 2, 100, 37, 16, True, torch.float32),
    (1, 2, 2, 37, 130, 16, True, torch.float16),
    (1, 3, 1, 130, 100, 16, False, torch.float32),
    (2, 2, 1, 100, 100, 32, False, torch.float16),
    (1, 2, 1, 130, 130, 16, True, torch.float32),
    (1, 2, 2, 1, 37, 16, True, torch.float32),
    (1, 2, 2, 37, 1, 16, True, torch.float16),
    # bottom-right alignment (query i sees keys j <= i + S_k - S_q): S_q < S_k (decoding-like,
    # chunked prefill) and S_q > S_k (the first S_q - S_k queries see no key), GQA, both dtypes
    (1, 4, 2, 37, 100, 16, "bottom_right", torch.float32),
    (2, 2, 1, 100, 37, 16, "bottom_right", torch.float16),
    (1, 2, 1, 5, 130, 32, "bottom_right", torch.float16),
    (1, 2, 2, 45, 45, 16, "bottom_right", torch.float32),
    (1, 2, 1, 37, 37, 16, "top_left", torch.float16),
]


@pytest.mark.parametrize("B,H,H_kv,S_q,S_k,D,causal,dtype", CASES)
def test_matches_float64_reference(B, H, H_kv, S_q, S_k, D, causal, dtype, device):
    gen = torch.Generator().manual_seed(hash((B, H, H_kv, S_q, S_k, D, causal)) % 2**31)
    q, k, v = make_qkv(B, H, H_kv, S_q, S_k, D, dtype, device, gen)
    check_fwd_bwd(q, k, v, causal, gen=gen)


@pytest.mark.parametrize("D", [64, 128, 256])
def test_large_head_dims(D, device):
    gen = torch.Generator().manual_seed(D)
    q, k, v = make_qkv(1, 2, 1, 19, 23, D, torch.float32, device, gen)
    check_fwd_bwd(q, k, v, causal=True, gen=gen)


@pytest.mark.parametrize("D", [8, 24, 80])
def test_padded_head_dims(D, device):
    """Head dims that are not a power of two (or < 16) run on a padded, masked tile."""
    gen = torch.Generator().manual_seed(100 + D)
    q, k, v = make_qkv(1, 2, 2, 21, 33, D, torch.float16, device, gen)
    check_fwd_bwd(q, k, v, causal=True, gen=gen)


def test_custom_scale_and_non_contiguous_inputs(device):
    """[B, S, H, D] storage viewed as [B, H, S, D], k/v slices of a packed kv tensor, and a
    stride-0 output gradient (from ``.sum()``)."""
    gen = torch.Generator().manual_seed(7)
    B, H, H_kv, S, D = 2, 4, 2, 37, 16
    q = torch.randn(B, S, H, D, generator=gen).to(device).transpose(1, 2).requires_grad_()
    kv = torch.randn(B, S, 2, H_kv, D, generator=gen).to(device)
    k = kv[:, :, 0].transpose(1, 2).detach().requires_grad_()
    k_view = kv[:, :, 0].transpose(1, 2)
    assert not q.is_contiguous() and not k_view.is_contiguous()
    v = kv[:, :, 1].transpose(1, 2)
    out = kernels.attention(q, k_view, v, causal=True, sm_scale=0.3)
    ref = attention_reference(q.double(), k_view.double(), v.double(), causal=True, sm_scale=0.3)
    assert rel_err(out, ref) < 1e-4
    # bottom-right alignment on non-contiguous ragged inputs (S_q = 23 < S_k = 37), with gradients
    q2 = q[:, :, 5:28].detach().requires_grad_()
    check_fwd_bwd(q2, k_view.detach().requires_grad_(), v.detach().requires_grad_(), "bottom_right",
                  sm_scale=0.3, gen=gen)
    # gradients with a stride-0 dO
    kernels.attention(q, k, v, causal=False, sm_scale=0.3).sum().backward()
    q64, k64 = q.detach().double().requires_grad_(), k.detach().double().requires_grad_()
    attention_reference(q64, k64, v.double(), causal=False, sm_scale=0.3).sum().backward()
    assert rel_err(q.grad, q64.grad) < 1e-4
    assert rel_err(k.grad, k64.grad) < 1e-4


@pytest.mark.parametrize("S_q,S_k", [(7, 37), (37, 7), (20, 20)])
def test_causal_alignment_matches_sdpa(S_q, S_k, device):
    """causal=True is SDPA's is_causal=True: top-left aligned, query i sees keys j <= i."""
    gen = torch.Generator().manual_seed(S_q * 1000 + S_k)
    q = torch.randn(1, 4, S_q, 16, generator=gen, dtype=torch.float64)
    k = torch.randn(1, 2, S_k, 16, generator=gen, dtype=torch.float64)
    v = torch.randn(1, 2, S_k, 16, generator=gen, dtype=torch.float64)
    sdpa = F.scaled_dot_product_attention(
        q, k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1), is_causal=True
    )
    # the reference agrees with SDPA ...
    assert torch.allclose(attention_reference(q, k, v, causal=True), sdpa, atol=1e-10)
    # ... and the kernel agrees with SDPA
    out = kernels.attention(q.float().to(device), k.float().to(device), v.float().to(device), causal=True)
    assert rel_err(out, sdpa) < 1e-4
    if S_q > S_k:
        # the last queries see every key: same as non-causal there
        full = F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1))
        assert rel_err(out[:, :, S_k:], full[:, :, S_k:]) < 1e-4


@pytest.mark.parametrize("S_q,S_k", [(7, 37), (37, 7), (20, 20)])
def test_bottom_right_alignment_matches_an_explicit_mask(S_q, S_k, device):
    """causal="bottom_right" is flash-attn's (>= 2.1) causal: query i sees keys j <= i + S_k - S_q,
    i.e. SDPA with the boolean mask ``tril(diagonal=S_k - S_q)``; rows that see nothing are 0."""
    gen = torch.Generator().manual_seed(S_q * 1000 + S_k + 1)
    q = torch.randn(1, 2, S_q, 16, generator=gen, dtype=torch.float64)
    k = torch.randn(1, 2, S_k, 16, generator=gen, dtype=torch.float64)
    v = torch.randn(1, 2, S_k, 16, generator=gen, dtype=torch.float64)
    visible = torch.ones(S_q, S_k, dtype=torch.bool).tril(diagonal=S_k - S_q)
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=visible)
    sdpa = torch.where(visible.any(-1)[:, None], sdpa, torch.zeros((), dtype=sdpa.dtype))
    assert torch.allclose(attention_reference(q, k, v, causal="bottom_right"), sdpa, atol=1e-10)
    out = kernels.attention(q.float().to(device), k.float().to(device), v.float().to(device), causal="bottom_right")
    assert rel_err(out, sdpa) < 1e-4
    if S_q == S_k:  # both alignments are one mask
        assert torch.equal(out, kernels.attention(q.float().to(device), k.float().to(device),
                                                  v.float().to(device), causal="top_left"))
    if S_q > S_k:  # the first S_q - S_k queries see no key: exactly 0
        assert (out[:, :, : S_q - S_k] == 0).all()
        _, lse = torch.ops.flopscale.attention_fwd(q.float(), k.float(), v.float(), True, 0.25, True)
        assert torch.isneginf(lse[:, :, : S_q - S_k]).all() and torch.isfinite(lse[:, :, S_q - S_k:]).all()


def test_tma_path_and_pointer_fallback(device, monkeypatch):
    """The forward reads aligned inputs through TMA descriptors and others through pointers;
    both paths match the float64 reference, forward and backward, on the same ragged inputs."""
    assert al.tma_compatible(*(torch.empty(2, 3, 37, 16) for _ in range(3)))
    assert not al.tma_compatible(torch.empty(1, 2, 37, 20, dtype=torch.float16))  # 40-byte rows
    assert not al.tma_compatible(torch.empty(1, 2, 37, 17)[..., 1:])  # offset 4 bytes, 68-byte rows
    assert not al.tma_compatible(torch.empty(1, 2, 16, 37).transpose(2, 3))  # inner stride 37
    # a slice of heads: storage offset 37 * 8 * 2 = 592 bytes, a multiple of 16
    assert al.tma_compatible(torch.empty(1, 4, 37, 8, dtype=torch.float16)[:, 1:3])
    paths = []
    real_launch = al.launch

    def spy(kernel, grid, cfg, *args, **consts):
        if "USE_TMA" in consts:
            paths.append(consts["USE_TMA"])
        return real_launch(kernel, grid, cfg, *args, **consts)

    monkeypatch.setattr(al, "launch", spy)
    gen = torch.Generator().manual_seed(12)
    for use in (True, False):
        monkeypatch.setattr(al, "USE_TMA", use)
        check_fwd_bwd(*make_qkv(1, 4, 2, 37, 50, 16, torch.float16, device, gen), "bottom_right", gen=gen)
        check_fwd_bwd(*make_qkv(1, 2, 1, 45, 30, 24, torch.float32, device, gen), True, gen=gen)
    assert paths == [True, True, False, False]
    # unaligned rows (D = 20 in fp16) fall back to pointers even when TMA is on
    monkeypatch.setattr(al, "USE_TMA", True)
    check_fwd_bwd(*make_qkv(1, 2, 2, 33, 21, 20, torch.float16, device, gen), True, gen=gen)
    assert paths[-1] is False


def test_lse_output_and_its_gradient(device):
    """attention_fwd returns the natural log-sum-exp of each row; a loss using it backpropagates."""
    gen = torch.Generator().manual_seed(11)
    q, k, v = make_qkv(1, 2, 1, 37, 45, 16, torch.float32, device, gen)
    o, lse = torch.ops.flopscale.attention_fwd(q, k, v, True, 0.25)
    s = torch.matmul(q.double(), k.double().repeat_interleave(2, 1).transpose(-1, -2)) * 0.25
    s = s.masked_fill(~torch.ones(37, 45, dtype=torch.bool).tril(), float("-inf"))
    ref_lse = torch.logsumexp(s, dim=-1)
    assert rel_err(lse, ref_lse) < 1e-5
    w = torch.randn(lse.shape, generator=gen)
    (o.sum() + (lse * w).sum()).backward()
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    s = torch.matmul(q64, k64.repeat_interleave(2, 1).transpose(-1, -2)) * 0.25
    s = s.masked_fill(~torch.ones(37, 45, dtype=torch.bool).tril(), float("-inf"))
    ref = torch.matmul(torch.softmax(s, -1), v64.repeat_interleave(2, 1))
    (ref.sum() + (torch.logsumexp(s, -1) * w.double()).sum()).backward()
    for got, want in ((q.grad, q64.grad), (k.grad, k64.grad), (v.grad, v64.grad)):
        assert rel_err(got, want) < 1e-4


@pytest.mark.parametrize("causal", [False, True])
def test_batch_heads_beyond_the_grid_limit_launch_in_slices(causal, device, monkeypatch):
    """``batch * heads`` is grid axis 1 (at most 65535 programs on CUDA): larger products run in
    slices of the batch.  A limit of 5 here splits B=3 x H=2 (and H_kv=1 for the backward)."""
    monkeypatch.setattr(al, "MAX_GRID_YZ", 5)
    assert al.batch_slices(3, 2) == [(0, 2), (2, 3)]
    assert al.batch_slices(3, 1) == [(0, 3)]
    with pytest.raises(ValueError, match="grid limit"):
        al.batch_slices(1, 6)
    gen = torch.Generator().manual_seed(11)
    check_fwd_bwd(*make_qkv(3, 2, 1, 37, 21, 16, torch.float32, device, gen), causal, gen=gen)


def test_opcheck_schema_autograd_fake(device):
    gen = torch.Generator().manual_seed(3)
    q, k, v = make_qkv(1, 2, 1, 20, 20, 16, torch.float32, device, gen)
    res = torch.library.opcheck(
        torch.ops.flopscale.attention_fwd.default, (q, k, v, True, 0.25),
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
    )
    assert set(res.values()) == {"SUCCESS"}


def test_fake_tensors_propagate_shapes_and_count_flops(device):
    """Under FakeTensorMode nothing runs, shapes propagate and FlopCounterMode still counts:
    how a model's attention FLOPs can be counted without computing them."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(2, 8, 1024, 64, device=device)
        k = torch.empty(2, 2, 1024, 64, device=device)
        with FlopCounterMode(display=False) as fc:
            o = kernels.attention(q, k, k, causal=True)
    assert o.shape == q.shape
    assert fc.get_total_flops() == 4 * 2 * 8 * 64 * (1024 * 1025 // 2)


# --------------------------------------------------------------------------- costs


def brute_pairs(S_q: int, S_k: int, causal) -> int:
    """Unmasked pairs by enumerating the element mask."""
    mask = torch.ones(S_q, S_k, dtype=torch.bool)
    if causal:
        mask = mask.tril(diagonal=S_k - S_q if causal == "bottom_right" else 0)
    return int(mask.sum())


@pytest.mark.parametrize("S_q,S_k", [(1, 1), (7, 7), (37, 130), (130, 37), (100, 100), (1, 50), (50, 1)])
def test_pair_counts(S_q, S_k):
    assert al.causal_pairs(S_q, S_k) == brute_pairs(S_q, S_k, True)
    assert al.causal_pairs(S_q, S_k, bottom_right=True) == brute_pairs(S_q, S_k, "bottom_right")
    if S_q == S_k:
        assert al.causal_pairs(S_q, S_k) == al.causal_pairs(S_q, S_k, True) == S_q * (S_q + 1) // 2
    # flash-attn's closed forms for bottom-right alignment
    if S_q <= S_k:
        assert al.causal_pairs(S_q, S_k, True) == S_q * S_k - S_q * (S_q - 1) // 2
    else:
        assert al.causal_pairs(S_q, S_k, True) == S_k * (S_k + 1) // 2


def test_diagonal_pair_counts_match_enumeration():
    for S_q in range(1, 12):
        for S_k in range(1, 12):
            for diag in range(-14, 14):
                brute = int(torch.ones(S_q, S_k, dtype=torch.bool).tril(diagonal=diag).sum())
                assert al.diag_pairs(S_q, S_k, diag) == brute, (S_q, S_k, diag)


@pytest.mark.parametrize("causal,S_q,S_k", [(False, 37, 37), (True, 37, 37), ("bottom_right", 21, 37),
                                            ("bottom_right", 37, 21), ("top_left", 21, 37)])
def test_flop_counter_counts_model_flops(causal, S_q, S_k, device):
    B, H, H_kv, D = 2, 4, 2, 16
    gen = torch.Generator().manual_seed(5)
    q, k, v = make_qkv(B, H, H_kv, S_q, S_k, D, torch.float32, device, gen)
    P = brute_pairs(S_q, S_k, causal)
    with FlopCounterMode(display=False) as fc:
        o = kernels.attention(q, k, v, causal=causal)
    assert fc.get_total_flops() == 4 * B * H * D * P
    with FlopCounterMode(display=False) as fc:
        o.sum().backward()
    assert fc.get_total_flops() == 2 * 4 * B * H * D * P
    # the declared cost agrees with FlopCounterMode
    mode = al.causal_mode(causal)
    cost = kernels.cost_of("flopscale::attention_fwd", q, k, v, mode is not None, 0.25, mode == "bottom_right")
    assert cost.flops == 4 * B * H * D * P


def brute_fwd_computed(S_q, S_k, causal, bm, bn):
    """Scores the forward computes: per query tile, every key tile holding a key that some row
    of the tile sees, whole (its in-bounds keys)."""
    diag = S_k - S_q if causal == "bottom_right" else 0
    total = 0
    for m0 in range(0, S_q, bm):
        rows = min(bm, S_q - m0)
        for n0 in range(0, S_k, bn):
            # the tile is visited when its first key is seen by the tile's last row (rows past
            # S_q included: the kernel bounds the walk by the whole tile)
            if not causal or n0 <= m0 + bm - 1 + diag:
                total += rows * min(bn, S_k - n0)
    return total


def brute_bwd_computed(S_q, S_k, causal, bm, bn):
    """Scores the backward computes: per key tile, every query tile from the first one holding a
    row that sees a key of the tile."""
    diag = S_k - S_q if causal == "bottom_right" else 0
    total = 0
    for n0 in range(0, S_k, bn):
        cols = min(bn, S_k - n0)
        for m0 in range(0, S_q, bm):
            if not causal or m0 + bm - 1 + diag >= n0:
                total += cols * min(bm, S_q - m0)
    return total


def bwd_matmul_scores(S_q, S_k, causal, cfg):
    """Backward matmul work in scores x matmuls: 5 per score of the key-block kernel, or 4 per
    score of it plus 3 per score of the separate dQ kernel (which walks keys as the forward),
    or, with dK and dV in separate passes (``cfg.kv``), 2 + 3 per score of the two passes plus
    the dQ kernel's 3."""
    kcfg = cfg.kv or cfg
    c1 = brute_bwd_computed(S_q, S_k, causal, kcfg.block_m, kcfg.block_n)
    if cfg.dq is None:
        return 5 * c1
    return (5 if cfg.kv else 4) * c1 + 3 * brute_fwd_computed(S_q, S_k, causal, cfg.dq.block_m, cfg.dq.block_n)


@pytest.mark.parametrize("causal,S_q,S_k", [(True, 300, 333), ("bottom_right", 333, 300), (False, 100, 200)])
@pytest.mark.parametrize("interpret", [True, False])
def test_kv_split_backward_cost(causal, S_q, S_k, interpret, monkeypatch):
    """16-bit D=256 (and padded D=160): dV and dK by two passes of the key-block kernel, dQ by
    its own kernel.  Executed = 2 + 3 matmuls per score of the passes (QK^T in both) + 3 per
    score of the dQ kernel; recompute = 2 QK^T of the passes + QK^T and dP of the dQ kernel;
    model FLOPs unchanged; the parts add up; float32 keeps one pass with atomic dQ."""
    monkeypatch.setenv("TRITON_INTERPRET", "1" if interpret else "0")
    for D in (256, 160):
        B, H, H_kv = 2, 4, 2
        q = torch.empty(B, H, S_q, D, dtype=torch.float16, device="meta")
        k = torch.empty(B, H_kv, S_k, D, dtype=torch.float16, device="meta")
        lse = torch.empty(B, H, S_q, dtype=torch.float32, device="meta")
        _, cfg = al._configs(D, torch.float16, None)
        assert cfg.kv is not None and cfg.dq is not None
        assert al._configs(D, torch.float32, None)[1].kv is None
        if not interpret:  # Hopper: every matmul of >= 64 rows
            assert cfg.kv.block_n >= 64 and cfg.dq.block_m >= 64
        mode = al.causal_mode(causal)
        bwd = kernels.cost_of("flopscale::attention_bwd", q, q, k, k, q, lse, None, mode is not None, 0.1,
                              mode == "bottom_right")
        c1 = brute_bwd_computed(S_q, S_k, causal, cfg.kv.block_m, cfg.kv.block_n)
        c2 = brute_fwd_computed(S_q, S_k, causal, cfg.dq.block_m, cfg.dq.block_n)
        unit = 2 * B * H * 256  # the matmuls run on the 256-wide tile
        assert bwd.flops == 8 * B * H * D * brute_pairs(S_q, S_k, causal)
        assert bwd.executed_flops == unit * (5 * c1 + 3 * c2) == unit * bwd_matmul_scores(S_q, S_k, causal, cfg)
        assert bwd.detail["recompute"] == 2 * B * H * D * (2 * c1 + 2 * c2)
        assert sum(bwd.detail.values()) == bwd.executed_flops and bwd.detail["masked"] >= 0


@pytest.mark.parametrize("B,H,H_kv,S_q,S_k,causal,dtype", [
    (1, 2, 1, 37, 45, "bottom_right", torch.float16), (1, 2, 1, 45, 37, True, torch.float16),
    (1, 2, 2, 21, 40, False, torch.float16), (1, 2, 1, 19, 23, "bottom_right", torch.float32)])
def test_head_dim_256_gradients(B, H, H_kv, S_q, S_k, causal, dtype, device):
    """D=256 gradients vs float64: fp16 runs the separate dV and dK passes and the dQ kernel
    (the shipped 16-bit path), fp32 the single key-block kernel with atomic dQ; ragged sizes,
    both causal alignments, GQA."""
    assert (al._configs(256, dtype, None)[1].kv is not None) == (dtype == torch.float16)
    gen = torch.Generator().manual_seed(S_q * 31 + S_k)
    check_fwd_bwd(*make_qkv(B, H, H_kv, S_q, S_k, 256, dtype, device, gen), causal, gen=gen)


@pytest.mark.parametrize("B,H,H_kv,S_q,S_k,causal", [(2, 4, 2, 37, 100, "bottom_right"), (1, 3, 1, 100, 37, True),
                                                     (1, 2, 2, 45, 45, False)])
def test_kv_split_backward_numerics(B, H, H_kv, S_q, S_k, causal, device, monkeypatch):
    """The separate dV and dK passes (shipped for 16-bit D=256) at D=16, so the interpreter runs
    them on more tiles: ragged sizes, both alignments, GQA."""
    from flopscale.kernels import attention_kernels as ak

    monkeypatch.setitem(ak._BWD_SPLIT_DQ, 16, (128, 64, 8, 2))
    monkeypatch.setitem(ak._BWD_KV_SPLIT, 16, (64, 32, 8, 2))
    cfg = al._configs(16, torch.float16, None)[1]
    assert cfg.kv is not None and cfg.dq is not None
    gen = torch.Generator().manual_seed(S_q * 5 + S_k)
    check_fwd_bwd(*make_qkv(B, H, H_kv, S_q, S_k, 16, torch.float16, device, gen), causal, gen=gen)


@pytest.mark.parametrize("causal,S_q,S_k", [(True, 300, 333), ("bottom_right", 333, 300), (False, 100, 200)])
@pytest.mark.parametrize("interpret", [True, False])
def test_split_dq_backward_cost(causal, S_q, S_k, interpret, monkeypatch):
    """16-bit D=128 backward: dQ in its own kernel.  Executed = 4 matmuls per score of the
    key-block kernel + 3 per score of the dQ kernel (QK^T and dP recomputed there); model
    FLOPs unchanged; the parts add up."""
    monkeypatch.setenv("TRITON_INTERPRET", "1" if interpret else "0")
    B, H, H_kv, D = 2, 4, 2, 128
    q = torch.empty(B, H, S_q, D, dtype=torch.bfloat16, device="meta")
    k = torch.empty(B, H_kv, S_k, D, dtype=torch.bfloat16, device="meta")
    lse = torch.empty(B, H, S_q, dtype=torch.float32, device="meta")
    _, cfg = al._configs(D, torch.bfloat16, None)
    assert cfg.dq is not None and al._configs(D, torch.float32, None)[1].dq is None
    mode = al.causal_mode(causal)
    bwd = kernels.cost_of("flopscale::attention_bwd", q, q, k, k, q, lse, None, mode is not None, 0.1,
                          mode == "bottom_right")
    unit = 2 * B * H * D
    assert bwd.flops == 4 * unit * brute_pairs(S_q, S_k, causal)
    assert bwd.executed_flops == unit * bwd_matmul_scores(S_q, S_k, causal, cfg)
    c2 = brute_fwd_computed(S_q, S_k, causal, cfg.dq.block_m, cfg.dq.block_n)
    c1 = brute_bwd_computed(S_q, S_k, causal, cfg.block_m, cfg.block_n)
    assert bwd.detail["recompute"] == unit * (c1 + 2 * c2)
    assert sum(bwd.detail.values()) == bwd.executed_flops and bwd.detail["masked"] >= 0


@pytest.mark.parametrize("B,H,H_kv,S_q,S_k,causal", [(2, 4, 2, 37, 100, "bottom_right"), (1, 2, 1, 100, 37, True),
                                                     (1, 2, 2, 45, 45, False), (1, 3, 1, 33, 20, "bottom_right")])
def test_split_dq_backward_numerics(B, H, H_kv, S_q, S_k, causal, device, monkeypatch):
    """The separate dQ kernel (shipped for 16-bit D=128) at D=16, so the interpreter runs it on
    ragged sizes, both alignments and GQA; dQ is stored directly (no atomics)."""
    from flopscale.kernels import attention_kernels as ak

    monkeypatch.setitem(ak._BWD_SPLIT_DQ, 16, (128, 64, 8, 2))
    assert al._configs(16, torch.float16, None)[1].dq is not None
    gen = torch.Generator().manual_seed(S_q * 7 + S_k)
    check_fwd_bwd(*make_qkv(B, H, H_kv, S_q, S_k, 16, torch.float16, device, gen), causal, gen=gen)


@pytest.mark.parametrize("S_q,S_k,causal", [(37, 37, True), (100, 37, True), (37, 130, True), (37, 100, False),
                                            (37, 130, "bottom_right"), (130, 37, "bottom_right"),
                                            (77, 77, "bottom_right")])
@pytest.mark.parametrize("interpret", [True, False])
def test_declared_cost(S_q, S_k, causal, interpret, monkeypatch):
    """Model FLOPs 4BHDP; executed = model + masked diagonal work (fwd) and + 0.5x recompute
    (bwd); the detail parts add up; bytes are the compulsory traffic.  Checked for the
    interpreter's tiles and for the GPU's (Hopper) tiles."""
    monkeypatch.setenv("TRITON_INTERPRET", "1" if interpret else "0")
    B, H, H_kv, D = 2, 4, 2, 64
    q = torch.empty(B, H, S_q, D, dtype=torch.bfloat16, device="meta")
    k = torch.empty(B, H_kv, S_k, D, dtype=torch.bfloat16, device="meta")
    lse = torch.empty(B, H, S_q, dtype=torch.float32, device="meta")
    P = brute_pairs(S_q, S_k, causal)
    fcfg, bcfg = al._configs(D, torch.bfloat16, None)
    mode = al.causal_mode(causal)
    flags = (mode is not None, 0.125, mode == "bottom_right")
    fwd = kernels.cost_of("flopscale::attention_fwd", q, k, k, *flags)
    bwd = kernels.cost_of("flopscale::attention_bwd", q, q, k, k, q, lse, None, *flags)
    unit = 2 * B * H * D
    assert fwd.flops == 2 * unit * P
    assert bwd.flops == 4 * unit * P
    assert fwd.executed_flops == 2 * unit * brute_fwd_computed(S_q, S_k, causal, fcfg.block_m, fcfg.block_n)
    computed_b = brute_bwd_computed(S_q, S_k, causal, bcfg.block_m, bcfg.block_n)
    assert bcfg.dq is None  # D = 64: dQ by atomics in the key-block kernel
    assert bwd.executed_flops == 5 * unit * computed_b
    assert bwd.detail["recompute"] == unit * computed_b
    for c in (fwd, bwd):
        assert c.detail["scores"] == c.detail["pv"] and c.detail["scores"] + c.detail["pv"] == c.flops
        assert sum(c.detail.values()) == c.executed_flops
        assert c.executed_flops >= c.flops and c.nonmatmul_flops > 0
    if not causal:
        assert bwd.executed_flops == 2.5 * fwd.executed_flops == 2.5 * fwd.flops
    es = 2
    assert fwd.bytes == B * (2 * H * S_q * D * es + 2 * H_kv * S_k * D * es + 4 * H * S_q)
    assert bwd.bytes == B * (4 * H * S_q * D * es + 4 * H_kv * S_k * D * es + 4 * H * S_q)


def test_gpu_forward_tiles_follow_the_tma_path(monkeypatch):
    """On the GPU (Hopper tiles) the declared forward cost uses the tiles of the path the launch
    takes: 128 x 128 through TMA at D=128, 128 x 64 through pointers (unaligned strides)."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    S_q, S_k = 300, 333
    q = torch.empty(1, 2, S_q, 128, dtype=torch.bfloat16, device="meta")
    k = torch.empty(1, 2, S_k, 128, dtype=torch.bfloat16, device="meta")
    k_odd = torch.empty(1, 2, S_k, 129, dtype=torch.bfloat16, device="meta")[..., :128]  # 258-byte rows
    assert al.use_tma(q, k, k) and not al.use_tma(q, k_odd, k_odd)
    assert al._configs(128, torch.bfloat16, None, tma=True)[0].block_n == 128
    assert al._configs(128, torch.bfloat16, None, tma=False)[0].block_n == 64
    for kk, bn in ((k, 128), (k_odd, 64)):
        cost = kernels.cost_of("flopscale::attention_fwd", q, kk, kk, True, 0.1, True)
        assert cost.executed_flops == 4 * 2 * 128 * brute_fwd_computed(S_q, S_k, "bottom_right", 128, bn)


@pytest.mark.parametrize("D,ratio", [(96, 4 / 3), (80, 1.6), (8, 2.0), (64, 1.0)])
@pytest.mark.parametrize("causal", [False, "bottom_right"])
def test_executed_flops_count_the_padded_head_dim(D, ratio, causal):
    """A head dim that is not a power of two runs its matmuls on a next-power-of-two tile:
    executed FLOPs count that width (D=96: 4/3, D=80: 1.6x the unpadded work), model FLOPs
    keep D."""
    B, H, H_kv, S_q, S_k = 2, 4, 2, 37, 100
    q = torch.empty(B, H, S_q, D, dtype=torch.float16, device="meta")
    k = torch.empty(B, H_kv, S_k, D, dtype=torch.float16, device="meta")
    lse = torch.empty(B, H, S_q, dtype=torch.float32, device="meta")
    mode = al.causal_mode(causal)
    flags = (mode is not None, 0.1, mode == "bottom_right")
    fwd = kernels.cost_of("flopscale::attention_fwd", q, k, k, *flags)
    bwd = kernels.cost_of("flopscale::attention_bwd", q, q, k, k, q, lse, None, *flags)
    fcfg, bcfg = al._configs(D, torch.float16, None)
    P = brute_pairs(S_q, S_k, causal)
    comp_f = brute_fwd_computed(S_q, S_k, causal, fcfg.block_m, fcfg.block_n)
    assert fwd.flops == 4 * B * H * D * P and bwd.flops == 8 * B * H * D * P
    padded = {96: 128, 80: 128, 8: 16, 64: 64}[D]
    assert fwd.executed_flops == 4 * B * H * padded * comp_f
    assert bwd.executed_flops == 2 * B * H * padded * bwd_matmul_scores(S_q, S_k, causal, bcfg)
    assert fwd.executed_flops == pytest.approx(ratio * 4 * B * H * D * comp_f, rel=1e-12)
    for c in (fwd, bwd):
        assert sum(c.detail.values()) == c.executed_flops
        assert (c.detail["padding"] > 0) == (ratio > 1)


@pytest.mark.parametrize("dtype,tf32,peak", [(torch.float32, False, "fp32"), (torch.float32, True, "tf32"),
                                             (torch.float16, False, "fp16"), (torch.bfloat16, True, "bf16")])
def test_cost_names_the_peak_that_rates_it(dtype, tf32, peak):
    """float32 in IEEE precision runs on the FMA units (rated against the fp32 peak), float32
    with TF32 allowed and 16-bit inputs on tensor cores; the declared Cost says which."""
    q = torch.empty(1, 2, 40, 64, dtype=dtype, device="meta")
    lse = torch.empty(1, 2, 40, dtype=torch.float32, device="meta")
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        fwd = kernels.cost_of("flopscale::attention_fwd", q, q, q, True, 0.1)
        bwd = kernels.cost_of("flopscale::attention_bwd", q, q, q, q, q, lse, None, True, 0.1)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    assert fwd.peak_dtype == bwd.peak_dtype == peak
    assert (fwd + bwd).peak_dtype == peak
    assert (fwd + kernels.Cost(1, 1, 1, peak_dtype="other")).peak_dtype == ""
    assert kernels.Cost(1, 1, 1).peak_dtype == ""  # the field defaults: older declarations stay valid


# --------------------------------------------------------------------------- bad input


def _t(*shape, dtype=torch.float32):
    return torch.zeros(*shape, dtype=dtype)


@pytest.mark.parametrize(
    "q,k,v,kwargs,exc,words",
    [
        (_t(1, 2, 8, 16), _t(1, 2, 8, 32), _t(1, 2, 8, 32), {}, ValueError, "head dims differ"),
        (_t(1, 3, 8, 16), _t(1, 2, 8, 16), _t(1, 2, 8, 16), {}, ValueError, "multiple of key/value heads"),
        (_t(1, 2, 8, 320), _t(1, 2, 8, 320), _t(1, 2, 8, 320), {}, ValueError, "head dim D=320 is not supported"),
        (_t(1, 2, 8, 16), _t(1, 2, 9, 16), _t(1, 2, 8, 16), {}, ValueError, "same shape"),
        (_t(2, 2, 8, 16), _t(1, 2, 8, 16), _t(1, 2, 8, 16), {}, ValueError, "batch sizes differ"),
        (_t(1, 2, 0, 16), _t(1, 2, 8, 16), _t(1, 2, 8, 16), {}, ValueError, "sequence lengths"),
        (_t(2, 8, 16), _t(2, 8, 16), _t(2, 8, 16), {}, ValueError, "4-D"),
        (_t(1, 2, 8, 16), _t(1, 2, 8, 16, dtype=torch.float16), _t(1, 2, 8, 16), {}, TypeError, "share a dtype"),
        (_t(1, 2, 8, 16, dtype=torch.float64),) * 3 + ({}, TypeError, "not supported"),
        (_t(1, 2, 8, 16), _t(1, 2, 8, 16), _t(1, 2, 8, 16), {"sm_scale": float("nan")}, ValueError, "sm_scale"),
        (_t(1, 2, 8, 16), _t(1, 2, 8, 16), _t(1, 2, 8, 16), {"sm_scale": -0.5}, ValueError, "sm_scale must be a finite number > 0"),
        (_t(1, 2, 8, 16), _t(1, 2, 8, 16), _t(1, 2, 8, 16), {"sm_scale": 0.0}, ValueError, "> 0"),
        (_t(1, 2, 8, 16), _t(1, 2, 8, 16), _t(1, 2, 8, 16), {"causal": 1}, ValueError, "causal must be False, True"),
        (_t(1, 2, 8, 16), _t(1, 2, 8, 16), _t(1, 2, 8, 16), {"causal": "bottom-right"}, ValueError,
         "'top_left' or 'bottom_right', got 'bottom-right'"),
        (_t(1, 2, 8, 16), _t(1, 2, 8, 16), _t(1, 2, 8, 16), {"causal": None}, ValueError, "causal must be"),
    ],
)
def test_bad_input_raises_clear_error(q, k, v, kwargs, exc, words):
    with pytest.raises(exc, match=words):
        kernels.attention(q, k, v, **kwargs)


def test_cpu_tensors_without_interpreter_raise(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x = torch.zeros(1, 1, 4, 16)
    with pytest.raises(ValueError, match="CUDA device"):
        kernels.attention(x, x, x)


# --------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True, "bottom_right"])
@pytest.mark.parametrize("S_q,S_k,D", [(1, 1, 64), (130, 130, 64), (1000, 1000, 128), (333, 1024, 128), (257, 77, 256)])
def test_bf16_on_gpu(S_q, S_k, D, causal):
    gen = torch.Generator().manual_seed(S_q + D)
    q, k, v = make_qkv(2, 8, 2, S_q, S_k, D, torch.bfloat16, "cuda", gen)
    check_fwd_bwd(q, k, v, causal, gen=gen)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_fp16_fp32_on_gpu_against_sdpa(dtype):
    gen = torch.Generator().manual_seed(1)
    q, k, v = make_qkv(2, 8, 8, 777, 777, 128, dtype, "cuda", gen)
    out = kernels.attention(q, k, v, causal=True)
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True)
    assert rel_err(out, ref) < (1e-4 if dtype == torch.float32 else 1e-2)
    assert math.isfinite(out.float().sum().item())
