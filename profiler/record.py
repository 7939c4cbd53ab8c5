"""Launch-by-launch records: ``with profiler.Profile() as prof:``.

What is recorded
----------------
* every op of :mod:`kernels` (custom ops in the ``flopscale`` namespace): cost from
  the op's declaration, ``kernels.cost_of(op, *args, **kwargs)``;
* every torch op that carries a FLOP formula in
  ``torch.utils.flop_counter.flop_registry`` (mm, addmm, bmm, baddbmm, _scaled_mm,
  convolutions, ...), with that formula, so the model FLOPs agree with
  ``FlopCounterMode``;
* torch's scaled-dot-product-attention kernels (flash, efficient, cuDNN and the
  CPU flash kernel), counted here -- see "Attention" below;
* ``dot``, ``vdot``, ``mv``, ``addmv`` (2 FLOP per multiply-add), which have no
  FlopCounterMode formula (it counts them as 0);
* with ``all_ops=True``, every other aten op that does work (views and metadata
  queries are skipped), with *estimated* non-matmul FLOPs (see "Estimates").

The profiler never patches :mod:`kernels`: it is a ``TorchDispatchMode``, so it
sees every op that reaches the dispatcher, including those run by autograd in
its own threads (the mode stack is propagated there; plain Python threads started
inside the block are not seen).  Work done *inside* a recorded op -- the aten ops
in a custom op's implementation -- belongs to that op's record.  Under
``torch.compile`` only ops that still go through the dispatcher are seen.
Recording costs about 5 us of host time per unrecorded op and 30-50 us per
recorded one on a CPU core; on a GPU the host runs ahead of the device, so this
matters only when launches are shorter than that.

Counting conventions
--------------------
FLOP counts are in FLOP, times in seconds, rates in FLOP/s and bytes/s.
``flops`` are *model* FLOPs (what MFU divides), ``executed_flops`` what the
hardware runs (recompute included; what HFU divides), ``nonmatmul_flops`` the
softmax/normalisation/elementwise work, kept out of tensor-core utilisation.
``bytes`` are compulsory DRAM traffic: for torch ops each distinct input tensor
read once (broadcast dimensions count once) and each output written once;
``out=`` buffers are written, not read.

Attention.  For torch SDPA kernels ``is_causal`` is honoured: the forward is
``2*B*H*P*(D_qk + D_v)`` with P the unmasked (query, key) pairs -- ``S_q*S_k``
dense, ``sum_i min(i+1, S_k)`` causal (top-left aligned, as torch defines it),
``S(S+1)/2`` for equal lengths; an explicit ``attn_mask`` is counted dense.  The
backward is 2x the forward (model) plus the recomputed scores ``2*B*H*P*D_qk``
(executed).  Softmax: 5 non-matmul FLOP per pair forward, 5 per pair plus
``2*S_q*D_v`` per head backward.  ``FlopCounterMode`` differs: it ignores
``is_causal`` (a causal forward is counted as dense, ~2x too many for long
sequences), its backward formula counts the recompute (it reports executed, not
model, FLOPs for the backward: for dense attention with ``D_qk = D_v`` it equals our
``executed_flops``), and on the CPU it does not count SDPA at all
(``_scaled_dot_product_flash_attention_for_cpu`` has no formula).  When torch falls
back to its math path (e.g. ``D_qk != D_v`` on the CPU) the attention arrives as
``bmm``/softmax ops, counted dense -- that path really computes every score.

Estimates (``all_ops=True``).  Pointwise ops: 1 FLOP per output element;
reductions: 1 FLOP per input element; softmax / log-softmax: 5 per element,
their backward 4; layer/group/batch norm: 7 per element, backward 10; RMS norm 4,
backward 8; fused Adam/AdamW: 12 per parameter element; ``_foreach_*``: 1 per
element written; copies, gathers, concatenations: 0 FLOP (bytes only).  These
are rough by design (a GELU is more than 1 FLOP) and are marked ``source =
"estimate"``.

Timing.  On CUDA every recorded launch is bracketed by CUDA events on the
current stream; they are resolved once, at the end of the region, so recording
never synchronises.  On the CPU the clock is ``time.perf_counter``.  Each time is
the launch's own duration (for a custom op: all the kernels it launches).

Labels.  ``label(name)`` (a context manager and decorator) or ``push_label`` /
``pop_label`` put names on a per-thread stack; each record's ``scope`` is the
stack joined by "/".  Launches without such a label get their ``nn.Module`` path
automatically (``modules=True``, the default; :mod:`profiler.module_scopes`): with
``model=`` given, by that model's attribute names ("GPT/blocks/0/attn"), otherwise by
class names for every module that runs; backward ops carry "<forward scope> (backward)".

Reading it.  ``print(prof)`` (or ``prof.report()``) prints a table per op and per module:
count, time, FLOPs, rate, share of the roofline ceiling, bytes, bound; under it MFU =
model FLOPs / (wall time x peak) naming the peak, and the utilisation over op time
only under its own name.  Autograd runs backward ops in its own threads on CUDA, so
labels for backward work must be pushed there (backward hooks do this).
"""
from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ._io import jsonable, write_text_atomic
from .devices import dtype_name

__all__ = ["Record", "Profile", "label", "push_label", "pop_label", "current_scope", "torch_op_cost"]

aten = torch.ops.aten

# ------------------------------------------------------------------- labels

_local = threading.local()


def _stack() -> list[str]:
    s = getattr(_local, "stack", None)
    if s is None:
        s = _local.stack = []
    return s


def push_label(name: str) -> None:
    """Push ``name`` on this thread's label stack (pair with :func:`pop_label`)."""
    _stack().append(str(name))


def pop_label(name: str | None = None) -> str | None:
    """Pop this thread's innermost label (and check it is ``name`` when given).

    Popping an empty stack returns None (a backward hook may fire without its pre-hook).
    """
    s = _stack()
    if not s:
        return None
    if name is not None and s[-1] != str(name):
        # unbalanced hooks: drop up to and including the named label if present
        if str(name) in s:
            while s and s.pop() != str(name):
                pass
            return str(name)
        return None
    return s.pop()


def current_scope() -> str:
    """This thread's label stack joined by '/' ('' when empty)."""
    return "/".join(_stack())


@contextlib.contextmanager
def label(name: str) -> Iterator[None]:
    """Label the ops run inside the block (nests: 'block0/attn')."""
    s = _stack()
    depth = len(s)
    s.append(str(name))
    try:
        yield
    finally:
        del s[depth:]


# ------------------------------------------------------------------ records


@dataclass
class Record:
    """One launch.

    ``op``: qualified op name ('flopscale::matmul', 'aten::mm'); ``scope``: labels;
    ``shapes``: shapes of the tensor arguments; ``dtype``: the compute dtype name
    ('bf16'); ``peak_dtype``: the dtype whose peak applies ('tf32' for float32
    matmuls on tensor cores); FLOP counts in FLOP, ``bytes`` in bytes, ``time_s``
    and ``start_s`` (from the start of the region) in seconds; ``source``: where
    the cost came from ('declared', 'flop_formula', 'attention', 'estimate').
    """

    op: str
    scope: str
    shapes: list
    dtype: str
    flops: int
    executed_flops: int
    nonmatmul_flops: int
    bytes: int
    time_s: float | None = None
    detail: dict = field(default_factory=dict)
    peak_dtype: str = ""
    source: str = ""
    device: str = "cpu"
    start_s: float | None = None
    thread: int = 0
    index: int = 0
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shapes"] = [list(s) if isinstance(s, tuple) else s for s in self.shapes]
        return d


# ------------------------------------------------------------ cost helpers

# ops that never do work (metadata, allocation without writes, aliasing)
_SKIP = {
    aten.detach.default, aten.alias.default, aten.lift_fresh.default, aten._unsafe_view.default,
    aten.empty.memory_format, aten.empty_strided.default, aten.empty_like.default,
    aten.new_empty.default, aten.new_empty_strided.default,
    aten.is_contiguous.default, aten.is_contiguous.memory_format, aten.size.default,
    aten.sym_size.default, aten.stride.default, aten.sym_stride.default, aten.storage_offset.default,
    aten.sym_storage_offset.default, aten.numel.default, aten.sym_numel.default, aten.dim.default,
    aten.is_strides_like_format.default, aten.is_non_overlapping_and_dense.default,
    torch.ops.prim.layout.default, torch.ops.prim.device.default,
}
for _name in ("sym_is_contiguous", "set_", "resize_", "_local_scalar_dense"):
    _p = getattr(aten, _name, None)
    if _p is not None:
        _SKIP.update(getattr(_p, o) for o in _p.overloads())

# matrix-vector products that torch's FLOP registry lacks (FlopCounterMode counts them as 0)
def _vector_matmul_flops(name: str, bound: dict[str, Any]) -> tuple[int, int]:
    """(matmul FLOP, non-matmul FLOP) of dot/vdot/mv/addmv: 2 per multiply-add."""
    if name in ("dot", "vdot"):
        return 2 * int(bound["self"].numel()), 0
    if name == "mv":
        m, n = bound["self"].shape
        return 2 * int(m) * int(n), 0
    m, n = bound["mat"].shape  # addmv
    return 2 * int(m) * int(n), int(m)


_VECTOR_MATMUL = {"dot", "vdot", "mv", "addmv"}

# SDPA kernels: (is_backward, name of the mask argument)
_SDPA = {
    "_scaled_dot_product_flash_attention": (False, None),
    "_scaled_dot_product_efficient_attention": (False, "attn_bias"),
    "_scaled_dot_product_cudnn_attention": (False, "attn_bias"),
    "_scaled_dot_product_flash_attention_for_cpu": (False, "attn_mask"),
    "_scaled_dot_product_flash_attention_backward": (True, None),
    "_scaled_dot_product_efficient_attention_backward": (True, "attn_bias"),
    "_scaled_dot_product_cudnn_attention_backward": (True, "attn_bias"),
    "_scaled_dot_product_flash_attention_for_cpu_backward": (True, "attn_mask"),
}

# non-matmul FLOP per element for ops without a useful tag (all_ops estimates)
_PER_ELEMENT_IN = {
    "_softmax": 5, "_log_softmax": 5, "_softmax_backward_data": 4, "_log_softmax_backward_data": 4,
    "native_layer_norm": 7, "native_layer_norm_backward": 10, "native_group_norm": 7,
    "native_group_norm_backward": 10, "native_batch_norm": 7, "native_batch_norm_backward": 10,
    "_native_batch_norm_legit": 7, "_native_batch_norm_legit_no_training": 7,
    "_fused_rms_norm": 4, "_fused_rms_norm_backward": 8, "embedding_dense_backward": 1,
}
_PER_PARAM = {"_fused_adam_": 12, "_fused_adamw_": 12, "_fused_sgd_": 3}
# matmul-like ops whose torch.float32 path may use TF32 (cuBLAS) / cuDNN
_MATMUL_OPS = {"mm", "addmm", "bmm", "baddbmm", "addbmm", "matmul", "linear", "_addmm_activation",
               "dot", "vdot", "mv", "addmv"}
_CONV_OPS = {"convolution", "_convolution", "cudnn_convolution", "convolution_overrideable",
             "convolution_backward", "_slow_conv2d_forward"}


_SCHEMA_CACHE: dict[Any, tuple] = {}


def _schema(func: Any) -> tuple:
    """Per op, cached: ((name, kwarg_only, is_out, is_write, default), ...)."""
    info = _SCHEMA_CACHE.get(func)
    if info is None:
        info = tuple(
            (a.name, bool(a.kwarg_only), bool(getattr(a, "is_out", False)),
             bool(a.alias_info is not None and a.alias_info.is_write),
             a.default_value if a.has_default_value() else None)
            for a in func._schema.arguments
        )
        _SCHEMA_CACHE[func] = info
    return info


def _bind(func: Any, args: tuple, kwargs: dict) -> dict[str, Any]:
    """Arguments of ``func`` by schema name (defaults filled in)."""
    out: dict[str, Any] = {}
    n = len(args)
    for i, (name, kwarg_only, _o, _w, default) in enumerate(_schema(func)):
        if i < n and not kwarg_only:
            out[name] = args[i]
        elif name in kwargs:
            out[name] = kwargs[name]
        else:
            out[name] = default
    return out


def _distinct_elements(t: torch.Tensor) -> int:
    """Elements a tensor occupies in memory: broadcast (stride-0) dimensions count once."""
    n = 1
    for size, stride in zip(t.shape, t.stride()):
        if size == 0:
            return 0
        if stride != 0:
            n *= size
    return n


def _tensor_bytes(t: torch.Tensor, distinct: bool = True) -> int:
    if t.is_sparse or getattr(t, "layout", torch.strided) != torch.strided:
        return int(t.numel() * t.element_size())
    n = _distinct_elements(t) if distinct else t.numel()
    return int(n * t.element_size())


def _tensors(x: Any) -> list[torch.Tensor]:
    """The tensors in ``x`` (a tensor, or nested lists/tuples/dicts of them)."""
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        out: list[torch.Tensor] = []
        for v in x:
            if isinstance(v, torch.Tensor):
                out.append(v)
            elif isinstance(v, (list, tuple, dict)):
                out.extend(_tensors(v))
        return out
    if isinstance(x, dict):
        return _tensors(list(x.values()))
    return []


def _io(func: Any, args: tuple, kwargs: dict, out: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(tensors read, tensors written), each distinct object once; out= buffers are only written."""
    reads: list[torch.Tensor] = []
    writes: list[torch.Tensor] = []
    seen_r: set[int] = set()
    seen_w: set[int] = set()
    n = len(args)
    for i, (name, kwarg_only, is_out, is_write, _d) in enumerate(_schema(func)):
        if i < n and not kwarg_only:
            val = args[i]
        else:
            val = kwargs.get(name)
        if val is None:
            continue
        ts = _tensors(val)
        if not ts:
            continue
        if not is_out:
            for t in ts:
                if id(t) not in seen_r:
                    seen_r.add(id(t))
                    reads.append(t)
        if is_out or is_write:
            for t in ts:
                if id(t) not in seen_w:
                    seen_w.add(id(t))
                    writes.append(t)
    for t in _tensors(out):
        if id(t) not in seen_w:
            seen_w.add(id(t))
            writes.append(t)
    return reads, writes


def _io_bytes(func: Any, args: tuple, kwargs: dict, out: Any) -> int:
    reads, writes = _io(func, args, kwargs, out)
    return sum(_tensor_bytes(t) for t in reads) + sum(_tensor_bytes(t, distinct=False) for t in writes)


def _pairs(s_q: int, s_k: int, causal: bool) -> int:
    """Unmasked (query, key) pairs per head: dense S_q*S_k; causal top-left sum_i min(i+1, S_k)."""
    if not causal:
        return s_q * s_k
    if s_q <= s_k:
        return s_q * (s_q + 1) // 2
    return s_k * (s_k + 1) // 2 + (s_q - s_k) * s_k


def _sdpa_cost(name: str, bound: dict[str, Any]) -> tuple[int, int, int, dict, str]:
    backward, mask_arg = _SDPA[name]
    q, k, v = bound["query"], bound["key"], bound["value"]
    causal = bool(bound.get("is_causal") or False)
    mask = bound.get(mask_arg) if mask_arg else None
    bh = 1
    for s in q.shape[:-2]:
        bh *= int(s)
    s_q, d_qk = int(q.shape[-2]), int(q.shape[-1])
    s_k, d_v = int(k.shape[-2]), int(v.shape[-1])
    note = ""
    if mask is not None:
        note = "explicit attention mask: counted dense (its zeros are not inspected)"
        causal_eff = False
    else:
        causal_eff = causal
    p = _pairs(s_q, s_k, causal_eff)
    fwd = 2 * bh * p * d_qk + 2 * bh * p * d_v
    detail = {"pairs": p * bh, "causal": causal_eff}
    if not backward:
        return fwd, fwd, 5 * bh * p, {**detail, "scores": 2 * bh * p * d_qk, "pv": 2 * bh * p * d_v}, note
    recompute = 2 * bh * p * d_qk
    model = 2 * fwd
    nonmm = 5 * bh * p + 2 * bh * s_q * d_v
    return model, model + recompute, nonmm, {**detail, "recompute": recompute}, note


_REGISTRY: dict | None = None


def _flop_registry() -> dict:
    """torch's FLOP-formula registry (the same dict object FlopCounterMode reads; custom ops
    registered later with ``register_flop_formula`` appear in it)."""
    global _REGISTRY
    if _REGISTRY is None:
        from torch.utils.flop_counter import flop_registry

        _REGISTRY = flop_registry
    return _REGISTRY


_SHAPE_WRAPPER_CODE: Any = None


def _as_shapes(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.shape
    if isinstance(x, (list, tuple)):
        return type(x)(_as_shapes(v) for v in x) if not hasattr(x, "_fields") else x
    return x


def _call_formula(formula: Any, args: tuple, kwargs: dict, out: Any) -> int:
    """Call a FlopCounterMode formula exactly as FlopCounterMode does, but map tensors to
    shapes directly for shape-based formulas (pytree's tree_map costs ~20 us per op)."""
    global _SHAPE_WRAPPER_CODE
    if _SHAPE_WRAPPER_CODE is None:
        from torch.utils.flop_counter import shape_wrapper

        _SHAPE_WRAPPER_CODE = shape_wrapper(lambda *a, **k: 0).__code__
    inner = getattr(formula, "__wrapped__", None)
    if inner is not None and getattr(formula, "__code__", None) is _SHAPE_WRAPPER_CODE:
        return inner(*_as_shapes(args), out_shape=_as_shapes(out),
                     **{k: _as_shapes(v) for k, v in kwargs.items()})
    return formula(*args, **kwargs, out_val=out)


def _numel(ts: list[torch.Tensor]) -> int:
    return sum(int(t.numel()) for t in ts)


def _estimate(func: Any, args: tuple, kwargs: dict, out: Any) -> tuple[int, str]:
    """(non-matmul FLOP, how) for an op without a formula; conventions in the module docstring."""
    name = func._schema.name.split("::", 1)[-1]
    tags = func.tags
    if name in _PER_PARAM:
        params = _tensors(_bind(func, args, kwargs).get("self"))
        return _PER_PARAM[name] * _numel(params), f"{_PER_PARAM[name]} FLOP per parameter element"
    if name in _PER_ELEMENT_IN:
        ins = _tensors(args[:1])
        return _PER_ELEMENT_IN[name] * _numel(ins), f"{_PER_ELEMENT_IN[name]} FLOP per input element"
    if name.startswith("_foreach_") or torch.Tag.pointwise in tags:
        _, writes = _io(func, args, kwargs, out)
        return _numel(writes), "1 FLOP per output element"
    if torch.Tag.reduction in tags:
        ins = _tensors(args[:1])
        return _numel(ins), "1 FLOP per input element"
    return 0, "no FLOP estimate (data movement or unknown op)"


def torch_op_cost(func: Any, args: tuple, kwargs: dict, out: Any, all_ops: bool = False) -> dict | None:
    """The cost of one dispatched op, or None when it is not recorded.

    Returns a dict with flops, executed_flops, nonmatmul_flops, bytes, detail, source, note.
    """
    qname = func._schema.name
    ns, _, name = qname.partition("::")
    packet = func.overloadpacket
    if ns != "aten":
        from flopscale.kernels import cost_of

        try:
            cost = cost_of(qname, *args, **kwargs)
        except Exception as exc:  # a broken declaration must not break the user's program
            return {"flops": 0, "executed_flops": 0, "nonmatmul_flops": 0,
                    "bytes": _io_bytes(func, args, kwargs, out), "detail": {}, "source": "declared",
                    "note": f"cost declaration failed: {type(exc).__name__}: {exc}"}
        if cost is not None:
            return {"flops": int(cost.flops), "executed_flops": int(cost.executed_flops),
                    "nonmatmul_flops": int(cost.nonmatmul_flops), "bytes": int(cost.bytes),
                    "detail": dict(cost.detail), "source": "declared", "note": ""}
    if ns == "aten" and name in _SDPA:
        flops, executed, nonmm, detail, note = _sdpa_cost(name, _bind(func, args, kwargs))
        return {"flops": flops, "executed_flops": executed, "nonmatmul_flops": nonmm,
                "bytes": _io_bytes(func, args, kwargs, out), "detail": detail, "source": "attention",
                "note": note}
    if ns == "aten" and name in _VECTOR_MATMUL:
        flops, nonmm = _vector_matmul_flops(name, _bind(func, args, kwargs))
        return {"flops": flops, "executed_flops": flops, "nonmatmul_flops": nonmm,
                "bytes": _io_bytes(func, args, kwargs, out), "detail": {}, "source": "vector_matmul",
                "note": "no FlopCounterMode formula: counted by flopscale"}
    registry = _flop_registry()
    if packet in registry:
        note = ""
        try:
            flops = int(_call_formula(registry[packet], args, kwargs, out))
        except Exception as exc:
            flops, note = 0, f"FLOP formula failed: {type(exc).__name__}: {exc}"
        nonmm = 0
        if name in ("addmm", "baddbmm", "addbmm") and ns == "aten":
            nonmm = _numel(_tensors(out))  # the bias / accumulator add
        return {"flops": flops, "executed_flops": flops, "nonmatmul_flops": nonmm,
                "bytes": _io_bytes(func, args, kwargs, out), "detail": {}, "source": "flop_formula",
                "note": note}
    if not all_ops:
        return None
    nonmm, how = _estimate(func, args, kwargs, out)
    return {"flops": 0, "executed_flops": 0, "nonmatmul_flops": nonmm,
            "bytes": _io_bytes(func, args, kwargs, out), "detail": {}, "source": "estimate", "note": how}


def _shape_of(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return tuple(int(s) for s in x.shape)
    if isinstance(x, (list, tuple)) and x and all(isinstance(t, torch.Tensor) for t in x):
        if len(x) > 8:
            return f"{len(x)} tensors"
        return [tuple(int(s) for s in t.shape) for t in x]
    return None


def _compute_dtype(args: tuple, out: Any) -> tuple[str, Any]:
    ts = _tensors(args) or _tensors(out)
    for t in ts:
        if t.is_floating_point():
            return dtype_name(t.dtype), t
    if ts:
        return dtype_name(ts[0].dtype), ts[0]
    return "", None


def _peak_dtype(ns: str, name: str, dtype: str, device_type: str) -> str:
    """'tf32' where a float32 matmul runs on TF32 tensor cores, else ``dtype``.

    torch matmuls and flopscale kernels follow ``torch.backends.cuda.matmul.allow_tf32``
    (default off); cuDNN convolutions follow ``torch.backends.cudnn.allow_tf32`` (default on).
    """
    if dtype != "fp32" or device_type != "cuda":
        return dtype
    if (ns == "aten" and name in _MATMUL_OPS) or ns == "flopscale":
        return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "fp32"
    if ns == "aten" and name in _CONV_OPS:
        return "tf32" if torch.backends.cudnn.allow_tf32 else "fp32"
    return dtype


# ------------------------------------------------------------- the mode


class _RecordingMode(TorchDispatchMode):
    supports_higher_order_operators = True

    def __init__(self, prof: "Profile") -> None:
        super().__init__()
        self.prof = prof
        self._kind: dict[Any, str] = {}

    def _classify(self, func: Any) -> str:
        k = self._kind.get(func)
        if k is None:
            ns = func.namespace
            name = func._schema.name.split("::", 1)[-1]
            if func in _SKIP or getattr(func, "is_view", False):
                k = "skip"
            elif ns != "aten":
                k = "record"  # custom ops: recorded if they declare a cost (or have a formula)
            elif name in _SDPA or name in _VECTOR_MATMUL or func.overloadpacket in _flop_registry():
                k = "record"
            else:
                k = "other"
            self._kind[func] = k
        return k

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if isinstance(func, torch._ops.HigherOrderOperator):
            return func(*args, **kwargs)
        kind = self._classify(func)
        if kind == "skip" or (kind == "other" and not self.prof.all_ops):
            return func(*args, **kwargs)
        return self.prof._record(func, args, kwargs)


# --------------------------------------------------------------- Profile


class Profile:
    """Record every costed op run inside the block, launch by launch.

    ``all_ops``: also record every other aten op that does work, with estimated
    non-matmul FLOPs.  ``model``: an ``nn.Module`` whose module names become the records'
    scopes; ``modules`` (default True): without a model, scope by the class names of
    every module that runs (False: only hand-made labels).  ``ceilings``: the :class:`profiler.devices.Ceilings` used by
    :meth:`table` (default: cached measured ceilings, measuring quickly if none are
    cached; ``peak="datasheet"`` for the datasheet peaks).  ``device``: where peak
    memory is tracked (default the current CUDA device, if any).

    After the block: ``records`` (list of :class:`Record`), ``wall_time_s``
    (seconds, with a device synchronisation at both ends on CUDA),
    ``peak_memory_bytes`` (``torch.cuda.max_memory_allocated`` over the region,
    bytes; None on the CPU, where torch keeps no allocator statistics) and
    ``peak_memory_delta_bytes`` (peak minus what was allocated at entry).
    """

    def __init__(self, all_ops: bool = False, ceilings: Any = None, peak: str = "measured",
                 device: Any = None, model: Any = None, modules: bool = True) -> None:
        if peak not in ("measured", "datasheet"):
            raise ValueError(f"Profile: peak must be 'measured' or 'datasheet', got {peak!r}")
        self.all_ops = bool(all_ops)
        self.model = model
        self.modules = bool(modules) or model is not None
        self._scopes: Any = None
        self.ceilings = ceilings
        self.peak = peak
        self.records: list[Record] = []
        self.wall_time_s: float | None = None
        self.peak_memory_bytes: int | None = None
        self.peak_memory_delta_bytes: int | None = None
        self.note = ""
        self._device = device
        self._cuda_dev: Any = None
        self._mode: _RecordingMode | None = None
        self._pending: list[tuple[Record, Any, Any]] = []  # (record, start, end) CUDA events
        self._counter = itertools.count()
        self._threads: dict[int, int] = {}
        self._t0 = 0.0
        self._ev0: Any = None
        self._mem0 = 0
        self._active = False

    # ----------------------------------------------------------- context
    def __enter__(self) -> "Profile":
        if self._active:
            raise RuntimeError("Profile is not re-entrant")
        self.records = []
        self._pending = []
        _flop_registry()  # import outside the timed region
        from flopscale import kernels  # noqa: F401  (cost declarations)

        dev = self._device
        if dev is None and torch.cuda.is_available():
            dev = torch.device("cuda", torch.cuda.current_device())
        dev = torch.device(dev) if dev is not None else torch.device("cpu")
        if dev.type == "cuda":
            if dev.index is None:
                dev = torch.device("cuda", torch.cuda.current_device())
            self._cuda_dev = dev
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            self._mem0 = torch.cuda.memory_allocated(dev)
            self._ev0 = torch.cuda.Event(enable_timing=True)
            self._ev0.record()
        self._active = True
        if self.modules:
            from .module_scopes import ModuleScopes

            self._scopes = ModuleScopes(self.model).__enter__()
        self._t0 = time.perf_counter()
        self._mode = _RecordingMode(self)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> bool:
        mode, self._mode = self._mode, None
        if mode is not None:
            mode.__exit__(*exc)
        scopes, self._scopes = self._scopes, None
        if scopes is not None:
            scopes.__exit__(*exc)
        self._active = False
        try:
            if self._pending:
                # the one synchronisation (per device used): resolve every launch's events
                for d in sorted({r.device for r, _s, _e in self._pending}):
                    torch.cuda.synchronize(d)
                for rec, start, end in self._pending:
                    try:
                        rec.time_s = start.elapsed_time(end) * 1e-3
                        if self._ev0 is not None:
                            rec.start_s = self._ev0.elapsed_time(start) * 1e-3
                    except RuntimeError as e:  # e.g. events on another device than the region's
                        rec.note = (rec.note + "; " if rec.note else "") + f"not timed: {e}"
            if self._cuda_dev is not None:
                torch.cuda.synchronize(self._cuda_dev)
                self.peak_memory_bytes = int(torch.cuda.max_memory_allocated(self._cuda_dev))
                self.peak_memory_delta_bytes = self.peak_memory_bytes - int(self._mem0)
            else:
                self.note = "peak memory: not tracked on the CPU (torch keeps no CPU allocator statistics)"
        except Exception as e:  # e.g. a CUDA error raised in the block: keep that one
            self.note = f"could not resolve device timings: {type(e).__name__}: {e}"
            if exc[0] is None:
                raise
        finally:
            self.wall_time_s = time.perf_counter() - self._t0
            self._pending = []
            self.records.sort(key=lambda r: r.index)
        return False

    # -------------------------------------------------------- recording
    def _record(self, func: Any, args: tuple, kwargs: dict) -> Any:
        ts = _tensors(args) or _tensors(kwargs)
        dev = ts[0].device if ts else torch.device("cpu")
        on_cuda = dev.type == "cuda"
        index = next(self._counter)
        capturing = on_cuda and torch.cuda.is_current_stream_capturing()
        if capturing:  # timing events cannot be recorded into a CUDA graph: count, do not time
            on_cuda = False
            out = func(*args, **kwargs)
            t0 = t1 = math.nan
        elif on_cuda:
            # the op's device's current stream in *this* thread: in autograd's device thread that
            # is the stream the forward op ran on, which the engine makes current for the backward
            stream = torch.cuda.current_stream(dev)
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record(stream)
            out = func(*args, **kwargs)
            end.record(stream)
        else:
            t0 = time.perf_counter()
            out = func(*args, **kwargs)
            t1 = time.perf_counter()
        cost = torch_op_cost(func, args, kwargs, out, all_ops=self.all_ops)
        if cost is None:
            return out
        ns, _, name = func._schema.name.partition("::")
        dtype, _t = _compute_dtype(args, out)
        tid = threading.get_ident()
        thread = self._threads.setdefault(tid, len(self._threads))
        shapes = [s for s in (_shape_of(a) for a in args) if s is not None]
        rec = Record(
            op=func._schema.name,
            scope=self._scope_now(),
            shapes=shapes,
            dtype=dtype,
            flops=cost["flops"],
            executed_flops=cost["executed_flops"],
            nonmatmul_flops=cost["nonmatmul_flops"],
            bytes=cost["bytes"],
            detail=cost["detail"],
            peak_dtype=_peak_dtype(ns, name, dtype, dev.type),
            source=cost["source"],
            device=str(dev),
            thread=thread,
            index=index,
            note=cost["note"],
        )
        if on_cuda:
            self._pending.append((rec, start, end))
        elif capturing:
            rec.note = (rec.note + "; " if rec.note else "") + "captured into a CUDA graph: not timed"
        else:
            rec.time_s = t1 - t0
            rec.start_s = t0 - self._t0
        self.records.append(rec)
        return out

    def _scope_now(self) -> str:
        scope = current_scope()
        if scope or self._scopes is None:
            return scope  # labels made by hand win
        from .module_scopes import BACKWARD_SUFFIX, backward_scope, forward_scope

        fw = forward_scope()
        if fw:
            return fw
        if torch._C._current_graph_task_id() != -1:  # in a backward pass
            b = backward_scope()
            if b:
                return b + BACKWARD_SUFFIX
        return ""

    # ------------------------------------------------------------ results
    def _ceilings(self, peak: str | None = None, ceilings: Any = None) -> Any:
        from .roofline import resolve_ceilings

        peak = peak or self.peak
        if ceilings is None and peak == self.peak:
            ceilings = self.ceilings
        if ceilings is None:
            dev = self._cuda_dev or self._device
            ceilings = resolve_ceilings(peak, device=dev)
            if peak == self.peak:
                self.ceilings = ceilings
        return ceilings

    def raw_table(self) -> Any:
        """The records as a DataFrame, without ceilings."""
        import pandas as pd

        cols = ["index", "op", "scope", "shapes", "dtype", "peak_dtype", "flops", "executed_flops",
                "nonmatmul_flops", "bytes", "time_s", "start_s", "source", "device", "thread", "note"]
        rows = []
        for r in self.records:
            rows.append({
                "index": r.index, "op": r.op, "scope": r.scope,
                "shapes": "; ".join(_fmt_shape(s) for s in r.shapes), "dtype": r.dtype,
                "peak_dtype": r.peak_dtype, "flops": r.flops, "executed_flops": r.executed_flops,
                "nonmatmul_flops": r.nonmatmul_flops, "bytes": r.bytes,
                "time_s": math.nan if r.time_s is None else r.time_s,
                "start_s": math.nan if r.start_s is None else r.start_s,
                "source": r.source, "device": r.device, "thread": r.thread, "note": r.note,
            })
        return pd.DataFrame(rows, columns=cols)

    def table(self, peak: str | None = None, ceilings: Any = None) -> Any:
        """One row per launch: the records plus achieved rates, roofline and utilisation.

        Columns: op, scope, shapes, dtype, peak_dtype, flops, executed_flops,
        nonmatmul_flops, bytes, time_s, start_s, source, ... and from
        :func:`profiler.roofline.annotate`: flop_per_s (model FLOP/s),
        executed_flop_per_s, bytes_per_s, arithmetic_intensity (FLOP/byte),
        peak_flop_per_s, bandwidth (bytes/s), ridge (FLOP/byte), roofline_time_s,
        ceiling_share (roofline time / measured time, 0..1), peak_share and
        executed_peak_share (model / executed FLOPs over the launch's own time x peak: a
        utilisation of that launch's time, not MFU -- MFU divides by the wall time, see
        :meth:`totals`), bound ('compute'/'memory'/'unknown') and peak_source.
        """
        from .roofline import annotate

        t = annotate(self.raw_table().drop(columns=["index"]), self._ceilings(peak, ceilings))
        return t.rename(columns={"mfu": "peak_share", "hfu": "executed_peak_share"})

    def summary(self, peak: str | None = None, ceilings: Any = None) -> Any:
        """Totals per op (sorted by time): count, FLOPs, bytes, time, rates, share of time, share of
        peak over the op's own time (``peak_share``)."""
        from .roofline import summarise

        return summarise(self.table(peak, ceilings))

    def report(self, by: str | None = None, peak: str | None = None, ceilings: Any = None) -> Any:
        """The readable table (:class:`profiler.profile_table.ProfileReport`; ``print`` it, or
        ``to_dict()``): ``by="op"``, ``"module"``, or None for both (module table when scoped)."""
        from .profile_table import build_report

        return build_report(self, by=by, peak=peak, ceilings=ceilings)

    def __str__(self) -> str:
        if self._active or self.wall_time_s is None:
            return f"<Profile: {len(self.records)} launch(es) so far, still recording>"
        return self.report().to_text()

    def totals(self, peak: str | None = None, ceilings: Any = None) -> dict[str, Any]:
        """Whole-region totals: FLOPs, bytes, times, ``mfu`` = model FLOPs / (wall time x peak),
        ``hfu`` likewise with executed FLOPs, ``mfu_op_time`` (over the recorded ops' time only,
        not MFU), the peak used and any ratio above 1 in ``flags``
        (see :func:`profiler.roofline.utilisation`)."""
        from .roofline import utilisation

        u = utilisation(self, peak=peak or self.peak, ceilings=self._ceilings(peak, ceilings), over="wall")
        d = u.to_dict()
        d.update(wall_time_s=self.wall_time_s, peak_memory_bytes=self.peak_memory_bytes,
                 peak_memory_delta_bytes=self.peak_memory_delta_bytes, launches=len(self.records))
        return d

    # ------------------------------------------------------------- export
    def to_csv(self, path: str | os.PathLike, peak: str | None = None, ceilings: Any = None) -> Path:
        """Write :meth:`table` as CSV (atomically); returns the path."""
        text = self.table(peak, ceilings).to_csv(index=False)
        return write_text_atomic(path, text)

    def to_dict(self, peak: str | None = None, ceilings: Any = None) -> dict[str, Any]:
        c = self._ceilings(peak, ceilings)
        return {
            "records": [r.to_dict() for r in self.records],
            "totals": self.totals(peak, c),
            "ceilings": c.to_dict() if hasattr(c, "to_dict") else None,
            "note": self.note,
        }

    def to_json(self, path: str | os.PathLike | None = None, peak: str | None = None,
                ceilings: Any = None) -> str:
        """JSON text of records, totals and ceilings (NaN -> null); written to ``path`` if given."""
        text = json.dumps(jsonable(self.to_dict(peak, ceilings)), indent=2)
        if path is not None:
            write_text_atomic(path, text)
        return text

    def chrome_trace(self) -> dict[str, Any]:
        """The records as a Chrome/Perfetto trace object (complete events, microseconds)."""
        events: list[dict[str, Any]] = [
            {"name": "process_name", "ph": "M", "pid": 0, "args": {"name": "flopscale profile"}},
        ]
        for tid in sorted(set(self._threads.values())):
            events.append({"name": "thread_name", "ph": "M", "pid": 0, "tid": tid,
                           "args": {"name": "main" if tid == 0 else f"thread {tid}"}})
        for r in self.records:
            if r.time_s is None or r.start_s is None:
                continue
            events.append({
                "name": r.op, "cat": r.source or "op", "ph": "X", "pid": 0, "tid": r.thread,
                "ts": r.start_s * 1e6, "dur": max(r.time_s * 1e6, 0.001),
                "args": {"scope": r.scope, "shapes": [_fmt_shape(s) for s in r.shapes], "dtype": r.dtype,
                         "flops": r.flops, "executed_flops": r.executed_flops,
                         "nonmatmul_flops": r.nonmatmul_flops, "bytes": r.bytes, "device": r.device},
            })
        return {"traceEvents": events, "displayTimeUnit": "ms",
                "otherData": {"producer": "flopscale", "clock": "cuda events" if self._cuda_dev else "perf_counter"}}

    def to_chrome_trace(self, path: str | os.PathLike) -> Path:
        """Write the Perfetto-loadable trace JSON; returns the path."""
        return write_text_atomic(path, json.dumps(self.chrome_trace()))


def _fmt_shape(s: Any) -> str:
    if isinstance(s, tuple):
        return "x".join(str(d) for d in s) if s else "scalar"
    if isinstance(s, list):
        return "[" + ", ".join(_fmt_shape(x) for x in s) + "]"
    return str(s)

