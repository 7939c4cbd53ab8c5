"""Distributed profiling, the data-parallel step, the collectives bench suite and
communication-aware plans.

Ranks are gloo processes on this machine started by torchrun (``profiler.distributed.launch``);
each launch costs a few seconds of start-up, so every launch serves several assertions.
"""
from __future__ import annotations

import csv
import json
import math
from types import SimpleNamespace

import pytest

from flopscale.profiler.cli import main
from flopscale.profiler.collectives import bus_factor
from flopscale.profiler.distributed import launch, profile_aggregate, render_profile  # noqa: F401

TINY = ["--n-layer", "2", "--d-model", "64", "--n-head", "2", "--n-ctx", "32", "--vocab", "256", "--batch", "2"]


def _run(tmp_path, nproc, argv, timeout_s=120):
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    proc = launch(nproc, argv, timeout_s=timeout_s, workdir=work)
    return json.loads(proc.stdout)


# ------------------------------------------------------------------------------ profile


def test_profile_gathered_records_equal_the_per_rank_ones(tmp_path):
    M, N, K = 48, 40, 56  # ragged, not a multiple of any block
    rec_dir = tmp_path / "records"
    out = _run(tmp_path, 2, ["profile", "matmul", "--shape", f"{M}x{N}x{K}", "--provider", "torch",
                             "--peak", "datasheet", "--time-budget", "0.05", "--json", "--records-dir", str(rec_dir),
                             "--csv", str(tmp_path / "rows.csv")])
    assert out["world_size"] == 2 and out["backend"] == "gloo"
    with open(tmp_path / "rows.csv") as fh:  # rank 0 writes every rank's rows
        table = list(csv.DictReader(fh))
    assert [(int(r["rank"]), int(r["flops"])) for r in table] == [(0, 2 * M * N * K), (1, 2 * M * N * K)]
    ranks = out["ranks"]
    # what rank 0 gathered is exactly what each rank wrote before the gather
    for r in (0, 1):
        assert ranks[r] == json.loads((rec_dir / f"rank{r}.json").read_text())
    assert [x["rank"] for x in ranks] == [0, 1]
    assert ranks[0]["pid"] != ranks[1]["pid"]  # two processes, not one record copied
    for rec in ranks:
        (row,) = rec["rows"]
        assert row["flops"] == 2 * M * N * K
        assert row["time_s"] > 0
        # the launch records travel with the rows
        (launches,) = rec["launches"]
        assert sum(x["flops"] for x in launches["records"]) == 2 * M * N * K
        assert rec["telemetry"]["available"] is False  # a CPU run: no NVML
    agg = out["aggregate"]
    rates = {rec["rank"]: rec["rows"][0]["flops"] / rec["rows"][0]["time_s"] for rec in ranks}
    assert agg["total_flop_per_s"] == pytest.approx(sum(rates.values()), rel=1e-12)
    assert agg["slowest_rank"] == min(rates, key=rates.get)
    assert agg["fastest_rank"] == max(rates, key=rates.get)
    assert agg["spread"] == pytest.approx(1 - min(rates.values()) / max(rates.values()), rel=1e-9, abs=1e-12)
    # the text report: one table per rank, the aggregate, telemetry said to be absent
    res0 = SimpleNamespace(notes=[], ceilings=SimpleNamespace(label="datasheet", flops={}, bandwidth=None))
    args = SimpleNamespace(no_flush_l2=False)
    text = render_profile(ranks, profile_aggregate(ranks), args, res0)
    assert "rank 0 (" in text and "rank 1 (" in text
    assert "in total on 2 ranks" in text and "telemetry: absent" in text


def test_profile_aggregate_names_the_straggler():
    def rec(rank, t):
        return {"rank": rank, "host": "h", "device": {"name": "X"}, "telemetry": {"available": False},
                "rows": [{"case": "c", "provider": "torch", "flops": 1e9, "time_s": t}]}

    agg = profile_aggregate([rec(0, 1e-3), rec(1, 4e-3), rec(2, 2e-3)])
    assert agg["slowest_rank"] == 1 and agg["fastest_rank"] == 0
    assert agg["total_flop_per_s"] == pytest.approx(1e12 + 0.25e12 + 0.5e12)
    assert agg["spread"] == pytest.approx(0.75)
    (case,) = agg["cases"]
    assert (case["slowest_rank"], case["fastest_rank"]) == (1, 0)


# ------------------------------------------------------------------------------- audit


def test_audit_on_two_ranks_counts_the_exact_flops_everywhere(tmp_path):
    from flopscale.profiler import flopcount
    from flopscale.profiler.model import GPTConfig

    rec_dir = tmp_path / "records"
    out = _run(tmp_path, 2, ["audit", *TINY, "--time-budget", "0.1", "--json", "--records-dir", str(rec_dir)])
    cfg = GPTConfig(2, 64, 2, 32, 256)
    exact = flopcount.step_flops(cfg, 2, 32).total
    for r, rec in enumerate(out["ranks"]):
        assert rec == json.loads((rec_dir / f"rank{r}.json").read_text())
        assert rec["audit"]["model_flops"] == exact
        assert rec["seed"] == r  # each rank its own batch
    agg = out["aggregate"]
    rates = [rec["audit"]["model_flops"] / rec["audit"]["timing"]["step_s"] for rec in out["ranks"]]
    assert agg["total_flop_per_s"] == pytest.approx(sum(rates), rel=1e-9)
    assert agg["same_model_flops_on_every_rank"] is True


# --------------------------------------------------------------------- data-parallel step


def test_ddp_step_reports_compute_comm_and_overlap(tmp_path):
    from flopscale.profiler import flopcount
    from flopscale.profiler.model import GPTConfig, param_counts

    out = _run(tmp_path, 2, ["ddp", *TINY, "--reps", "3", "--fsdp", "--json"])
    cfg = GPTConfig(2, 64, 2, 32, 256)
    params = param_counts(cfg).total
    results = [out["ddp"]] + ([out["fsdp"]] if out.get("fsdp") else [])
    for res in results:
        assert res["world_size"] == 2 and res["reps"] == 3
        s, c, m = res["step_s"], res["compute_s"], res["comm_s"]
        assert s > 0 and c > 0 and m > 0
        assert 0.0 <= res["overlap"] <= 1.0
        assert res["overlap"] == pytest.approx(min(1.0, max(0.0, (c + m - s) / m)))
        assert res["exposed_comm_s"] == pytest.approx(max(0.0, s - c))
        assert all(len(v) == 3 for v in res["times_s"].values())
        # medians of the per-repetition (slowest-rank) times
        for key, name in (("step_s", "step"), ("compute_s", "compute"), ("comm_s", "comm")):
            vals = sorted(res["times_s"][name])
            assert res[key] == pytest.approx(vals[1])
        assert res["params"] == params
        assert res["grad_bytes"] == 4 * params  # fp32 gradients
        assert res["model_flops_per_rank"] == flopcount.step_flops(cfg, 2, 32).total
        assert res["tokens_per_s"] == pytest.approx(2 * 2 * 32 / s)
        # the plan's layout model beside the run: fp32 AdamW holds 4 + 4 + 8 bytes per parameter, all of them
        # on every DDP rank (ZeRO-0), half of them (padded shards) on each of 2 FSDP ranks (ZeRO-3)
        pred = res["prediction"]
        mem = pred["model_states_bytes_per_rank"]
        share = 1 if res["mode"] == "ddp" else 2
        assert mem["predicted"]["total"] == pytest.approx(16 * params / share)
        assert mem["ratio"] == pytest.approx(1.0, abs=1e-9 if share == 1 else 0.02)
        assert pred["layout"] == {"tp": 1, "pp": 1, "dp": 2, "zero_stage": 0 if share == 1 else 3,
                                  "micro_batch": 2, "recompute": "none"}
        st = pred["step_s"]
        assert st["predicted_no_overlap"] == pytest.approx(c + m)
        assert st["predicted_most_overlap"] == pytest.approx(c + max(0.0, m - 2 / 3 * c))
    ddp = out["ddp"]
    assert ddp["mode"] == "ddp"
    assert ddp["comm_bytes"] == ddp["grad_bytes"]  # DDP's buckets hold every gradient once
    assert sum(ddp["bucket_bytes"]) == ddp["grad_bytes"]
    # every rank reports the same step (times reduced with MAX across ranks)
    assert out["ranks"][0]["ddp"]["step_s"] == out["ranks"][1]["ddp"]["step_s"]
    if out.get("fsdp"):
        f = out["fsdp"]
        assert f["mode"] == "fsdp" and sum(f["group_params"]) == params


# ---------------------------------------------------------------- collectives bench -> plan


def test_bench_collectives_rows_feed_a_measured_plan(tmp_path, monkeypatch, capsys):
    from flopscale.benchmarks.run import DEFAULT_SUITES, SUITES, run

    assert "collectives" in SUITES and "collectives" not in DEFAULT_SUITES  # only with --only
    monkeypatch.setenv("FLOPSCALE_COLLECTIVES_SIZES", "1K:64K")
    from flopscale.benchmarks.bench_collectives import expected_rows
    from flopscale.benchmarks.harness import Context

    rows, _, csv_path, _ = run(["collectives"], out=tmp_path, echo=None)
    sizes = [1024, 4096, 16384, 65536]
    assert len(rows) == expected_rows(Context(device="cpu", quick=False)) == 4 * len(sizes)  # what progress counts
    assert [(r["op"], r["bytes"]) for r in rows] == [(op, s) for op in
                                                     ("all_reduce", "all_gather", "reduce_scatter", "broadcast")
                                                     for s in sizes]
    for r in rows:
        assert r["status"] == "ok" and r["median_ms"] > 0
        assert r["gbps"] == pytest.approx(r["bytes"] / (r["median_ms"] / 1e3) / 1e9, rel=1e-9)
    assert "2 gloo ranks" in rows[0]["note"]  # the CPU defaults say what they are
    (raw,) = tmp_path.glob("collectives-*.csv")
    with open(raw) as fh:
        ar = [r for r in csv.DictReader(fh) if r["op"] == "all_reduce"]
    assert len(ar) == len(sizes)
    # the plan reads the all-reduce bus bandwidth at the 25 MiB bucket: beyond the largest
    # measured size, so held at the 64 KiB figure
    bus = float(next(r["busbw_Bps"] for r in ar if int(r["size_bytes"]) == 65536))
    assert main(["plan", "--gpu", "h100-sxm", "--compute", "1e21", "--mfu", "0.4", "--nodes", "2",
                 "--gpus-per-node", "4", "--measured-collectives", str(raw), "--no-neighbours", "--json",
                 "--layout", PURE_DP]) == 0
    out = json.loads(capsys.readouterr().out)
    comm = out["communication"]
    st = comm["step"]
    assert st["comm_s"] == pytest.approx(st["grad_bytes"] * bus_factor("all_reduce", 8) / bus, rel=1e-9)
    assert "allreduce_bus_bandwidth" in comm["measured"]
    assert "bus_bandwidth_at_scale" in comm["assumed"]


# ------------------------------------------------------------------- communication-aware plan


# the layout whose only communication is the DP all-reduce (ZeRO-2 moves the all-reduce's volume)
PURE_DP = "tp=1,pp=1,zero=2,mb=1,recompute=none"


def _plan(capsys, *argv):
    assert main(["plan", "--gpu", "h100-sxm", "--mfu", "0.4", "--no-neighbours", "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_plan_with_nodes_adds_the_exposed_allreduce(capsys):
    base = _plan(capsys, "--compute", "1e22", "--gpus", "8", "--layout", PURE_DP)  # one node at NVLink speed
    comm = _plan(capsys, "--compute", "1e22", "--nodes", "2", "--gpus-per-node", "8", "--interconnect-gbps", "100",
                 "--layout", PURE_DP)
    assert comm["shape"] == base["shape"]  # C is given: the same model and tokens
    c = comm["communication"]
    st = c["step"]
    nbytes = comm["shape_params"]["total"] * 2  # bf16 gradients, every parameter
    assert st["grad_bytes"] == nbytes
    # reduce-scatter + all-gather over NVLink (450 GB/s per direction), all-reduce of 1/8 shards at 100 Gbit/s
    expect = 2 * 7 / 8 * nbytes / 450e9 + 2 * 1 / 2 * (nbytes / 8) / (100e9 / 8)
    assert st["comm_s"] == pytest.approx(expect, rel=1e-12)
    compute = comm["flops_per_token"] * 2**22 / (16 * 989e12 * 0.4)
    assert st["compute_s"] == pytest.approx(compute, rel=1e-12)
    assert st["exposed_s"] == pytest.approx(st["comm_s"])  # overlap assumed 0
    assert comm["layout"] == {"tp": 1, "pp": 1, "dp": 16, "zero_stage": 2, "micro_batch": 1, "recompute": "none"}
    assert comm["gpu_days"] > base["gpu_days"]  # the slower inter-node all-reduce costs GPU time
    assert comm["wall_clock_days"] == pytest.approx(
        comm["compute_flop"] / (16 * 989e12 * 0.4) / 86400 * st["step_s"] / st["compute_s"], rel=1e-9)
    assert comm["mfu_at_scale"] == pytest.approx(0.4 * st["compute_s"] / st["step_s"], rel=1e-12)
    assert "overlap" in c["assumed"] and "inter_node_bandwidth" in c["given"]
    assert "intra_node_bandwidth" in c["assumed"]


def test_plan_is_unchanged_when_communication_fully_overlaps(capsys):
    base = _plan(capsys, "--compute", "1e22", "--gpus", "16", "--layout", "tp=1,pp=1,zero=2")
    full = _plan(capsys, "--compute", "1e22", "--nodes", "2", "--gpus-per-node", "8", "--interconnect-gbps", "100",
                 "--overlap", "1", "--layout", PURE_DP)
    st = full["communication"]["step"]
    assert st["comm_s"] < 2 / 3 * st["compute_s"]  # fits behind the backward pass
    assert st["hidden_s"] == pytest.approx(st["comm_s"]) and st["exposed_s"] == pytest.approx(0.0, abs=1e-15)
    assert full["mfu_at_scale"] == pytest.approx(0.4, rel=1e-12)
    assert full["wall_clock_days"] <= base["wall_clock_days"] * (1 + 1e-12)
    # but no more than the backward pass can hide: a slow network stays exposed even at overlap 1
    slow = _plan(capsys, "--compute", "1e22", "--nodes", "2", "--gpus-per-node", "8", "--interconnect-gbps", "0.05",
                 "--overlap", "1", "--layout", PURE_DP)
    st = slow["communication"]["step"]
    assert st["hidden_s"] == pytest.approx(2 / 3 * st["compute_s"], rel=1e-12)
    assert slow["wall_clock_days"] > base["wall_clock_days"]


def test_gpu_days_budget_shrinks_with_communication(capsys):
    base = _plan(capsys, "--days", "30", "--gpus", "64", "--gpus-per-node", "64", "--layout", "tp=1,pp=1")  # one node
    comm = _plan(capsys, "--days", "30", "--nodes", "8", "--gpus-per-node", "8", "--interconnect-gbps", "25",
                 "--layout", "tp=1,pp=1")
    st = comm["communication"]["step"]
    eff = st["compute_s"] / st["step_s"]
    assert eff < 1
    assert eff < base["communication"]["step"]["efficiency"]
    assert comm["compute_flop"] < base["compute_flop"]
    assert comm["N"] < base["N"]  # a smaller budget buys a smaller compute-optimal model
    # the budget is GPUs x days x peak x MFU at scale; the run still takes the 30 days
    assert comm["compute_flop"] == pytest.approx(64 * 30 * 86400 * 989e12 * 0.4 * eff, rel=1e-3)
    assert comm["wall_clock_days"] == pytest.approx(30, rel=2e-2)


def test_measured_bandwidth_is_interpolated_at_the_bucket_size(tmp_path, capsys):
    path = tmp_path / "c.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["op", "size_bytes", "world_size", "backend", "dtype", "reps", "time_s",
                                           "algbw_Bps", "busbw_Bps"])
        w.writeheader()
        for op, size, bus in (("all_reduce", 2**20, 10e9), ("all_reduce", 64 * 2**20, 40e9),
                              ("all_gather", 2**20, 99e9)):
            w.writerow({"op": op, "size_bytes": size, "world_size": 8, "backend": "nccl", "dtype": "float32",
                        "reps": 5, "time_s": 1.0, "algbw_Bps": bus, "busbw_Bps": bus})
    out = _plan(capsys, "--compute", "1e21", "--nodes", "4", "--measured-collectives", str(path), "--layout", PURE_DP)
    st = out["communication"]["step"]
    bus = 10e9 + (math.log(25) / math.log(64)) * 30e9  # linear in log size between 1 and 64 MiB
    assert st["comm_s"] == pytest.approx(st["grad_bytes"] * 2 * 31 / 32 / bus, rel=1e-12)
    assert out["communication"]["sources"]["gpus_per_node"]["status"] == "assumed"  # 8 by default
    # the same file without its all-reduce rows is refused in one line
    rows = [r for r in csv.DictReader(open(path)) if r["op"] != "all_reduce"]
    bad = tmp_path / "bad.csv"
    with open(bad, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert main(["plan", "--compute", "1e21", "--nodes", "2", "--measured-collectives", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no all_reduce rows" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("argv, needle", [
    (["--nodes", "0", "--interconnect-gbps", "100"], "--nodes must be a positive integer"),
    (["--nodes", "2", "--interconnect-gbps", "-5"], "--interconnect-gbps must be a positive"),
    (["--nodes", "2", "--layout", "tp=3"], "no layout of 16 GPUs"),
    (["--nodes", "2", "--gpus-per-node", "0", "--interconnect-gbps", "100"], "--gpus-per-node must be"),
    (["--nodes", "2", "--gpus", "8", "--interconnect-gbps", "100"], "disagrees"),
    (["--nodes", "2", "--interconnect-gbps", "100", "--overlap", "1.5"], "--overlap must be in [0, 1]"),
    (["--interconnect-gbps", "100"], "needs the GPUs"),
    (["--nodes", "2", "--measured-collectives", "/no/such/file.csv"], "cannot read collectives file"),
])
def test_bad_cluster_input_is_one_line(capsys, argv, needle):
    assert main(["plan", "--compute", "1e21", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err


# --------------------------------------------------------------------- profile --distributed


def test_profile_distributed_prints_the_torchrun_line(capsys):
    from flopscale.profiler.commands.torchrun import build_parser

    assert main(["profile", "matmul", "--shape", "48x40x56", "--provider", "torch", "--distributed", "4"]) == 0
    line = capsys.readouterr().out.splitlines()[0].split()
    assert line[:5] == ["torchrun", "--nproc-per-node=4", "-m", "flopscale.profiler.distributed", "profile"]
    args = build_parser().parse_args(line[4:])  # the module accepts what the line passes
    assert (args.op, args.shape, args.provider) == ("matmul", "48x40x56", "torch")
    assert main(["profile", "matmul", "--shape", "8x8x8", "--distributed", "0"]) == 2
    assert "--distributed must be" in capsys.readouterr().err


def test_a_failing_profile_rank_is_named_and_finished_rows_are_kept(tmp_path):
    from flopscale.profiler.distributed import DistributedRunError

    rec_dir = tmp_path / "records"
    # heartbeats: 1 initialised, 2 before the first row, 3 before the second: rank 1 fails there
    with pytest.raises(DistributedRunError) as exc:
        launch(2, ["profile", "matmul", "--shape", "32x24x40", "--provider", "both", "--peak", "datasheet",
                   "--time-budget", "0.05", "--records-dir", str(rec_dir)], timeout_s=120, workdir=tmp_path,
               env={"FLOPSCALE_FAULT": "1:fail:3"})
    assert "rank 1 failed: injected failure" in str(exc.value)
    kept = {r: [json.loads(x) for x in (rec_dir / f"rank{r}.rows.jsonl").read_text().splitlines()] for r in (0, 1)}
    assert len(kept[1]) == 1  # rank 1 finished the first row, then failed
    assert 1 <= len(kept[0]) <= 2  # rank 0 may finish the second before torchrun stops it
    for rows in kept.values():
        assert rows[0]["provider"] == "flopscale" and rows[0]["flops"] == 2 * 32 * 24 * 40
