"""flopscale env: what this machine offers flopscale."""
from __future__ import annotations

import argparse
import os
import platform
from typing import Any

from ._common import print_json

NAME = "env"
HELP = "show Python, torch, triton, CUDA devices, Triton interpreter and NVML status"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of text")


def nvml_info() -> dict[str, Any]:
    """NVML availability and driver version; never raises."""
    try:
        import pynvml
    except Exception as exc:  # pragma: no cover - nvidia-ml-py is a dependency
        return {"available": False, "driver": None, "reason": f"pynvml not importable: {exc}"}
    try:
        pynvml.nvmlInit()
    except Exception as exc:
        return {"available": False, "driver": None, "reason": f"NVML could not initialise ({exc})"}
    try:
        drv = pynvml.nvmlSystemGetDriverVersion()
        if isinstance(drv, bytes):
            drv = drv.decode()
        return {"available": True, "driver": drv, "reason": None}
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


#: the values Triton itself reads as true (case-insensitive, not stripped); anything else is off
TRUE_VALUES = ("1", "true", "on", "yes", "y")


def interpreter_on() -> bool:
    """Whether Triton runs kernels under its interpreter: Triton's own reading of
    ``TRITON_INTERPRET`` (``triton.knobs``), so ``false``, ``0``, ``no`` and ``""`` are off."""
    try:
        from triton import knobs

        return bool(knobs.runtime.interpret)
    except Exception:  # no triton, or one without knobs: read the variable as Triton does
        return os.environ.get("TRITON_INTERPRET", "").lower() in TRUE_VALUES


def collect() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    import torch

    info["torch"] = torch.__version__
    info["torch_cuda"] = torch.version.cuda
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception as exc:
        info["triton"] = None
        info["triton_error"] = str(exc)
    devices = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            devices.append(
                {
                    "index": i,
                    "name": p.name,
                    "compute_capability": f"{p.major}.{p.minor}",
                    "sm_count": p.multi_processor_count,
                    "memory_bytes": int(p.total_memory),
                }
            )
    info["cuda_devices"] = devices
    info["triton_interpreter"] = interpreter_on()
    info["triton_interpret_env"] = os.environ.get("TRITON_INTERPRET")
    info["cpu_threads"] = torch.get_num_threads()
    info["nvml"] = nvml_info()
    return info


def interpreter_text(info: dict[str, Any]) -> str:
    raw = info.get("triton_interpret_env")
    state = "on" if info["triton_interpreter"] else "off"
    return state if raw is None else f"{state} (TRITON_INTERPRET={raw!r})"


def run(args: argparse.Namespace) -> int:
    info = collect()
    if args.json:
        print_json(info)
        return 0
    rows = [
        ("Python", info["python"]),
        ("platform", info["platform"]),
        ("torch", f"{info['torch']} (CUDA {info['torch_cuda'] or 'none'})"),
        ("triton", info["triton"] or f"not importable: {info.get('triton_error')}"),
        ("Triton interpreter", interpreter_text(info)),
        ("CPU threads (torch)", str(info["cpu_threads"])),
    ]
    nv = info["nvml"]
    rows.append(("NVML", f"available, driver {nv['driver']}" if nv["available"] else f"not available: {nv['reason']}"))
    if not info["cuda_devices"]:
        rows.append(("CUDA devices", "no CUDA device"))
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{w}}  {v}")
    for d in info["cuda_devices"]:
        print(
            f"cuda:{d['index']:<{w - 5}}  {d['name']}, sm_{d['compute_capability'].replace('.', '')}, "
            f"{d['sm_count']} SMs, {d['memory_bytes'] / 2**30:.1f} GiB"
        )
    return 0
