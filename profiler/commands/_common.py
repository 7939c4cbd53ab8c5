"""Helpers shared by the subcommands: user errors, JSON output, safe file writes."""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any, Iterator

from .. import _io


class UserError(Exception):
    """Bad input from the user: printed as one line, exit status 2, no traceback."""


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
