"""Declared costs of the kernels.

Every public op of :mod:`kernels` declares its cost as a pure function of its
arguments (shapes, dtypes, layout).  The profiler *reads* these declarations;
kernels never import the profiler.

Conventions (see README "Counting conventions"):

* ``flops`` -- *model* FLOPs: the matmul-like work the mathematics requires,
  ``2*M*N*K`` for a matmul, ``4*B*H*D*P`` for an attention forward with ``P``
  unmasked (query, key) pairs.  No recompute, nothing that is computed and then
  masked away.  This is what MFU divides.
* ``executed_flops`` -- FLOPs the kernel really performs on its matrix units:
  backward recompute of attention scores, computed-then-masked elements of
  diagonal blocks, and a head dim padded to the kernel's tile (``D = 96`` runs on
  a 128-wide tile: 4/3 of the work) are included; the ragged edges of sequence
  tiles are *not* (tiles are masked, not padded, in memory, but the MMA still
  runs on the padded tile: we count the logical rows only).  This is what HFU
  divides.
* ``peak_dtype`` -- which peak rates ``executed_flops``: ``"bf16"``/``"fp16"``
  (tensor cores), ``"tf32"`` (float32 on tensor cores), ``"fp32"`` (float32 in
  IEEE precision on the FMA units, rated against the fp32 peak, not a
  tensor-core one); ``""`` when a declaration does not say.
* ``nonmatmul_flops`` -- softmax, scaling and other elementwise work; counted,
  but kept out of tensor-core utilisation.
* ``bytes`` -- compulsory DRAM traffic: each operand read once, each output
  written once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

__all__ = ["Cost", "register_cost", "cost_of", "registered_ops", "peak_dtype_of"]

_PEAK_NAMES = {"torch.float16": "fp16", "torch.bfloat16": "bf16", "torch.float32": "fp32"}


def peak_dtype_of(dtype: Any, ieee: bool) -> str:
    """``Cost.peak_dtype`` of a matmul on ``dtype`` inputs: ``"fp16"``/``"bf16"``; float32
    ``"fp32"`` in IEEE precision (FMA units) else ``"tf32"`` (tensor cores); ``""`` if unknown."""
    name = _PEAK_NAMES.get(str(dtype), "")
    if name == "fp32" and not ieee:
        return "tf32"
    return name


@dataclass(frozen=True)
class Cost:
    flops: int
    executed_flops: int
    bytes: int
    nonmatmul_flops: int = 0
    # optional breakdown of ``flops``/``executed_flops`` into named parts, e.g.
    # {"scores": ..., "pv": ..., "recompute": ...}; values are FLOP.
    detail: Mapping[str, int] = field(default_factory=dict)
    # the peak class of ``executed_flops`` (module docstring); '' = not declared
    peak_dtype: str = ""

    def __add__(self, other: "Cost") -> "Cost":
        detail = dict(self.detail)
        for k, v in other.detail.items():
            detail[k] = detail.get(k, 0) + v
        return Cost(
            self.flops + other.flops,
            self.executed_flops + other.executed_flops,
            self.bytes + other.bytes,
            self.nonmatmul_flops + other.nonmatmul_flops,
            detail,
            # a sum over launches of different peak classes has none
            self.peak_dtype if self.peak_dtype == other.peak_dtype else "",
        )


_REGISTRY: dict[str, Callable[..., Cost]] = {}


def _key(op: Any) -> str:
    """Normalise an op to its qualified name without overload: 'flopscale::matmul'."""
    if isinstance(op, str):
        name = op
    else:
        # OpOverload / OpOverloadPacket / CustomOpDef
        name = getattr(op, "_qualified_op_name", None) or getattr(op, "_name", None) or str(op)
        name = str(name)
    name = name.replace("torch.ops.", "").replace(".", "::", 1) if "::" not in name else name
    # strip the overload name ('.default')
    ns, _, rest = name.partition("::")
    rest = rest.split(".")[0]
    return f"{ns}::{rest}"


def register_cost(op: str) -> Callable[[Callable[..., Cost]], Callable[..., Cost]]:
    """Decorator: declare the cost function of custom op ``op`` ('flopscale::name').

    The function takes exactly the op's arguments (tensors may be real tensors,
    fake tensors or meta tensors: only shapes/dtypes are read) and returns a
    :class:`Cost`.
    """

    def deco(fn: Callable[..., Cost]) -> Callable[..., Cost]:
        _REGISTRY[_key(op)] = fn
        return fn

    return deco


def cost_of(op: Any, *args: Any, **kwargs: Any) -> Cost | None:
    """The declared cost of one call of ``op`` with these arguments, or None if undeclared."""
    fn = _REGISTRY.get(_key(op))
    if fn is None:
        return None
    return fn(*args, **kwargs)


def registered_ops() -> list[str]:
    return sorted(_REGISTRY)
