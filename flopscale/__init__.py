"""flopscale: how many FLOP/s your GPUs really deliver, and what model to train with them.

The project's folders are installed under this one namespace, so that installing flopscale
never takes over the top-level names of other packages (``kernels`` is the Hub kernels
package, ``profiler`` and ``benchmarks`` exist too):

    from flopscale import kernels, lawfit, profiler
    kernels.matmul(a, b)
    lawfit.allocate(1e24, law="hoffmann2022")
    profiler.Profile()

Sub-packages are imported on first use, so ``import flopscale`` stays cheap and ``lawfit``
never pulls in torch.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBPACKAGES = ("kernels", "profiler", "lawfit", "benchmarks")
__all__ = ["kernels", "profiler", "lawfit", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'flopscale' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SUBPACKAGES))
