"""Profiling on torch.distributed, launched with torchrun.

    torchrun --nproc-per-node N -m flopscale.profiler.distributed collectives [--sizes 1K:1G] [--out rows.csv]
    torchrun --nproc-per-node N -m flopscale.profiler.distributed profile <flopscale profile args>
    torchrun --nproc-per-node N -m flopscale.profiler.distributed audit <flopscale audit args>
    torchrun --nproc-per-node N -m flopscale.profiler.distributed ddp [--n-layer ...] [--fsdp]

NCCL on GPUs (one rank per GPU, ``cuda:LOCAL_RANK``), gloo on CPUs.

``profile`` and ``audit``: every rank runs the same work on its own device -- its share of
a data-parallel job -- with the ranks kept in step (a barrier before each case), so rates
add up and a straggler shows.  Rank 0 gathers the per-rank records with
``all_gather_object`` and prints one table per rank, then the aggregate: achieved model
FLOP/s per GPU and in total, the slowest and the fastest rank, and each GPU's SM clock,
board power, temperature and throttle reasons (NVML; absent on a CPU run, and said so).

``ddp``: one data-parallel training step of the audit model under
``DistributedDataParallel`` (``--fsdp``: also under ``fully_shard``, where this torch has
it), split into compute, communication and their overlap -- see :func:`measure_data_parallel`.

The command line of the module is :mod:`profiler.commands.torchrun` (this module's
``__main__`` hands over to it by name); what each rank runs (the bodies of ``collectives``,
``profile``, ``audit`` and ``ddp``) is :mod:`profiler.distributed_runs`; everything here is the
domain below them: starting and watching ranks, gathering, aggregating, rendering, and
:func:`measure_data_parallel`.

:func:`launch` starts such a run on this machine (through ``torch.distributed.run``,
i.e. torchrun) with a deadline: a rank that fails or hangs ends the run within the
timeout with an error naming the rank, and rows already written are kept.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Sequence

from .collectives import OPS, all_gather_flat, reduce_scatter_flat

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
            "  torchrun --nproc-per-node 2 -m flopscale.profiler.distributed collectives"
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


def gather_to_rank0(obj: Any) -> list[Any] | None:
    """``all_gather_object`` of one object per rank; rank 0 gets the list, others None."""
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out if dist.get_rank() == 0 else None


# --- the launcher ----------------------------------------------------------------------


def torchrun_command(nproc: int, module_args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "flopscale.profiler.distributed", *module_args]


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
    """Failed ranks first, then those stopped by a peer leaving, then those that did not finish."""
    failed, lost, unfinished = [], [], []
    for r in ranks:
        st = states[r]
        if st.get("state") == "error":
            failed.append(f"rank {r} failed: {st['what'][len('error: '):]}")
        elif st.get("state") == "peer_lost":
            lost.append(f"rank {r} stopped when another rank left (at '{st.get('what', '')[len('error: '):][:80]}')")
        else:
            unfinished.append(f"rank {r} did not finish (last at '{st.get('what', 'start-up')}')")
    return "; ".join(failed + unfinished + lost)


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
                    out: Path, timeout_s: float = 600.0, env: dict[str, str] | None = None,
                    workdir: Path | None = None) -> list[dict]:
    """Measure collectives on ``nproc`` local ranks; rows land in ``out`` (CSV) as they finish.

    ``workdir`` (default: ``out``'s folder) holds torchrun's logs and the ranks' heartbeats.
    """
    args = ["collectives", "--sizes", sizes, "--ops", ops, "--reps", str(reps), "--out", str(Path(out).resolve()),
            "--timeout", str(max(5.0, timeout_s / 2)), "--quiet"]
    try:
        launch(nproc, args, timeout_s=timeout_s, workdir=Path(workdir) if workdir else Path(out).parent, env=env)
    except DistributedRunError as exc:
        exc.rows = read_rows(out)
        raise
    return read_rows(out)


# --- profile, audit and ddp on every rank ---------------------------------------------------


def _device_of_rank(backend: str):
    import torch

    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _identity(rank: int, world: int, backend: str, device) -> dict[str, Any]:
    return {"rank": rank, "local_rank": int(os.environ.get("LOCAL_RANK", rank)), "world_size": world,
            "host": socket.gethostname(), "pid": os.getpid(), "backend": backend, "torch_device": str(device)}


def _json_normal(obj: Any) -> Any:
    """The JSON form of ``obj`` (NaN -> null, numpy -> numbers): what a rank writes and what rank 0
    gathers, so the two compare equal."""
    from ._io import dumps

    return json.loads(dumps(obj))


def _write_record(records_dir: str | None, rank: int, record: dict) -> None:
    if not records_dir:
        return
    d = Path(records_dir)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".rank{rank}.json.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(d / f"rank{rank}.json")


def _peer_lost(exc: BaseException) -> bool:
    """True when ``exc`` says another rank went away (closed connection, reset, NCCL remote error)."""
    text = str(exc).lower()
    return any(k in text for k in ("connection closed", "connection reset", "remote process exited",
                                   "broken pipe", "remote peer"))


def _telemetry_fields(tel: dict[str, Any]) -> dict[str, Any]:
    return {
        "telemetry_available": bool(tel.get("available")),
        "sm_clock_mhz": tel.get("sm_clock_mhz"),
        "sm_clock_mhz_min": tel.get("sm_clock_mhz_min"),
        "power_w": tel.get("power_w"),
        "power_w_max": tel.get("power_w_max"),
        "temperature_c_max": tel.get("temperature_c_max"),
        "throttle_reasons": list(tel.get("throttle_reasons") or []),
        "telemetry_note": tel.get("note"),
    }


def _spread(per_rank: list[dict[str, Any]], key: str, higher_is_faster: bool = True) -> dict[str, Any]:
    """Total, mean, slowest and fastest rank of ``key`` over the ranks that have it."""
    have = [p for p in per_rank if isinstance(p.get(key), (int, float)) and p[key] > 0]
    if not have:
        return {"ranks_with_value": 0, "total": None, "mean_per_rank": None, "slowest_rank": None,
                "fastest_rank": None, "slowest": None, "fastest": None, "spread": None}
    order = sorted(have, key=lambda p: p[key], reverse=not higher_is_faster)
    slow, fast = order[0], order[-1]
    total = sum(p[key] for p in have)
    return {
        "ranks_with_value": len(have),
        "total": total,
        "mean_per_rank": total / len(have),
        "slowest_rank": slow["rank"],
        "fastest_rank": fast["rank"],
        "slowest": slow[key],
        "fastest": fast[key],
        # how much slower the slowest rank is than the fastest, as a share of the fastest's rate
        "spread": (abs(fast[key] - slow[key]) / max(fast[key], slow[key])),
    }


def _telemetry_line(per_rank: list[dict[str, Any]]) -> str:
    if any(p["telemetry_available"] for p in per_rank):
        return ("telemetry: NVML, sampled every 50 ms during each rank's run (SM clock median (min), board power "
                "mean (max), hottest reading, throttle reasons seen in any sample)")
    why = next((p.get("telemetry_note") for p in per_rank if p.get("telemetry_note")), None)
    return ("telemetry: absent -- no NVML on these devices (clocks, power and throttle reasons need an NVIDIA "
            "GPU and its driver)" + (f"; {why}" if why else ""))


def _tel_cells(p: dict[str, Any]) -> list[str]:
    if not p["telemetry_available"]:
        return ["-", "-", "-", "-"]

    def f(x: Any, d: int = 0) -> str:
        return "-" if x is None else f"{x:.{d}f}"

    return [f"{f(p['sm_clock_mhz'])} ({f(p['sm_clock_mhz_min'])})", f"{f(p['power_w'])} ({f(p['power_w_max'])})",
            f(p["temperature_c_max"]), ",".join(p["throttle_reasons"]) or "none"]


# ----------------------------------------------------------------------------- profile


def profile_aggregate(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-rank rates and the aggregate of gathered ``profile`` records.

    A rank's achieved rate is the model FLOPs of its timed rows over the sum of their median
    times (rows run under the Triton interpreter or skipped are left out).  The ranks run
    each case at the same time, so the total is the sum of the per-rank rates.
    """
    per_rank = []
    for rec in records:
        live = [r for r in rec["rows"] if not r.get("skipped") and not r.get("interpreted")
                and isinstance(r.get("time_s"), (int, float)) and r["time_s"] > 0]
        flops = float(sum(r.get("flops") or 0 for r in live))
        t = float(sum(r["time_s"] for r in live))
        per_rank.append({
            "rank": rec["rank"], "host": rec["host"], "device": (rec.get("device") or {}).get("name"),
            "timed_rows": len(live), "model_flops": flops, "time_s": t,
            "flop_per_s": flops / t if t > 0 else None,
            **_telemetry_fields(rec.get("telemetry") or {}),
        })
    agg = _spread(per_rank, "flop_per_s")
    cases = []
    titles = [(r.get("case"), r.get("provider")) for r in records[0]["rows"]] if records else []
    for j, (case, prov) in enumerate(titles):
        times = []
        for rec in records:
            r = rec["rows"][j] if j < len(rec["rows"]) else {}
            if (r.get("case"), r.get("provider")) == (case, prov) and not r.get("skipped") and r.get("time_s"):
                times.append({"rank": rec["rank"], "time_s": r["time_s"], "flop_per_s": r.get("flop_per_s"),
                              "interpreted": bool(r.get("interpreted"))})
        if not times:
            continue
        slow = max(times, key=lambda x: x["time_s"])
        fast = min(times, key=lambda x: x["time_s"])
        cases.append({"case": case, "provider": prov, "interpreted": any(x["interpreted"] for x in times),
                      "slowest_rank": slow["rank"], "slowest_time_s": slow["time_s"],
                      "fastest_rank": fast["rank"], "fastest_time_s": fast["time_s"],
                      "spread": (slow["time_s"] - fast["time_s"]) / slow["time_s"],
                      "per_rank_time_s": [x["time_s"] for x in times]})
    return {
        "ranks": len(records),
        "per_rank": per_rank,
        "total_flop_per_s": agg["total"],
        "mean_flop_per_s_per_rank": agg["mean_per_rank"],
        "slowest_rank": agg["slowest_rank"],
        "slowest_flop_per_s": agg["slowest"],
        "fastest_rank": agg["fastest_rank"],
        "fastest_flop_per_s": agg["fastest"],
        "spread": agg["spread"],
        "cases": cases,
        "definition": ("per rank: model FLOP of its timed rows / sum of their median times (interpreted and skipped "
                       "rows left out); total: sum over ranks (they run each case at the same time); spread: "
                       "(fastest - slowest) / fastest"),
    }


def render_profile(records: list[dict[str, Any]], agg: dict[str, Any], args: argparse.Namespace, res0: Any) -> str:
    import pandas as pd

    from .profile_run import footer_text, rows_table
    from .textfmt import fmt_rate, fmt_time, table

    lines = [f"flopscale profile on {len(records)} ranks (backend {records[0]['backend']}): every rank runs the same "
             "cases on its own device, all ranks in step (a barrier before each case)"]
    for n in res0.notes:
        lines.append(f"note: {n}")
    for rec in records:
        lines.append("")
        lines.append(f"rank {rec['rank']} ({rec['host']}, {rec['torch_device']}, {rec['device'].get('name')}):")
        live = [r for r in rec["rows"] if not r.get("skipped")]
        skipped = [r for r in rec["rows"] if r.get("skipped")]
        df = pd.DataFrame(live)
        lines.append(rows_table(df, skipped) if len(df) and "time_s" in df.columns else "(no rows)")
    lines.append("")
    lines.append("per rank (model FLOP of the timed rows / sum of their median times):")
    body = []
    for p in agg["per_rank"]:
        body.append([str(p["rank"]), p["host"], str(p["device"]), str(p["timed_rows"]), fmt_time(p["time_s"]),
                     fmt_rate(p["flop_per_s"]), *_tel_cells(p)])
    lines.append(table(body, ["rank", "host", "device", "rows", "time", "achieved", "SM MHz (min)",
                              "power W (max)", "temp C", "throttle"], right={3, 4, 5, 6, 7, 8}))
    if agg["total_flop_per_s"]:
        lines.append(f"aggregate: {fmt_rate(agg['total_flop_per_s'])} in total on {agg['ranks']} ranks, "
                     f"{fmt_rate(agg['mean_flop_per_s_per_rank'])} per rank on average; slowest rank "
                     f"{agg['slowest_rank']} ({fmt_rate(agg['slowest_flop_per_s'])}), fastest rank "
                     f"{agg['fastest_rank']} ({fmt_rate(agg['fastest_flop_per_s'])}), spread "
                     f"{100 * agg['spread']:.1f}% of the fastest")
    else:
        lines.append("aggregate: no timed rows outside the Triton interpreter, so no rates to add up")
    lines.append(_telemetry_line(agg["per_rank"]))
    if agg["cases"]:
        lines.append("")
        lines.append("per case: slowest and fastest rank (median time)")
        body = [[f"{c['case']} [{c['provider']}]" + (" *" if c["interpreted"] else ""),
                 f"{c['slowest_rank']} ({fmt_time(c['slowest_time_s'])})",
                 f"{c['fastest_rank']} ({fmt_time(c['fastest_time_s'])})", f"{100 * c['spread']:.1f}%"]
                for c in agg["cases"]]
        lines.append(table(body, ["case", "slowest rank", "fastest rank", "spread"]))
    lines.append("")
    lines.append(footer_text(res0.ceilings, records[0]["rows"], flush_l2=not getattr(args, "no_flush_l2", False)))
    return "\n".join(lines)


# ------------------------------------------------------------------------------- audit


def audit_aggregate(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-rank step rates and the aggregate of gathered ``audit`` records."""
    per_rank = []
    for rec in records:
        a = rec["audit"]
        t = a["timing"]
        per_rank.append({
            "rank": rec["rank"], "host": rec["host"], "device": (a.get("device") or {}).get("name"),
            "step_s": t.get("step_s"), "tokens_per_s": t.get("tokens_per_s"),
            "model_flops": a["model_flops"], "flop_per_s": a.get("achieved_flop_per_s"),
            "mfu": (a.get("mfu") or {}).get("value"),
            **_telemetry_fields(rec.get("telemetry") or {}),
        })
    rate = _spread(per_rank, "flop_per_s")
    tok = _spread(per_rank, "tokens_per_s")
    counts = {p["model_flops"] for p in per_rank}
    return {
        "ranks": len(records),
        "per_rank": per_rank,
        "total_flop_per_s": rate["total"],
        "mean_flop_per_s_per_rank": rate["mean_per_rank"],
        "total_tokens_per_s": tok["total"],
        "slowest_rank": rate["slowest_rank"],
        "slowest_flop_per_s": rate["slowest"],
        "fastest_rank": rate["fastest_rank"],
        "fastest_flop_per_s": rate["fastest"],
        "spread": rate["spread"],
        "same_model_flops_on_every_rank": len(counts) == 1,
        "definition": ("per rank: model FLOP of one step / median step time; total: sum over ranks (they run at the "
                       "same time, each on its own batch); spread: (fastest - slowest) / fastest"),
    }


def render_audit(records: list[dict[str, Any]], agg: dict[str, Any], rank0_text: str) -> str:
    from .textfmt import fmt_rate, fmt_time, table

    lines = [f"flopscale audit on {len(records)} ranks (backend {records[0]['backend']}): every rank audits one "
             "training step of the same model on its own batch (seed = rank), all starting together", "",
             "rank 0:", rank0_text, "", "per rank (model FLOP of one step / median step time):"]
    body = []
    for p in agg["per_rank"]:
        mfu = "n/a" if p["mfu"] is None else f"{100 * p['mfu']:.2f}%"
        body.append([str(p["rank"]), p["host"], str(p["device"]), fmt_time(p["step_s"]),
                     f"{p['tokens_per_s']:,.0f}" if p["tokens_per_s"] else "n/a", fmt_rate(p["flop_per_s"]), mfu,
                     *_tel_cells(p)])
    lines.append(table(body, ["rank", "host", "device", "step", "tokens/s", "achieved", "MFU", "SM MHz (min)",
                              "power W (max)", "temp C", "throttle"], right={3, 4, 5, 6, 7, 8, 9}))
    if records[0]["audit"].get("mfu"):
        lines.append(f"  MFU against {records[0]['audit']['mfu']['peak_source']} (each rank its own)")
    if agg["total_flop_per_s"]:
        lines.append(f"aggregate: {fmt_rate(agg['total_flop_per_s'])} and {agg['total_tokens_per_s']:,.0f} tokens/s "
                     f"in total on {agg['ranks']} ranks; slowest rank {agg['slowest_rank']} "
                     f"({fmt_rate(agg['slowest_flop_per_s'])}), fastest rank {agg['fastest_rank']} "
                     f"({fmt_rate(agg['fastest_flop_per_s'])}), spread {100 * agg['spread']:.1f}% of the fastest")
    if not agg["same_model_flops_on_every_rank"]:
        lines.append("note: the ranks recorded different model FLOPs for the same step")
    lines.append(_telemetry_line(agg["per_rank"]))
    lines.append("  (no gradient all-reduce here: each rank steps alone; "
                 "'-m flopscale.profiler.distributed ddp' measures the data-parallel step)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- data parallel


def _ddp_buckets(model: Any, bucket_bytes: int, first_bucket_bytes: int) -> list[int]:
    """Bucket sizes (bytes) DDP uses for ``model``'s gradients: the rebuilt buckets it reports
    after its first iterations, else the same rule (parameters in reverse order, the first bucket
    capped at ``first_bucket_bytes``, the others at ``bucket_bytes``)."""
    try:
        data = model._get_ddp_logging_data()  # private, guarded
        text = data.get("rebuilt_bucket_sizes") or ""
        sizes = [int(x) for x in str(text).replace(" ", "").split(",") if x]
        if sizes and all(s > 0 for s in sizes):
            return sizes
    except Exception:  # noqa: BLE001
        pass
    sizes, cur, cap = [], 0, first_bucket_bytes
    for p in reversed([p for p in model.parameters() if p.requires_grad]):
        nbytes = p.numel() * p.element_size()
        if cur and cur + nbytes > cap:
            sizes.append(cur)
            cur, cap = 0, bucket_bytes
        cur += nbytes
    if cur:
        sizes.append(cur)
    return sizes


def _fully_shard():
    try:
        from torch.distributed.fsdp import fully_shard  # torch >= 2.6

        return fully_shard
    except ImportError:
        try:
            from torch.distributed._composable.fsdp import fully_shard  # torch 2.4, 2.5

            return fully_shard
        except ImportError:
            return None


def measure_data_parallel(
    cfg: Any,
    batch: int,
    *,
    device: Any,
    impl: str | None = None,
    dtype: str | None = None,
    reps: int = 5,
    warmup: int = 2,
    bucket_mb: float = 25.0,
    fsdp: bool = False,
    ceilings: Any = None,
) -> dict[str, Any]:
    """One data-parallel training step of ``GPT(cfg)`` (call on every rank of a process group).

    Each rank runs forward, backward and an AdamW step on its own ``batch`` x ``n_ctx`` tokens.
    Three things are timed, interleaved, ``reps`` times each (a barrier before each; each
    repetition's time is the slowest rank's, MAX across ranks; medians reported):

    * ``step``: the data-parallel step -- DistributedDataParallel, whose bucketed gradient
      all-reduce runs while the backward pass continues (with ``fsdp``: ``fully_shard`` on
      every block and the root, parameters all-gathered and gradients reduce-scattered);
    * ``compute``: the same step without communication -- inside ``DDP.no_sync()`` (with
      ``fsdp``: an unsharded copy of the model stepping alone);
    * ``comm``: the step's communication alone, nothing else running -- an all-reduce of
      buffers of DDP's gradient bucket sizes (with ``fsdp``: for every sharded group, the
      all-gather of its parameters in the forward pass, again in the backward pass for the
      blocks, and the reduce-scatter of its gradients).

    ``overlap = (compute + comm - step) / comm``, clamped to [0, 1]: the share of the
    communication hidden behind computation (1: all of it; 0: none, the step is compute plus
    communication, or worse).  ``exposed_s = max(0, step - compute)``.  Times in seconds;
    bytes are what one rank sends into the collectives' buffers (gradient bytes =
    parameters x gradient element size).  Model FLOPs per rank: the exact count of
    :func:`profiler.flopcount.step_flops`.
    """
    import torch
    import torch.distributed as dist

    from . import devices, flopcount
    from .audit import _torch_dtype, make_step
    from .model import GPT

    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    if not (bucket_mb > 0):
        raise ValueError(f"bucket size must be positive, got {bucket_mb} MiB")
    world, rank = dist.get_world_size(), dist.get_rank()
    dev = torch.device(device)
    kind = dev.type
    impl = impl or ("kernels" if kind == "cuda" else "torch")
    dtype = dtype or ("bf16" if kind == "cuda" else "fp32")
    tdt = _torch_dtype(dtype)
    gen = torch.Generator().manual_seed(1000 + rank)  # each rank its own batch
    idx = torch.randint(0, cfg.vocab, (batch, cfg.n_ctx), generator=gen).to(dev)
    targets = torch.randint(0, cfg.vocab, (batch, cfg.n_ctx), generator=gen).to(dev)

    def build():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the same initial weights on every rank
            return GPT(cfg, impl=impl).to(device=dev, dtype=tdt)

    notes: list[str] = []
    if not fsdp:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = build()
        wrapped = DDP(model, device_ids=[dev.index] if kind == "cuda" else None, bucket_cap_mb=bucket_mb)
        opt = torch.optim.AdamW(wrapped.parameters(), lr=1e-4, weight_decay=0.1)
        step_fn = make_step(wrapped, opt, idx, targets)

        def compute_fn() -> None:
            with wrapped.no_sync():
                step_fn()

        for _ in range(warmup):  # DDP rebuilds its buckets in the first iterations
            step_fn()
            compute_fn()
        first = int(getattr(dist, "_DEFAULT_FIRST_BUCKET_BYTES", 2**20))
        sizes = _ddp_buckets(wrapped, int(bucket_mb * 2**20), first)
        esize = torch.empty((), dtype=tdt).element_size()
        bufs = [torch.zeros(max(1, s // esize), dtype=tdt, device=dev) for s in sizes]

        def comm_fn() -> None:
            works = [dist.all_reduce(b, async_op=True) for b in bufs]
            for w in works:
                w.wait()

        comm_desc = (f"all-reduce of {len(sizes)} gradient bucket(s) of DDP's sizes "
                     f"(bucket_cap {bucket_mb:g} MiB), alone")
        comm_bytes = sum(b.numel() * esize for b in bufs)
        method = ("step: DistributedDataParallel step; compute: the same step inside DDP.no_sync() (no "
                  "all-reduce); comm: " + comm_desc + "; overlap = (compute + comm - step) / comm, clamped to [0, 1]")
        params = sum(p.numel() for p in model.parameters())
        grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        layout = {"buckets": len(sizes), "bucket_bytes": sizes, "bucket_cap_mb": bucket_mb}
    else:
        fully_shard = _fully_shard()
        if fully_shard is None:
            raise RuntimeError(f"this torch ({torch.__version__}) has no fully_shard (FSDP2); use DDP")
        model = build()
        params = sum(p.numel() for p in model.parameters())
        grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        # the sharded groups: each block, then the root (embeddings, final norm, output layer)
        groups = [sum(p.numel() for p in b.parameters()) for b in model.blocks]
        groups.append(params - sum(groups))
        for b in model.blocks:
            fully_shard(b)
        fully_shard(model)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
        step_fn = make_step(model, opt, idx, targets)
        local = build()
        lopt = torch.optim.AdamW(local.parameters(), lr=1e-4, weight_decay=0.1)
        compute_fn = make_step(local, lopt, idx, targets)
        for _ in range(warmup):
            step_fn()
            compute_fn()
        esize = torch.empty((), dtype=tdt).element_size()
        plan = []
        for k, n in enumerate(groups):
            shard = -(-n // world)
            full = torch.zeros(shard * world, dtype=tdt, device=dev)
            part = torch.zeros(shard, dtype=tdt, device=dev)
            is_root = k == len(groups) - 1
            plan.append((full, part, 1 if is_root else 2))  # blocks are re-gathered for the backward pass

        def comm_fn() -> None:
            works = []
            for full, part, gathers in plan:  # forward: all-gather every group
                works.append(all_gather_flat(full, part, async_op=True))
            for full, part, gathers in reversed(plan):  # backward: re-gather the blocks, reduce-scatter grads
                if gathers == 2:
                    works.append(all_gather_flat(full, part, async_op=True))
                works.append(reduce_scatter_flat(part, full, async_op=True))
            for w in works:
                w.wait()

        comm_bytes = sum(full.numel() * esize * (gathers + 1) for full, _, gathers in plan)
        method = ("step: fully_shard (FSDP2) step, every block and the root sharded; compute: an unsharded copy of "
                  "the model stepping alone; comm: the all-gathers (forward, and backward for the blocks) and the "
                  "gradient reduce-scatters of those groups, alone; overlap = (compute + comm - step) / comm, "
                  "clamped to [0, 1]")
        layout = {"groups": len(groups), "group_params": groups}
        notes.append("FSDP's step also copies parameters in and out of the flat buffers; that work counts as "
                      "step time, not as compute or communication")

    def sync() -> None:
        if kind == "cuda":
            torch.cuda.synchronize(dev)

    def timed(fn: Callable[[], Any]) -> float:
        dist.barrier()
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t0

    rows = []
    for _ in range(reps):
        rows.append([timed(step_fn), timed(compute_fn), timed(comm_fn)])
    t = torch.tensor(rows, dtype=torch.float64, device=dev if backend_is_nccl() else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    t = t.cpu()
    step_s, compute_s, comm_s = (statistics.median(t[:, k].tolist()) for k in range(3))
    raw = (compute_s + comm_s - step_s) / comm_s if comm_s > 0 else math.nan
    overlap = min(1.0, max(0.0, raw)) if math.isfinite(raw) else None
    per_rep = [((c + m - s) / m) for s, c, m in t.tolist() if m > 0]
    model_flops = flopcount.step_flops(cfg, batch, cfg.n_ctx).total
    out: dict[str, Any] = {
        "mode": "fsdp" if fsdp else "ddp",
        "world_size": world,
        "backend": str(dist.get_backend()),
        "device": str(dev),
        "impl": impl,
        "dtype": dtype,
        "config": cfg.to_dict(),
        "batch_per_rank": batch,
        "tokens_per_rank": batch * cfg.n_ctx,
        "params": params,
        "grad_bytes": grad_bytes,
        "comm_bytes": comm_bytes,
        **layout,
        "reps": reps,
        "step_s": step_s,
        "compute_s": compute_s,
        "comm_s": comm_s,
        "exposed_comm_s": max(0.0, step_s - compute_s),
        "hidden_comm_s": None if overlap is None else overlap * comm_s,
        "overlap": overlap,
        "overlap_unclamped": raw,
        "overlap_per_rep_median": statistics.median(per_rep) if per_rep else None,
        "times_s": {"step": t[:, 0].tolist(), "compute": t[:, 1].tolist(), "comm": t[:, 2].tolist()},
        "model_flops_per_rank": model_flops,
        "achieved_flop_per_s_per_rank": model_flops / step_s,
        "compute_only_flop_per_s_per_rank": model_flops / compute_s,
        "total_flop_per_s": world * model_flops / step_s,
        "tokens_per_s": world * batch * cfg.n_ctx / step_s,
        "scaling_efficiency": compute_s / step_s,
        "method": method,
        "notes": notes,
    }
    if ceilings is None:
        ceilings = devices.calibrate(dev, quick=True)
    peak = ceilings.peak(dtype) if ceilings is not None else None
    if peak:
        out["mfu"] = {"value": model_flops / step_s / peak, "compute_only": model_flops / compute_s / peak,
                      "peak_flop_per_s": peak, "peak_source": ceilings.label, "dtype": dtype}
    else:
        out["mfu"] = None
        notes.append(f"no {dtype} ceiling for this device: MFU not computed")
    if kind == "cpu":
        notes.append("CPU ranks with gloo: the torch reference path and loopback TCP, not GPU or network figures")
    out["prediction"] = _layout_prediction(model, opt, params, esize, world, fsdp, batch, compute_s, comm_s, step_s)
    return out


def _local_numel(t: Any) -> int:
    """Elements this rank holds of ``t`` (its shard for a sharded DTensor)."""
    local = t.to_local() if hasattr(t, "to_local") else t
    return int(local.numel())


def _layout_prediction(model: Any, opt: Any, params: int, esize: int, world: int, fsdp: bool, batch: int,
                       compute_s: float, comm_s: float, step_s: float) -> dict[str, Any]:
    """What the plan's layout model (:mod:`profiler.memory`, :mod:`profiler.parallel`) predicts for
    this run, beside what the run holds and takes.

    Memory: weights, gradients and AdamW's two moments per rank -- measured from the tensors the
    rank holds (its shards under FSDP; a gradient is counted for every local parameter element,
    since each exists from the backward pass to the optimizer step) -- against
    ``params x (e + e + 2e) / share`` for ZeRO-0 (DDP) or ZeRO-3 (FSDP) over the ranks.
    Step: the model's ``compute + comm - hidden`` with ``hidden`` between 0 (no overlap, its
    default) and ``min(comm, 2/3 compute)`` (all the backward pass can hide), at the measured
    compute and communication times.
    """
    from . import memory

    held_w = sum(_local_numel(p) for p in model.parameters()) * esize
    held_o = 0
    for state in opt.state.values():
        for v in state.values():
            if hasattr(v, "numel") and v.dim() > 0:  # the moments; not the 0-d step counter
                held_o += _local_numel(v) * v.element_size()
    measured = {"weights": held_w, "gradients": held_w, "optimizer": held_o, "total": 2 * held_w + held_o}
    stage = 3 if fsdp else 0
    per = memory.model_state_bytes_per_param(stage, world, weight_bytes=esize, grad_bytes=esize,
                                             optimizer_bytes=2 * esize)
    predicted = {k: params * v for k, v in per.items()}
    lo = compute_s + max(0.0, comm_s - (2.0 / 3.0) * compute_s)
    hi = compute_s + comm_s
    return {
        "layout": {"tp": 1, "pp": 1, "dp": world, "zero_stage": stage, "micro_batch": batch, "recompute": "none"},
        "model_states_bytes_per_rank": {"measured": measured, "predicted": predicted,
                                        "ratio": measured["total"] / predicted["total"]},
        "step_s": {"measured": step_s, "predicted_no_overlap": hi, "predicted_most_overlap": lo,
                   "within": lo * 0.9 <= step_s <= hi * 1.1},
        "how": ("memory: profiler.memory with e + e + 2e bytes per parameter (weights, gradients, AdamW moments in "
                f"the run's {esize}-byte dtype), ZeRO-{stage} over {world} ranks; step: profiler.parallel's "
                "compute + exposed communication at the measured compute and communication times"),
    }


def backend_is_nccl() -> bool:
    import torch.distributed as dist

    return str(dist.get_backend()) == "nccl"


def render_ddp(r: dict[str, Any]) -> str:
    from .textfmt import fmt_count, fmt_rate, fmt_time

    c = r["config"]
    what = "fully_shard (FSDP2)" if r["mode"] == "fsdp" else "DistributedDataParallel"
    lines = [f"data-parallel training step ({what}) on {r['world_size']} ranks, backend {r['backend']}, {r['device']}",
             f"  model: n_layer {c['n_layer']}, d_model {c['d_model']}, n_head {c['n_head']}, n_ctx {c['n_ctx']}, "
             f"vocab {c['vocab']}; {r['params']:,} parameters, {r['dtype']}, {r['impl']} path; batch "
             f"{r['batch_per_rank']} x {c['n_ctx']} tokens per rank",
             f"  gradient: {fmt_count(r['grad_bytes'], 'B')} per rank (parameters x element size); "
             + (f"{r['buckets']} DDP bucket(s)" if r["mode"] == "ddp" else f"{r['groups']} sharded group(s)")
             + f"; {fmt_count(r['comm_bytes'], 'B')} through the collectives per step",
             f"  per step (median of {r['reps']}, slowest rank of each repetition):",
             f"    step     {fmt_time(r['step_s'])}",
             f"    compute  {fmt_time(r['compute_s'])}  (no communication)",
             f"    comm     {fmt_time(r['comm_s'])}  (communication alone)",
             f"    exposed  {fmt_time(r['exposed_comm_s'])}  (step - compute)"]
    if r["overlap"] is None:
        lines.append("    overlap  n/a (no communication time)")
    else:
        lines.append(f"    overlap  {100 * r['overlap']:.1f}% of the communication hidden behind compute "
                     f"(unclamped {r['overlap_unclamped']:+.3f})")
    lines.append(f"  {fmt_rate(r['achieved_flop_per_s_per_rank'])} model FLOPs per rank with communication, "
                 f"{fmt_rate(r['compute_only_flop_per_s_per_rank'])} without: scaling efficiency "
                 f"{100 * r['scaling_efficiency']:.1f}%; {fmt_rate(r['total_flop_per_s'])} and "
                 f"{r['tokens_per_s']:,.0f} tokens/s in total")
    if r.get("mfu"):
        m = r["mfu"]
        lines.append(f"  MFU {100 * m['value']:.2f}% (compute alone {100 * m['compute_only']:.2f}%) of "
                     f"{fmt_rate(m['peak_flop_per_s'])} {m['dtype']}: {m['peak_source']}")
    pred = r.get("prediction")
    if pred:
        m, st = pred["model_states_bytes_per_rank"], pred["step_s"]
        lines.append(f"  layout model (as flopscale plan predicts it): model states {fmt_count(m['predicted']['total'], 'B')} "
                     f"per rank predicted, {fmt_count(m['measured']['total'], 'B')} held (ratio {m['ratio']:.3f}); step "
                     f"{fmt_time(st['predicted_most_overlap'])} .. {fmt_time(st['predicted_no_overlap'])} predicted "
                     f"(all the backward pass can hide .. no overlap), {fmt_time(st['measured'])} measured")
    lines.append(f"  how: {r['method']}")
    for n in r["notes"]:
        lines.append(f"  note: {n}")
    lines.append("  use it in a plan: flopscale plan ... --nodes M --gpus-per-node G --overlap "
                 + ("<overlap>" if r["overlap"] is None else f"{r['overlap']:.2f}"))
    return "\n".join(lines)


if __name__ == "__main__":  # the program: parse and run (profiler.commands.torchrun), by name at run time
    import importlib

    rc = importlib.import_module("flopscale.profiler.commands.torchrun").main()
    sys.stdout.flush()
    sys.stderr.flush()
    # leave without interpreter finalisation: gloo's worker threads can abort a process that
    # tears down after destroy_process_group ("terminate called without an active exception")
    os._exit(rc)
