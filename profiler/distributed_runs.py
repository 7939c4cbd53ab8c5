"""What every rank of a torchrun job does: the bodies behind
``torchrun ... -m flopscale.profiler.distributed collectives | profile | audit | ddp``.

:func:`in_ranks` initialises the process group, runs a body on the rank and turns failures
into exit statuses: bad options (:class:`RunOptionError`, or the caller's own error types)
end every rank with status 2 and one line from rank 0; any other exception ends the failing
rank with status 1, and its heartbeat names it (a rank whose collective broke because a peer
left is marked a casualty, not the cause).

:func:`profile_on_rank`, :func:`audit_on_rank` and :func:`ddp_on_rank` run one kind of work on
the calling rank, write the rank's record, gather every rank's record on rank 0 and return
there a result that renders itself (``to_text()`` / ``str()`` and ``to_dict()``); the other
ranks get None.  :func:`collectives_in_ranks` measures the collectives with rank 0 writing the
rows to a CSV as they finish (each version of the file complete: rewritten atomically).
"""
from __future__ import annotations

import csv
import io
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Sequence

from ._io import write_text_atomic
from .collectives import CollectiveRow, measure
from .distributed import (
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

PROG = "flopscale.profiler.distributed"


class RunOptionError(ValueError):
    """Bad options for a distributed run: every rank stops with status 2, rank 0 says it once."""


@dataclass
class Rank:
    """The calling rank of an initialised process group."""

    rank: int
    world: int
    backend: str
    device: Any
    progress: _Progress


def in_ranks(kind: str, timeout_s: float, body: Callable[[Rank], int],
             user_errors: tuple[type[BaseException], ...] = ()) -> int:
    """Initialise, run ``body(rank)`` and report failures (see the module's docstring).

    ``user_errors``: the caller's exception types that mean bad options, like
    :class:`RunOptionError` (exit status 2, one line from rank 0).
    """
    import torch.distributed as dist

    rank, world, backend = init(timeout_s)
    progress = _Progress(rank)
    progress.beat("initialised")
    here = Rank(rank, world, backend, _device_of_rank(backend), progress)
    try:
        rc = body(here)
        progress.beat("done", state="done")
        dist.barrier()
    except (RunOptionError, *user_errors) as exc:
        progress.beat(f"error: {exc}", state="error")
        if rank == 0:
            print(f"{PROG} {kind}: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except Exception as exc:  # noqa: BLE001 - named in the heartbeat, printed once per rank
        first = str(exc).splitlines()[0] if str(exc) else ""
        what = first if type(exc) is RuntimeError else f"{type(exc).__name__}: {first}"
        lost = _peer_lost(exc)
        progress.beat(f"error: {what}", state="peer_lost" if lost else "error")
        print(f"rank {rank}: error: {what}", file=sys.stderr, flush=True)
        return 1
    dist.destroy_process_group()
    return rc


def checked_on_rank0(r: Rank, check: Callable[[], Any]) -> None:
    """Run ``check`` on rank 0 only (say, of a file only rank 0 writes); when it raises, every rank
    raises -- rank 0 its own exception, the others :class:`RunOptionError` with its text -- so that
    all of them stop together."""
    import torch.distributed as dist

    err = None
    if r.rank == 0:
        try:
            check()
        except Exception as exc:  # noqa: BLE001 - handed to every rank, raised again below
            err = exc
    box = [None if err is None else str(err)]
    dist.broadcast_object_list(box, src=0)
    if err is not None:
        raise err
    if box[0] is not None:
        raise RunOptionError(box[0])


# --------------------------------------------------------------------------- collectives


class _RowsCsv:
    """A CSV that holds every row so far: rewritten atomically after each row, so a reader (or a
    run stopped between rows) only ever sees a complete file."""

    def __init__(self, path: str | Path, fields: Sequence[str]):
        self.path = Path(path)
        self.fields = list(fields)
        self.rows: list[dict] = []
        self._write()

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self._write()

    def _write(self) -> None:
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, fieldnames=self.fields)
        w.writeheader()
        w.writerows(self.rows)
        write_text_atomic(self.path, buf.getvalue())


def collectives_in_ranks(timeout_s: float, ops: Sequence[str], sizes: Sequence[int], *, reps: int,
                         out: str | Path | None = None, on_start: Callable[[int, str], None] | None = None,
                         on_row: Callable[[CollectiveRow], None] | None = None) -> int:
    """Measure ``ops`` x ``sizes`` on every rank (:func:`profiler.collectives.measure`).

    Rank 0 writes the rows to ``out`` as they finish and calls ``on_start(world, backend)``
    once and ``on_row(row)`` per row.  Returns the rank's exit status: 0, or 1 after a failure
    (named in the heartbeat and on stderr).
    """
    import torch.distributed as dist

    rank, world, backend = init(timeout_s)
    progress = _Progress(rank)
    progress.beat("initialised")
    sink = _RowsCsv(out, CollectiveRow.__dataclass_fields__) if rank == 0 and out else None

    def row_done(row: CollectiveRow) -> None:
        if sink is not None:
            sink.add(row.to_dict())
        if rank == 0 and on_row is not None:
            on_row(row)

    try:
        if rank == 0 and on_start is not None:
            on_start(world, backend)
        measure(list(ops), list(sizes), reps=reps, on_row=row_done, on_progress=lambda what: progress.beat(what))
        progress.beat("done", state="done")
        dist.barrier()
    except Exception as exc:  # noqa: BLE001 - named in the heartbeat and on stderr
        progress.beat(f"error: {exc}", state="error")
        print(f"rank {rank}: error: {exc}", file=sys.stderr, flush=True)
        return 1
    dist.destroy_process_group()
    return 0


# ------------------------------------------------------------------------------- profile


@dataclass
class DistributedProfile:
    """``flopscale profile`` on every rank, as rank 0 gathered it."""

    world_size: int
    backend: str
    ranks: list[dict]
    aggregate: dict
    run: Any = field(repr=False)  # rank 0's ProfileRun (notes, ceilings) for the text
    flush_l2: bool = True

    def to_dict(self) -> dict:
        return {"world_size": self.world_size, "backend": self.backend, "ranks": self.ranks,
                "aggregate": self.aggregate}

    def to_text(self) -> str:
        return render_profile(self.ranks, self.aggregate, SimpleNamespace(no_flush_l2=not self.flush_l2), self.run)

    __str__ = to_text


def profile_on_rank(r: Rank, options: Any, *, records_dir: str | None = None,
                    csv_path: str | None = None) -> DistributedProfile | None:
    """Profile the cases of ``options`` (:class:`profiler.profile_run.ProfileOptions`) on this rank,
    every rank starting each case together (a barrier before it).

    ``records_dir``: the rank's record goes to ``rank<R>.json`` and each row, as it finishes, to
    ``rank<R>.rows.jsonl`` (kept when a rank fails later).  ``csv_path``: rank 0 writes every
    rank's rows there.  Returns the gathered result on rank 0, None elsewhere.
    """
    import torch.distributed as dist

    from .profile_cases import ProfileError
    from .profile_run import build_cases, profile_kernels
    from .telemetry import Telemetry

    try:
        cases = build_cases(options, r.device.type == "cuda")[0]
    except ProfileError as exc:
        raise RunOptionError(str(exc)) from None

    def before_job(i: int, case: Any, prov: str) -> None:
        dist.barrier()  # every rank starts the case together
        r.progress.beat(f"{case.title} [{prov}]")

    rows_file = None
    if records_dir:
        Path(records_dir).mkdir(parents=True, exist_ok=True)
        rows_file = Path(records_dir) / f"rank{r.rank}.rows.jsonl"
        rows_file.write_text("")

    def after_job(i: int, row: dict) -> None:
        if rows_file is not None:  # kept even if a rank fails later
            with open(rows_file, "a") as fh:
                fh.write(json.dumps(_json_normal(row)) + "\n")

    t0 = time.perf_counter()
    with Telemetry(device=r.device) as tel:
        try:
            res = profile_kernels(options, r.device, cases, before_job=before_job, show_progress=False,
                                  after_job=after_job)
        except ProfileError as exc:
            raise RunOptionError(str(exc)) from None
    record = _json_normal({
        **_identity(r.rank, r.world, r.backend, r.device),
        "device": res.spec.to_dict(),
        "peak": options.peak,
        "peak_source": res.ceilings.label,
        "notes": res.notes,
        "rows": res.rows_json(),
        "telemetry": tel.summary(),
        "wall_s": time.perf_counter() - t0,
        "launches": [{"row": name, "records": [x.to_dict() for x in prof.records]} for name, prof in res.profiles],
    })
    _write_record(records_dir, r.rank, record)
    gathered = gather_to_rank0(record)
    if gathered is None:
        return None
    if csv_path:
        import pandas as pd

        rows = [dict(x, rank=rec["rank"], host=rec["host"]) for rec in gathered for x in rec["rows"]]
        write_text_atomic(csv_path, pd.DataFrame(rows).to_csv(index=False))
    return DistributedProfile(r.world, r.backend, gathered, profile_aggregate(gathered), res, options.flush_l2)


# --------------------------------------------------------------------------------- audit


@dataclass
class DistributedAudit:
    """``flopscale audit`` on every rank, as rank 0 gathered it."""

    world_size: int
    backend: str
    ranks: list[dict]
    aggregate: dict
    result: Any = field(repr=False)  # rank 0's AuditResult

    def to_dict(self) -> dict:
        return {"world_size": self.world_size, "backend": self.backend, "ranks": self.ranks,
                "aggregate": self.aggregate}

    def to_text(self) -> str:
        return render_audit(self.ranks, self.aggregate, self.result.to_text())

    __str__ = to_text


def audit_on_rank(r: Rank, cfg: Any, batch: int, *, impl: str | None, dtype: str | None, time_budget_s: float,
                  keep_records: bool = False, records_dir: str | None = None) -> DistributedAudit | None:
    """Audit one training step of ``GPT(cfg)`` on this rank (seed = rank: each rank its own batch),
    all ranks starting together.  Returns the gathered result on rank 0, None elsewhere."""
    import torch.distributed as dist

    from .audit import run_audit
    from .telemetry import Telemetry

    r.progress.beat("audit")
    dist.barrier()
    t0 = time.perf_counter()
    with Telemetry(device=r.device) as tel:
        try:
            res = run_audit(cfg, batch, impl=impl, device=r.device, dtype=dtype, time_budget_s=time_budget_s,
                            seed=r.rank, keep_records=keep_records)
        except ValueError as exc:
            raise RunOptionError(str(exc).splitlines()[0]) from None
    record = _json_normal({
        **_identity(r.rank, r.world, r.backend, r.device),
        "seed": r.rank,
        "audit": res.to_dict(with_records=keep_records),
        "telemetry": tel.summary(),
        "wall_s": time.perf_counter() - t0,
    })
    _write_record(records_dir, r.rank, record)
    gathered = gather_to_rank0(record)
    if gathered is None:
        return None
    return DistributedAudit(r.world, r.backend, gathered, audit_aggregate(gathered), res)


# ----------------------------------------------------------------------------- ddp / fsdp


@dataclass
class DistributedDataParallelRun:
    """The data-parallel step (and, when asked, the fully_shard step) as rank 0 measured and gathered it."""

    world_size: int
    backend: str
    record: dict  # rank 0's record (JSON values): identity, "ddp", and "fsdp" / "fsdp_note" when asked
    ranks: list[dict]
    measured: dict = field(repr=False)  # rank 0's "ddp", "fsdp", "fsdp_note" as measured, for the text

    def to_dict(self) -> dict:
        return {"world_size": self.world_size, "backend": self.backend, **self.record, "ranks": self.ranks}

    def to_text(self) -> str:
        m = self.measured
        texts = [render_ddp(m["ddp"])]
        if m.get("fsdp"):
            texts.append(render_ddp(m["fsdp"]))
        elif m.get("fsdp_note"):
            texts.append(f"FSDP: {m['fsdp_note']}")
        return "\n\n".join(texts)

    __str__ = to_text


def ddp_on_rank(r: Rank, cfg: Any, batch: int, *, impl: str | None, dtype: str | None, reps: int,
                bucket_mb: float, fsdp: bool = False,
                records_dir: str | None = None) -> DistributedDataParallelRun | None:
    """:func:`profiler.distributed.measure_data_parallel` on this rank (and under ``fully_shard``
    with ``fsdp``, where this torch has it).  Returns the gathered result on rank 0, None elsewhere."""
    r.progress.beat("DistributedDataParallel step")
    out: dict[str, Any] = {"ddp": measure_data_parallel(cfg, batch, device=r.device, impl=impl, dtype=dtype,
                                                        reps=reps, bucket_mb=bucket_mb)}
    if fsdp:
        if _fully_shard() is None:
            import torch

            out["fsdp"] = None
            out["fsdp_note"] = f"this torch ({torch.__version__}) has no fully_shard (FSDP2): not measured"
        else:
            r.progress.beat("fully_shard step")
            out["fsdp"] = measure_data_parallel(cfg, batch, device=r.device, impl=impl, dtype=dtype, reps=reps,
                                                fsdp=True)
    record = _json_normal({**_identity(r.rank, r.world, r.backend, r.device), **out})
    _write_record(records_dir, r.rank, record)
    gathered = gather_to_rank0(record)
    if gathered is None:
        return None
    return DistributedDataParallelRun(r.world, r.backend, record, gathered, out)
