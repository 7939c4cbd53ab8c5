"""print(prof) / prof.report(): the readable table, automatic module scopes, wall-based MFU
with its peak named, the op-time utilisation under its own name, ratios above 1 flagged."""
from __future__ import annotations

import math
import time

import pytest
import torch

from flopscale import profiler
from flopscale.profiler.devices import Ceilings
from flopscale.profiler.profile_table import rate_unit
from flopscale.profiler.record import Profile


@pytest.fixture(autouse=True)
def _private_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("FLOPSCALE_CACHE_DIR", str(tmp_path / "cache"))


def ceil(fp32=1e9, bw=1e9):
    return Ceilings(flops={"fp32": fp32}, bandwidth=bw, device_name="test device", measured_at="2025-01-01")


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(24, 40)
        self.act = torch.nn.ReLU()
        self.fc2 = torch.nn.Linear(40, 8)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def test_print_prof_is_a_table_per_op_and_per_module_with_units_and_mfu():
    net, x = Net(), torch.randn(16, 24)
    with Profile(model=net, ceilings=ceil()) as prof:
        for _ in range(2):
            net(x).sum().backward()
    text = str(prof)
    lines = text.splitlines()
    header = next(l for l in lines if l.startswith("op "))
    for col in ("count", "time", "% time", "FLOPs", "FLOP/s", "% ceiling", "bytes", "bound"):
        assert col in header
    addmm = next(l for l in lines if l.startswith("aten::addmm"))
    assert addmm.split()[1] == "4"  # 2 layers x 2 steps
    # per module, named by the model's attributes; backward work under the forward scope
    scopes = {r.scope for r in prof.records}
    assert {"Net/fc1", "Net/fc2", "Net/fc2 (backward)", "Net/fc1 (backward)"} <= scopes
    assert any(l.startswith("Net/fc1 ") for l in lines)
    assert "MFU" in text and "wall time" in text and "peak fp32 1 GFLOP/s" in text
    assert "utilisation over op time only (not MFU)" in text
    assert prof.report().to_text() == text


def test_module_scopes_without_a_model_and_switched_off():
    net, x = Net(), torch.randn(4, 24)
    with Profile(ceilings=ceil()) as prof:
        net(x)
    assert [r.scope for r in prof.records] == ["Net/fc1", "Net/fc2"]
    with Profile(ceilings=ceil(), modules=False) as plain:
        net(x)
    assert [r.scope for r in plain.records] == ["", ""]
    # hooks are gone after the block
    with Profile(ceilings=ceil(), modules=False) as again:
        net(x)
    assert [r.scope for r in again.records] == ["", ""]


def test_table_has_no_index_column_and_report_by_module_dict():
    net, x = Net(), torch.randn(4, 24)
    with Profile(model=net, ceilings=ceil()) as prof:
        net(x)
    cols = prof.table().columns
    assert "index" not in cols
    # a launch's FLOPs over its own time is not MFU (which divides by the wall time): named apart
    assert "mfu" not in cols and "hfu" not in cols and {"peak_share", "executed_peak_share"} <= set(cols)
    d = prof.report(by="module").to_dict()
    assert {r["name"] for r in d["rows"]} == {"Net/fc1", "Net/fc2"}
    assert d["totals"]["peak_source"].startswith("measured ceiling (test device")


@pytest.mark.parametrize("rate,unit", [(3.4e7, "MFLOP/s"), (2.5e11, "GFLOP/s"), (7.9e14, "TFLOP/s"), (12.0, "FLOP/s")])
def test_rate_unit_is_chosen_by_magnitude(rate, unit):
    assert rate_unit([rate, rate / 100])[1] == unit


def test_mfu_divides_by_wall_time_and_op_time_variant_has_its_own_name():
    a = torch.randn(48, 48)
    with Profile(ceilings=ceil()) as prof:
        a @ a
        time.sleep(0.05)  # host time between ops: part of the wall time, not of any op
        a @ a
    tot = prof.totals()
    op_time = sum(r.time_s for r in prof.records)
    flops = 2 * 2 * 48**3
    assert tot["mfu"] == pytest.approx(flops / (prof.wall_time_s * 1e9))
    assert tot["mfu_op_time"] == pytest.approx(flops / (op_time * 1e9))
    assert prof.wall_time_s >= op_time + 0.05 and tot["mfu"] < tot["mfu_op_time"]  # the sleep counts
    assert tot["peak_flop_per_s"] == {"fp32": 1e9} and "measured ceiling" in tot["peak_source"]
    assert "wall" in tot["mfu_definition"]


def test_ratios_above_one_are_flagged():
    a = torch.randn(64, 64)
    with Profile(ceilings=ceil(fp32=1e3, bw=1e3)) as prof:  # a ceiling every launch beats
        a @ a
    tot = prof.totals()
    assert tot["mfu"] > 1 and tot["flags"]
    assert any("recalibrate" in f for f in tot["flags"])
    text = str(prof)
    assert "!" in text and "faster than the fp32 peak" in text


def test_str_while_recording_does_not_fail():
    with Profile(ceilings=ceil()) as prof:
        torch.randn(4, 4) @ torch.randn(4, 4)
        assert "still recording" in str(prof)


def test_an_empty_profile_says_no_flops_instead_of_an_mfu():
    with Profile(ceilings=ceil()) as prof:
        pass
    text = str(prof)
    assert "MFU: no FLOPs recorded" in text and "MFU 0.0%" not in text
