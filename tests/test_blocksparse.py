"""kernels.blocksparse_matmul (sdd, dsd, dds) against a dense masked float64 reference:
hypothesis-random layouts, forward and backward, strided inputs, untouched empty blocks,
FLOP counting, costs and bad input."""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from flopscale import kernels
from flopscale.kernels import BlockLayout
from flopscale.kernels import blocksparse_kernels as bk
from flopscale.kernels import blocksparse_layer as bl

HAS_CUDA = torch.cuda.is_available()
DEV = "cuda" if HAS_CUDA else "cpu"


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().double(), ref.detach().double()
    assert not torch.isnan(out).any(), "NaN in output (unwritten element or a read of a poisoned block)"
    if ref.numel() == 0 or ref.norm() == 0:
        return float(out.abs().max()) if out.numel() else 0.0
    return float((out - ref).norm() / ref.norm())


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    def nan_output(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(bl, "_new_output", nan_output)


def operands(layout: BlockLayout, mode: str, Z: int, free: int, dtype=torch.float32, device=DEV):
    """Random a, b for ``mode`` with the free dense dimension ``free``."""
    H, R, C, blk, nnz = layout.heads, layout.rows, layout.cols, layout.block, layout.nnz
    r = lambda *s: torch.randn(*s, device=device).to(dtype)  # noqa: E731
    if mode == "sdd":
        return r(Z, H, R * blk, free), r(Z, H, free, C * blk)
    if mode == "dsd":
        return r(Z, nnz, blk, blk), r(Z, H, C * blk, free)
    return r(Z, H, free, R * blk), r(Z, nnz, blk, blk)


def check_forward_backward(layout, mode, a, b, tol):
    a = a.detach().requires_grad_()
    b = b.detach().requires_grad_()
    out = kernels.blocksparse_matmul(a, b, layout, mode)
    a64 = a.detach().double().requires_grad_()
    b64 = b.detach().double().requires_grad_()
    ref = kernels.blocksparse_matmul_reference(a64, b64, layout, mode, dtype=torch.float64)
    assert out.shape == ref.shape and out.dtype == a.dtype
    assert rel_err(out, ref) < tol
    g = torch.randn(out.shape, device=out.device)
    da, db = torch.autograd.grad(out, (a, b), g.to(out.dtype))
    ra, rb = torch.autograd.grad(ref, (a64, b64), g.double())
    assert da.shape == a.shape and db.shape == b.shape
    assert rel_err(da, ra) < tol and rel_err(db, rb) < tol


@st.composite
def problems(draw, blocks=(16, 32)):
    H = draw(st.integers(1, 2))
    R = draw(st.integers(1, 3))
    C = draw(st.integers(1, 3))
    bits = draw(st.lists(st.booleans(), min_size=H * R * C, max_size=H * R * C))
    block = draw(st.sampled_from(blocks))
    Z = draw(st.integers(1, 2))
    free = draw(st.sampled_from([1, 7, 33]))
    return BlockLayout(torch.tensor(bits).reshape(H, R, C), block), Z, free


# ---------------------------------------------------------------- numerics
@pytest.mark.parametrize("mode", bl.MODES)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(problem=problems())
def test_random_layouts_forward_and_backward_fp32(mode, problem):
    layout, Z, free = problem
    a, b = operands(layout, mode, Z, free)
    check_forward_backward(layout, mode, a, b, 1e-4)


@pytest.mark.parametrize("mode", bl.MODES)
@pytest.mark.parametrize("block", [64, 128])
def test_large_blocks(mode, block):
    layout = BlockLayout.random(2, 2, 2, density=0.5, seed=block, block=block)
    a, b = operands(layout, mode, 1, 33)
    check_forward_backward(layout, mode, a, b, 1e-4)


@pytest.mark.parametrize("mode", bl.MODES)
def test_batches_beyond_the_grid_limit_launch_in_slices(mode, monkeypatch):
    """The batch is the last grid axis (at most 65535 on CUDA): larger batches run in slices."""
    monkeypatch.setattr(bl, "MAX_GRID_YZ", 2)
    layout = BlockLayout.random(2, 2, 3, density=0.5, seed=3, block=16)
    a, b = operands(layout, mode, 5, 33)
    check_forward_backward(layout, mode, a, b, 1e-4)


@pytest.mark.parametrize("mode", bl.MODES)
def test_fp16(mode):
    layout = BlockLayout.causal(2, 3, block=32)
    a, b = operands(layout, mode, 2, 40, dtype=torch.float16)
    check_forward_backward(layout, mode, a, b, 1e-2)


@pytest.mark.parametrize("mode", bl.MODES)
def test_transposed_and_strided_dense_operands(mode):
    layout = BlockLayout.fixed(1, 4, 2, block=16)
    a, b = operands(layout, mode, 2, 24)
    # same values, non-contiguous storage: transposed copies and an expanded batch
    if mode != "dsd":
        a = a.mT.contiguous().mT
    if mode != "dds":
        b = b.mT.contiguous().mT
    if mode == "sdd":
        b = b[:1].expand(2, *b.shape[1:])
    assert not (a.is_contiguous() and b.is_contiguous())
    check_forward_backward(layout, mode, a, b, 1e-4)


def _stored_shapes(layout, mode, Z, free, trans_a, trans_b):
    """Shapes of a and b as stored, for ``op(a) @ op(b)`` (``layout`` describes the sparse side
    as stored; a transposed sparse operand is ``layout^T``)."""
    blk, nnz = layout.block, layout.nnz
    H, R, C = layout.heads, layout.rows, layout.cols
    sparse = (Z, nnz, blk, blk)
    if mode == "sdd":
        a, b = (Z, H, R * blk, free), (Z, H, free, C * blk)
    elif mode == "dsd":
        a, b = sparse, (Z, H, (R if trans_a else C) * blk, free)
    else:
        a, b = (Z, H, free, (C if trans_b else R) * blk), sparse
    flip = lambda s: (*s[:2], s[3], s[2])  # noqa: E731
    if trans_a and mode != "dsd":
        a = flip(a)
    if trans_b and mode != "dds":
        b = flip(b)
    return a, b


@pytest.mark.parametrize("mode", bl.MODES)
@pytest.mark.parametrize("trans_a,trans_b", [(True, False), (False, True), (True, True)])
def test_trans_a_trans_b(mode, trans_a, trans_b):
    """``op(a) @ op(b)`` against the float64 reference (forward and both gradients), and a
    transposed sparse operand against the same product with its blocks transposed explicitly
    over ``layout^T`` (an independent route through the untransposed kernel)."""
    layout = BlockLayout.random(2, 3, 2, density=0.6, seed=3, block=16)
    Z, free = 2, 7
    gen = torch.Generator().manual_seed(hash((mode, trans_a, trans_b)) % 2**31)
    sa, sb = _stored_shapes(layout, mode, Z, free, trans_a, trans_b)
    a = torch.randn(sa, generator=gen).to(DEV).requires_grad_()
    b = torch.randn(sb, generator=gen).to(DEV).requires_grad_()
    out = kernels.blocksparse_matmul(a, b, layout, mode, trans_a=trans_a, trans_b=trans_b)
    a64, b64 = (t.detach().double().requires_grad_() for t in (a, b))
    ref = kernels.blocksparse_matmul_reference(a64, b64, layout, mode, dtype=torch.float64,
                                               trans_a=trans_a, trans_b=trans_b)
    assert out.shape == ref.shape and rel_err(out, ref) < 1e-4
    g = torch.randn(out.shape, generator=gen).to(DEV)
    da, db = torch.autograd.grad(out, (a, b), g)
    ra, rb = torch.autograd.grad(ref, (a64, b64), g.double())
    assert rel_err(da, ra) < 1e-4 and rel_err(db, rb) < 1e-4
    # independent route: transpose dense operands by hand, re-block a transposed sparse one
    lt = layout.transpose()
    if mode == "dsd":
        a2 = bl.dense_to_sparse(bl.sparse_to_dense(a.detach(), layout).mT, lt) if trans_a else a.detach()
        b2 = b.detach().mT.contiguous() if trans_b else b.detach()
        other = kernels.blocksparse_matmul(a2, b2, lt if trans_a else layout, "dsd")
    elif mode == "dds":
        a2 = a.detach().mT.contiguous() if trans_a else a.detach()
        b2 = bl.dense_to_sparse(bl.sparse_to_dense(b.detach(), layout).mT, lt) if trans_b else b.detach()
        other = kernels.blocksparse_matmul(a2, b2, lt if trans_b else layout, "dds")
    else:
        a2 = a.detach().mT.contiguous() if trans_a else a.detach()
        b2 = b.detach().mT.contiguous() if trans_b else b.detach()
        other = kernels.blocksparse_matmul(a2, b2, layout, "sdd")
    assert rel_err(out, other) < 1e-5


def test_trans_flags_must_be_bools_and_shapes_follow_them():
    a, b, layout = _good("dsd")
    with pytest.raises(TypeError, match="trans_a must be a bool"):
        kernels.blocksparse_matmul(a, b, layout, "dsd", trans_a=1)
    # b fits the untransposed layout (C*block rows) but not layout^T (R*block rows)
    lay = BlockLayout.dense(1, 2, 3, 16)
    a = torch.randn(1, lay.nnz, 16, 16)
    with pytest.raises(ValueError, match="rows"):
        kernels.blocksparse_matmul(a, torch.randn(1, 1, 48, 8), lay, "dsd", trans_a=True)


def test_empty_blocks_are_never_read():
    """Poison everything a dense operand holds outside the layout's blocks with NaN: a kernel
    that read (and multiplied by zero) an empty block would produce NaN."""
    mask = torch.tensor([[[1, 0, 0], [0, 0, 1]], [[0, 0, 0], [1, 1, 0]]], dtype=torch.bool)
    layout = BlockLayout(mask, block=16)
    H, R, C, blk = 2, 2, 3, 16
    used_rows = mask.any(2).repeat_interleave(blk, 1)  # [H, R*blk] block-rows with a block
    used_cols = mask.any(1).repeat_interleave(blk, 1)  # [H, C*blk]
    # sdd: A rows of empty block-rows and B columns of empty block-cols are never needed
    a, b = operands(layout, "sdd", 1, 20)
    a_p = a.masked_fill(~used_rows[None, :, :, None], float("nan"))
    b_p = b.masked_fill(~used_cols[None, :, None, :], float("nan"))
    ref = kernels.blocksparse_matmul_reference(a, b, layout, "sdd", dtype=torch.float64)
    assert rel_err(kernels.blocksparse_matmul(a_p, b_p, layout, "sdd"), ref) < 1e-4
    # dsd: rows of B facing empty block-columns of the sparse A are never needed
    a, b = operands(layout, "dsd", 1, 20)
    b_p = b.masked_fill(~used_cols[None, :, :, None], float("nan"))
    ref = kernels.blocksparse_matmul_reference(a, b, layout, "dsd", dtype=torch.float64)
    assert rel_err(kernels.blocksparse_matmul(a, b_p, layout, "dsd"), ref) < 1e-4
    # dds: columns of A facing empty block-rows of the sparse B are never needed
    a, b = operands(layout, "dds", 1, 20)
    a_p = a.masked_fill(~used_rows[None, :, None, :], float("nan"))
    ref = kernels.blocksparse_matmul_reference(a, b, layout, "dds", dtype=torch.float64)
    assert rel_err(kernels.blocksparse_matmul(a_p, b, layout, "dds"), ref) < 1e-4


@pytest.mark.parametrize("mode", bl.MODES)
def test_empty_layout(mode):
    layout = BlockLayout(torch.zeros(1, 2, 2), block=16)
    a, b = operands(layout, mode, 2, 7)
    out = kernels.blocksparse_matmul(a, b, layout, mode)
    ref = kernels.blocksparse_matmul_reference(a, b, layout, mode)
    assert out.shape == ref.shape
    assert torch.equal(out, torch.zeros_like(out))


@settings(max_examples=40, deadline=None)
@given(problem=problems(blocks=(16, 32, 64, 128)))
def test_sdd_launches_one_program_per_group_of_present_blocks(problem):
    layout, _, _ = problem
    G = bk.sdd_group(layout.block)
    lut = bl._sdd_lut(layout, torch.device("cpu"))
    counts = layout.row_counts().flatten()
    assert lut.shape == (int(((counts + G - 1) // G).sum()), 1 + G)  # the sdd grid
    ids = lut[:, 1:][lut[:, 1:] >= 0]
    assert sorted(ids.tolist()) == list(range(layout.nnz))  # each block exactly once
    h, r, _ = layout.coo()
    for row in lut.tolist():
        for bid in row[1:]:
            if bid >= 0:
                assert row[0] == int(h[bid]) * layout.rows + int(r[bid])


def test_sparse_dense_conversions_round_trip():
    layout = BlockLayout.random(2, 3, 2, density=0.5, seed=3, block=16)
    x = torch.randn(2, layout.nnz, 16, 16)
    dense = bl.sparse_to_dense(x, layout)
    assert dense.shape == (2, 2, 48, 32)
    assert torch.equal(dense * layout.element_mask()[None], dense)
    assert torch.equal(bl.dense_to_sparse(dense, layout), x)


# ---------------------------------------------------------------- FLOPs and cost
@pytest.mark.parametrize("mode", bl.MODES)
def test_flop_counter_counts_our_op_by_our_formula(mode):
    layout = BlockLayout.random(2, 3, 2, density=0.5, seed=5, block=16)
    Z, free = 2, 7
    a, b = operands(layout, mode, Z, free)
    a.requires_grad_()
    b.requires_grad_()
    with FlopCounterMode(display=False) as fc:
        out = kernels.blocksparse_matmul(a, b, layout, mode)
        forward = fc.get_total_flops()
        out.sum().backward()
    assert list(map(str, fc.get_flop_counts()["Global"])) == ["flopscale.blocksparse_matmul"]
    assert forward == 2 * Z * layout.nnz * 16 * 16 * free
    assert fc.get_total_flops() == 3 * forward  # both gradients cost one forward each
    idx = bl._indices(layout, a.device)
    cost = kernels.cost_of("flopscale::blocksparse_matmul", a, b, *idx, mode, 16, layout.rows, layout.cols)
    assert cost.flops == cost.executed_flops == forward
    assert cost.bytes == (a.numel() + b.numel() + out.numel()) * 4
    # float32 in IEEE precision runs on the FMA units: rated against the fp32 peak
    assert cost.peak_dtype == ("tf32" if torch.backends.cuda.matmul.allow_tf32 else "fp32")


# ---------------------------------------------------------------- bad input
def _good(mode, layout=None):
    layout = layout or BlockLayout.causal(2, 2, block=16)
    a, b = operands(layout, mode, 1, 8)
    return a, b, layout


@pytest.mark.parametrize(
    "case, exc, match",
    [
        (lambda: (*_good("sdd")[:2], "not a layout", "sdd"), TypeError, "BlockLayout"),
        (lambda: (*_good("sdd"), "ssd"), ValueError, "mode must be one of"),
        (lambda: (_good("sdd")[0], _good("sdd")[1].half(), _good("sdd")[2], "sdd"), TypeError, "same dtype"),
        (lambda: (_good("sdd")[0].double(), _good("sdd")[1].double(), _good("sdd")[2], "sdd"), TypeError, "unsupported dtype"),
        (lambda: (_good("sdd")[0][0], _good("sdd")[1][0], _good("sdd")[2], "sdd"), ValueError, "4-D"),
        # the layout does not match the operand
        (lambda: (*_good("sdd")[:2], BlockLayout.causal(2, 3, 16), "sdd"), ValueError, "rows"),
        (lambda: (*_good("sdd")[:2], BlockLayout.causal(1, 2, 16), "sdd"), ValueError, "heads"),
        (lambda: (*_good("dsd")[:2], BlockLayout.dense(2, 2, 2, 16), "dsd"), ValueError, "nnz"),
        (lambda: (*_good("dds")[:2], BlockLayout.dense(2, 1, 3, 16), "dds"), ValueError, "columns"),
        (lambda: (torch.randn(1, 2, 32, 8), torch.randn(1, 2, 9, 32), BlockLayout.causal(2, 2, 16), "sdd"), ValueError, "inner"),
        (lambda: (torch.randn(2, 3, 16, 16), torch.randn(1, 2, 32, 8), BlockLayout.causal(2, 2, 16), "dsd"), ValueError, "batch"),
    ],
)
def test_bad_input_is_a_clear_error(case, exc, match):
    a, b, layout, mode = case()
    with pytest.raises(exc, match=match):
        kernels.blocksparse_matmul(a, b, layout, mode)


@pytest.mark.skipif(HAS_CUDA, reason="checks the CPU path without the interpreter")
def test_cpu_tensor_without_interpreter_is_a_value_error(monkeypatch):
    a, b, layout = _good("sdd")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="interpreter"):
        kernels.blocksparse_matmul(a, b, layout, "sdd")


def test_op_schema_autograd_and_fake_tensor_registration():
    layout = BlockLayout.causal(1, 2, block=16)
    a, b = operands(layout, "dsd", 1, 16)
    a.requires_grad_()
    idx = bl._indices(layout, a.device)
    torch.library.opcheck(
        torch.ops.flopscale.blocksparse_matmul.default,
        (a, b, *idx, "dsd", 16, layout.rows, layout.cols, False),
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
    )


# ---------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("mode", bl.MODES)
@pytest.mark.parametrize("block", [16, 32, 64, 128])
def test_bf16_on_gpu(mode, block):
    layout = BlockLayout.random(4, 8, 8, density=0.3, seed=block, block=block)
    a, b = operands(layout, mode, 2, 200, dtype=torch.bfloat16, device="cuda")
    check_forward_backward(layout, mode, a, b, 1e-2)


@pytest.mark.gpu
def test_torch_compile_on_gpu():
    layout = BlockLayout.causal(2, 4, block=64)
    a, b = operands(layout, "dsd", 2, 128, dtype=torch.float16, device="cuda")
    f = torch.compile(lambda x, y: kernels.blocksparse_matmul(x, y, layout, "dsd") * 2, fullgraph=True)
    ref = kernels.blocksparse_matmul_reference(a, b, layout, "dsd", dtype=torch.float64) * 2
    assert rel_err(f(a, b), ref) < 1e-2
