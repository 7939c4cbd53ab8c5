"""Triton kernels for block-sparse attention: forward, backward, configs.

Triton-only module: the custom ops, autograd, reference and costs live in
:mod:`kernels.blocksparse_attention_layer`.  The per-tile steps (program set-up, online
softmax, stores, backward recompute, the ``delta`` pre-pass) are those of
:mod:`kernels.attention_kernels` (only the walk over the layout is this module's), so the
numerics and the conventions match the dense kernel: a causal mask is a diagonal offset
``diag`` (query ``i`` sees keys ``j <= i + diag``: 0 top-left, ``S_k - S_q`` bottom-right), rows
with no visible key give 0 and ``lse = -inf``, scores are scaled and exponentiated in float32.

The layout arrives as block-CSR (forward: the key blocks of each query block-row) and
block-CSC (backward: the query blocks of each key block-column) index tensors over
``(layout head, block-row, block-column)``; a layout shared by all heads has one layout
head.  Only the listed blocks are visited: no program touches an empty block.  Column indices
are ascending within a row (and row indices within a column), which the kernels rely on:
with ``causal`` the effective layout holds no block without a visible pair, and in a row the
blocks the diagonal crosses (one, or two when ``diag`` is not a multiple of the block) come
after the fully visible ones, as does the ragged last key block: ``ROW_MID`` gives, per row,
where those trailing *partial* entries start, and the forward masks only them.  The backward
applies the causal select only to the query tiles of the diagonal band (a run-time branch in
its single loop: one copy of its step keeps it within the register budget).

Tiles: forward programs own ``BLOCK_M`` queries of one *row tile* and walk its key blocks in
sub-tiles of ``BLOCK_N``.  A row tile is one layout block-row, or, for 16-bit inputs and layout
blocks of 16 or 32, ``BLOCK_M = 64`` queries over several block-rows (the M of a Hopper wgmma:
16- and 32-row tiles ran on mma.sync), whose walk is the union of their key blocks: *full*
entries (every block-row holds the block and sees all of it) run unmasked, *partial* ones mask
each row by its own layout bit as well as by the diagonal and the key bound.  Backward programs
own ``BLOCK_N`` keys of one key block and walk either each query block in sub-tiles of
``BLOCK_M`` (``_bsattn_bwd_kernel``), or, for 16-bit inputs at blocks of 16 and 32 and at head
dim 128, row tiles of ``BLOCK_M = 64`` queries (``_bsattn_bwd_rows_kernel``: the forward's row
tiles, or 64-row slices of larger blocks), full ones unmasked and partial ones masked per row,
with ``dK``/``dV`` accumulated transposed so that no matmul has the narrow ``BLOCK_N`` as its M.
Every element of a visited tile is computed (the executed count:
``kernels.blocksparse_attention_layer``).
"""
from __future__ import annotations

from typing import Any

import triton
import triton.language as tl

from .attention_kernels import (
    AttnConfig,
    _bwd_head,
    _bwd_init,
    _bwd_step,
    _bwd_store,
    _dim_mask,
    _fwd_init,
    _fwd_step,
    _fwd_store,
    _spec_signature,
    block_d,
    bwd_config as _dense_bwd_config,
    fwd_config as _dense_fwd_config,
)

__all__ = ["bs_fwd_config", "bs_bwd_config", "fwd_row_tile", "bwd_row_tiles", "inspect_specs", "SHIPPED"]


#: row threshold of a query row outside the layout (sees no key of the tile) and of a
#: non-causal row inside it (sees every key): far beyond any sequence position plus ``diag``
_ROW_OFF = tl.constexpr(-(1 << 30))
_ROW_ALL = tl.constexpr(1 << 30)


@triton.jit
def _bsattn_fwd_kernel(
    Q, K, V, O, LSE, ROW_PTR, ROW_MID, ROW_ORDER, COL_IDX, LMASK,
    s_qb, s_qh, s_qm, s_qd,
    s_kb, s_kh, s_kn, s_kd,
    s_vb, s_vh, s_vn, s_vd,
    s_ob, s_oh, s_om, s_od,
    H, S_q, S_k, R, C, LH, qk_scale, diag,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Grid ``(R * SUB_M, B*H)``.  The CSR rows are *row tiles* of ``RT = max(BLOCK, BLOCK_M)``
    queries (``R`` of them per layout head); ``BLOCK_M`` query rows of row tile ``r`` of head
    ``h`` visit the key blocks listed in ``COL_IDX[ROW_PTR[g] : ROW_PTR[g+1]]``, ``g = (h % LH)
    * R + r``; entries from ``ROW_MID[g]`` on are partial (masked).  Program ``p`` takes row tile
    ``r = ROW_ORDER[(h % LH) * R + p // SUB_M]``: the rows with the most blocks first (a shorter
    tail when the grid drains).

    ``BLOCK_M > BLOCK`` (16-bit inputs, layout blocks of 16 or 32): a row tile covers
    ``BLOCK_M // BLOCK`` layout block-rows and lists the union of their key blocks; an entry is
    full when every covered block-row holds the block and sees all of it.  In a partial entry
    each query row reads its own layout bit ``LMASK[h % LH, i // BLOCK, c]`` (int8 ``[LH, cdiv(S_q,
    BLOCK), C]``); a row outside the layout gets the row threshold ``_ROW_OFF`` (it sees no key
    of the tile), one inside it its position (causal) or ``_ROW_ALL`` (not causal), and the
    step's causal select ``j <= threshold + diag`` applies both at once."""
    COARSE: tl.constexpr = BLOCK_M > BLOCK
    RT: tl.constexpr = BLOCK_M if BLOCK_M > BLOCK else BLOCK
    SUB_M: tl.constexpr = RT // BLOCK_M
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    hk = (h // GROUP).to(tl.int64)
    lh = h % LH
    r = tl.load(ROW_ORDER + lh * R + pid_m // SUB_M)
    g = lh * R + r
    h = h.to(tl.int64)
    start = tl.load(ROW_PTR + g)
    end = tl.load(ROW_PTR + g + 1)
    mid = tl.load(ROW_MID + g)

    start_m = r * RT + (pid_m % SUB_M) * BLOCK_M
    row0 = tl.cast(start_m, tl.int64)
    rows = tl.arange(0, BLOCK_M)
    offs_m = start_m + rows
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = _dim_mask(offs_d, HEAD_DIM, BLOCK_D)
    m_mask = offs_m < S_q
    q, k_base, v_base, k_offs, v_offs, acc, l_i, m_i = _fwd_init(
        Q, K, V, s_qm, s_qd, s_kn, s_kd, s_vn, s_vd, b * s_qb + h * s_qh, b * s_kb + hk * s_kh,
        b * s_vb + hk * s_vh, row0, rows, offs_n, offs_d, m_mask, d_mask, BLOCK_M, BLOCK_D)
    # one flat loop over (block, sub-tile) pairs, like the block-sparse matmul: a single copy
    # of the step per loop (unrolling the sub-tiles doubled registers and shared memory and
    # spilled at block 128 x D 256), and the pipeliner sees one loop across blocks
    SUB: tl.constexpr = BLOCK // BLOCK_N
    # full blocks: fully visible and in bounds (for every row of the tile)
    for i in range(start * SUB, mid * SUB):
        c = tl.load(COL_IDX + i // SUB)
        start_n = c * BLOCK + (i % SUB) * BLOCK_N
        acc, l_i, m_i = _fwd_step(acc, l_i, m_i, q, k_base, v_base, s_kn, s_vn, k_offs, v_offs, start_n,
                                  offs_m, offs_n, d_mask, S_k, qk_scale, diag, False, CAUSAL, DOT_PRECISION)
    # partial blocks: crossed by the causal diagonal and/or the ragged last key block, or (a
    # row tile of several block-rows) missing from some of its block-rows
    if COARSE:
        lm_rows = LMASK + lh.to(tl.int64) * tl.cdiv(S_q, BLOCK) * C + (offs_m // BLOCK) * C
        for i in range(mid * SUB, end * SUB):
            c = tl.load(COL_IDX + i // SUB)
            start_n = c * BLOCK + (i % SUB) * BLOCK_N
            on = tl.load(lm_rows + c, mask=m_mask, other=0) != 0
            if CAUSAL:
                thr = tl.where(on, offs_m, _ROW_OFF)
            else:
                thr = tl.where(on, _ROW_ALL, _ROW_OFF)
            acc, l_i, m_i = _fwd_step(acc, l_i, m_i, q, k_base, v_base, s_kn, s_vn, k_offs, v_offs, start_n,
                                      thr, offs_n, d_mask, S_k, qk_scale, diag, True, True, DOT_PRECISION)
    else:
        for i in range(mid * SUB, end * SUB):
            c = tl.load(COL_IDX + i // SUB)
            start_n = c * BLOCK + (i % SUB) * BLOCK_N
            acc, l_i, m_i = _fwd_step(acc, l_i, m_i, q, k_base, v_base, s_kn, s_vn, k_offs, v_offs, start_n,
                                      offs_m, offs_n, d_mask, S_k, qk_scale, diag, True, CAUSAL, DOT_PRECISION)

    _fwd_store(acc, l_i, m_i, O, LSE, s_om, s_od, b * s_ob + h * s_oh, pid_bh.to(tl.int64) * S_q, row0, rows,
               offs_m, offs_d, m_mask, d_mask)


@triton.jit
def _bsattn_bwd_kernel(
    Q, K, V, DO, DQ, DK, DV, LSE, DELTA, COL_PTR, ROW_IDX, COL_ORDER,
    s_qb, s_qh, s_qm, s_qd,
    s_kb, s_kh, s_kn, s_kd,
    s_vb, s_vh, s_vn, s_vd,
    s_dob, s_doh, s_dom, s_dod,
    s_dqb, s_dqh, s_dqm, s_dqd,
    s_dkb, s_dkh, s_dkn, s_dkd,
    s_dvb, s_dvh, s_dvn, s_dvd,
    H, H_kv, S_q, S_k, C, LH, sm_scale, qk_scale, diag,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Grid ``(C * BLOCK // BLOCK_N, B*H_kv)``: ``BLOCK_N`` keys of key block ``c`` of one
    key/value head; for each query head sharing it, the query blocks listed in
    ``ROW_IDX[COL_PTR[g] : COL_PTR[g+1]]``, ``g = (h % LH) * C + c``.  dK, dV in registers;
    dQ by float32 atomic adds.  Program ``p`` takes key block ``c = COL_ORDER[p // (BLOCK //
    BLOCK_N)]``: the columns with the most blocks (over all heads) first."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    SUB: tl.constexpr = BLOCK // BLOCK_N
    SUB_M: tl.constexpr = BLOCK // BLOCK_M
    c = tl.load(COL_ORDER + pid_n // SUB)
    start_n = c * BLOCK + (pid_n % SUB) * BLOCK_N
    b = (pid_bh // H_kv).to(tl.int64)
    hk = pid_bh % H_kv
    hk64 = hk.to(tl.int64)
    col0 = tl.cast(start_n, tl.int64)
    cols = tl.arange(0, BLOCK_N)
    offs_n = start_n + cols
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = _dim_mask(offs_d, HEAD_DIM, BLOCK_D)
    kv_mask = (offs_n < S_k)[:, None] & d_mask[None, :]
    k, v, dk, dv, q_offs, do_offs, dq_offs = _bwd_init(
        K, V, s_kn, s_kd, s_vn, s_vd, s_qm, s_qd, s_dom, s_dod, s_dqm, s_dqd, b * s_kb + hk64 * s_kh,
        b * s_vb + hk64 * s_vh, col0, cols, offs_m, offs_d, kv_mask, BLOCK_N, BLOCK_D)

    for gi in range(GROUP):
        h = hk * GROUP + gi
        g = (h % LH) * C + c
        h = h.to(tl.int64)
        start = tl.load(COL_PTR + g)
        end = tl.load(COL_PTR + g + 1)
        q_base, do_base, dq_base, lse_ptrs, delta_ptrs = _bwd_head(
            Q, DO, DQ, LSE, DELTA, s_qb, s_qh, s_dob, s_doh, s_dqb, s_dqh, b, h, H, S_q, offs_m)
        # one loop over the column's query blocks (a single copy of the step fits the register
        # budget), (block, sub-tile) pairs as one flat loop, as in the forward; with causal the
        # element mask is applied (by a run-time branch) only to the query tiles that start
        # before band_end: the ones a row of which misses some of this program's keys
        for i in range(start * SUB_M, end * SUB_M):
            r = tl.load(ROW_IDX + i // SUB_M)
            start_m = r * BLOCK + (i % SUB_M) * BLOCK_M
            dk, dv = _bwd_step(dk, dv, k, v, q_base, do_base, dq_base, s_qm, s_dom, s_dqm, q_offs, do_offs,
                               dq_offs, lse_ptrs, delta_ptrs, start_m, offs_m, offs_n, d_mask, S_q,
                               qk_scale, sm_scale, diag, start_n + BLOCK_N - 1 - diag, CAUSAL,
                               DOT_PRECISION)

    _bwd_store(dk, dv, DK, DV, s_dkn, s_dkd, s_dvn, s_dvd, b * s_dkb + hk64 * s_dkh, b * s_dvb + hk64 * s_dvh,
               col0, cols, offs_d, kv_mask, sm_scale)


@triton.jit
def _bsattn_bwd_rows_kernel(
    Q, K, V, DO, DQ, DK, DV, LSE, DELTA, COL_PTR, COL_MID, ROW_IDX, COL_ORDER, LMASK,
    s_qb, s_qh, s_qm, s_qd,
    s_kb, s_kh, s_kn, s_kd,
    s_vb, s_vh, s_vn, s_vd,
    s_dob, s_doh, s_dom, s_dod,
    s_dqb, s_dqh, s_dqm, s_dqd,
    s_dkb, s_dkh, s_dkn, s_dkd,
    s_dvb, s_dvh, s_dvn, s_dvd,
    H, H_kv, S_q, S_k, C, LH, sm_scale, qk_scale, diag,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Backward over row tiles (layout blocks of 16 or 32, 16-bit inputs): grid ``(C * (BLOCK //
    BLOCK_N), B*H_kv)``, ``BLOCK_N`` keys of key block ``c = COL_ORDER[p // (BLOCK // BLOCK_N)]``;
    for each query head sharing them, the row tiles of ``BLOCK_M`` queries listed in
    ``ROW_IDX[COL_PTR[g] : COL_PTR[g+1]]`` (``g = (h % LH) * C + c``: the tiles with a block-row
    that holds the block), entries from ``COL_MID[g]`` on partial (each row masked by its layout
    bit ``LMASK[h % LH, i // BLOCK, c]`` and the diagonal).

    Every matmul has ``BLOCK_M`` or ``BLOCK_D`` rows (>= 64, wgmma on Hopper), never the narrow
    ``BLOCK_N``: ``S = Q K^T`` and ``dP = dO V^T`` are ``[BLOCK_M, BLOCK_N]``, ``dQ = dS K`` is
    ``[BLOCK_M, BLOCK_D]`` (float32 atomic adds), and ``dK``, ``dV`` are accumulated transposed
    (``dK^T += Q^T dS``, ``dV^T += dO^T P``, ``[BLOCK_D, BLOCK_N]``).  Rows ``>= S_q`` load
    ``lse = +inf`` (``P = 0``); keys ``>= S_k`` load as zeros and are never stored."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    SUB: tl.constexpr = BLOCK // BLOCK_N
    c = tl.load(COL_ORDER + pid_n // SUB)
    start_n = c * BLOCK + (pid_n % SUB) * BLOCK_N
    b = (pid_bh // H_kv).to(tl.int64)
    hk = pid_bh % H_kv
    hk64 = hk.to(tl.int64)
    col0 = tl.cast(start_n, tl.int64)
    cols = tl.arange(0, BLOCK_N)
    offs_n = start_n + cols
    rows = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = _dim_mask(offs_d, HEAD_DIM, BLOCK_D)
    kv_mask = (offs_n < S_k)[:, None] & d_mask[None, :]
    k = tl.load(K + b * s_kb + hk64 * s_kh + col0 * s_kn + cols[:, None] * s_kn + offs_d[None, :] * s_kd,
                mask=kv_mask, other=0.0)
    v = tl.load(V + b * s_vb + hk64 * s_vh + col0 * s_vn + cols[:, None] * s_vn + offs_d[None, :] * s_vd,
                mask=kv_mask, other=0.0)
    dkT = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    dvT = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    q_offs = rows[:, None] * s_qm + offs_d[None, :] * s_qd
    do_offs = rows[:, None] * s_dom + offs_d[None, :] * s_dod
    dq_offs = rows[:, None] * s_dqm + offs_d[None, :] * s_dqd
    R_f = tl.cdiv(S_q, BLOCK)

    for gi in range(GROUP):
        h = hk * GROUP + gi
        lh = h % LH
        g = lh * C + c
        h = h.to(tl.int64)
        start = tl.load(COL_PTR + g)
        end = tl.load(COL_PTR + g + 1)
        mid = tl.load(COL_MID + g)
        q_base, do_base, dq_base, lse_ptrs, delta_ptrs = _bwd_head(
            Q, DO, DQ, LSE, DELTA, s_qb, s_qh, s_dob, s_doh, s_dqb, s_dqh, b, h, H, S_q, rows)
        lm_col = LMASK + lh.to(tl.int64) * R_f * C + c
        # one loop (a single copy of the step); the partial entries, after ``mid``, take the
        # per-row layout bit and the causal select by a run-time branch
        for i in range(start, end):
            start_m = tl.load(ROW_IDX + i) * BLOCK_M
            m0 = tl.cast(start_m, tl.int64)
            offs_m = start_m + rows
            m_mask = offs_m < S_q
            qd_mask = m_mask[:, None] & d_mask[None, :]
            q = tl.load(q_base + m0 * s_qm + q_offs, mask=qd_mask, other=0.0)
            lse = tl.load(lse_ptrs + start_m, mask=m_mask, other=float("inf"))
            lse = tl.where(lse == float("-inf"), float("inf"), lse)  # rows that saw no key
            qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # [BLOCK_M, BLOCK_N]
            p = tl.math.exp2(qk * qk_scale - lse[:, None] * 1.4426950408889634)
            if i >= mid:
                on = tl.load(lm_col + (offs_m // BLOCK) * C, mask=m_mask, other=0) != 0
                valid = on[:, None]
                if CAUSAL:
                    valid = valid & (offs_m[:, None] + diag >= offs_n[None, :])
                p = tl.where(valid, p, 0.0)
            do = tl.load(do_base + m0 * s_dom + do_offs, mask=qd_mask, other=0.0)
            dvT = tl.dot(tl.trans(do), p.to(do.dtype), dvT, input_precision=DOT_PRECISION)
            delta = tl.load(delta_ptrs + start_m, mask=m_mask, other=0.0)
            dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
            ds = (p * (dp - delta[:, None])).to(q.dtype)
            dkT = tl.dot(tl.trans(q), ds, dkT, input_precision=DOT_PRECISION)
            dq = tl.dot(ds, k, input_precision=DOT_PRECISION) * sm_scale
            tl.atomic_add(dq_base + m0 * s_dqm + dq_offs, dq, mask=qd_mask, sem="relaxed")

    dkT = dkT * sm_scale
    st_mask = d_mask[:, None] & (offs_n < S_k)[None, :]
    tl.store(DK + b * s_dkb + hk64 * s_dkh + col0 * s_dkn + cols[None, :] * s_dkn + offs_d[:, None] * s_dkd,
             dkT.to(DK.dtype.element_ty), mask=st_mask)
    tl.store(DV + b * s_dvb + hk64 * s_dvh + col0 * s_dvn + cols[None, :] * s_dvn + offs_d[:, None] * s_dvd,
             dvT.to(DV.dtype.element_ty), mask=st_mask)


# --------------------------------------------------------------------------------------
# configurations
# --------------------------------------------------------------------------------------


def bs_fwd_config(block: int, head_dim: int, elem_bytes: int = 2, interpret: bool = False,
                  capability: tuple[int, int] | None = None) -> AttnConfig:
    """Forward: ``block_m`` queries per program, key sub-tiles of ``block_n``.

    16-bit inputs: at least 64 query rows (the M of a Hopper wgmma), so layouts with blocks of
    16 or 32 run row tiles of 64 queries over 4 or 2 block-rows (the interpreter takes the same
    tiles, so the tests exercise them); blocks of 64 and 128 keep one block per program.  float32
    (FMA units or TF32 mma.sync) splits a block into the dense kernel's smaller query tiles."""
    dense = _dense_fwd_config(head_dim, elem_bytes, interpret, capability)
    bn = min(block, dense.block_n)
    if elem_bytes == 4:
        # a whole 64- or 128-row block of float32 queries spills on sm_90
        bm = max(min(block, dense.block_m), bn)
        return AttnConfig(bm, bn, dense.num_warps, dense.num_stages)
    bm = max(block, 64)
    # 128-row tiles, or a 64 x 256 accumulator: two warpgroups (one spills on sm_90)
    warps = 8 if bm >= 128 or bm * block_d(head_dim) >= 64 * 256 else 4
    return AttnConfig(bm, bn, warps, dense.num_stages)


def bwd_row_tiles(block: int, cfg: AttnConfig) -> bool:
    """Whether the backward of ``cfg`` walks row tiles of ``cfg.block_m`` queries by key block
    (``_bsattn_bwd_rows_kernel``) rather than block-rows in sub-tiles (``_bsattn_bwd_kernel``)."""
    return cfg.block_m > cfg.block_n


def fwd_row_tile(block: int, cfg: AttnConfig) -> int:
    """Query rows per CSR row of the forward (a *row tile*): the layout block, or the kernel's
    ``block_m`` when that covers several block-rows."""
    return max(block, cfg.block_m)


def bs_bwd_config(block: int, head_dim: int, elem_bytes: int = 2, interpret: bool = False,
                  capability: tuple[int, int] | None = None) -> AttnConfig:
    """Backward: ``block_n`` keys per program (a slice of one key block), query sub-tiles of
    ``block_m``."""
    dense = _dense_bwd_config(head_dim, elem_bytes, interpret, capability)
    bd = block_d(head_dim)
    if elem_bytes == 2 and bd <= 128 and (block < 64 or bd == 128):
        # ``_bsattn_bwd_rows_kernel``: row tiles of 64 queries, keys of one block per program,
        # every matmul >= 64 rows (wgmma on sm_90).  Blocks of 16 and 32: the whole block (the
        # forward's row tiles); D=128 needs two warpgroups (one spills 160 bytes at block 32):
        # 176 / 203 registers (blocks 16 / 32), D=64 one: 140 / 164.  Blocks of 64 and 128 at
        # D=128 (the other kernel's 64-query steps spill, its 32-query steps ran dQ on
        # mma.sync): 32-key slices, 203 registers (64 keys spill 8 bytes)
        return AttnConfig(64, min(block, 32), 8 if bd >= 128 else 4, dense.num_stages)
    bn = min(block, dense.block_n)
    # the dense kernel's query steps: 64 rows up to D=64 (block 128 x D 64: 237 registers on
    # sm_90), 32 at D=128 (64-query steps spill there with the index-driven loop: 48-256 bytes
    # of stack at 8 warps, more at 16; the dense kernel moves dQ to its own kernel instead)
    bm = min(block, dense.block_m)
    warps = 8 if bn >= 64 or block_d(head_dim) >= 128 else 4
    return AttnConfig(bm, bn, warps, dense.num_stages)


# --------------------------------------------------------------------------------------
# shipped configurations, for ``flopscale inspect``
# --------------------------------------------------------------------------------------

#: (block, head_dim) pairs whose configurations ``flopscale inspect`` compiles
SHIPPED = tuple((blk, d) for blk in (16, 32, 64, 128) for d in (64, 128))


def inspect_specs(capability: int = 90) -> list:
    """Every shipped block-sparse attention configuration as ``kernels.inspect.KernelSpec``
    objects (bf16, causal, blocks 16-128, head dims 64 and 128), specialised as a typical
    launch is.  16-bit kernel tiles have at least 64 query rows whatever the layout block, so
    every configuration is a tensor-core kernel (wgmma on sm_90)."""
    from .inspect import KernelSpec  # local: keeps this module importable without the inspector

    cap = (capability // 10, capability % 10)
    dt = "*bf16"
    specs = []
    for blk, d in SHIPPED:
        bd = block_d(d)
        cfg = bs_fwd_config(blk, d, 2, False, cap)
        consts: dict[str, Any] = {"GROUP": 1, "HEAD_DIM": d, "BLOCK_D": bd, "BLOCK": blk, "BLOCK_M": cfg.block_m,
                                  "BLOCK_N": cfg.block_n, "CAUSAL": True, "DOT_PRECISION": "tf32"}
        sig, consts, aligned = _spec_signature(
            _bsattn_fwd_kernel,
            {"Q": dt, "K": dt, "V": dt, "O": dt, "LSE": "*fp32", "ROW_PTR": "*i32", "ROW_MID": "*i32",
             "ROW_ORDER": "*i32", "COL_IDX": "*i32", "LMASK": "*i8"},
            ("qk_scale",), consts)
        specs.append(KernelSpec(
            kernel="blocksparse_attention_fwd[bf16]", config=f"block{blk}_D{d}_{cfg.label()}",
            fn=_bsattn_fwd_kernel, signature=sig, constexprs=consts, num_warps=cfg.num_warps,
            num_stages=cfg.num_stages, tensor_core=True, aligned=aligned))
        cfg = bs_bwd_config(blk, d, 2, False, cap)
        consts = {"GROUP": 1, "HEAD_DIM": d, "BLOCK_D": bd, "BLOCK": blk, "BLOCK_M": cfg.block_m,
                  "BLOCK_N": cfg.block_n, "CAUSAL": True, "DOT_PRECISION": "tf32"}
        rows = bwd_row_tiles(blk, cfg)
        fn = _bsattn_bwd_rows_kernel if rows else _bsattn_bwd_kernel
        ptrs = {"Q": dt, "K": dt, "V": dt, "DO": dt, "DQ": "*fp32", "DK": dt, "DV": dt, "LSE": "*fp32",
                "DELTA": "*fp32", "COL_PTR": "*i32", "ROW_IDX": "*i32", "COL_ORDER": "*i32"}
        if rows:
            ptrs.update({"COL_MID": "*i32", "LMASK": "*i8"})
        sig, consts, aligned = _spec_signature(fn, ptrs, ("sm_scale", "qk_scale"), consts)
        specs.append(KernelSpec(
            kernel="blocksparse_attention_bwd[bf16]", config=f"block{blk}_D{d}_{cfg.label()}" + ("_rows" if rows else ""),
            fn=fn, signature=sig, constexprs=consts, num_warps=cfg.num_warps,
            num_stages=cfg.num_stages, tensor_core=rows or cfg.block_n >= 64, aligned=aligned))
    return specs
