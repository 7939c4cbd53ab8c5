"""Devices: datasheet peaks and measured ceilings.

``SPECS`` maps a key (``"h100-sxm"``, ``"a100-80gb"``, ...) to a :class:`DeviceSpec`
with *dense* peak rates per dtype -- never the 2:4 structured-sparsity datasheet
figure, which is twice the dense one -- memory bandwidth, SM count and memory.

Units: ``peak_flops[dtype]`` in FLOP/s (``"int8"`` in integer OP/s), ``mem_bw`` in
bytes/s (1 TB/s = 1e12 B/s), ``memory_bytes`` in bytes (the datasheet "GB" of GPU
memory are GiB: 80 GB = 80 * 2**30).  The dtype names are ``fp64, fp32, tf32, bf16,
fp16, fp8, int8``; a dtype the hardware has no matrix path for is absent from
``peak_flops``.  ``fp64`` is the FP64 *tensor-core* rate where the card has one
(A100, H100, H200, B200), since a float64 matmul runs there; ``fp32`` is the plain
(non-tensor-core) FP32 rate; ``fp16``/``bf16`` are with FP32 accumulation (what
torch matmuls use).

``calibrate()`` measures the ceilings a real program can reach on the present
device -- the best large-matmul rate per dtype through torch and the
device-to-device copy bandwidth (bytes read + bytes written) -- records the clocks
while doing so, and caches the result per device and library versions in
``$FLOPSCALE_CACHE_DIR`` (else ``$XDG_CACHE_HOME/flopscale``, else
``~/.cache/flopscale``).  On a CPU-only machine it measures the CPU the same way
(a float32 torch matmul and a memory copy), so every later number has a ceiling.

A cache file is trusted only when every rate in it is a positive finite number (not a JSON
``true``, not 0, not negative); anything else is ignored with a :class:`CacheWarning` and the
device measured again.  Calibrations sharing a cache directory take turns (an exclusive
``fcntl`` lock on ``calibrate.lock`` there): two measurements at once would each see the other
one's load and cache a rate far below the device's.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import platform
import re
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from ._io import write_text_atomic

__all__ = [
    "DTYPES",
    "DeviceSpec",
    "SPECS",
    "UnknownDeviceError",
    "get_spec",
    "match",
    "current_spec",
    "estimate_spec",
    "dtype_name",
    "Ceilings",
    "calibrate",
    "cache_dir",
    "CacheWarning",
    "ceilings_problem",
]

#: dtype names used as keys of ``peak_flops`` and ``Ceilings.flops``
DTYPES = ("fp64", "fp32", "tf32", "bf16", "fp16", "fp8", "int8")

T = 1e12
GiB = 2**30


@dataclass(frozen=True)
class DeviceSpec:
    """Datasheet (or estimated) capabilities of one accelerator.

    ``peak_flops``: dtype name -> dense peak in FLOP/s (int8: OP/s).
    ``mem_bw``: peak DRAM bandwidth in bytes/s (None when unknown, e.g. CPUs).
    ``estimated``: True when derived from SMs x clock x per-architecture rates
    rather than read from a datasheet.
    """

    key: str
    name: str
    peak_flops: Mapping[str, float]
    mem_bw: float | None
    sm_count: int | None
    memory_bytes: int | None
    estimated: bool = False
    source: str = ""
    arch: str | None = None  # compute capability, e.g. "9.0"

    def peak(self, dtype: str) -> float | None:
        """Dense peak for ``dtype`` (a name from DTYPES) in FLOP/s, or None."""
        return self.peak_flops.get(dtype)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["peak_flops"] = dict(self.peak_flops)
        return d


def _spec(key: str, name: str, peaks: dict[str, float], mem_bw: float, sms: int, mem_gib: float,
          source: str, arch: str) -> DeviceSpec:
    return DeviceSpec(key=key, name=name, peak_flops=dict(peaks), mem_bw=mem_bw, sm_count=sms,
                      memory_bytes=int(mem_gib * GiB), estimated=False, source=source, arch=arch)


_HOPPER_SXM = {"fp64": 67 * T, "fp32": 67 * T, "tf32": 495 * T, "bf16": 989 * T, "fp16": 989 * T,
               "fp8": 1979 * T, "int8": 1979 * T}
_HOPPER_NVL = {"fp64": 60 * T, "fp32": 60 * T, "tf32": 417.5 * T, "bf16": 835.5 * T,
               "fp16": 835.5 * T, "fp8": 1670.5 * T, "int8": 1670.5 * T}
_A100 = {"fp64": 19.5 * T, "fp32": 19.5 * T, "tf32": 156 * T, "bf16": 312 * T, "fp16": 312 * T,
         "int8": 624 * T}
_SPARSE_NOTE = "dense figures (the datasheet's sparse figures halved)"

SPECS: dict[str, DeviceSpec] = {
    s.key: s
    for s in [
        _spec("a100-40gb", "NVIDIA A100 SXM4 40GB", _A100, 1555e9, 108, 40,
              "NVIDIA A100 datasheet (2021); FP64 = FP64 tensor core", "8.0"),
        _spec("a100-80gb", "NVIDIA A100 SXM4 80GB", _A100, 2039e9, 108, 80,
              "NVIDIA A100 datasheet (2021); FP64 = FP64 tensor core", "8.0"),
        _spec("a100-pcie-40gb", "NVIDIA A100 PCIe 40GB", _A100, 1555e9, 108, 40,
              "NVIDIA A100 datasheet (2021); FP64 = FP64 tensor core", "8.0"),
        _spec("a100-pcie-80gb", "NVIDIA A100 PCIe 80GB", _A100, 1935e9, 108, 80,
              "NVIDIA A100 datasheet (2021); FP64 = FP64 tensor core", "8.0"),
        _spec("a10", "NVIDIA A10",
              {"fp64": 0.98 * T, "fp32": 31.2 * T, "tf32": 62.5 * T, "bf16": 125 * T, "fp16": 125 * T,
               "int8": 250 * T}, 600e9, 72, 24,
              f"NVIDIA A10 datasheet; {_SPARSE_NOTE}; FP64 = 1/32 of FP32", "8.6"),
        _spec("h100-sxm", "NVIDIA H100 SXM5 80GB", _HOPPER_SXM, 3.35e12, 132, 80,
              f"NVIDIA H100 datasheet; {_SPARSE_NOTE}; FP64 = FP64 tensor core", "9.0"),
        _spec("h100-pcie", "NVIDIA H100 PCIe 80GB",
              {"fp64": 51 * T, "fp32": 51 * T, "tf32": 378 * T, "bf16": 756 * T, "fp16": 756 * T,
               "fp8": 1513 * T, "int8": 1513 * T}, 2.0e12, 114, 80,
              f"NVIDIA H100 datasheet; {_SPARSE_NOTE}; FP64 = FP64 tensor core", "9.0"),
        _spec("h100-nvl", "NVIDIA H100 NVL 94GB", _HOPPER_NVL, 3.9e12, 132, 94,
              f"NVIDIA H100 NVL datasheet (per GPU); {_SPARSE_NOTE}; FP64 = FP64 tensor core", "9.0"),
        _spec("gh200", "NVIDIA GH200 (96GB HBM3)", _HOPPER_SXM, 4.0e12, 132, 96,
              f"NVIDIA GH200 datasheet (GPU part); {_SPARSE_NOTE}", "9.0"),
        _spec("gh200-144gb", "NVIDIA GH200 (144GB HBM3e)", _HOPPER_SXM, 4.9e12, 132, 144,
              f"NVIDIA GH200 datasheet (GPU part); {_SPARSE_NOTE}", "9.0"),
        _spec("h200", "NVIDIA H200 SXM 141GB", _HOPPER_SXM, 4.8e12, 132, 141,
              f"NVIDIA H200 datasheet; {_SPARSE_NOTE}; FP64 = FP64 tensor core", "9.0"),
        _spec("h200-nvl", "NVIDIA H200 NVL 141GB", _HOPPER_NVL, 4.8e12, 132, 141,
              f"NVIDIA H200 NVL datasheet; {_SPARSE_NOTE}; FP64 = FP64 tensor core", "9.0"),
        _spec("l4", "NVIDIA L4",
              {"fp64": 0.47 * T, "fp32": 30.3 * T, "tf32": 60 * T, "bf16": 121 * T, "fp16": 121 * T,
               "fp8": 242.5 * T, "int8": 242.5 * T}, 300e9, 58, 24,
              f"NVIDIA L4 datasheet; {_SPARSE_NOTE}; FP64 = 1/64 of FP32 (not on the datasheet)", "8.9"),
        _spec("l40", "NVIDIA L40",
              {"fp64": 1.41 * T, "fp32": 90.5 * T, "tf32": 90.5 * T, "bf16": 181 * T, "fp16": 181 * T,
               "fp8": 362 * T, "int8": 362 * T}, 864e9, 142, 48,
              f"NVIDIA L40 datasheet; {_SPARSE_NOTE}; FP64 = 1/64 of FP32 (not on the datasheet)", "8.9"),
        _spec("l40s", "NVIDIA L40S",
              {"fp64": 1.43 * T, "fp32": 91.6 * T, "tf32": 183 * T, "bf16": 362.05 * T, "fp16": 362.05 * T,
               "fp8": 733 * T, "int8": 733 * T}, 864e9, 142, 48,
              f"NVIDIA L40S datasheet; {_SPARSE_NOTE}; FP64 = 1/64 of FP32 (not on the datasheet)", "8.9"),
        _spec("rtx-4090", "NVIDIA GeForce RTX 4090",
              {"fp64": 1.29 * T, "fp32": 82.6 * T, "tf32": 82.6 * T, "bf16": 165.2 * T, "fp16": 165.2 * T,
               "fp8": 330.3 * T, "int8": 660.6 * T}, 1008e9, 128, 24,
              "NVIDIA Ada GPU architecture whitepaper v2.1 (dense, FP32 accumulate); FP64 = 1/64 of FP32",
              "8.9"),
        _spec("b200", "NVIDIA B200 180GB",
              {"fp64": 37 * T, "fp32": 75 * T, "tf32": 1125 * T, "bf16": 2250 * T, "fp16": 2250 * T,
               "fp8": 4500 * T, "int8": 4500 * T}, 8.0e12, 148, 180,
              f"NVIDIA HGX B200 datasheet (8-GPU totals / 8); {_SPARSE_NOTE}", "10.0"),
        _spec("v100-sxm2-16gb", "Tesla V100 SXM2 16GB",
              {"fp64": 7.8 * T, "fp32": 15.7 * T, "fp16": 125 * T}, 900e9, 80, 16,
              "NVIDIA V100 datasheet (fp16 = tensor core)", "7.0"),
        _spec("v100-sxm2-32gb", "Tesla V100 SXM2 32GB",
              {"fp64": 7.8 * T, "fp32": 15.7 * T, "fp16": 125 * T}, 900e9, 80, 32,
              "NVIDIA V100 datasheet (fp16 = tensor core)", "7.0"),
    ]
}


class UnknownDeviceError(KeyError):
    """A device key that is not in :data:`SPECS`."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown device"


def get_spec(key: str) -> DeviceSpec:
    """The :class:`DeviceSpec` for ``key`` (case-insensitive; a device name works too)."""
    k = str(key).strip().lower()
    if k in SPECS:
        return SPECS[k]
    found = match(key)
    if found is not None:
        return found
    raise UnknownDeviceError(f"unknown device {key!r}; known: {', '.join(sorted(SPECS))}")


# (pattern on the lower-cased device name, key); the first hit wins, so the more
# specific patterns come first ("gh200" before "h200", "a100 ... 80gb pcie" before "a100").
_PATTERNS: list[tuple[str, str]] = [
    (r"\bgh200\b.*\b(144g|hbm3e)", "gh200-144gb"),
    (r"\bgh200\b", "gh200"),
    (r"\bh200\b.*\bnvl\b", "h200-nvl"),
    (r"\bh200\b", "h200"),
    (r"\bh100\b.*\bnvl\b", "h100-nvl"),
    (r"\bh100\b.*\bpcie\b", "h100-pcie"),
    (r"\bh100\b", "h100-sxm"),
    (r"\ba100\b.*\bpcie\b.*\b80\s*gb\b|\ba100\b.*\b80\s*gb\b.*\bpcie\b", "a100-pcie-80gb"),
    (r"\ba100\b.*\bpcie\b", "a100-pcie-40gb"),
    (r"\ba100\b.*\b80\s*gb\b", "a100-80gb"),
    (r"\ba100\b", "a100-40gb"),
    (r"\ba10\b", "a10"),
    (r"\bl40s\b", "l40s"),
    (r"\bl40\b", "l40"),
    (r"\bl4\b", "l4"),
    (r"\brtx 4090\b", "rtx-4090"),
    (r"\bb200\b", "b200"),
    (r"\bv100\b.*\b32\s*gb\b", "v100-sxm2-32gb"),
    (r"\bv100\b.*\bsxm2\b", "v100-sxm2-16gb"),
]


def _normalise_name(device_name: str) -> str:
    name = re.sub(r"[-_/]", " ", str(device_name).lower())
    name = re.sub(r"(\d+)\s*gb\b", r"\1gb", name)
    return re.sub(r"\s+", " ", name).strip()


def match(device_name: str) -> DeviceSpec | None:
    """The spec whose card matches ``device_name`` (as torch/NVML report it), or None.

    ``"NVIDIA H100 80GB HBM3"`` -> ``h100-sxm``; ``"NVIDIA H100 PCIe"`` -> ``h100-pcie``;
    ``"NVIDIA H200"`` -> ``h200``; ``"NVIDIA A100-SXM4-80GB"`` -> ``a100-80gb``.
    Unknown names give None -- never some other card's numbers.
    """
    name = _normalise_name(device_name)
    for pattern, key in _PATTERNS:
        if re.search(pattern, name):
            return SPECS[key]
    return None


# Dense matrix FLOP per clock per SM by compute capability (major, minor), from the
# datacenter/pro part of each architecture (A100, A40, L40S, H100, B200).  GeForce
# cards of the same architecture run FP16/BF16 with FP32 accumulation at half rate.
_PER_SM_CLOCK: dict[tuple[int, int], dict[str, int]] = {
    (7, 0): {"fp64": 64, "fp32": 128, "fp16": 1024},
    (7, 5): {"fp64": 4, "fp32": 128, "fp16": 1024, "int8": 2048},
    (8, 0): {"fp64": 128, "fp32": 128, "tf32": 1024, "bf16": 2048, "fp16": 2048, "int8": 4096},
    (8, 6): {"fp64": 4, "fp32": 256, "tf32": 512, "bf16": 1024, "fp16": 1024, "int8": 2048},
    (8, 7): {"fp64": 4, "fp32": 256, "tf32": 512, "bf16": 1024, "fp16": 1024, "int8": 2048},
    (8, 9): {"fp64": 4, "fp32": 256, "tf32": 512, "bf16": 1024, "fp16": 1024, "fp8": 2048, "int8": 2048},
    (9, 0): {"fp64": 256, "fp32": 256, "tf32": 2048, "bf16": 4096, "fp16": 4096, "fp8": 8192, "int8": 8192},
    (10, 0): {"fp64": 128, "fp32": 256, "tf32": 4096, "bf16": 8192, "fp16": 8192, "fp8": 16384,
              "int8": 16384},
    (12, 0): {"fp64": 4, "fp32": 256, "tf32": 512, "bf16": 1024, "fp16": 1024, "fp8": 2048, "int8": 2048},
}


def estimate_spec(name: str, major: int, minor: int, sm_count: int, clock_hz: float | None,
                  memory_bytes: int | None = None, mem_clock_hz: float | None = None,
                  bus_width_bits: int | None = None) -> DeviceSpec:
    """An estimated spec for a GPU that is not in :data:`SPECS`.

    Peak = SMs x boost clock x dense FLOP per clock per SM of the architecture;
    bandwidth = 2 (double data rate) x memory clock x bus width / 8.  Labelled
    ``estimated=True``.  An architecture without a known per-clock rate gets no
    peaks at all (and says so in ``source``).
    """
    rates = _PER_SM_CLOCK.get((major, minor)) or _PER_SM_CLOCK.get((major, 0))
    peaks: dict[str, float] = {}
    notes = []
    if rates is None:
        notes.append(f"no per-clock rates known for compute capability {major}.{minor}: no peaks")
    elif not clock_hz:
        notes.append("SM clock unknown: no peaks")
    else:
        peaks = {k: float(v) * sm_count * clock_hz for k, v in rates.items()}
        notes.append(f"{sm_count} SMs x {clock_hz / 1e9:.3f} GHz x dense FLOP/clock/SM of sm_{major}{minor}")
    bw = None
    if mem_clock_hz and bus_width_bits:
        bw = 2.0 * mem_clock_hz * bus_width_bits / 8.0
        notes.append("bandwidth = 2 x memory clock x bus width")
    key = "estimated-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return DeviceSpec(key=key, name=name, peak_flops=peaks, mem_bw=bw, sm_count=sm_count,
                      memory_bytes=memory_bytes, estimated=True,
                      source="ESTIMATE, not a datasheet: " + "; ".join(notes), arch=f"{major}.{minor}")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def _ram_bytes() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def _torch_device(device: Any = None) -> Any:
    import torch

    if device is None:
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def _nvml_max_sm_clock_hz(index: int) -> float | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            h = pynvml.nvmlDeviceGetHandleByIndex(index)
            return float(pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM)) * 1e6
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return None


def current_spec(device: Any = None) -> DeviceSpec:
    """The spec of this machine's device (default: the current CUDA device, else the CPU).

    A known GPU gets its datasheet spec; an unknown NVIDIA GPU an estimate
    (``estimated=True``); the CPU a spec without datasheet peaks (use
    :func:`calibrate` for its measured ceilings).
    """
    import torch

    dev = _torch_device(device)
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        spec = match(props.name)
        if spec is not None:
            return spec
        clock = getattr(props, "clock_rate", 0) or 0  # kHz
        clock_hz = clock * 1e3 if clock else _nvml_max_sm_clock_hz(dev.index or 0)
        mclk = getattr(props, "memory_clock_rate", 0) or 0  # kHz
        return estimate_spec(props.name, props.major, props.minor, props.multi_processor_count, clock_hz,
                             int(props.total_memory), mclk * 1e3 if mclk else None,
                             getattr(props, "memory_bus_width", None))
    return DeviceSpec(key="cpu", name=_cpu_name(), peak_flops={}, mem_bw=None, sm_count=None,
                      memory_bytes=_ram_bytes(), estimated=False,
                      source="CPU: no datasheet peaks; measured ceilings come from profiler.calibrate()")


def dtype_name(dtype: Any) -> str:
    """The short name of a torch dtype: float32 -> 'fp32', bfloat16 -> 'bf16', float8_* -> 'fp8'."""
    s = str(dtype).replace("torch.", "")
    table = {"float64": "fp64", "float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "int8": "int8",
             "uint8": "uint8", "int32": "int32", "int64": "int64", "bool": "bool", "complex64": "c64",
             "complex128": "c128"}
    if s in table:
        return table[s]
    if s.startswith("float8"):
        return "fp8"
    return s


# --------------------------------------------------------------------- ceilings


@dataclass
class Ceilings:
    """Rates a real program reaches on a device.

    ``flops``: dtype name -> best measured matmul rate in FLOP/s (int8: OP/s).
    ``bandwidth``: device-to-device copy rate in bytes/s, counting bytes read plus
    bytes written.  ``clocks``: SM/memory clock (MHz), power (W) and throttle
    reasons seen while measuring (empty without NVML).  ``source`` is
    ``"measured"`` or ``"datasheet"`` (from :meth:`from_spec`).
    """

    flops: dict[str, float]
    bandwidth: float | None
    device_name: str
    clocks: dict[str, Any] = field(default_factory=dict)
    measured_at: str = ""
    source: str = "measured"
    quick: bool = False
    versions: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def peak(self, dtype: str) -> float | None:
        return self.flops.get(dtype)

    def ridge(self, dtype: str) -> float | None:
        """Ridge point of the roofline for ``dtype`` in FLOP/byte."""
        p = self.flops.get(dtype)
        if not p or not self.bandwidth:
            return None
        return p / self.bandwidth

    @property
    def label(self) -> str:
        """Which peak this is, for printing beside every MFU."""
        if self.source == "datasheet":
            return f"datasheet dense peak ({self.device_name})"
        when = self.measured_at[:10] if self.measured_at else "unknown date"
        q = ", quick" if self.quick else ""
        return f"measured ceiling ({self.device_name}, {when}{q})"

    @classmethod
    def from_spec(cls, spec: DeviceSpec) -> "Ceilings":
        """Datasheet peaks as ceilings (``source="datasheet"``)."""
        return cls(flops=dict(spec.peak_flops), bandwidth=spec.mem_bw, device_name=spec.name,
                   source="datasheet", details={"spec_key": spec.key, "estimated": spec.estimated,
                                                 "spec_source": spec.source})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Ceilings":
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})


def cache_dir() -> Path:
    """Where ceilings are cached: $FLOPSCALE_CACHE_DIR, $XDG_CACHE_HOME/flopscale or ~/.cache/flopscale."""
    env = os.environ.get("FLOPSCALE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "flopscale"
    return Path.home() / ".cache" / "flopscale"


def _versions(dev: Any) -> dict[str, Any]:
    import torch

    v: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda}
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        v["capability"] = f"{props.major}.{props.minor}"
        try:
            import pynvml

            pynvml.nvmlInit()
            try:
                drv = pynvml.nvmlSystemGetDriverVersion()
                v["driver"] = drv.decode() if isinstance(drv, bytes) else drv
            finally:
                pynvml.nvmlShutdown()
        except Exception:
            v["driver"] = None
    else:
        v["threads"] = torch.get_num_threads()
    return v


def _device_name(dev: Any) -> str:
    import torch

    if dev.type == "cuda":
        return torch.cuda.get_device_properties(dev).name
    return _cpu_name()


def _cache_file(name: str, versions: Mapping[str, Any]) -> Path:
    parts = [name] + [f"{k}{v}" for k, v in sorted(versions.items())]
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", "_".join(str(p) for p in parts)).strip("-")
    return cache_dir() / f"ceilings-{slug}.json"


def _write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2), make_parents=True)


class CacheWarning(UserWarning):
    """A cache file was unreadable or held impossible values: it was ignored."""


#: seconds a calibration waits for another one (same cache directory) to finish
CALIBRATION_LOCK_WAIT_S = 600.0
LOCK_NAME = "calibrate.lock"


def _is_rate(x: Any) -> bool:
    """A positive, finite number -- and not a bool (JSON ``true`` is not 1 FLOP/s)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def ceilings_problem(d: Any) -> str | None:
    """Why the dict ``d`` (a cached :class:`Ceilings`) cannot be trusted, or None when it can."""
    if not isinstance(d, dict):
        return f"not a JSON object but {type(d).__name__}"
    flops = d.get("flops")
    if not isinstance(flops, dict) or not flops:
        return "no table of rates under 'flops'"
    for k, v in flops.items():
        if not _is_rate(v):
            return f"flops[{k!r}] = {v!r} is not a positive finite number of FLOP/s"
    bw = d.get("bandwidth")
    if bw is not None and not _is_rate(bw):
        return f"bandwidth = {bw!r} is not a positive finite number of bytes/s"
    for key, typ in (("device_name", str), ("measured_at", str), ("source", str), ("quick", bool),
                     ("clocks", dict), ("versions", dict), ("details", dict)):
        if key in d and not isinstance(d[key], typ):
            return f"{key} = {d[key]!r} is not a {typ.__name__}"
    if not isinstance(d.get("device_name"), str):
        return "no device_name"
    return None


def _read_cache(path: Path, warn: bool = True) -> Ceilings | None:
    """The cached ceilings at ``path``; None (with a CacheWarning) when absent or not usable."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeError) as exc:
        problem = f"unreadable ({exc})"
    else:
        try:
            d = json.loads(text)
        except ValueError as exc:
            problem = f"not JSON ({exc})"
        else:
            problem = ceilings_problem(d)
            if problem is None:
                return Ceilings.from_dict(d)
    if warn:
        warnings.warn(f"ignoring the ceilings cache {path}: {problem}; measuring again", CacheWarning,
                      stacklevel=3)
    return None


@contextlib.contextmanager
def _calibration_lock(directory: Path, wait_s: float) -> Iterator[str]:
    """Hold the exclusive calibration lock of ``directory`` while the block runs.

    Yields ``"held"``; ``"busy"`` when another calibration kept it for ``wait_s`` seconds (the
    block then runs unlocked and must not cache what it measures); ``"none"`` when no lock file
    can be made there (a read-only cache directory: nothing will be cached either)."""
    import fcntl

    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        yield "none"
        return
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield "busy"
                    return
                time.sleep(0.05)
            except OSError:  # a file system without flock
                yield "none"
                return
        yield "held"
    finally:
        os.close(fd)  # releases the lock


def calibrate(device: Any = None, recalibrate: bool = False, quick: bool = False) -> Ceilings:
    """Measured ceilings of ``device`` (default: current CUDA device, else the CPU).

    Cached per device name and library versions (torch, CUDA, driver; CPU thread
    count on the CPU); ``recalibrate=True`` measures again.  ``quick=True`` uses
    fewer sizes and shorter budgets (and accepts a cached full measurement); a
    cached quick result is not returned for ``quick=False``.  A cache file with impossible
    values is ignored (``CacheWarning``) and the device measured again.  Concurrent
    calibrations sharing the cache directory run one after the other; one that waits finds
    the other's result in the cache.  A measurement taken while another calibration held the
    lock for longer than ``CALIBRATION_LOCK_WAIT_S`` is returned but not cached.

    GPU: best rate over large square matmuls per dtype (fp64, fp32 with TF32 off,
    tf32, bf16, fp16, fp8 via ``torch._scaled_mm`` with fast accumulation on sm_89+, int8
    via ``torch._int_mm``), and ``dst.copy_(src)`` on buffers far larger than L2
    (bytes read + written).  CPU: float32 matmul (and float64 in full mode) and a
    64 MiB memory copy, each from its fastest repetition (other processes only ever slow a
    CPU run down); quick mode takes about a second.
    """
    dev = _torch_device(device)
    name = _device_name(dev)
    versions = _versions(dev)
    path = _cache_file(name, versions)

    def usable(c: Ceilings | None) -> bool:
        return c is not None and (quick or not c.quick)

    if not recalibrate:
        cached = _read_cache(path)
        if usable(cached):
            return cached
    with _calibration_lock(path.parent, CALIBRATION_LOCK_WAIT_S) as lock:
        if lock == "held" and not recalibrate:  # another process may have measured meanwhile
            cached = _read_cache(path, warn=False)
            if usable(cached):
                return cached
        if dev.type == "cuda":
            ceilings = _measure_cuda(dev, name, quick)
        else:
            ceilings = _measure_cpu(name, quick)
        ceilings.versions = versions
        bad = {k: v for k, v in ceilings.flops.items() if not _is_rate(v)}
        if bad:  # never a rate of 0, inf or NaN: an MFU against it would be meaningless
            ceilings.flops = {k: v for k, v in ceilings.flops.items() if k not in bad}
            ceilings.details["discarded"] = {k: repr(v) for k, v in bad.items()}
        if ceilings.bandwidth is not None and not _is_rate(ceilings.bandwidth):
            ceilings.details.setdefault("discarded", {})["bandwidth"] = repr(ceilings.bandwidth)
            ceilings.bandwidth = None
        problem = ceilings_problem(ceilings.to_dict())
        if lock == "busy":
            ceilings.details["cache_error"] = (
                f"not cached: another calibration held {path.parent / LOCK_NAME} for more than "
                f"{CALIBRATION_LOCK_WAIT_S:g} s, so this measurement may have shared the device")
            warnings.warn(ceilings.details["cache_error"], CacheWarning, stacklevel=2)
        elif problem is not None:
            ceilings.details["cache_error"] = f"not cached: {problem}"
        else:
            try:
                _write_json_atomic(path, ceilings.to_dict())
                ceilings.details["cache_file"] = str(path)
            except OSError as exc:
                ceilings.details["cache_error"] = str(exc)
    return ceilings


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _measure_cpu(name: str, quick: bool) -> Ceilings:
    import torch

    from .timing import bench

    details: dict[str, Any] = {"method": "torch.mm best over sizes; tensor.copy_ (read + write)"}
    flops: dict[str, float] = {}
    plans = {"fp32": (torch.float32, [512] if quick else [512, 1024])}
    if not quick:
        plans["fp64"] = (torch.float64, [512])
    budget = 0.25 if quick else 0.8
    for dname, (dt, sizes) in plans.items():
        best = 0.0
        for n in sizes:
            a = torch.randn(n, n, dtype=dt)
            b = torch.randn(n, n, dtype=dt)
            out = torch.empty(n, n, dtype=dt)
            t = bench(lambda: torch.mm(a, b, out=out), warmup=2, time_budget_s=budget, flush_l2=False,
                      device="cpu", min_rep=3)
            rate = 2.0 * n**3 / t.min_s  # best repetition: a shared CPU only ever slows a run down
            details[f"{dname}_mm_{n}"] = rate
            best = max(best, rate)
        flops[dname] = best
    nbytes = 64 * 2**20
    src = torch.ones(nbytes // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    t = bench(lambda: dst.copy_(src), warmup=2, time_budget_s=budget, flush_l2=False, device="cpu", min_rep=3)
    bw = 2.0 * nbytes / t.min_s
    details["copy_bytes"] = nbytes
    details["statistic"] = "fastest repetition (CPU)"
    return Ceilings(flops=flops, bandwidth=bw, device_name=name, clocks={}, measured_at=_now(),
                    source="measured", quick=quick, details=details)


def _measure_cuda(dev: Any, name: str, quick: bool) -> Ceilings:
    import torch

    from .telemetry import Telemetry
    from .timing import bench

    props = torch.cuda.get_device_properties(dev)
    cc = (props.major, props.minor)
    details: dict[str, Any] = {"method": "torch matmul best over sizes (median of repetitions); "
                                         "dst.copy_(src) counting read + write"}
    flops: dict[str, float] = {}
    sizes = [4096] if quick else [4096, 8192]
    budget = 0.2 if quick else 0.5
    free = torch.cuda.mem_get_info(dev)[0]

    def run(dname: str, make: Any, n: int) -> None:
        prev = torch.get_float32_matmul_precision()
        try:
            if dname == "fp32":
                torch.set_float32_matmul_precision("highest")  # no TF32
            elif dname == "tf32":
                torch.set_float32_matmul_precision("high")  # TF32 allowed
            fn = make(n)
            t = bench(fn, warmup=3, time_budget_s=budget, flush_l2=False, device=dev)
            rate = 2.0 * n**3 / t.median_s
            details[f"{dname}_mm_{n}"] = rate
            flops[dname] = max(flops.get(dname, 0.0), rate)
        except Exception as exc:  # a dtype this card/library cannot run
            details[f"{dname}_error"] = f"{type(exc).__name__}: {exc}"[:300]
        finally:
            torch.set_float32_matmul_precision(prev)
            torch.cuda.empty_cache()

    def mm(dt: Any) -> Any:
        def make(n: int) -> Any:
            a = torch.randn(n, n, device=dev).to(dt)
            b = torch.randn(n, n, device=dev).to(dt)
            out = torch.empty(n, n, device=dev, dtype=dt)
            return lambda: torch.mm(a, b, out=out)
        return make

    def fp8(n: int) -> Any:
        a = torch.randn(n, n, device=dev).to(torch.float8_e4m3fn)
        b = torch.randn(n, n, device=dev).to(torch.float8_e4m3fn).t()  # column-major, as required
        one = torch.ones((), device=dev)
        # fast accumulation: the rate Triton's fp8 dot (its default on sm_90) and tuned fp8 GEMMs reach
        return lambda: torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16, use_fast_accum=True)

    def int8(n: int) -> Any:
        a = torch.randint(-8, 8, (n, n), device=dev, dtype=torch.int8)
        b = torch.randint(-8, 8, (n, n), device=dev, dtype=torch.int8)
        return lambda: torch._int_mm(a, b)

    plan: list[tuple[str, Any, list[int]]] = [
        ("bf16", mm(torch.bfloat16), sizes),
        ("fp16", mm(torch.float16), sizes),
        ("tf32", mm(torch.float32), sizes),
        ("fp32", mm(torch.float32), [4096] if quick else [4096, 8192]),
        ("fp64", mm(torch.float64), [2048] if quick else [4096]),
    ]
    if cc >= (8, 9) and hasattr(torch, "float8_e4m3fn"):
        plan.append(("fp8", fp8, sizes))
    if cc >= (8, 0):
        plan.append(("int8", int8, sizes))

    with Telemetry(device=dev, interval_s=0.05) as tel:
        for dname, make, ns in plan:
            for n in ns:
                if 3 * n * n * 8 > 0.5 * free:
                    continue
                run(dname, make, n)
        # copy bandwidth on buffers far larger than L2
        nbytes = min(2 * 2**30 if not quick else 512 * 2**20, int(free * 0.3) // 2)
        src = torch.empty(nbytes // 4, dtype=torch.float32, device=dev).fill_(1.0)
        dst = torch.empty_like(src)
        t = bench(lambda: dst.copy_(src), warmup=3, time_budget_s=budget, flush_l2=False, device=dev)
        bw = 2.0 * nbytes / t.median_s
        details["copy_bytes"] = nbytes
        del src, dst
        torch.cuda.empty_cache()
    s = tel.summary()
    clocks = {k: s.get(k) for k in ("sm_clock_mhz", "sm_clock_mhz_min", "mem_clock_mhz", "power_w",
                                      "power_w_max", "temperature_c_max", "throttle_reasons")}
    if not s.get("available"):
        clocks = {"note": s.get("note")}
    return Ceilings(flops=flops, bandwidth=bw, device_name=name, clocks=clocks, measured_at=_now(),
                    source="measured", quick=quick, details=details)
