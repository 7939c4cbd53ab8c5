"""kernels.BlockLayout: validation, index structures, builders (Child et al. 2019 patterns)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flopscale.kernels import BlockLayout


@st.composite
def masks(draw, max_h=3, max_rc=6):
    H = draw(st.integers(1, max_h))
    R = draw(st.integers(1, max_rc))
    C = draw(st.integers(1, max_rc))
    bits = draw(st.lists(st.booleans(), min_size=H * R * C, max_size=H * R * C))
    return torch.tensor(bits, dtype=torch.bool).reshape(H, R, C)


# ---------------------------------------------------------------- construction and validation
def test_two_d_mask_is_one_head_and_int_masks_are_accepted():
    L = BlockLayout([[1, 0], [1, 1]], block=32)
    assert (L.heads, L.rows, L.cols, L.block) == (1, 2, 2, 32)
    assert L.mask.dtype == torch.bool and L.mask.device.type == "cpu"
    assert L.nnz == 3 and L.density == pytest.approx(0.75)
    assert L.shape == (1, 2, 2)
    L2 = BlockLayout(np.array([[[1, 0], [1, 1]]], dtype=np.float32), block=32)
    assert L2 == L and hash(L2) == hash(L)


def test_layout_keeps_a_private_copy_of_the_mask():
    m = torch.ones(1, 2, 2, dtype=torch.bool)
    L = BlockLayout(m, 16)
    m[0, 0, 0] = False
    assert L.nnz == 4


@pytest.mark.parametrize("block", [0, 8, 48, 256, "64", 64.0, True, None])
def test_unsupported_block_size_is_a_value_error(block):
    with pytest.raises(ValueError, match="block must be one of"):
        BlockLayout(torch.ones(2, 2), block=block)


@pytest.mark.parametrize(
    "mask, match",
    [
        (torch.ones(2), "must be \\[H, rows, cols\\]"),
        (torch.ones(1, 1, 2, 2), "must be \\[H, rows, cols\\]"),
        (torch.tensor([[0, 2]]), "only 0 and 1"),
        (torch.tensor([[0.5, 1.0]]), "only 0 and 1"),
        (torch.ones(0, 2, 2), "at least one"),
    ],
)
def test_bad_masks_are_value_errors(mask, match):
    with pytest.raises(ValueError, match=match):
        BlockLayout(mask, block=16)


def test_non_tensor_mask_is_a_type_error():
    with pytest.raises(TypeError):
        BlockLayout(object(), block=16)


# ---------------------------------------------------------------- index structures
@settings(max_examples=60, deadline=None)
@given(masks())
def test_csr_csc_coo_describe_the_mask_in_block_id_order(mask):
    L = BlockLayout(mask, block=16)
    H, R, C = mask.shape
    nz = mask.nonzero().tolist()  # block id order
    assert L.nnz == len(nz)
    row_ptr, col_idx = L.csr()
    assert row_ptr.dtype == col_idx.dtype == torch.int32
    assert row_ptr.shape == (H * R + 1,) and col_idx.shape == (L.nnz,)
    # CSR order is block-id order: entry k of row g is block id k
    seen = []
    for g in range(H * R):
        for k in range(int(row_ptr[g]), int(row_ptr[g + 1])):
            seen.append([g // R, g % R, int(col_idx[k])])
    assert seen == nz
    col_ptr, row_idx, block_id = L.csc()
    assert col_ptr.shape == (H * C + 1,) and row_idx.shape == block_id.shape == (L.nnz,)
    assert sorted(block_id.tolist()) == list(range(L.nnz))
    for g in range(H * C):
        lo, hi = int(col_ptr[g]), int(col_ptr[g + 1])
        rows = row_idx[lo:hi].tolist()
        assert rows == sorted(rows)
        for k in range(lo, hi):
            assert nz[int(block_id[k])] == [g // C, int(row_idx[k]), g % C]
    h, r, c = L.coo()
    assert torch.stack([h, r, c], 1).tolist() == nz
    assert torch.equal(L.row_counts(), mask.sum(2))
    assert torch.equal(L.col_counts(), mask.sum(1))


@settings(max_examples=30, deadline=None)
@given(masks())
def test_transpose_is_the_transposed_mask_and_cached(mask):
    L = BlockLayout(mask, block=32)
    T = L.transpose()
    assert torch.equal(T.mask, mask.transpose(1, 2))
    assert T.block == 32 and T.nnz == L.nnz
    assert L.transpose() is T and T.transpose() is L
    # the layout's CSC is its transpose's CSR (block ids differ: map them through nonzero order)
    col_ptr, row_idx, _ = L.csc()
    t_ptr, t_idx = T.csr()
    assert torch.equal(col_ptr, t_ptr) and torch.equal(row_idx, t_idx)


def test_indices_on_a_device_are_cached():
    L = BlockLayout.causal(2, 4, 16)
    assert L.csr("cpu")[0] is L.csr(torch.device("cpu"))[0]


def test_element_mask_expands_blocks():
    L = BlockLayout([[1, 0], [0, 1]], block=16)
    e = L.element_mask()
    assert e.shape == (1, 32, 32)
    assert e[0, :16, :16].all() and not e[0, :16, 16:].any() and e[0, 16:, 16:].all()
    assert L.element_mask(20, 17).shape == (1, 20, 17)


def test_memo_builds_once():
    L = BlockLayout.dense(1, 2, 2, 16)
    calls = []
    first = L.memo("x", lambda lay: calls.append(1) or lay.nnz)
    assert first == 4 and L.memo("x", lambda lay: calls.append(1)) == 4 and len(calls) == 1


# ---------------------------------------------------------------- builders
def _loop_mask(R, C, pred):
    return torch.tensor([[bool(pred(i, j)) for j in range(C)] for i in range(R)])


def test_dense_and_causal():
    D = BlockLayout.dense(2, 3, 5, block=64)
    assert D.nnz == 30 and D.density == 1.0
    Cz = BlockLayout.causal(3, 7, block=16)
    assert Cz.nnz == 3 * 7 * 8 // 2
    assert torch.equal(Cz.mask[1], _loop_mask(7, 7, lambda i, j: j <= i))


@pytest.mark.parametrize("window", [1, 2, 5])
def test_local_window(window):
    L = BlockLayout.local(1, 6, window, block=16)
    assert torch.equal(L.mask[0], _loop_mask(6, 6, lambda i, j: 0 <= i - j < window))
    S = BlockLayout.local(1, 6, window, block=16, causal=False)
    assert torch.equal(S.mask[0], _loop_mask(6, 6, lambda i, j: abs(i - j) < window))


def test_strided_is_child_et_al_strided_pattern():
    # Child et al. 2019, Sec. 4.2 strided attention, l = stride: A1 = {j : i - j < l},
    # A2 = {j : (i - j) mod l = 0}, both with j <= i; the layout merges the two heads
    R, l = 11, 3
    L = BlockLayout.strided(2, R, l, block=32)
    want = _loop_mask(R, R, lambda i, j: j <= i and ((i - j) < l or (i - j) % l == 0))
    assert torch.equal(L.mask[0], want) and torch.equal(L.mask[1], want)


def test_fixed_is_child_et_al_fixed_pattern():
    # Child et al. 2019, Sec. 4.2 fixed attention: A1 = {j : floor(j/l) = floor(i/l)},
    # A2 = {j : j mod l in {l-c, ..., l-1}}, with j <= i (autoregressive)
    R, l, c = 12, 4, 2
    L = BlockLayout.fixed(1, R, l, block=16, summary=c)
    want = _loop_mask(R, R, lambda i, j: j <= i and (j // l == i // l or j % l >= l - c))
    assert torch.equal(L.mask[0], want)
    with pytest.raises(ValueError, match="summary"):
        BlockLayout.fixed(1, R, 2, block=16, summary=3)


def test_random_has_the_requested_count_and_is_reproducible():
    L = BlockLayout.random(3, 5, 8, density=0.3, seed=7, block=16)
    assert L.mask.sum((1, 2)).tolist() == [12, 12, 12]
    assert BlockLayout.random(3, 5, 8, density=0.3, seed=7, block=16) == L
    assert BlockLayout.random(3, 5, 8, density=0.3, seed=8, block=16) != L
    assert BlockLayout.random(1, 4, 4, density=0.0, seed=0, block=16).nnz == 0
    with pytest.raises(ValueError, match="density"):
        BlockLayout.random(1, 4, 4, density=1.5, seed=0, block=16)


def test_from_mask_fn_marks_every_block_touched_by_the_predicate():
    # element-level causal on a ragged size: rows/cols = ceil(100/32) = 4, lower triangle
    L = BlockLayout.from_mask_fn(lambda h, i, j: j <= i, H=2, M=100, block=32)
    assert L == BlockLayout.causal(2, 4, 32)
    # a predicate true in a single element marks exactly its block, per head
    L = BlockLayout.from_mask_fn(lambda h, i, j: (i == 40 + h) & (j == 70), H=2, M=64, N=96, block=32)
    assert L.shape == (2, 2, 3) and L.nnz == 2
    assert L.mask[0, 1, 2] and L.mask[1, 1, 2]
    with pytest.raises(TypeError, match="bool"):
        BlockLayout.from_mask_fn(lambda h, i, j: i - j, H=1, M=32, block=16)


@pytest.mark.parametrize("bad", [0, -1, 2.5])
def test_builders_reject_bad_sizes(bad):
    with pytest.raises(ValueError):
        BlockLayout.causal(1, bad, 16)
    with pytest.raises(ValueError):
        BlockLayout.local(1, 4, bad, 16)


def test_repr_and_str_are_readable():
    L = BlockLayout.causal(2, 3, 64)
    assert repr(L) == "BlockLayout(heads=2, rows=3, cols=3, block=64, nnz=12, density=0.667)"
    assert str(L).splitlines()[1:] == ["  #..", "  ##.", "  ###"]
