"""``kernels.matmul``: dense matmul as the ``flopscale::matmul`` custom op.

    kernels.matmul(a, b, out_dtype=None)     # a [..., M, K] @ b [K, N] or b [..., K, N]
    kernels.matmul_reference(a, b, out_dtype=None)

* Any sizes >= 1 (ragged edges are masked), any strides (transposed and non-contiguous
  inputs are read in place), batch dimensions broadcast as in ``torch.matmul``.
* dtypes: fp16, bf16, fp32 (tf32 tensor cores only when ``torch.backends.cuda.matmul.allow_tf32``
  is True, exactly like ``torch.matmul``), and fp8 e4m3 (``torch.float8_e4m3fn``) on GPUs of
  compute capability 8.9 or newer.  Accumulation is always fp32.  The output has the input
  dtype unless ``out_dtype`` (fp16, bf16 or fp32) says otherwise; fp8 inputs give bf16 by
  default.
* Autograd: the backward runs the same kernel (``grad @ b^T`` and ``a^T @ grad``), reading the
  transposed operands in place.
* Kernel choice: on sm_90+ with a Triton that has tensor descriptors, 2-D problems (batches of
  ``a`` against a 2-D ``b`` are folded into M) run the persistent TMA kernel.  An operand
  whose rows do not start on 16-byte boundaries (TMA's rule; e.g. logits with a vocabulary of
  50257) is first copied into storage with a padded leading stride (one pass over it); an
  output with such rows is stored by masked pointer stores from the same kernel.  Batched
  ``b``, GPUs before sm_90 and everything traced by ``torch.compile`` (no TMA scratch
  allocator there) run the pointer kernel.
* Split-K: when a problem has fewer output tiles than the GPU has SMs and a long K (weight
  gradients of d_model <= 1024 models), candidates that split K into slices are added; each
  slice writes fp32 partial sums and one reduction in a fixed order adds them (deterministic).
* Configuration: tuned once per (kernel, dtype, power-of-two bucket of M, N, K, batch) and
  remembered on disk in ``$FLOPSCALE_CACHE_DIR`` (default ``~/.cache/flopscale``), file
  ``matmul-configs.json`` (several processes may tune at once: writes merge under a file
  lock).  Without tuning (``FLOPSCALE_AUTOTUNE=0``, torch.compile traces, the interpreter) a
  size-aware model picks (``matmul_kernels.predicted_time``: waves of tiles over the SMs,
  split-K included), not the first candidate.  Under the Triton interpreter one tile
  configuration (plus its split-K variants) is used and nothing is tuned or written; dtypes
  the interpreter multiplies wrongly (bf16) are refused with a ``ValueError``.
* Which path ran: ``last_path()`` / ``PATH_COUNTS`` after a launch, ``matmul_path(a, b)``
  without one (e.g. ``tma+c-by-pointer [BM128_BN256_...]``, ``tma+padded-a``,
  ``pointer+split-k6``).

Cost (``kernels.cost_of`` and ``FlopCounterMode`` agree): ``flops = executed_flops =
2*batch*M*N*K`` FLOP, ``bytes`` = each operand read once (its own elements: a broadcast ``b``
counts once) + the output written once, in bytes (an aligned copy of an operand and split-K
partial sums are extra traffic, not counted); ``detail = {"path:<name>": flops}`` names the
path that runs them (``matmul_path``).
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import triton
from torch.library import triton_op
from torch.utils.flop_counter import register_flop_formula

from . import matmul_kernels as mk
from ._cost import Cost, peak_dtype_of, register_cost
from ._runtime import cache_dir, check_runnable, interpreter_on, wrap_triton

__all__ = ["matmul", "matmul_reference", "scaled_matmul", "matmul_path", "MatmulPath", "last_path", "PATH_COUNTS", "cache_dir"]

OP = "flopscale::matmul"
SCALED_OP = "flopscale::scaled_matmul"

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_FP8 = getattr(torch, "float8_e4m3fn", None)
_INPUT_DTYPES = _FLOAT_DTYPES + ((_FP8,) if _FP8 is not None else ())
_FAMILY = {torch.float16: "16", torch.bfloat16: "16", torch.float32: "32"}
if _FP8 is not None:
    _FAMILY[_FP8] = "8"


# --------------------------------------------------------------------------- cost
def _batch_shape(a_shape: Sequence[int], b_shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(torch.broadcast_shapes(tuple(a_shape[:-2]), tuple(b_shape[:-2])))


def matmul_flops(a_shape: Sequence[int], b_shape: Sequence[int]) -> int:
    """Model FLOP of ``a @ b``: ``2 * batch * M * N * K``."""
    M, K = a_shape[-2], a_shape[-1]
    N = b_shape[-1]
    return 2 * math.prod(_batch_shape(a_shape, b_shape)) * M * N * K


def _out_dtype_of(dtype: torch.dtype, out_dtype: Optional[torch.dtype]) -> torch.dtype:
    if out_dtype is not None:
        return out_dtype
    return torch.bfloat16 if dtype == _FP8 else dtype


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


# --------------------------------------------------------------------------- validation
def _validate(a: Any, b: Any, out_dtype: Any) -> None:
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise TypeError(f"matmul: a and b must be tensors, got {type(a).__name__} and {type(b).__name__}")
    if a.dim() < 2 or b.dim() < 2:
        raise ValueError(f"matmul: a must be [..., M, K] and b [K, N] or [..., K, N], got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"matmul: inner dimensions differ: a {tuple(a.shape)} has K={a.shape[-1]}, b {tuple(b.shape)} has K={b.shape[-2]}")
    try:
        _batch_shape(a.shape, b.shape)
    except RuntimeError:
        raise ValueError(f"matmul: batch dimensions do not broadcast: a {tuple(a.shape)}, b {tuple(b.shape)}") from None
    if a.dtype != b.dtype:
        raise TypeError(f"matmul: a and b must have the same dtype, got {a.dtype} and {b.dtype}")
    if a.dtype not in _INPUT_DTYPES:
        names = ", ".join(str(d) for d in _INPUT_DTYPES)
        raise TypeError(f"matmul: unsupported dtype {a.dtype}; supported: {names}")
    if out_dtype is not None and out_dtype not in _FLOAT_DTYPES:
        raise TypeError(f"matmul: out_dtype must be torch.float16, torch.bfloat16 or torch.float32, got {out_dtype}")
    check_runnable(a, b, op="matmul", dtypes=(a.dtype,))
    if a.dtype == _FP8 and a.device.type == "cuda":
        cap = torch.cuda.get_device_capability(a.device)
        if cap < (8, 9):
            raise ValueError(f"matmul: fp8 e4m3 needs compute capability 8.9 or newer, {a.device} has {cap[0]}.{cap[1]}")


# --------------------------------------------------------------------------- configuration choice
# (the tuning machinery lives in matmul_tuning; these names stay importable from here)
from .matmul_tuning import ConfigCache, _autotune_setting, _bucket, choose_config  # noqa: E402


# --------------------------------------------------------------------------- launch helpers
def ensure_tma_allocator(device: torch.device) -> None:
    """TMA descriptors built on the device need a scratch allocator (set per thread: the
    allocator lives in a ContextVar and autograd may run backward on another thread)."""

    def alloc(size: int, alignment: int, stream: Optional[int]) -> torch.Tensor:
        return torch.empty(size, dtype=torch.int8, device=device)

    triton.set_allocator(alloc)


#: CUDA's limit on grid dimensions y and z (x allows 2**31 - 1).
MAX_GRID_YZ = 65535

_NUM_SMS: dict[int, int] = {}


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 3  # interpreter: a few persistent programs so each loops over several tiles
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _NUM_SMS:
        _NUM_SMS[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _NUM_SMS[idx]


def _tma_major(t: torch.Tensor) -> tuple[bool, int] | None:
    """For a 2-D operand: (transposed?, leading stride) if TMA can read it, else None."""
    es = t.element_size()
    if (t.storage_offset() * es) % 16:
        return None
    r, c = t.shape
    s0, s1 = t.stride()
    if s1 == 1 and s0 >= c and (s0 * es) % 16 == 0:
        return False, s0
    if s0 == 1 and s1 >= r and (s1 * es) % 16 == 0:
        return True, s1
    return None


def _tma_supported(device: torch.device) -> bool:
    if not mk.HAS_TMA:
        return False
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 9
    return False  # interpreter: only when asked for explicitly (tests)


def _is_fake(t: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import is_fake

    return is_fake(t)


def _input_precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


_SMEM_OPTIN = {9: 232448, 8: 166912}  # bytes per block by major capability (sm_86/89: 101376)


def _smem_limit(device: torch.device) -> int:
    props = torch.cuda.get_device_properties(device)
    limit = getattr(props, "shared_memory_per_block_optin", None)
    if limit:
        return int(limit)
    if (props.major, props.minor) in ((8, 6), (8, 7), (8, 9)):
        return 101376
    return _SMEM_OPTIN.get(props.major, 101376)


def _candidates(family: str, device: torch.device, M: int, N: int, K: int, in_bytes: int = 2, out_bytes: int = 2,
                tma: bool = False) -> tuple[mk.MatmulConfig, ...]:
    """Shipped tiles that fit shared memory and the problem, plus split-K variants when the
    problem has too few tiles to fill the GPU (``mk.with_splits``)."""
    n_sms = _num_sms(device)
    if device.type != "cuda":
        return mk.with_splits((mk.INTERPRETER_CONFIG,), M, N, K, n_sms, in_bytes)
    limit = _smem_limit(device)
    if tma and _autotune_setting() == "wide":
        configs = mk.tuning_space(family, limit, in_bytes, out_bytes)
    else:
        configs = tuple(c for c in mk.configs_for(family, torch.cuda.get_device_capability(device)[0])
                        if tma or not c.tma_only)
    # fit the pipeline to shared memory: an fp32 output staged for the TMA store needs twice
    # the bytes of a 16-bit one (the 128x256 tile would not launch at 3 stages)
    fitted = [mk.fit_smem(c, in_bytes, out_bytes, tma, limit) for c in configs]
    configs = tuple(c for c in fitted if c is not None) or configs[-1:]
    # drop tiles much larger than the problem (they only waste work); keep at least one
    fit = tuple(c for c in configs if c.BLOCK_M <= max(64, _bucket(M)) and c.BLOCK_N <= max(64, _bucket(N)))
    configs = fit or (min(configs, key=lambda c: c.BLOCK_M * c.BLOCK_N),)
    with_split = mk.with_splits(configs, M, N, K, n_sms, in_bytes)
    # split-K stages fp32 partial sums for the TMA store
    split = [mk.fit_smem(c, in_bytes, 4, tma, limit) for c in with_split[len(configs):]]
    return configs + tuple(c for c in split if c is not None)


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def _aligned_copy(t: torch.Tensor) -> torch.Tensor:
    """A copy of 2-D ``t`` whose leading stride is padded to 16 bytes (same shape and
    values, same row- or column-major order), so TMA can read it."""
    r, c = t.shape
    align = max(1, 16 // t.element_size())
    if t.stride(0) == 1 and t.stride(1) != 1:  # column-major: pad the column stride
        buf = torch.empty(c, _round_up(r, align), dtype=t.dtype, device=t.device)[:, :r].mT
    else:
        buf = torch.empty(r, _round_up(c, align), dtype=t.dtype, device=t.device)[:, :c]
    return buf.copy_(t)


def _reduce_into(c: torch.Tensor, partials: torch.Tensor) -> None:
    """``c = sum of the fp32 partial products over dim 0`` (one pass, a fixed order: the
    result does not depend on which program finished first)."""
    if c.dtype == torch.float32:
        torch.sum(partials, dim=0, out=c)
    else:
        c.copy_(partials.sum(dim=0))


@dataclass(frozen=True)
class _Scales:
    """fp32 dequantisation scales applied to the accumulator: ``a`` one value or one per row
    of A, ``b`` one value or one per column of B (``torch._scaled_mm``'s forms)."""

    a: Optional[torch.Tensor] = None
    b: Optional[torch.Tensor] = None

    def args(self, device: torch.device) -> dict:
        dummy = None
        if self.a is None or self.b is None:
            dummy = torch.empty(1, dtype=torch.float32, device=device)
        mode = lambda t: 0 if t is None else (1 if t.numel() == 1 else 2)  # noqa: E731
        return {"sa_ptr": self.a if self.a is not None else dummy, "sb_ptr": self.b if self.b is not None else dummy,
                "SCALE_A": mode(self.a), "SCALE_B": mode(self.b)}


_NO_SCALES = _Scales()


def _max_imprecise(dtype: torch.dtype, cfg: mk.MatmulConfig, device: torch.device) -> Optional[int]:
    """fp8: promote the tensor cores' reduced-precision partial sums into the fp32
    accumulator once per K tile (Triton's sm_90 default never does, which loses precision
    over long K); other dtypes accumulate in fp32 anyway."""
    if dtype != _FP8 or device.type != "cuda" or torch.cuda.get_device_capability(device)[0] < 9:
        return None  # only sm_90's wgmma accumulates fp8 imprecisely; elsewhere this is a no-op
    return cfg.BLOCK_K


def _launch_pointer(a3: torch.Tensor, b3: torch.Tensor, c3: torch.Tensor, cfg: mk.MatmulConfig, precision: str,
                    scales: _Scales = _NO_SCALES) -> None:
    Bt, M, K = a3.shape
    N = b3.shape[-1]
    if cfg.SPLIT_K > 1:  # fp32 partial sums per slice of K, reduced in a fixed order
        ws = torch.empty((cfg.SPLIT_K, Bt, M, N), dtype=torch.float32, device=a3.device)
        _launch_pointer_into(a3, b3, ws, cfg, precision, scales)
        _reduce_into(c3, ws)
        return
    _launch_pointer_into(a3, b3, c3.unsqueeze(0), cfg, precision, scales)


def _launch_pointer_into(a3: torch.Tensor, b3: torch.Tensor, c4: torch.Tensor, cfg: mk.MatmulConfig,
                         precision: str, scales: _Scales = _NO_SCALES) -> None:
    Bt, M, K = a3.shape
    N = b3.shape[-1]
    tiles = triton.cdiv(M, cfg.BLOCK_M) * triton.cdiv(N, cfg.BLOCK_N)
    # the batch is grid axis 1, at most MAX_GRID_YZ programs: larger batches launch in slices
    for z0 in range(0, Bt, MAX_GRID_YZ):
        z1 = min(Bt, z0 + MAX_GRID_YZ)
        whole = (z0, z1) == (0, Bt)
        a_, b_, c_ = (a3, b3, c4) if whole else (a3[z0:z1], b3[z0:z1], c4[:, z0:z1])
        wrap_triton(mk.matmul_kernel)[(tiles, z1 - z0, cfg.SPLIT_K)](
            a_, b_, c_, **scales.args(a3.device), M=M, N=N, K=K,
            stride_ab=a_.stride(0), stride_am=a_.stride(1), stride_ak=a_.stride(2),
            stride_bb=b_.stride(0), stride_bk=b_.stride(1), stride_bn=b_.stride(2),
            stride_cb=c_.stride(1), stride_cm=c_.stride(2), stride_cn=c_.stride(3), stride_cs=c_.stride(0),
            BLOCK_M=cfg.BLOCK_M, BLOCK_N=cfg.BLOCK_N, BLOCK_K=cfg.BLOCK_K, GROUP_M=cfg.GROUP_M,
            SPLIT_K=cfg.SPLIT_K, MAX_IMPRECISE=_max_imprecise(a3.dtype, cfg, a3.device), INPUT_PRECISION=precision,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )


def _launch_tma(a2: torch.Tensor, b2: torch.Tensor, c2: torch.Tensor, cfg: mk.MatmulConfig, precision: str,
                scales: _Scales = _NO_SCALES) -> None:
    """The persistent TMA kernel on 2-D operands that meet TMA's rules (``_tma_major``);
    ``c2`` may have unaligned rows (stored by pointer then)."""
    M, K = a2.shape
    N = b2.shape[1]
    a_t, sa = _tma_major(a2)  # type: ignore[misc]
    b_t, sb = _tma_major(b2)  # type: ignore[misc]
    ensure_tma_allocator(a2.device)
    n_sms = _num_sms(a2.device)
    tiles = triton.cdiv(M, cfg.BLOCK_M) * triton.cdiv(N, cfg.BLOCK_N)
    grid = (max(1, min(n_sms, tiles * cfg.SPLIT_K)),)
    if cfg.SPLIT_K > 1:
        # workspace rows padded to 16 bytes for its TMA store
        ld = _round_up(N, 4)
        out = torch.empty((cfg.SPLIT_K, M, ld), dtype=torch.float32, device=a2.device)[:, :, :N]
        c_tma, sc, scs = True, ld, M * ld
    else:
        out = c2
        c_tma, sc, scs = _tma_major(c2) == (False, c2.stride(0)), c2.stride(0), 0
    wrap_triton(mk.matmul_tma_kernel)[grid](
        a2, b2, out, **scales.args(a2.device), M=M, N=N, K=K, stride_a=sa, stride_b=sb, stride_c=sc, stride_cs=scs,
        BLOCK_M=cfg.BLOCK_M, BLOCK_N=cfg.BLOCK_N, BLOCK_K=cfg.BLOCK_K, GROUP_M=cfg.GROUP_M,
        NUM_SMS=n_sms, A_T=a_t, B_T=b_t, SPLIT_K=cfg.SPLIT_K, C_TMA=c_tma, **cfg.tma_meta(),
        MAX_IMPRECISE=_max_imprecise(a2.dtype, cfg, a2.device), INPUT_PRECISION=precision,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    if cfg.SPLIT_K > 1:
        _reduce_into(c2, out)


def no_launch(*tensors: torch.Tensor) -> bool:
    """True when the op only has to produce the output's metadata: meta tensors, or fake
    tensors (torch.compile / export tracing) under the Triton interpreter, whose kernels
    ``wrap_triton`` cannot trace (on a GPU the launch is traced into the graph instead)."""
    if any(t.device.type == "meta" for t in tensors):
        return True
    if interpreter_on():
        from torch._subclasses.fake_tensor import is_fake

        if not any(is_fake(t) for t in tensors):
            return False
        if torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.FUNCTIONAL) is not None:
            # AOT / torch.compile tracing would record a graph without the kernel
            raise NotImplementedError(
                "flopscale: torch.compile/export of these ops needs a CUDA GPU; kernels run by the "
                "Triton interpreter cannot be traced"
            )
        return True
    return False


def _new_output(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Allocation of every output (tests replace it to poison outputs with NaN)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _plan(a: torch.Tensor, b: torch.Tensor) -> tuple[tuple[int, ...], torch.Tensor, torch.Tensor]:
    """Batch shape and 3-D views ``a3 [Bt, M, K]``, ``b3 [Bt, K, N]`` (``Bt`` may be 1 with M
    folded: a batch of ``a`` against a broadcast ``b`` becomes one tall 2-D problem)."""
    batch = _batch_shape(a.shape, b.shape)
    M, K = a.shape[-2:]
    N = b.shape[-1]
    b_bcast = all(s == 1 for s in b.shape[:-2]) or all(
        st == 0 or sz == 1 for sz, st in zip(b.shape[:-2], b.stride()[:-2])
    )
    if b_bcast and len(batch) > 0:
        a_full = a.expand(*batch, M, K)
        try:
            a2 = a_full.view(-1, K)  # fold batch into M without copying
        except RuntimeError:
            a2 = None
        if a2 is not None and a2.shape[0] == math.prod(batch) * M:
            b2 = b.reshape(K, N) if b.dim() == 2 else b.expand(*batch, K, N)[(0,) * len(batch)]
            return batch, a2.unsqueeze(0), b2.unsqueeze(0)
    a3 = a.expand(*batch, M, K).reshape(-1, M, K) if batch else a.unsqueeze(0)
    b3 = b.expand(*batch, K, N).reshape(-1, K, N) if batch else b.unsqueeze(0)
    return batch, a3, b3


@dataclass(frozen=True)
class MatmulPath:
    """Which code ran a matmul: ``kernel`` "tma" (persistent TMA kernel) or "pointer";
    ``padded``: operands copied into 16-byte aligned storage first (TMA cannot read rows that
    start unaligned, e.g. 50257 bf16 columns); ``c_store`` "tma" or "pointer" (the TMA
    kernel's output with unaligned rows is stored by pointer); ``split_k``: slices of K
    summed after the kernel (1 = none); ``config``: the tile configuration's name."""

    kernel: str
    padded: tuple[str, ...] = ()
    c_store: str = "pointer"
    split_k: int = 1
    config: str = ""

    @property
    def name(self) -> str:
        parts = [self.kernel]
        if self.kernel == "tma" and self.c_store == "pointer":
            parts.append("c-by-pointer")
        if self.padded:
            parts.append("padded-" + "".join(self.padded))
        if self.split_k > 1:
            parts.append(f"split-k{self.split_k}")
        return "+".join(parts)

    def __str__(self) -> str:
        return f"{self.name} [{self.config}]" if self.config else self.name


#: How many launches took each path (``MatmulPath.name``) in this process; see ``last_path``.
PATH_COUNTS: Counter = Counter()
_LAST_PATH: list[MatmulPath] = []


def last_path() -> MatmulPath | None:
    """The path of the most recent matmul launched in this process (None before any)."""
    return _LAST_PATH[-1] if _LAST_PATH else None


@dataclass
class _Plan:
    batch: tuple[int, ...]
    a3: torch.Tensor
    b3: torch.Tensor
    odt: torch.dtype
    tma: bool
    pad_a: bool
    pad_b: bool
    c_tma: bool
    candidates: tuple[mk.MatmulConfig, ...]
    shape_key: str
    kind: str

    def heuristic(self, candidates: Sequence[mk.MatmulConfig]) -> mk.MatmulConfig:
        Bt, M, K = self.a3.shape
        N = self.b3.shape[-1]
        return mk.pick(tuple(candidates), M, N, K, _num_sms(self.a3.device), self.a3.element_size(), Bt)

    def path(self, cfg: mk.MatmulConfig) -> MatmulPath:
        padded = tuple(n for n, p in (("a", self.pad_a), ("b", self.pad_b)) if p)
        c_store = "tma" if (self.tma and (self.c_tma or cfg.SPLIT_K > 1)) else "pointer"
        return MatmulPath("tma" if self.tma else "pointer", padded, c_store, cfg.SPLIT_K, cfg.name)


def _make_plan(a: torch.Tensor, b: torch.Tensor, out_dtype: Optional[torch.dtype], path: str = "auto",
               config: mk.MatmulConfig | None = None) -> _Plan:
    """Kernel, operand layouts and candidate configurations for ``a @ b`` (no launch)."""
    odt = _out_dtype_of(a.dtype, out_dtype)
    batch, a3, b3 = _plan(a, b)
    Bt, M, K = a3.shape
    N = b3.shape[-1]
    # torch.compile traces (fake tensors) take the pointer kernel: a device-built TMA
    # descriptor needs triton's per-thread scratch allocator, which compiled graphs
    # (and their backward threads) do not set up
    traced = _is_fake(a) or _is_fake(b)
    tma = pad_a = pad_b = c_tma = False
    if path == "tma" or (path == "auto" and not traced and _tma_supported(a.device)):
        tma = Bt == 1
        if path == "tma" and not tma:
            raise ValueError("matmul: the TMA kernel takes 2-D problems (a batch of a against a 2-D b at most)")
        if tma:
            # operands TMA cannot read in place are copied into aligned storage: the copy costs
            # one pass over the operand, the pointer kernel's unaligned loads cost far more
            pad_a, pad_b = _tma_major(a3[0]) is None, _tma_major(b3[0]) is None
            c_tma = (N * _itemsize(odt)) % 16 == 0  # c is fresh and contiguous: rows of N elements
    precision = _input_precision(a.dtype)
    candidates = (config,) if config is not None else _candidates(
        _FAMILY[a.dtype], a.device, M, N, K, a.element_size(), _itemsize(odt), tma)
    # the output dtype is part of the key: it changes the candidates (an fp32 output staged
    # for the TMA store takes fewer pipeline stages) and what is fastest
    shape_key = (f"{a.dtype}->{odt}|{_bucket(M)}x{_bucket(N)}x{_bucket(K)}|b{_bucket(Bt) if Bt > 1 else 1}"
                 f"|{precision}")
    return _Plan(batch, a3, b3, odt, tma, pad_a, pad_b, c_tma, candidates, shape_key,
                 "tma" if tma else "pointer")


def matmul_path(a: torch.Tensor, b: torch.Tensor, out_dtype: Optional[torch.dtype] = None) -> MatmulPath:
    """The path ``matmul(a, b, out_dtype)`` takes on these tensors' device, decided as the op
    decides it (a remembered tuned choice, else the size-aware model), without launching or
    tuning: what a profile reports as "which path ran"."""
    _validate(a, b, out_dtype)
    plan = _make_plan(a, b, out_dtype)
    cfg = choose_config(f"matmul-{plan.kind}", plan.candidates, plan.shape_key, a.device, lambda c: None,
                        (plan.a3, plan.b3), heuristic=plan.heuristic, tune=False)
    return plan.path(cfg)


def _run(a: torch.Tensor, b: torch.Tensor, out_dtype: Optional[torch.dtype], path: str = "auto",
         config: mk.MatmulConfig | None = None, scales: _Scales = _NO_SCALES) -> torch.Tensor:
    """The op body: plan, pick kernel and configuration, launch.  ``path`` in
    {"auto", "tma", "pointer"}; ``config`` overrides the choice (tests); ``scales`` only for
    2-D ``a`` and ``b`` (``scaled_matmul``)."""
    odt = _out_dtype_of(a.dtype, out_dtype)
    batch = _batch_shape(a.shape, b.shape)
    M, K, N = a.shape[-2], a.shape[-1], b.shape[-1]
    c = _new_output((*batch, M, N), odt, a.device)
    if c.numel() == 0:
        return c
    if K == 0:
        return c.zero_()
    if no_launch(a, b):
        return c
    check_runnable(a, b, op="matmul", dtypes=(a.dtype,))  # also when the op is called directly
    plan = _make_plan(a, b, out_dtype, path, config)
    a3, b3 = plan.a3, plan.b3
    Bt, M, K = a3.shape
    c3 = c.view(Bt, M, N)
    precision = _input_precision(a.dtype)
    if plan.tma:
        a2 = _aligned_copy(a3[0]) if plan.pad_a else a3[0]
        b2 = _aligned_copy(b3[0]) if plan.pad_b else b3[0]

    def run(cfg: mk.MatmulConfig) -> None:
        if plan.tma:
            _launch_tma(a2, b2, c3[0], cfg, precision, scales)
        else:
            _launch_pointer(a3, b3, c3, cfg, precision, scales)

    cfg = choose_config(f"matmul-{plan.kind}", plan.candidates, plan.shape_key, a.device, run, (a3, b3),
                        heuristic=plan.heuristic)
    try:
        run(cfg)
    except triton.runtime.errors.OutOfResources:
        # a remembered or heuristic choice that this device cannot launch: the next candidates
        rest = [c for c in plan.candidates if c is not cfg]
        for i, alt in enumerate(rest):
            try:
                run(alt)
                cfg = alt
                break
            except triton.runtime.errors.OutOfResources:
                if i == len(rest) - 1:
                    raise
        else:
            raise
    taken = plan.path(cfg)
    PATH_COUNTS[taken.name] += 1
    _LAST_PATH[:] = [taken]
    return c


# --------------------------------------------------------------------------- the op
@triton_op(OP, mutates_args=())
def _matmul_op(a: torch.Tensor, b: torch.Tensor, out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    return _run(a, b, out_dtype)


def _setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
    a, b, out_dtype = inputs
    ctx.a_shape, ctx.b_shape = a.shape, b.shape
    ctx.a_dtype, ctx.b_dtype = a.dtype, b.dtype
    saved_a = a if ctx.needs_input_grad[1] else None
    saved_b = b if ctx.needs_input_grad[0] else None
    ctx.save_for_backward(saved_a, saved_b)


def _compute_dtype(grad: torch.Tensor, dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in _FLOAT_DTYPES else grad.dtype


def _backward(ctx: Any, grad: torch.Tensor) -> tuple:
    a, b = ctx.saved_tensors
    da = db = None
    if ctx.needs_input_grad[0]:
        dt = _compute_dtype(grad, ctx.a_dtype)
        bt = b.to(dt).mT
        da = torch.ops.flopscale.matmul(grad.to(dt), bt, dt)
        da = da.sum_to_size(ctx.a_shape) if tuple(da.shape) != tuple(ctx.a_shape) else da
    if ctx.needs_input_grad[1]:
        dt = _compute_dtype(grad, ctx.b_dtype)
        g = grad.to(dt)
        at = a.to(dt)
        K = ctx.a_shape[-1]
        N = g.shape[-1]
        if len(ctx.b_shape) == 2:
            # sum over every batch: one tall product a_flat^T [K, B*M] @ g_flat [B*M, N]
            a_full = at.expand(*g.shape[:-1], K)
            db = torch.ops.flopscale.matmul(a_full.reshape(-1, K).mT, g.reshape(-1, N), dt)
        else:
            db = torch.ops.flopscale.matmul(at.mT, g, dt)
            if tuple(db.shape) != tuple(ctx.b_shape):
                db = db.sum_to_size(ctx.b_shape)
    return da, db, None


_matmul_op.register_autograd(_backward, setup_context=_setup_context)


@register_flop_formula(torch.ops.flopscale.matmul)
def _matmul_flop_formula(a_shape, b_shape, out_dtype=None, *args, out_shape=None, **kwargs) -> int:
    return matmul_flops(a_shape, b_shape)


@register_cost(OP)
def matmul_cost(a: torch.Tensor, b: torch.Tensor, out_dtype: Optional[torch.dtype] = None) -> Cost:
    """Model = executed FLOP ``2*batch*M*N*K``; bytes = a and b read once, output written once."""
    flops = matmul_flops(a.shape, b.shape)
    batch = _batch_shape(a.shape, b.shape)
    M, N = a.shape[-2], b.shape[-1]
    odt = _out_dtype_of(a.dtype, out_dtype)
    nbytes = a.numel() * _itemsize(a.dtype) + b.numel() * _itemsize(b.dtype)
    nbytes += math.prod(batch) * M * N * _itemsize(odt)
    return Cost(flops=flops, executed_flops=flops, bytes=nbytes, detail=_path_detail(a, b, out_dtype, flops),
                peak_dtype=peak_dtype_of(a.dtype, _input_precision(a.dtype) == "ieee"))


def _path_detail(a: torch.Tensor, b: torch.Tensor, out_dtype: Optional[torch.dtype], flops: int) -> dict:
    """``{"path:<MatmulPath.name>": flops}``: the FLOPs of this launch by the path that runs
    them (so a profile's launch records, and their sums, say which path ran).  Empty for
    tensors no kernel runs on (meta, fake)."""
    if a.device.type not in ("cuda", "cpu") or _is_fake(a) or _is_fake(b) or a.numel() == 0 or b.numel() == 0:
        return {}
    try:
        return {f"path:{matmul_path(a, b, out_dtype).name}": flops}
    except (TypeError, ValueError):  # inputs the op itself refuses: the op reports them
        return {}


# --------------------------------------------------------------------------- public API
def matmul(a: torch.Tensor, b: torch.Tensor, out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``a [..., M, K] @ b [K, N]`` (or ``b [..., K, N]``, batch dims broadcast) with fp32
    accumulation; see the module docstring for dtypes, kernels and cost."""
    _validate(a, b, out_dtype)
    return torch.ops.flopscale.matmul(a, b, out_dtype)


def scaled_matmul(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor,
                  out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``(scale_a * a) @ (scale_b * b)`` for 2-D ``a [M, K]``, ``b [K, N]``, with the scales
    applied to the fp32 accumulator, as ``torch._scaled_mm`` takes them: each scale a float32
    tensor holding one value (per tensor) or one per row of ``a`` (``scale_a [M, 1]``) / per
    column of ``b`` (``scale_b [1, N]``).  Meant for fp8 e4m3 (output bf16 unless
    ``out_dtype``; B K-major, i.e. ``b = w.mT`` of a row-major ``w [N, K]``, is what the fp8
    tensor cores read without a transpose); other supported dtypes work too.  fp8 partial sums
    are promoted to fp32 once per K tile, so long K keeps fp32 accuracy.  Cost: ``2*M*N*K``
    FLOP, as ``matmul``."""
    _validate(a, b, out_dtype)
    if a.dim() != 2 or b.dim() != 2:
        raise ValueError(f"scaled_matmul: a and b must be 2-D, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    M, N = a.shape[0], b.shape[1]
    for name, t, rows in (("scale_a", scale_a, (M, 1)), ("scale_b", scale_b, (1, N))):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.float32:
            raise TypeError(f"scaled_matmul: {name} must be a torch.float32 tensor, got "
                            f"{t.dtype if isinstance(t, torch.Tensor) else type(t).__name__}")
        if t.numel() != 1 and tuple(t.shape) != rows:
            raise ValueError(f"scaled_matmul: {name} must hold one value or have shape {rows}, got {tuple(t.shape)}")
        if t.device != a.device:
            raise ValueError(f"scaled_matmul: {name} is on {t.device}, a on {a.device}")
    return torch.ops.flopscale.scaled_matmul(a, b, scale_a, scale_b, out_dtype)


@triton_op(SCALED_OP, mutates_args=())
def _scaled_matmul_op(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor,
                      out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    scales = _Scales(scale_a.reshape(-1).contiguous(), scale_b.reshape(-1).contiguous())
    return _run(a, b, out_dtype, scales=scales)


@register_flop_formula(torch.ops.flopscale.scaled_matmul)
def _scaled_matmul_flop_formula(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    return matmul_flops(a_shape, b_shape)


@register_cost(SCALED_OP)
def scaled_matmul_cost(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor,
                       out_dtype: Optional[torch.dtype] = None) -> Cost:
    """As ``matmul_cost``, plus the scales read once."""
    base = matmul_cost(a, b, out_dtype)
    extra = (scale_a.numel() + scale_b.numel()) * 4
    return Cost(flops=base.flops, executed_flops=base.executed_flops, bytes=base.bytes + extra, detail=base.detail,
                peak_dtype=base.peak_dtype)


def matmul_reference(a: torch.Tensor, b: torch.Tensor, out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """The same product computed by torch in float64, cast to the output dtype."""
    _validate_ref(a, b, out_dtype)
    odt = _out_dtype_of(a.dtype, out_dtype)
    return torch.matmul(a.to(torch.float64), b.to(torch.float64)).to(odt)


def _validate_ref(a: Any, b: Any, out_dtype: Any) -> None:
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise TypeError("matmul_reference: a and b must be tensors")
    if a.dim() < 2 or b.dim() < 2 or a.shape[-1] != b.shape[-2]:
        raise ValueError(f"matmul_reference: shapes {tuple(a.shape)} and {tuple(b.shape)} do not multiply")
