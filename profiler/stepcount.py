"""Count the FLOPs of one training step of any ``nn.Module``, by module path and phase.

:class:`StepCounter` is a ``TorchDispatchMode`` with torch's ``ModuleTracker``: every op that
reaches the dispatcher is costed by :func:`profiler.record.torch_op_cost` -- torch's
FlopCounterMode formulas for matmuls and convolutions, flopscale's causal-aware count for
``scaled_dot_product_attention`` (model FLOPs without the backward recompute; executed FLOPs
with it), the flopscale ops' declared costs, and per-element estimates of the non-matmul work
-- and attributed to the innermost module running it (``"layers.0.attn.q_proj"``; work outside
every module, such as the loss, goes to ``"(outside modules)"``) and to the phase
(``forward``, ``backward``, ``optimizer``).  Sums are kept per (phase, module, kind); nothing
per op is stored, so memory stays bounded.

:func:`graph_flops` counts a traced (aten) FX graph without running it, from its nodes'
fake-tensor metadata, with the same costs: the count of a ``torch.compile``'d step.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .record import torch_op_cost

__all__ = ["OUTSIDE", "KINDS", "Tally", "StepCounter", "graph_flops"]

OUTSIDE = "(outside modules)"
# kinds of work: attention (scores, x V), logits (output layer matmuls), matmul (other
# matmuls/convolutions), recompute and masked (executed, not model), nonmatmul (estimates)
KINDS = ("attn_scores", "attn_pv", "logits", "matmul", "recompute", "masked", "nonmatmul")


@dataclass
class Tally:
    """FLOP sums: ``flops[(phase, path, kind)]``, the forward attention calls' shapes
    (``attention_calls``: (batch*heads, heads or None, S_q, S_k, D_qk) of each forward call) and
    counts of ops whose formula failed."""

    flops: dict[tuple[str, str, str], float] = field(default_factory=lambda: defaultdict(float))
    attention_calls: list[tuple[int, int | None, int, int, int]] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    dense_attention_note: bool = False

    def add_cost(self, phase: str, path: str, cost: dict, name: str, logits: bool, q_shape: Any = None) -> None:
        f = float(cost.get("flops") or 0)
        ex = float(cost.get("executed_flops") or 0)
        nm = float(cost.get("nonmatmul_flops") or 0)
        if cost.get("note", "").startswith(("FLOP formula failed", "cost declaration failed")):
            self.failures[name] += 1
        if nm:
            self.flops[(phase, path, "nonmatmul")] += nm
        if not (f or ex):
            return
        src = cost.get("source")
        detail = cost.get("detail") or {}
        if src == "attention" or (src == "declared" and "attention" in name):
            sc, pv = detail.get("scores"), detail.get("pv")
            if sc is None or pv is None or sc + pv != f:
                sc, pv = f / 2, f - f / 2
            self.flops[(phase, path, "attn_scores")] += sc
            self.flops[(phase, path, "attn_pv")] += pv
            extra = ex - f
            masked = float(detail.get("masked", 0) or 0)
            if extra:
                self.flops[(phase, path, "recompute")] += extra - masked
            if masked:
                self.flops[(phase, path, "masked")] += masked
            if phase == "forward" and q_shape is not None:
                self.attention_calls.append(q_shape)
            if cost.get("note", "").startswith("explicit attention mask"):
                self.dense_attention_note = True
            return
        self.flops[(phase, path, "logits" if logits else "matmul")] += f
        if ex != f:
            self.flops[(phase, path, "recompute")] += ex - f

    # ---- views
    def total(self, kinds: tuple[str, ...], phase: str | None = None) -> float:
        return sum(v for (ph, _p, k), v in self.flops.items() if k in kinds and (phase is None or ph == phase))

    def by_module(self, kinds: tuple[str, ...]) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for (_ph, p, k), v in self.flops.items():
            if k in kinds:
                out[p] += v
        return dict(out)

    def under(self, prefix: str, kinds: tuple[str, ...], phase: str | None = None) -> float:
        return sum(v for (ph, p, k), v in self.flops.items()
                   if k in kinds and (phase is None or ph == phase) and (p == prefix or p.startswith(prefix + ".")))


def _q_shape(func: Any, args: tuple) -> Any:
    q = args[0] if args and isinstance(args[0], torch.Tensor) else None
    k = args[1] if len(args) > 1 and isinstance(args[1], torch.Tensor) else None
    if q is None or k is None or q.dim() < 3:
        return None
    bh = 1
    for s in q.shape[:-2]:
        bh *= int(s)
    heads = int(q.shape[-3]) if q.dim() >= 4 else None
    return (bh, heads, int(q.shape[-2]), int(k.shape[-2]), int(q.shape[-1]))


def _touches(args: Any, out: Any, weight: Any, vocab: int | None) -> bool:
    """Does a matmul use the output layer's weight, or (no weight known) a tensor with the vocabulary as a dim?"""
    ts = [t for t in list(args) + ([out] if isinstance(out, torch.Tensor) else list(out or ()))
          if isinstance(t, torch.Tensor)]
    if weight is not None:
        shape = tuple(weight.shape)
        for t in ts:
            if t.dim() == 2 and (tuple(t.shape) == shape or tuple(t.shape) == shape[::-1]):
                return True
        return False
    return vocab is not None and any(t.dim() >= 2 and int(t.shape[-1]) == vocab for t in ts)


class StepCounter(TorchDispatchMode):
    """Count every op run inside the block (module docstring).  ``root_name`` is stripped
    from ModuleTracker's paths; ``output_path`` (the output layer) makes its matmuls
    ``logits``; without it, ``output_weight``/``vocab`` recognise them by shape.
    ``phase`` may be set to ``"optimizer"`` by the caller around the optimizer step."""

    supports_higher_order_operators = True

    def __init__(self, model: Any, output_path: str | None = None, output_weight: Any = None,
                 vocab: int | None = None) -> None:
        super().__init__()
        from torch.utils.module_tracker import ModuleTracker

        self.tally = Tally()
        self.tracker = ModuleTracker()
        self.output_path = output_path
        self.output_weight = output_weight if output_path is None else None
        self.vocab = vocab
        self.phase: str | None = None
        self._root = type(model).__name__

    def __enter__(self):
        self.tracker.__enter__()
        return super().__enter__()

    def __exit__(self, *exc: Any):
        try:
            return super().__exit__(*exc)
        finally:
            self.tracker.__exit__(*exc)

    def _path(self) -> str:
        parents = [p for p in self.tracker.parents if p != "Global"]
        if not parents:
            return OUTSIDE
        inner = max(parents, key=lambda p: (p.count("."), len(p)))
        if inner == self._root:
            return ""
        return inner[len(self._root) + 1:] if inner.startswith(self._root + ".") else inner

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        try:
            cost = torch_op_cost(func, args, kwargs, out, all_ops=True)
        except Exception as exc:  # an op we cannot cost must not break the user's step
            self.tally.failures[f"{func._schema.name}: {type(exc).__name__}"] += 1
            return out
        if cost is None:
            return out
        phase = self.phase or ("backward" if self.tracker.is_bw else "forward")
        path = self._path()
        name = func._schema.name
        logits = False
        if cost.get("flops") and cost.get("source") in ("flop_formula", "vector_matmul"):
            if self.output_path is not None:
                logits = path == self.output_path or path.startswith(self.output_path + ".")
            else:
                logits = _touches(args, out, self.output_weight, self.vocab)
        q = _q_shape(func, args) if cost.get("source") == "attention" or "attention" in name else None
        self.tally.add_cost(phase, path, cost, name, logits, q)
        return out


def _meta(x: Any) -> Any:
    import torch.fx as fx

    if isinstance(x, fx.Node):
        return x.meta.get("val")
    if isinstance(x, (list, tuple)):
        return type(x)(_meta(v) for v in x)
    return x


def graph_flops(gm: Any, phase: str, tally: Tally | None = None) -> Tally:
    """Count an aten FX graph (from AOT autograd) without running it; module paths are not
    kept (``"(graph)"``).  Ops without fake-tensor metadata are skipped and counted in
    ``failures``."""
    tally = tally or Tally()
    for node in gm.graph.nodes:
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
            continue
        args, kwargs, out = _meta(node.args), {k: _meta(v) for k, v in node.kwargs.items()}, node.meta.get("val")
        if out is None:
            continue
        try:
            cost = torch_op_cost(node.target, tuple(args), kwargs, out, all_ops=False)
        except Exception as exc:
            tally.failures[f"{node.target._schema.name}: {type(exc).__name__}"] += 1
            continue
        if cost is not None:
            tally.add_cost(phase, "(graph)", cost, node.target._schema.name, False)
    return tally
