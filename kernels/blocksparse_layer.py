"""``kernels.blocksparse_matmul``: block-sparse products as the ``flopscale::blocksparse_matmul`` op.

    kernels.blocksparse_matmul(a, b, layout, mode, trans_a=False, trans_b=False)  # mode in {"sdd", "dsd", "dds"}
    kernels.blocksparse_matmul_reference(a, b, layout, mode, trans_a=False, trans_b=False)  # float64 reference

Modes (as in the classic Triton block-sparse library; ``layout`` always describes the sparse
side, ``block`` = ``layout.block``, ``Z`` a batch, ``H = layout.heads``):

* ``"sdd"``: dense ``a [Z, H, M, K]`` @ dense ``b [Z, H, K, N]`` -> sparse ``[Z, nnz, block, block]``,
  only the layout's blocks computed; layout ``[H, M/block, N/block]``.
* ``"dsd"``: sparse ``a [Z, nnz, block, block]`` (layout ``[H, M/block, K/block]``) @ dense
  ``b [Z, H, K, N]`` -> dense ``[Z, H, M, N]``.
* ``"dds"``: dense ``a [Z, H, M, K]`` @ sparse ``b [Z, nnz, block, block]`` (layout
  ``[H, K/block, N/block]``) -> dense ``[Z, H, M, N]``.

``trans_a`` / ``trans_b`` multiply by the transpose of the stored operand (``op(a) @ op(b)``,
as in the classic library): a transposed dense operand is read in place through its strides;
a transposed sparse operand keeps the blocks and the layout of its storage (``layout``
describes ``a`` or ``b`` as stored), and its blocks are read transposed.  So ``dsd`` with
``trans_a`` takes ``b [Z, H, R*block, N]`` and gives ``[Z, H, C*block, N]``; ``dds`` with
``trans_b`` takes ``a [Z, H, M, C*block]`` and gives ``[Z, H, M, R*block]``.

Sparse tensors hold the layout's non-zero blocks in block-id order (row-major order of
``layout.mask.nonzero()``).  The dimensions the layout describes must equal ``rows*block`` /
``cols*block``; the free dense dimension (K for sdd, N for dsd, M for dds) may be any size >= 1.
dtypes fp16, bf16, fp32 (tf32 only when ``torch.backends.cuda.matmul.allow_tf32``), fp32
accumulation, output dtype = input dtype.  Autograd for all modes: each gradient is itself an
sdd/dsd/dds product over the same layout (transposed operands are read in place).

Cost (``kernels.cost_of`` and ``FlopCounterMode`` agree): ``flops = executed_flops =
2 * Z * nnz * block**2 * F`` FLOP with ``F`` the free dense dimension (K, N or M); no work is
done for empty blocks; ``peak_dtype`` ``"fp16"``/``"bf16"``, ``"tf32"`` or ``"fp32"`` (IEEE
float32 on FMA units) says which peak rates it.  (sdd with blocks < 64 computes blocks in groups of ``64/block`` of one
block-row; a row whose count is not a multiple of the group pads its last group: like ragged
tile edges, that padding is not counted.)  ``bytes``: the sparse operand/output counts ``Z*nnz*block**2`` elements,
dense operands and outputs count in full (each read or written once), index arrays are not
counted.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
import triton
from torch.library import triton_op
from torch.utils.flop_counter import register_flop_formula

from . import blocksparse_kernels as bk
from ._cost import Cost, peak_dtype_of, register_cost
from ._runtime import check_runnable, wrap_triton
from .matmul_layer import no_launch
from .layout import BlockLayout

__all__ = [
    "blocksparse_matmul",
    "blocksparse_matmul_reference",
    "sparse_to_dense",
    "dense_to_sparse",
    "MODES",
]

OP = "flopscale::blocksparse_matmul"
#: CUDA's limit on grid dimensions y and z (the batch is the last grid axis).
MAX_GRID_YZ = 65535
MODES = ("sdd", "dsd", "dds")
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_FAMILY = {torch.float16: "16", torch.bfloat16: "16", torch.float32: "32"}


# --------------------------------------------------------------------------- index tables
def _sdd_lut(layout: BlockLayout, device: torch.device) -> torch.Tensor:
    """``[groups, 1 + G]`` int32: global row ``h*R + r``, then up to G block ids of that row (-1 pad)."""
    G = bk.sdd_group(layout.block)

    def build(lay: BlockLayout) -> torch.Tensor:
        counts = lay.row_counts().flatten()
        row_ptr = torch.zeros(counts.numel() + 1, dtype=torch.int64)
        row_ptr[1:] = torch.cumsum(counts, 0)
        per_row = (counts + G - 1) // G
        grow = torch.repeat_interleave(torch.arange(counts.numel()), per_row)
        first_group = torch.zeros_like(per_row)
        first_group[1:] = torch.cumsum(per_row, 0)[:-1]
        nth = torch.arange(grow.numel()) - first_group[grow]
        bids = row_ptr[grow][:, None] + G * nth[:, None] + torch.arange(G)[None, :]
        bids = torch.where(bids < row_ptr[grow + 1][:, None], bids, torch.full_like(bids, -1))
        return torch.cat([grow[:, None], bids], 1).to(torch.int32).contiguous().to(device)

    return layout.memo(("sdd_lut", G, _norm_device(device)), build)


def _norm_device(device: torch.device) -> torch.device:
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _indices(layout: BlockLayout, device: torch.device) -> tuple[torch.Tensor, ...]:
    row_ptr, col_idx = layout.csr(device)
    col_ptr, row_idx, block_id = layout.csc(device)
    return row_ptr, col_idx, col_ptr, row_idx, block_id, _sdd_lut(layout, device)


# --------------------------------------------------------------------------- shapes and cost
def _free_dim(mode: str, a_shape, b_shape) -> int:
    if mode == "sdd":
        return a_shape[-1]  # K
    if mode == "dsd":
        return b_shape[-1]  # N
    return a_shape[-2]  # M


def blocksparse_flops(a_shape, b_shape, nnz: int, mode: str, block: int) -> int:
    """Model (= executed) FLOP: ``2 * Z * nnz * block**2 * F``, F the free dense dimension."""
    return 2 * a_shape[0] * nnz * block * block * _free_dim(mode, a_shape, b_shape)


def _out_shape(a_shape, b_shape, nnz: int, mode: str, block: int, rows: int, cols: int, trans: bool, heads: int):
    Z = a_shape[0]
    if mode == "sdd":
        return (Z, nnz, block, block)
    if mode == "dsd":
        m = (cols if trans else rows) * block
        return (Z, heads, m, b_shape[-1])
    n = (rows if trans else cols) * block
    return (Z, heads, a_shape[-2], n)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


# --------------------------------------------------------------------------- launch
def _precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def _new_output(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Allocation of every output (tests replace it to poison outputs with NaN)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _launch(a, b, out, row_ptr, col_idx, col_ptr, row_idx, block_id, sdd_lut, mode, block, rows, cols, trans,
            heads):
    """One launch over the batch of ``a``/``b``/``out`` (at most MAX_GRID_YZ elements)."""
    cfg = bk.config_for(mode, block, _FAMILY[a.dtype])
    precision = _precision(a.dtype)
    if mode == "sdd":
        K = a.shape[-1]
        grid = (sdd_lut.shape[0], a.shape[0])
        wrap_triton(bk.sdd_kernel)[grid](
            a, b, out, sdd_lut, col_idx, K, rows,
            a.stride(0), a.stride(1), a.stride(2), a.stride(3),
            b.stride(0), b.stride(1), b.stride(2), b.stride(3),
            out.stride(0), out.stride(1), out.stride(2), out.stride(3),
            BLOCK=block, GROUP=cfg.TILE, BLOCK_K=cfg.BLOCK_K, INPUT_PRECISION=precision,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
    elif mode == "dsd":
        N = b.shape[-1]
        if trans:  # logical operand = layout^T: walk the layout's columns
            ptr, idx, bid, n_rows = col_ptr, row_idx, block_id, cols
            sr, sc = a.stride(3), a.stride(2)
        else:
            ptr, idx, bid, n_rows = row_ptr, col_idx, col_idx, rows
            sr, sc = a.stride(2), a.stride(3)
        grid = (heads * n_rows, triton.cdiv(N, cfg.TILE), a.shape[0])
        wrap_triton(bk.dsd_kernel)[grid](
            a, b, out, ptr, idx, bid, N, n_rows,
            a.stride(0), a.stride(1), sr, sc,
            b.stride(0), b.stride(1), b.stride(2), b.stride(3),
            out.stride(0), out.stride(1), out.stride(2), out.stride(3),
            BLOCK=block, BLOCK_N=cfg.TILE, BLOCK_K=cfg.BLOCK_K, USE_BID=trans, SWAP=block < 64,
            INPUT_PRECISION=precision, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
    else:
        M = a.shape[-2]
        if trans:  # logical operand = layout^T: its columns are the layout's rows
            ptr, idx, bid, n_cols = row_ptr, col_idx, col_idx, rows
            sr, sc = b.stride(3), b.stride(2)
        else:
            ptr, idx, bid, n_cols = col_ptr, row_idx, block_id, cols
            sr, sc = b.stride(2), b.stride(3)
        grid = (heads * n_cols, triton.cdiv(M, cfg.TILE), a.shape[0])
        wrap_triton(bk.dds_kernel)[grid](
            a, b, out, ptr, idx, bid, M, n_cols,
            a.stride(0), a.stride(1), a.stride(2), a.stride(3),
            b.stride(0), b.stride(1), sr, sc,
            out.stride(0), out.stride(1), out.stride(2), out.stride(3),
            BLOCK=block, BLOCK_M=cfg.TILE, BLOCK_K=cfg.BLOCK_K, USE_BID=not trans,
            INPUT_PRECISION=precision, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )


def _run(a, b, row_ptr, col_idx, col_ptr, row_idx, block_id, sdd_lut, mode, block, rows, cols, trans):
    nnz = col_idx.shape[0]
    heads = (row_ptr.shape[0] - 1) // rows
    out = _new_output(_out_shape(a.shape, b.shape, nnz, mode, block, rows, cols, trans, heads), a.dtype, a.device)
    if out.numel() == 0 or no_launch(a, b):
        return out
    if mode == "sdd":
        if trans:
            raise ValueError("blocksparse_matmul: sdd has no transposed form")
        if a.shape[-1] == 0 or nnz == 0:
            return out.zero_()
    # the batch is the last grid axis, at most MAX_GRID_YZ programs: larger batches in slices
    Z = a.shape[0]
    for z0 in range(0, Z, MAX_GRID_YZ):
        z1 = min(Z, z0 + MAX_GRID_YZ)
        a_, b_, o_ = (a, b, out) if (z0, z1) == (0, Z) else (a[z0:z1], b[z0:z1], out[z0:z1])
        _launch(a_, b_, o_, row_ptr, col_idx, col_ptr, row_idx, block_id, sdd_lut, mode, block, rows, cols, trans,
                heads)
    return out


@triton_op(OP, mutates_args=())
def _blocksparse_op(
    a: torch.Tensor,
    b: torch.Tensor,
    row_ptr: torch.Tensor,
    col_idx: torch.Tensor,
    col_ptr: torch.Tensor,
    row_idx: torch.Tensor,
    block_id: torch.Tensor,
    sdd_lut: torch.Tensor,
    mode: str,
    block: int,
    rows: int,
    cols: int,
    trans: bool = False,
) -> torch.Tensor:
    return _run(a, b, row_ptr, col_idx, col_ptr, row_idx, block_id, sdd_lut, mode, block, rows, cols, trans)


def _setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
    a, b, *idx = inputs[:8]
    mode, block, rows, cols, *rest = inputs[8:]
    ctx.mode, ctx.block, ctx.rows, ctx.cols = mode, block, rows, cols
    ctx.trans = bool(rest[0]) if rest else False
    ctx.save_for_backward(a, b, *idx)


def _backward(ctx: Any, grad: torch.Tensor) -> tuple:
    a, b, *idx = ctx.saved_tensors
    mode, block, rows, cols, trans = ctx.mode, ctx.block, ctx.rows, ctx.cols, ctx.trans
    grad = grad.to(a.dtype)
    op = torch.ops.flopscale.blocksparse_matmul

    def call(x, y, m, t=False):
        return op(x, y, *idx, m, block, rows, cols, t)

    need_a, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    da = db = None
    if mode == "sdd":
        da = call(grad, b.mT, "dsd") if need_a else None
        db = call(a.mT, grad, "dds") if need_b else None
    elif mode == "dsd" and not trans:
        da = call(grad, b.mT, "sdd") if need_a else None
        db = call(a, grad, "dsd", True) if need_b else None
    elif mode == "dsd":
        da = call(b, grad.mT, "sdd") if need_a else None
        db = call(a, grad, "dsd", False) if need_b else None
    elif not trans:  # dds
        da = call(grad, b, "dds", True) if need_a else None
        db = call(a.mT, grad, "sdd") if need_b else None
    else:
        da = call(grad, b, "dds", False) if need_a else None
        db = call(grad.mT, a, "sdd") if need_b else None
    return (da, db) + (None,) * 11


_blocksparse_op.register_autograd(_backward, setup_context=_setup_context)


@register_flop_formula(torch.ops.flopscale.blocksparse_matmul)
def _blocksparse_flop_formula(a_shape, b_shape, row_ptr_shape, col_idx_shape, col_ptr_shape, row_idx_shape,
                              block_id_shape, lut_shape, mode, block, rows, cols, trans=False, *args,
                              out_shape=None, **kwargs) -> int:
    return blocksparse_flops(a_shape, b_shape, col_idx_shape[0], mode, block)


@register_cost(OP)
def blocksparse_cost(a, b, row_ptr, col_idx, col_ptr, row_idx, block_id, sdd_lut, mode, block, rows, cols,
                     trans=False) -> Cost:
    """FLOP ``2*Z*nnz*block**2*F`` (model = executed); bytes: operands read once, output written once."""
    nnz = col_idx.shape[0]
    heads = (row_ptr.shape[0] - 1) // rows
    flops = blocksparse_flops(a.shape, b.shape, nnz, mode, block)
    es = _itemsize(a.dtype)
    out_numel = math.prod(_out_shape(a.shape, b.shape, nnz, mode, block, rows, cols, trans, heads))
    nbytes = (a.numel() + b.numel() + out_numel) * es
    return Cost(flops=flops, executed_flops=flops, bytes=nbytes,
                peak_dtype=peak_dtype_of(a.dtype, _precision(a.dtype) == "ieee"))


# --------------------------------------------------------------------------- public API
def _validate(a: Any, b: Any, layout: Any, mode: Any, reference: bool = False) -> None:
    name = "blocksparse_matmul_reference" if reference else "blocksparse_matmul"
    if not isinstance(layout, BlockLayout):
        raise TypeError(f"{name}: layout must be a kernels.BlockLayout, got {type(layout).__name__}")
    if mode not in MODES:
        raise ValueError(f"{name}: mode must be one of {MODES}, got {mode!r}")
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise TypeError(f"{name}: a and b must be tensors, got {type(a).__name__} and {type(b).__name__}")
    if a.dtype != b.dtype:
        raise TypeError(f"{name}: a and b must have the same dtype, got {a.dtype} and {b.dtype}")
    if a.dtype not in _DTYPES and not (reference and a.dtype == torch.float64):
        raise TypeError(f"{name}: unsupported dtype {a.dtype}; supported: float16, bfloat16, float32")
    if a.dim() != 4 or b.dim() != 4:
        raise ValueError(f"{name}: a and b must be 4-D ([Z, H, rows, cols] dense, [Z, nnz, block, block] sparse), "
                         f"got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{name}: batch sizes differ: a {tuple(a.shape)}, b {tuple(b.shape)}")
    H, R, C, blk, nnz = layout.heads, layout.rows, layout.cols, layout.block, layout.nnz

    def dense(t, what, rows_, cols_, role):
        if t.shape[1] != H:
            raise ValueError(f"{name} ({mode}): {what} has {t.shape[1]} heads, the layout has {H}")
        if rows_ is not None and t.shape[2] != rows_:
            raise ValueError(f"{name} ({mode}): {what} {tuple(t.shape)} needs {rows_} rows ({role}) to match the layout {layout!r}")
        if cols_ is not None and t.shape[3] != cols_:
            raise ValueError(f"{name} ({mode}): {what} {tuple(t.shape)} needs {cols_} columns ({role}) to match the layout {layout!r}")

    def sparse(t, what):
        if tuple(t.shape[1:]) != (nnz, blk, blk):
            raise ValueError(f"{name} ({mode}): sparse {what} must be [Z, nnz={nnz}, {blk}, {blk}] for the layout {layout!r}, "
                             f"got {tuple(t.shape)}")

    if mode == "sdd":
        dense(a, "a", R * blk, None, "layout rows x block")
        dense(b, "b", None, C * blk, "layout cols x block")
        if a.shape[3] != b.shape[2]:
            raise ValueError(f"{name} (sdd): inner dimensions differ: a {tuple(a.shape)}, b {tuple(b.shape)}")
    elif mode == "dsd":
        sparse(a, "a")
        dense(b, "b", C * blk, None, "layout cols x block")
    else:
        dense(a, "a", None, R * blk, "layout rows x block")
        sparse(b, "b")
    if reference:
        if a.device != b.device:
            raise ValueError(f"{name}: inputs are on different devices: {a.device} and {b.device}")
    else:
        check_runnable(a, b, op=name, dtypes=(a.dtype,))


def _transposed(a: Any, b: Any, layout: Any, mode: Any, trans_a: Any, trans_b: Any, name: str):
    """``(a, b, layout to validate against, op trans flag)`` for ``op(a) @ op(b)``: dense operands
    transposed as views, a transposed sparse operand through the op's ``trans`` flag."""
    for flag, value in (("trans_a", trans_a), ("trans_b", trans_b)):
        if not isinstance(value, bool):
            raise TypeError(f"{name}: {flag} must be a bool, got {type(value).__name__}")
    sparse_trans = (mode == "dsd" and trans_a) or (mode == "dds" and trans_b)
    if isinstance(a, torch.Tensor) and trans_a and mode != "dsd":
        a = a.mT
    if isinstance(b, torch.Tensor) and trans_b and mode != "dds":
        b = b.mT
    if sparse_trans and isinstance(layout, BlockLayout):
        # the logical sparse operand is layout^T (same blocks, same nnz): shapes check against it
        return a, b, layout.transpose(), True
    return a, b, layout, False


def blocksparse_matmul(a: torch.Tensor, b: torch.Tensor, layout: BlockLayout, mode: str,
                       trans_a: bool = False, trans_b: bool = False) -> torch.Tensor:
    """Block-sparse product ``op(a) @ op(b)`` in ``mode`` ("sdd", "dsd" or "dds"), ``op`` a
    transpose where ``trans_a``/``trans_b`` is set; see the module docstring."""
    a, b, checked, trans = _transposed(a, b, layout, mode, trans_a, trans_b, "blocksparse_matmul")
    _validate(a, b, checked, mode)
    idx = _indices(layout, a.device)
    return torch.ops.flopscale.blocksparse_matmul(a, b, *idx, mode, layout.block, layout.rows, layout.cols, trans)


# --------------------------------------------------------------------------- references and helpers
def sparse_to_dense(x: torch.Tensor, layout: BlockLayout) -> torch.Tensor:
    """``[Z, nnz, block, block]`` -> dense ``[Z, H, R*block, C*block]`` with zeros off the layout."""
    H, R, C, blk = layout.heads, layout.rows, layout.cols, layout.block
    Z = x.shape[0]
    h, r, c = (t.long() for t in layout.coo(x.device))
    full = torch.zeros(Z, H, R, C, blk, blk, dtype=x.dtype, device=x.device)
    full[:, h, r, c] = x
    return full.permute(0, 1, 2, 4, 3, 5).reshape(Z, H, R * blk, C * blk)


def dense_to_sparse(x: torch.Tensor, layout: BlockLayout) -> torch.Tensor:
    """Dense ``[Z, H, R*block, C*block]`` -> the layout's blocks ``[Z, nnz, block, block]``."""
    H, R, C, blk = layout.heads, layout.rows, layout.cols, layout.block
    Z = x.shape[0]
    h, r, c = (t.long() for t in layout.coo(x.device))
    tiles = x.reshape(Z, H, R, blk, C, blk).permute(0, 1, 2, 4, 3, 5)
    return tiles[:, h, r, c].contiguous()


def blocksparse_matmul_reference(
    a: torch.Tensor, b: torch.Tensor, layout: BlockLayout, mode: str, dtype: Optional[torch.dtype] = None,
    trans_a: bool = False, trans_b: bool = False,
) -> torch.Tensor:
    """The same product ``op(a) @ op(b)`` computed densely by torch in float64 (sparse operands
    expanded with zeros, then transposed when asked; sparse outputs gathered from the dense
    product), cast to ``dtype`` (default: the input dtype)."""
    name = "blocksparse_matmul_reference"
    a_, b_, checked, _ = _transposed(a, b, layout, mode, trans_a, trans_b, name)
    _validate(a_, b_, checked, mode, reference=True)
    dtype = a.dtype if dtype is None else dtype
    a64, b64 = a_.to(torch.float64), b_.to(torch.float64)
    if mode == "sdd":
        out = dense_to_sparse(a64 @ b64, layout)
    elif mode == "dsd":
        sa = sparse_to_dense(a64, layout)
        out = (sa.mT if trans_a else sa) @ b64
    else:
        sb = sparse_to_dense(b64, layout)
        out = a64 @ (sb.mT if trans_b else sb)
    return out.to(dtype)
