"""Triton kernels for fused attention (FlashAttention-2 style): forward, backward, configs.

Triton-only module: the autograd wrapper, the custom ops, the pure-torch reference and
the declared costs live in :mod:`kernels.attention_layer`.

Layout of the tensors (strides are passed, so inputs need not be contiguous):

* ``q``  ``[B, H, S_q, D]``; ``k``, ``v`` ``[B, H_kv, S_k, D]``; query head ``h`` reads
  key/value head ``h // (H // H_kv)`` (grouped-query attention without copying k/v).
* ``o``  ``[B, H, S_q, D]`` in the input dtype; ``lse`` ``[B, H, S_q]`` float32, the natural
  log-sum-exp of each row of scaled scores (``-inf`` for a row that sees no key).

Conventions shared with :mod:`kernels.blocksparse_attention_kernels`:

* Scores ``s = (q . k) * sm_scale``; the softmax runs in float32 with ``exp2`` on
  ``s * log2(e)``; the row maximum and row sum are carried online, so no ``S_q x S_k``
  matrix is ever materialised.  The scale is never applied as a separate multiply: the row
  maximum is taken on the raw ``q . k`` (``sm_scale > 0``, so scaling keeps the order) and
  ``p = exp2(qk * (sm_scale * log2 e) - m)`` is one FMA per score.
* Causal masks take a diagonal offset ``diag`` (a run-time argument): query ``i`` sees keys
  ``j <= i + diag``.  ``diag = 0`` is *top-left* alignment, like
  ``torch.nn.functional.scaled_dot_product_attention(is_causal=True)``; ``diag = S_k - S_q`` is
  *bottom-right* alignment (flash-attn >= 2.1: the last query sees every key).
* A row that sees no key gets output zeros and ``lse = -inf`` (never NaN); the backward
  treats such a row as contributing nothing.
* Head dims that are not a power of two (or below 16) run on a tile padded to
  ``BLOCK_D = max(16, next_pow2(D))`` with masked loads; nothing is copied.

Backward: one kernel per key block (``BLOCK_N`` keys, all query heads of its key/value head),
walking the query blocks in steps of ``BLOCK_M`` (causal: the mask is applied to the tiles of
the diagonal band only, by a run-time branch; key block 0, the longest walk of a causal head,
runs first); it recomputes ``P`` from the saved
``lse`` (one ``Q K^T``), accumulates ``dV = P^T dO``, ``dP = dO V^T``, ``dK = dS^T Q`` in
registers and adds ``dQ = dS K`` into a float32 buffer with atomic adds.  That is five
matmuls per (query, key) tile: the ``2x`` forward of the model count plus a ``0.5x``
forward recompute (the counting convention in the README).  The float32 atomic adds
make ``dQ`` non-deterministic in its last bits (as in FlashAttention-2).  16-bit inputs at
``BLOCK_D = 128`` and ``256`` compute ``dQ`` in a kernel of its own (:func:`_attn_bwd_dq_kernel`,
a plain store); at ``BLOCK_D = 256`` the key-block kernel also runs twice, once for ``dV`` and
once for ``dK`` (``WITH_DV``/``WITH_DK``), so that one ``[BLOCK_N, 256]`` float32 accumulator is
live at a time and every matmul fits 64-row wgmma tiles on sm_90 without spilling.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import triton
import triton.language as tl

__all__ = [
    "AttnConfig",
    "LOG2E",
    "fwd_config",
    "bwd_config",
    "block_d",
    "SHIPPED_HEAD_DIMS",
    "inspect_specs",
]

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
#: Triton has on-device tensor descriptors (TMA on sm_90; emulated by the interpreter)
HAS_TMA = hasattr(tl, "make_tensor_descriptor")


# --------------------------------------------------------------------------------------
# shared per-tile steps (also used by the block-sparse kernels)
# --------------------------------------------------------------------------------------


@triton.jit
def _dim_mask(offs_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """Mask of the head-dim lanes that exist: a constant all-true mask when not padded."""
    if HEAD_DIM == BLOCK_D:
        m = tl.full([BLOCK_D], 1, tl.int1)
    else:
        m = offs_d < HEAD_DIM
    return m


@triton.jit
def _fwd_init(Q, K, V, s_qm, s_qd, s_kn, s_kd, s_vn, s_vd, q_head, k_head, v_head, row0, rows, offs_n, offs_d,
              m_mask, d_mask, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """Start of a forward program: its query tile (rows ``row0 + rows`` of the head at offset
    ``q_head`` of ``Q``), the scalar key/value head bases with 32-bit offset tiles (the loop
    carries no 64-bit pointer tiles) and the online-softmax state ``(acc, l_i, m_i)``."""
    q = tl.load(Q + q_head + row0 * s_qm + rows[:, None] * s_qm + offs_d[None, :] * s_qd,
                mask=m_mask[:, None] & d_mask[None, :], other=0.0)
    k_base = K + k_head
    v_base = V + v_head
    k_offs = offs_n[:, None] * s_kn + offs_d[None, :] * s_kd
    v_offs = offs_n[:, None] * s_vn + offs_d[None, :] * s_vd
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    return q, k_base, v_base, k_offs, v_offs, acc, l_i, m_i


@triton.jit
def _fwd_step(acc, l_i, m_i, q, k_base, v_base, s_kn, s_vn, k_offs, v_offs, start_n, offs_m, offs_n, d_mask,
              S_k, qk_scale, diag, MASKED: tl.constexpr, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr,
              USE_TMA: tl.constexpr = False):
    """One key tile (keys ``start_n + offs_n``) of the online softmax.

    ``MASKED`` tiles mask keys ``>= S_k`` and (``CAUSAL``) keys ``j > i + diag``; the others
    are known to be fully visible and in bounds.  ``m_i`` is in log2 units of scaled scores.
    ``USE_TMA``: ``k_base``/``v_base`` are tensor descriptors (TMA loads, zero-filled out of
    bounds); otherwise pointers with the offset tiles ``k_offs``/``v_offs``.
    """
    if USE_TMA:
        k = k_base.load([start_n, 0])
    else:
        n0 = tl.cast(start_n, tl.int64)
        k_base = k_base + n0 * s_kn
        v_base = v_base + n0 * s_vn
        if MASKED:
            kv_mask = ((start_n + offs_n)[:, None] < S_k) & d_mask[None, :]
        else:
            kv_mask = d_mask[None, :]
        k = tl.load(k_base + k_offs, mask=kv_mask, other=0.0)
    offs_n = start_n + offs_n
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # unscaled: see the module docstring
    if MASKED:
        valid = offs_n[None, :] < S_k
        if CAUSAL:
            valid = valid & (offs_m[:, None] + diag >= offs_n[None, :])
        qk = tl.where(valid, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        # a row with nothing visible so far keeps m = -inf: subtract 0 instead (p = 0, no NaN)
        m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        m_sub = m_new
    # scale, log2(e) and the row maximum in one FMA per score
    p = tl.math.exp2(qk * qk_scale - m_sub[:, None])
    alpha = tl.math.exp2(m_i - m_sub)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    if USE_TMA:
        v = v_base.load([start_n, 0])
    else:
        v = tl.load(v_base + v_offs, mask=kv_mask, other=0.0)
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
    return acc, l_i, m_new


@triton.jit
def _fwd_store(acc, l_i, m_i, O, LSE, s_om, s_od, o_head, lse_row, row0, rows, offs_m, offs_d, m_mask, d_mask):
    """Normalise and store one query block (rows ``row0 + rows`` of the head at offset
    ``o_head`` of ``O``; ``lse`` from row ``lse_row``); rows with no visible key give 0 and
    lse=-inf."""
    o_ptrs = O + o_head + row0 * s_om + rows[:, None] * s_om + offs_d[None, :] * s_od
    lse_ptrs = LSE + (lse_row + offs_m)
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    o = acc * (1.0 / l_safe)[:, None]  # one reciprocal per row, then multiplies
    lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(l_safe)) * 0.6931471805599453)
    tl.store(o_ptrs, o.to(o_ptrs.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :])
    tl.store(lse_ptrs, lse, mask=m_mask)


@triton.jit
def _bwd_init(K, V, s_kn, s_kd, s_vn, s_vd, s_qm, s_qd, s_dom, s_dod, s_dqm, s_dqd, k_head, v_head, col0, cols,
              offs_m, offs_d, kv_mask, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Start of a backward program: its key and value tiles (rows ``col0 + cols`` of the head
    at offset ``k_head``/``v_head``), zero ``dK``/``dV`` accumulators and the 32-bit offset
    tiles of the query-side tensors."""
    k = tl.load(K + k_head + col0 * s_kn + cols[:, None] * s_kn + offs_d[None, :] * s_kd, mask=kv_mask, other=0.0)
    v = tl.load(V + v_head + col0 * s_vn + cols[:, None] * s_vn + offs_d[None, :] * s_vd, mask=kv_mask, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    q_offs = offs_m[:, None] * s_qm + offs_d[None, :] * s_qd
    do_offs = offs_m[:, None] * s_dom + offs_d[None, :] * s_dod
    dq_offs = offs_m[:, None] * s_dqm + offs_d[None, :] * s_dqd
    return k, v, dk, dv, q_offs, do_offs, dq_offs


@triton.jit
def _bwd_head(Q, DO, DQ, LSE, DELTA, s_qb, s_qh, s_dob, s_doh, s_dqb, s_dqh, b, h, H, S_q, offs_m):
    """Bases of query head ``h`` (64-bit) of batch ``b`` in the query-side tensors; ``lse``
    and ``delta`` pointers of its first query tile."""
    q_base = Q + b * s_qb + h * s_qh
    do_base = DO + b * s_dob + h * s_doh
    dq_base = DQ + b * s_dqb + h * s_dqh
    row0 = (b * H + h) * S_q
    return q_base, do_base, dq_base, LSE + row0 + offs_m, DELTA + row0 + offs_m


@triton.jit
def _bwd_step(dk, dv, k, v, q_base, do_base, dq_base, s_qm, s_dom, s_dqm, q_offs, do_offs, dq_offs,
              lse_ptrs, delta_ptrs, start_m, offs_m, offs_n, d_mask, S_q, qk_scale, sm_scale, diag,
              band_end, MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr, WITH_DQ: tl.constexpr = True,
              WITH_DK: tl.constexpr = True, WITH_DV: tl.constexpr = True):
    """One (key block, query tile) step of the backward: queries ``start_m + offs_m``.

    Rows ``>= S_q`` load ``lse = +inf`` so their recomputed probabilities are 0; keys
    ``>= S_k`` were loaded as zeros, so they add nothing to ``dQ`` (and their ``dK``/``dV``
    rows are never stored).  ``MASKED``: the causal mask (query ``i`` sees ``j <= i + diag``) is
    applied to the query tiles that start before ``band_end`` (the diagonal band) only.
    ``WITH_DK``/``WITH_DV``: accumulate that gradient (a pass without ``dK`` skips ``dP``; one
    without ``dV`` skips ``P^T dO``).
    """
    m0 = tl.cast(start_m, tl.int64)
    q_base = q_base + m0 * s_qm
    do_base = do_base + m0 * s_dom
    dq_base = dq_base + m0 * s_dqm
    lse_ptrs = lse_ptrs + start_m
    delta_ptrs = delta_ptrs + start_m
    offs_m = start_m + offs_m
    m_mask = offs_m < S_q
    q = tl.load(q_base + q_offs, mask=m_mask[:, None] & d_mask[None, :], other=0.0)
    lse = tl.load(lse_ptrs, mask=m_mask, other=float("inf"))
    # rows that saw no key (lse = -inf) contribute nothing
    lse = tl.where(lse == float("-inf"), float("inf"), lse)
    qkT = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION)  # [BLOCK_N, BLOCK_M]
    pT = tl.math.exp2(qkT * qk_scale - lse[None, :] * 1.4426950408889634)
    if MASKED:
        if start_m < band_end:
            pT = tl.where(offs_m[None, :] + diag >= offs_n[:, None], pT, 0.0)
    do = tl.load(do_base + do_offs, mask=m_mask[:, None] & d_mask[None, :], other=0.0)
    if WITH_DV:
        dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
    if WITH_DK:
        delta = tl.load(delta_ptrs, mask=m_mask, other=0.0)
        dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        dsT = (pT * (dpT - delta[None, :])).to(q.dtype)
        dk = tl.dot(dsT, q, dk, input_precision=DOT_PRECISION)
        if WITH_DQ:
            dq = tl.dot(tl.trans(dsT), k, input_precision=DOT_PRECISION) * sm_scale
            tl.atomic_add(dq_base + dq_offs, dq, mask=m_mask[:, None] & d_mask[None, :], sem="relaxed")
    return dk, dv


@triton.jit
def _bwd_store(dk, dv, DK, DV, s_dkn, s_dkd, s_dvn, s_dvd, dk_head, dv_head, col0, cols, offs_d, kv_mask, sm_scale,
               WITH_DK: tl.constexpr = True, WITH_DV: tl.constexpr = True):
    """Store one key block's ``dK`` (scaled by ``sm_scale`` here) and ``dV`` (those that the
    pass computed: ``WITH_DK``/``WITH_DV``)."""
    if WITH_DK:
        dk = dk * sm_scale
        tl.store(DK + dk_head + col0 * s_dkn + cols[:, None] * s_dkn + offs_d[None, :] * s_dkd,
                 dk.to(DK.dtype.element_ty), mask=kv_mask)
    if WITH_DV:
        tl.store(DV + dv_head + col0 * s_dvn + cols[:, None] * s_dvn + offs_d[None, :] * s_dvd,
                 dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _bwd_preprocess_kernel(
    O, DO, DELTA, DLSE,
    s_ob, s_oh, s_om, s_od,
    s_dob, s_doh, s_dom, s_dod,
    H, S_q,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, HAS_DLSE: tl.constexpr,
):
    """delta[b, h, i] = sum_d o * do  (minus dlse when the log-sum-exp has a gradient)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    rows = tl.arange(0, BLOCK_M)
    start_m = tl.cast(pid_m * BLOCK_M, tl.int64)
    offs_m = pid_m * BLOCK_M + rows
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = _dim_mask(offs_d, HEAD_DIM, BLOCK_D)
    m_mask = offs_m < S_q
    mask = m_mask[:, None] & d_mask[None, :]
    o = tl.load(O + b * s_ob + h * s_oh + start_m * s_om + rows[:, None] * s_om + offs_d[None, :] * s_od,
                mask=mask, other=0.0)
    do = tl.load(DO + b * s_dob + h * s_doh + start_m * s_dom + rows[:, None] * s_dom + offs_d[None, :] * s_dod,
                 mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    row = pid_bh.to(tl.int64) * S_q + offs_m
    if HAS_DLSE:
        delta -= tl.load(DLSE + row, mask=m_mask, other=0.0)
    tl.store(DELTA + row, delta, mask=m_mask)


# --------------------------------------------------------------------------------------
# dense kernels
# --------------------------------------------------------------------------------------


@triton.jit
def _attn_fwd_kernel(
    Q, K, V, O, LSE,
    s_qb, s_qh, s_qm, s_qd,
    s_kb, s_kh, s_kn, s_kd,
    s_vb, s_vh, s_vn, s_vd,
    s_ob, s_oh, s_om, s_od,
    H, S_q, S_k, qk_scale, diag,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr,
    USE_TMA: tl.constexpr = False, WARP_SPECIALIZE: tl.constexpr = False,
):
    """Grid ``(cdiv(S_q, BLOCK_M), B*H)``.  Causal (query ``i`` sees keys ``j <= i + diag``):
    key tiles past the block's last query are never visited (loop bound); only the tiles that
    straddle the diagonal are masked.  ``USE_TMA``: q, k, v tiles are read through tensor
    descriptors over each head's ``[S, HEAD_DIM]`` matrix (the launcher checks TMA's rules:
    unit inner stride, 16-byte aligned bases and strides); otherwise through pointers.

    ``WARP_SPECIALIZE`` asks Triton to warp-specialize the unmasked key loop
    (``tl.range(..., warp_specialize=True)``).  No shipped configuration sets it: with Triton
    3.9 on sm_90 it does not take effect.  At the shipped 8-warp tiles the request is ignored
    silently (no ``setmaxnreg`` hand-off; the same registers and wgmma count), and at
    4 warps Triton's Hopper warp-specialization pass fails to compile the kernel.  Triton
    documents the feature for Blackwell and simple matmul loops.
    ``tests/test_attention_inspect.py`` compiles the switch for sm_90 and records this, so a
    Triton upgrade that enables it shows up there.  The interpreter ignores the flag."""
    pid_m = tl.program_id(0)
    if CAUSAL:
        # longest rows first: better tail balance
        pid_m = tl.cdiv(S_q, BLOCK_M) - 1 - pid_m
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    hk = (h // GROUP).to(tl.int64)
    h = h.to(tl.int64)
    start_m = pid_m * BLOCK_M
    row0 = tl.cast(start_m, tl.int64)  # 64-bit row offsets: long sequences in [B, S, H, D] storage
    rows = tl.arange(0, BLOCK_M)
    offs_m = start_m + rows
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = _dim_mask(offs_d, HEAD_DIM, BLOCK_D)
    m_mask = offs_m < S_q

    if USE_TMA:
        # out-of-bounds rows (past S) and columns (past HEAD_DIM) read as zeros
        q_desc = tl.make_tensor_descriptor(Q + (b * s_qb + h * s_qh), shape=[S_q, HEAD_DIM], strides=[s_qm, 1],
                                           block_shape=[BLOCK_M, BLOCK_D])
        k_base = tl.make_tensor_descriptor(K + (b * s_kb + hk * s_kh), shape=[S_k, HEAD_DIM], strides=[s_kn, 1],
                                           block_shape=[BLOCK_N, BLOCK_D])
        v_base = tl.make_tensor_descriptor(V + (b * s_vb + hk * s_vh), shape=[S_k, HEAD_DIM], strides=[s_vn, 1],
                                           block_shape=[BLOCK_N, BLOCK_D])
        q = q_desc.load([start_m, 0])
        k_offs = 0
        v_offs = 0
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    else:
        q, k_base, v_base, k_offs, v_offs, acc, l_i, m_i = _fwd_init(
            Q, K, V, s_qm, s_qd, s_kn, s_kd, s_vn, s_vd, b * s_qb + h * s_qh, b * s_kb + hk * s_kh,
            b * s_vb + hk * s_vh, row0, rows, offs_n, offs_d, m_mask, d_mask, BLOCK_M, BLOCK_D)

    if CAUSAL:
        # keys j <= i + diag: the block's last row bounds the walk, its first row the
        # fully visible tiles (both clamped to [0, S_k]; no tile at all for rows that see nothing)
        hi = tl.minimum(S_k, tl.maximum(start_m + BLOCK_M + diag, 0))
        mid = (tl.minimum(tl.maximum(start_m + diag, 0), hi) // BLOCK_N) * BLOCK_N
    else:
        hi = S_k
        mid = (S_k // BLOCK_N) * BLOCK_N
    # fully visible, in-bounds key tiles: no masking
    for start_n in tl.range(0, mid, BLOCK_N, warp_specialize=WARP_SPECIALIZE):
        acc, l_i, m_i = _fwd_step(acc, l_i, m_i, q, k_base, v_base, s_kn, s_vn, k_offs, v_offs, start_n,
                                  offs_m, offs_n, d_mask, S_k, qk_scale, diag, False, CAUSAL, DOT_PRECISION,
                                  USE_TMA)
    # the diagonal band (causal) and the ragged last tile: masked
    for start_n in range(mid, hi, BLOCK_N):
        acc, l_i, m_i = _fwd_step(acc, l_i, m_i, q, k_base, v_base, s_kn, s_vn, k_offs, v_offs, start_n,
                                  offs_m, offs_n, d_mask, S_k, qk_scale, diag, True, CAUSAL, DOT_PRECISION,
                                  USE_TMA)

    _fwd_store(acc, l_i, m_i, O, LSE, s_om, s_od, b * s_ob + h * s_oh, pid_bh.to(tl.int64) * S_q, row0, rows,
               offs_m, offs_d, m_mask, d_mask)


@triton.jit
def _attn_bwd_kernel(
    Q, K, V, DO, DQ, DK, DV, LSE, DELTA,
    s_qb, s_qh, s_qm, s_qd,
    s_kb, s_kh, s_kn, s_kd,
    s_vb, s_vh, s_vn, s_vd,
    s_dob, s_doh, s_dom, s_dod,
    s_dqb, s_dqh, s_dqm, s_dqd,
    s_dkb, s_dkh, s_dkn, s_dkd,
    s_dvb, s_dvh, s_dvn, s_dvd,
    H, H_kv, S_q, S_k, sm_scale, qk_scale, diag,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr,
    WITH_DQ: tl.constexpr = True, WITH_DK: tl.constexpr = True, WITH_DV: tl.constexpr = True,
):
    """Grid ``(cdiv(S_k, BLOCK_N), B*H_kv)``: one key block of one key/value head, summing
    over the ``GROUP`` query heads that share it (no atomics on dK/dV).  Needs
    ``BLOCK_N % BLOCK_M == 0``.  ``WITH_DQ``: also add ``dQ`` into a float32 buffer by atomics
    (otherwise :func:`_attn_bwd_dq_kernel` computes it).  ``WITH_DK``/``WITH_DV``: which of
    ``dK``/``dV`` this launch accumulates and stores (configs with ``kv_split`` launch it twice,
    once for each, so that one ``[BLOCK_N, D]`` float32 accumulator is live at a time)."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H_kv).to(tl.int64)
    hk = pid_bh % H_kv
    start_n = pid_n * BLOCK_N
    col0 = tl.cast(start_n, tl.int64)
    cols = tl.arange(0, BLOCK_N)
    offs_n = start_n + cols
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = _dim_mask(offs_d, HEAD_DIM, BLOCK_D)
    n_mask = offs_n < S_k
    kv_mask = n_mask[:, None] & d_mask[None, :]
    hk64 = hk.to(tl.int64)
    k, v, dk, dv, q_offs, do_offs, dq_offs = _bwd_init(
        K, V, s_kn, s_kd, s_vn, s_vd, s_qm, s_qd, s_dom, s_dod, s_dqm, s_dqd, b * s_kb + hk64 * s_kh,
        b * s_vb + hk64 * s_vh, col0, cols, offs_m, offs_d, kv_mask, BLOCK_N, BLOCK_D)

    for g in range(GROUP):
        h = (hk * GROUP + g).to(tl.int64)
        q_base, do_base, dq_base, lse_ptrs, delta_ptrs = _bwd_head(
            Q, DO, DQ, LSE, DELTA, s_qb, s_qh, s_dob, s_doh, s_dqb, s_dqh, b, h, H, S_q, offs_m)
        # causal: queries before start_n see none of these keys, so the walk starts there (loop
        # bound); one loop with the mask applied (an elementwise select per score) keeps a
        # single copy of the step, which the register budget needs
        if CAUSAL:
            # first query tile holding a row i with i + diag >= start_n (earlier rows see none of
            # these keys: loop bound); rows i >= start_n + BLOCK_N - 1 - diag see all of them, so
            # only the tiles before ``band_end`` (the diagonal band) pay for the mask.  One loop
            # with a run-time branch around the select, not two loops: a second copy of the step
            # spills on sm_90 (D=64: 32 bytes of stack; D=128 at 254 registers)
            lo = (tl.maximum(start_n - diag, 0) // BLOCK_M) * BLOCK_M
            band_end = start_n + BLOCK_N - 1 - diag
        else:
            lo = 0
            band_end = 0
        for start_m in range(lo, S_q, BLOCK_M):
            dk, dv = _bwd_step(dk, dv, k, v, q_base, do_base, dq_base, s_qm, s_dom, s_dqm, q_offs, do_offs,
                               dq_offs, lse_ptrs, delta_ptrs, start_m, offs_m, offs_n, d_mask, S_q,
                               qk_scale, sm_scale, diag, band_end, CAUSAL, DOT_PRECISION, WITH_DQ, WITH_DK,
                               WITH_DV)

    _bwd_store(dk, dv, DK, DV, s_dkn, s_dkd, s_dvn, s_dvd, b * s_dkb + hk64 * s_dkh, b * s_dvb + hk64 * s_dvh,
               col0, cols, offs_d, kv_mask, sm_scale, WITH_DK, WITH_DV)


@triton.jit
def _dq_step(dq, q, do, lse2, delta, k_base, v_base, k_offs, v_offs, s_kn, s_vn, start_n, offs_m, offs_n, d_mask,
             S_k, qk_scale, diag, MASKED: tl.constexpr, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """One key tile of the separate ``dQ`` kernel: ``dQ += dS K`` with ``P`` and ``dP``
    recomputed.  Keys ``>= S_k`` load as zeros and add nothing; ``MASKED`` tiles bound the loads
    and (``CAUSAL``) mask keys ``j > i + diag``."""
    n0 = tl.cast(start_n, tl.int64)
    k_base = k_base + n0 * s_kn
    v_base = v_base + n0 * s_vn
    offs_n = start_n + offs_n
    if MASKED:
        kv_mask = (offs_n[:, None] < S_k) & d_mask[None, :]
    else:
        kv_mask = d_mask[None, :]
    k = tl.load(k_base + k_offs, mask=kv_mask, other=0.0)
    v = tl.load(v_base + v_offs, mask=kv_mask, other=0.0)
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
    p = tl.math.exp2(qk * qk_scale - lse2[:, None])
    if MASKED:
        if CAUSAL:
            p = tl.where(offs_m[:, None] + diag >= offs_n[None, :], p, 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
    ds = (p * (dp - delta[:, None])).to(k.dtype)
    return tl.dot(ds, k, dq, input_precision=DOT_PRECISION)


@triton.jit
def _attn_bwd_dq_kernel(
    Q, K, V, DO, DQ, LSE, DELTA,
    s_qb, s_qh, s_qm, s_qd,
    s_kb, s_kh, s_kn, s_kd,
    s_vb, s_vh, s_vn, s_vd,
    s_dob, s_doh, s_dom, s_dod,
    s_dqb, s_dqh, s_dqm, s_dqd,
    H, S_q, S_k, sm_scale, qk_scale, diag,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """``dQ`` on its own (configs with ``split_dq``): grid ``(cdiv(S_q, BLOCK_M), B*H)``, one
    query tile walking the key tiles as the forward does (causal: longest rows first, only the
    diagonal band masked), three matmuls per tile (``QK^T``, ``dO V^T``, ``dS K``), all with
    ``BLOCK_M`` rows, and a plain store: no atomics, deterministic."""
    pid_m = tl.program_id(0)
    if CAUSAL:
        pid_m = tl.cdiv(S_q, BLOCK_M) - 1 - pid_m
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    hk = (h // GROUP).to(tl.int64)
    h = h.to(tl.int64)
    start_m = pid_m * BLOCK_M
    row0 = tl.cast(start_m, tl.int64)
    rows = tl.arange(0, BLOCK_M)
    offs_m = start_m + rows
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = _dim_mask(offs_d, HEAD_DIM, BLOCK_D)
    m_mask = offs_m < S_q
    qd_mask = m_mask[:, None] & d_mask[None, :]
    q = tl.load(Q + b * s_qb + h * s_qh + row0 * s_qm + rows[:, None] * s_qm + offs_d[None, :] * s_qd,
                mask=qd_mask, other=0.0)
    do = tl.load(DO + b * s_dob + h * s_doh + row0 * s_dom + rows[:, None] * s_dom + offs_d[None, :] * s_dod,
                 mask=qd_mask, other=0.0)
    row = pid_bh.to(tl.int64) * S_q + offs_m
    lse = tl.load(LSE + row, mask=m_mask, other=float("inf"))
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse) * 1.4426950408889634  # no key seen: p = 0
    delta = tl.load(DELTA + row, mask=m_mask, other=0.0)
    k_base = K + b * s_kb + hk * s_kh
    v_base = V + b * s_vb + hk * s_vh
    k_offs = offs_n[:, None] * s_kn + offs_d[None, :] * s_kd
    v_offs = offs_n[:, None] * s_vn + offs_d[None, :] * s_vd
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    if CAUSAL:
        hi = tl.minimum(S_k, tl.maximum(start_m + BLOCK_M + diag, 0))
        mid = (tl.minimum(tl.maximum(start_m + diag, 0), hi) // BLOCK_N) * BLOCK_N
    else:
        hi = S_k
        mid = (S_k // BLOCK_N) * BLOCK_N
    for start_n in range(0, mid, BLOCK_N):
        dq = _dq_step(dq, q, do, lse2, delta, k_base, v_base, k_offs, v_offs, s_kn, s_vn, start_n, offs_m, offs_n,
                      d_mask, S_k, qk_scale, diag, False, CAUSAL, DOT_PRECISION)
    for start_n in range(mid, hi, BLOCK_N):
        dq = _dq_step(dq, q, do, lse2, delta, k_base, v_base, k_offs, v_offs, s_kn, s_vn, start_n, offs_m, offs_n,
                      d_mask, S_k, qk_scale, diag, True, CAUSAL, DOT_PRECISION)
    dq = dq * sm_scale
    tl.store(DQ + b * s_dqb + h * s_dqh + row0 * s_dqm + rows[:, None] * s_dqm + offs_d[None, :] * s_dqd,
             dq.to(DQ.dtype.element_ty), mask=qd_mask)


# --------------------------------------------------------------------------------------
# configurations
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttnConfig:
    """Tile sizes and launch parameters of one attention kernel.

    Forward: ``block_m`` queries per program, ``block_n`` keys per step.
    Backward: ``block_n`` keys per program, ``block_m`` queries per step; ``dq`` (backward
    only) the tiles of the separate ``dQ`` kernel (``block_m`` queries per program,
    ``block_n`` keys per step), or None when the key-block kernel adds ``dQ`` by atomics.
    ``kv`` (backward only): when set, the dense backward runs the key-block kernel twice with
    these tiles, once accumulating ``dV`` and once ``dK`` (one ``[block_n, D]`` float32
    accumulator live at a time), instead of once with the tiles above (which the block-sparse
    backward still takes its sub-tiles from).
    """

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    dq: "AttnConfig | None" = None
    kv: "AttnConfig | None" = None

    def label(self) -> str:
        return f"BM{self.block_m}_BN{self.block_n}_w{self.num_warps}_s{self.num_stages}"


def block_d(head_dim: int) -> int:
    """The head-dim tile: ``max(16, next_pow2(D))``; equal to ``D`` for 16, 32, 64, 128, 256."""
    return max(16, triton.next_power_of_2(int(head_dim)))


# Tile sizes depend only on the padded head dim (and the interpreter), never on the GPU,
# so the executed-FLOP count of a launch is a function of its shapes.  Stages (and so
# shared memory) are then fitted to the device.  Chosen for Hopper (sm_90) and checked
# offline with ``flopscale inspect`` (compiles, no spills, fits shared memory, wgmma).
_FWD_TILES = {  # block_d -> (block_m, block_n, num_warps, num_stages)
    16: (128, 64, 4, 3),
    32: (128, 64, 4, 3),
    64: (128, 128, 8, 3),  # 170 registers on sm_90 (128 x 64 x 4 warps: 232)
    # 128 x 128 x 8 warps reaches 252-254 registers (no spill, but within 8 of the limit): 64 keys
    128: (128, 64, 8, 3),
    256: (128, 32, 8, 1),  # 2 stages: 248 registers since the scale moved into the exp2 FMA
}
# 16-bit inputs read through TMA (sm_90, aligned strides): the descriptors keep the address
# arithmetic out of the registers (D=128: 188 registers at 128 x 128 instead of 254), so the
# key tile doubles where the pointer path cannot
_FWD_TILES_TMA = {
    128: (128, 128, 8, 3),  # stages fitted to 2 by shared memory
    256: (128, 64, 8, 2),  # 203-206 registers, 197 kB of shared memory
}
_BWD_TILES = {  # block_d -> (block_n keys/program, block_m queries/step, num_warps, num_stages)
    16: (128, 64, 8, 2),
    32: (128, 64, 8, 2),
    64: (128, 64, 8, 2),
    128: (128, 32, 8, 2),
    # dK/dV accumulators of 256 columns: 32-key mma.sync tiles.  The dense 16-bit backward runs
    # _BWD_KV_SPLIT instead; the block-sparse backward takes its D=256 sub-tiles from here
    256: (32, 32, 8, 2),
}
# float32 inputs on a GPU (IEEE fp32 runs on FMA units, TF32 when torch allows it): small
# tiles, since FMA dot products hold both operands in registers.  Chosen so that neither
# precision spills on sm_90 with Triton 3.6 or 3.9 (32 x 32 forward tiles spilled 0.8 kB
# per thread at D = 128 and 8 kB at D = 256 with IEEE; 16 x 16 x 4 warps backward spilled
# at D = 256).  Checked with the kernels' inspect specs for fp32, IEEE and TF32.
_FWD_TILES_FP32 = {  # block_d -> (block_m, block_n, num_warps, num_stages)
    16: (32, 32, 4, 2),
    32: (32, 32, 4, 2),
    64: (32, 32, 4, 2),
    128: (16, 16, 4, 2),
    256: (16, 16, 4, 2),
}
_BWD_TILES_FP32 = {  # block_d -> (block_n, block_m, num_warps, num_stages)
    16: (16, 16, 4, 2),
    32: (16, 16, 4, 2),
    64: (16, 16, 4, 1),  # 2 stages: 16 bytes of stack with IEEE on Triton 3.9
    128: (16, 16, 4, 2),
    256: (16, 16, 8, 2),
}
# 16-bit backward with dQ in its own kernel: block_d -> (block_m queries/program, block_n keys/step,
# num_warps, num_stages) of that kernel.  At D=128 the key-block kernel's dQ = dS K has only
# BLOCK_M = 32 rows (mma.sync), and 64-row steps spill in it; without dQ every matmul of the
# key-block kernel has BLOCK_N = 128 rows (wgmma, 231 registers) and the dQ kernel runs 128-row
# wgmma (206 registers).  The price: QK^T and dO V^T are computed twice (7 matmuls per tile, not
# 5), counted in the executed FLOPs.  D=256 keeps the atomic dQ: its key-block kernel without dQ
# reached 254 registers at 64 x 16; it is split further (_BWD_KV_SPLIT).
_BWD_SPLIT_DQ = {
    128: (128, 64, 8, 2),
    # 64 x 256 float32 dQ over two warpgroups: 220 registers (64 x 64 steps: 192 bytes of stack)
    256: (64, 32, 8, 2),
}
# 16-bit backward with dK and dV accumulated by two launches of the key-block kernel (and dQ by
# the kernel above): block_d -> (block_n keys/program, block_m queries/step, warps, stages).
# At D=256 one [64, 256] float32 accumulator per launch: the dV pass (QK^T, P^T dO) 140-184
# registers, the dK pass (QK^T, dO V^T, dS^T Q) 223-225; every matmul has 64 rows (wgmma).
# 64-query steps spill in the dK pass (104 bytes).  The price: QK^T runs in both passes, and
# QK^T, dO V^T again in the dQ kernel: 8 matmuls per (query, key) pair instead of 5.
_BWD_KV_SPLIT = {
    256: (64, 32, 8, 2),
}
# Under the Triton interpreter: one small config (tests exercise several tiles per row),
# in the same order as the tables above.
_INTERP_FWD = (32, 16, 4, 1)  # block_m, block_n
_INTERP_BWD = (32, 16, 4, 1)  # block_n, block_m
_INTERP_DQ = (32, 16, 4, 1)  # block_m, block_n of the dQ kernel
_INTERP_KV = (32, 16, 4, 1)  # block_n, block_m of the separate dK and dV passes

_SMEM_BUDGET = {90: 220_000, 80: 160_000, 87: 160_000}  # bytes a block may use, by sm
_SMEM_DEFAULT = 96_000


@functools.lru_cache(maxsize=None)
def _smem_budget(capability: tuple[int, int] | None) -> int:
    if capability is None:
        return _SMEM_BUDGET[90]
    major, minor = capability
    sm = 10 * major + minor
    if sm in _SMEM_BUDGET:
        return _SMEM_BUDGET[sm]
    if major >= 9:
        return _SMEM_BUDGET[90]
    return _SMEM_DEFAULT


def _fit_stages(stages: int, fixed: int, per_stage: int, budget: int) -> int:
    while stages > 1 and fixed + stages * per_stage > budget:
        stages -= 1
    return stages


def fwd_config(head_dim: int, elem_bytes: int = 2, interpret: bool = False,
               capability: tuple[int, int] | None = None, tma: bool = False) -> AttnConfig:
    """Forward tiles for head dim ``head_dim`` and ``elem_bytes``-byte inputs (``capability``
    None: Hopper; ``tma``: the launch reads q, k, v through TMA descriptors)."""
    bd = block_d(head_dim)
    if interpret:
        bm, bn, warps, stages = _INTERP_FWD
    elif tma and elem_bytes == 2 and bd in _FWD_TILES_TMA:
        bm, bn, warps, stages = _FWD_TILES_TMA[bd]
    else:
        bm, bn, warps, stages = (_FWD_TILES_FP32 if elem_bytes == 4 else _FWD_TILES)[bd]
    assert bm % bn == 0, "forward tiles need BLOCK_M % BLOCK_N == 0"
    # q resident, k and v tiles per stage
    stages = _fit_stages(stages, bm * bd * elem_bytes, 2 * bn * bd * elem_bytes, _smem_budget(capability))
    return AttnConfig(bm, bn, warps, stages)


def bwd_config(head_dim: int, elem_bytes: int = 2, interpret: bool = False,
               capability: tuple[int, int] | None = None) -> AttnConfig:
    """Backward tiles for head dim ``head_dim`` and ``elem_bytes``-byte inputs (``capability``
    None: Hopper)."""
    bd = block_d(head_dim)
    if interpret:
        bn, bm, warps, stages = _INTERP_BWD
    else:
        bn, bm, warps, stages = (_BWD_TILES_FP32 if elem_bytes == 4 else _BWD_TILES)[bd]
    assert bn % bm == 0, "backward tiles need BLOCK_N % BLOCK_M == 0"
    # k, v resident; q and dO tiles per stage; dS transposed through shared memory
    fixed = 2 * bn * bd * elem_bytes + bn * bm * elem_bytes
    stages = _fit_stages(stages, fixed, 2 * bm * bd * elem_bytes, _smem_budget(capability))
    dq = None
    if elem_bytes == 2 and bd in _BWD_SPLIT_DQ:
        qm, qn, qw, qs = _INTERP_DQ if interpret else _BWD_SPLIT_DQ[bd]
        # q and dO resident, k and v tiles per stage
        qs = _fit_stages(qs, 2 * qm * bd * elem_bytes, 2 * qn * bd * elem_bytes, _smem_budget(capability))
        dq = AttnConfig(qm, qn, qw, qs)
    kv = None
    if elem_bytes == 2 and bd in _BWD_KV_SPLIT:
        kn, km, kw, ks = _INTERP_KV if interpret else _BWD_KV_SPLIT[bd]
        # k (and v) resident; q and dO tiles per stage; dS transposed through shared memory
        ks = _fit_stages(ks, 2 * kn * bd * elem_bytes + kn * km * elem_bytes, 2 * km * bd * elem_bytes,
                         _smem_budget(capability))
        kv = AttnConfig(km, kn, kw, ks)
    return AttnConfig(bm, bn, warps, stages, dq, kv)


# --------------------------------------------------------------------------------------
# shipped configurations, for ``flopscale inspect``
# --------------------------------------------------------------------------------------

#: head dims with their own shipped tiles (others run on the tile of ``block_d(D)``)
SHIPPED_HEAD_DIMS = (16, 32, 64, 128, 256)


def _spec_signature(fn, ptr_types: dict[str, str], floats: tuple[str, ...], consts: dict[str, Any]):
    """Signature of ``fn``: pointers as given, last-dim strides constexpr 1, floats fp32,
    every other runtime argument i32; returns (signature, constexprs, aligned)."""
    signature: dict[str, str] = {}
    aligned: list[str] = []
    consts = dict(consts)
    for name in fn.arg_names:
        if name in ptr_types:
            signature[name] = ptr_types[name]
            aligned.append(name)
        elif name in consts:
            signature[name] = "constexpr"
        elif name.startswith("s_") and name.endswith("d"):
            signature[name] = "constexpr"  # unit inner stride: Triton specialises 1
            consts[name] = 1
        elif name.startswith("s_"):
            signature[name] = "i32"
            aligned.append(name)  # rows of >= 16 elements: strides divisible by 16
        elif name in floats:
            signature[name] = "fp32"
        else:
            signature[name] = "i32"  # sequence lengths, head counts: not assumed aligned
    return signature, consts, tuple(aligned)


def inspect_specs(capability: int = 90) -> list:
    """Every shipped configuration of the dense attention kernels as
    ``kernels.inspect.KernelSpec`` objects (bf16, each shipped head dim, causal and not,
    forward, backward and the backward's ``delta`` pre-pass), specialised as a typical launch
    is (16-byte aligned pointers and row strides, unit inner strides), with the stages fitted
    to the shared memory of ``sm_<capability>``."""
    from .inspect import KernelSpec  # local: keeps this module importable without the inspector

    cap = (capability // 10, capability % 10)
    dt = "*bf16"
    specs = []
    for d in SHIPPED_HEAD_DIMS:
        bd = block_d(d)
        for causal in (False, True):
            mode = "causal" if causal else "full"
            # sm_90 reads aligned inputs through TMA, others through pointers (the fallback)
            for tma in ((True, False) if capability >= 90 and HAS_TMA else (False,)):
                cfg = fwd_config(d, 2, False, cap, tma)
                consts = {"GROUP": 1, "HEAD_DIM": d, "BLOCK_D": bd, "BLOCK_M": cfg.block_m,
                          "BLOCK_N": cfg.block_n, "CAUSAL": causal, "DOT_PRECISION": "tf32", "USE_TMA": tma,
                          "WARP_SPECIALIZE": False}
                sig, consts, aligned = _spec_signature(
                    _attn_fwd_kernel, {"Q": dt, "K": dt, "V": dt, "O": dt, "LSE": "*fp32"}, ("qk_scale",), consts)
                specs.append(KernelSpec(
                    kernel="attention_fwd[bf16]", config=f"D{d}_{mode}_{cfg.label()}" + ("_tma" if tma else "_ptr"),
                    fn=_attn_fwd_kernel, signature=sig, constexprs=consts, num_warps=cfg.num_warps,
                    num_stages=cfg.num_stages, tensor_core=True, aligned=aligned))
            cfg = bwd_config(d, 2, False, cap)
            # D=256: dV and dK by two launches of the key-block kernel (``kv`` tiles)
            passes = [(cfg.kv, "_dv", False, True), (cfg.kv, "_dk", True, False)] if cfg.kv else [(cfg, "", True, True)]
            for kcfg, suffix, with_dk, with_dv in passes:
                consts = {"GROUP": 1, "HEAD_DIM": d, "BLOCK_D": bd, "BLOCK_M": kcfg.block_m,
                          "BLOCK_N": kcfg.block_n, "CAUSAL": causal, "DOT_PRECISION": "tf32",
                          "WITH_DQ": cfg.dq is None, "WITH_DK": with_dk, "WITH_DV": with_dv}
                sig, consts, aligned = _spec_signature(
                    _attn_bwd_kernel,
                    {"Q": dt, "K": dt, "V": dt, "DO": dt, "DQ": "*fp32", "DK": dt, "DV": dt, "LSE": "*fp32",
                     "DELTA": "*fp32"},
                    ("sm_scale", "qk_scale"), consts)
                # key tiles of < 64 rows would run on mma.sync, not wgmma: marked so that no wgmma
                # is expected of them (none is shipped for 16-bit inputs)
                wgmma = kcfg.block_n >= 64
                specs.append(KernelSpec(
                    kernel="attention_bwd[bf16]",
                    config=(f"D{d}_{mode}_{kcfg.label()}" + ("" if wgmma else "_mma.sync")
                            + ("_nodq" if cfg.dq else "") + suffix),
                    fn=_attn_bwd_kernel, signature=sig, constexprs=consts, num_warps=kcfg.num_warps,
                    num_stages=kcfg.num_stages, tensor_core=wgmma, aligned=aligned))
            if cfg.dq is not None:
                dq = cfg.dq
                consts = {"GROUP": 1, "HEAD_DIM": d, "BLOCK_D": bd, "BLOCK_M": dq.block_m,
                          "BLOCK_N": dq.block_n, "CAUSAL": causal, "DOT_PRECISION": "tf32"}
                sig, consts, aligned = _spec_signature(
                    _attn_bwd_dq_kernel,
                    {"Q": dt, "K": dt, "V": dt, "DO": dt, "DQ": dt, "LSE": "*fp32", "DELTA": "*fp32"},
                    ("sm_scale", "qk_scale"), consts)
                specs.append(KernelSpec(
                    kernel="attention_bwd_dq[bf16]", config=f"D{d}_{mode}_{dq.label()}", fn=_attn_bwd_dq_kernel,
                    signature=sig, constexprs=consts, num_warps=dq.num_warps, num_stages=dq.num_stages,
                    tensor_core=True, aligned=aligned))
    consts = {"HEAD_DIM": 128, "BLOCK_D": 128, "BLOCK_M": 64, "HAS_DLSE": False}
    sig, consts, aligned = _spec_signature(
        _bwd_preprocess_kernel, {"O": dt, "DO": dt, "DELTA": "*fp32", "DLSE": "*fp32"}, (), consts)
    specs.append(KernelSpec(
        kernel="attention_bwd_delta[bf16]", config="D128_BM64_w4", fn=_bwd_preprocess_kernel, signature=sig,
        constexprs=consts, num_warps=4, num_stages=1, tensor_core=False, aligned=aligned))
    return specs
