"""Independent blocks of work in forked worker processes, with this process as the fallback.

A batched fit is mostly numpy calls on arrays of a few thousand elements, too small for threads
to help (the interpreter lock is held between calls), so blocks of starts run in forked
processes instead: each child inherits the data and the objective, runs its block and sends the
result back through a pipe.  Forking is used only where it is safe and cheap (Linux, no other
Python threads, not inside a daemonic worker); anything that goes wrong in a child (an error, a
crash, no answer within the deadline) is redone here, so the answer never depends on it.
"""
from __future__ import annotations

import multiprocessing
import os
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


def resolve_workers(workers: "int | None") -> int:
    """``workers`` as given, else ``$LAWFIT_WORKERS``, else the usable CPUs."""
    src = "workers"
    if workers is None:
        env = os.environ.get(ENV, "").strip()
        if not env:
            return usable_cpus()
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


def can_fork() -> bool:
    return (sys.platform.startswith("linux") and hasattr(os, "fork")
            and not multiprocessing.current_process().daemon and threading.active_count() == 1)


def _child(fn: Callable[[int], Any], i: int, conn) -> None:
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
            p = ctx.Process(target=_child, args=(fn, i, send), daemon=True, name=f"lawfit-block-{i}")
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
