"""flopscale allocate: turn a compute budget into compute-optimal parameters N and tokens D."""
from __future__ import annotations

import argparse
import math
import re

from ._common import UserError, atomic_path, check_output_path, print_json

NAME = "allocate"
HELP = "turn a compute budget into compute-optimal parameters N and tokens D"
DESCRIPTION = (
    "Compute-optimal allocation of a training budget C (FLOP) between parameters N and tokens D "
    "under C = 6ND, from a published scaling law, a published allocation law (N_opt = k*C^a), "
    "your own power law (--law power:k=K,a=A) or a saved fit (flopscale fit --save, Chinchilla "
    "or IsoFLOP). Several --compute values print a table. --params asks the inverse question. "
    "--max-tokens U allocates with repeated data when U unique tokens are fewer than D_opt "
    "(Muennighoff et al. 2023); --inference-tokens T minimises training plus inference FLOP for "
    "the same loss (Sardana et al. 2024)."
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
    from flopscale.lawfit import law_names

    parser.add_argument("--compute", action="append", metavar="FLOP",
                        help="training budget in FLOP (e.g. 1e24, or 1e4pfd for PF-days); repeat or comma-separate for a table")
    parser.add_argument("--params", action="append", metavar="N",
                        help="inverse question: the compute-optimal budget and tokens for N parameters (repeatable)")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--law", default=None,
                     help=f"published law: {', '.join(law_names())} (default besiroglu2024), or power:k=K,a=A "
                          "for N_opt = K*C^A")
    src.add_argument("--fit", default=None, metavar="JSON",
                     help="a fit saved by 'flopscale fit --save' (a Chinchilla-type fit or --law isoflop)")
    parser.add_argument("--compute-is", choices=("C", "C_min"), default="C",
                        help="what the budget is: C = FLOP spent (default) or Kaplan's C_min (kaplan2020 only; "
                             "C = 2*C_min at the critical batch size)")
    parser.add_argument("--max-tokens", default=None, metavar="TOKENS",
                        help="unique tokens available; when D_opt is larger, data are repeated (Muennighoff et al. "
                             "2023: epochs and the loss cost are reported)")
    parser.add_argument("--no-repeat", action="store_true",
                        help="with --max-tokens: cap D at the unique tokens instead of repeating them")
    parser.add_argument("--inference-tokens", default=None, metavar="TOKENS",
                        help="tokens to be generated over the model's life: minimise training + inference FLOP "
                             "at the loss of the compute-optimal model (Sardana et al. 2024)")
    parser.add_argument("--plot", default=None, metavar="PNG", help="write N_opt(C) and D_opt(C) with interval bands")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    from flopscale import lawfit

    computes = _values(args.compute, "compute")
    params = _values(args.params, "params")
    if not computes and not params:
        raise UserError("give a budget with --compute FLOP (or a model size with --params N)")
    max_tokens = _number(args.max_tokens, "max-tokens") if args.max_tokens is not None else None
    inference = _number(args.inference_tokens, "inference-tokens") if args.inference_tokens is not None else None
    check_output_path(args.plot, "--plot")
    law = args.law or "besiroglu2024"
    try:
        if args.fit:
            law = lawfit.load_fit(args.fit)
        report = lawfit.allocation_report(computes, params, law, max_tokens=max_tokens, repeat=not args.no_repeat,
                                          compute_is=args.compute_is, inference_tokens=inference)
    except lawfit.LawfitError as exc:
        raise UserError(str(exc)) from None
    if args.plot:
        from flopscale.lawfit import plotting

        with atomic_path(args.plot) as tmp:
            plotting.plot_allocation(computes or [a.compute for a in report.inverse], law, tmp)
        report.written["figure"] = args.plot
    if args.json:
        print_json(report.to_dict())
    else:
        print(report)
    return 0
