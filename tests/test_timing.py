"""profiler.bench: statistics, repetition choice, flush outside the timed interval."""
from __future__ import annotations

import time

import pytest
import torch

from flopscale.profiler import bench
from flopscale.profiler.timing import Timing, _Flusher


def spin(seconds: float):
    """A function of known duration: busy-waits ``seconds`` on the monotonic clock."""

    def fn():
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass

    return fn


def test_statistics_against_hand_computed_values():
    t = Timing.from_times([0.004, 0.001, 0.1, 0.002, 0.003])
    # sorted: 1, 2, 3, 4, 100 ms -> median 3 ms, p25 2 ms, p75 4 ms (linear interpolation)
    assert t.median_s == pytest.approx(0.003)
    assert t.iqr_s == pytest.approx(0.002)
    assert t.min_s == pytest.approx(0.001) and t.max_s == pytest.approx(0.1)
    assert t.mean_s == pytest.approx(0.022)
    assert t.count == 5 and len(t.times_s) == 5
    with pytest.raises(ValueError):
        Timing.from_times([])


def test_known_duration_is_measured():
    d = 0.003
    t = bench(spin(d), warmup=1, rep=25, flush_l2=False, device="cpu")
    assert t.count == 25 and len(t.times_s) == 25 and t.clock == "perf_counter"
    assert t.min_s >= d  # a busy-wait can be slowed by a shared CPU, never sped up
    # generous: the machine is shared, but the median of 25 should stay near d
    assert t.median_s < 2.5 * d
    assert 0 <= t.iqr_s and t.min_s <= t.median_s <= t.max_s


def test_repetitions_follow_the_time_budget():
    d = 0.002
    t = bench(spin(d), warmup=1, time_budget_s=0.06, flush_l2=False, device="cpu", min_rep=3)
    # per call >= 2 ms, so at most 30 repetitions fit in 60 ms; at least min_rep
    assert 3 <= t.count <= 31
    many = bench(lambda: None, warmup=1, time_budget_s=0.02, flush_l2=False, device="cpu", max_rep=500)
    assert many.count == 500  # a near-free call hits the cap


def test_cpu_loop_stops_when_calls_turn_slow():
    calls = []

    def slows_down():
        calls.append(1)
        spin(0.001 if len(calls) <= 2 else 0.02)()  # warm-up and sizing fast, then 20x slower

    t0 = time.perf_counter()
    t = bench(slows_down, warmup=1, time_budget_s=0.05, flush_l2=False, device="cpu", min_rep=3)
    # sized for ~50 repetitions of 1 ms; stops at twice the budget (~5 slow ones)
    assert 3 <= t.count < 20 and time.perf_counter() - t0 < 1.0


def test_flush_runs_between_repetitions_but_is_not_timed():
    flusher = _Flusher(torch.device("cpu"))
    t0 = time.perf_counter()
    flusher()
    flush_s = time.perf_counter() - t0
    calls = []
    t = bench(lambda: calls.append(1), warmup=1, rep=5, flush_l2=True, device="cpu")
    assert len(calls) == 1 + 1 + 5  # warm-up, sizing call, repetitions
    assert t.flush_l2 and t.median_s < max(flush_s / 4, 1e-4)


def test_bad_arguments():
    with pytest.raises(ValueError):
        bench(lambda: None, rep=0, device="cpu")
    with pytest.raises(ValueError):
        bench(lambda: None, time_budget_s=0, device="cpu")
    with pytest.raises(ValueError, match="CUDA"):
        bench(lambda: None, cuda_graph=True, device="cpu")


def test_hide_launch_is_a_no_op_on_the_cpu():
    t = bench(spin(0.001), warmup=1, rep=5, flush_l2=False, device="cpu", hide_launch=True)
    assert t.hide_launch is False and t.count == 5 and t.min_s >= 0.001


def test_errors_in_fn_propagate():
    def boom():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        bench(boom, device="cpu")


@pytest.mark.gpu
def test_cuda_events_and_graph_on_a_matmul():
    a = torch.randn(2048, 2048, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(2048, 2048, device="cuda", dtype=torch.bfloat16)
    t = bench(lambda: a @ b, time_budget_s=0.2)
    assert t.clock == "cuda_events" and t.count >= 5
    rate = 2 * 2048**3 / t.median_s
    assert 1e12 < rate < 5e15
    g = bench(lambda: a @ b, time_budget_s=0.2, cuda_graph=True)
    assert g.cuda_graph and g.median_s == pytest.approx(t.median_s, rel=0.5)
    h = bench(lambda: a @ b, time_budget_s=0.2, hide_launch=True)
    assert h.hide_launch and h.median_s == pytest.approx(t.median_s, rel=0.5)


@pytest.mark.gpu
def test_hide_launch_excludes_host_time_between_kernels():
    x = torch.zeros(1024, device="cuda")

    def host_bound():  # two tiny kernels 1 ms of host time apart: the device mostly waits
        x.add_(1)
        spin(0.001)()
        x.add_(1)

    eager = bench(host_bound, warmup=2, time_budget_s=0.1, flush_l2=False)
    hidden = bench(host_bound, warmup=2, time_budget_s=0.1, flush_l2=False, hide_launch=True)
    assert eager.median_s > 0.8e-3  # the events saw the host's millisecond
    assert hidden.hide_launch and hidden.median_s < 0.2e-3  # only the two kernels


@pytest.mark.parametrize("budget", [float("inf"), float("nan"), -1.0, 0.0, True])
def test_non_finite_or_non_positive_budget_is_refused(budget):
    with pytest.raises(ValueError, match="time_budget_s"):
        bench(lambda: None, time_budget_s=budget, device="cpu")


def test_unstable_timing_is_said_so():
    # IQR 4 ms against a 4 ms median: comparable, so unstable
    shaky = Timing.from_times([0.002, 0.003, 0.004, 0.007, 0.008])
    assert shaky.unstable and "unstable" in str(shaky) and shaky.to_dict()["unstable"] is True
    assert "IQR 100% of the median" in shaky.stability_note
    steady = Timing.from_times([0.0040, 0.0041, 0.0042, 0.0043, 0.0044])
    assert not steady.unstable and "unstable" not in str(steady) and steady.stability_note == ""
    assert not Timing.from_times([0.004]).unstable  # one repetition has no spread to judge
