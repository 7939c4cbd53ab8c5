"""flopscale profiler: devices and measured ceilings, timing, NVML telemetry,
launch records, roofline/MFU, the transformer-step audit, budgets and the CLI.

Imports point one way: ``profiler -> kernels`` and ``profiler -> lawfit``.
Names are loaded lazily so that ``flopscale --help`` stays fast.
"""
from __future__ import annotations
from flopscale._namespace import require_namespaced as _require_namespaced

_require_namespaced(__name__, 'profiler')

import importlib
from typing import Any

_LAZY = {
    "devices": ("devices", None),
    "calibrate": ("devices", "calibrate"),
    "bench": ("timing", "bench"),
    "Profile": ("record", "Profile"),
    "budget": ("budget", None),
    "model": ("model", None),
    "audit": ("audit", None),
    "plan": ("plan", None),
    "flopcount": ("flopcount", None),
    "roofline": ("roofline", None),
    "telemetry": ("telemetry", None),
    "collectives": ("collectives", None),
    "profile_kernels": ("profile_run", "profile_kernels"),
    "ProfileOptions": ("profile_run", "ProfileOptions"),
    "make_plan": ("planner", "make_plan"),
    "PlanResult": ("planner", "PlanResult"),
}


def __getattr__(name: str) -> Any:
    spec = _LAZY.get(name)
    if spec is None:
        raise AttributeError(f"module 'profiler' has no attribute {name!r}")
    mod = importlib.import_module(f"{__name__}.{spec[0]}")
    value = mod if spec[1] is None else getattr(mod, spec[1])
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
