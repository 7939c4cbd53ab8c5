"""Collective bandwidth on gloo ranks spawned by torchrun, and failure handling."""
from __future__ import annotations

import pytest

from flopscale.profiler.collectives import OPS, allreduce_time_s, bus_factor, hierarchical_allreduce_time_s, parse_size
from flopscale.profiler.distributed import DistributedRunError, run_collectives


def test_bus_bandwidth_factors_are_the_standard_ones():
    # NCCL tests' definitions: all-reduce 2(n-1)/n, all-gather / reduce-scatter (n-1)/n
    assert bus_factor("all_reduce", 8) == pytest.approx(2 * 7 / 8)
    assert bus_factor("all_gather", 4) == pytest.approx(3 / 4)
    assert bus_factor("reduce_scatter", 2) == pytest.approx(1 / 2)
    assert bus_factor("broadcast", 16) == 1.0
    with pytest.raises(ValueError, match="unknown collective"):
        bus_factor("all_to_all_ish", 2)


def test_allreduce_time_models():
    gib = 2**30
    # 1 GiB on 8 ranks at 100 GB/s bus bandwidth: 2*7/8 GiB / 100e9
    assert allreduce_time_s(gib, 8, 100e9) == pytest.approx(gib * 1.75 / 100e9)
    assert allreduce_time_s(gib, 1, 100e9) == 0.0
    # one node: only the intra-node ring; many nodes: add the cross-node shard all-reduce
    one = hierarchical_allreduce_time_s(gib, 1, 8, 400e9, 50e9)
    assert one == pytest.approx(2 * 7 / 8 * gib / 400e9)
    many = hierarchical_allreduce_time_s(gib, 4, 8, 400e9, 50e9)
    assert many == pytest.approx(one + 2 * 3 / 4 * (gib / 8) / 50e9)


def test_parse_size():
    assert parse_size("1K") == 1024 and parse_size("4MiB") == 4 * 2**20 and parse_size("1G") == 2**30
    with pytest.raises(ValueError):
        parse_size("lots")


@pytest.mark.parametrize("nproc", [2, 4])
def test_collective_rows_are_positive_and_complete(tmp_path, nproc):
    rows = run_collectives(nproc, sizes="1K:16K", reps=2, out=tmp_path / "c.csv", timeout_s=120)
    sizes = {1024, 4096, 16384}
    assert {(r["op"], int(r["size_bytes"])) for r in rows} == {(op, s) for op in OPS for s in sizes}
    for r in rows:
        assert int(r["world_size"]) == nproc and r["backend"] == "gloo"
        t, alg, bus = float(r["time_s"]), float(r["algbw_Bps"]), float(r["busbw_Bps"])
        assert t > 0 and alg > 0
        assert alg == pytest.approx(int(r["size_bytes"]) / t, rel=1e-6)
        assert bus == pytest.approx(alg * bus_factor(r["op"], nproc), rel=1e-6)
    # the CSV is rewritten atomically row by row: no temporary file is left beside it
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".c.csv")]


@pytest.mark.parametrize("argv, needle", [
    (["--sizes", "1K:lots"], "not a size: 'lots'"),
    (["--ops", "all_reduce,all_to_all_ish"], "unknown collective 'all_to_all_ish'"),
    (["--out", "{tmp}/missing/c.csv"], "--out: directory does not exist"),
    (["--out", "{tmp}"], "is a directory"),
])
def test_bad_collectives_options_are_one_line_before_any_rank_starts(tmp_path, capsys, monkeypatch, argv, needle):
    from flopscale.profiler.commands.torchrun import main

    monkeypatch.delenv("RANK", raising=False)  # rank 0 says it; no process group is needed to refuse
    assert main(["collectives", *(a.replace("{tmp}", str(tmp_path)) for a in argv)]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and err.startswith("flopscale.profiler.distributed collectives")
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_a_failing_rank_is_named_and_finished_rows_are_kept(tmp_path):
    # rank 1 raises after its 4th step: initialised + 3 sizes of all_reduce done
    with pytest.raises(DistributedRunError) as exc:
        run_collectives(2, sizes="1K:64K", reps=2, out=tmp_path / "c.csv", timeout_s=120,
                        env={"FLOPSCALE_FAULT": "1:fail:4"})
    assert "rank 1 failed" in str(exc.value)
    assert len(exc.value.rows) >= 2  # the sizes measured before the failure
    assert all(r["op"] == "all_reduce" for r in exc.value.rows)


def test_a_hanging_rank_ends_within_the_timeout(tmp_path):
    with pytest.raises(DistributedRunError) as exc:
        run_collectives(2, sizes="1K:64K", reps=2, out=tmp_path / "c.csv", timeout_s=16,
                        env={"FLOPSCALE_FAULT": "1:hang:3"})
    assert "rank 1 did not finish" in str(exc.value)
    assert len(exc.value.rows) >= 1
