"""Output helpers shared by the profiler and its commands: JSON-safe values, atomic writes.

An atomic write goes to a temporary file beside the target and is moved into place only
when complete, so an interrupted run never leaves a partial file behind.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator


def jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON values: NaN/inf become None, numpy/torch scalars numbers."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        return jsonable(obj.to_dict())
    if hasattr(obj, "tolist") and callable(obj.tolist):
        return jsonable(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def dumps(obj: Any, indent: int | None = 2) -> str:
    return json.dumps(jsonable(obj), indent=indent)


def default_file_mode() -> int:
    """The mode a plain ``open(path, "w")`` gives a new file: 0o666 less the process umask."""
    try:  # Linux: read it without changing it
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def temp_prefix(path: Path) -> str:
    """Name prefix of the hidden temporary file beside ``path`` (short enough for any name)."""
    return f".{path.name[:100]}."


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while a temporary file is created and its clean-up armed."""
    sigs = {signal.SIGINT, signal.SIGTERM}
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    except (AttributeError, OSError, ValueError):  # pragma: no cover - not POSIX
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """Report an OSError about the hidden temporary file as one about ``path``, the file the
    user named."""
    try:
        yield
    except OSError as exc:
        if exc.errno is None:
            raise
        raise type(exc)(exc.errno, exc.strerror, str(path)) from exc


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, make_parents: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds.

    The temporary file is removed whatever ends the block: an exception, Ctrl-C, or SIGTERM
    under the ``flopscale`` command (which turns SIGTERM into an exception).  The file gets the
    mode an ordinary write would give it: that of the file it replaces, else 0o666 less the
    umask (not the 0o600 of a bare temporary file).
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if make_parents:
        parent.mkdir(parents=True, exist_ok=True)
    elif not parent.exists():
        raise FileNotFoundError(f"directory does not exist: {parent}")
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mode = default_file_mode()
    tmp_path: Path | None = None
    fd: int | None = None
    try:
        with signals_deferred(), _naming(path):  # the file and its name come into being together
            fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=path.suffix[:16] or ".tmp", dir=parent)
            tmp_path = Path(tmp)
        os.close(fd)
        fd = None
        yield tmp_path
        with _naming(path):
            os.chmod(tmp_path, mode)  # private while written; the ordinary mode once complete
            os.replace(tmp_path, path)
    finally:
        with signals_deferred():
            if fd is not None:
                os.close(fd)
            if tmp_path is not None:
                try:
                    tmp_path.unlink()
                except FileNotFoundError:
                    pass


def write_text_atomic(path: str | os.PathLike, text: str, make_parents: bool = False) -> Path:
    with atomic_path(path, make_parents=make_parents) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
