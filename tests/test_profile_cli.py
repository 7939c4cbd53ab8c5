"""flopscale profile: rows with the right FLOPs, units, honest CPU notes, outputs, errors."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from flopscale.profiler.cli import main

ON_CPU = not torch.cuda.is_available()
HAVE_KERNELS = all(importlib.util.find_spec(f"flopscale.kernels.{m}") is not None for m in ("matmul_layer", "attention_layer"))
HAVE_BLOCKSPARSE = all(importlib.util.find_spec(f"flopscale.kernels.{m}") is not None
                       for m in ("blocksparse_attention_layer", "blocksparse_layer"))
needs_kernels = pytest.mark.skipif(not HAVE_KERNELS, reason="kernels.matmul / kernels.attention not in the tree yet")


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLOPSCALE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


def run_json(capsys, *args):
    rc = main(["profile", *args, "--json", "--time-budget", "0.05"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return json.loads(out.out), out.err


@needs_kernels
def test_matmul_rows_have_the_right_flops_for_both_providers(capsys):
    M, N, K = 33, 20, 17
    doc, _ = run_json(capsys, "matmul", "--shape", f"{M}x{N}x{K}", "--dtype", "fp32")
    rows = {r["provider"]: r for r in doc["rows"]}
    assert set(rows) == {"flopscale", "torch"}
    for r in rows.values():
        assert r["flops"] == 2 * M * N * K
        assert r["bytes"] == 4 * (M * K + K * N + M * N)
        assert r["time_s"] > 0 and r["flop_per_s"] == pytest.approx(r["flops"] / r["time_s"])
        assert r["peak_source"] == doc["peak_source"] and "measured" in doc["peak_source"]
    assert rows["flopscale"]["recorded_ops"] == ["flopscale::matmul"]
    assert rows["torch"]["recorded_ops"] == ["aten::mm"]
    if ON_CPU:
        assert rows["flopscale"]["interpreted"] and not rows["torch"]["interpreted"]
        assert any("interpreter" in n and "NOT hardware" in n for n in doc["notes"])


@needs_kernels
def test_causal_attention_counts_unmasked_pairs(capsys):
    B, H, S, D = 1, 2, 24, 16
    doc, _ = run_json(capsys, "attention", "--shape", f"{B},{H},{S},{D}", "--causal", "--dtype", "fp32")
    expected = 4 * B * H * D * S * (S + 1) // 2
    rows = {r["provider"]: r for r in doc["rows"]}
    assert rows["flopscale"]["flops"] == expected
    assert rows["torch"]["flops"] == expected  # torch SDPA counted with is_causal honoured
    assert rows["flopscale"]["executed_flops"] >= expected


@pytest.mark.skipif(not HAVE_BLOCKSPARSE, reason="block-sparse kernels not in the tree yet")
def test_blocksparse_attention_and_matmul_count_only_present_blocks(capsys):
    # local layout over 64/16 = 4 block rows, window round(0.5 * 4) = 2: the diagonal (4 blocks)
    # and the one below it (3 blocks) -> 7 blocks of 16x16 (query, key) pairs per head
    B, H, S, D = 1, 2, 64, 16
    doc, _ = run_json(capsys, "blocksparse", "--shape", f"{B},{H},{S},{D}", "--block", "16",
                      "--pattern", "local", "--density", "0.5", "--dtype", "fp32")
    rows = {r["provider"]: r for r in doc["rows"]}
    assert rows["flopscale"]["layout_nnz"] == 7
    assert rows["flopscale"]["flops"] == 4 * B * H * D * 7 * 16 * 16
    assert rows["torch"]["flops"] == 4 * B * H * D * S * S  # a dense SDPA with a mask: counted dense
    M, N, K = 64, 32, 24
    doc, _ = run_json(capsys, "blocksparse", "--mode", "sdd", "--shape", f"{M}x{N}x{K}", "--block", "16",
                      "--pattern", "random", "--density", "0.5", "--dtype", "fp32", "--provider", "flopscale")
    (row,) = doc["rows"]
    assert row["layout_nnz"] == round(0.5 * (M // 16) * (N // 16))
    assert row["flops"] == 2 * row["layout_nnz"] * 16 * 16 * K


@needs_kernels
def test_text_output_states_units_peak_and_cpu_caveat(capsys):
    rc = main(["profile", "matmul", "--shape", "16x16x16", "--time-budget", "0.05", "--provider", "torch"])
    out = capsys.readouterr().out
    assert rc == 0
    header = next(line for line in out.splitlines() if line.startswith("case "))
    for unit in ("time (ms)", "FLOP/s", "ceiling (%)", "MFU (%)", "GB/s", "FLOP/B", "SM (MHz)", "power (W)"):
        assert unit in header
    if ON_CPU:  # a 16^3 matmul on a CPU core is nowhere near 1e12 FLOP/s: no 3.4e-05 TFLOP/s
        assert "TFLOP/s" not in header and any(u in header for u in ("GFLOP/s", "MFLOP/s"))
    assert "peak for MFU and ceiling share: measured ceiling" in out
    if ON_CPU:
        assert "NOT hardware figures" in out


def test_outputs_csv_trace_and_plot(capsys, tmp_path):
    rc = main(["profile", "matmul", "--shape", "24x16x8", "--provider", "torch", "--time-budget", "0.05",
               "--csv", str(tmp_path / "r.csv"), "--trace", str(tmp_path / "t.json"), "--plot", str(tmp_path / "r.png")])
    assert rc == 0, capsys.readouterr().err
    import pandas as pd

    df = pd.read_csv(tmp_path / "r.csv")
    assert list(df["provider"]) == ["torch"] and int(df["flops"][0]) == 2 * 24 * 16 * 8
    trace = json.loads((tmp_path / "t.json").read_text())
    assert [e["name"] for e in trace["traceEvents"] if e["ph"] == "X"] == ["aten::mm"]
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("argv,needle", [
    (["matmul", "--shape", "3x4"], "MxNxK"),
    (["attention", "--shape", "1,2,3"], "B,H,S,D"),
    (["attention", "--shape", "1,4,8,8", "--kv-heads", "3"], "must divide"),
    (["matmul", "--shape", "8x8x8", "--time-budget", "0"], "time-budget"),
    (["matmul", "--shape", "8x8x8", "--time-budget", "inf"], "time-budget"),
    (["matmul", "--shape", "8x8x8", "--time-budget", "nan"], "time-budget"),
    (["matmul", "--shape", "8x8x8", "--time-budget", "-1"], "time-budget"),
    (["all", "--shape", "8x8x8"], "fixed suite"),
    (["matmul", "--shape", "8x8x8", "--csv", "/nonexistent/dir/x.csv"], "does not exist"),
    (["blocksparse", "--mode", "sdd", "--shape", "40x32x8", "--block", "16"], "multiple of --block"),
    (["blocksparse", "--shape", "1,1,32,16", "--block", "48"], "--block must be"),
])
def test_bad_input_is_one_line_exit_2(capsys, argv, needle):
    rc = main(["profile", *argv])
    err = capsys.readouterr().err
    assert rc == 2
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.skipif(not ON_CPU, reason="fp8 refusal is for machines without an sm_89+ GPU")
def test_fp8_refused_without_a_capable_gpu(capsys):
    assert main(["profile", "matmul", "--shape", "8x8x8", "--dtype", "fp8"]) == 2
    assert "fp8" in capsys.readouterr().err


@needs_kernels
def test_all_runs_the_suite_with_progress_on_stderr(capsys):
    doc, err = run_json(capsys, "all", "--provider", "torch")
    cases = {r["case"] for r in doc["rows"]}
    assert len(cases) >= 4 and any("causal" in c for c in cases)
    assert "done" in err and "[" in err  # progress bar on stderr, never on stdout
    live = [r for r in doc["rows"] if not r.get("skipped")]
    assert all(r["flops"] > 0 and r["time_s"] > 0 for r in live)
    if HAVE_BLOCKSPARSE:
        assert any(r["op"] == "blocksparse" and not r.get("skipped") for r in doc["rows"])
    else:
        assert any(r.get("skipped") and "block-sparse" in r["note"] for r in doc["rows"])


@pytest.mark.parametrize("op,expected", [
    ("matmul", "128x128x128" if ON_CPU else "8192x8192x8192"),
    ("attention", "1,2,128,64" if ON_CPU else "4,32,4096,128"),
    ("blocksparse", "1,2,256,64" if ON_CPU else "4,32,4096,128"),
])
def test_without_shape_a_default_shape_per_kind(capsys, op, expected):
    doc, _ = run_json(capsys, op, "--provider", "torch")
    (row,) = doc["rows"]
    assert row["shape"] == expected and row["flops"] > 0
    assert any(n.startswith(f"no --shape: default {op} shape") for n in doc["notes"])


@pytest.mark.parametrize("opt", ["--csv", "--trace", "--plot"])
def test_output_paths_are_checked_before_any_work(capsys, tmp_path, monkeypatch, opt):
    import flopscale.profiler.commands.profile as cmd

    def no_work(*a, **k):
        raise AssertionError("the profile ran before its output path was checked")

    monkeypatch.setattr(cmd, "profile_kernels", no_work)
    (tmp_path / "file").write_text("x")
    rc = main(["profile", "matmul", "--shape", "8x8x8", opt, str(tmp_path / "file" / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and opt in err and err.count("\n") == 1


def test_unstable_timing_is_said_next_to_the_number(capsys, monkeypatch):
    from flopscale.profiler import timing

    shaky = timing.Timing.from_times([0.002, 0.003, 0.004, 0.007, 0.008])
    monkeypatch.setattr(timing, "bench", lambda *a, **k: shaky)
    rc = main(["profile", "matmul", "--shape", "16x16x16", "--provider", "torch"])
    out = capsys.readouterr().out
    assert rc == 0
    row = next(line for line in out.splitlines() if line.startswith("matmul 16x16x16"))
    assert "4 unstable" in row  # the median, 4 ms, then the word
    doc, _ = run_json(capsys, "matmul", "--shape", "16x16x16", "--provider", "torch")
    assert doc["rows"][0]["time_unstable"] is True


def test_a_beaten_ceiling_is_measured_again_and_flagged(capsys, monkeypatch):
    from flopscale.profiler import devices

    calls = []

    def fake_calibrate(device=None, recalibrate=False, quick=False):
        calls.append(recalibrate)
        return devices.Ceilings(flops={"fp32": 1e3}, bandwidth=1e3, device_name="slow test device",
                                measured_at="2026-01-01")

    monkeypatch.setattr(devices, "calibrate", fake_calibrate)
    doc, _ = run_json(capsys, "matmul", "--shape", "32x32x32", "--provider", "torch")
    assert calls == [False, True]  # the cached ceiling, then one new measurement
    assert any("measured again" in n for n in doc["notes"])
    assert any("still faster" in n and "MFU above 100%" in n for n in doc["notes"])
    assert doc["rows"][0]["mfu"] > 1


def test_python_api_returns_the_object_the_cli_prints(capsys):
    from flopscale.profiler.profile_run import ProfileOptions, profile_kernels

    res = profile_kernels(ProfileOptions(op="matmul", shape="16x24x8", provider="torch", time_budget=0.05),
                          show_progress=False)
    d = res.to_dict()
    assert set(d) == {"device", "peak", "peak_source", "ceilings", "notes", "rows"}
    assert d["rows"][0]["flops"] == 2 * 16 * 24 * 8
    assert "matmul 16x24x8 fp32" in str(res) and "peak for MFU" in str(res)


def test_time_budget_is_honoured_for_interpreted_rows(capsys, monkeypatch):
    import time as _time

    import flopscale.profiler.profile_run as pr
    from flopscale.profiler.profile_cases import Prepared

    calls = []

    def slow():
        calls.append(1)
        _time.sleep(0.12)
        return torch.ones(2, 2) @ torch.ones(2, 2)

    monkeypatch.setattr(pr, "prepare", lambda case, prov, device, seed: Prepared(slow, interpreted=True))
    rc = main(["profile", "matmul", "--shape", "8x8x8", "--provider", "flopscale", "--time-budget", "0.05", "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    row = json.loads(out.out)["rows"][0]
    assert len(calls) == 1  # the profiled call used up the budget: no second call
    assert row["reps"] == 1 and row["time_s"] >= 0.12 and "over the time budget" in row["note"]
