"""Block-sparse attention: ``kernels.blocksparse_attention`` (custom ops, autograd, reference, costs).

``blocksparse_attention(q, k, v, layout, causal=False, sm_scale=None)`` is
:func:`kernels.attention` restricted to the (query block, key block) pairs of a
:class:`kernels.BlockLayout`:

* ``q`` ``[B, H, S_q, D]``, ``k``/``v`` ``[B, H_kv, S_k, D]`` exactly as for
  :func:`kernels.attention` (dtypes, head dims, grouped-query heads, ``sm_scale``).
* ``layout``: ``[H_l, R, C]`` blocks of ``layout.block`` (16, 32, 64 or 128) elements with
  ``R = ceil(S_q / block)`` and ``C = ceil(S_k / block)`` (the last block-row/column may be
  ragged), and ``H_l = 1`` (one layout shared by all query heads) or ``H_l = H`` (one per
  query head).  Anything else raises ``ValueError``.
* Only the layout's non-zero blocks are visited; time and FLOPs scale with its ``nnz``.
* ``causal`` (``False``, ``True``/``"top_left"``, ``"bottom_right"``, exactly as for
  :func:`kernels.attention`) additionally applies the element mask (query ``i`` sees keys
  ``j <= i + diag``, ``diag = 0`` top-left, ``S_k - S_q`` bottom-right): blocks with no visible
  pair are dropped (never visited), the blocks the diagonal crosses are masked element by
  element (*partial* blocks), the others run unmasked (*full* blocks).
* A query row that sees no key (its layout row is empty, or causal removes all of it) gives
  output 0, ``lse = -inf`` and zero gradient: never NaN.

Custom ops (namespace ``flopscale``):

* ``flopscale::blocksparse_attention_fwd(q, k, v, row_ptr, row_mid, row_order, col_idx, col_ptr,
  row_idx, col_order, block, causal, sm_scale, pairs, computed_pairs, kv_rows, bottom_right=False,
  layout_mask=None, fwd_computed_pairs=-1) -> (o, lse)``:
  the index tensors are the block-CSR (used by the forward, over its *row tiles*, see
  :func:`fwd_tiles`) and block-CSC (used by the backward) of the *effective* layout (causal:
  blocks without a visible pair removed); ``row_mid[g]`` is where the partial entries of CSR
  row ``g`` start; ``row_order`` (per layout head) and ``col_order`` list the row tiles and
  block-columns by falling block count, the order in which programs take them (heavy rows
  first); ``layout_mask`` (int8 ``[H_l, R, C]``, the effective layout) is read by row tiles of
  several block-rows (16-bit inputs, blocks of 16 and 32: 64-row tiles), and
  ``fwd_computed_pairs`` counts the scores the forward computes at its row tiles (-1: as
  ``computed_pairs``); ``col_mid`` (with row-tile ``col_ptr``/``row_idx``) is handed to the
  backward; the three ints describe
  it for the cost model, per batch element, summed over query heads: ``pairs`` unmasked
  (query, key) pairs, ``computed_pairs`` scores computed (every in-bounds element of every
  visited block), ``kv_rows`` key rows read (over key/value heads).
* ``flopscale::blocksparse_attention_bwd(do, q, k, v, o, lse, dlse, col_ptr, row_idx, col_order,
  block, causal, sm_scale, pairs, computed_pairs, kv_rows, bottom_right=False, col_mid=None,
  layout_mask=None) -> (dq, dk, dv)``: when the backward walks row tiles of 64 queries (16-bit
  inputs at blocks of 16 and 32, or at a head-dim tile of 128), ``col_ptr``/``row_idx`` list each
  key block's row tiles (full ones first, partial from ``col_mid`` on) and ``computed_pairs``
  counts the scores of those tiles (the forward's ``fwd_computed_pairs``).

Costs follow :mod:`kernels.attention_layer`: model FLOPs ``4*B*D*pairs`` forward and
``8*B*D*pairs`` backward (FlopCounterMode reports the same), executed FLOPs count every score of
every visited tile (masked elements included: with 64-row tiles over blocks of 16 or 32, the
rows of a tile whose block-row lacks the key block too) plus the backward's ``QK^T`` recompute,
at the padded head-dim tile (``detail["padding"]``), with ``peak_dtype`` as for dense attention;
bytes read q, the touched key/value rows, and write o and lse (backward: dO, q, o, lse, k, v
read; dq, dk, dv written).  Non-matmul FLOPs use ``computed_pairs / BLOCK_N`` as the number of
(row, key tile) visits.
"""
import functools
from typing import NamedTuple, Optional

import torch
import triton
from torch.library import triton_op
from torch.utils.flop_counter import register_flop_formula

from . import attention_kernels as _ak
from . import blocksparse_attention_kernels as _bk
from ._cost import Cost, register_cost
from ._runtime import interpreter_on
from .attention_layer import (
    batch_slices,
    slice_batch,
    attention_reference,
    bwd_cost_from_work,
    bwd_delta,
    causal_diag,
    causal_mode,
    check_qkv,
    device_capability,
    dot_precision,
    peak_dtype,
    esize,
    fwd_cost_from_work,
    launch,
    new_output,
)
from .layout import BlockLayout

__all__ = [
    "blocksparse_attention",
    "blocksparse_attention_reference",
    "blocksparse_attention_fwd",
    "blocksparse_attention_bwd",
    "LayoutPlan",
    "layout_plan",
]


# --------------------------------------------------------------------------------------
# layout -> indices and pair counts
# --------------------------------------------------------------------------------------


class LayoutPlan(NamedTuple):
    """Effective layout of one call and the numbers its cost needs (per batch element)."""

    layout: BlockLayout  # effective layout (causal: blocks without a visible pair removed)
    pairs: int  # unmasked (query, key) pairs, summed over the H query heads
    computed_pairs: int  # scores computed: in-bounds elements of visited blocks, over heads
    kv_rows: int  # key rows read, summed over the H_kv key/value heads
    row_mid: torch.Tensor  # int32 [LH*R]: CSR index where each row's partial (masked) entries start
    diag: int  # causal diagonal offset (query i sees keys j <= i + diag); 0 when not causal
    row_order: torch.Tensor  # int32 [LH*R]: per layout head, block-rows by falling block count
    col_order: torch.Tensor  # int32 [C]: block-columns by falling block count (over all heads)
    causal: bool = False  # whether the causal mask applies (with ``diag``)


def check_layout(layout, H: int, S_q: int, S_k: int, op: str) -> None:
    if not isinstance(layout, BlockLayout):
        raise TypeError(f"{op}: layout must be a kernels.BlockLayout, got {type(layout).__name__}")
    blk = layout.block
    R, C = triton.cdiv(S_q, blk), triton.cdiv(S_k, blk)
    if layout.rows != R or layout.cols != C:
        raise ValueError(
            f"{op}: layout of {layout.rows}x{layout.cols} blocks of {blk} does not fit the sequence: "
            f"S_q={S_q}, S_k={S_k} need {R}x{C} blocks (ceil(S/{blk}))"
        )
    if layout.heads not in (1, H):
        raise ValueError(f"{op}: layout has {layout.heads} heads; it must have 1 (shared) or H={H}")


def _clamped_sum(n: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """Elementwise ``sum_{x=1..n} min(x, width)`` (0 where ``n <= 0``), int64."""
    n = torch.clamp(n, min=0)
    inside = torch.minimum(n, width)
    return inside * (inside + 1) // 2 + torch.clamp(n - width, min=0) * width


def block_pairs(R: int, C: int, blk: int, S_q: int, S_k: int, diag: Optional[int]) -> torch.Tensor:
    """Visible (query, key) pairs in each in-bounds block ``[R, C]`` (int64): all of its
    ``rows x cols`` elements without a mask (``diag`` None), else those with ``j <= i + diag``."""
    r0 = torch.arange(R, dtype=torch.int64)[:, None] * blk
    c0 = torch.arange(C, dtype=torch.int64)[None, :] * blk
    rows = torch.clamp(S_q - r0, max=blk)
    cols = torch.clamp(S_k - c0, max=blk)
    if diag is None:
        return rows * cols
    # sum over rows i in [r0, r0 + rows) of clamp(i + 1 + diag - c0, 0, cols)
    return _clamped_sum(r0 + rows + diag - c0, cols) - _clamped_sum(r0 + diag - c0, cols)


@functools.lru_cache(maxsize=128)
def _plan_cached(layout: BlockLayout, causal: Optional[str], H: int, H_kv: int, S_q: int, S_k: int) -> LayoutPlan:
    blk = layout.block
    LH, R, C = layout.shape
    diag = causal_diag(causal is not None, causal == "bottom_right", S_q, S_k)
    rows = torch.clamp(S_q - torch.arange(R, dtype=torch.int64) * blk, max=blk)
    cols = torch.clamp(S_k - torch.arange(C, dtype=torch.int64) * blk, max=blk)
    size = rows[:, None] * cols[None, :]  # in-bounds elements of each block
    visible = block_pairs(R, C, blk, S_q, S_k, diag if causal else None)  # [R, C]
    mask = layout.mask
    if causal:
        mask = mask & (visible > 0)
        eff = BlockLayout(mask, blk)
    else:
        eff = layout
    m = mask.to(torch.int64)
    computed = (m * size).sum(dim=(1, 2))  # [LH]
    per_head = (m * visible).sum(dim=(1, 2))
    # partial blocks, masked by the forward: crossed by the diagonal, or the ragged last column;
    # in a CSR row they are the trailing entries (visible pairs fall as the column grows)
    partial = (visible < size) | (cols < blk)[None, :]
    n_partial = (mask & partial).sum(dim=2).reshape(-1)  # [LH*R]
    row_ptr, _ = eff.csr("cpu")
    row_mid = (row_ptr[1:].to(torch.int64) - n_partial).to(torch.int32)
    # heavy rows and columns first (stable: ties keep their order)
    row_order = torch.sort(-mask.sum(dim=2), dim=1, stable=True).indices.reshape(-1).to(torch.int32)
    col_order = torch.sort(-mask.sum(dim=(0, 1)), stable=True).indices.to(torch.int32)
    touched = m.amax(dim=1) * cols[None, :]  # [LH, C]: key rows of columns with any block
    group = H // H_kv
    if LH == 1:
        n_pairs = H * int(per_head[0])
        n_computed = H * int(computed[0])
        kv_rows = H_kv * int(touched[0].sum())
    else:
        n_pairs = int(per_head.sum())
        n_computed = int(computed.sum())
        kv_touched = m.reshape(H_kv, group, R, C).amax(dim=(1, 2))  # [H_kv, C]
        kv_rows = int((kv_touched * cols[None, :]).sum())
    return LayoutPlan(eff, n_pairs, n_computed, kv_rows, row_mid, diag, row_order, col_order, causal is not None)


def layout_plan(layout: BlockLayout, causal, H: int, H_kv: int, S_q: int, S_k: int) -> LayoutPlan:
    """The effective layout and pair counts of a call (cached per layout and shapes); ``causal``
    as for :func:`blocksparse_attention`."""
    op = "kernels.blocksparse_attention"
    mode = causal_mode(causal, op)
    check_layout(layout, H, S_q, S_k, op=op)
    return _plan_cached(layout, mode, int(H), int(H_kv), int(S_q), int(S_k))


def _plan_tensors_on(plan: LayoutPlan, S_q: int, S_k: int, device) -> tuple[torch.Tensor, ...]:
    """``(row_mid, row_order, col_order)`` of ``plan`` on ``device`` (cached on the effective
    layout)."""
    key = ("bsattn_plan", S_q, S_k, plan.diag, str(device))
    return plan.layout.memo(key, lambda _: tuple(t.to(device) for t in (plan.row_mid, plan.row_order,
                                                                         plan.col_order)))


class FwdTiles(NamedTuple):
    """The forward's walk at its row tiles of ``row_tile`` queries (several layout block-rows
    when the kernel's query tile is larger than the layout block), per layout head."""

    row_ptr: torch.Tensor  # int32 [LH*NT+1]: CSR over (layout head, row tile) of key blocks
    col_idx: torch.Tensor  # int32: each row tile's key blocks, full ones first (ascending), then partial
    row_mid: torch.Tensor  # int32 [LH*NT]: where each row tile's partial entries start
    row_order: torch.Tensor  # int32 [LH*NT]: per layout head, row tiles by falling block count
    layout_mask: torch.Tensor  # int8 [LH, R, C]: the effective layout, read by partial entries
    computed_pairs: int  # scores the forward computes (per batch element, over query heads)
    # the same entries by key block, for the backward over row tiles (None: one block-row per tile)
    col_ptr: Optional[torch.Tensor] = None  # int32 [LH*C+1]: CSC over (layout head, key block)
    row_idx: Optional[torch.Tensor] = None  # int32: each key block's row tiles, full ones first
    col_mid: Optional[torch.Tensor] = None  # int32 [LH*C]: where each key block's partial entries start
    col_order: Optional[torch.Tensor] = None  # int32 [C]: key blocks by falling row-tile count (all heads)


def _fwd_tiles(plan: LayoutPlan, H: int, S_q: int, S_k: int, row_tile: int, with_csc: bool = False) -> FwdTiles:
    """Row tiles of ``row_tile`` queries: each lists the union of its block-rows' key blocks;
    an entry is *full* when every in-bounds block-row of the tile holds the block and sees all
    of it (causal) and the key block is whole; otherwise partial (masked in the kernel by each
    row's layout bit, the causal diagonal and the key bound)."""
    eff = plan.layout
    blk = eff.block
    LH, R, C = eff.shape
    mask = eff.mask
    if row_tile == blk and not with_csc:  # one block-row per tile: the plan's own walk
        row_ptr, col_idx = eff.csr("cpu")
        return FwdTiles(row_ptr, col_idx, plan.row_mid, plan.row_order, mask.to(torch.int8).contiguous(),
                        plan.computed_pairs)
    rows = torch.clamp(S_q - torch.arange(R, dtype=torch.int64) * blk, max=blk)
    cols = torch.clamp(S_k - torch.arange(C, dtype=torch.int64) * blk, max=blk)
    size = rows[:, None] * cols[None, :]
    visible = block_pairs(R, C, blk, S_q, S_k, plan.diag if plan.causal else None)
    whole = (visible == size) & (cols == blk)[None, :]  # [R, C]: block fully visible and in bounds
    if row_tile >= blk:
        f = row_tile // blk
        NT = triton.cdiv(R, f)
        pad = NT * f - R
        m = torch.nn.functional.pad(mask, (0, 0, 0, pad), value=False).reshape(LH, NT, f, C)
        # rows past the layout (beyond S_q) do not matter: they count as whole blocks
        ok = torch.nn.functional.pad(mask & whole[None], (0, 0, 0, pad), value=True).reshape(LH, NT, f, C)
        union = m.any(dim=2)  # [LH, NT, C]
        full = union & ok.all(dim=2)
    else:
        # tiles within one block-row: a sub-tile of a whole block is whole (one of a partial block
        # is masked, which is exact whether or not the diagonal crosses it)
        NT = triton.cdiv(S_q, row_tile)
        r_of = torch.arange(NT) * row_tile // blk
        union = mask[:, r_of]
        full = (mask & whole[None])[:, r_of]
    # CSR with each row tile's full entries first (both groups in ascending column order)
    key = (~full).to(torch.int64) * C + torch.arange(C, dtype=torch.int64)
    key = torch.where(union, key, 2 * C)
    order = torch.sort(key, dim=2, stable=True).indices  # [LH, NT, C]
    counts = union.sum(dim=2).reshape(-1)
    n_full = full.sum(dim=2).reshape(-1)
    take = torch.arange(C)[None, None, :] < union.sum(dim=2, keepdim=True)
    col_idx = order[take].to(torch.int32)
    row_ptr = torch.zeros(LH * NT + 1, dtype=torch.int64)
    row_ptr[1:] = torch.cumsum(counts, 0)
    row_mid = (row_ptr[:-1] + n_full).to(torch.int32)
    row_order = torch.sort(-union.sum(dim=2), dim=1, stable=True).indices.reshape(-1).to(torch.int32)
    # CSC: per (layout head, key block), its row tiles, full ones first
    ukey = (~full).to(torch.int64) * NT + torch.arange(NT, dtype=torch.int64)[None, :, None]
    ukey = torch.where(union, ukey, 2 * NT).transpose(1, 2)  # [LH, C, NT]
    uorder = torch.sort(ukey, dim=2, stable=True).indices
    ucount = union.sum(dim=1)  # [LH, C]
    row_idx = uorder[torch.arange(NT)[None, None, :] < ucount[:, :, None]].to(torch.int32)
    col_ptr = torch.zeros(LH * C + 1, dtype=torch.int64)
    col_ptr[1:] = torch.cumsum(ucount.reshape(-1), 0)
    col_mid = (col_ptr[:-1] + full.sum(dim=1).reshape(-1)).to(torch.int32)
    col_order = torch.sort(-ucount.sum(dim=0), stable=True).indices.to(torch.int32)
    tile_rows = torch.clamp(S_q - torch.arange(NT, dtype=torch.int64) * row_tile, max=row_tile)
    computed = (union.to(torch.int64) * tile_rows[None, :, None] * cols[None, None, :]).sum(dim=(1, 2))  # [LH]
    n_computed = H * int(computed[0]) if LH == 1 else int(computed.sum())
    return FwdTiles(row_ptr.to(torch.int32), col_idx, row_mid, row_order, mask.to(torch.int8).contiguous(),
                    n_computed, col_ptr.to(torch.int32), row_idx, col_mid, col_order)


def fwd_tiles(plan: LayoutPlan, H: int, S_q: int, S_k: int, row_tile: int, device,
              with_csc: bool = False) -> FwdTiles:
    """:func:`_fwd_tiles` on ``device``, cached on the effective layout (``with_csc``: also the
    walk by key block, which the backward over row tiles takes)."""
    key = ("bsattn_fwd_tiles", H, S_q, S_k, plan.diag, plan.causal, row_tile, with_csc, str(device))

    def build(_):
        t = _fwd_tiles(plan, H, S_q, S_k, row_tile, with_csc)
        return t._replace(**{f: getattr(t, f).to(device) for f in FwdTiles._fields
                             if isinstance(getattr(t, f), torch.Tensor)})

    return plan.layout.memo(key, build)


# --------------------------------------------------------------------------------------
# custom ops
# --------------------------------------------------------------------------------------


def _configs(block: int, head_dim: int, dtype: torch.dtype, device: Optional[torch.device]):
    interp = interpreter_on()
    cap = device_capability(device) if device is not None else None
    es = esize(dtype)
    return (_bk.bs_fwd_config(block, head_dim, es, interp, cap), _bk.bs_bwd_config(block, head_dim, es, interp, cap))


@triton_op("flopscale::blocksparse_attention_fwd", mutates_args=())
def blocksparse_attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    row_ptr: torch.Tensor,
    row_mid: torch.Tensor,
    row_order: torch.Tensor,
    col_idx: torch.Tensor,
    col_ptr: torch.Tensor,
    row_idx: torch.Tensor,
    col_order: torch.Tensor,
    block: int,
    causal: bool,
    sm_scale: float,
    pairs: int,
    computed_pairs: int,
    kv_rows: int,
    bottom_right: bool = False,
    layout_mask: Optional[torch.Tensor] = None,
    fwd_computed_pairs: int = -1,
    col_mid: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward of block-sparse attention: ``(o, lse)`` as ``flopscale::attention_fwd``."""
    B, H, S_q, D = q.shape
    H_kv, S_k = k.shape[1], k.shape[2]
    cfg, _ = _configs(block, D, q.dtype, q.device)
    R = triton.cdiv(S_q, _bk.fwd_row_tile(block, cfg))  # row tiles
    LH = (row_ptr.shape[0] - 1) // R
    if cfg.block_m > block and layout_mask is None:
        raise ValueError(f"flopscale::blocksparse_attention_fwd: row tiles of {cfg.block_m} queries over blocks "
                         f"of {block} need layout_mask")
    o = new_output((B, H, S_q, D), q.dtype, q.device)
    lse = new_output((B, H, S_q), torch.float32, q.device)
    lmask = row_ptr if layout_mask is None else layout_mask  # not read when each tile is one block-row
    for b0, b1 in batch_slices(B, H):
        q_, k_, v_, o_, lse_ = slice_batch((q, k, v, o, lse), b0, b1, B)
        launch(
            _bk._bsattn_fwd_kernel, (R * (_bk.fwd_row_tile(block, cfg) // cfg.block_m), (b1 - b0) * H), cfg,
            q_, k_, v_, o_, lse_, row_ptr, row_mid, row_order, col_idx, lmask,
            *q_.stride(), *k_.stride(), *v_.stride(), *o_.stride(),
            H, S_q, S_k, R, triton.cdiv(S_k, block), LH, sm_scale * _ak.LOG2E, causal_diag(causal, bottom_right, S_q, S_k),
            GROUP=H // H_kv, HEAD_DIM=D, BLOCK_D=_ak.block_d(D), BLOCK=block, BLOCK_M=cfg.block_m,
            BLOCK_N=cfg.block_n, CAUSAL=causal, DOT_PRECISION=dot_precision(q.dtype),
        )
    return o, lse


@triton_op("flopscale::blocksparse_attention_bwd", mutates_args=())
def blocksparse_attention_bwd(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    dlse: Optional[torch.Tensor],
    col_ptr: torch.Tensor,
    row_idx: torch.Tensor,
    col_order: torch.Tensor,
    block: int,
    causal: bool,
    sm_scale: float,
    pairs: int,
    computed_pairs: int,
    kv_rows: int,
    bottom_right: bool = False,
    col_mid: Optional[torch.Tensor] = None,
    layout_mask: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward of block-sparse attention: ``(dq, dk, dv)`` in the input dtype.  Over row tiles
    (16-bit, blocks of 16 and 32) ``col_ptr``/``row_idx`` list row tiles, and ``col_mid`` and
    ``layout_mask`` are required."""
    B, H, S_q, D = q.shape
    H_kv, S_k = k.shape[1], k.shape[2]
    C = triton.cdiv(S_k, block)
    LH = (col_ptr.shape[0] - 1) // C
    _, cfg = _configs(block, D, q.dtype, q.device)
    lse = lse.contiguous()  # the kernels index it as [B*H, S_q] rows
    delta = bwd_delta(o, do, dlse)
    dq32 = torch.zeros((B, H, S_q, D), dtype=torch.float32, device=q.device)
    dk = new_output((B, H_kv, S_k, D), q.dtype, q.device)
    dv = new_output((B, H_kv, S_k, D), q.dtype, q.device)
    rows = _bk.bwd_row_tiles(block, cfg)
    if rows and (col_mid is None or layout_mask is None):
        raise ValueError(f"flopscale::blocksparse_attention_bwd: row tiles of {cfg.block_m} queries over blocks "
                         f"of {block} need col_mid and layout_mask")
    for b0, b1 in batch_slices(B, H_kv):
        t = slice_batch((q, k, v, do, dq32, dk, dv, lse, delta), b0, b1, B)
        index = (col_ptr, col_mid, row_idx, col_order, layout_mask) if rows else (col_ptr, row_idx, col_order)
        launch(
            _bk._bsattn_bwd_rows_kernel if rows else _bk._bsattn_bwd_kernel,
            (C * (block // cfg.block_n), (b1 - b0) * H_kv), cfg,
            *t, *index,
            *(st for x in t[:7] for st in x.stride()),
            H, H_kv, S_q, S_k, C, LH, sm_scale, sm_scale * _ak.LOG2E, causal_diag(causal, bottom_right, S_q, S_k),
            GROUP=H // H_kv, HEAD_DIM=D, BLOCK_D=_ak.block_d(D), BLOCK=block, BLOCK_M=cfg.block_m,
            BLOCK_N=cfg.block_n, CAUSAL=causal, DOT_PRECISION=dot_precision(q.dtype),
        )
    dq = dq32 if q.dtype == torch.float32 else dq32.to(q.dtype)
    return dq, dk, dv


def _setup_context(ctx, inputs, output):
    (q, k, v, row_ptr, row_mid, row_order, col_idx, col_ptr, row_idx, col_order, block, causal, sm_scale,
     n_pairs, computed, kv_rows) = inputs[:16]
    bottom_right = bool(inputs[16]) if len(inputs) > 16 else False
    layout_mask = inputs[17] if len(inputs) > 17 else None
    fwd_computed = inputs[18] if len(inputs) > 18 else -1
    col_mid = inputs[19] if len(inputs) > 19 else None
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse, col_ptr, row_idx, col_order, col_mid, layout_mask)
    # the backward over row tiles computes the forward's tiles
    if fwd_computed >= 0 and col_mid is not None:
        computed = fwd_computed
    ctx.args = (block, causal, sm_scale, n_pairs, computed, kv_rows, bottom_right)
    ctx.n_inputs = len(inputs)


def _backward(ctx, do, dlse):
    q, k, v, o, lse, col_ptr, row_idx, col_order, col_mid, layout_mask = ctx.saved_tensors
    if do is None:
        do = torch.zeros_like(o)
    dq, dk, dv = torch.ops.flopscale.blocksparse_attention_bwd(do, q, k, v, o, lse, dlse, col_ptr, row_idx,
                                                               col_order, *ctx.args, col_mid, layout_mask)
    return (dq, dk, dv) + (None,) * (ctx.n_inputs - 3)


blocksparse_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------


def blocksparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: BlockLayout,
                          causal=False, sm_scale: Optional[float] = None) -> torch.Tensor:
    """Attention over the non-zero blocks of ``layout`` (see the module docstring); ``causal``:
    ``False``, ``True``/``"top_left"`` or ``"bottom_right"``.

    Returns ``[B, H, S_q, D]`` in the input dtype; rows that see no key are 0.  Differentiable
    in q, k, v.
    """
    op = "kernels.blocksparse_attention"
    scale = check_qkv(q, k, v, causal, sm_scale, op=op)
    B, H, S_q, _ = q.shape
    H_kv, S_k = k.shape[1], k.shape[2]
    plan = layout_plan(layout, causal, H, H_kv, S_q, S_k)
    fcfg, bcfg = _configs(layout.block, q.shape[-1], q.dtype, q.device)
    tiles = fwd_tiles(plan, H, S_q, S_k, _bk.fwd_row_tile(layout.block, fcfg), q.device)
    _, _, col_order = _plan_tensors_on(plan, S_q, S_k, q.device)
    col_mid = None
    if _bk.bwd_row_tiles(layout.block, bcfg):
        # the backward walks row tiles of its own block_m by key block (the forward's when they
        # are the same size); either way both compute the same scores
        bt = fwd_tiles(plan, H, S_q, S_k, bcfg.block_m, q.device, with_csc=True)
        assert bt.computed_pairs == tiles.computed_pairs
        col_ptr, row_idx, col_mid, col_order = bt.col_ptr, bt.row_idx, bt.col_mid, bt.col_order
    else:
        col_ptr, row_idx, _ = plan.layout.csc(q.device)
    mode = causal_mode(causal, op)
    o, _ = torch.ops.flopscale.blocksparse_attention_fwd(
        q, k, v, tiles.row_ptr, tiles.row_mid, tiles.row_order, tiles.col_idx, col_ptr, row_idx, col_order,
        layout.block, mode is not None, scale,
        plan.pairs, plan.computed_pairs, plan.kv_rows, mode == "bottom_right", tiles.layout_mask,
        tiles.computed_pairs, col_mid,
    )
    return o


def blocksparse_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: BlockLayout,
                                    causal=False, sm_scale: Optional[float] = None) -> torch.Tensor:
    """Dense masked reference: ``softmax(q k^T * sm_scale + mask) v`` with the layout expanded to
    elements (and the causal mask of either alignment); rows with no visible key give zeros."""
    H, S_q, S_k = q.shape[1], q.shape[2], k.shape[2]
    mask = layout.element_mask(S_q, S_k).to(q.device)  # [H_l, S_q, S_k]
    if mask.shape[0] != 1:
        mask = mask[:H]
    return attention_reference(q, k, v, causal=causal, sm_scale=sm_scale, mask=mask[None])


# --------------------------------------------------------------------------------------
# costs
# --------------------------------------------------------------------------------------


def _fwd_cost(q, k, block, pairs, computed_pairs, kv_rows) -> Cost:
    """``computed_pairs``: the scores the forward computes (at its row tiles)."""
    B, H, S_q, D = q.shape
    cfg, _ = _configs(int(block), D, q.dtype, getattr(q, "device", None))
    tiles = computed_pairs // cfg.block_n
    return fwd_cost_from_work(B, D, esize(q.dtype), H * S_q, kv_rows, pairs, computed_pairs, tiles,
                              _ak.block_d(D), peak_dtype(q.dtype))


@register_cost("flopscale::blocksparse_attention_fwd")
def blocksparse_attention_fwd_cost(q, k, v, row_ptr, row_mid, row_order, col_idx, col_ptr, row_idx, col_order,
                                   block, causal, sm_scale, pairs, computed_pairs, kv_rows,
                                   bottom_right=False, layout_mask=None, fwd_computed_pairs=-1) -> Cost:
    """Declared cost of one ``flopscale::blocksparse_attention_fwd`` launch (module docstring)."""
    computed = computed_pairs if fwd_computed_pairs < 0 else fwd_computed_pairs
    c = _fwd_cost(q, k, block, pairs, computed, kv_rows)
    index_bytes = 4 * (row_ptr.numel() + row_mid.numel() + row_order.numel() + col_idx.numel())
    if layout_mask is not None:
        index_bytes += layout_mask.numel()
    return Cost(c.flops, c.executed_flops, c.bytes + index_bytes, c.nonmatmul_flops, c.detail, c.peak_dtype)


@register_cost("flopscale::blocksparse_attention_bwd")
def blocksparse_attention_bwd_cost(do, q, k, v, o, lse, dlse, col_ptr, row_idx, col_order, block, causal,
                                   sm_scale, pairs, computed_pairs, kv_rows, bottom_right=False, col_mid=None,
                                   layout_mask=None) -> Cost:
    """Declared cost of one ``flopscale::blocksparse_attention_bwd`` launch (module docstring)."""
    B, H, S_q, D = q.shape
    _, cfg = _configs(int(block), D, q.dtype, getattr(q, "device", None))
    tiles = computed_pairs // cfg.block_n
    c = bwd_cost_from_work(B, D, esize(q.dtype), H * S_q, kv_rows, pairs, computed_pairs, tiles,
                           dlse is not None, _ak.block_d(D), peak_dtype(q.dtype))
    index_bytes = 4 * (col_ptr.numel() + row_idx.numel() + col_order.numel())
    if col_mid is not None:
        index_bytes += 4 * col_mid.numel()
    if layout_mask is not None:
        index_bytes += layout_mask.numel()
    return Cost(c.flops, c.executed_flops, c.bytes + index_bytes, c.nonmatmul_flops, c.detail, c.peak_dtype)


@register_flop_formula(torch.ops.flopscale.blocksparse_attention_fwd)
def _bs_fwd_flop(q_shape, k_shape, v_shape, row_ptr_shape, row_mid_shape, row_order_shape, col_idx_shape,
                 col_ptr_shape, row_idx_shape, col_order_shape, block, causal, sm_scale, pairs, computed_pairs,
                 kv_rows, *args, out_shape=None, **kwargs) -> int:
    B, H, S_q, D = q_shape
    return 4 * B * D * int(pairs)


@register_flop_formula(torch.ops.flopscale.blocksparse_attention_bwd)
def _bs_bwd_flop(do_shape, q_shape, k_shape, v_shape, o_shape, lse_shape, dlse_shape, col_ptr_shape,
                 row_idx_shape, col_order_shape, block, causal, sm_scale, pairs, computed_pairs, kv_rows, *args,
                 out_shape=None, **kwargs) -> int:
    B, H, S_q, D = q_shape
    return 8 * B * D * int(pairs)

