"""Where kernels may run: a CUDA device, or any device under the Triton interpreter."""
from __future__ import annotations

import os

import torch


def interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def check_runnable(*tensors: torch.Tensor, op: str) -> None:
    """Raise a clear error unless all tensors share a device a Triton kernel can run on."""
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise ValueError(f"{op}: inputs are on different devices: {sorted(str(d) for d in devices)}")
    dev = next(iter(devices))
    if dev.type == "cuda":
        return
    if dev.type == "cpu" and interpreter_on():
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
