"""Helpers shared by the subcommands: user errors, JSON output, safe file writes."""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .. import _io


class UserError(Exception):
    """Bad input from the user: printed as one line, exit status 2, no traceback."""


def check_output_path(path: str | os.PathLike | None, what: str = "output") -> Path | None:
    """Check, before any long work, that ``path`` can be written: its directory exists and is
    writable, and it is not a directory. Raises UserError naming ``what`` (e.g. '--save')."""
    if path is None:
        return None
    p = Path(path)
    if str(p) in ("", ".") or p.is_dir():
        raise UserError(f"{what}: {p} is a directory, not a file path")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.exists():
        raise UserError(f"{what}: directory does not exist: {parent}")
    if not parent.is_dir():
        raise UserError(f"{what}: {parent} is not a directory")
    if str(p.resolve()).startswith(("/proc/", "/sys/", "/dev/")):
        raise UserError(f"{what}: {p} is not a regular file path")
    if p.exists() and not p.is_file():
        raise UserError(f"{what}: {p} exists and is not a regular file")
    if len(os.fsencode(p.name)) > 255:
        raise UserError(f"{what}: file name too long: {p.name[:40]}...")
    try:  # a probe file beside the target: the write that will follow needs exactly this
        with _io.signals_deferred():  # no probe left behind by a signal
            fd, probe = tempfile.mkstemp(prefix=_io.temp_prefix(p), suffix=".probe", dir=parent)
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise UserError(f"{what}: cannot write in {parent} ({exc.strerror or exc})") from None
    if p.exists() and not os.access(p, os.W_OK):
        raise UserError(f"{what}: cannot write {p} (permission denied)")
    return p


def dumps(obj: Any) -> str:
    """JSON text for machines: NaN/inf become null, numpy scalars become numbers."""
    return _io.dumps(obj)


def print_json(obj: Any) -> None:
    sys.stdout.write(dumps(obj) + "\n")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only on success.

    No partial file is left behind when the block raises (or is interrupted).
    """
    try:
        with _io.atomic_path(path) as tmp:
            yield tmp
    except FileNotFoundError as exc:
        if "directory does not exist" in str(exc):
            raise UserError(str(exc)) from None
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_png(fig, path: str | os.PathLike, dpi: int = 120) -> None:
    """Lay out a pyplot figure, write it as PNG atomically, and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
