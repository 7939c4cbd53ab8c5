"""kernels.blocksparse_attention against the dense masked float64 reference, costs, bad input.

Outputs are NaN-poisoned before every launch (``POISON_OUTPUTS``), so unwritten elements
fail.  Sizes stay small: the kernels run under the Triton interpreter without a GPU.
"""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from flopscale import kernels
from flopscale.kernels import BlockLayout
from flopscale.kernels import attention_layer as al
from flopscale.kernels import blocksparse_attention_layer as bl  # registers the ops before FlopCounterMode
from flopscale.kernels.blocksparse_attention_layer import blocksparse_attention_reference

TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-2}


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    monkeypatch.setattr(al, "POISON_OUTPUTS", True)


def rel_err(x, ref):
    x, ref = x.detach().double().cpu(), ref.detach().double().cpu()
    assert not torch.isnan(x).any(), "NaN in kernel output"
    denom = ref.norm().item()
    return (x - ref).norm().item() / (denom if denom > 0 else 1.0)


def cdiv(a, b):
    return -(-a // b)


def make_layout(kind, H_l, S_q, S_k, block, gen):
    R, C = cdiv(S_q, block), cdiv(S_k, block)
    if kind == "local":
        assert R == C
        return BlockLayout.local(H_l, R, 2, block)
    if kind == "strided":
        assert R == C
        return BlockLayout.strided(H_l, R, 2, block)
    if kind == "random":
        return BlockLayout(torch.rand(H_l, R, C, generator=gen) < 0.4, block)
    if kind == "dense":
        return BlockLayout.dense(H_l, R, C, block)
    raise AssertionError(kind)


def check(q, k, v, layout, causal, gen):
    tol = TOL[q.dtype]
    o = kernels.blocksparse_attention(q, k, v, layout, causal=causal)
    assert o.shape == q.shape and o.dtype == q.dtype
    do = torch.randn(o.shape, generator=gen).to(o.dtype).to(o.device)
    o.backward(do)
    q64, k64, v64 = (t.detach().double().cpu().requires_grad_() for t in (q, k, v))
    ref = blocksparse_attention_reference(q64, k64, v64, layout, causal=causal)
    ref.backward(do.double().cpu())
    errs = {"o": rel_err(o, ref), "dq": rel_err(q.grad, q64.grad), "dk": rel_err(k.grad, k64.grad),
            "dv": rel_err(v.grad, v64.grad)}
    assert all(e < tol for e in errs.values()), errs


def qkv(B, H, H_kv, S_q, S_k, D, dtype, device, gen):
    out = []
    for h, s in ((H, S_q), (H_kv, S_k), (H_kv, S_k)):
        out.append(torch.randn(B, h, s, D, generator=gen).to(dtype).to(device).requires_grad_())
    return out


# (kind, layout heads, B, H, H_kv, S_q, S_k, D, block, causal, dtype)
CASES = [
    ("local", 1, 1, 2, 1, 100, 100, 16, 16, True, torch.float32),
    ("strided", 1, 1, 2, 2, 130, 130, 16, 32, True, torch.float16),
    ("random", 1, 2, 2, 1, 37, 100, 32, 16, False, torch.float32),
    ("random", 4, 1, 4, 2, 100, 37, 16, 16, True, torch.float16),  # per-head layout, GQA, S_q > S_k
    ("random", 2, 1, 2, 2, 130, 130, 16, 32, False, torch.float16),
    ("local", 2, 1, 2, 1, 7, 7, 16, 16, False, torch.float32),
    # bottom-right alignment: the diagonal offset S_k - S_q is no multiple of the block, so it
    # crosses two blocks per row (both partial); S_q > S_k leaves the first rows empty
    ("random", 1, 1, 4, 2, 37, 100, 16, 16, "bottom_right", torch.float32),
    ("random", 2, 1, 2, 1, 100, 37, 16, 16, "bottom_right", torch.float16),
    ("random", 1, 1, 2, 2, 45, 130, 16, 32, "bottom_right", torch.float16),
]


@pytest.mark.parametrize("kind,H_l,B,H,H_kv,S_q,S_k,D,block,causal,dtype", CASES)
def test_matches_dense_masked_reference(kind, H_l, B, H, H_kv, S_q, S_k, D, block, causal, dtype, device):
    gen = torch.Generator().manual_seed(hash((kind, H_l, S_q, S_k, block, causal)) % 2**31)
    layout = make_layout(kind, H_l, S_q, S_k, block, gen)
    q, k, v = qkv(B, H, H_kv, S_q, S_k, D, dtype, device, gen)
    check(q, k, v, layout, causal, gen)


@pytest.mark.parametrize("causal", [False, True])
def test_query_blocks_split_into_row_tiles(causal, device):
    """Blocks larger than the forward's query tile run as several programs per block-row (the
    interpreter's tile is 32 rows; float32 on a GPU splits 64- and 128-row blocks likewise)."""
    from flopscale.kernels import blocksparse_attention_kernels as bk

    cfg = bk.bs_fwd_config(64, 16, 4, interpret=True)
    assert cfg.block_m < 64 and 64 % cfg.block_m == 0
    gen = torch.Generator().manual_seed(5)
    layout = make_layout("random", 1, 150, 150, 64, gen)
    check(*qkv(1, 2, 1, 150, 150, 16, torch.float32, device, gen), layout, causal, gen)


def test_batch_heads_beyond_the_grid_limit_launch_in_slices(device, monkeypatch):
    """``batch * heads`` is grid axis 1 (at most 65535 on CUDA): larger products run in batch
    slices; a limit of 5 splits B=3 x H=2 here."""
    monkeypatch.setattr(al, "MAX_GRID_YZ", 5)
    gen = torch.Generator().manual_seed(6)
    layout = make_layout("random", 2, 40, 40, 16, gen)
    check(*qkv(3, 2, 1, 40, 40, 16, torch.float32, device, gen), layout, True, gen)


@pytest.mark.parametrize("causal,S_q,S_k", [(False, 45, 45), (True, 45, 45), ("bottom_right", 21, 45),
                                            ("bottom_right", 45, 21)])
def test_dense_layout_equals_dense_attention(causal, S_q, S_k, device):
    gen = torch.Generator().manual_seed(21)
    q, k, v = qkv(1, 2, 1, S_q, S_k, 16, torch.float32, device, gen)
    layout = BlockLayout.dense(1, cdiv(S_q, 16), cdiv(S_k, 16), 16)
    a = kernels.blocksparse_attention(q, k, v, layout, causal=causal)
    b = kernels.attention(q, k, v, causal=causal)
    assert rel_err(a, b) < 1e-5


def test_empty_rows_give_zeros_not_nan(device):
    """Rows whose layout row is empty, and rows whose only blocks lie above the diagonal
    (removed by causal), output 0 with zero gradient; the other rows match the reference."""
    gen = torch.Generator().manual_seed(8)
    mask = torch.tensor([[[0, 0, 0], [1, 1, 0], [0, 0, 1]], [[0, 1, 1], [1, 0, 0], [1, 1, 1]]], dtype=torch.bool)
    layout = BlockLayout(mask, 16)
    q, k, v = qkv(1, 2, 2, 40, 40, 16, torch.float32, device, gen)
    o = kernels.blocksparse_attention(q, k, v, layout, causal=True)
    assert not torch.isnan(o).any()
    assert (o[0, 0, :16] == 0).all()  # head 0: block-row 0 empty
    assert (o[0, 1, :16] == 0).all()  # head 1: block-row 0 has only blocks above the diagonal
    o.sum().backward()
    assert (q.grad[0, 0, :16] == 0).all() and (q.grad[0, 1, :16] == 0).all()
    assert not any(torch.isnan(t.grad).any() for t in (q, k, v))
    q.grad = k.grad = v.grad = None
    check(q, k, v, layout, True, gen)
    # an entirely empty layout: all zeros
    o = kernels.blocksparse_attention(q, k, v, BlockLayout(torch.zeros(1, 3, 3), 16))
    assert (o == 0).all()


# --------------------------------------------------------------------------- costs


def brute(layout, H, S_q, S_k, causal):
    """(unmasked pairs, computed scores) per batch element over H heads, by enumeration: a
    block is visited when it holds a visible element, and then computed whole (in bounds)."""
    em = layout.element_mask(S_q, S_k)
    blocks = em.clone()
    if causal:
        diag = S_k - S_q if causal == "bottom_right" else 0
        em = em & torch.ones(S_q, S_k, dtype=torch.bool).tril(diagonal=diag)
        blk = layout.block
        R, C = layout.rows, layout.cols
        pad = torch.zeros(em.shape[0], R * blk, C * blk, dtype=torch.bool)
        pad[:, :S_q, :S_k] = em
        keep = pad.reshape(-1, R, blk, C, blk).any(dim=4).any(dim=2)
        blocks = BlockLayout(layout.mask & keep, blk).element_mask(S_q, S_k)
    scale = H if layout.heads == 1 else 1
    return scale * int(em.sum()), scale * int(blocks.sum())


@pytest.mark.parametrize("causal,S_q,S_k", [(False, 100, 90), (True, 100, 90), ("bottom_right", 100, 90),
                                            ("bottom_right", 61, 90)])
@pytest.mark.parametrize("H_l", [1, 4])
def test_pairs_flop_counter_and_declared_cost(causal, S_q, S_k, H_l, device):
    B, H, H_kv, D, block = 2, 4, 2, 16, 16
    gen = torch.Generator().manual_seed(31 + H_l)
    layout = make_layout("random", H_l, S_q, S_k, block, gen)
    P, computed = brute(layout, H, S_q, S_k, causal)
    plan = bl.layout_plan(layout, causal, H, H_kv, S_q, S_k)
    assert (plan.pairs, plan.computed_pairs) == (P, computed)
    q, k, v = qkv(B, H, H_kv, S_q, S_k, D, torch.float32, device, gen)
    with FlopCounterMode(display=False) as fc:
        o = kernels.blocksparse_attention(q, k, v, layout, causal=causal)
    assert fc.get_total_flops() == 4 * B * D * P
    with FlopCounterMode(display=False) as fc:
        o.sum().backward()
    assert fc.get_total_flops() == 8 * B * D * P
    row_ptr, col_idx = plan.layout.csr(device)
    col_ptr, row_idx, _ = plan.layout.csc(device)
    mode = al.causal_mode(causal)
    args = (layout.block, mode is not None, 0.25, plan.pairs, plan.computed_pairs, plan.kv_rows,
            mode == "bottom_right")
    fwd = kernels.cost_of("flopscale::blocksparse_attention_fwd", q, k, v, row_ptr, plan.row_mid, plan.row_order,
                          col_idx, col_ptr, row_idx, plan.col_order, *args)
    lse = torch.empty(B, H, S_q)
    bwd = kernels.cost_of("flopscale::blocksparse_attention_bwd", o, q, k, v, o, lse, None, col_ptr, row_idx,
                          plan.col_order, *args)
    assert fwd.flops == 4 * B * D * P and bwd.flops == 8 * B * D * P
    assert fwd.executed_flops == 4 * B * D * computed
    assert bwd.executed_flops == 10 * B * D * computed and bwd.detail["recompute"] == 2 * B * D * computed
    for c in (fwd, bwd):
        assert c.detail["scores"] + c.detail["pv"] == c.flops
        assert sum(c.detail.values()) == c.executed_flops
        assert c.peak_dtype == ("tf32" if torch.backends.cuda.matmul.allow_tf32 else "fp32")
    # key rows read: key blocks that some visible block touches
    eff = plan.layout.mask
    kv_blocks = eff.amax(1) if H_l == 1 else eff.reshape(H_kv, H // H_kv, *eff.shape[1:]).amax((1, 2))
    cols = torch.clamp(S_k - torch.arange(layout.cols) * block, max=block)
    kv_rows = int((kv_blocks.long() * cols).sum()) * (H_kv if H_l == 1 else 1)
    assert plan.kv_rows == kv_rows


@pytest.mark.parametrize("causal,S_q,S_k,block", [(True, 100, 90, 16), ("bottom_right", 37, 100, 16),
                                                  ("bottom_right", 100, 37, 32), (False, 50, 45, 16)])
def test_partial_blocks_trail_each_row(causal, S_q, S_k, block):
    """``row_mid``: the forward runs entries before it unmasked, so every block from there on
    must be partial (crossed by the diagonal or ragged), and every block before it full."""
    gen = torch.Generator().manual_seed(S_q + S_k)
    layout = make_layout("random", 2, S_q, S_k, block, gen)
    plan = bl.layout_plan(layout, causal, 2, 1, S_q, S_k)
    mode = al.causal_mode(causal)
    visible = torch.ones(S_q, S_k, dtype=torch.bool)
    if mode:
        visible = visible.tril(diagonal=S_k - S_q if mode == "bottom_right" else 0)
    row_ptr, col_idx = plan.layout.csr()
    R = layout.rows
    for g in range(layout.heads * R):
        r = g % R
        for e in range(int(row_ptr[g]), int(row_ptr[g + 1])):
            c = int(col_idx[e])
            tile = visible[r * block:(r + 1) * block, c * block:(c + 1) * block]
            full = bool(tile.all()) and tile.shape[1] == block
            assert tile.any()  # no visited block without a visible pair
            assert full == (e < int(plan.row_mid[g])), (g, e, c)


def test_executed_flops_count_the_padded_head_dim():
    """D = 96 runs on a 128-wide tile: executed 4/3 of the unpadded work, model FLOPs keep D."""
    layout = BlockLayout.random(1, 3, 3, density=0.6, seed=2, block=16)
    plan = bl.layout_plan(layout, True, 2, 1, 40, 40)
    row_ptr, col_idx = plan.layout.csr()
    col_ptr, row_idx, _ = plan.layout.csc()
    args = (16, True, 0.1, plan.pairs, plan.computed_pairs, plan.kv_rows, False)
    for D, ratio in ((96, 4 / 3), (80, 1.6)):
        q = torch.empty(1, 2, 40, D, dtype=torch.float16, device="meta")
        k = torch.empty(1, 1, 40, D, dtype=torch.float16, device="meta")
        fwd = kernels.cost_of("flopscale::blocksparse_attention_fwd", q, k, k, row_ptr, plan.row_mid, plan.row_order,
                              col_idx, col_ptr, row_idx, plan.col_order, *args)
        assert fwd.flops == 4 * D * plan.pairs and fwd.peak_dtype == "fp16"
        assert fwd.executed_flops == pytest.approx(ratio * 4 * D * plan.computed_pairs, rel=1e-12)


def test_heavy_rows_and_columns_are_taken_first():
    """Programs take block-rows (per layout head) and block-columns in order of falling block
    count, each exactly once; ties keep their order."""
    mask = torch.tensor([[[1, 0, 0], [1, 1, 1], [0, 1, 0]], [[1, 1, 0], [0, 0, 0], [1, 1, 1]]], dtype=torch.bool)
    plan = bl.layout_plan(BlockLayout(mask, 16), False, 2, 1, 40, 40)
    assert plan.row_order.tolist() == [1, 0, 2, 2, 0, 1]
    assert plan.col_order.tolist() == [0, 1, 2]  # 4, 4, 2 blocks: the tie keeps its order
    mask2 = mask.clone()
    mask2[:, :, 0] = False
    plan2 = bl.layout_plan(BlockLayout(mask2, 16), False, 2, 1, 40, 40)
    assert plan2.col_order.tolist() == [1, 2, 0]
    # causal: the effective layout's counts (bottom rows hold the most blocks)
    plan3 = bl.layout_plan(BlockLayout.dense(1, 4, 4, 16), True, 2, 1, 64, 64)
    assert plan3.row_order.tolist() == [3, 2, 1, 0] and plan3.col_order.tolist() == [0, 1, 2, 3]


def test_costs_scale_with_nnz():
    """Half the blocks: half the model and executed FLOPs (non-causal, full blocks)."""
    full = BlockLayout.dense(1, 4, 4, 32)
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, :, :2] = True
    half = BlockLayout(mask, 32)
    a = bl.layout_plan(full, False, 2, 2, 128, 128)
    b = bl.layout_plan(half, False, 2, 2, 128, 128)
    assert a.pairs == 2 * 128 * 128 and b.pairs * 2 == a.pairs and b.computed_pairs * 2 == a.computed_pairs
    assert b.kv_rows * 2 == a.kv_rows


# --------------------------------------------------------------------------- bad input


def test_bad_layouts_raise_clear_errors():
    x = torch.zeros(1, 2, 40, 16)
    with pytest.raises(ValueError, match="does not fit the sequence"):
        kernels.blocksparse_attention(x, x, x, BlockLayout.dense(1, 2, 2, 16))
    with pytest.raises(ValueError, match="does not fit the sequence"):
        kernels.blocksparse_attention(x, x, x, BlockLayout.dense(1, 3, 4, 16))
    with pytest.raises(ValueError, match="heads"):
        kernels.blocksparse_attention(x, x, x, BlockLayout.dense(3, 3, 3, 16))
    with pytest.raises(TypeError, match="BlockLayout"):
        kernels.blocksparse_attention(x, x, x, torch.ones(1, 3, 3))
    with pytest.raises(ValueError, match="causal must be False, True, 'top_left' or 'bottom_right'"):
        kernels.blocksparse_attention(x, x, x, BlockLayout.dense(1, 3, 3, 16), causal="bottom")
    with pytest.raises(ValueError, match="causal must be"):
        bl.layout_plan(BlockLayout.dense(1, 3, 3, 16), 2, 2, 2, 40, 40)
    with pytest.raises(ValueError, match="head dims differ"):
        kernels.blocksparse_attention(x, torch.zeros(1, 2, 40, 32), torch.zeros(1, 2, 40, 32),
                                      BlockLayout.dense(1, 3, 3, 16))


# --------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize("block", [16, 32, 64, 128])
@pytest.mark.parametrize("causal", [False, True, "bottom_right"])
def test_bf16_on_gpu(block, causal):
    gen = torch.Generator().manual_seed(block)
    S, D = 1000, 128
    layout = make_layout("random", 1, S, S, block, gen)
    q, k, v = qkv(2, 8, 2, S, S, D, torch.bfloat16, "cuda", gen)
    check(q, k, v, layout, causal, gen)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the interpreter")
def test_interpreter_refuses_bf16_in_every_attention_and_blocksparse_op():
    """The interpreter computes tl.dot on bf16 bit patterns (errors ~1e9): each op refuses with
    one line instead of returning a wrong tensor (the dense matmul's test is in test_matmul)."""
    q = torch.randn(1, 2, 32, 16).to(torch.bfloat16)
    layout = BlockLayout(torch.ones(1, 2, 2, dtype=torch.bool), 16)
    full = BlockLayout(torch.ones(1, 2, 2, dtype=torch.bool), 16)
    a, b = torch.randn(1, 4, 16, 16).to(torch.bfloat16), torch.randn(1, 1, 32, 8).to(torch.bfloat16)
    calls = {
        "attention": lambda: kernels.attention(q, q, q, causal=True),
        "blocksparse_attention": lambda: kernels.blocksparse_attention(q, q, q, layout),
        "blocksparse_matmul": lambda: kernels.blocksparse_matmul(a, b, full, "dsd"),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match="bfloat16 needs a CUDA GPU") as info:
            call()
        assert "\n" not in str(info.value), name


# --------------------------------------------------------------------------- row tiles over several block-rows


def _tile_cfg(block, D=16):
    from flopscale.kernels import blocksparse_attention_kernels as bk

    return bk.bs_fwd_config(block, D, 2, interpret=True)


@pytest.mark.parametrize("block", [16, 32])
def test_16bit_forward_tiles_cover_several_block_rows(block):
    """16-bit inputs run >= 64-row query tiles (a Hopper wgmma's M) whatever the layout block,
    on the GPU and under the interpreter alike; float32 keeps tiles within one block."""
    from flopscale.kernels import blocksparse_attention_kernels as bk

    for interp in (True, False):
        for D in (16, 64, 128):
            cfg = bk.bs_fwd_config(block, D, 2, interpret=interp, capability=(9, 0))
            assert cfg.block_m >= 64 and cfg.block_m % block == 0
            assert bk.fwd_row_tile(block, cfg) == cfg.block_m
    assert bk.bs_fwd_config(block, 16, 4, interpret=True).block_m <= block


# (kind, layout heads, B, H, H_kv, S_q, S_k, block, causal)
TILE_CASES = [
    ("random", 1, 1, 4, 2, 150, 150, 16, True),  # GQA, ragged: 3 row tiles of 64, the last 22 rows
    ("random", 4, 1, 4, 1, 150, 150, 16, "bottom_right"),  # per-head layouts, S_q = S_k
    ("random", 2, 2, 2, 1, 100, 167, 16, "bottom_right"),  # S_q < S_k: the diagonal crosses blocks
    ("random", 2, 1, 2, 2, 167, 100, 32, "bottom_right"),  # S_q > S_k: the first rows see nothing
    ("random", 1, 1, 2, 1, 167, 100, 32, True),  # top-left, S_q > S_k
    ("random", 4, 1, 4, 2, 77, 130, 32, False),  # per-head layouts with GQA
    ("strided", 1, 1, 2, 1, 200, 200, 16, True),
    ("local", 2, 1, 2, 2, 130, 130, 32, "top_left"),
]


@pytest.mark.parametrize("kind,H_l,B,H,H_kv,S_q,S_k,block,causal", TILE_CASES)
def test_row_tiles_match_reference_fp16(kind, H_l, B, H, H_kv, S_q, S_k, block, causal, device):
    """fp16 output and gradients vs the float64 reference with 64-row tiles over blocks of 16
    and 32 (partial tiles: rows whose block-row lacks a key block, the diagonal, ragged keys)."""
    assert _tile_cfg(block).block_m > block
    gen = torch.Generator().manual_seed(hash((kind, H_l, S_q, S_k, block, str(causal))) % 2**31)
    layout = make_layout(kind, H_l, S_q, S_k, block, gen)
    check(*qkv(B, H, H_kv, S_q, S_k, 16, torch.float16, device, gen), layout, causal, gen)


@pytest.mark.parametrize("causal", [False, True, "bottom_right"])
def test_row_tile_with_disjoint_and_empty_block_rows(causal, device):
    """One 64-row tile whose four block-rows of 16 see different key blocks (so every entry is
    partial), one block-row empty: rows see only their own blocks, the empty one gives 0, lse
    -inf and zero gradient, never NaN."""
    gen = torch.Generator().manual_seed(77)
    mask = torch.zeros(1, 4, 5, dtype=torch.bool)
    mask[0, 0, 0] = mask[0, 1, 1] = mask[0, 1, 4] = mask[0, 3, 0] = mask[0, 3, 2] = mask[0, 3, 3] = True
    layout = BlockLayout(mask, 16)
    S_q, S_k = 60, 70
    q, k, v = qkv(1, 2, 1, S_q, S_k, 16, torch.float16, device, gen)
    plan = bl.layout_plan(layout, causal, 2, 1, S_q, S_k)
    tiles = bl.fwd_tiles(plan, 2, S_q, S_k, _tile_cfg(16).block_m, "cpu")
    assert int(tiles.row_ptr[-1]) == int(plan.layout.mask.any(dim=1).sum())  # the union, once each
    assert int(tiles.row_mid[0]) == 0  # no key block is full for all four block-rows
    o = kernels.blocksparse_attention(q, k, v, layout, causal=causal)
    assert not torch.isnan(o).any() and (o[:, :, 32:48] == 0).all()
    o.float().sum().backward()
    assert (q.grad[:, :, 32:48] == 0).all() and not torch.isnan(q.grad).any()
    q.grad = k.grad = v.grad = None
    check(q, k, v, layout, causal, gen)


@pytest.mark.parametrize("causal,S_q,S_k", [(False, 150, 130), (True, 150, 130), ("bottom_right", 100, 167),
                                            ("bottom_right", 167, 100)])
@pytest.mark.parametrize("block,H_l", [(16, 1), (16, 3), (32, 3)])
def test_row_tile_walk_full_entries_first(causal, S_q, S_k, block, H_l):
    """Each row tile lists the union of its block-rows' key blocks, each once; entries before
    ``row_mid`` are full (every in-bounds row of the tile sees every in-bounds key of the block:
    run unmasked), the rest partial; row tiles are taken heaviest first; the forward's computed
    scores are the tile rows times the key-block columns of every entry (by enumeration)."""
    gen = torch.Generator().manual_seed(S_q * block + H_l)
    layout = make_layout("random", H_l, S_q, S_k, block, gen)
    plan = bl.layout_plan(layout, causal, 3, 1, S_q, S_k)
    T = 64
    tiles = bl.fwd_tiles(plan, 3, S_q, S_k, T, "cpu")
    mode = al.causal_mode(causal)
    visible = torch.ones(S_q, S_k, dtype=torch.bool)
    if mode:
        visible = visible.tril(diagonal=S_k - S_q if mode == "bottom_right" else 0)
    em = plan.layout.element_mask(S_q, S_k) & visible  # the effective layout's visible pairs
    NT = cdiv(S_q, T)
    computed = 0
    for lh in range(layout.heads):
        counts = []
        for t in range(NT):
            g = lh * NT + t
            cols = tiles.col_idx[int(tiles.row_ptr[g]):int(tiles.row_ptr[g + 1])].tolist()
            counts.append(len(cols))
            want = sorted(set(plan.layout.mask[lh, t * T // block:(t + 1) * T // block].nonzero()[:, 1].tolist()))
            assert sorted(cols) == want and len(set(cols)) == len(cols)
            mid = int(tiles.row_mid[g]) - int(tiles.row_ptr[g])
            for e, c in enumerate(cols):
                sub = em[lh, t * T:(t + 1) * T, c * block:(c + 1) * block]
                full = bool(sub.all()) and sub.shape[1] == block
                assert full == (e < mid), (lh, t, e, c)
                computed += sub.shape[0] * sub.shape[1]
        order = tiles.row_order[lh * NT:(lh + 1) * NT].tolist()
        assert sorted(order) == list(range(NT))
        assert [counts[i] for i in order] == sorted(counts, reverse=True)
    assert tiles.computed_pairs == computed * (3 if layout.heads == 1 else 1)
    assert tiles.computed_pairs >= plan.computed_pairs
    # the same entries by key block (the backward's walk): row tiles ascending, full ones first
    bt = bl.fwd_tiles(plan, 3, S_q, S_k, T, "cpu", with_csc=True)
    C = layout.cols
    per_col = torch.zeros(C, dtype=torch.int64)
    for lh in range(layout.heads):
        for c in range(C):
            g = lh * C + c
            ts = bt.row_idx[int(bt.col_ptr[g]):int(bt.col_ptr[g + 1])].tolist()
            want = [t for t in range(NT) if c in tiles.col_idx[int(tiles.row_ptr[lh * NT + t]):
                                                               int(tiles.row_ptr[lh * NT + t + 1])].tolist()]
            assert sorted(ts) == want
            mid = int(bt.col_mid[g]) - int(bt.col_ptr[g])
            for e, t in enumerate(ts):
                r0, r1 = int(tiles.row_ptr[lh * NT + t]), int(tiles.row_mid[lh * NT + t])
                assert (e < mid) == (c in tiles.col_idx[r0:r1].tolist()), (lh, c, t)
            per_col[c] += len(ts)
    assert [int(per_col[c]) for c in bt.col_order] == sorted(per_col.tolist(), reverse=True)


def test_fp16_forward_cost_counts_the_row_tiles():
    """The declared executed FLOPs of the fp16 forward count every score of its 64-row tiles
    (more than the layout's blocks when block-rows of a tile differ); model FLOPs keep the
    visible pairs, and the backward (one block per step) keeps the layout's blocks."""
    gen = torch.Generator().manual_seed(3)
    S, H, D = 100, 2, 16
    layout = make_layout("random", 1, S, S, 16, gen)
    q, k, v = qkv(1, H, 1, S, S, D, torch.float16, "cpu", gen)
    plan = bl.layout_plan(layout, True, H, 1, S, S)
    tiles = bl.fwd_tiles(plan, H, S, S, _tile_cfg(16).block_m, "cpu")
    assert tiles.computed_pairs > plan.computed_pairs
    with FlopCounterMode(display=False) as fc:
        o = kernels.blocksparse_attention(q, k, v, layout, causal=True)
    assert fc.get_total_flops() == 4 * D * plan.pairs
    col_ptr, row_idx, _ = plan.layout.csc()
    fwd = kernels.cost_of("flopscale::blocksparse_attention_fwd", q, k, v, tiles.row_ptr, tiles.row_mid,
                          tiles.row_order, tiles.col_idx, col_ptr, row_idx, plan.col_order, 16, True, 0.25,
                          plan.pairs, plan.computed_pairs, plan.kv_rows, False, tiles.layout_mask,
                          tiles.computed_pairs)
    assert fwd.flops == 4 * D * plan.pairs and fwd.executed_flops == 4 * D * tiles.computed_pairs
    with FlopCounterMode(display=False) as fc:
        o.float().sum().backward()
    assert fc.get_total_flops() == 8 * D * plan.pairs


@pytest.mark.parametrize("block,S_q,S_k,causal", [(64, 150, 200, "bottom_right"), (128, 200, 150, True),
                                                  (128, 150, 150, False)])
def test_fp16_head_dim_128_backward_over_row_tiles(block, S_q, S_k, causal, device):
    """16-bit backward at a 128-wide head-dim tile (D = 96, padded) walks row tiles of 64
    queries with 32-key slices of blocks of 64 and 128 (every matmul >= 64 rows): gradients vs
    the float64 reference, with GQA and per-head layouts."""
    from flopscale.kernels import blocksparse_attention_kernels as bk

    cfg = bk.bs_bwd_config(block, 96, 2, interpret=True)
    assert bk.bwd_row_tiles(block, cfg) and cfg.block_m == 64 and cfg.block_n == 32
    gen = torch.Generator().manual_seed(block + S_q)
    layout = make_layout("random", 4, S_q, S_k, block, gen)
    check(*qkv(1, 4, 2, S_q, S_k, 96, torch.float16, device, gen), layout, causal, gen)
