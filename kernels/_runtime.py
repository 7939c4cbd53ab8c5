"""Where kernels may run: a CUDA device, or any device under the Triton interpreter; which
dtypes the interpreter computes correctly; where kernel caches live.

Every op calls :func:`check_runnable` (with ``dtypes=`` the operand dtypes it feeds to
``tl.dot``) before launching, so an input the kernels cannot compute correctly here is one
clear ``ValueError``, never a wrong tensor.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import torch

__all__ = ["interpreter_on", "check_runnable", "interpreter_dot_ok", "wrap_triton", "cache_dir"]

# Triton's own reading of a boolean environment variable (triton._C getenv_bool, checked with
# triton 3.9): case-insensitive, no stripping, these spellings are true, anything else false.
_TRUE = ("1", "true", "on", "yes", "y")


def interpreter_on() -> bool:
    """Whether ``@triton.jit`` kernels are interpreted: ``TRITON_INTERPRET`` parsed as Triton
    parses it (``1``/``true``/``on``/``yes``/``y`` in any case are on; ``0``, ``false``,
    ``off``, empty or unset are off).  Plain Python, so torch.compile can trace it."""
    return os.environ.get("TRITON_INTERPRET", "").lower() in _TRUE


def cache_dir() -> Path:
    """Where the kernels remember things (tuned configurations, offline compiles):
    ``$FLOPSCALE_CACHE_DIR``, else ``$XDG_CACHE_HOME/flopscale``, else ``~/.cache/flopscale``."""
    env = os.environ.get("FLOPSCALE_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "flopscale"


# --------------------------------------------------------------------------- interpreter dots
_DOT_OK: dict[torch.dtype, bool] = {}
_ALWAYS_OK = (torch.float16, torch.float32)


def interpreter_dot_ok(dtype: torch.dtype) -> bool:
    """Whether the Triton interpreter computes ``tl.dot`` on ``dtype`` operands correctly.

    fp16 and fp32 always do.  Other dtypes are probed once per process with a 16x16x16 dot
    on fixed values compared with float64: Triton's interpreter multiplies the raw bit
    patterns of bfloat16 (numpy has no bfloat16), giving errors of ~1e10 without any warning,
    while triton 3.9 converts fp8 to fp16 first and gets fp8 right.  Probing, not a fixed list,
    keeps this correct across Triton versions."""
    if dtype in _ALWAYS_OK:
        return True
    hit = _DOT_OK.get(dtype)
    if hit is None:
        hit = _DOT_OK[dtype] = _probe_dot(dtype)
    return hit


def _probe_dot(dtype: torch.dtype) -> bool:
    import triton
    import triton.language as tl

    @triton.jit
    def _dot16(a_ptr, b_ptr, c_ptr):
        r = tl.arange(0, 16)
        a = tl.load(a_ptr + r[:, None] * 16 + r[None, :])
        b = tl.load(b_ptr + r[:, None] * 16 + r[None, :])
        tl.store(c_ptr + r[:, None] * 16 + r[None, :], tl.dot(a, b))

    # small integers and halves: exact in every 8- and 16-bit float format
    g = torch.Generator().manual_seed(0)
    a = (torch.randint(-4, 5, (16, 16), generator=g) / 2).to(dtype)
    b = (torch.randint(-4, 5, (16, 16), generator=g) / 2).to(dtype)
    c = torch.full((16, 16), float("nan"))
    try:
        _dot16[(1,)](a, b, c)
    except Exception:  # noqa: BLE001 - a dtype the interpreter cannot dot at all is "not ok"
        return False
    ref = a.double() @ b.double()
    return bool(torch.allclose(c.double(), ref, rtol=1e-3, atol=1e-3))


def check_runnable(*tensors: torch.Tensor, op: str, dtypes: Iterable[torch.dtype] = ()) -> None:
    """Raise a clear ``ValueError`` unless all tensors share a device a Triton kernel can run
    on and, under the interpreter, every dtype in ``dtypes`` (those fed to ``tl.dot``) is one
    the interpreter computes correctly (see :func:`interpreter_dot_ok`)."""
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise ValueError(f"{op}: inputs are on different devices: {sorted(str(d) for d in devices)}")
    dev = next(iter(devices))
    if dev.type == "cuda":
        return
    if dev.type == "cpu" and interpreter_on():
        for dt in dict.fromkeys(dtypes):
            if not interpreter_dot_ok(dt):
                raise ValueError(
                    f"{op}: {dt} needs a CUDA GPU: the Triton interpreter computes tl.dot on "
                    f"{dt} operands wrongly (an upstream limitation); use float16 or float32 on the CPU"
                )
        return
    raise ValueError(
        f"{op}: tensors on {dev} need a CUDA device, or the Triton interpreter "
        "(set TRITON_INTERPRET=1 before importing triton) to run on the CPU"
    )


def wrap_triton(kernel):
    """``torch.library.wrap_triton(kernel)`` for launching inside a ``triton_op``; under the
    Triton interpreter the (interpreted) kernel itself: torch 2.11's ``wrap_triton`` rejects
    interpreted kernels, newer torch returns them unchanged."""
    from torch.library import wrap_triton as _wrap
    from triton.runtime.jit import JITFunction

    if interpreter_on() and not isinstance(kernel, JITFunction):
        return kernel
    return _wrap(kernel)
