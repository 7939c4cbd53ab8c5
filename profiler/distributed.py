"""Profiling on torch.distributed, launched with torchrun.

    torchrun --nproc-per-node N -m profiler.distributed collectives [--sizes 1K:1G] [--out rows.csv]
    torchrun --nproc-per-node N -m profiler.distributed profile <flopscale profile args>
    torchrun --nproc-per-node N -m profiler.distributed ddp [--n-layer ...]

Every rank runs its share; rank 0 gathers per-rank results with ``all_gather_object``
and prints one table per rank plus the aggregate.  NCCL on GPUs, gloo on CPUs.

:func:`launch` starts such a run on this machine (through ``torch.distributed.run``,
i.e. torchrun) with a deadline: a rank that fails or hangs ends the run within the
timeout with an error naming the rank, and rows already written are kept.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Sequence

from .collectives import OPS, CollectiveRow, iter_sizes, measure, parse_size

FAULT_ENV = "FLOPSCALE_FAULT"  # fault injection for tests: "RANK:fail:STEP" or "RANK:hang:STEP"
PROGRESS_ENV = "FLOPSCALE_PROGRESS_DIR"


class DistributedRunError(RuntimeError):
    """A distributed run that failed or timed out; ``rows`` holds what was measured."""

    def __init__(self, message: str, rows: list[dict] | None = None):
        super().__init__(message)
        self.rows = rows or []


# --- inside a rank -------------------------------------------------------------------

def init(timeout_s: float = 60.0):
    """Initialise the default process group from torchrun's environment."""
    import torch
    import torch.distributed as dist

    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise SystemExit(
            "profiler.distributed must be launched by torchrun, e.g.\n"
            "  torchrun --nproc-per-node 2 -m profiler.distributed collectives"
        )
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return dist.get_rank(), dist.get_world_size(), backend


class _Progress:
    """Per-rank heartbeat file so the launcher can name a rank that is stuck."""

    def __init__(self, rank: int):
        self.rank = rank
        d = os.environ.get(PROGRESS_ENV)
        self.path = Path(d) / f"rank{rank}.json" if d else None
        self.step = 0
        fault = os.environ.get(FAULT_ENV, "")
        self.fault = None
        if fault:
            r, kind, step = fault.split(":")
            if int(r) == rank:
                self.fault = (kind, int(step))

    def beat(self, what: str, state: str = "running") -> None:
        self.step += 1
        if self.path is not None:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"rank": self.rank, "pid": os.getpid(), "step": self.step, "what": what, "state": state,
                                       "time": time.time()}))
            tmp.replace(self.path)
        if self.fault and state == "running" and self.step >= self.fault[1]:
            if self.fault[0] == "fail":
                raise RuntimeError(f"injected failure on rank {self.rank} at step {self.step}")
            if self.fault[0] == "hang":
                time.sleep(10**6)


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


def gather_to_rank0(obj: Any) -> list[Any] | None:
    """``all_gather_object`` of one object per rank; rank 0 gets the list, others None."""
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out if dist.get_rank() == 0 else None


# --- the launcher ----------------------------------------------------------------------

def torchrun_command(nproc: int, module_args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "profiler.distributed", *module_args]


def launch(nproc: int, module_args: Sequence[str], *, timeout_s: float, workdir: Path,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``profiler.distributed`` under torchrun on this machine, with a deadline.

    Raises :class:`DistributedRunError` naming the rank that failed, or the ranks that
    had not finished when the deadline passed.
    """
    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    progress_dir = workdir / ".progress"
    progress_dir.mkdir(parents=True, exist_ok=True)
    for f in progress_dir.glob("rank*.json"):
        f.unlink()
    run_env = dict(os.environ, **(env or {}))
    run_env[PROGRESS_ENV] = str(progress_dir)
    run_env.setdefault("OMP_NUM_THREADS", "1")
    log_out, log_err = workdir / "torchrun.out", workdir / "torchrun.err"
    with open(log_out, "w") as fo, open(log_err, "w") as fe:
        proc = subprocess.Popen(torchrun_command(nproc, module_args), stdout=fo, stderr=fe, text=True,
                                env=run_env, start_new_session=True)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            states = _states(progress_dir, nproc)
            _kill(proc, states)
            stuck = [r for r, s in states.items() if s.get("state") != "done"]
            raise DistributedRunError(f"timed out after {timeout_s:g} s: rank(s) {', '.join(map(str, stuck))} "
                                      f"did not finish ({_describe(states, stuck)})") from None
    out, err = log_out.read_text(), log_err.read_text()
    if proc.returncode != 0:
        states = _states(progress_dir, nproc)
        not_done = [r for r, s in states.items() if s.get("state") != "done"]
        if not_done:
            msg = _describe(states, not_done)
        else:
            last = (err.strip().splitlines() or ["no output"])[-1]
            msg = f"torchrun exited with status {proc.returncode}: {last}"
        raise DistributedRunError(msg)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _kill(proc: subprocess.Popen, states: dict[int, dict]) -> None:
    """Kill torchrun's process group and every rank (ranks may sit in sessions of their own)."""
    pids = [s["pid"] for s in states.values() if "pid" in s]
    for sig_target in ([("pg", proc.pid)] + [("pid", p) for p in pids]):
        try:
            if sig_target[0] == "pg":
                os.killpg(sig_target[1], signal.SIGKILL)
            else:
                os.kill(sig_target[1], signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    proc.wait()


def _describe(states: dict[int, dict], ranks: list[int]) -> str:
    parts = []
    for r in ranks:
        st = states[r]
        if st.get("state") == "error":
            parts.append(f"rank {r} failed: {st['what'][len('error: '):]}")
        else:
            parts.append(f"rank {r} did not finish (last at '{st.get('what', 'start-up')}')")
    return "; ".join(parts)


def _states(progress_dir: Path, nproc: int) -> dict[int, dict]:
    states = {}
    for r in range(nproc):
        p = progress_dir / f"rank{r}.json"
        try:
            states[r] = json.loads(p.read_text())
        except (OSError, ValueError):
            states[r] = {"state": "not started", "what": "start-up"}
    return states


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path) as fh:
        return list(csv.DictReader(fh))


def run_collectives(nproc: int, *, sizes: str = "1K:1G", ops: str = ",".join(OPS), reps: int = 5,
                    out: Path, timeout_s: float = 600.0, env: dict[str, str] | None = None) -> list[dict]:
    """Measure collectives on ``nproc`` local ranks; rows land in ``out`` (CSV) as they finish."""
    args = ["collectives", "--sizes", sizes, "--ops", ops, "--reps", str(reps), "--out", str(out),
            "--timeout", str(max(5.0, timeout_s / 2)), "--quiet"]
    try:
        launch(nproc, args, timeout_s=timeout_s, workdir=out.parent, env=env)
    except DistributedRunError as exc:
        exc.rows = read_rows(out)
        raise
    return read_rows(out)


# --- command line ------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="torchrun ... -m profiler.distributed", description=__doc__,
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
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args._main(args)


if __name__ == "__main__":
    sys.exit(main())
