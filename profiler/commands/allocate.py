"""flopscale allocate: turn a compute budget into compute-optimal parameters N and tokens D."""
from __future__ import annotations

import argparse
import math
import re

from ._common import UserError, atomic_path, print_json

NAME = "allocate"
HELP = "turn a compute budget into compute-optimal parameters N and tokens D"
DESCRIPTION = (
    "Compute-optimal allocation of a training budget C (FLOP) between parameters N and tokens D "
    "under C = 6ND, from a published scaling law or a saved fit (flopscale fit --save). "
    "Several --compute values print a table. --params asks the inverse question: the budget and "
    "tokens for which a given N is compute-optimal."
)
_PFD = 8.64e19


def _number(text: str, what: str) -> float:
    """A positive number; FLOP budgets may end in 'pfd' (PF-days)."""
    t = text.strip().lower().replace("_", "")
    scale = 1.0
    m = re.fullmatch(r"(.+?)\s*(pf-?days?|pfd)", t)
    if m and what == "compute":
        t, scale = m.group(1), _PFD
    try:
        v = float(t) * scale
    except ValueError:
        raise UserError(f"--{what} must be a number, got {text!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise UserError(f"--{what} must be positive and finite, got {text!r}")
    return v


def _values(items: list[str] | None, what: str) -> list[float]:
    out: list[float] = []
    for item in items or []:
        out += [_number(p, what) for p in item.split(",") if p.strip()]
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--compute", action="append", metavar="FLOP",
                        help="training budget in FLOP (e.g. 1e24, or 1e4pfd for PF-days); repeat or comma-separate for a table")
    parser.add_argument("--params", action="append", metavar="N",
                        help="inverse question: the compute-optimal budget and tokens for N parameters (repeatable)")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--law", default=None,
                     help="published fit: besiroglu2024 (default), hoffmann2022, kaplan2020")
    src.add_argument("--fit", default=None, metavar="JSON", help="a fit saved by 'flopscale fit --save'")
    parser.add_argument("--max-tokens", default=None, metavar="TOKENS",
                        help="unique tokens available; a larger D_opt is capped and the loss penalty reported")
    parser.add_argument("--plot", default=None, metavar="PNG", help="write N_opt(C) and D_opt(C) with interval bands")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of text")


def _fmt_ci(ci, key):
    v = ci.get(key)
    return f"[{v[0]:.3g}, {v[1]:.3g}]" if v else ""


def run(args: argparse.Namespace) -> int:
    from flopscale import lawfit

    computes = _values(args.compute, "compute")
    params = _values(args.params, "params")
    if not computes and not params:
        raise UserError("give a budget with --compute FLOP (or a model size with --params N)")
    max_tokens = _number(args.max_tokens, "max-tokens") if args.max_tokens is not None else None
    if args.plot:
        from pathlib import Path

        parent = Path(args.plot).expanduser().resolve().parent
        if not parent.is_dir():
            raise UserError(f"--plot: directory does not exist: {parent}")
    law = args.fit if args.fit else (args.law or "besiroglu2024")
    if args.fit:
        try:
            law = lawfit.load_fit(args.fit)
        except lawfit.LawfitError as exc:
            raise UserError(str(exc)) from None
    try:
        allocs = lawfit.allocate(computes, law=law, max_tokens=max_tokens) if computes else []
        inverse = lawfit.optimal_for_params(params, law=law) if params else []
    except lawfit.LawfitError as exc:
        raise UserError(str(exc)) from None
    if args.plot:
        from flopscale.lawfit import plotting

        with atomic_path(args.plot) as tmp:
            plotting.plot_allocation(computes or [a.compute for a in inverse], law, tmp)
    if args.json:
        out = {"allocations": [a.to_dict() for a in allocs], "inverse": [a.to_dict() for a in inverse],
               "units": {"compute_flop": "FLOP", "N": "parameters", "D": "tokens", "loss": "the law's loss unit"}}
        if args.plot:
            out["written"] = {"figure": args.plot}
        print_json(out)
        return 0
    first = (allocs or inverse)[0]
    is_pub = isinstance(law, str)
    loss_unit = "nats/token" if is_pub else "loss unit of the fitted data"
    print(f"law: {first.law}; N counts {first.n_counts}")
    print(f"method: {first.method.split(';')[0]}; training FLOP per token: {first.flops_per_token}")
    ci_lvl = first.ci_level
    if allocs:
        has_ci = any(a.ci for a in allocs)
        head = f"{'C [FLOP]':>11} {'C [PF-days]':>12} {'N [params]':>11} {'D [tokens]':>11} {'D/N':>7} {f'loss [{loss_unit}]':>22}"
        if has_ci:
            head += f"   {int(round(ci_lvl * 100))}% intervals: N, D, loss"
        if max_tokens is not None:
            head += "   capped D: loss penalty"
        print(head)
        for a in allocs:
            line = (f"{a.compute:>11.3e} {a.compute / _PFD:>12.4g} {a.N:>11.4g} {a.D:>11.4g} "
                    f"{a.tokens_per_param:>7.2f} {a.loss:>22.4f}")
            if has_ci:
                line += f"   N {_fmt_ci(a.ci, 'N')} D {_fmt_ci(a.ci, 'D')} loss {_fmt_ci(a.ci, 'loss')}"
            if a.constrained:
                line += (f"   D capped at {a.max_tokens:.3g} (free optimum N {a.unconstrained.N:.4g}, "
                         f"D {a.unconstrained.D:.4g}): +{a.loss_penalty:.4f} loss")
            print(line)
    if inverse:
        print(f"{'N [params]':>11} {'C_opt [FLOP]':>13} {'D_opt [tokens]':>15} {'D/N':>7} {f'loss [{loss_unit}]':>22}")
        for a in inverse:
            line = f"{a.N:>11.4g} {a.compute:>13.4e} {a.D:>15.4g} {a.tokens_per_param:>7.2f} {a.loss:>22.4f}"
            if a.ci:
                line += f"   C {_fmt_ci(a.ci, 'compute')} D {_fmt_ci(a.ci, 'D')}"
            print(line)
    if args.plot:
        print(f"wrote figure: {args.plot}")
    return 0
