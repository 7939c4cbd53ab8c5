"""Triton kernels for block-sparse matmul (Triton only; the op layer is ``blocksparse_layer``).

Storage (see ``kernels.layout.BlockLayout``): a sparse operand or output is
``[Z, nnz, block, block]`` with block ``i`` at index ``i``; dense operands are
``[Z, H, rows, cols]``; every stride is free (transposed views are read in place).

* :func:`sdd_kernel` -- ``C_s = A @ B`` computed only at the layout's blocks.  One program per
  *group* of ``GROUP`` blocks of the same block-row (``lut``: ``[groups, 1 + GROUP]`` int32 =
  global row ``h*R + r`` then block ids, ``-1`` padded).  Blocks smaller than 64 are grouped
  (``GROUP * block = 64``) and computed transposed (``C^T = B^T A^T``: the gathered columns
  form the 64-row side of the MMA) so that Hopper's warpgroup MMA (M >= 64) applies.
* :func:`dsd_kernel` -- ``C = A_s @ B``: one program per (row of the sparse operand,
  ``BLOCK_N`` columns of B); it loops over that row's blocks only (``ptr``/``idx`` = CSR of the
  layout, or CSC with ``bid`` for the transposed operand).  ``SWAP`` computes the tile
  transposed for blocks < 64 (same reason as above).
* :func:`dds_kernel` -- ``C = A @ B_s``: one program per (``BLOCK_M`` rows of A, column of the
  sparse operand), looping over that column's blocks (CSC of the layout with ``bid``, or CSR
  for the transposed operand).

Nothing is launched for, and nothing is read of, an empty block: sdd launches one program per
group of present blocks; dsd/dds programs of an empty row/column only write zeros.  The
inner dimension of each block is walked in ``BLOCK_K`` slices as one flat, pipelined loop.
"""
from __future__ import annotations

from dataclasses import dataclass

import triton
import triton.language as tl

__all__ = ["BlocksparseConfig", "config_for", "sdd_group", "sdd_kernel", "dsd_kernel", "dds_kernel", "inspect_specs"]


@dataclass(frozen=True)
class BlocksparseConfig:
    """``TILE``: BLOCK_N (dsd) / BLOCK_M (dds) / GROUP (sdd); ``BLOCK_K``: inner slice; warps, stages."""

    TILE: int
    BLOCK_K: int
    num_warps: int = 4
    num_stages: int = 3

    @property
    def name(self) -> str:
        return f"T{self.TILE}_BK{self.BLOCK_K}_w{self.num_warps}_s{self.num_stages}"


def sdd_group(block: int) -> int:
    """Blocks per sdd program: enough to give the MMA a 64-wide side."""
    return max(1, 64 // block)


def config_for(mode: str, block: int, family: str) -> BlocksparseConfig:
    """The shipped configuration for ``mode`` (``"sdd"|"dsd"|"dds"``), block size and dtype
    family (``"16"`` fp16/bf16, ``"32"`` fp32/tf32)."""
    bk_cap = 64 if family == "16" else 32
    warps = 8 if block == 128 else 4
    if mode == "sdd":
        return BlocksparseConfig(sdd_group(block), bk_cap, warps, 3)
    if mode in ("dsd", "dds"):
        return BlocksparseConfig(128, min(block, bk_cap), warps, 3)
    raise ValueError(f"unknown block-sparse mode {mode!r}")


@triton.jit
def sdd_kernel(
    a_ptr, b_ptr, c_ptr, lut_ptr, col_idx_ptr,
    K, ROWS,
    stride_az, stride_ah, stride_am, stride_ak,
    stride_bz, stride_bh, stride_bk, stride_bn,
    stride_cz, stride_cb, stride_cm, stride_cn,
    BLOCK: tl.constexpr, GROUP: tl.constexpr, BLOCK_K: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    """grid = (groups, Z)."""
    g = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    grow = tl.load(lut_ptr + g * (GROUP + 1))
    h = (grow // ROWS).to(tl.int64)
    r = (grow % ROWS).to(tl.int64)
    a_base = a_ptr + z * stride_az + h * stride_ah
    b_base = b_ptr + z * stride_bz + h * stride_bh
    c_base = c_ptr + z * stride_cz
    offs_i = tl.arange(0, BLOCK)
    rows = r * BLOCK + offs_i
    offs_k = tl.arange(0, BLOCK_K)
    if GROUP == 1:
        bid = tl.load(lut_ptr + g * 2 + 1).to(tl.int64)
        col = tl.load(col_idx_ptr + bid).to(tl.int64)
        cols = col * BLOCK + offs_i
        a_ptrs = a_base + rows[:, None] * stride_am + offs_k[None, :] * stride_ak
        b_ptrs = b_base + offs_k[:, None] * stride_bk + cols[None, :] * stride_bn
        acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
        for k in range(0, tl.cdiv(K, BLOCK_K)):
            k_left = K - k * BLOCK_K
            a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
            b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
            acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
            a_ptrs += BLOCK_K * stride_ak
            b_ptrs += BLOCK_K * stride_bk
        c_ptrs = c_base + bid * stride_cb + offs_i[:, None] * stride_cm + offs_i[None, :] * stride_cn
        tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty))
    else:
        # GROUP blocks of one block-row; their columns gathered side by side (GROUP*BLOCK = 64)
        j = tl.arange(0, GROUP * BLOCK)
        slot = j // BLOCK
        within = j % BLOCK
        bids = tl.load(lut_ptr + g * (GROUP + 1) + 1 + slot)
        valid = bids >= 0
        safe = tl.where(valid, bids, 0).to(tl.int64)
        cols = tl.load(col_idx_ptr + safe).to(tl.int64) * BLOCK + within
        bt_ptrs = b_base + cols[:, None] * stride_bn + offs_k[None, :] * stride_bk  # [G*BLOCK, BLOCK_K]
        at_ptrs = a_base + offs_k[:, None] * stride_ak + rows[None, :] * stride_am  # [BLOCK_K, BLOCK]
        acc = tl.zeros((GROUP * BLOCK, BLOCK), dtype=tl.float32)
        for k in range(0, tl.cdiv(K, BLOCK_K)):
            k_left = K - k * BLOCK_K
            bt = tl.load(bt_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
            at = tl.load(at_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
            acc = tl.dot(bt, at, acc, input_precision=INPUT_PRECISION)
            bt_ptrs += BLOCK_K * stride_bk
            at_ptrs += BLOCK_K * stride_ak
        # acc[j, i] = C[row i, column j]
        c_ptrs = c_base + safe[:, None] * stride_cb + offs_i[None, :] * stride_cm + within[:, None] * stride_cn
        tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=valid[:, None])


@triton.jit
def dsd_kernel(
    a_ptr, b_ptr, c_ptr, ptr_ptr, idx_ptr, bid_ptr,
    N, ROWS,
    stride_az, stride_ab, stride_ar, stride_ac,
    stride_bz, stride_bh, stride_bk, stride_bn,
    stride_cz, stride_ch, stride_cm, stride_cn,
    BLOCK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    USE_BID: tl.constexpr, SWAP: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    """grid = (H * ROWS, cdiv(N, BLOCK_N), Z); ``stride_ar``/``stride_ac`` address row/column of
    the *logical* sparse block (swapped by the caller for a transposed operand)."""
    grow = tl.program_id(0)
    pid_n = tl.program_id(1)
    z = tl.program_id(2).to(tl.int64)
    h = (grow // ROWS).to(tl.int64)
    r = (grow % ROWS).to(tl.int64)
    start = tl.load(ptr_ptr + grow)
    end = tl.load(ptr_ptr + grow + 1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_bn = (offs_n % N).to(tl.int64)  # wrapped: loads stay in bounds, the store is masked
    offs_r = tl.arange(0, BLOCK)
    offs_k = tl.arange(0, BLOCK_K)
    a_z = a_ptr + z * stride_az
    b_base = b_ptr + z * stride_bz + h * stride_bh
    SUB: tl.constexpr = BLOCK // BLOCK_K
    if SWAP:
        acc = tl.zeros((BLOCK_N, BLOCK), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK, BLOCK_N), dtype=tl.float32)
    for i in range(start * SUB, end * SUB):
        p = i // SUB
        kk = (i % SUB) * BLOCK_K
        kb = tl.load(idx_ptr + p).to(tl.int64)
        if USE_BID:
            bid = tl.load(bid_ptr + p).to(tl.int64)
        else:
            bid = p.to(tl.int64)
        a_base = a_z + bid * stride_ab
        krow = kb * BLOCK + kk + offs_k
        if SWAP:
            at = tl.load(a_base + (kk + offs_k)[:, None] * stride_ac + offs_r[None, :] * stride_ar)
            bt = tl.load(b_base + offs_bn[:, None] * stride_bn + krow[None, :] * stride_bk)
            acc = tl.dot(bt, at, acc, input_precision=INPUT_PRECISION)
        else:
            a = tl.load(a_base + offs_r[:, None] * stride_ar + (kk + offs_k)[None, :] * stride_ac)
            b = tl.load(b_base + krow[:, None] * stride_bk + offs_bn[None, :] * stride_bn)
            acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
    out = acc.to(c_ptr.dtype.element_ty)
    rows_e = r * BLOCK + offs_r
    c_base = c_ptr + z * stride_cz + h * stride_ch
    offs_cn = offs_n.to(tl.int64)
    if SWAP:
        tl.store(c_base + offs_cn[:, None] * stride_cn + rows_e[None, :] * stride_cm, out, mask=offs_n[:, None] < N)
    else:
        tl.store(c_base + rows_e[:, None] * stride_cm + offs_cn[None, :] * stride_cn, out, mask=offs_n[None, :] < N)


@triton.jit
def dds_kernel(
    a_ptr, b_ptr, c_ptr, ptr_ptr, idx_ptr, bid_ptr,
    M, COLS,
    stride_az, stride_ah, stride_am, stride_ak,
    stride_bz, stride_bb, stride_br, stride_bc,
    stride_cz, stride_ch, stride_cm, stride_cn,
    BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
    USE_BID: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    """grid = (H * COLS, cdiv(M, BLOCK_M), Z); ``stride_br``/``stride_bc`` address row/column of
    the *logical* sparse block (swapped by the caller for a transposed operand)."""
    gcol = tl.program_id(0)
    pid_m = tl.program_id(1)
    z = tl.program_id(2).to(tl.int64)
    h = (gcol // COLS).to(tl.int64)
    cb = (gcol % COLS).to(tl.int64)
    start = tl.load(ptr_ptr + gcol)
    end = tl.load(ptr_ptr + gcol + 1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_am = (offs_m % M).to(tl.int64)
    offs_c = tl.arange(0, BLOCK)
    offs_k = tl.arange(0, BLOCK_K)
    a_base = a_ptr + z * stride_az + h * stride_ah
    b_z = b_ptr + z * stride_bz
    SUB: tl.constexpr = BLOCK // BLOCK_K
    acc = tl.zeros((BLOCK_M, BLOCK), dtype=tl.float32)
    for i in range(start * SUB, end * SUB):
        p = i // SUB
        kk = (i % SUB) * BLOCK_K
        kb = tl.load(idx_ptr + p).to(tl.int64)
        if USE_BID:
            bid = tl.load(bid_ptr + p).to(tl.int64)
        else:
            bid = p.to(tl.int64)
        kcol = kb * BLOCK + kk + offs_k
        a = tl.load(a_base + offs_am[:, None] * stride_am + kcol[None, :] * stride_ak)
        b = tl.load(b_z + bid * stride_bb + (kk + offs_k)[:, None] * stride_br + offs_c[None, :] * stride_bc)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
    out = acc.to(c_ptr.dtype.element_ty)
    cols_e = cb * BLOCK + offs_c
    c_base = c_ptr + z * stride_cz + h * stride_ch
    offs_cm = offs_m.to(tl.int64)
    tl.store(c_base + offs_cm[:, None] * stride_cm + cols_e[None, :] * stride_cn, out, mask=offs_m[:, None] < M)


# --------------------------------------------------------------------------- offline inspection
_TL = {"bf16": "*bf16", "fp16": "*fp16", "fp32": "*fp32"}
_FAM = {"bf16": "16", "fp16": "16", "fp32": "32"}


def inspect_specs(capability: int = 90) -> list:
    """Every shipped (mode, block, dtype) configuration as ``kernels.inspect.KernelSpec``,
    specialised like a contiguous launch; ``dsd^T``/``dds^T`` are the transposed-operand
    variants the backward pass launches."""
    from .inspect import KernelSpec

    specs = []
    for dt in ("bf16", "fp16", "fp32"):
        ty, fam = _TL[dt], _FAM[dt]
        for block in (16, 32, 64, 128):
            for variant in ("sdd", "dsd", "dsd^T", "dds", "dds^T"):
                mode = variant[:3]
                trans = variant.endswith("^T")
                cfg = config_for(mode, block, fam)
                if mode == "sdd":
                    fn = sdd_kernel
                    sig = {
                        "a_ptr": ty, "b_ptr": ty, "c_ptr": ty, "lut_ptr": "*i32", "col_idx_ptr": "*i32",
                        "K": "i32", "ROWS": "i32",
                        "stride_az": "i32", "stride_ah": "i32", "stride_am": "i32", "stride_ak": "constexpr",
                        "stride_bz": "i32", "stride_bh": "i32", "stride_bk": "i32", "stride_bn": "constexpr",
                        "stride_cz": "i32", "stride_cb": "i32", "stride_cm": "i32", "stride_cn": "constexpr",
                        "BLOCK": "constexpr", "GROUP": "constexpr", "BLOCK_K": "constexpr", "INPUT_PRECISION": "constexpr",
                    }
                    const = {"stride_ak": 1, "stride_bn": 1, "stride_cn": 1, "BLOCK": block, "GROUP": cfg.TILE,
                             "BLOCK_K": cfg.BLOCK_K, "INPUT_PRECISION": "tf32"}
                    aligned = ("a_ptr", "b_ptr", "c_ptr", "lut_ptr", "col_idx_ptr", "K", "stride_az", "stride_ah",
                               "stride_am", "stride_bz", "stride_bh", "stride_bk", "stride_cz", "stride_cb", "stride_cm")
                elif mode == "dsd":
                    fn = dsd_kernel
                    unit, other = ("stride_ar", "stride_ac") if trans else ("stride_ac", "stride_ar")
                    sig = {
                        "a_ptr": ty, "b_ptr": ty, "c_ptr": ty, "ptr_ptr": "*i32", "idx_ptr": "*i32", "bid_ptr": "*i32",
                        "N": "i32", "ROWS": "i32",
                        "stride_az": "i32", "stride_ab": "i32", "stride_ar": "i32", "stride_ac": "i32",
                        "stride_bz": "i32", "stride_bh": "i32", "stride_bk": "i32", "stride_bn": "constexpr",
                        "stride_cz": "i32", "stride_ch": "i32", "stride_cm": "i32", "stride_cn": "constexpr",
                        "BLOCK": "constexpr", "BLOCK_N": "constexpr", "BLOCK_K": "constexpr",
                        "USE_BID": "constexpr", "SWAP": "constexpr", "INPUT_PRECISION": "constexpr",
                    }
                    sig[unit] = "constexpr"
                    const = {unit: 1, "stride_bn": 1, "stride_cn": 1, "BLOCK": block, "BLOCK_N": cfg.TILE,
                             "BLOCK_K": cfg.BLOCK_K, "USE_BID": trans, "SWAP": block < 64, "INPUT_PRECISION": "tf32"}
                    aligned = ("a_ptr", "b_ptr", "c_ptr", "ptr_ptr", "idx_ptr", "bid_ptr", "N", "stride_az", "stride_ab",
                               other, "stride_bz", "stride_bh", "stride_bk", "stride_cz", "stride_ch", "stride_cm")
                else:
                    fn = dds_kernel
                    unit, other = ("stride_br", "stride_bc") if trans else ("stride_bc", "stride_br")
                    sig = {
                        "a_ptr": ty, "b_ptr": ty, "c_ptr": ty, "ptr_ptr": "*i32", "idx_ptr": "*i32", "bid_ptr": "*i32",
                        "M": "i32", "COLS": "i32",
                        "stride_az": "i32", "stride_ah": "i32", "stride_am": "i32", "stride_ak": "constexpr",
                        "stride_bz": "i32", "stride_bb": "i32", "stride_br": "i32", "stride_bc": "i32",
                        "stride_cz": "i32", "stride_ch": "i32", "stride_cm": "i32", "stride_cn": "constexpr",
                        "BLOCK": "constexpr", "BLOCK_M": "constexpr", "BLOCK_K": "constexpr",
                        "USE_BID": "constexpr", "INPUT_PRECISION": "constexpr",
                    }
                    sig[unit] = "constexpr"
                    const = {unit: 1, "stride_ak": 1, "stride_cn": 1, "BLOCK": block, "BLOCK_M": cfg.TILE,
                             "BLOCK_K": cfg.BLOCK_K, "USE_BID": not trans, "INPUT_PRECISION": "tf32"}
                    aligned = ("a_ptr", "b_ptr", "c_ptr", "ptr_ptr", "idx_ptr", "bid_ptr", "M", "stride_az", "stride_ah",
                               "stride_am", "stride_bz", "stride_bb", other, "stride_cz", "stride_ch", "stride_cm")
                specs.append(
                    KernelSpec(
                        kernel=f"blocksparse_{variant}[{dt},b{block}]", config=cfg.name, fn=fn, signature=sig,
                        constexprs=const, num_warps=cfg.num_warps, num_stages=cfg.num_stages, tensor_core=True,
                        aligned=aligned,
                    )
                )
    return specs
