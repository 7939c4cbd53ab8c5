"""Budgets: GPU-days <-> FLOPs <-> wall-clock, MFU models, measured files."""
from __future__ import annotations

import json
import math

import pytest

from flopscale.profiler import budget
from flopscale.profiler.budget import (
    PF_DAY,
    MFUModel,
    MeasuredFileError,
    compute_budget,
    load_measured,
    make_budget,
    pf_days,
    train_time,
)


def test_compute_budget_by_hand():
    # 1024 GPUs x 30 days x 86,400 s x 989e12 FLOP/s x 0.4
    c = compute_budget(1024, 30, 989e12, 0.4)
    assert c == pytest.approx(1024 * 30 * 86400 * 989e12 * 0.4, rel=1e-15)
    assert pf_days(c) == pytest.approx(c / 8.64e19)
    assert PF_DAY == 8.64e19
    b = make_budget(8, 0.5, 312e12, 0.5, device="a100-80gb", dtype="bf16")
    assert b.compute_flop == pytest.approx(8 * 0.5 * 86400 * 312e12 * 0.5)
    assert "8 GPUs" in b.derivation and "0.500" in b.derivation and "a100-80gb" in b.derivation


@pytest.mark.parametrize("gpus,days,mfu", [(0, 1, 0.4), (-2, 1, 0.4), (1, 0, 0.4), (1, -1, 0.4), (1, 1, 0.0),
                                           (1, 1, 1.01), (1, 1, -0.3), (1, float("nan"), 0.4)])
def test_bad_budgets_raise(gpus, days, mfu):
    with pytest.raises(ValueError):
        compute_budget(gpus, days, 989e12, mfu)


def test_train_time_inverts_the_budget():
    c = compute_budget(256, 12.5, 989e12, 0.37)
    t = train_time(c, gpus=256, peak_flop_per_s=989e12, mfu=0.37)
    assert t.wall_clock_days == pytest.approx(12.5, rel=1e-12)
    assert t.gpu_days == pytest.approx(256 * 12.5, rel=1e-12)
    assert t.gpu_hours == pytest.approx(256 * 12.5 * 24, rel=1e-12)
    t2 = train_time(gpus=256, peak_flop_per_s=989e12, mfu=0.37, flops_per_token=c / 1e12, tokens=1e12)
    assert t2.seconds == pytest.approx(t.seconds, rel=1e-12)
    with pytest.raises(ValueError):
        train_time(gpus=1, peak_flop_per_s=1e12, mfu=0.5)


def test_palm_throughput_as_a_budget():
    """Chowdhery et al. 2022: 238.3K tokens/s at 46.2% MFU on 6144 TPU v4 (275 TFLOP/s), 780B tokens.

    The inverse (tokens x FLOPs per token at that MFU) gives the run's wall-clock: 780e9 / 238.3e3 s.
    """
    per_token = 6 * 540.35e9 + 12 * 118 * 48 * 256 * 2048
    t = train_time(gpus=6144, peak_flop_per_s=275e12, mfu=0.462, flops_per_token=per_token, tokens=780e9)
    assert t.seconds == pytest.approx(780e9 / 238.3e3, rel=0.01)


def test_mfu_model_constant_and_interpolated():
    const = MFUModel.constant(0.4)
    assert const.is_constant and const(1e6) == const(1e12) == 0.4
    assert "assumed constant" in const.describe()
    m = MFUModel([(1e9, 0.3), (1e8, 0.2), (1e10, 0.5)], "measured")
    assert [n for n, _ in m.points] == [1e8, 1e9, 1e10]  # sorted
    # linear in log N: the geometric midpoint gets the arithmetic mean
    assert m(math.sqrt(1e8 * 1e9)) == pytest.approx(0.25, rel=1e-12)
    assert m(1e9) == pytest.approx(0.3)
    assert m(10 ** 9.25) == pytest.approx(0.3 + 0.25 * 0.2, rel=1e-12)
    # held at the ends, and it says so
    assert m(1e6) == 0.2 and m(1e13) == 0.5
    assert m.extrapolated(1e13) and not m.extrapolated(5e9)
    assert "outside" in m.describe(1e13)
    assert "interpolated" in m.describe(5e9)
    with pytest.raises(ValueError):
        MFUModel([(1e9, 1.2)])


def _write(tmp_path, obj, name="m.json"):
    p = tmp_path / name
    p.write_text(json.dumps(obj))
    return p


def test_load_measured_audit_output(tmp_path):
    audit = {"device": {"key": "h200", "name": "NVIDIA H200", "kind": "cuda"}, "dtype": "bf16",
             "params": {"total": 1.2e9}, "model_flops": 1e15, "timing": {"step_s": 2.5},
             "achieved_flop_per_s": 4e14,
             "mfu": {"value": 0.5, "peak_flop_per_s": 8e14, "peak_source": "measured ceiling"}}
    m = load_measured(_write(tmp_path, audit))
    assert m.device_key == "h200" and m.dtype == "bf16"
    assert m.points == [(1.2e9, 4e14)]
    mm = m.mfu_model(989e12)
    assert mm.is_constant and mm(1e12) == pytest.approx(4e14 / 989e12)
    # only an MFU with its peak: rate = MFU x peak
    del audit["achieved_flop_per_s"]
    assert load_measured(_write(tmp_path, audit)).points == [(1.2e9, 0.5 * 8e14)]


def test_load_measured_sweep(tmp_path):
    obj = {"device": {"key": "h100-sxm"}, "dtype": "bf16",
           "sweep": [{"params": {"total": n}, "achieved_flop_per_s": r} for n, r in
                     [(1e8, 2e14), (1e9, 3.5e14), (1e10, 4.5e14)]]}
    m = load_measured(_write(tmp_path, obj))
    model = m.mfu_model(989e12)
    assert not model.is_constant
    assert model(1e9) == pytest.approx(3.5e14 / 989e12)
    with pytest.raises(MeasuredFileError, match="outside"):
        m.mfu_model(1e14)  # rates above the peak: wrong card or dtype


def test_load_measured_profile_rows(tmp_path):
    obj = {"device": {"key": "h100-sxm", "name": "NVIDIA H100 80GB HBM3"},
           "rows": [{"case": "matmul 8192^3", "provider": "flopscale", "dtype": "bf16", "flop_per_s": 7e14},
                    {"case": "attention", "provider": "flopscale", "dtype": "bf16", "flop_per_s": 5e14},
                    {"case": "attention", "provider": "flopscale", "dtype": "bf16", "flop_per_s": 6e14},
                    {"case": "matmul 8192^3", "provider": "torch", "dtype": "bf16", "flop_per_s": 9e14},
                    {"case": "matmul 8192^3", "provider": "flopscale", "dtype": "fp16", "flop_per_s": 1e12}]}
    m = load_measured(_write(tmp_path, obj), dtype="bf16")
    assert m.kind == "profile" and m.device_key == "h100-sxm"
    assert m.points == [(None, 6e14)]  # median of the flopscale bf16 rows
    assert "optimistic" in m.notes[0]
    with pytest.raises(MeasuredFileError, match="in fp8"):
        load_measured(_write(tmp_path, obj), dtype="fp8")


@pytest.mark.parametrize("content,match", [
    ("{not json", "not JSON"),
    (json.dumps({"device": {"key": "h200"}}), "no achieved FLOP rate"),
    (json.dumps([{"device": {"key": "h200"}, "achieved_flop_per_s": 1e14},
                 {"device": {"key": "a100-80gb"}, "achieved_flop_per_s": 1e14}]), "mixes devices"),
    (json.dumps(3), "neither"),
])
def test_load_measured_bad_files(tmp_path, content, match):
    p = tmp_path / "bad.json"
    p.write_text(content)
    with pytest.raises(MeasuredFileError, match=match):
        load_measured(p)
    with pytest.raises(MeasuredFileError, match="cannot read"):
        load_measured(tmp_path / "missing.json")


def test_one_day_at_one_petaflop_is_one_pf_day():
    assert budget.compute_budget(1, 1, 1e15, 1.0) == PF_DAY


# ------------------------------------------------- issue 18: wrong JSON types are refused, never misread


@pytest.mark.parametrize("content, match", [
    ({"device": {"key": "h100-sxm"}, "achieved_flop_per_s": True}, "'achieved_flop_per_s' must be a number, got true"),
    ({"device": {"key": "h100-sxm"}, "achieved_flop_per_s": "4e14"}, "must be a number"),
    ({"device": {"key": ["h100-sxm"]}, "achieved_flop_per_s": 4e14}, "'key' must be a string"),
    ({"device": ["h100-sxm"], "achieved_flop_per_s": 4e14}, "'device' must be an object or a string"),
    ({"device": "x", "dtype": ["bf16"], "achieved_flop_per_s": 4e14}, "'dtype' must be a string"),
    ({"device": "x", "mfu": {"value": True, "peak_flop_per_s": 1e15}}, "'value' must be a number"),
    ({"device": "x", "params": {"total": [1]}, "achieved_flop_per_s": 4e14}, "'total' must be a number"),
])
def test_load_measured_wrong_types_are_one_line(tmp_path, content, match):
    p = tmp_path / "m.json"
    p.write_text(json.dumps(content))
    with pytest.raises(MeasuredFileError, match=match) as exc:
        load_measured(p)
    assert str(p) in str(exc.value) and "\n" not in str(exc.value)


def test_load_measured_non_utf8_is_one_line(tmp_path):
    p = tmp_path / "m.json"
    p.write_bytes(b'{"device": "h\xff100", "achieved_flop_per_s": 4e14}')
    with pytest.raises(MeasuredFileError, match="not UTF-8"):
        load_measured(p)
