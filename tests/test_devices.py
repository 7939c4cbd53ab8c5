"""Device specs (dense datasheet peaks) and measured ceilings."""
from __future__ import annotations

import json

import pytest
import torch

from flopscale.profiler import devices
from flopscale.profiler.devices import DTYPES, SPECS, Ceilings, calibrate, estimate_spec, get_spec, match

T = 1e12

# Datasheet figures as printed WITH 2:4 structured sparsity ("* with sparsity" columns):
# NVIDIA H100 Tensor Core GPU datasheet (SXM5 / PCIe), NVIDIA H200 datasheet, NVIDIA A100
# datasheet, NVIDIA L4 and L40S datasheets.  The dense peak is exactly half, and the spec
# table must hold the dense number, never these.
SPARSE_DATASHEET = {
    "h100-sxm": {"bf16": 1979 * T, "fp16": 1979 * T, "fp8": 3958 * T, "tf32": 989 * T, "int8": 3958 * T},
    "h100-pcie": {"bf16": 1513 * T, "fp8": 3026 * T, "tf32": 756 * T},
    "h200": {"bf16": 1979 * T, "fp8": 3958 * T, "tf32": 989 * T},
    "a100-80gb": {"bf16": 624 * T, "fp16": 624 * T, "tf32": 312 * T, "int8": 1248 * T},
    "a100-40gb": {"bf16": 624 * T, "tf32": 312 * T},
    "l4": {"bf16": 242 * T, "fp8": 485 * T, "tf32": 120 * T},
    "l40s": {"bf16": 733 * T, "fp8": 1466 * T, "tf32": 366 * T},
}


def test_known_dense_peaks_and_bandwidths():
    # DESIGN reference numbers: H100/H200 SXM bf16/fp16 989, fp8 1979, tf32 495, fp32 67 TFLOP/s;
    # HBM H100 3.35 TB/s, H200 4.8 TB/s; A100 bf16 312.
    for key in ("h100-sxm", "h200"):
        p = SPECS[key].peak_flops
        assert p["bf16"] == pytest.approx(989 * T)
        assert p["fp16"] == pytest.approx(989 * T)
        assert p["fp8"] == pytest.approx(1979 * T)
        assert p["tf32"] == pytest.approx(495 * T)
        assert p["fp32"] == pytest.approx(67 * T)
    assert SPECS["h100-sxm"].mem_bw == pytest.approx(3.35e12)
    assert SPECS["h200"].mem_bw == pytest.approx(4.8e12)
    assert SPECS["a100-80gb"].peak_flops["bf16"] == pytest.approx(312 * T)
    assert SPECS["a100-40gb"].peak_flops["bf16"] == pytest.approx(312 * T)
    assert SPECS["h100-sxm"].sm_count == 132 and SPECS["a100-80gb"].sm_count == 108


@pytest.mark.parametrize("key", sorted(SPARSE_DATASHEET))
def test_spec_table_holds_dense_not_sparse_peaks(key):
    spec = SPECS[key]
    for dtype, sparse in SPARSE_DATASHEET[key].items():
        assert spec.peak_flops[dtype] == pytest.approx(sparse / 2, rel=0.015), (key, dtype)


def test_every_spec_is_well_formed_and_dense():
    required = {"a100-40gb", "a100-80gb", "h100-sxm", "h100-pcie", "h200", "l4", "l40s", "rtx-4090", "b200"}
    assert required <= set(SPECS)
    for key, s in SPECS.items():
        assert s.key == key and not s.estimated and s.source
        assert set(s.peak_flops) <= set(DTYPES)
        assert all(v > 0 for v in s.peak_flops.values())
        assert s.mem_bw > 1e11 and s.sm_count > 0 and s.memory_bytes > 2**30
        # tensor-core bf16/fp16 is never below plain fp32 and fp8 never exceeds 2x bf16:
        # a sparse figure slipped in for one dtype would break these ratios
        if "bf16" in s.peak_flops:
            assert s.peak_flops["bf16"] >= s.peak_flops["fp32"]
        if "fp8" in s.peak_flops:
            assert s.peak_flops["fp8"] <= 2.03 * s.peak_flops["bf16"]  # datasheet rounding (L40S)
        if "tf32" in s.peak_flops and "bf16" in s.peak_flops:
            assert s.peak_flops["tf32"] <= 0.51 * s.peak_flops["bf16"]


@pytest.mark.parametrize("name,key", [
    ("NVIDIA H100 80GB HBM3", "h100-sxm"),
    ("NVIDIA H100 PCIe", "h100-pcie"),
    ("NVIDIA H100 NVL", "h100-nvl"),
    ("NVIDIA H200", "h200"),
    ("NVIDIA H200 NVL", "h200-nvl"),
    ("NVIDIA GH200 480GB", "gh200"),
    ("NVIDIA A100-SXM4-40GB", "a100-40gb"),
    ("NVIDIA A100-SXM4-80GB", "a100-80gb"),
    ("NVIDIA A100 80GB PCIe", "a100-pcie-80gb"),
    ("NVIDIA A100-PCIE-40GB", "a100-pcie-40gb"),
    ("NVIDIA A10", "a10"),
    ("NVIDIA L4", "l4"),
    ("NVIDIA L40S", "l40s"),
    ("NVIDIA GeForce RTX 4090", "rtx-4090"),
    ("NVIDIA B200", "b200"),
])
def test_match_device_names(name, key):
    assert match(name).key == key


@pytest.mark.parametrize("name", ["NVIDIA GeForce RTX 3090", "Tesla T4", "NVIDIA A10G", "AMD Instinct MI300X", ""])
def test_unknown_names_match_nothing(name):
    assert match(name) is None


def test_get_spec_unknown_key_lists_known_ones():
    assert get_spec("H100-SXM") is SPECS["h100-sxm"]
    with pytest.raises(KeyError) as exc:
        get_spec("h300")
    msg = str(exc.value)
    assert "h300" in msg and "h100-sxm" in msg and "a100-80gb" in msg
    assert not msg.startswith('"')  # a readable line, not a quoted KeyError repr


def test_estimate_for_unknown_gpu_is_labelled_and_physical():
    # an H100 SXM seen as unknown: 132 SMs at its 1.83 GHz tensor boost clock, HBM3 2.619 GHz
    # on a 5120-bit bus -> within 1% of the datasheet 989 TFLOP/s and 3.35 TB/s
    est = estimate_spec("Some Hopper", 9, 0, 132, 1.83e9, 80 * 2**30, 2.619e9, 5120)
    assert est.estimated and "ESTIMATE" in est.source
    assert est.peak_flops["bf16"] == pytest.approx(989 * T, rel=0.01)
    assert est.mem_bw == pytest.approx(3.35e12, rel=0.01)
    # an architecture without known per-clock rates gets no peaks, not another card's
    odd = estimate_spec("Future GPU", 42, 0, 100, 2e9)
    assert odd.estimated and odd.peak_flops == {} and "no peaks" in odd.source


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU spec only without CUDA")
def test_current_spec_on_cpu_has_no_datasheet_peaks():
    s = devices.current_spec()
    assert s.key == "cpu" and s.peak_flops == {} and s.mem_bw is None
    assert "calibrate" in s.source


def test_cache_dir_honours_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("FLOPSCALE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert devices.cache_dir() == tmp_path / "xdg" / "flopscale"
    monkeypatch.setenv("FLOPSCALE_CACHE_DIR", str(tmp_path / "mine"))
    assert devices.cache_dir() == tmp_path / "mine"


def test_cpu_calibration_measures_caches_and_recalibrates(monkeypatch, tmp_path):
    monkeypatch.setenv("FLOPSCALE_CACHE_DIR", str(tmp_path))
    c = calibrate("cpu", quick=True)
    assert c.source == "measured" and c.quick
    # physically plausible for a CPU: more than 100 MFLOP/s, less than 100 TFLOP/s
    assert 1e8 < c.flops["fp32"] < 1e14
    assert 1e8 < c.bandwidth < 1e13
    files = list(tmp_path.glob("ceilings-*.json"))
    assert len(files) == 1
    assert json.loads(files[0].read_text())["flops"]["fp32"] == pytest.approx(c.flops["fp32"])

    calls = []

    def fake_measure(name, quick):
        calls.append(quick)
        return Ceilings(flops={"fp32": 1.0}, bandwidth=2.0, device_name=name, measured_at="x", quick=quick)

    monkeypatch.setattr(devices, "_measure_cpu", fake_measure)
    again = calibrate("cpu", quick=True)  # from the cache, no measurement
    assert calls == [] and again.measured_at == c.measured_at
    full = calibrate("cpu")  # a cached quick result does not satisfy a full calibration
    assert calls == [False] and full.flops == {"fp32": 1.0}
    calibrate("cpu", recalibrate=True, quick=True)
    assert calls == [False, True]
    files[0].write_text("{not json")  # a corrupt cache is measured again, not trusted
    with pytest.warns(devices.CacheWarning):
        calibrate("cpu", quick=True)
    assert len(calls) == 3


def test_ceilings_from_spec_ridge_and_label():
    c = Ceilings.from_spec(SPECS["h100-sxm"])
    assert c.source == "datasheet" and "datasheet" in c.label
    assert c.ridge("bf16") == pytest.approx(989e12 / 3.35e12)
    assert c.ridge("nope") is None
    m = Ceilings(flops={"fp32": 1e11}, bandwidth=1e10, device_name="cpu", measured_at="2025-01-02T00:00:00")
    assert "measured" in m.label and "2025-01-02" in m.label
    assert Ceilings.from_dict(m.to_dict()) == m


def test_dtype_names():
    assert devices.dtype_name(torch.bfloat16) == "bf16"
    assert devices.dtype_name(torch.float32) == "fp32"
    assert devices.dtype_name(torch.float8_e4m3fn) == "fp8"
