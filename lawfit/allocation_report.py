"""Several allocations (and inverse questions) under one law, as one printable object: what
``flopscale allocate`` prints, and what its ``--json`` holds."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from .allocation import Allocation, allocate, optimal_for_params
from .laws import PF_DAY


def _ci(ci: dict, key: str) -> str:
    v = ci.get(key)
    return f"[{v[0]:.3g}, {v[1]:.3g}]" if v else ""


def _loss(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


@dataclass
class AllocationReport:
    """``allocations`` for budgets, ``inverse`` for model sizes, both under one law."""

    allocations: list[Allocation]
    inverse: list[Allocation]
    loss_unit: str = "the law's loss unit"
    written: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {"allocations": [a.to_dict() for a in self.allocations], "inverse": [a.to_dict() for a in self.inverse],
               "units": {"compute_flop": "FLOP", "N": "parameters", "D": "tokens", "loss": self.loss_unit,
                         "epochs": "passes over the unique tokens"}}
        if self.written:
            out["written"] = dict(self.written)
        return out

    def __str__(self) -> str:
        first = (self.allocations or self.inverse)[0]
        lines = [f"law: {first.law}; N counts {first.n_counts}"]
        if first.citation:
            lines.append(f"source: {first.citation}")
        lines.append(f"method: {first.method.split(';')[0]}; training FLOP per token: {first.flops_per_token}")
        lines.append(f"budget: {first.compute_kind}")
        unit = self.loss_unit
        if self.allocations:
            has_ci = any(a.ci for a in self.allocations)
            head = (f"{'C [FLOP]':>11} {'C [PF-days]':>12} {'N [params]':>11} {'D [tokens]':>11} {'D/N':>7} "
                    f"{'epochs':>6} {f'loss [{unit}]':>22}")
            if has_ci:
                head += f"   {int(round((first.ci_level or 0.95) * 100))}% intervals: N, D, loss"
            lines.append(head)
            for a in self.allocations:
                line = (f"{a.compute:>11.3e} {a.compute / PF_DAY:>12.4g} {a.N:>11.4g} {a.D:>11.4g} "
                        f"{a.tokens_per_param:>7.2f} {a.epochs:>6.2f} {_loss(a.loss):>22}")
                if has_ci:
                    line += f"   N {_ci(a.ci, 'N')} D {_ci(a.ci, 'D')} loss {_ci(a.ci, 'loss')}"
                if a.repetition:
                    r = a.repetition
                    line += (f"   repeated data: {r['epochs']:.2f} epochs of {r['unique_tokens']:.3g} unique tokens, "
                             f"+{r['loss_cost']:.4f} loss against unlimited data (capped at U instead: "
                             f"{r['loss_if_capped_at_U']:.4f})")
                elif a.constrained and a.unconstrained is not None:
                    line += f"   D capped at {a.max_tokens:.3g} (free optimum N {a.unconstrained.N:.4g}, D {a.unconstrained.D:.4g})"
                    if a.loss is not None:
                        line += f": +{a.loss_penalty:.4f} loss"
                if a.inference:
                    i = a.inference
                    line += (f"   inference-aware for {i['inference_tokens']:.3g} tokens: {i['past_chinchilla']:.2f}x "
                             f"Chinchilla's D/N, total {i['total_flop']:.4g} FLOP vs {i['chinchilla_total_flop']:.4g} "
                             f"({100 * i['flop_saved_fraction']:.1f}% saved)")
                lines.append(line)
        if self.inverse:
            lines.append(f"{'N [params]':>11} {'C_opt [FLOP]':>13} {'D_opt [tokens]':>15} {'D/N':>7} {f'loss [{unit}]':>22}")
            for a in self.inverse:
                line = f"{a.N:>11.4g} {a.compute:>13.4e} {a.D:>15.4g} {a.tokens_per_param:>7.2f} {_loss(a.loss):>22}"
                if a.ci:
                    line += f"   C {_ci(a.ci, 'compute')} D {_ci(a.ci, 'D')}"
                lines.append(line)
        seen = []
        for a in self.allocations + self.inverse:
            for w in a.warnings:
                if w not in seen:
                    seen.append(w)
        lines += [f"warning: {w}" for w in seen]
        lines += [f"wrote {k}: {v}" for k, v in self.written.items()]
        return "\n".join(lines)


def allocation_report(compute: Sequence[float] = (), params: Sequence[float] = (), law: Any = "besiroglu2024", *,
                      max_tokens: float | None = None, repeat: bool = True, compute_is: str = "C",
                      inference_tokens: float | None = None) -> AllocationReport:
    """``allocate`` for every budget and ``optimal_for_params`` for every model size, under one law."""
    allocs = list(allocate(list(compute), law=law, max_tokens=max_tokens, repeat=repeat, compute_is=compute_is,
                           inference_tokens=inference_tokens)) if compute else []
    inverse = list(optimal_for_params(list(params), law=law)) if params else []
    first = (allocs or inverse)[0]
    if first.loss is None:
        unit = "none: an allocation law predicts no loss"
    elif "(published)" in first.law:
        unit = "nats/token"
    else:
        unit = "loss unit of the fitted data"
    return AllocationReport(allocs, inverse, unit)
