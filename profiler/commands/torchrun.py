"""``torchrun -m flopscale.profiler.distributed``: the command line of the distributed runs.

Parses the options of ``collectives``, ``profile``, ``audit`` and ``ddp`` (the last three take
the options of ``flopscale profile`` and ``flopscale audit``), runs the body on every rank
through the domain in :mod:`profiler.distributed`, and prints what rank 0 gathered.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from ..collectives import OPS, CollectiveRow, iter_sizes, measure, parse_size
from ..distributed import (
    _device_of_rank,
    _fully_shard,
    _identity,
    _json_normal,
    _peer_lost,
    _Progress,
    _write_record,
    audit_aggregate,
    gather_to_rank0,
    init,
    measure_data_parallel,
    profile_aggregate,
    render_audit,
    render_ddp,
    render_profile,
)


def _collectives_main(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    rank, world, backend = init(args.timeout)
    progress = _Progress(rank)
    progress.beat("initialised")
    lo, hi = (parse_size(s) for s in args.sizes.split(":")) if ":" in args.sizes else (parse_size(args.sizes),) * 2
    ops = [o.strip() for o in args.ops.split(",")]
    writer = fh = None
    if rank == 0 and args.out:
        fh = open(args.out, "w", newline="")
        writer = csv.DictWriter(fh, fieldnames=list(CollectiveRow.__dataclass_fields__))
        writer.writeheader()
        fh.flush()

    def on_row(row: CollectiveRow) -> None:
        if writer is not None:
            writer.writerow(row.to_dict())
            fh.flush()
        if rank == 0 and not args.quiet:
            print(_fmt_row(row), flush=True)

    try:
        if rank == 0 and not args.quiet:
            print(f"{world} ranks, backend {backend}; time = median of the slowest rank; "
                  "busbw = algbw x 2(n-1)/n (all-reduce), x (n-1)/n (all-gather, reduce-scatter)", flush=True)
            print(f"{'op':<15}{'size':>12}{'time_us':>12}{'algbw GB/s':>12}{'busbw GB/s':>12}", flush=True)
        measure(ops, list(iter_sizes(lo, hi)), reps=args.reps, on_row=on_row,
                on_progress=lambda what: progress.beat(what))
        progress.beat("done", state="done")
        dist.barrier()
    except Exception as exc:
        progress.beat(f"error: {exc}", state="error")
        print(f"rank {rank}: error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        if fh is not None:
            fh.close()
    dist.destroy_process_group()
    return 0


def _fmt_row(row: CollectiveRow) -> str:
    return (f"{row.op:<15}{_fmt_bytes(row.size_bytes):>12}{row.time_s * 1e6:>12.1f}"
            f"{row.algbw_Bps / 1e9:>12.3f}{row.busbw_Bps / 1e9:>12.3f}")


def _fmt_bytes(n: int) -> str:
    for unit, m in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= m:
            return f"{n / m:g} {unit}"
    return f"{n} B"


def _in_ranks(kind: str, args: argparse.Namespace, body: Callable[..., int]) -> int:
    """Initialise, run ``body(rank, world, backend, device, progress)`` and report failures.

    Bad options (:class:`UserError`) end every rank with status 2 and one line from rank 0;
    any other exception ends the failing rank with status 1 and its heartbeat names it.
    """
    import torch.distributed as dist

    from ._common import UserError

    rank, world, backend = init(args.timeout)
    progress = _Progress(rank)
    progress.beat("initialised")
    device = _device_of_rank(backend)
    try:
        rc = body(rank, world, backend, device, progress)
        progress.beat("done", state="done")
        dist.barrier()
    except UserError as exc:
        progress.beat(f"error: {exc}", state="error")
        if rank == 0:
            print(f"flopscale.profiler.distributed {kind}: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except Exception as exc:  # noqa: BLE001 - named in the heartbeat, printed once per rank
        first = str(exc).splitlines()[0] if str(exc) else ""
        what = first if type(exc) is RuntimeError else f"{type(exc).__name__}: {first}"
        # a rank whose collective broke because another rank left is a casualty, not the cause
        lost = _peer_lost(exc)
        progress.beat(f"error: {what}", state="peer_lost" if lost else "error")
        print(f"rank {rank}: error: {what}", file=sys.stderr, flush=True)
        return 1
    dist.destroy_process_group()
    return rc


def _profile_main(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from . import profile as P
    from ._common import UserError
    from ..telemetry import Telemetry

    def body(rank, world, backend, device, progress) -> int:
        if args.distributed is not None:
            raise UserError("--distributed belongs to 'flopscale profile'; here torchrun sets the ranks")
        if args.trace or args.plot:
            raise UserError("--trace and --plot are per-device outputs: run 'flopscale profile' on one device "
                            "for them")
        cases = P.check_args(args, device.type == "cuda")

        def before_job(i: int, case: Any, prov: str) -> None:
            dist.barrier()  # every rank starts the case together
            progress.beat(f"{case.title} [{prov}]")

        rows_file = None
        if args.records_dir:
            Path(args.records_dir).mkdir(parents=True, exist_ok=True)
            rows_file = Path(args.records_dir) / f"rank{rank}.rows.jsonl"
            rows_file.write_text("")

        def after_job(i: int, row: dict) -> None:
            if rows_file is not None:  # kept even if a rank fails later
                with open(rows_file, "a") as fh:
                    fh.write(json.dumps(_json_normal(row)) + "\n")

        t0 = time.perf_counter()
        with Telemetry(device=device) as tel:
            res = P.collect(args, device, cases, before_job=before_job, after_job=after_job, show_progress=False)
        record = {
            **_identity(rank, world, backend, device),
            "device": res.spec.to_dict(),
            "peak": args.peak,
            "peak_source": res.ceilings.label,
            "notes": res.notes,
            "rows": res.rows_json(),
            "telemetry": tel.summary(),
            "wall_s": time.perf_counter() - t0,
            "launches": [{"row": name, "records": [r.to_dict() for r in prof.records]} for name, prof in res.profiles],
        }
        record = _json_normal(record)
        _write_record(args.records_dir, rank, record)
        gathered = gather_to_rank0(record)
        if gathered is None:
            return 0
        agg = profile_aggregate(gathered)
        if args.csv:
            import pandas as pd

            from ._common import write_text_atomic

            rows = [dict(r, rank=rec["rank"], host=rec["host"]) for rec in gathered for r in rec["rows"]]
            write_text_atomic(args.csv, pd.DataFrame(rows).to_csv(index=False))
        if args.json:
            from ._common import print_json

            print_json({"world_size": world, "backend": backend, "ranks": gathered, "aggregate": agg})
        else:
            print(render_profile(gathered, agg, args, res))
        return 0

    return _in_ranks("profile", args, body)


def _audit_main(args: argparse.Namespace) -> int:
    from ..audit import run_audit
    from . import audit as A
    from ._common import UserError
    from ..telemetry import Telemetry

    def body(rank, world, backend, device, progress) -> int:
        import torch.distributed as dist

        cfg = A._config(args)
        if args.sweep or args.plot:
            raise UserError("--sweep and --plot are single-device outputs: run 'flopscale audit' for them")
        if args.device is not None:
            raise UserError("--device: every rank uses its own device (cuda:LOCAL_RANK, or the CPU)")
        if args.time_budget is None or not (args.time_budget > 0):
            raise UserError(f"--time-budget must be positive, got {args.time_budget}")
        impl = None if args.impl == "auto" else args.impl
        progress.beat("audit")
        dist.barrier()
        t0 = time.perf_counter()
        with Telemetry(device=device) as tel:
            try:
                res = run_audit(cfg, args.batch, impl=impl, device=device, dtype=args.dtype,
                                time_budget_s=args.time_budget, seed=rank, keep_records=bool(args.records))
            except ValueError as exc:
                raise UserError(str(exc).splitlines()[0]) from None
        record = _json_normal({
            **_identity(rank, world, backend, device),
            "seed": rank,
            "audit": res.to_dict(with_records=bool(args.records)),
            "telemetry": tel.summary(),
            "wall_s": time.perf_counter() - t0,
        })
        _write_record(args.records_dir, rank, record)
        gathered = gather_to_rank0(record)
        if gathered is None:
            return 0
        agg = audit_aggregate(gathered)
        if args.json:
            from ._common import print_json

            print_json({"world_size": world, "backend": backend, "ranks": gathered, "aggregate": agg})
        else:
            print(render_audit(gathered, agg, A.render(res)))
        return 0

    return _in_ranks("audit", args, body)


def _ddp_main(args: argparse.Namespace) -> int:
    from . import audit as A
    from ._common import UserError

    def body(rank, world, backend, device, progress) -> int:
        cfg = A._config(args)
        if args.sweep or args.plot or args.records:
            raise UserError("--sweep, --plot and --records belong to 'flopscale audit'")
        if args.device is not None:
            raise UserError("--device: every rank uses its own device (cuda:LOCAL_RANK, or the CPU)")
        if args.reps < 1:
            raise UserError(f"--reps must be >= 1, got {args.reps}")
        if not (args.bucket_mb > 0):
            raise UserError(f"--bucket-mb must be positive, got {args.bucket_mb}")
        impl = None if args.impl == "auto" else args.impl
        progress.beat("DistributedDataParallel step")
        out: dict[str, Any] = {"ddp": measure_data_parallel(cfg, args.batch, device=device, impl=impl,
                                                            dtype=args.dtype, reps=args.reps,
                                                            bucket_mb=args.bucket_mb)}
        if args.fsdp:
            if _fully_shard() is None:
                import torch

                out["fsdp"] = None
                out["fsdp_note"] = f"this torch ({torch.__version__}) has no fully_shard (FSDP2): not measured"
            else:
                progress.beat("fully_shard step")
                out["fsdp"] = measure_data_parallel(cfg, args.batch, device=device, impl=impl, dtype=args.dtype,
                                                    reps=args.reps, fsdp=True)
        record = _json_normal({**_identity(rank, world, backend, device), **out})
        _write_record(args.records_dir, rank, record)
        gathered = gather_to_rank0(record)
        if gathered is None:
            return 0
        if args.json:
            from ._common import print_json

            print_json({"world_size": world, "backend": backend, **record, "ranks": gathered})
        else:
            texts = [render_ddp(out["ddp"])]
            if out.get("fsdp"):
                texts.append(render_ddp(out["fsdp"]))
            elif out.get("fsdp_note"):
                texts.append(f"FSDP: {out['fsdp_note']}")
            print("\n\n".join(texts))
        return 0

    return _in_ranks("ddp", args, body)


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
