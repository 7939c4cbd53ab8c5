"""Collective bandwidth on torch.distributed, and the cost of gradient all-reduce.

Definitions (the standard ones of NCCL's own tests):

* ``size`` is the bytes of the full buffer one rank holds: the all-reduce buffer, the
  gathered *output* of all-gather, the *input* of reduce-scatter, the broadcast buffer.
* algorithm bandwidth ``algbw = size / time`` (bytes/s);
* bus bandwidth ``busbw = algbw * factor`` with factor ``2(n-1)/n`` for all-reduce,
  ``(n-1)/n`` for all-gather and reduce-scatter, ``1`` for broadcast.  Bus bandwidth is
  comparable with the link speed whatever the number of ranks.
* ``time`` of one size is the median over repetitions of the *slowest* rank (each
  repetition's time is reduced with MAX across ranks).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

OPS = ("all_reduce", "all_gather", "reduce_scatter", "broadcast")
KIB = 1024
DEFAULT_SIZES = tuple(KIB * 4**i for i in range(11))  # 1 KiB ... 1 GiB


def bus_factor(op: str, n: int) -> float:
    """Bus bandwidth / algorithm bandwidth for ``op`` on ``n`` ranks."""
    if n < 1:
        raise ValueError(f"number of ranks must be >= 1, got {n}")
    if op == "all_reduce":
        return 2.0 * (n - 1) / n
    if op in ("all_gather", "reduce_scatter"):
        return (n - 1) / n
    if op == "broadcast":
        return 1.0
    raise ValueError(f"unknown collective {op!r}; choose from {', '.join(OPS)}")


@dataclass
class CollectiveRow:
    op: str
    size_bytes: int
    world_size: int
    backend: str
    dtype: str
    reps: int
    time_s: float  # median over repetitions of the slowest rank
    algbw_Bps: float
    busbw_Bps: float

    def to_dict(self) -> dict:
        return asdict(self)

    def to_text(self) -> str:
        """One line of the table under :func:`table_header`."""
        return (f"{self.op:<15}{_bytes_text(self.size_bytes):>12}{self.time_s * 1e6:>12.1f}"
                f"{self.algbw_Bps / 1e9:>12.3f}{self.busbw_Bps / 1e9:>12.3f}")


def table_header(world: int, backend: str) -> str:
    """What the rows of a run are (ranks, backend, definitions) and the column names."""
    return (f"{world} ranks, backend {backend}; time = median of the slowest rank; "
            "busbw = algbw x 2(n-1)/n (all-reduce), x (n-1)/n (all-gather, reduce-scatter)\n"
            f"{'op':<15}{'size':>12}{'time_us':>12}{'algbw GB/s':>12}{'busbw GB/s':>12}")


def _bytes_text(n: int) -> str:
    for unit, m in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= m:
            return f"{n / m:g} {unit}"
    return f"{n} B"


def parse_size(text: str) -> int:
    """'1K', '4MiB', '1G', '65536' -> bytes (binary units)."""
    t = text.strip().upper().replace("IB", "").replace("B", "")
    mult = 1
    for suffix, m in (("K", KIB), ("M", KIB**2), ("G", KIB**3)):
        if t.endswith(suffix):
            t, mult = t[:-1], m
            break
    try:
        value = float(t)
    except ValueError:
        raise ValueError(f"not a size: {text!r} (use e.g. 1K, 4M, 1G)") from None
    if not value > 0:
        raise ValueError(f"size must be positive: {text!r}")
    return int(value * mult)


def measure(
    ops: Iterable[str] = OPS,
    sizes: Iterable[int] = DEFAULT_SIZES,
    *,
    reps: int = 5,
    warmup: int = 1,
    dtype=None,
    on_row: Callable[[CollectiveRow], None] | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> list[CollectiveRow]:
    """Time the collectives in the current process group (call on every rank).

    Every rank returns the same rows.  ``on_row`` is called as each row completes, so a
    caller can write it out before the next size starts.
    """
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        raise RuntimeError("measure() needs an initialised torch.distributed process group")
    dtype = dtype or torch.float32
    n = dist.get_world_size()
    rank = dist.get_rank()
    backend = str(dist.get_backend())
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    esize = torch.empty((), dtype=dtype).element_size()
    rows: list[CollectiveRow] = []
    for op in ops:
        bus_factor(op, n)  # validates the name
        for size in sizes:
            count = max(n, size // esize)
            count -= count % n  # divisible into n shards
            fn = _make(op, count, n, rank, dtype, device)
            for _ in range(warmup):
                fn()
            _sync(device)
            times = []
            for _ in range(reps):
                dist.barrier()
                _sync(device)
                t0 = time.perf_counter()
                fn()
                _sync(device)
                times.append(time.perf_counter() - t0)
            t = torch.tensor(times, dtype=torch.float64, device=device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            med = float(t.median().item()) if reps % 2 else float(t.sort().values[reps // 2 - 1 : reps // 2 + 1].mean())
            nbytes = count * esize
            algbw = nbytes / med if med > 0 else math.inf
            row = CollectiveRow(op, nbytes, n, backend, str(dtype).replace("torch.", ""), reps, med, algbw,
                                algbw * bus_factor(op, n))
            rows.append(row)
            if on_row:
                on_row(row)
            if on_progress:
                on_progress(f"{op} {nbytes} B done")
    return rows


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def all_gather_flat(output, input, async_op: bool = False):
    """All-gather ``input`` of every rank into the flat ``output`` (``all_gather_single`` where
    torch has it, else ``all_gather_into_tensor``)."""
    import torch.distributed as dist

    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    return fn(output, input, async_op=async_op)


def reduce_scatter_flat(output, input, async_op: bool = False):
    """Sum the flat ``input`` over ranks and keep this rank's shard in ``output``
    (``reduce_scatter_single`` where torch has it, else ``reduce_scatter_tensor``)."""
    import torch.distributed as dist

    fn = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    return fn(output, input, async_op=async_op)


def _make(op: str, count: int, n: int, rank: int, dtype, device) -> Callable[[], None]:
    import torch
    import torch.distributed as dist

    if op == "all_reduce":
        buf = torch.ones(count, dtype=dtype, device=device)
        return lambda: dist.all_reduce(buf)
    if op == "broadcast":
        buf = torch.ones(count, dtype=dtype, device=device)
        return lambda: dist.broadcast(buf, src=0)
    shard = count // n
    if op == "all_gather":
        inp = torch.full((shard,), float(rank), dtype=dtype, device=device)
        out = torch.empty(count, dtype=dtype, device=device)
        return lambda: all_gather_flat(out, inp)
    if op == "reduce_scatter":
        inp = torch.ones(count, dtype=dtype, device=device)
        out = torch.empty(shard, dtype=dtype, device=device)
        return lambda: reduce_scatter_flat(out, inp)
    raise ValueError(f"unknown collective {op!r}")


# --- gradient all-reduce in a data-parallel step -------------------------------------

def allreduce_time_s(nbytes: float, n: int, busbw_Bps: float) -> float:
    """Time to all-reduce ``nbytes`` on ``n`` ranks at bus bandwidth ``busbw_Bps``."""
    if n <= 1:
        return 0.0
    return nbytes * bus_factor("all_reduce", n) / busbw_Bps


def hierarchical_allreduce_time_s(
    nbytes: float, nodes: int, gpus_per_node: int, intra_Bps: float, inter_Bps: float
) -> float:
    """All-reduce over ``nodes x gpus_per_node`` GPUs, done hierarchically:
    reduce-scatter inside each node, all-reduce of each 1/G shard across nodes (G rails
    in parallel, ``inter_Bps`` per GPU), all-gather inside the node.
    """
    g, m = gpus_per_node, nodes
    t = 0.0
    if g > 1:
        t += 2.0 * (g - 1) / g * nbytes / intra_Bps
    if m > 1:
        t += 2.0 * (m - 1) / m * (nbytes / g) / inter_Bps
    return t


def size_range(text: str) -> list[int]:
    """'LO:HI' (or one size) -> the message sizes of a run: powers of four from LO to HI bytes."""
    parts = text.split(":")
    if len(parts) > 2:
        raise ValueError(f"not a size range: {text!r} (use LO:HI, e.g. 1K:1G)")
    lo, hi = parse_size(parts[0]), parse_size(parts[-1])
    return list(iter_sizes(lo, hi))


def iter_sizes(lo: int, hi: int) -> Iterator[int]:
    """Powers of four from ``lo`` to ``hi`` bytes, both included when they fit."""
    s = lo
    while s <= hi:
        yield s
        s *= 4


# --- bandwidth for planning -------------------------------------------------------------

#: Intra-node GPU-to-GPU bandwidth per GPU, one direction, in bytes/s (datasheet link rates;
#: half the "bidirectional" figures).  An all-reduce's bus bandwidth approaches this rate at
#: large messages and stays below it (NCCL typically reaches 80-90% of it): a plan that uses
#: these numbers is optimistic, and says so.  Keys are those of ``profiler.devices.SPECS``.
INTRA_NODE: dict[str, tuple[float, str]] = {
    "h100-sxm": (450e9, "NVLink 4 + NVSwitch, 900 GB/s bidirectional per GPU (H100 SXM datasheet)"),
    "h200": (450e9, "NVLink 4 + NVSwitch, 900 GB/s bidirectional per GPU (H200 SXM datasheet)"),
    "gh200": (450e9, "NVLink 4, 900 GB/s bidirectional per GPU (GH200 datasheet)"),
    "gh200-144gb": (450e9, "NVLink 4, 900 GB/s bidirectional per GPU (GH200 datasheet)"),
    "h200-nvl": (450e9, "NVLink bridge, 900 GB/s bidirectional per GPU, 2- or 4-way (H200 NVL datasheet)"),
    "h100-nvl": (300e9, "NVLink bridge, 600 GB/s bidirectional, GPU pairs only (H100 NVL datasheet); "
                        "beyond a pair the traffic crosses PCIe Gen5"),
    "h100-pcie": (64e9, "PCIe Gen5 x16, 128 GB/s bidirectional (H100 PCIe datasheet; no NVLink assumed)"),
    "b200": (900e9, "NVLink 5 + NVSwitch, 1.8 TB/s bidirectional per GPU (HGX B200 datasheet)"),
    "a100-40gb": (300e9, "NVLink 3 + NVSwitch, 600 GB/s bidirectional per GPU (A100 SXM datasheet)"),
    "a100-80gb": (300e9, "NVLink 3 + NVSwitch, 600 GB/s bidirectional per GPU (A100 SXM datasheet)"),
    "a100-pcie-40gb": (32e9, "PCIe Gen4 x16, 64 GB/s bidirectional (A100 PCIe datasheet; no NVLink bridge assumed)"),
    "a100-pcie-80gb": (32e9, "PCIe Gen4 x16, 64 GB/s bidirectional (A100 PCIe datasheet; no NVLink bridge assumed)"),
    "v100-sxm2-16gb": (150e9, "NVLink 2, 300 GB/s bidirectional per GPU (V100 SXM2 datasheet)"),
    "v100-sxm2-32gb": (150e9, "NVLink 2, 300 GB/s bidirectional per GPU (V100 SXM2 datasheet)"),
    "a10": (32e9, "PCIe Gen4 x16, 64 GB/s bidirectional (A10 datasheet; no NVLink)"),
    "l4": (32e9, "PCIe Gen4 x16, 64 GB/s bidirectional (L4 datasheet; no NVLink)"),
    "l40": (32e9, "PCIe Gen4 x16, 64 GB/s bidirectional (L40 datasheet; no NVLink)"),
    "l40s": (32e9, "PCIe Gen4 x16, 64 GB/s bidirectional (L40S datasheet; no NVLink)"),
    "rtx-4090": (32e9, "PCIe Gen4 x16, 64 GB/s bidirectional (no NVLink)"),
}


def intra_node_bandwidth(device_key: str) -> tuple[float, str] | None:
    """``(bytes/s per GPU, one direction; where the figure comes from)`` for a card, or None."""
    return INTRA_NODE.get(device_key)


class CollectivesFileError(ValueError):
    """A collectives CSV that cannot be used (one line, for the command line)."""


@dataclass
class MeasuredAllReduce:
    """All-reduce bus bandwidth against message size, read from a collectives CSV.

    ``points``: ``(size_bytes, busbw_Bps)`` sorted by size (the best row where a size appears
    twice); ``world_size`` and ``backend`` of the run that measured them.
    """

    points: list[tuple[int, float]]
    world_size: int
    backend: str
    dtype: str
    path: str

    def busbw_at(self, size_bytes: float) -> float:
        """Bus bandwidth (bytes/s) for an all-reduce of ``size_bytes``: interpolated linearly in
        log size between measured sizes, held at the nearest measured size outside them."""
        pts = self.points
        if size_bytes <= pts[0][0]:
            return pts[0][1]
        if size_bytes >= pts[-1][0]:
            return pts[-1][1]
        x = math.log(size_bytes)
        for (s0, b0), (s1, b1) in zip(pts, pts[1:]):
            if size_bytes <= s1:
                t = (x - math.log(s0)) / (math.log(s1) - math.log(s0))
                return b0 + t * (b1 - b0)
        return pts[-1][1]  # pragma: no cover

    def describe(self, size_bytes: float) -> str:
        lo, hi = self.points[0][0], self.points[-1][0]
        where = ("interpolated" if lo <= size_bytes <= hi else
                 f"held at the {'largest' if size_bytes > hi else 'smallest'} measured size")
        return (f"all-reduce bus bandwidth {self.busbw_at(size_bytes) / 1e9:.4g} GB/s at {size_bytes / 2**20:.4g} MiB "
                f"messages ({where}; measured on {self.world_size} {self.backend} ranks, {len(self.points)} sizes "
                f"from {lo:,} to {hi:,} B, {Path(self.path).name})")


_CSV_COLUMNS = ("op", "size_bytes", "world_size", "busbw_Bps")


def load_collectives_csv(path: str | os.PathLike) -> MeasuredAllReduce:
    """Read the all-reduce rows of a collectives CSV (written by ``torchrun -m flopscale.profiler.distributed
    collectives --out`` or, beside its table, by ``flopscale bench --only collectives``).

    Raises :class:`CollectivesFileError` (one line) for a missing or unreadable file, missing
    columns, no all-reduce rows, rows of several world sizes, or a non-positive bandwidth.
    """
    import csv

    p = Path(path)
    try:
        with open(p, newline="") as fh:
            reader = csv.DictReader(fh)
            fields = list(reader.fieldnames or [])
            rows = list(reader)
    except OSError as exc:
        raise CollectivesFileError(f"cannot read collectives file {p}: {exc.strerror or exc}") from None
    except (csv.Error, UnicodeDecodeError) as exc:
        raise CollectivesFileError(f"collectives file {p} is not a CSV ({exc})") from None
    missing = [c for c in _CSV_COLUMNS if c not in fields]
    if missing:
        hint = ""
        if "suite" in fields and "median_ms" in fields:
            hint = "; this is the bench summary table: use the collectives-*.csv written beside it"
        raise CollectivesFileError(f"collectives file {p} lacks column(s) {', '.join(missing)} "
                                   f"(expected the rows of a collectives run){hint}")
    ar = [r for r in rows if (r.get("op") or "").strip() == "all_reduce"]
    if not ar:
        ops = sorted({(r.get("op") or "").strip() for r in rows} - {""})
        raise CollectivesFileError(f"collectives file {p} has no all_reduce rows"
                                   + (f" (only {', '.join(ops)})" if ops else " (no rows)"))
    best: dict[int, float] = {}
    worlds, backends, dtypes = set(), set(), set()
    for r in ar:
        try:
            size, bus, world = int(float(r["size_bytes"])), float(r["busbw_Bps"]), int(float(r["world_size"]))
        except (TypeError, ValueError):
            raise CollectivesFileError(f"collectives file {p}: unreadable all_reduce row {dict(r)}") from None
        if not (size > 0 and bus > 0 and math.isfinite(bus)):
            raise CollectivesFileError(f"collectives file {p}: all_reduce row with size {size} B and bus bandwidth "
                                       f"{bus} B/s; both must be positive (a run on a single rank moves no data)")
        worlds.add(world)
        backends.add((r.get("backend") or "?").strip())
        dtypes.add((r.get("dtype") or "?").strip())
        best[size] = max(best.get(size, 0.0), bus)
    if len(worlds) > 1:
        raise CollectivesFileError(f"collectives file {p} mixes runs of {sorted(worlds)} ranks: keep one run")
    return MeasuredAllReduce(sorted(best.items()), worlds.pop(), "/".join(sorted(backends)),
                             "/".join(sorted(dtypes)), str(p))
