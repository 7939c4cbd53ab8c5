"""Collective bandwidth: all-reduce, all-gather, reduce-scatter and broadcast over message sizes.

Runs ``python -m flopscale.profiler.distributed collectives`` under torchrun on this machine (through
:func:`profiler.distributed.run_collectives`: a deadline, a failing or hanging rank named, the
rows measured before a failure kept) and maps its rows onto the harness table:

* ``shape``: the message size (bytes of the full buffer one rank holds: the all-reduce buffer,
  the gathered output of all-gather, the input of reduce-scatter, the broadcast buffer);
* ``median_ms``: median over repetitions of the slowest rank's time;
* ``gbps``: algorithm bandwidth = size / time (1e9 B/s), as the harness defines GB/s;
* ``note``: the bus bandwidth, algbw x 2(n-1)/n for all-reduce, x (n-1)/n for all-gather and
  reduce-scatter, x 1 for broadcast (the figure comparable with the link speed).

Defaults: on GPUs, one rank per GPU (NCCL), 1 KiB to 1 GiB (``--quick``: to 256 MiB).  Without
a GPU, 2 gloo ranks on the CPU and 1 KiB to 4 MiB, so the suite ends in well under a minute
(say so in every row).  ``FLOPSCALE_COLLECTIVES_NPROC`` and ``FLOPSCALE_COLLECTIVES_SIZES``
(``LO:HI``, e.g. ``1K:64M``) override them.  The raw rows (``op, size_bytes, world_size,
backend, dtype, reps, time_s, algbw_Bps, busbw_Bps``) go to ``collectives-<card>-<date>.csv``
beside the bench table: the file ``flopscale plan --measured-collectives`` reads.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Iterator

import torch

from .harness import Context

SUITE = "collectives"
CPU_SIZES = "1K:4M"
GPU_SIZES = "1K:1G"
GPU_SIZES_QUICK = "1K:256M"


def settings(ctx: Context) -> tuple[int, str, int, str]:
    """(ranks, LO:HI sizes, repetitions, what was chosen and why)."""
    env_n = os.environ.get("FLOPSCALE_COLLECTIVES_NPROC")
    env_sizes = os.environ.get("FLOPSCALE_COLLECTIVES_SIZES")
    if ctx.on_gpu:
        n = torch.cuda.device_count()
        sizes = GPU_SIZES_QUICK if ctx.quick else GPU_SIZES
        why = f"NCCL, one rank per GPU ({n})"
        reps = 5
    else:
        n = 2
        sizes = CPU_SIZES
        why = (f"no GPU: 2 gloo ranks on the CPU, sizes capped at {CPU_SIZES.split(':')[1]}iB (not 1 GiB) so the "
               "suite ends in well under a minute; loopback TCP, not a network figure")
        reps = 3
    if env_n:
        n = int(env_n)
        why += f"; ranks from FLOPSCALE_COLLECTIVES_NPROC={env_n}"
    if env_sizes:
        sizes = env_sizes
        why += f"; sizes from FLOPSCALE_COLLECTIVES_SIZES={env_sizes}"
    return n, sizes, reps, why


def expected_rows(ctx: Context) -> int:
    """Rows :func:`rows` yields for ``ctx`` when the run completes: one per collective and message
    size (one skipped row with fewer than 2 ranks).  A run that fails ends with the rows it kept
    and one error row instead."""
    from flopscale.profiler.collectives import OPS, size_range

    n, sizes, _reps, _why = settings(ctx)
    return 1 if n < 2 else len(OPS) * len(size_range(sizes))


def _size_text(n: int) -> str:
    for unit, m in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= m and n % m == 0:
            return f"{n // m} {unit}"
    return f"{n} B"


def raw_csv_path(ctx: Context) -> Path:
    from .run import card_slug

    out = getattr(ctx, "out_dir", None)
    folder = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="flopscale-collectives-"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"collectives-{card_slug()}-{time.strftime('%Y-%m-%d')}.csv"


def _row(r: dict, why: str | None, csv_path: Path) -> dict:
    from flopscale.profiler.collectives import bus_factor

    n = int(r["world_size"])
    t, alg, bus = float(r["time_s"]), float(r["algbw_Bps"]), float(r["busbw_Bps"])
    return {
        "suite": SUITE, "op": r["op"], "shape": _size_text(int(r["size_bytes"])), "dtype": r["dtype"].replace(
            "float32", "fp32").replace("bfloat16", "bf16").replace("float16", "fp16"),
        "pass": "-", "provider": f"{r['backend']} x{n}", "status": "ok", "median_ms": t * 1e3,
        "reps": int(r["reps"]), "gbps": alg / 1e9, "bytes": int(r["size_bytes"]),
        "note": f"busbw {bus / 1e9:.4g} GB/s (algbw x {bus_factor(r['op'], n):.3g})" + (
            f"; time = median of the slowest rank; {why}; raw rows: {csv_path}" if why else ""),
    }


def rows(ctx: Context) -> Iterator[dict]:
    from flopscale.profiler.distributed import DistributedRunError, run_collectives

    n, sizes, reps, why = settings(ctx)
    base = dict(suite=SUITE, op="all_reduce", shape=sizes, dtype="fp32", **{"pass": "-"}, provider=f"x{n}")
    if n < 2:
        yield dict(base, status="skipped", note=f"collectives need at least 2 ranks; found {n} ({why})")
        return
    csv_path = raw_csv_path(ctx)
    timeout = 900.0 if ctx.on_gpu else 120.0
    try:
        with tempfile.TemporaryDirectory(prefix="flopscale-torchrun-") as work:
            measured = run_collectives(n, sizes=sizes, reps=reps, out=csv_path, timeout_s=timeout, workdir=Path(work))
    except DistributedRunError as exc:
        for k, r in enumerate(exc.rows):
            yield _row(r, why if k == 0 else None, csv_path)
        yield dict(base, status="error", note=f"{exc} ({len(exc.rows)} row(s) kept in {csv_path.name})")
        return
    for k, r in enumerate(measured):
        yield _row(r, why if k == 0 else None, csv_path)  # the settings once, in the first row
