"""Trustworthy timing: ``profiler.bench(fn)``.

``bench`` calls ``fn`` a few times to warm up (compilation, autotuning, caches),
picks the number of repetitions from a time budget (unless ``rep`` is given),
then times every repetition separately and returns the whole distribution.

* On a CUDA device each repetition is bracketed by CUDA events on the current
  stream; all events are resolved after one synchronisation at the end, so the
  host never waits inside the loop.
* Between repetitions the L2 cache is flushed by writing a buffer larger than it
  (``flush_l2=True``), so a kernel does not get its inputs from a warm cache.  The
  flush itself is outside the timed interval.
* ``cuda_graph=True`` captures ``fn`` once into a CUDA graph and times its replay:
  use it when launch overhead would dominate (small kernels).  ``fn`` must be
  capturable (no host synchronisation, no CPU work between kernels that matters); on
  torch < 2.12 a capture that fails can leave the caching allocator believing a capture
  is still under way, so do not use it speculatively.
* ``hide_launch=True`` is the capture-free alternative: before each repetition's start
  event the device is given a spin (``torch.cuda._sleep``) longer than twice the host
  time of one call, so the host has queued the whole call before the device reaches the
  start event and the interval measures device time only (launch overhead and the gaps
  between a call's kernels excluded).
* On the CPU the clock is ``time.perf_counter`` (monotonic, ns resolution) and the
  "L2" flush writes a buffer twice the size of the last-level cache.

Every time is in seconds.  Statistics: median, inter-quartile range (p75 - p25,
linear interpolation), minimum, maximum, mean, count.  A distribution whose IQR is at
least ``UNSTABLE_IQR_RATIO`` (half) of its median is *unstable* (``Timing.unstable``;
a busy machine, frequency changes): its median is a rough figure, and every rendering
says so next to the number.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["Timing", "bench", "llc_bytes", "UNSTABLE_IQR_RATIO", "check_time_budget"]

# IQR / median at or above which a timing is called unstable ("IQR comparable to the median")
UNSTABLE_IQR_RATIO = 0.5


def check_time_budget(seconds: Any, what: str = "time budget") -> float:
    """``seconds`` as a float if it is a finite number > 0, else ValueError naming ``what``."""
    try:
        v = float(seconds)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number of seconds > 0, got {seconds!r}") from None
    if isinstance(seconds, bool) or not math.isfinite(v) or v <= 0:
        raise ValueError(f"{what} must be a finite number of seconds > 0, got {seconds!r}")
    return v


@dataclass(frozen=True)
class Timing:
    """The distribution of the repetition times of one function, in seconds."""

    median_s: float
    iqr_s: float
    min_s: float
    max_s: float
    mean_s: float
    count: int
    times_s: tuple[float, ...] = field(repr=False)
    clock: str = "perf_counter"  # "cuda_events" or "perf_counter"
    flush_l2: bool = False
    cuda_graph: bool = False
    warmup: int = 0
    hide_launch: bool = False  # a device spin before each start event hid the launch overhead

    @classmethod
    def from_times(cls, times_s: Any, **meta: Any) -> "Timing":
        t = np.asarray(list(times_s), dtype=np.float64)
        if t.size == 0:
            raise ValueError("Timing needs at least one repetition")
        p25, p50, p75 = np.percentile(t, [25, 50, 75])
        return cls(
            median_s=float(p50),
            iqr_s=float(p75 - p25),
            min_s=float(t.min()),
            max_s=float(t.max()),
            mean_s=float(t.mean()),
            count=int(t.size),
            times_s=tuple(float(x) for x in t),
            **meta,
        )

    @property
    def iqr_ratio(self) -> float:
        """IQR / median (NaN for a zero median)."""
        return self.iqr_s / self.median_s if self.median_s > 0 else math.nan

    @property
    def unstable(self) -> bool:
        """True when the IQR is at least ``UNSTABLE_IQR_RATIO`` of the median."""
        r = self.iqr_ratio
        return bool(self.count >= 2 and math.isfinite(r) and r >= UNSTABLE_IQR_RATIO)

    @property
    def stability_note(self) -> str:
        """'' when stable, else a phrase to print next to the median."""
        if not self.unstable:
            return ""
        return f"unstable: IQR {self.iqr_ratio * 100:.0f}% of the median"

    def to_dict(self, with_times: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not with_times:
            d.pop("times_s")
        d["unstable"] = self.unstable
        return d

    def __str__(self) -> str:
        note = f", {self.stability_note}" if self.unstable else ""
        return (
            f"median {_fmt_s(self.median_s)} (IQR {_fmt_s(self.iqr_s)}, min {_fmt_s(self.min_s)}, "
            f"n={self.count}, {self.clock}{note})"
        )


def _fmt_s(s: float) -> str:
    if not math.isfinite(s):
        return "n/a"
    if s >= 1:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3f} ms"
    return f"{s * 1e6:.1f} us"


def llc_bytes(default: int = 32 * 2**20) -> int:
    """Size in bytes of the CPU's largest cache (from sysfs), or ``default``."""
    best = 0
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    try:
        for idx in base.glob("index*"):
            txt = (idx / "size").read_text().strip().upper()
            mult = 1
            if txt.endswith("K"):
                mult, txt = 2**10, txt[:-1]
            elif txt.endswith("M"):
                mult, txt = 2**20, txt[:-1]
            best = max(best, int(txt) * mult)
    except (OSError, ValueError):
        best = 0
    return best or default


class _Flusher:
    """Writes a buffer larger than the last-level cache (outside the timed interval)."""

    def __init__(self, device: Any) -> None:
        import torch

        self.device = device
        if device.type == "cuda":
            props = torch.cuda.get_device_properties(device)
            l2 = int(getattr(props, "L2_cache_size", 0) or 0) or 64 * 2**20
            nbytes = max(2 * l2, 64 * 2**20)
        else:
            nbytes = 2 * llc_bytes()
        self.buf = torch.empty(nbytes // 4, dtype=torch.int32, device=device)
        self.nbytes = nbytes

    def __call__(self) -> None:
        self.buf.zero_()


def _resolve_device(device: Any) -> Any:
    import torch

    if device is None:
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def _capture_graph(fn: Callable[[], Any]) -> Callable[[], Any]:
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):  # warm up on a side stream, as capture requires
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    torch.cuda.synchronize()
    return graph.replay  # the bound method keeps the graph (and its memory pool) alive


_SPIN_RATE: dict[int, float | None] = {}


def _spin_cycles_per_s(index: int) -> float | None:
    """Clock cycles per second of ``torch.cuda._sleep`` on device ``index`` (measured once
    with CUDA events), or None when the spin is not available."""
    import torch

    if index in _SPIN_RATE:
        return _SPIN_RATE[index]
    rate = None
    sleep = getattr(torch.cuda, "_sleep", None)
    if sleep is not None:
        try:
            sleep(1000)
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            cycles = 2_000_000  # ~1 ms at 2 GHz
            start.record()
            sleep(cycles)
            end.record()
            end.synchronize()
            ms = start.elapsed_time(end)
            rate = cycles / (ms * 1e-3) if ms > 0 else None
        except Exception:  # noqa: BLE001 - no spin: hide_launch falls back to plain timing
            rate = None
    _SPIN_RATE[index] = rate
    return rate


def bench(
    fn: Callable[[], Any],
    *,
    warmup: int = 3,
    rep: int | None = None,
    time_budget_s: float = 1.0,
    flush_l2: bool = True,
    cuda_graph: bool = False,
    device: Any = None,
    min_rep: int = 5,
    max_rep: int = 10_000,
    hide_launch: bool = False,
) -> Timing:
    """Time ``fn()`` (no arguments) and return the distribution of its repetitions.

    Parameters
    ----------
    warmup:
        calls before timing (at least one, which also estimates the cost of a call).
    rep:
        number of timed repetitions; ``None`` chooses ``time_budget_s / (time of one
        call + flush)`` clamped to ``[min_rep, max_rep]``.
    time_budget_s:
        seconds of wall time the timed repetitions may take (approximately; on the CPU the
        loop also stops at twice the budget once ``min_rep`` repetitions are done).
    flush_l2:
        write a buffer larger than the last-level cache before every repetition
        (not timed).
    cuda_graph:
        capture ``fn`` into a CUDA graph and time graph replays (CUDA only).
    hide_launch:
        CUDA only: queue a device spin of twice the host time of one call (at least 20 us,
        at most 5 ms) before every start event, so the interval is device time without
        launch overhead.  Ignored on the CPU and where ``torch.cuda._sleep`` is missing
        (``Timing.hide_launch`` says whether it was applied).
    device:
        where ``fn`` runs: ``"cuda"``/``"cuda:N"`` (CUDA events) or ``"cpu"``
        (``perf_counter``); default the current CUDA device if there is one, else CPU.
    """
    import torch

    if warmup < 1:
        warmup = 1
    if rep is not None and rep < 1:
        raise ValueError(f"bench: rep must be >= 1, got {rep}")
    time_budget_s = check_time_budget(time_budget_s, "bench: time_budget_s")
    dev = _resolve_device(device)
    on_cuda = dev.type == "cuda"
    if cuda_graph and not on_cuda:
        raise ValueError("bench: cuda_graph=True needs a CUDA device")

    ctx = torch.cuda.device(dev) if on_cuda else _nullcontext()
    with ctx:
        call = fn
        for _ in range(warmup):
            fn()
        if cuda_graph:
            call = _capture_graph(fn)
        flusher = _Flusher(dev) if flush_l2 else None

        # cost of one call (and of one flush) to size the loop
        if on_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        if flusher is not None:
            flusher()
            if on_cuda:
                torch.cuda.synchronize()
        t1 = time.perf_counter()
        call()
        t_host = time.perf_counter()
        if on_cuda:
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        per_rep = max((t2 - t1) + (t1 - t0), 1e-7)
        spin_cycles = 0
        if hide_launch and on_cuda:
            rate = _spin_cycles_per_s(dev.index if dev.index is not None else torch.cuda.current_device())
            if rate:
                pad_s = min(max(2.0 * (t_host - t1), 20e-6), 5e-3)
                spin_cycles = int(pad_s * rate)
                per_rep += pad_s
        if rep is None:
            n = int(time_budget_s / per_rep)
            n = max(min_rep, min(max_rep, n))
        else:
            n = rep

        if on_cuda:
            times = _time_cuda(call, n, flusher, spin_cycles)
        else:
            # a loaded CPU can make later calls far slower than the sizing call: stop at
            # twice the budget once min_rep repetitions are in (only when rep was not given)
            deadline = None if rep is not None else time.perf_counter() + 2 * time_budget_s
            times = _time_cpu(call, n, flusher, deadline, min(min_rep, n))
    return Timing.from_times(
        times,
        clock="cuda_events" if on_cuda else "perf_counter",
        flush_l2=flush_l2,
        cuda_graph=cuda_graph,
        warmup=warmup,
        hide_launch=bool(on_cuda and spin_cycles > 0),
    )


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> bool:
        return False


def _time_cuda(call: Callable[[], Any], n: int, flusher: _Flusher | None, spin_cycles: int = 0) -> list[float]:
    import torch

    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for i in range(n):
        if flusher is not None:
            flusher()
        if spin_cycles:
            torch.cuda._sleep(spin_cycles)  # the device waits here while the host queues the call
        starts[i].record()
        call()
        ends[i].record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) * 1e-3 for s, e in zip(starts, ends)]


def _time_cpu(call: Callable[[], Any], n: int, flusher: _Flusher | None, deadline: float | None = None,
              at_least: int = 1) -> list[float]:
    clock = time.perf_counter
    times = []
    for i in range(n):
        if flusher is not None:
            flusher()
        t0 = clock()
        call()
        t1 = clock()
        times.append(t1 - t0)
        if deadline is not None and t1 > deadline and i + 1 >= at_least:
            break
    return times
