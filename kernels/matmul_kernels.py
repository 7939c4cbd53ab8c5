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

    @property
    def name(self) -> str:
        return (
            f"BM{self.BLOCK_M}_BN{self.BLOCK_N}_BK{self.BLOCK_K}_G{self.GROUP_M}"
            f"_w{self.num_warps}_s{self.num_stages}"
        )

    def meta(self) -> dict:
        return {"BLOCK_M": self.BLOCK_M, "BLOCK_N": self.BLOCK_N, "BLOCK_K": self.BLOCK_K, "GROUP_M": self.GROUP_M}


# Shipped configurations, by dtype family ("16" = fp16/bf16, "32" = fp32/tf32, "8" = fp8).
# Hopper: large 128-row tiles for wgmma (one warpgroup per 64 rows), 3-4 TMA stages.
HOPPER_CONFIGS: dict[str, tuple[MatmulConfig, ...]] = {
    "16": (
        MatmulConfig(128, 256, 64, 8, num_warps=8, num_stages=3),
        MatmulConfig(128, 128, 64, 8, num_warps=8, num_stages=4),
        MatmulConfig(128, 128, 64, 8, num_warps=4, num_stages=4),
        MatmulConfig(64, 128, 64, 8, num_warps=4, num_stages=4),
    ),
    "32": (
        MatmulConfig(128, 128, 32, 8, num_warps=8, num_stages=3),
        MatmulConfig(64, 128, 32, 8, num_warps=4, num_stages=4),
    ),
    "8": (
        MatmulConfig(128, 256, 128, 8, num_warps=8, num_stages=3),
        MatmulConfig(128, 128, 128, 8, num_warps=8, num_stages=4),
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
    shared memory for the descriptor store.  Checked against ``flopscale inspect`` on sm_90
    (Triton 3.6 and 3.9): exact for 16-bit pointer launches, exact within the few barrier
    bytes for TMA, an over-estimate for fp8/fp32 pointer launches."""
    ab = cfg.num_stages * (cfg.BLOCK_M * cfg.BLOCK_K + cfg.BLOCK_K * cfg.BLOCK_N) * in_bytes
    return ab + (cfg.BLOCK_M * cfg.BLOCK_N * out_bytes if tma else 0)


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
def matmul_kernel(
    a_ptr, b_ptr, c_ptr,
    M, N, K,
    stride_ab, stride_am, stride_ak,
    stride_bb, stride_bk, stride_bn,
    stride_cb, stride_cm, stride_cn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """C[b] = A[b] @ B[b]; grid = (cdiv(M, BLOCK_M) * cdiv(N, BLOCK_N), batch)."""
    pid = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pid_m, pid_n = _grouped_tile(pid, num_pid_m, num_pid_n, GROUP_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    # masked, not wrapped, edges: a wrapped index hinted as contiguous could make a vectorised
    # load run past the end of a column-major operand
    in_m = offs_m[:, None] < M
    in_n = offs_n[None, :] < N
    a_ptrs = a_ptr + batch * stride_ab + offs_m[:, None].to(tl.int64) * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + batch * stride_bb + offs_k[:, None] * stride_bk + offs_n[None, :].to(tl.int64) * stride_bn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - k * BLOCK_K
        a = tl.load(a_ptrs, mask=in_m & (offs_k[None, :] < k_left), other=0.0)
        b = tl.load(b_ptrs, mask=(offs_k[:, None] < k_left) & in_n, other=0.0)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    c = acc.to(c_ptr.dtype.element_ty)
    c_ptrs = c_ptr + batch * stride_cb + offs_m[:, None].to(tl.int64) * stride_cm + offs_n[None, :].to(tl.int64) * stride_cn
    tl.store(c_ptrs, c, mask=in_m & in_n)


@triton.jit
def matmul_tma_kernel(
    a_ptr, b_ptr, c_ptr,
    M, N, K,
    stride_a, stride_b, stride_c,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    NUM_SMS: tl.constexpr, A_T: tl.constexpr, B_T: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """Persistent TMA matmul, 2-D: C[M, N] = A[M, K] @ B[K, N]; grid = (min(NUM_SMS, tiles),).

    ``stride_a`` is the leading (non-unit) stride of A's storage: of ``A[M, K]`` when
    ``A_T`` is false, of the column-major storage ``A^T[K, M]`` when true; same for B
    (``B[K, N]`` or ``B^T[N, K]``) and C (``C[M, N]``, always row-major).
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
    c_desc = tl.make_tensor_descriptor(c_ptr, shape=[M, N], strides=[stride_c, 1], block_shape=[BLOCK_M, BLOCK_N])

    for tile_id in tl.range(start_pid, num_tiles, NUM_SMS):
        pid_m, pid_n = _grouped_tile(tile_id, num_pid_m, num_pid_n, GROUP_M)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for ki in range(k_tiles):
            off_k = ki * BLOCK_K
            if A_T:
                a = a_desc.load([off_k, off_m]).T
            else:
                a = a_desc.load([off_m, off_k])
            if B_T:
                b = b_desc.load([off_n, off_k]).T
            else:
                b = b_desc.load([off_k, off_n])
            acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
        c_desc.store([off_m, off_n], acc.to(c_ptr.dtype.element_ty))


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
        for cfg in configs_for(family, major):
            # pointer kernel, row-major A and B (stride_ak = stride_bn = stride_cn = 1)
            sig = {
                "a_ptr": ab, "b_ptr": ab, "c_ptr": out,
                "M": "i32", "N": "i32", "K": "i32",
                "stride_ab": "i32", "stride_am": "i32", "stride_ak": "constexpr",
                "stride_bb": "i32", "stride_bk": "i32", "stride_bn": "constexpr",
                "stride_cb": "i32", "stride_cm": "i32", "stride_cn": "constexpr",
                "BLOCK_M": "constexpr", "BLOCK_N": "constexpr", "BLOCK_K": "constexpr",
                "GROUP_M": "constexpr", "INPUT_PRECISION": "constexpr",
            }
            const = {"stride_ak": 1, "stride_bn": 1, "stride_cn": 1, **cfg.meta(), "INPUT_PRECISION": precision}
            specs.append(
                KernelSpec(
                    kernel=f"matmul[{dt}]", config=cfg.name, fn=matmul_kernel, signature=sig, constexprs=const,
                    num_warps=cfg.num_warps, num_stages=cfg.num_stages, tensor_core=True,
                    aligned=("a_ptr", "b_ptr", "c_ptr", "M", "N", "K", "stride_ab", "stride_am",
                             "stride_bb", "stride_bk", "stride_cb", "stride_cm"),
                )
            )
            if major >= 9 and HAS_TMA:
                sig = {
                    "a_ptr": ab, "b_ptr": ab, "c_ptr": out,
                    "M": "i32", "N": "i32", "K": "i32",
                    "stride_a": "i32", "stride_b": "i32", "stride_c": "i32",
                    "BLOCK_M": "constexpr", "BLOCK_N": "constexpr", "BLOCK_K": "constexpr",
                    "GROUP_M": "constexpr", "NUM_SMS": "constexpr", "A_T": "constexpr", "B_T": "constexpr",
                    "INPUT_PRECISION": "constexpr",
                }
                # fp8 wgmma wants K-major B: ship the (A row-major, B^T row-major) layout for fp8
                const = {**cfg.meta(), "NUM_SMS": 132, "A_T": False, "B_T": dt == "fp8", "INPUT_PRECISION": precision}
                specs.append(
                    KernelSpec(
                        kernel=f"matmul_tma[{dt}]", config=cfg.name, fn=matmul_tma_kernel, signature=sig,
                        constexprs=const, num_warps=cfg.num_warps, num_stages=cfg.num_stages, tensor_core=True,
                        aligned=("a_ptr", "b_ptr", "c_ptr", "M", "N", "K", "stride_a", "stride_b", "stride_c"),
                    )
                )
    return specs
