"""NVML telemetry sampled in the background during a measurement.

    with Telemetry() as tel:          # current CUDA device
        run_the_kernels()
    tel.summary()   # clocks, power, temperature, utilisation, throttle reasons, energy

A daemon thread reads, every ``interval_s`` seconds, the SM and memory clocks
(MHz), board power (W), GPU temperature (deg C), GPU and memory utilisation (%)
and the clock-event ("throttle") reasons; the energy counter (mJ, Volta and
newer) is read at entry and exit, so ``energy_j`` is the energy the board used
during the block (FLOP per joule = FLOPs / energy_j).  One sample is taken at
entry and one at exit, so even a short block has two.

Without NVML (no NVIDIA driver, a CPU run, ``pynvml`` missing) the block runs
unchanged, ``available`` is False, no samples are kept, and ``note`` says why, once.
The sampler thread is stopped and joined on exit, including when the block
raises or is interrupted (Ctrl-C); a failure while sampling ends sampling and is
reported in ``note``, never raised into the measured code.
"""
from __future__ import annotations

import statistics
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Sample", "Telemetry", "THROTTLE_REASONS", "decode_reasons"]

#: NVML clock-event (throttle) reason bits -> short names (nvmlClocksEventReason*)
THROTTLE_REASONS = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}


def decode_reasons(mask: int | None) -> list[str]:
    """Names of the reason bits set in ``mask`` (unknown bits as hex)."""
    if not mask:
        return []
    names = [name for bit, name in THROTTLE_REASONS.items() if mask & bit]
    rest = mask & ~sum(THROTTLE_REASONS)
    if rest:
        names.append(hex(rest))
    return names


def _not_supported(exc: Exception) -> bool:
    """A query this device/driver/library cannot answer (dropped for good, sampling goes on):
    NVML's NotSupported, FunctionNotFound (a driver older or newer than the binding, e.g. a
    deprecated query) and NoPermission, or a binding without the function."""
    text = f"{type(exc).__name__} {exc}".lower().replace("_", "").replace(" ", "")
    return any(k in text for k in ("notsupported", "functionnotfound", "nopermission")) or \
        isinstance(exc, (AttributeError, NotImplementedError))


@dataclass(frozen=True)
class Sample:
    """One reading; ``t_s`` is seconds since the block started; None = not supported."""

    t_s: float
    sm_clock_mhz: float | None
    mem_clock_mhz: float | None
    power_w: float | None
    temperature_c: float | None
    gpu_util_pct: float | None
    mem_util_pct: float | None
    throttle_mask: int | None


_FIELDS = ("sm_clock_mhz", "mem_clock_mhz", "power_w", "temperature_c", "gpu_util_pct", "mem_util_pct",
           "throttle_mask")


class Telemetry:
    """Context manager sampling NVML in a background thread.

    ``device``: a torch device / CUDA index (default the current CUDA device; a CPU
    device gives an empty result with a note).  ``interval_s``: seconds between
    samples.  ``nvml``: an NVML module to use instead of ``pynvml`` (tests).
    """

    #: seconds to wait for the sampler thread at exit before leaving it behind (a hung NVML call)
    join_timeout_s = 5.0

    def __init__(self, device: Any = None, interval_s: float = 0.05, nvml: Any = None) -> None:
        if not (interval_s > 0):
            raise ValueError(f"Telemetry: interval_s must be > 0, got {interval_s}")
        self.device = device
        self.interval_s = float(interval_s)
        self._nvml_override = nvml
        self.available = False
        self.note: str | None = None
        self.samples: list[Sample] = []
        self.device_name: str | None = None
        self.energy_j: float | None = None
        self.duration_s: float = 0.0
        self._nvml: Any = None
        self._handle: Any = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._t0 = 0.0
        self._energy0: float | None = None
        self._unsupported: set[str] = set()
        self._initialised = False

    # ---------------------------------------------------------------- setup
    def _cuda_index(self) -> int | None:
        """The CUDA index to watch, or None for a CPU run."""
        dev = self.device
        if isinstance(dev, int):
            return dev
        try:
            import torch
        except Exception:  # pragma: no cover
            return None
        if dev is None:
            if self._nvml_override is not None:
                return 0
            if not torch.cuda.is_available():
                return None
            return torch.cuda.current_device()
        d = torch.device(dev)
        if d.type != "cuda":
            return None
        return d.index if d.index is not None else (torch.cuda.current_device() if torch.cuda.is_available() else 0)

    def _handle_for(self, nv: Any, index: int) -> Any:
        """NVML handle for CUDA device ``index`` (by UUID when torch knows it: CUDA and NVML
        orders differ under CUDA_VISIBLE_DEVICES)."""
        if self._nvml_override is None:
            try:
                import torch

                uuid = str(getattr(torch.cuda.get_device_properties(index), "uuid", "") or "")
                if uuid:
                    for cand in (uuid if uuid.startswith("GPU-") else "GPU-" + uuid, uuid):
                        try:
                            return nv.nvmlDeviceGetHandleByUUID(cand)
                        except Exception:
                            continue
            except Exception:
                pass
        return nv.nvmlDeviceGetHandleByIndex(index)

    def __enter__(self) -> "Telemetry":
        self._stop.clear()
        self.samples = []
        self._t0 = time.perf_counter()
        index = self._cuda_index()
        if index is None:
            self.note = "no CUDA device in use (CPU run): NVML telemetry is for NVIDIA GPUs only"
            return self
        try:
            nv = self._nvml_override
            if nv is None:
                import pynvml as nv  # distribution nvidia-ml-py
            nv.nvmlInit()
        except Exception as exc:
            self.note = f"NVML not available: {type(exc).__name__}: {exc}"
            return self
        self._nvml = nv
        self._initialised = True
        try:
            self._handle = self._handle_for(nv, index)
            name = nv.nvmlDeviceGetName(self._handle)
            self.device_name = name.decode() if isinstance(name, bytes) else str(name)
        except Exception as exc:
            self.note = f"NVML has no handle for CUDA device {index}: {type(exc).__name__}: {exc}"
            self._shutdown()
            return self
        self.available = True
        self._energy0 = self._read_energy()
        self._t0 = time.perf_counter()
        try:
            self.samples.append(self._sample())
        except Exception as exc:
            self.note = f"sampling failed: {type(exc).__name__}: {exc}"
            return self
        self._thread = threading.Thread(target=self._loop, name="flopscale-telemetry", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> bool:
        self._stop.set()
        t = self._thread
        stuck = False
        if t is not None:
            # join in slices so a second Ctrl-C during the join still gets through; an NVML call
            # that never returns (a GPU fallen off the bus) must not hang the measured program
            give_up = time.perf_counter() + max(self.join_timeout_s, 10 * self.interval_s)
            while t.is_alive() and time.perf_counter() < give_up:
                t.join(timeout=max(self.interval_s, 0.05) * 4)
            stuck = t.is_alive()
            self._thread = None
        self.duration_s = time.perf_counter() - self._t0
        if stuck:
            self.note = "sampler thread did not stop (an NVML call is not returning); left running as a daemon"
            self._initialised = False  # no nvmlShutdown under a thread still inside NVML
            return False
        if self.available and self._nvml is not None:
            if self.note is None:
                try:
                    with self._lock:
                        self.samples.append(self._sample())
                except Exception as e:
                    self.note = f"final sample failed: {type(e).__name__}: {e}"
            e1 = self._read_energy()
            if e1 is not None and self._energy0 is not None:
                self.energy_j = (e1 - self._energy0) / 1e3  # mJ -> J
        self._shutdown()
        return False

    def _shutdown(self) -> None:
        if self._initialised and self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass
        self._initialised = False

    # ------------------------------------------------------------- sampling
    def _read_energy(self) -> float | None:
        if "energy" in self._unsupported:
            return None
        try:
            return float(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
        except Exception:  # unsupported (pre-Volta) or failing: fall back to power x time
            self._unsupported.add("energy")
            return None

    def _field(self, name: str, read: Any) -> Any:
        """One reading; a query the device does not support is dropped for good, any
        other NVML error propagates (and ends sampling)."""
        if name in self._unsupported:
            return None
        try:
            return read()
        except Exception as exc:
            if _not_supported(exc):
                self._unsupported.add(name)
                return None
            raise

    def _sample(self) -> Sample:
        nv, h = self._nvml, self._handle
        sm = self._field("sm_clock_mhz", lambda: float(nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)))
        mem = self._field("mem_clock_mhz", lambda: float(nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM)))
        pw = self._field("power_w", lambda: nv.nvmlDeviceGetPowerUsage(h) / 1e3)
        temp = self._field("temperature_c",
                           lambda: float(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)))
        util = self._field("util", lambda: nv.nvmlDeviceGetUtilizationRates(h))

        def reasons() -> int:
            fn = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
                nv.nvmlDeviceGetCurrentClocksThrottleReasons
            return int(fn(h))

        mask = self._field("throttle_mask", reasons)
        s = Sample(
            t_s=time.perf_counter() - self._t0,
            sm_clock_mhz=sm,
            mem_clock_mhz=mem,
            power_w=pw,
            temperature_c=temp,
            gpu_util_pct=float(util.gpu) if util is not None else None,
            mem_util_pct=float(util.memory) if util is not None else None,
            throttle_mask=mask,
        )
        if all(getattr(s, f) is None for f in _FIELDS):
            raise RuntimeError("NVML returned no readable field")
        return s

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                s = self._sample()
            except Exception as exc:
                self.note = f"sampling stopped: {type(exc).__name__}: {exc}"
                return
            with self._lock:
                self.samples.append(s)

    # -------------------------------------------------------------- results
    def summary(self) -> dict[str, Any]:
        """Aggregates over the samples; every field is None without NVML.

        Keys: available, note, device_name, samples, duration_s, sm_clock_mhz (median),
        sm_clock_mhz_min, mem_clock_mhz (median), power_w (mean), power_w_max,
        temperature_c_max, gpu_util_pct (mean), throttle_reasons (names seen in any
        sample), energy_j (counter difference, J) and energy_source ("counter",
        "power x time" when the counter is unsupported, or None).
        """
        with self._lock:
            samples = list(self.samples)

        def col(name: str) -> list[float]:
            return [getattr(s, name) for s in samples if getattr(s, name) is not None]

        def agg(name: str, how: Any) -> float | None:
            v = col(name)
            return float(how(v)) if v else None

        mask = 0
        for m in col("throttle_mask"):
            mask |= int(m)
        energy, source = self.energy_j, ("counter" if self.energy_j is not None else None)
        if energy is None and self.available and col("power_w") and self.duration_s > 0:
            energy, source = statistics.fmean(col("power_w")) * self.duration_s, "power x time"
        return {
            "available": self.available,
            "note": self.note,
            "device_name": self.device_name,
            "samples": len(samples),
            "duration_s": self.duration_s,
            "sm_clock_mhz": agg("sm_clock_mhz", statistics.median),
            "sm_clock_mhz_min": agg("sm_clock_mhz", min),
            "mem_clock_mhz": agg("mem_clock_mhz", statistics.median),
            "power_w": agg("power_w", statistics.fmean),
            "power_w_max": agg("power_w", max),
            "temperature_c_max": agg("temperature_c", max),
            "gpu_util_pct": agg("gpu_util_pct", statistics.fmean),
            "throttle_reasons": decode_reasons(mask) if col("throttle_mask") else [],
            "energy_j": energy,
            "energy_source": source,
        }

    def samples_as_dicts(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(s) for s in self.samples]
