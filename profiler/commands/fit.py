"""flopscale fit: fit a scaling law (or run an IsoFLOP analysis) on a table of training runs."""
from __future__ import annotations

import argparse
import math
import sys
import warnings

from ._common import UserError, atomic_path, check_output_path, print_json, write_text_atomic

NAME = "fit"
HELP = "fit a scaling law to a table of training runs, with bootstrap intervals"
DESCRIPTION = (
    "Fit a scaling law to a CSV of training runs (columns N = parameters, D = tokens, C = FLOP, "
    "loss; D missing is derived as C/(6N)). The default Chinchilla fit minimises the sum of Huber "
    "losses (delta 1e-3) of log-loss residuals from Hoffmann et al.'s grid of 4,500 starts. "
    "--law isoflop runs the IsoFLOP analysis (Approach 2) instead."
)
LAW_CHOICES = "chinchilla, kaplan_nd, kaplan_n, kaplan_d, kaplan_c, power_law, power_law_no_offset, bnsl, bnsl:K, saturating, isoflop"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("table", help="CSV file of training runs, or a shipped data set: "
                                      "chinchilla_fig4_epoch, isoflops_compiled, porian_refinedweb_isoflop")
    parser.add_argument("--law", default="chinchilla", help=f"law to fit: {LAW_CHOICES} (default chinchilla)")
    parser.add_argument("--columns", default=None, metavar="NAME=COL,...",
                        help="map the law's names to CSV columns, e.g. N=params,D=tokens,loss=val_loss "
                             "(one-variable laws take x: --columns x=N)")
    parser.add_argument("--exclude", action="append", default=None, metavar="RULE",
                        help="leave out runs: 'highest-loss:K' (the K highest losses; Besiroglu et al. 2024 "
                             "drop 5) or a row filter 'COLUMN OP NUMBER' such as 'N < 1e8' (repeatable)")
    parser.add_argument("--bootstrap", type=int, default=0, metavar="K",
                        help="bootstrap resamples for percentile intervals (default 0; isoflop: 1000)")
    parser.add_argument("--starts", default="grid", help="'grid' (default) or a number of random starts")
    parser.add_argument("--delta", type=float, default=1e-3, help="Huber threshold on log-loss residuals (default 1e-3)")
    parser.add_argument("--seed", type=int, default=0, help="seed for bootstrap and random starts (default 0)")
    parser.add_argument("--ci-level", type=float, default=0.95, help="interval level (default 0.95)")
    parser.add_argument("--plot", default=None, metavar="PNG", help="write a figure of the data and the fit")
    parser.add_argument("--save", default=None, metavar="JSON", help="save the fit (reusable: flopscale allocate --fit)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="processes for large batches of starts and for the bootstrap (default: "
                             "$LAWFIT_WORKERS or the usable CPUs; at most 2 are used; the fit is the same for any N)")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of text")


def _warn_to_stderr(caught) -> None:
    for w in caught:
        print(f"flopscale fit: warning: {w.message}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from flopscale import lawfit

    starts: object = args.starts
    if isinstance(starts, str) and starts != "grid":
        try:
            starts = int(starts)
        except ValueError:
            raise UserError(f"--starts must be 'grid' or a number, got {args.starts!r}") from None
    if args.bootstrap < 0:
        raise UserError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    if not (args.delta > 0) or not math.isfinite(args.delta):
        raise UserError(f"--delta must be a positive number, got {args.delta}")
    if not 0 < args.ci_level < 1:
        raise UserError(f"--ci-level must be between 0 and 1, got {args.ci_level}")
    for opt, path in (("--plot", args.plot), ("--save", args.save)):
        check_output_path(path, opt)        # before the work
    is_iso = args.law.strip().lower() == "isoflop"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", lawfit.LawfitWarning)
        try:
            if is_iso:
                result = lawfit.isoflop(args.table, columns=args.columns, bootstrap=args.bootstrap or 1000,
                                        seed=args.seed, ci_level=args.ci_level, exclude=args.exclude)
            else:
                result = lawfit.fit(args.table, law=args.law, columns=args.columns, delta=args.delta, starts=starts,
                                    bootstrap=args.bootstrap, seed=args.seed, ci_level=args.ci_level,
                                    workers=args.workers, exclude=args.exclude)
        except lawfit.LawfitError as exc:
            _warn_to_stderr(caught)
            raise UserError(str(exc)) from None
    _warn_to_stderr(caught)
    if not is_iso and not result.converged:
        raise UserError(f"the {result.law.name} fit did not converge ({result.message}); "
                        "try --starts with more random starts or another law")
    written = []
    if args.save:
        if is_iso:
            from ._common import dumps
            write_text_atomic(args.save, dumps(result.to_dict()) + "\n")
        else:
            write_text_atomic(args.save, result.to_json() + "\n")
        written.append(("fit", args.save))
    if args.plot:
        from flopscale.lawfit import plotting

        try:
            with atomic_path(args.plot) as tmp:
                (plotting.plot_isoflop if is_iso else plotting.plot_fit)(result, tmp)
        except UserError:
            raise
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot write the figure {args.plot}: {exc}") from None
        written.append(("figure", args.plot))
    if args.json:
        out = result.to_dict() if is_iso else result.to_dict(include_samples=False)
        out["written"] = {k: v for k, v in written}
        print_json(out)
        return 0
    print(result)
    for what, path in written:
        print(f"wrote {what}: {path}")
    return 0
