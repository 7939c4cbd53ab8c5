"""Choosing a matmul tile configuration: tuning on the GPU, remembered on disk.

``choose_config`` picks from candidate configurations: a remembered choice, else (when
tuning is allowed) the fastest by median time, remembered in ``$FLOPSCALE_CACHE_DIR/
<file>.json``, else a heuristic (the layer passes its size-aware model).  ``ConfigCache``
is safe across processes: a write merges under a file lock and replaces the file atomically.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import triton

from ._runtime import cache_dir

__all__ = ["ConfigCache", "choose_config"]


class ConfigCache:
    """Chosen configuration per tuning key, kept in memory and in a JSON file.

    File format: ``{"<key>": "<config name>", ...}`` where the key names the device, the
    Triton version, the kernel, the dtype and the shape bucket.  Several processes may tune at
    once: a write holds an exclusive ``flock`` on ``<file>.lock`` while it reads the file,
    merges its entry and replaces the file atomically (temporary file + rename), so no entry
    written by another process is lost; readers need no lock.  The file gets the permissions
    the umask allows (like any file the user creates).  An unreadable file is ignored.
    """

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self._mem: dict[str, str] = {}
        self._loaded_from: Path | None = None
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return cache_dir() / self.filename

    @staticmethod
    def _read(path: Path) -> dict[str, str]:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}

    def _load(self) -> None:
        path = self.path
        if self._loaded_from == path:
            return
        self._loaded_from = path
        for k, v in self._read(path).items():
            self._mem.setdefault(k, v)

    def get(self, key: str) -> str | None:
        with self._lock:
            self._load()
            return self._mem.get(key)

    def put(self, key: str, value: str) -> None:
        with self._lock:
            self._load()
            self._mem[key] = value
            path = self.path
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with _file_lock(path.parent / f"{path.name}.lock"):
                    current = self._read(path)
                    current[key] = value
                    _write_json_atomic(path, current)
            except OSError as exc:
                warnings.warn(f"flopscale: cannot write tuning cache {path}: {exc}", stacklevel=3)


class _file_lock:
    """Exclusive advisory lock (``fcntl.flock``) on ``path`` for a with-block; where flock
    does not exist (Windows) only this process's threads are serialised."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def __enter__(self) -> "_file_lock":
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            import fcntl

            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except ImportError:
            pass
        except BaseException:
            os.close(self.fd)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the flock
            self.fd = None


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_json_atomic(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 whatever the umask
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


_CONFIG_CACHE = ConfigCache("matmul-configs.json")


def _bucket(x: int) -> int:
    """Power-of-two bucket of a dimension (>= 16)."""
    return max(16, 1 << (max(int(x), 1) - 1).bit_length())


def _autotune_setting() -> str:
    """``FLOPSCALE_AUTOTUNE``: "0"/"false"/"no"/"off" (no tuning: the size-aware model picks),
    "wide" (tune over ``matmul_kernels.tuning_space`` on sm_90), anything else: tune the
    shipped configurations."""
    v = os.environ.get("FLOPSCALE_AUTOTUNE", "1").strip().lower()
    return "off" if v in ("0", "false", "no", "off") else ("wide" if v == "wide" else "on")


def _tuning_allowed(*tensors: torch.Tensor) -> bool:
    if _autotune_setting() == "off":
        return False
    if torch.compiler.is_compiling():
        return False
    from torch._subclasses.fake_tensor import is_fake

    if any(is_fake(t) for t in tensors) or any(t.device.type != "cuda" for t in tensors):
        return False
    if torch.cuda.is_current_stream_capturing():
        return False
    return True


def _device_tag(device: torch.device) -> str:
    props = torch.cuda.get_device_properties(device)
    return f"{props.name}|sm{props.major}{props.minor}|triton{triton.__version__}"


def choose_config(
    kind: str,
    candidates: Sequence[Any],
    shape_key: str,
    device: torch.device,
    run: Callable[[Any], None],
    tensors: Sequence[torch.Tensor],
    cache: ConfigCache | None = None,
    heuristic: Callable[[Sequence[Any]], Any] | None = None,
    tune: bool = True,
) -> Any:
    """Pick a configuration from ``candidates`` (objects with ``.name``): a remembered choice,
    else (when ``tune`` and tuning is allowed) the fastest by median time of ``run(config)``,
    remembered, else ``heuristic(candidates)`` (default: the first)."""
    if len(candidates) == 1:
        return candidates[0]
    cache = _CONFIG_CACHE if cache is None else cache
    by_name = {c.name: c for c in candidates}
    key = f"{_device_tag(device)}|{kind}|{shape_key}" if device.type == "cuda" else None
    if key is not None:
        hit = cache.get(key)
        if hit in by_name:
            return by_name[hit]
    if key is None or not tune or not _tuning_allowed(*tensors):
        return heuristic(candidates) if heuristic else candidates[0]
    from triton.testing import do_bench

    times = {}
    for cfg in candidates:
        try:
            times[cfg.name] = do_bench(lambda: run(cfg), warmup=5, rep=25, return_mode="median")
        except Exception:  # noqa: BLE001 - a config that fails to launch (e.g. out of shared memory) is skipped
            times[cfg.name] = float("inf")
    best = min(times, key=times.get)
    if math.isinf(times[best]):
        return heuristic(candidates) if heuristic else candidates[0]
    cache.put(key, best)
    return by_name[best]


# --------------------------------------------------------------------------- launch helpers
