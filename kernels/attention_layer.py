"""Fused attention: ``kernels.attention`` (custom ops, autograd, reference, declared costs).

``attention(q, k, v, causal=False, sm_scale=None)`` computes
``softmax(q k^T * sm_scale + mask) v`` with a FlashAttention-2-style Triton kernel:

* ``q`` ``[B, H, S_q, D]``, ``k`` and ``v`` ``[B, H_kv, S_k, D]`` with ``H % H_kv == 0``:
  query head ``h`` uses key/value head ``h // (H // H_kv)`` (grouped-query / multi-query
  attention, no copy of ``k``/``v``).  Inputs may be non-contiguous.
* dtypes float16, bfloat16, float32 (all three tensors alike); the output has the input
  dtype; the softmax runs in float32.  float32 matmuls use IEEE fp32 unless
  ``torch.backends.cuda.matmul.allow_tf32`` is set (then TF32).
* head dims ``1 <= D <= 256``: 16, 32, 64, 128 and 256 run on exact tiles, any other ``D``
  on a tile padded to the next power of two (masked loads, no copy).  ``D > 256`` raises.
* any ``S_q, S_k >= 1``; ``sm_scale`` (a finite number > 0) defaults to ``1/sqrt(D)``.
* ``causal`` chooses the mask and its alignment when ``S_q != S_k``:

  - ``False``: no mask;
  - ``True`` or ``"top_left"``: **top-left aligned**, exactly like
    ``torch.nn.functional.scaled_dot_product_attention(is_causal=True)``: query ``i`` sees keys
    ``j <= i`` (with ``S_q > S_k`` the queries ``i >= S_k`` see every key; with ``S_q < S_k``
    the keys ``j >= S_q`` are seen by no query and get zero gradients);
  - ``"bottom_right"``: **bottom-right aligned**, like flash-attn >= 2.1 (what decoding and
    chunked prefill need: the ``S_q`` queries are the *last* ``S_q`` positions of a sequence
    of ``S_k``): query ``i`` sees keys ``j <= i + S_k - S_q``.  With ``S_q > S_k`` the first
    ``S_q - S_k`` queries see no key.

  Anything else raises ``ValueError``.  With ``S_q == S_k`` both alignments are the same mask.
  A row that sees no key at all is defined as output 0, ``lse = -inf`` and zero gradient:
  never NaN.

Custom ops (namespace ``flopscale``), visible to ``torch.compile`` and FlopCounterMode:

* ``flopscale::attention_fwd(q, k, v, causal, sm_scale, bottom_right=False) -> (o, lse)``,
  ``lse`` float32 ``[B, H, S_q]`` natural log-sum-exp of the scaled scores of each row.
  Autograd is registered on it (gradients of ``o`` and of ``lse``).  ``causal`` is a bool
  here; ``bottom_right`` selects the alignment of a causal mask.
* ``flopscale::attention_bwd(do, q, k, v, o, lse, dlse, causal, sm_scale, bottom_right=False)
  -> (dq, dk, dv)``.

Costs (``kernels.cost_of``; FlopCounterMode reports the same *model* count):

* Forward, ``P`` = unmasked (query, key) pairs: ``S_q*S_k`` dense,
  ``sum_i clamp(i + 1 + diag, 0, S_k)`` causal with ``diag = 0`` top-left and
  ``diag = S_k - S_q`` bottom-right (``S(S+1)/2`` for either when ``S_q = S_k = S``;
  bottom-right with ``S_q <= S_k``: ``S_q*S_k - S_q(S_q-1)/2``; with ``S_q > S_k``:
  ``S_k(S_k+1)/2``).  Model FLOPs ``4*B*H*D*P``
  (``detail["scores"] = 2BHDP`` for ``QK^T``, ``detail["pv"] = 2BHDP`` for ``PV``).
  Executed FLOPs add the computed-then-masked scores of the tiles that straddle the causal
  diagonal, at the kernel's tile size (``detail["masked"]``); ragged-edge padding is not
  counted.
* Backward: model FLOPs ``8*B*H*D*P`` (2x forward: ``dQ``/``dK`` in ``detail["scores"]``,
  ``dP``/``dV`` in ``detail["pv"]``).  16-bit inputs at ``D = 128`` (padded or not) compute
  ``dQ`` in a kernel of its own (all matmuls on 128-row wgmma tiles); it recomputes ``QK^T``
  and ``dP``, so executed there is 4 matmuls per score of the key-block kernel plus 3 per
  score of the ``dQ`` kernel (``detail["recompute"]`` holds the three recomputed ones).
  16-bit inputs at ``D = 256`` (padded or not, e.g. ``D = 160``) also split the key-block
  kernel into a ``dV`` pass (``QK^T``, ``P^T dO``) and a ``dK`` pass (``QK^T``, ``dO V^T``,
  ``dS^T Q``): executed is 5 matmuls per score of the passes plus 3 of the ``dQ`` kernel, 8
  instead of 5 (recompute: ``QK^T`` twice in the passes, ``QK^T`` and ``dP`` in the ``dQ``
  kernel).  Otherwise executed adds the recompute of ``QK^T`` (0.5x
  forward, ``detail["recompute"]``) and the masked diagonal work at the backward's tile size
  (``detail["masked"]``); without ``causal`` (and at equal padding) the executed backward is
  exactly 2.5x the forward.  Always ``scores + pv == flops`` and ``sum(detail.values()) == executed_flops``.
* A head dim that is not a power of two (or below 16) runs every matmul on a tile of
  ``BLOCK_D = max(16, next_pow2(D))`` columns: executed FLOPs count the padded width
  (``D = 96``: 4/3 of the declared work, ``D = 80``: 1.6x) in ``detail["padding"]``; model
  FLOPs keep ``D``.
* ``peak_dtype`` says which peak rates the executed FLOPs: ``"bf16"``/``"fp16"`` tensor cores;
  float32 runs ``"tf32"`` on tensor cores when ``torch.backends.cuda.matmul.allow_tf32`` is set,
  else IEEE fp32 on the FMA units, ``"fp32"``, rated against the fp32 (not a tensor-core) peak.
* Tile sizes are fixed per (head dim, 2- or 4-byte dtype, interpreter or GPU, and for the
  forward whether q, k, v are read through TMA) -- no run-time autotuning -- so the executed
  count is a function of the shapes and strides alone
  (:func:`kernels.attention_kernels.fwd_config` / ``bwd_config``).
* The forward reads q, k, v through TMA tensor descriptors on sm_90 (and under the
  interpreter, which emulates them) when the inputs allow it -- unit inner stride, 16-byte
  aligned storage offset, row and batch/head strides (:func:`tma_compatible`) -- and through
  pointers otherwise (e.g. ``D = 20`` in fp16: 40-byte rows), with the same numerics.
* ``nonmatmul_flops``: the softmax work, counted per *computed* score: forward 5 (scale,
  running max, subtract, exp, row sum) plus ``D`` per row per key tile (rescaling the
  accumulator) plus ``D`` per row (final normalisation); backward 5 per score (scale and
  subtract lse, exp, ``dP - delta``, times ``P``) plus ``D`` per row per tile (scaling
  ``dQ``) plus ``2*D`` per row (``delta = rowsum(dO * O)``).  An estimate, documented as such.
* ``bytes``: compulsory traffic: forward reads q, k, v once and writes o and lse; backward
  reads dO, q, k, v, o, lse (and dlse) and writes dq, dk, dv.

FlopCounterMode copies torch's formula registry when it is *constructed*: import this module
(or call ``kernels.load_all()``) before creating the mode, or the ops count as 0 FLOP.
"""
import functools
import math
from typing import Optional

import torch
import triton
from torch.library import triton_op
from torch.utils.flop_counter import register_flop_formula

from . import attention_kernels as _ak
from ._cost import Cost, peak_dtype_of, register_cost
from ._runtime import check_runnable, interpreter_on, wrap_triton
from .matmul_layer import ensure_tma_allocator

__all__ = [
    "attention",
    "attention_reference",
    "attention_fwd",
    "attention_bwd",
    "causal_pairs",
    "SUPPORTED_DTYPES",
    "MAX_HEAD_DIM",
]

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256


# --------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------


def check_qkv(q, k, v, causal, sm_scale, op: str) -> float:
    """Validate ``q, k, v`` (shapes, dtypes, devices, head dims); return the softmax scale."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{op}: {name} must be 4-D [B, heads, seq, head_dim], got shape {tuple(t.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"{op}: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{op}: dtype {q.dtype} is not supported (float16, bfloat16, float32)")
    B, H, S_q, D = q.shape
    Bk, H_kv, S_k, Dk = k.shape
    if tuple(v.shape) != tuple(k.shape):
        raise ValueError(f"{op}: k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if Bk != B:
        raise ValueError(f"{op}: batch sizes differ: q has {B}, k/v have {Bk}")
    if Dk != D:
        raise ValueError(f"{op}: head dims differ: q has D={D}, k/v have D={Dk}")
    if min(B, H, H_kv) < 1:
        raise ValueError(f"{op}: batch and head counts must be >= 1, got q {tuple(q.shape)}, k {tuple(k.shape)}")
    if S_q < 1 or S_k < 1:
        raise ValueError(f"{op}: sequence lengths must be >= 1, got S_q={S_q}, S_k={S_k}")
    if H % H_kv != 0:
        raise ValueError(f"{op}: query heads H={H} must be a multiple of key/value heads H_kv={H_kv}")
    if not 1 <= D <= MAX_HEAD_DIM:
        raise ValueError(
            f"{op}: head dim D={D} is not supported: 1 <= D <= {MAX_HEAD_DIM} "
            "(16, 32, 64, 128, 256 run unpadded)"
        )
    causal_mode(causal, op)
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(D)
    if (isinstance(sm_scale, bool) or not isinstance(sm_scale, (int, float)) or not math.isfinite(sm_scale)
            or sm_scale <= 0):
        # > 0: the kernels take the row maximum before scaling (one FMA per score)
        raise ValueError(f"{op}: sm_scale must be a finite number > 0, got {sm_scale!r}")
    check_runnable(q, k, v, op=op, dtypes=(q.dtype,))
    return float(sm_scale)


#: accepted string values of ``causal`` (``True`` means ``"top_left"``)
CAUSAL_ALIGNMENTS = ("top_left", "bottom_right")


def causal_mode(causal, op: str = "kernels.attention") -> Optional[str]:
    """``None`` (no mask), ``"top_left"`` or ``"bottom_right"`` for a public ``causal`` value;
    ``ValueError`` for anything but ``False``, ``True`` and those two strings."""
    if causal is False:
        return None
    if causal is True:
        return "top_left"
    if isinstance(causal, str) and causal in CAUSAL_ALIGNMENTS:
        return causal
    raise ValueError(
        f"{op}: causal must be False, True, 'top_left' or 'bottom_right', got {causal!r}")


def causal_diag(causal: bool, bottom_right: bool, S_q: int, S_k: int) -> int:
    """Diagonal offset of a causal mask (query ``i`` sees keys ``j <= i + diag``): 0 top-left,
    ``S_k - S_q`` bottom-right (0 when not causal: unused)."""
    return S_k - S_q if (causal and bottom_right) else 0


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot`` input precision: fp32 follows torch's TF32 switch; 16-bit ignores it."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def peak_dtype(dtype: torch.dtype) -> str:
    """The peak class of a launch's matmuls (``Cost.peak_dtype``): ``"fp16"``/``"bf16"`` tensor
    cores; float32 ``"tf32"`` (tensor cores, TF32 allowed) or ``"fp32"`` (IEEE on FMA units)."""
    return peak_dtype_of(dtype, dot_precision(dtype) == "ieee")


@functools.lru_cache(maxsize=None)
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def device_capability(device: torch.device) -> Optional[tuple[int, int]]:
    """(major, minor) of a CUDA device; None elsewhere (configs then assume Hopper)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _capability(index)


def _configs(head_dim: int, dtype: torch.dtype, device: Optional[torch.device], tma: bool = False):
    interp = interpreter_on()
    cap = device_capability(device) if device is not None else None
    es = esize(dtype)
    return (_ak.fwd_config(head_dim, es, interp, cap, tma), _ak.bwd_config(head_dim, es, interp, cap))


#: Read the forward's q, k, v tiles through TMA descriptors where TMA's rules allow it (sm_90 and
#: the interpreter); tests switch it off to cover the pointer path on aligned inputs too.
USE_TMA = True
TMA_ALIGN = 16  # bytes: TMA's alignment of base addresses and of every stride but the innermost


def tma_compatible(*tensors: torch.Tensor) -> bool:
    """Whether each ``[B, heads, S, D]`` tensor can be read by a TMA descriptor per (batch, head):
    unit inner stride, and the base address (storage offset; torch allocations are aligned), the
    row stride and the batch/head strides in use (those of dimensions > 1) multiples of 16
    bytes.  Reads shapes and strides only, so it also answers for fake and meta tensors."""
    for t in tensors:
        es = t.element_size()
        if t.stride(3) != 1 or (t.storage_offset() * es) % TMA_ALIGN:
            return False
        for dim in (0, 1, 2):
            if (t.shape[dim] > 1 or dim == 2) and (t.stride(dim) * es) % TMA_ALIGN:
                return False
    return True


def use_tma(q, k, v) -> bool:
    """The forward's path: TMA descriptors (Hopper or the interpreter, aligned inputs) or pointers.
    Without a CUDA device (meta tensors, costs) the configs assume Hopper, so does this."""
    if not (USE_TMA and _ak.HAS_TMA) or not all(isinstance(t, torch.Tensor) for t in (q, k, v)):
        return False
    if not interpreter_on():
        cap = device_capability(q.device)
        if cap is not None and cap[0] < 9:
            return False
    return tma_compatible(q, k, v)


#: Tests set this to fill kernel outputs with NaN before launch, so unwritten elements show.
POISON_OUTPUTS = False


def new_output(shape, dtype: torch.dtype, device) -> torch.Tensor:
    """Allocate a kernel output (NaN-filled when :data:`POISON_OUTPUTS` is set)."""
    if POISON_OUTPUTS:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def _strides(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.stride())


def _tracing_under_interpreter(args) -> bool:
    """True when the Triton interpreter would be handed fake/meta tensors (shape propagation by
    FakeTensorMode): the launch is skipped, the outputs only need their shapes.

    ``wrap_triton`` cannot record interpreted kernels in a graph, so tracing for
    ``torch.compile`` (functionalised tensors) under the interpreter raises instead of building
    a graph without the kernel."""
    if not interpreter_on():
        return False
    from torch._subclasses.fake_tensor import is_fake
    from torch._subclasses.functional_tensor import FunctionalTensor

    if any(isinstance(a, FunctionalTensor) for a in args):
        raise RuntimeError(
            "flopscale kernels cannot be traced by torch.compile under the Triton interpreter "
            "(TRITON_INTERPRET=1); call them eagerly, or compile on a CUDA device"
        )
    return any(isinstance(a, torch.Tensor) and (a.device.type == "meta" or is_fake(a)) for a in args)


def launch(kernel, grid, cfg, *args, **consts):
    """Launch a kernel with ``cfg``; on a shared-memory overflow retry with fewer stages."""
    if _tracing_under_interpreter(args):
        return
    stages = cfg.num_stages
    while True:
        try:
            wrap_triton(kernel)[grid](*args, **consts, num_warps=cfg.num_warps, num_stages=stages)
            return
        except triton.runtime.errors.OutOfResources:
            if stages <= 1:
                raise
            stages -= 1


#: CUDA's limit on grid dimensions y and z (x allows 2**31 - 1): the kernels put
#: ``batch * heads`` on axis 1, so larger products launch in slices of the batch.
MAX_GRID_YZ = 65535


def batch_slices(B: int, per_batch: int) -> list[tuple[int, int]]:
    """Ranges ``[b0, b1)`` of the batch with ``(b1 - b0) * per_batch <= MAX_GRID_YZ``."""
    if per_batch > MAX_GRID_YZ:
        raise ValueError(f"attention: {per_batch} heads exceed the grid limit of {MAX_GRID_YZ}")
    step = max(1, MAX_GRID_YZ // per_batch)
    return [(b0, min(B, b0 + step)) for b0 in range(0, B, step)]


def slice_batch(tensors, b0: int, b1: int, B: int):
    """``t[b0:b1]`` of each tensor (None stays None); the tensors themselves for the whole batch."""
    if (b0, b1) == (0, B):
        return tuple(tensors)
    return tuple(None if t is None else t[b0:b1] for t in tensors)


# --------------------------------------------------------------------------------------
# custom ops
# --------------------------------------------------------------------------------------


@triton_op("flopscale::attention_fwd", mutates_args=())
def attention_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, sm_scale: float, bottom_right: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward of fused attention: ``(o [B,H,S_q,D] input dtype, lse [B,H,S_q] float32)``."""
    B, H, S_q, D = q.shape
    H_kv, S_k = k.shape[1], k.shape[2]
    o = new_output((B, H, S_q, D), q.dtype, q.device)
    lse = new_output((B, H, S_q), torch.float32, q.device)
    tma = use_tma(q, k, v)
    cfg, _ = _configs(D, q.dtype, q.device, tma)
    if tma and not _tracing_under_interpreter((q, k, v)):
        ensure_tma_allocator(q.device)  # descriptors built on the device need scratch memory
    for b0, b1 in batch_slices(B, H):
        q_, k_, v_, o_, lse_ = slice_batch((q, k, v, o, lse), b0, b1, B)
        grid = (triton.cdiv(S_q, cfg.block_m), (b1 - b0) * H)
        launch(
            _ak._attn_fwd_kernel, grid, cfg,
            q_, k_, v_, o_, lse_,
            *_strides(q_), *_strides(k_), *_strides(v_), *_strides(o_),
            H, S_q, S_k, sm_scale * _ak.LOG2E, causal_diag(causal, bottom_right, S_q, S_k),
            GROUP=H // H_kv, HEAD_DIM=D, BLOCK_D=_ak.block_d(D), BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
            CAUSAL=causal, DOT_PRECISION=dot_precision(q.dtype), USE_TMA=tma,
        )
    return o, lse


def bwd_delta(o: torch.Tensor, do: torch.Tensor, dlse: Optional[torch.Tensor]) -> torch.Tensor:
    """``delta = rowsum(o * do) - dlse``, float32 ``[B, H, S_q]``."""
    B, H, S_q, D = o.shape
    delta = new_output((B, H, S_q), torch.float32, o.device)
    has_dlse = dlse is not None
    dlse_t = dlse.to(torch.float32).contiguous() if has_dlse else delta
    bm = 64 if not interpreter_on() else 32
    for b0, b1 in batch_slices(B, H):
        o_, do_, delta_, dlse_ = slice_batch((o, do, delta, dlse_t), b0, b1, B)
        grid = (triton.cdiv(S_q, bm), (b1 - b0) * H)
        launch(
            _ak._bwd_preprocess_kernel, grid, _ak.AttnConfig(bm, bm, 4, 1),
            o_, do_, delta_, dlse_, *_strides(o_), *_strides(do_), H, S_q,
            HEAD_DIM=D, BLOCK_D=_ak.block_d(D), BLOCK_M=bm, HAS_DLSE=has_dlse,
        )
    return delta


@triton_op("flopscale::attention_bwd", mutates_args=())
def attention_bwd(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    dlse: Optional[torch.Tensor],
    causal: bool,
    sm_scale: float,
    bottom_right: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward of fused attention: ``(dq, dk, dv)`` in the input dtype."""
    B, H, S_q, D = q.shape
    H_kv, S_k = k.shape[1], k.shape[2]
    _, cfg = _configs(D, q.dtype, q.device)
    lse = lse.contiguous()  # the kernels index it as [B*H, S_q] rows
    delta = bwd_delta(o, do, dlse)
    diag = causal_diag(causal, bottom_right, S_q, S_k)
    split = cfg.dq is not None  # dQ by its own kernel (stored directly), else by atomics (float32)
    if split:
        dq = new_output((B, H, S_q, D), q.dtype, q.device)
    else:
        dq = torch.zeros((B, H, S_q, D), dtype=torch.float32, device=q.device)
    dk = new_output((B, H_kv, S_k, D), q.dtype, q.device)
    dv = new_output((B, H_kv, S_k, D), q.dtype, q.device)
    # one launch accumulating dK and dV, or (``cfg.kv``) a dV pass then a dK pass
    passes = [(cfg.kv, False, True), (cfg.kv, True, False)] if cfg.kv is not None else [(cfg, True, True)]
    for kcfg, with_dk, with_dv in passes:
        for b0, b1 in batch_slices(B, H_kv):
            t = slice_batch((q, k, v, do, dq, dk, dv, lse, delta), b0, b1, B)
            grid = (triton.cdiv(S_k, kcfg.block_n), (b1 - b0) * H_kv)
            launch(
                _ak._attn_bwd_kernel, grid, kcfg,
                *t, *(st for x in t[:7] for st in _strides(x)),
                H, H_kv, S_q, S_k, sm_scale, sm_scale * _ak.LOG2E, diag,
                GROUP=H // H_kv, HEAD_DIM=D, BLOCK_D=_ak.block_d(D), BLOCK_M=kcfg.block_m,
                BLOCK_N=kcfg.block_n, CAUSAL=causal, DOT_PRECISION=dot_precision(q.dtype), WITH_DQ=not split,
                WITH_DK=with_dk, WITH_DV=with_dv,
            )
    if split:
        for b0, b1 in batch_slices(B, H):
            t = slice_batch((q, k, v, do, dq, lse, delta), b0, b1, B)
            grid = (triton.cdiv(S_q, cfg.dq.block_m), (b1 - b0) * H)
            launch(
                _ak._attn_bwd_dq_kernel, grid, cfg.dq,
                *t, *(st for x in t[:5] for st in _strides(x)),
                H, S_q, S_k, sm_scale, sm_scale * _ak.LOG2E, diag,
                GROUP=H // H_kv, HEAD_DIM=D, BLOCK_D=_ak.block_d(D), BLOCK_M=cfg.dq.block_m,
                BLOCK_N=cfg.dq.block_n, CAUSAL=causal, DOT_PRECISION=dot_precision(q.dtype),
            )
    elif q.dtype != torch.float32:
        dq = dq.to(q.dtype)
    return dq, dk, dv


def _setup_context(ctx, inputs, output):
    q, k, v, causal, sm_scale = inputs[:5]
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse)
    ctx.causal = causal
    ctx.sm_scale = sm_scale
    ctx.bottom_right = bool(inputs[5]) if len(inputs) > 5 else False


def _backward(ctx, do, dlse):
    q, k, v, o, lse = ctx.saved_tensors
    if do is None:
        do = torch.zeros_like(o)
    dq, dk, dv = torch.ops.flopscale.attention_bwd(do, q, k, v, o, lse, dlse, ctx.causal, ctx.sm_scale,
                                                   ctx.bottom_right)
    return dq, dk, dv, None, None, None


attention_fwd.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal=False,
              sm_scale: Optional[float] = None) -> torch.Tensor:
    """Fused attention ``softmax(q k^T * sm_scale + mask) v`` (see the module docstring).

    q ``[B, H, S_q, D]``, k/v ``[B, H_kv, S_k, D]`` (``H % H_kv == 0``); returns
    ``[B, H, S_q, D]`` in the input dtype.  ``causal``: ``False``; ``True`` or ``"top_left"``
    (query ``i`` sees keys ``j <= i``, like ``scaled_dot_product_attention(is_causal=True)``);
    ``"bottom_right"`` (keys ``j <= i + S_k - S_q``, like flash-attn >= 2.1).  Differentiable
    in q, k, v.
    """
    scale = check_qkv(q, k, v, causal, sm_scale, op="kernels.attention")
    mode = causal_mode(causal)
    o, _ = torch.ops.flopscale.attention_fwd(q, k, v, mode is not None, scale, mode == "bottom_right")
    return o


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal=False,
                        sm_scale: Optional[float] = None, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Pure-torch ``softmax(q k^T * sm_scale + mask) v``, materialising the scores.

    Computes in float64 for float64 inputs, float32 otherwise, and returns the input dtype.
    ``mask`` (optional) is a bool tensor broadcastable to ``[B, H, S_q, S_k]`` (True: visible),
    combined with ``causal`` (``False``, ``True``/``"top_left"`` or ``"bottom_right"``, as in
    :func:`attention`).  Rows with no visible key give zeros.
    """
    B, H, S_q, D = q.shape
    H_kv, S_k = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(D) if sm_scale is None else sm_scale
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    group = H // H_kv
    kk = k.to(ct).repeat_interleave(group, dim=1)
    vv = v.to(ct).repeat_interleave(group, dim=1)
    s = torch.matmul(q.to(ct), kk.transpose(-1, -2)) * scale
    visible = torch.ones(S_q, S_k, dtype=torch.bool, device=q.device)
    mode = causal_mode(causal, "attention_reference")
    if mode is not None:
        diag = causal_diag(True, mode == "bottom_right", S_q, S_k)
        visible = visible.tril(diagonal=diag)
    visible = visible.expand(B, H, S_q, S_k)
    if mask is not None:
        visible = visible & mask.to(q.device)
    s = s.masked_fill(~visible, float("-inf"))
    p = torch.softmax(s, dim=-1)
    p = torch.nan_to_num(p, nan=0.0)  # rows with no visible key -> 0
    return torch.matmul(p, vv).to(q.dtype)


# --------------------------------------------------------------------------------------
# costs
# --------------------------------------------------------------------------------------


def _clamped_sum(n: int, width: int) -> int:
    """``sum_{x=1..n} min(x, width)`` (0 for ``n <= 0``)."""
    if n <= 0:
        return 0
    if n <= width:
        return n * (n + 1) // 2
    return width * (width + 1) // 2 + (n - width) * width


def diag_pairs(S_q: int, S_k: int, diag: int) -> int:
    """Unmasked pairs when query ``i`` sees keys ``j <= i + diag``:
    ``sum_{i<S_q} clamp(i + 1 + diag, 0, S_k)``."""
    return _clamped_sum(S_q + diag, S_k) - _clamped_sum(diag, S_k)


def causal_pairs(S_q: int, S_k: int, bottom_right: bool = False) -> int:
    """Unmasked (query, key) pairs of a causal mask: top-left ``sum_i min(i+1, S_k)``;
    bottom-right ``sum_i clamp(i + 1 + S_k - S_q, 0, S_k)``."""
    return diag_pairs(S_q, S_k, causal_diag(True, bottom_right, S_q, S_k))


def pairs(S_q: int, S_k: int, causal: bool, bottom_right: bool = False) -> int:
    return causal_pairs(S_q, S_k, bottom_right) if causal else S_q * S_k


@functools.lru_cache(maxsize=4096)
def fwd_work(S_q: int, S_k: int, causal: bool, block_m: int, block_n: int, diag: int = 0) -> tuple[int, int]:
    """(computed scores, row-tile visits) of the forward kernel, per (batch, head).

    Causal (query ``i`` sees keys ``j <= i + diag``): query block ``m`` walks the key tiles
    below ``hi = clamp((m+1)*block_m + diag, 0, S_k)`` and computes every in-bounds key of
    them (the band is masked, not skipped).  Padding of ragged tiles is not counted.
    """
    if not causal:
        return S_q * S_k, S_q * triton.cdiv(S_k, block_n)
    scores = tiles = 0
    for m in range(triton.cdiv(S_q, block_m)):
        rows = min(block_m, S_q - m * block_m)
        n_tiles = triton.cdiv(min(S_k, max(0, (m + 1) * block_m + diag)), block_n)
        scores += rows * min(S_k, n_tiles * block_n)
        tiles += rows * n_tiles
    return scores, tiles


@functools.lru_cache(maxsize=4096)
def bwd_work(S_q: int, S_k: int, causal: bool, block_m: int, block_n: int, diag: int = 0) -> tuple[int, int]:
    """(computed scores, row-tile visits) of the backward kernel, per (batch, query head).

    Causal: key block ``n`` visits the query tiles from the one holding query
    ``max(0, n*block_n - diag)`` to ``S_q``."""
    if not causal:
        return S_q * S_k, S_q * triton.cdiv(S_k, block_n)
    scores = tiles = 0
    for n in range(triton.cdiv(S_k, block_n)):
        cols = min(block_n, S_k - n * block_n)
        lo = (max(0, n * block_n - diag) // block_m) * block_m
        rows = max(0, S_q - lo)
        scores += cols * rows
        tiles += rows
    return scores, tiles


def _shape(x) -> tuple[int, ...]:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else tuple(x)


@functools.lru_cache(maxsize=None)
def esize(dtype: torch.dtype) -> int:
    """Bytes per element of ``dtype``."""
    return torch.empty((), dtype=dtype).element_size()


def fwd_cost_from_work(B: int, D: int, es: int, q_rows: int, kv_rows: int,
                       model_pairs: int, computed: int, tiles: int, block_d: Optional[int] = None,
                       peak: str = "") -> Cost:
    """Forward cost from per-batch-element totals over heads.

    ``q_rows``: query rows (``H*S_q``); ``kv_rows``: key rows read (``H_kv*S_k`` dense);
    ``model_pairs``: unmasked (query, key) pairs; ``computed``: scores the kernel computes;
    ``tiles``: (query row, key tile) visits; ``block_d``: the head-dim tile the matmuls run on
    (default ``D``); ``peak``: the ``Cost.peak_dtype``.  Units: FLOP and bytes.
    """
    bd = D if block_d is None else block_d
    unit = 2 * B * D  # FLOP per (query, key) pair per matmul
    model = 2 * unit * model_pairs
    executed = 2 * unit * computed
    padding = 2 * 2 * B * (bd - D) * computed
    nonmatmul = B * (5 * computed + D * tiles + D * q_rows)
    nbytes = B * (2 * q_rows * D * es + 2 * kv_rows * D * es + 4 * q_rows)
    detail = {"scores": unit * model_pairs, "pv": unit * model_pairs, "masked": executed - model,
              "padding": padding}
    return Cost(model, executed + padding, nbytes, nonmatmul, detail, peak)


def bwd_cost_from_work(B: int, D: int, es: int, q_rows: int, kv_rows: int,
                       model_pairs: int, computed: int, tiles: int, has_dlse: bool,
                       block_d: Optional[int] = None, peak: str = "", dq_computed: int = 0,
                       dq_tiles: int = 0, kv_split: bool = False) -> Cost:
    """Backward cost (same arguments as :func:`fwd_cost_from_work`): model 2x forward;
    executed adds one ``QK^T`` recompute over the computed scores, and the head-dim padding of
    all five matmuls.  With a separate ``dQ`` kernel (``dq_computed`` scores over ``dq_tiles``
    row-tile visits, > 0) the key-block kernel runs four matmuls per score (``QK^T``
    recomputed, ``dV``, ``dP``, ``dK``) and the ``dQ`` kernel three (``QK^T`` and ``dP``
    recomputed, ``dQ``).  ``kv_split`` (with a ``dQ`` kernel): ``dV`` and ``dK`` by two passes of
    the key-block kernel, which then runs five matmuls per score (``QK^T`` in both passes, ``dV``;
    ``dP``, ``dK``), the extra ``QK^T`` counted as recompute."""
    bd = D if block_d is None else block_d
    unit = 2 * B * D
    model = 4 * unit * model_pairs
    if dq_computed:
        kv_mm = 5 if kv_split else 4  # matmuls per score in the key-block kernel(s)
        recompute = (kv_mm - 3) * unit * computed + 2 * unit * dq_computed
        executed = kv_mm * unit * computed + 3 * unit * dq_computed
        padding = 2 * B * (bd - D) * (kv_mm * computed + 3 * dq_computed)
        # kv_split: the dV pass recomputes P (2 per score) and visits every tile once more
        nonmatmul = B * ((5 + (2 if kv_split else 0)) * computed + 5 * dq_computed
                         + D * ((2 if kv_split else 1) * tiles + dq_tiles) + 2 * D * q_rows)
    else:
        recompute = unit * computed
        executed = 5 * unit * computed
        padding = 5 * 2 * B * (bd - D) * computed
        nonmatmul = B * (5 * computed + D * tiles + 2 * D * q_rows)
    # read dO, q, o, lse (+dlse), k, v; write dq, dk, dv
    nbytes = B * (4 * q_rows * D * es + 4 * kv_rows * D * es + 4 * q_rows * (2 if has_dlse else 1))
    detail = {
        "scores": 2 * unit * model_pairs,
        "pv": 2 * unit * model_pairs,
        "recompute": recompute,
        "masked": executed - model - recompute,
        "padding": padding,
    }
    return Cost(model, executed + padding, nbytes, nonmatmul, detail, peak)


def _fwd_cost(q_shape, k_shape, dtype, causal, device=None, bottom_right=False, tma=False) -> Cost:
    B, H, S_q, D = q_shape
    H_kv, S_k = k_shape[1], k_shape[2]
    causal, bottom_right = bool(causal), bool(bottom_right)
    cfg, _ = _configs(D, dtype, device, tma)
    computed, tiles = fwd_work(S_q, S_k, causal, cfg.block_m, cfg.block_n,
                               causal_diag(causal, bottom_right, S_q, S_k))
    return fwd_cost_from_work(B, D, esize(dtype), H * S_q, H_kv * S_k, H * pairs(S_q, S_k, causal, bottom_right),
                              H * computed, H * tiles, _ak.block_d(D), peak_dtype(dtype))


def _bwd_cost(q_shape, k_shape, dtype, causal, has_dlse, device=None, bottom_right=False) -> Cost:
    B, H, S_q, D = q_shape
    H_kv, S_k = k_shape[1], k_shape[2]
    causal, bottom_right = bool(causal), bool(bottom_right)
    _, cfg = _configs(D, dtype, device)
    diag = causal_diag(causal, bottom_right, S_q, S_k)
    kcfg = cfg.kv if cfg.kv is not None else cfg  # the key-block kernel's tiles
    computed, tiles = bwd_work(S_q, S_k, causal, kcfg.block_m, kcfg.block_n, diag)
    dq_computed = dq_tiles = 0
    if cfg.dq is not None:  # the dQ kernel walks the keys as the forward does
        dq_computed, dq_tiles = fwd_work(S_q, S_k, causal, cfg.dq.block_m, cfg.dq.block_n, diag)
    return bwd_cost_from_work(B, D, esize(dtype), H * S_q, H_kv * S_k, H * pairs(S_q, S_k, causal, bottom_right),
                              H * computed, H * tiles, has_dlse, _ak.block_d(D), peak_dtype(dtype),
                              H * dq_computed, H * dq_tiles, cfg.kv is not None)


@register_cost("flopscale::attention_fwd")
def attention_fwd_cost(q, k, v, causal=False, sm_scale=None, bottom_right=False) -> Cost:
    """Declared cost of one ``flopscale::attention_fwd`` launch (see the module docstring)."""
    return _fwd_cost(_shape(q), _shape(k), q.dtype, causal, getattr(q, "device", None), bottom_right,
                     use_tma(q, k, v))


@register_cost("flopscale::attention_bwd")
def attention_bwd_cost(do, q, k, v, o, lse, dlse=None, causal=False, sm_scale=None, bottom_right=False) -> Cost:
    """Declared cost of one ``flopscale::attention_bwd`` launch (see the module docstring)."""
    return _bwd_cost(_shape(q), _shape(k), q.dtype, causal, dlse is not None, getattr(q, "device", None),
                     bottom_right)


@register_flop_formula(torch.ops.flopscale.attention_fwd)
def _attention_fwd_flop(q_shape, k_shape, v_shape, causal=False, sm_scale=None, bottom_right=False, *args,
                        out_shape=None, **kwargs) -> int:
    B, H, S_q, D = q_shape
    return 4 * B * H * D * pairs(S_q, k_shape[2], bool(causal), bool(bottom_right))


@register_flop_formula(torch.ops.flopscale.attention_bwd)
def _attention_bwd_flop(do_shape, q_shape, k_shape, v_shape, o_shape=None, lse_shape=None, dlse_shape=None,
                        causal=False, sm_scale=None, bottom_right=False, *args, out_shape=None, **kwargs) -> int:
    B, H, S_q, D = q_shape
    return 8 * B * H * D * pairs(S_q, k_shape[2], bool(causal), bool(bottom_right))
