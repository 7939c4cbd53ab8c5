"""Helpers shared by the subcommands: user errors, JSON output, safe file writes."""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator


class UserError(Exception):
    """Bad input from the user: printed as one line, exit status 2, no traceback."""


class NotYetAvailable(UserError):
    """A subcommand whose issue has not landed yet."""


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        return _jsonable(obj.to_dict())
    if hasattr(obj, "tolist") and callable(obj.tolist):
        return _jsonable(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def dumps(obj: Any) -> str:
    """JSON text for machines: NaN/inf become null, numpy scalars become numbers."""
    return json.dumps(_jsonable(obj), indent=2, sort_keys=False)


def print_json(obj: Any) -> None:
    sys.stdout.write(dumps(obj) + "\n")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only on success.

    No partial file is left behind when the block raises (or is interrupted).
    """
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise UserError(f"directory does not exist: {path.parent}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix or ".tmp", dir=path.parent or ".")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def not_yet(name: str, issue: int) -> int:
    raise NotYetAvailable(f"'flopscale {name}' is not available yet (tracked in issue #{issue})")
