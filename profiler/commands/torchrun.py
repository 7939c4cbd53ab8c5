"""``torchrun -m flopscale.profiler.distributed``: the command line of the distributed runs.

Parses the options of ``collectives``, ``profile``, ``audit`` and ``ddp`` (the last three take
the options of ``flopscale profile`` and ``flopscale audit``), runs the body on every rank
through the domain in :mod:`profiler.distributed_runs`, and prints what rank 0 gathered.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

from ..collectives import OPS, bus_factor, size_range, table_header
from ..distributed import measure_data_parallel
from ..distributed_runs import (Rank, audit_on_rank, checked_on_rank0, collectives_in_ranks, ddp_on_rank, in_ranks,
                                profile_on_rank)
from ._common import UserError, check_output_path, print_json


def _collectives_main(args: argparse.Namespace) -> int:
    try:
        sizes = size_range(args.sizes)
        ops = [o.strip() for o in args.ops.split(",")]
        for op in ops:
            bus_factor(op, 1)  # an unknown name is refused here, before any rank starts
        if int(os.environ.get("RANK", "0")) == 0:  # only rank 0 writes the CSV
            check_output_path(args.out, "--out")
    except (UserError, ValueError) as exc:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"flopscale.profiler.distributed collectives: error: {exc}", file=sys.stderr, flush=True)
        return 2
    quiet = args.quiet
    return collectives_in_ranks(args.timeout, ops, sizes, reps=args.reps, out=args.out,
                                on_start=None if quiet else lambda w, b: print(table_header(w, b), flush=True),
                                on_row=None if quiet else lambda row: print(row.to_text(), flush=True))


def _show(res: Any, as_json: bool) -> int:
    """Print what rank 0 gathered (the other ranks get None and print nothing)."""
    if res is not None:
        if as_json:
            print_json(res.to_dict())
        else:
            print(res)
    return 0


def _one_device(args: argparse.Namespace) -> None:
    if args.device is not None:
        raise UserError("--device: every rank uses its own device (cuda:LOCAL_RANK, or the CPU)")


def _profile_main(args: argparse.Namespace) -> int:
    from ..profile_run import ProfileOptions

    def body(r: Rank) -> int:
        if args.distributed is not None:
            raise UserError("--distributed belongs to 'flopscale profile'; here torchrun sets the ranks")
        if args.trace or args.plot:
            raise UserError("--trace and --plot are per-device outputs: run 'flopscale profile' on one device "
                            "for them")
        checked_on_rank0(r, lambda: check_output_path(args.csv, "--csv"))  # only rank 0 writes it
        res = profile_on_rank(r, ProfileOptions.from_namespace(args), records_dir=args.records_dir,
                              csv_path=args.csv)
        return _show(res, args.json)

    return in_ranks("profile", args.timeout, body, user_errors=(UserError,))


def _audit_main(args: argparse.Namespace) -> int:
    from . import audit as A

    def body(r: Rank) -> int:
        cfg = A._config(args)
        if args.sweep or args.plot:
            raise UserError("--sweep and --plot are single-device outputs: run 'flopscale audit' for them")
        _one_device(args)
        if args.time_budget is None or not (args.time_budget > 0):
            raise UserError(f"--time-budget must be positive, got {args.time_budget}")
        res = audit_on_rank(r, cfg, args.batch, impl=None if args.impl == "auto" else args.impl, dtype=args.dtype,
                            time_budget_s=args.time_budget, keep_records=bool(args.records),
                            records_dir=args.records_dir)
        return _show(res, args.json)

    return in_ranks("audit", args.timeout, body, user_errors=(UserError,))


def _ddp_main(args: argparse.Namespace) -> int:
    from . import audit as A

    def body(r: Rank) -> int:
        cfg = A._config(args)
        if args.sweep or args.plot or args.records:
            raise UserError("--sweep, --plot and --records belong to 'flopscale audit'")
        _one_device(args)
        if args.reps < 1:
            raise UserError(f"--reps must be >= 1, got {args.reps}")
        if not (args.bucket_mb > 0):
            raise UserError(f"--bucket-mb must be positive, got {args.bucket_mb}")
        res = ddp_on_rank(r, cfg, args.batch, impl=None if args.impl == "auto" else args.impl, dtype=args.dtype,
                          reps=args.reps, bucket_mb=args.bucket_mb, fsdp=args.fsdp, records_dir=args.records_dir)
        return _show(res, args.json)

    return in_ranks("ddp", args.timeout, body, user_errors=(UserError,))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="torchrun ... -m flopscale.profiler.distributed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("collectives", help="all-reduce, all-gather, reduce-scatter, broadcast bandwidth")
    c.add_argument("--sizes", default="1K:1G", help="LO:HI message sizes in bytes, powers of 4 (default 1K:1G)")
    c.add_argument("--ops", default=",".join(OPS))
    c.add_argument("--reps", type=int, default=5)
    c.add_argument("--out", default=None, help="CSV written by rank 0, row by row")
    c.add_argument("--timeout", type=float, default=120.0, help="seconds a collective may block before failing")
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(_main=_collectives_main)

    from . import audit as _audit_cmd
    from . import profile as _profile_cmd

    pr = sub.add_parser("profile", help="flopscale profile on every rank; rank 0 prints per-rank tables and "
                                        "the aggregate", description=_profile_cmd.DESCRIPTION)
    _profile_cmd.add_arguments(pr)
    _rank_options(pr)
    pr.set_defaults(_main=_profile_main)

    au = sub.add_parser("audit", help="flopscale audit on every rank; rank 0 prints the audit, per-rank "
                                      "step rates and the aggregate", description=_audit_cmd.DESCRIPTION)
    _audit_cmd.add_arguments(au)
    _rank_options(au)
    au.set_defaults(_main=_audit_main)

    dp = sub.add_parser("ddp", help="data-parallel training step of the audit model: compute, communication, "
                                    "overlap", description=measure_data_parallel.__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    _audit_cmd.add_arguments(dp)
    dp.add_argument("--reps", type=int, default=5, help="timed repetitions of each measurement (default 5)")
    dp.add_argument("--bucket-mb", type=float, default=25.0, help="DDP gradient bucket size in MiB (default 25)")
    dp.add_argument("--fsdp", action="store_true",
                    help="also measure the step under fully_shard (FSDP2), where this torch has it")
    _rank_options(dp)
    dp.set_defaults(_main=_ddp_main)
    return p


def _rank_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--records-dir", default=None, metavar="DIR",
                   help="every rank also writes its own record to DIR/rank<R>.json before the gather "
                        "(profile: and each row to DIR/rank<R>.rows.jsonl as it finishes)")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds a collective may block before the run fails (default 300)")


def main(argv: Sequence[str] | None = None) -> int:
    if not _cuda_available():
        # the flopscale kernels run under the Triton interpreter on a CPU; set before triton loads
        os.environ.setdefault("TRITON_INTERPRET", "1")
    args = build_parser().parse_args(argv)
    return args._main(args)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
