"""Independent blocks of work in forked worker processes, with this process as the fallback.

A batched fit is mostly numpy calls on arrays of a few thousand elements, too small for threads
to help (the interpreter lock is held between calls), so blocks of starts run in forked
processes instead: each child inherits the data and the objective, runs its block and sends the
result back through a pipe.  Forking is used only where it is safe and cheap (Linux, no other
Python threads, not inside a daemonic worker); anything that goes wrong in a child (an error, a
crash, no answer within the deadline) is redone here, so the answer never depends on it.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
import warnings
from typing import Any, Callable

from ._errors import LawfitError

ENV = "LAWFIT_WORKERS"


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _cpu_times() -> "dict[int, tuple[int, int]] | None":
    """Per-CPU (idle, total) jiffies from /proc/stat, or None where there is none."""
    try:
        with open("/proc/stat") as fh:
            out = {}
            for line in fh:
                if line.startswith("cpu") and line[3].isdigit():
                    f = line.split()
                    v = [int(x) for x in f[1:]]
                    out[int(f[0][3:])] = (v[3] + (v[4] if len(v) > 4 else 0), sum(v[:8]))
            return out
    except (OSError, ValueError, IndexError):
        return None


def free_cpus(window_s: float = 0.03) -> int:
    """Usable CPUs that were mostly idle over a short window (other processes' load counted,
    this one's not: it sleeps while measuring); at least 1.  Falls back to the usable CPUs
    where /proc/stat cannot be read."""
    usable = usable_cpus()
    try:
        mine = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        mine = None
    a = _cpu_times()
    if a is None:
        return usable
    time.sleep(window_s)
    b = _cpu_times()
    if b is None:
        return usable
    free = 0
    for cpu in (mine if mine is not None else sorted(b)):
        if cpu in a and cpu in b:
            d_idle, d_tot = b[cpu][0] - a[cpu][0], b[cpu][1] - a[cpu][1]
            if d_tot <= 0 or d_idle / d_tot >= 0.5:
                free += 1
    return max(1, min(usable, free))


AUTO = "auto"


def resolve_workers(workers: "int | None", lazy: bool = False) -> "int | str":
    """``workers`` as given, else ``$LAWFIT_WORKERS``, else the CPUs that are free now
    (:func:`free_cpus`: on a busy machine a second process would only compete for one core).
    ``lazy=True`` returns :data:`AUTO` instead of measuring; :func:`workers_now` measures it
    when (and only if) a batch is large enough to split."""
    src = "workers"
    if workers is None:
        env = os.environ.get(ENV, "").strip()
        if not env:
            return AUTO if lazy else free_cpus()
        src, workers = f"${ENV}", env
    try:
        w = int(workers)
        if w != float(workers):
            raise ValueError
    except (TypeError, ValueError):
        raise LawfitError(f"{src} must be a positive integer, got {workers!r}") from None
    if w < 1:
        raise LawfitError(f"{src} must be a positive integer, got {workers!r}")
    return w


def workers_now(workers: "int | str") -> int:
    """A worker count from :func:`resolve_workers` (``AUTO`` measured now)."""
    return free_cpus() if workers == AUTO else int(workers)


def can_fork() -> bool:
    return (sys.platform.startswith("linux") and hasattr(os, "fork")
            and not multiprocessing.current_process().daemon and threading.active_count() == 1)


_PR_SET_PDEATHSIG = 1


def _child_setup(parent: int) -> None:
    """In a forked worker: the default actions for SIGTERM and SIGINT (the parent's handlers
    would raise in the child and print tracebacks; the default ends the child silently), and on
    Linux a death signal, so that a worker never outlives its parent (even one killed by
    SIGKILL) to spin on its own."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (ValueError, OSError):
            pass
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError, TypeError):
        pass
    if os.getppid() != parent:          # the parent died before the death signal was armed
        os._exit(1)


def _child(fn: Callable[[int], Any], i: int, conn, parent: int | None = None) -> None:
    if parent is not None:
        _child_setup(parent)
    try:
        out = ("ok", fn(i))
    except BaseException as e:  # reported, and the block is redone by the parent
        out = ("error", f"{type(e).__name__}: {e}")
    try:
        conn.send(out)
    finally:
        conn.close()


def run_blocks(fn: Callable[[int], Any], n: int, workers: int, min_wait_s: float = 60.0) -> "tuple[list, int]":
    """``[fn(0), ..., fn(n-1)]`` with up to ``workers`` processes at once.

    Blocks 1 .. workers-1 go to forked children; block 0 and any beyond run here.  A child's
    result is used when it arrives within ``max(min_wait_s, 20 x the time this process took
    for its own blocks)``; otherwise (or after an error or a crash) the block is run here.
    Returns the results and how many blocks ran in children."""
    if workers < 2 or n < 2 or not can_fork():
        return [fn(i) for i in range(n)], 0
    ctx = multiprocessing.get_context("fork")
    for stream in (sys.stdout, sys.stderr):     # a child must not re-emit buffered output
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    children: dict[int, tuple[Any, Any]] = {}
    results: dict[int, Any] = {}
    in_children = 0
    try:
        for i in range(1, min(workers, n)):
            recv, send = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_child, args=(fn, i, send, os.getpid()), daemon=True, name=f"lawfit-block-{i}")
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)   # fork with native threads
                    p.start()
            except OSError:
                recv.close()
                send.close()
                break
            send.close()
            children[i] = (p, recv)
        t0 = time.perf_counter()
        for i in range(n):
            if i not in children:
                results[i] = fn(i)
        wait = max(min_wait_s, 20.0 * (time.perf_counter() - t0))
        for i, (p, recv) in children.items():
            got = None
            try:
                if recv.poll(wait):
                    status, payload = recv.recv()
                    if status == "ok":
                        got = (payload,)
            except (EOFError, OSError, ValueError, TypeError, AttributeError, ImportError):
                got = None
            if got is None:
                results[i] = fn(i)
            else:
                results[i] = got[0]
                in_children += 1
    finally:
        for p, recv in children.values():
            recv.close()
            if p.is_alive():
                p.terminate()
            p.join(timeout=5)
    return [results[i] for i in range(n)], in_children
