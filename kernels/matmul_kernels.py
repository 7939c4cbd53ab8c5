"""Triton kernels for the dense matmul (Triton only; the autograd/op layer is ``matmul_layer``).

Two kernels compute ``C[b] = A[b] @ B[b]`` with fp32 accumulation:

* :func:`matmul_kernel` -- pointer based, any strides (transposed and non-contiguous
  operands, a batch stride of 0 for broadcast), ragged edges masked on every load and the
  store.  Programs are
  visited in grouped ("swizzled") order: ``GROUP_M`` consecutive programs share a band of
  ``B`` columns, so tiles of ``A`` and ``B`` are reused from L2.
* :func:`matmul_tma_kernel` -- Hopper (sm_90+) persistent kernel: ``NUM_SMS`` programs loop
  over the output tiles in the same grouped order; operands are read and the result written
  through tensor-memory-accelerator descriptors (``tl.make_tensor_descriptor``), which zero-fill
  out-of-bounds reads and clip out-of-bounds writes.  TMA needs the innermost stride to be 1
  and every other stride and base address 16-byte aligned; ``A_T``/``B_T`` select a descriptor
  over the transposed storage for column-major operands.  2-D problems only (the layer folds
  broadcast batches into M).

The shipped configurations live here too (``HOPPER_CONFIGS``, ``AMPERE_CONFIGS``,
``INTERPRETER_CONFIG``); :func:`inspect_specs` hands them to ``kernels.inspect`` for offline
compilation.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import triton
import triton.language as tl

from .inspect import KernelSpec

__all__ = [
    "MatmulConfig",
    "HOPPER_CONFIGS",
    "AMPERE_CONFIGS",
    "INTERPRETER_CONFIG",
    "HAS_TMA",
    "matmul_kernel",
    "matmul_tma_kernel",
    "configs_for",
    "smem_bytes",
    "fit_smem",
    "predicted_time",
    "with_splits",
    "pick",
    "tuning_space",
    "inspect_specs",
]


@dataclass(frozen=True)
class MatmulConfig:
    """One tile configuration: tile sizes in elements, program grouping, warps and pipeline stages."""

    BLOCK_M: int
    BLOCK_N: int
    BLOCK_K: int
    GROUP_M: int = 8
    num_warps: int = 4
    num_stages: int = 3
    #: programs sharing one output tile, each over a slice of K (fp32 partial sums, reduced after)
    SPLIT_K: int = 1
    #: TMA kernel only (sm_90+): output stored in two halves; K loop warp-specialized; loops flattened
    EPILOGUE_SUBTILE: bool = False
    WARP_SPECIALIZE: bool = False
    FLATTEN: bool = False

    @property
    def tma_only(self) -> bool:
        """Options only the TMA kernel has (the pointer kernel would ignore them)."""
        return self.EPILOGUE_SUBTILE or self.WARP_SPECIALIZE or self.FLATTEN

    @property
    def name(self) -> str:
        split = f"_sk{self.SPLIT_K}" if self.SPLIT_K > 1 else ""
        opts = ("_sub" if self.EPILOGUE_SUBTILE else "") + ("_ws" if self.WARP_SPECIALIZE else "") + (
            "_flat" if self.FLATTEN else "")
        return (
            f"BM{self.BLOCK_M}_BN{self.BLOCK_N}_BK{self.BLOCK_K}_G{self.GROUP_M}"
            f"_w{self.num_warps}_s{self.num_stages}{split}{opts}"
        )

    def tma_meta(self) -> dict:
        """The TMA kernel's scheduling constexprs."""
        return {"EPILOGUE_SUBTILE": self.EPILOGUE_SUBTILE, "WARP_SPECIALIZE": self.WARP_SPECIALIZE,
                "FLATTEN": self.FLATTEN}

    def meta(self) -> dict:
        return {"BLOCK_M": self.BLOCK_M, "BLOCK_N": self.BLOCK_N, "BLOCK_K": self.BLOCK_K, "GROUP_M": self.GROUP_M,
                "SPLIT_K": self.SPLIT_K}


# Shipped configurations, by dtype family ("16" = fp16/bf16, "32" = fp32/tf32, "8" = fp8).
# Hopper: large 128-row tiles for wgmma (one warpgroup per 64 rows), 3-4 TMA stages.
HOPPER_CONFIGS: dict[str, tuple[MatmulConfig, ...]] = {
    "16": (
        MatmulConfig(128, 256, 64, 8, num_warps=8, num_stages=3),
        MatmulConfig(128, 128, 64, 8, num_warps=8, num_stages=4),
        MatmulConfig(128, 128, 64, 8, num_warps=4, num_stages=4),
        MatmulConfig(64, 128, 64, 8, num_warps=4, num_stages=4),
        # TMA kernel only: half-tile epilogue buys a 4th stage at 128x256 (229 kB of 227 KiB);
        # warp specialization takes effect at 4 warps (setmaxnreg in SASS), not at 8
        MatmulConfig(128, 256, 64, 8, num_warps=8, num_stages=4, EPILOGUE_SUBTILE=True),
        MatmulConfig(128, 128, 64, 8, num_warps=4, num_stages=4, WARP_SPECIALIZE=True),
    ),
    "32": (
        MatmulConfig(128, 128, 32, 8, num_warps=8, num_stages=3),
        MatmulConfig(64, 128, 32, 8, num_warps=4, num_stages=4),
    ),
    "8": (
        # fp8 keeps a second fp32 accumulator to promote the tensor cores' partial sums once per
        # K tile: 2 x 64 registers per thread at 128x128 over 8 warps (128x256 spilled 88 bytes)
        MatmulConfig(128, 128, 128, 8, num_warps=8, num_stages=4),
        MatmulConfig(64, 128, 128, 8, num_warps=4, num_stages=4),
    ),
}

# Ampere / Ada (sm_80, sm_86, sm_89): mma.sync, cp.async pipelining, less shared memory.
AMPERE_CONFIGS: dict[str, tuple[MatmulConfig, ...]] = {
    "16": (
        MatmulConfig(128, 256, 32, 8, num_warps=8, num_stages=3),
        MatmulConfig(128, 128, 32, 8, num_warps=4, num_stages=4),
        MatmulConfig(64, 128, 32, 8, num_warps=4, num_stages=4),
    ),
    "32": (
        MatmulConfig(128, 128, 32, 8, num_warps=8, num_stages=3),
        MatmulConfig(64, 64, 32, 8, num_warps=4, num_stages=4),
    ),
    "8": (
        MatmulConfig(128, 128, 64, 8, num_warps=8, num_stages=3),
        MatmulConfig(64, 128, 64, 8, num_warps=4, num_stages=4),
    ),
}

#: The single configuration used under the Triton interpreter (no tuning there).
INTERPRETER_CONFIG = MatmulConfig(32, 32, 32, 4, num_warps=4, num_stages=1)

#: Whether this Triton has device-side tensor descriptors (TMA), triton >= 3.4.
HAS_TMA = hasattr(tl, "make_tensor_descriptor")


def configs_for(family: str, capability_major: int) -> tuple[MatmulConfig, ...]:
    """Shipped configurations for dtype family ``family`` on a GPU of this major capability."""
    table = HOPPER_CONFIGS if capability_major >= 9 else AMPERE_CONFIGS
    return table[family]


def smem_bytes(cfg: MatmulConfig, in_bytes: int, out_bytes: int, tma: bool) -> int:
    """Upper estimate of the shared memory (bytes per program) a launch of ``cfg`` needs:
    ``num_stages`` buffered A and B tiles, plus, for the TMA kernel, the output tile staged in
    shared memory for the descriptor store (half of it with ``EPILOGUE_SUBTILE``).  Checked against ``flopscale inspect`` on sm_90
    (Triton 3.6 and 3.9): exact for 16-bit pointer launches, exact within the few barrier
    bytes for TMA, an over-estimate for fp8/fp32 pointer launches."""
    ab = cfg.num_stages * (cfg.BLOCK_M * cfg.BLOCK_K + cfg.BLOCK_K * cfg.BLOCK_N) * in_bytes
    staged = cfg.BLOCK_M * cfg.BLOCK_N * out_bytes // (2 if cfg.EPILOGUE_SUBTILE and cfg.SPLIT_K == 1 else 1)
    return ab + (staged if tma else 0)


def fit_smem(cfg: MatmulConfig, in_bytes: int, out_bytes: int, tma: bool, limit: int) -> MatmulConfig | None:
    """``cfg`` with its pipeline stages reduced (down to 2) until it fits ``limit`` bytes of
    shared memory (1 KiB kept for barriers and scratch); None when even 2 stages do not fit.
    E.g. the 128x256x64 TMA tile with an fp32 output needs 278.5 kB at 3 stages (over the
    227 kB of sm_90) and 229 kB at 2."""
    budget = limit - 1024
    stages = cfg.num_stages
    while smem_bytes(replace(cfg, num_stages=stages), in_bytes, out_bytes, tma) > budget:
        if stages <= 2:
            return None
        stages -= 1
    return cfg if stages == cfg.num_stages else replace(cfg, num_stages=stages)


@triton.jit
def _grouped_tile(tile_id, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """Map a linear tile id to (pid_m, pid_n) in grouped order: GROUP_M rows of tiles share columns."""
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = tile_id // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((tile_id % num_pid_in_group) % group_size_m)
    pid_n = (tile_id % num_pid_in_group) // group_size_m
    return pid_m, pid_n


@triton.jit
def _apply_scales(acc, sa_ptr, sb_ptr, offs_m, offs_n, M, N, SCALE_A: tl.constexpr, SCALE_B: tl.constexpr):
    """Dequantise the fp32 accumulator as ``torch._scaled_mm`` does: ``SCALE_A`` 0 none,
    1 one scale for all of A, 2 one per row of A (``[M, 1]``); ``SCALE_B`` likewise, 2 = one
    per column of B (``[1, N]``)."""
    if SCALE_A == 1:
        acc = acc * tl.load(sa_ptr)
    elif SCALE_A == 2:
        acc = acc * tl.load(sa_ptr + offs_m, mask=offs_m < M, other=0.0)[:, None]
    if SCALE_B == 1:
        acc = acc * tl.load(sb_ptr)
    elif SCALE_B == 2:
        acc = acc * tl.load(sb_ptr + offs_n, mask=offs_n < N, other=0.0)[None, :]
    return acc


@triton.jit
def _split_range(split, k_tiles, SPLIT_K: tl.constexpr):
    """K tiles [lo, hi) of split number ``split`` (of SPLIT_K; the last ones may be empty)."""
    per = tl.cdiv(k_tiles, SPLIT_K)
    lo = split * per
    return lo, tl.minimum(k_tiles, lo + per)


@triton.jit
def matmul_kernel(
    a_ptr, b_ptr, c_ptr, sa_ptr, sb_ptr,
    M, N, K,
    stride_ab, stride_am, stride_ak,
    stride_bb, stride_bk, stride_bn,
    stride_cb, stride_cm, stride_cn, stride_cs,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    SPLIT_K: tl.constexpr, SCALE_A: tl.constexpr, SCALE_B: tl.constexpr, MAX_IMPRECISE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """C[b] = A[b] @ B[b]; grid = (cdiv(M, BLOCK_M) * cdiv(N, BLOCK_N), batch, SPLIT_K).

    With ``SPLIT_K > 1`` program ``(t, b, s)`` sums K tiles of slice ``s`` only and writes its
    fp32 partial product to ``c_ptr + s * stride_cs`` (a workspace the caller reduces).
    ``SCALE_A``/``SCALE_B``: see ``_apply_scales``.  ``MAX_IMPRECISE``: fp8 products the
    tensor cores may accumulate in their reduced precision before adding into the fp32
    accumulator (None: Triton's default, no promotion on sm_90; BLOCK_K: once per K tile)."""
    pid = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pid_m, pid_n = _grouped_tile(pid, num_pid_m, num_pid_n, GROUP_M)
    if SPLIT_K > 1:
        split = tl.program_id(2)
        k_lo, k_hi = _split_range(split, tl.cdiv(K, BLOCK_K), SPLIT_K)
        c_ptr += split.to(tl.int64) * stride_cs
    else:
        k_lo = 0
        k_hi = tl.cdiv(K, BLOCK_K)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    # masked, not wrapped, edges: a wrapped index hinted as contiguous could make a vectorised
    # load run past the end of a column-major operand
    in_m = offs_m[:, None] < M
    in_n = offs_n[None, :] < N
    a_ptrs = a_ptr + batch * stride_ab + offs_m[:, None].to(tl.int64) * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + batch * stride_bb + offs_k[:, None] * stride_bk + offs_n[None, :].to(tl.int64) * stride_bn
    a_ptrs += k_lo * BLOCK_K * stride_ak
    b_ptrs += k_lo * BLOCK_K * stride_bk

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(k_lo, k_hi):
        k_left = K - k * BLOCK_K
        a = tl.load(a_ptrs, mask=in_m & (offs_k[None, :] < k_left), other=0.0)
        b = tl.load(b_ptrs, mask=(offs_k[:, None] < k_left) & in_n, other=0.0)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION, max_num_imprecise_acc=MAX_IMPRECISE)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    acc = _apply_scales(acc, sa_ptr, sb_ptr, offs_m, offs_n, M, N, SCALE_A, SCALE_B)
    c = acc.to(c_ptr.dtype.element_ty)
    c_ptrs = c_ptr + batch * stride_cb + offs_m[:, None].to(tl.int64) * stride_cm + offs_n[None, :].to(tl.int64) * stride_cn
    tl.store(c_ptrs, c, mask=in_m & in_n)


@triton.jit
def matmul_tma_kernel(
    a_ptr, b_ptr, c_ptr, sa_ptr, sb_ptr,
    M, N, K,
    stride_a, stride_b, stride_c, stride_cs,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    NUM_SMS: tl.constexpr, A_T: tl.constexpr, B_T: tl.constexpr,
    SPLIT_K: tl.constexpr, C_TMA: tl.constexpr,
    EPILOGUE_SUBTILE: tl.constexpr, WARP_SPECIALIZE: tl.constexpr, FLATTEN: tl.constexpr,
    SCALE_A: tl.constexpr, SCALE_B: tl.constexpr, MAX_IMPRECISE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """Persistent TMA matmul, 2-D: C[M, N] = A[M, K] @ B[K, N]; grid = (min(NUM_SMS, work),).

    ``stride_a`` is the leading (non-unit) stride of A's storage: of ``A[M, K]`` when
    ``A_T`` is false, of the column-major storage ``A^T[K, M]`` when true; same for B
    (``B[K, N]`` or ``B^T[N, K]``) and C (``C[M, N]``, always row-major).

    ``C_TMA``: store C through a descriptor (its row stride is 16-byte aligned); else with
    masked pointer stores, so an output whose rows are not aligned (a vocabulary of 50257
    columns) still takes this kernel.  ``SPLIT_K > 1``: the work items are (tile, K slice)
    pairs, and each writes its fp32 partial product to slice ``s`` of the workspace
    ``c_ptr[SPLIT_K, M, N]`` (strides ``stride_cs``, ``stride_c``, 1; always by descriptor).

    Hopper scheduling options (each visible in ``flopscale inspect``): ``EPILOGUE_SUBTILE``
    stores the output tile in two halves of ``BLOCK_N / 2`` columns, halving the shared memory
    staged for the store (room for one more pipeline stage at 128x256); ``WARP_SPECIALIZE``
    asks Triton to split the K loop into a TMA-producer and wgmma-consumer partitions (it takes
    effect at 4 warps, and is dropped silently at 8); ``FLATTEN`` lets Triton flatten the tile
    and K loops into one so the next tile's loads overlap this tile's epilogue.
    ``SCALE_A``/``SCALE_B``/``MAX_IMPRECISE``: as in :func:`matmul_kernel` (fp8 scales).
    """
    start_pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_tiles = num_pid_m * num_pid_n
    k_tiles = tl.cdiv(K, BLOCK_K)

    if A_T:
        a_desc = tl.make_tensor_descriptor(a_ptr, shape=[K, M], strides=[stride_a, 1], block_shape=[BLOCK_K, BLOCK_M])
    else:
        a_desc = tl.make_tensor_descriptor(a_ptr, shape=[M, K], strides=[stride_a, 1], block_shape=[BLOCK_M, BLOCK_K])
    if B_T:
        b_desc = tl.make_tensor_descriptor(b_ptr, shape=[N, K], strides=[stride_b, 1], block_shape=[BLOCK_N, BLOCK_K])
    else:
        b_desc = tl.make_tensor_descriptor(b_ptr, shape=[K, N], strides=[stride_b, 1], block_shape=[BLOCK_K, BLOCK_N])
    if SPLIT_K > 1:
        c_desc = tl.make_tensor_descriptor(c_ptr, shape=[SPLIT_K, M, N], strides=[stride_cs, stride_c, 1],
                                           block_shape=[1, BLOCK_M, BLOCK_N])
    elif C_TMA:
        if EPILOGUE_SUBTILE:
            c_desc = tl.make_tensor_descriptor(c_ptr, shape=[M, N], strides=[stride_c, 1],
                                               block_shape=[BLOCK_M, BLOCK_N // 2])
        else:
            c_desc = tl.make_tensor_descriptor(c_ptr, shape=[M, N], strides=[stride_c, 1],
                                               block_shape=[BLOCK_M, BLOCK_N])

    for work_id in tl.range(start_pid, num_tiles * SPLIT_K, NUM_SMS, flatten=FLATTEN):
        tile_id = work_id % num_tiles
        pid_m, pid_n = _grouped_tile(tile_id, num_pid_m, num_pid_n, GROUP_M)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        if SPLIT_K > 1:
            k_lo, k_hi = _split_range(work_id // num_tiles, k_tiles, SPLIT_K)
        else:
            k_lo = 0
            k_hi = k_tiles
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for ki in tl.range(k_lo, k_hi, warp_specialize=WARP_SPECIALIZE):
            off_k = ki * BLOCK_K
            if A_T:
                a = a_desc.load([off_k, off_m]).T
            else:
                a = a_desc.load([off_m, off_k])
            if B_T:
                b = b_desc.load([off_n, off_k]).T
            else:
                b = b_desc.load([off_k, off_n])
            acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION, max_num_imprecise_acc=MAX_IMPRECISE)
        if SCALE_A + SCALE_B > 0:
            acc = _apply_scales(acc, sa_ptr, sb_ptr, off_m + tl.arange(0, BLOCK_M), off_n + tl.arange(0, BLOCK_N),
                                M, N, SCALE_A, SCALE_B)
        if SPLIT_K > 1:
            c_desc.store([work_id // num_tiles, off_m, off_n], tl.reshape(acc, (1, BLOCK_M, BLOCK_N)))
        elif C_TMA:
            if EPILOGUE_SUBTILE:
                halves = tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1))
                c0, c1 = tl.split(halves)
                c_desc.store([off_m, off_n], c0.to(c_ptr.dtype.element_ty))
                c_desc.store([off_m, off_n + BLOCK_N // 2], c1.to(c_ptr.dtype.element_ty))
            else:
                c_desc.store([off_m, off_n], acc.to(c_ptr.dtype.element_ty))
        else:
            offs_m = off_m + tl.arange(0, BLOCK_M)
            offs_n = off_n + tl.arange(0, BLOCK_N)
            c_ptrs = c_ptr + offs_m[:, None].to(tl.int64) * stride_c + offs_n[None, :]
            tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


# --------------------------------------------------------------------------- size-aware choice
#: Largest split of K, and the fewest K tiles a split keeps (shorter slices cost more in
#: partial-sum traffic and prologue/epilogue than they win in occupancy).
MAX_SPLIT_K = 16
MIN_K_TILES_PER_SPLIT = 4

#: Assumed FLOP per byte an SM sustains between its tensor cores and operand traffic from L2
#: (H100/H200: ~7.5 TFLOP/s dense 16-bit per SM against ~90 GB/s of L2 bandwidth per SM);
#: a model constant, not a measurement.  Only the ratio matters to the choice.
SM_FLOP_PER_BYTE = 80.0


def split_candidates(cfg: MatmulConfig) -> bool:
    """Whether ``cfg``'s tile takes split-K variants: tiles up to 128x128 (a problem small
    enough to need split-K is better served by more, smaller tiles than 128x256), not
    warp-specialized (Triton 3.9 fails to compile a warp-specialized loop feeding the 3-D
    descriptor store of the partial sums)."""
    return cfg.BLOCK_M * cfg.BLOCK_N <= 128 * 128 and not cfg.WARP_SPECIALIZE and cfg.SPLIT_K == 1


def predicted_time(cfg: MatmulConfig, M: int, N: int, K: int, n_sms: int, in_bytes: int = 2,
                   batch: int = 1) -> float:
    """Model time of a launch of ``cfg`` (arbitrary units, for ranking configurations only).

    Work is split into ``tiles * SPLIT_K`` items run in waves of ``n_sms``; an item costs
    ``max(FLOP, bytes * SM_FLOP_PER_BYTE)`` of its tile (padded to the tile: ragged edges are
    wasted work), and split-K adds the fp32 partial sums written and read back once.  This is
    the size-aware default (``FLOPSCALE_AUTOTUNE=0``, torch.compile traces, first launch
    before tuning): a 768x768 weight gradient over 65536 tokens gets 128x128 tiles in
    6 slices of K instead of 18 tiles of 128x256 leaving 114 of 132 SMs idle."""
    s = cfg.SPLIT_K
    tiles = -(-M // cfg.BLOCK_M) * -(-N // cfg.BLOCK_N) * batch
    k_tiles = -(-K // cfg.BLOCK_K)
    k_len = -(-k_tiles // s) * cfg.BLOCK_K
    item = max(2.0 * cfg.BLOCK_M * cfg.BLOCK_N * k_len,
               (cfg.BLOCK_M + cfg.BLOCK_N) * k_len * in_bytes * SM_FLOP_PER_BYTE)
    waves = -(-(tiles * s) // n_sms)
    t = waves * item
    if s > 1:  # partial sums: written by the kernel, read by the reduction, spread over all SMs
        t += 2 * 4 * s * M * N * batch * SM_FLOP_PER_BYTE / n_sms
    return t


def with_splits(configs: "tuple[MatmulConfig, ...]", M: int, N: int, K: int, n_sms: int,
                in_bytes: int = 2) -> tuple[MatmulConfig, ...]:
    """``configs`` plus, for problems too small to fill ``n_sms`` with tiles, each eligible
    tile's best split of K by :func:`predicted_time` (only splits that keep at least
    ``MIN_K_TILES_PER_SPLIT`` K tiles each)."""
    out = list(configs)
    for cfg in configs:
        if not split_candidates(cfg):
            continue
        tiles = -(-M // cfg.BLOCK_M) * -(-N // cfg.BLOCK_N)
        k_tiles = -(-K // cfg.BLOCK_K)
        if tiles >= n_sms or k_tiles < 2 * MIN_K_TILES_PER_SPLIT:
            continue
        splits = [replace(cfg, SPLIT_K=sk) for sk in range(2, MAX_SPLIT_K + 1)
                  if k_tiles // sk >= MIN_K_TILES_PER_SPLIT]
        if splits:
            best = min(splits, key=lambda c: predicted_time(c, M, N, K, n_sms, in_bytes))
            if predicted_time(best, M, N, K, n_sms, in_bytes) < predicted_time(cfg, M, N, K, n_sms, in_bytes):
                out.append(best)
    return tuple(out)


def pick(configs: "tuple[MatmulConfig, ...]", M: int, N: int, K: int, n_sms: int, in_bytes: int = 2,
         batch: int = 1) -> MatmulConfig:
    """The configuration :func:`predicted_time` ranks first (ties: the earlier, larger tile)."""
    return min(configs, key=lambda c: predicted_time(c, M, N, K, n_sms, in_bytes, batch))


# --------------------------------------------------------------------------- the wide tuning space
#: Tile shapes and pipeline options of the wide sm_90 tuning space (``FLOPSCALE_AUTOTUNE=wide``),
#: by dtype family: (BLOCK_M, BLOCK_N, BLOCK_K) values.
_WIDE_TILES = {
    "16": ((64, 128), (64, 128, 256), (64, 128)),
    "32": ((64, 128), (64, 128, 256), (32, 64)),
    "8": ((64, 128), (64, 128, 256), (128, 256)),
}
#: Accumulator registers per thread above which a tile spills (fp32, BM*BN / threads); a
#: warp-specialized consumer gets registers from the producer (setmaxnreg) and may hold more.
MAX_ACC_REGS = 128


def tuning_space(family: str, smem_limit: int, in_bytes: int, out_bytes: int) -> tuple[MatmulConfig, ...]:
    """The wide sm_90 TMA tuning space, pruned by models instead of by trying: every tile of
    ``_WIDE_TILES`` x 4 or 8 warps x 3-5 stages x epilogue subtiling x warp specialization,
    kept when it fits ``smem_limit`` by :func:`smem_bytes` (1 KiB spare), when its fp32
    accumulator fits ``MAX_ACC_REGS`` registers per thread (twice that when warp-specialized),
    when 8 warps have a 128x128 tile or more to share, when warp specialization is asked at 4
    warps only (Triton drops it at 8; ``flopscale inspect`` shows it), and when a subtiled
    epilogue halves at least 128 columns.  On sm_90 (227 KiB) 87 of 288 combinations remain
    for each dtype family.  Used when ``FLOPSCALE_AUTOTUNE=wide`` (tuning on a GPU only)."""
    bms, bns, bks = _WIDE_TILES[family]
    out = []
    for bm in bms:
        for bn in bns:
            for bk in bks:
                for warps in (4, 8):
                    for sub in (False, True):
                        for ws in (False, True):
                            for stages in (3, 4, 5):
                                cfg = MatmulConfig(bm, bn, bk, 8, num_warps=warps, num_stages=stages,
                                                   EPILOGUE_SUBTILE=sub, WARP_SPECIALIZE=ws)
                                if _wide_ok(cfg, smem_limit, in_bytes, out_bytes):
                                    out.append(cfg)
    return tuple(out)


def _wide_ok(cfg: MatmulConfig, smem_limit: int, in_bytes: int, out_bytes: int) -> bool:
    if smem_bytes(cfg, in_bytes, out_bytes, tma=True) > smem_limit - 1024:
        return False
    acc = cfg.BLOCK_M * cfg.BLOCK_N // (32 * cfg.num_warps)
    if acc > MAX_ACC_REGS * (2 if cfg.WARP_SPECIALIZE else 1):
        return False
    if cfg.num_warps == 8 and cfg.BLOCK_M * cfg.BLOCK_N < 128 * 128:
        return False
    if cfg.WARP_SPECIALIZE and cfg.num_warps != 4:
        return False
    return not (cfg.EPILOGUE_SUBTILE and cfg.BLOCK_N < 128)


# --------------------------------------------------------------------------- offline inspection
_TL_NAME = {"fp16": "fp16", "bf16": "bf16", "fp32": "fp32", "fp8": "fp8e4nv"}
_FAMILY = {"fp16": "16", "bf16": "16", "fp32": "32", "fp8": "8"}
_OUT = {"fp16": "fp16", "bf16": "bf16", "fp32": "fp32", "fp8": "bf16"}


def inspect_specs(capability: int = 90) -> list:
    """Every shipped configuration of both kernels as ``kernels.inspect.KernelSpec`` objects,
    specialised as a typical launch is (16-byte aligned pointers and strides, unit inner
    strides), for a GPU of compute capability ``capability`` (e.g. 90)."""
    major = capability // 10
    specs = []
    for dt in ("bf16", "fp16", "fp32", "fp8"):
        if dt == "fp8" and capability < 89:
            continue
        family = _FAMILY[dt]
        ab, out = "*" + _TL_NAME[dt], "*" + _TL_NAME[_OUT[dt]]
        precision = "tf32"  # fp32 ships as tf32 (the tensor-core path); ieee fp32 uses FMA
        for base in configs_for(family, major):
            variants = [base]
            if split_candidates(base):
                variants.append(replace(base, SPLIT_K=INSPECT_SPLIT_K))
            for cfg in variants:
                specs.extend(_specs_for(dt, cfg, major, ab, out, precision))
    return specs


def _fp8_meta(dt: str, cfg: MatmulConfig) -> dict:
    """fp8 ships row-wise scales on both operands (the heaviest epilogue) with the fp32
    accumulator promoted once per K tile; other dtypes have neither."""
    if dt == "fp8":
        return {"SCALE_A": 2, "SCALE_B": 2, "MAX_IMPRECISE": cfg.BLOCK_K}
    return {"SCALE_A": 0, "SCALE_B": 0, "MAX_IMPRECISE": None}


#: The split of K compiled by ``inspect`` for split-K configurations (the code does not
#: depend on the value beyond one division).
INSPECT_SPLIT_K = 4


def _specs_for(dt: str, cfg: MatmulConfig, major: int, ab: str, out: str, precision: str) -> list:
    specs = []
    split = cfg.SPLIT_K > 1
    c_ty = "*fp32" if split else out  # split-K writes fp32 partial sums
    if cfg.tma_only:
        return _tma_specs(dt, cfg, major, ab, c_ty, precision, split)
    # pointer kernel, row-major A and B (stride_ak = stride_bn = stride_cn = 1)
    sig = {
        "a_ptr": ab, "b_ptr": ab, "c_ptr": c_ty, "sa_ptr": "*fp32", "sb_ptr": "*fp32",
        "M": "i32", "N": "i32", "K": "i32",
        "stride_ab": "i32", "stride_am": "i32", "stride_ak": "constexpr",
        "stride_bb": "i32", "stride_bk": "i32", "stride_bn": "constexpr",
        "stride_cb": "i32", "stride_cm": "i32", "stride_cn": "constexpr", "stride_cs": "i32",
        "BLOCK_M": "constexpr", "BLOCK_N": "constexpr", "BLOCK_K": "constexpr",
        "GROUP_M": "constexpr", "SPLIT_K": "constexpr", "SCALE_A": "constexpr", "SCALE_B": "constexpr",
        "MAX_IMPRECISE": "constexpr", "INPUT_PRECISION": "constexpr",
    }
    const = {"stride_ak": 1, "stride_bn": 1, "stride_cn": 1, **cfg.meta(), **_fp8_meta(dt, cfg),
             "INPUT_PRECISION": precision}
    specs.append(
        KernelSpec(
            kernel=f"matmul[{dt}]", config=cfg.name, fn=matmul_kernel, signature=sig, constexprs=const,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages, tensor_core=True,
            aligned=("a_ptr", "b_ptr", "c_ptr", "M", "N", "K", "stride_ab", "stride_am",
                     "stride_bb", "stride_bk", "stride_cb", "stride_cm", "stride_cs"),
        )
    )
    return specs + _tma_specs(dt, cfg, major, ab, c_ty, precision, split)


def _tma_specs(dt: str, cfg: MatmulConfig, major: int, ab: str, c_ty: str, precision: str, split: bool) -> list:
    specs: list = []
    if major < 9 or not HAS_TMA:
        return specs
    sig = {
        "a_ptr": ab, "b_ptr": ab, "c_ptr": c_ty, "sa_ptr": "*fp32", "sb_ptr": "*fp32",
        "M": "i32", "N": "i32", "K": "i32",
        "stride_a": "i32", "stride_b": "i32", "stride_c": "i32", "stride_cs": "i32",
        "BLOCK_M": "constexpr", "BLOCK_N": "constexpr", "BLOCK_K": "constexpr",
        "GROUP_M": "constexpr", "NUM_SMS": "constexpr", "A_T": "constexpr", "B_T": "constexpr",
        "SPLIT_K": "constexpr", "C_TMA": "constexpr",
        "EPILOGUE_SUBTILE": "constexpr", "WARP_SPECIALIZE": "constexpr", "FLATTEN": "constexpr",
        "SCALE_A": "constexpr", "SCALE_B": "constexpr", "MAX_IMPRECISE": "constexpr",
        "INPUT_PRECISION": "constexpr",
    }
    # fp8 wgmma wants K-major B: ship the (A row-major, B^T row-major) layout for fp8.
    # C_TMA False: the output's rows are not 16-byte aligned (N = 50257), stored by pointer;
    # its row stride and N are then not divisible by 16 either.
    c_layouts = (True,) if split else (True, False)
    for c_tma in c_layouts:
        const = {**cfg.meta(), "NUM_SMS": 132, "A_T": False, "B_T": dt == "fp8", "C_TMA": c_tma,
                 **cfg.tma_meta(), **_fp8_meta(dt, cfg), "INPUT_PRECISION": precision}
        aligned = ("a_ptr", "b_ptr", "c_ptr", "M", "K", "stride_a", "stride_b", "stride_cs")
        aligned += ("N", "stride_c") if c_tma else ()
        specs.append(
            KernelSpec(
                kernel=f"matmul_tma[{dt}]" if c_tma else f"matmul_tma_cptr[{dt}]", config=cfg.name,
                fn=matmul_tma_kernel, signature=sig, constexprs=const, num_warps=cfg.num_warps,
                num_stages=cfg.num_stages, tensor_core=True, aligned=aligned,
            )
        )
    return specs
