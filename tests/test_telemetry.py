"""NVML telemetry: absent on CPU handled; the sampler with a fake NVML; clean stops."""
from __future__ import annotations

import threading
import time

import pytest
import torch

from flopscale.profiler.telemetry import Telemetry, decode_reasons


class FakeNVML:
    """Just enough of pynvml: clocks, power, temperature, utilisation, reasons, energy."""

    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2
    NVML_TEMPERATURE_GPU = 0

    class NVMLError(Exception):
        pass

    def __init__(self, fail_after=None, no_energy=False, fail_init=False):
        self.calls = 0
        self.fail_after = fail_after
        self.no_energy = no_energy
        self.fail_init = fail_init
        self.energy_mj = 1_000_000.0
        self.shutdowns = 0

    def nvmlInit(self):
        if self.fail_init:
            raise self.NVMLError("Driver Not Loaded")

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("handle", i)

    def nvmlDeviceGetName(self, h):
        return b"Fake H200"

    def _tick(self):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise self.NVMLError("GPU is lost")

    def nvmlDeviceGetClockInfo(self, h, which):
        self._tick()
        return 1980 if which == self.NVML_CLOCK_SM else 2619

    def nvmlDeviceGetPowerUsage(self, h):
        self._tick()
        return 700_000  # mW

    def nvmlDeviceGetTemperature(self, h, which):
        self._tick()
        return 61

    def nvmlDeviceGetUtilizationRates(self, h):
        self._tick()

        class U:
            gpu = 100
            memory = 40

        return U()

    def nvmlDeviceGetCurrentClocksEventReasons(self, h):
        self._tick()
        return 0x4  # sw_power_cap

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        if self.no_energy:
            raise self.NVMLError("Not Supported")
        self.energy_mj += 35_000.0  # +35 J per read
        return self.energy_mj


def _sampler_threads():
    return [t for t in threading.enumerate() if t.name == "flopscale-telemetry"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU path")
def test_absent_on_cpu_gives_empty_fields_and_one_note():
    with Telemetry() as tel:
        sum(range(1000))
    s = tel.summary()
    assert s["available"] is False and tel.samples == []
    assert isinstance(s["note"], str) and s["note"]
    for k in ("sm_clock_mhz", "power_w", "temperature_c_max", "energy_j", "gpu_util_pct"):
        assert s[k] is None
    assert s["throttle_reasons"] == []


def test_explicit_cpu_device_is_a_cpu_run():
    with Telemetry(device="cpu") as tel:
        pass
    assert not tel.available and "CPU" in tel.note


def test_nvml_that_fails_to_initialise():
    with Telemetry(device=0, nvml=FakeNVML(fail_init=True)) as tel:
        pass
    assert not tel.available and "Driver Not Loaded" in tel.note and tel.samples == []


def test_sampler_collects_and_summarises():
    nv = FakeNVML()
    with Telemetry(device=0, interval_s=0.01, nvml=nv) as tel:
        time.sleep(0.12)
    s = tel.summary()
    assert s["available"] and s["note"] is None and s["device_name"] == "Fake H200"
    assert s["samples"] >= 4  # entry + several periodic + exit
    assert s["sm_clock_mhz"] == 1980 and s["mem_clock_mhz"] == 2619
    assert s["power_w"] == pytest.approx(700.0) and s["temperature_c_max"] == 61
    assert s["gpu_util_pct"] == 100
    assert s["throttle_reasons"] == ["sw_power_cap"]
    assert s["energy_j"] == pytest.approx(35.0) and s["energy_source"] == "counter"
    assert s["duration_s"] >= 0.12
    assert _sampler_threads() == [] and nv.shutdowns == 1


def test_energy_falls_back_to_power_times_time():
    with Telemetry(device=0, interval_s=0.01, nvml=FakeNVML(no_energy=True)) as tel:
        time.sleep(0.05)
    s = tel.summary()
    assert s["energy_source"] == "power x time"
    assert s["energy_j"] == pytest.approx(700.0 * s["duration_s"])


def test_stops_cleanly_when_the_block_raises():
    nv = FakeNVML()
    with pytest.raises(ValueError, match="inside"):
        with Telemetry(device=0, interval_s=0.005, nvml=nv):
            time.sleep(0.02)
            raise ValueError("inside")
    assert _sampler_threads() == [] and nv.shutdowns == 1


def test_stops_cleanly_on_ctrl_c():
    nv = FakeNVML()
    with pytest.raises(KeyboardInterrupt):
        with Telemetry(device=0, interval_s=0.005, nvml=nv):
            time.sleep(0.02)
            raise KeyboardInterrupt
    assert _sampler_threads() == [] and nv.shutdowns == 1


def test_a_failing_sampler_ends_sampling_without_breaking_the_block():
    nv = FakeNVML(fail_after=12)  # 6 reads per sample: two samples, then the GPU is "lost"
    with Telemetry(device=0, interval_s=0.005, nvml=nv) as tel:
        time.sleep(0.1)
    assert tel.note and "GPU is lost" in tel.note
    assert len(tel.samples) == 2
    assert _sampler_threads() == []


def test_a_query_missing_from_the_driver_is_dropped_and_sampling_goes_on():
    class NoTemperature(FakeNVML):
        def nvmlDeviceGetTemperature(self, h, which):  # e.g. a deprecated query a newer driver lacks
            raise self.NVMLError("Function Not Found")

    with Telemetry(device=0, interval_s=0.01, nvml=NoTemperature()) as tel:
        time.sleep(0.06)
    s = tel.summary()
    assert s["available"] and s["note"] is None and s["samples"] >= 3
    assert s["temperature_c_max"] is None and s["sm_clock_mhz"] == 1980 and s["power_w"] == pytest.approx(700.0)


def test_a_hung_nvml_call_does_not_hang_the_exit():
    release = threading.Event()

    class Hangs(FakeNVML):
        def nvmlDeviceGetPowerUsage(self, h):
            if self.calls > 6:  # after the entry sample: the next read never returns (until released)
                release.wait(5)
            return super().nvmlDeviceGetPowerUsage(h)

    nv = Hangs()
    tel = Telemetry(device=0, interval_s=0.01, nvml=nv)
    tel.join_timeout_s = 0.2
    t0 = time.perf_counter()
    with tel:
        time.sleep(0.05)
    assert time.perf_counter() - t0 < 1.5
    assert "did not stop" in tel.note and nv.shutdowns == 0
    release.set()


def test_decode_reasons():
    assert decode_reasons(0) == []
    assert decode_reasons(0x1 | 0x40) == ["gpu_idle", "hw_thermal_slowdown"]
    assert decode_reasons(0x10000) == ["0x10000"]


@pytest.mark.gpu
def test_real_nvml_on_a_gpu():
    with Telemetry(interval_s=0.01) as tel:
        a = torch.randn(4096, 4096, device="cuda")
        for _ in range(20):
            a = a @ a / 64
        torch.cuda.synchronize()
    s = tel.summary()
    assert s["available"], s["note"]
    assert s["sm_clock_mhz"] > 100 and s["power_w"] > 1
