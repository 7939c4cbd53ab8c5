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
import time
from dataclasses import asdict, dataclass
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
        return lambda: dist.all_gather_into_tensor(out, inp)
    if op == "reduce_scatter":
        inp = torch.ones(count, dtype=dtype, device=device)
        out = torch.empty(shard, dtype=dtype, device=device)
        return lambda: dist.reduce_scatter_tensor(out, inp)
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


def iter_sizes(lo: int, hi: int) -> Iterator[int]:
    """Powers of four from ``lo`` to ``hi`` bytes, both included when they fit."""
    s = lo
    while s <= hi:
        yield s
        s *= 4
