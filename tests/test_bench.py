"""The benchmark harness: correctness before speed, rows kept as they arrive."""
from __future__ import annotations

import csv
import math

import pytest
import torch

from benchmarks.harness import COLUMNS, Context, CsvSink, markdown, measure, rel_err
from profiler.cli import main


def test_rel_err_is_relative_and_nan_never_passes():
    ref = torch.randn(50, dtype=torch.float64)
    assert rel_err(ref, ref) == 0.0
    assert rel_err(2 * ref, ref) == pytest.approx(1.0)
    bad = ref.clone()
    bad[3] = float("nan")
    assert rel_err(bad, ref) == math.inf


def test_a_wrong_provider_is_reported_wrong_and_not_timed():
    a = torch.randn(9, 5)
    b = torch.randn(5, 7)
    ctx = Context(device="cpu", quick=True)
    rows = list(measure(
        ctx, base={"op": "matmul"}, dtype="fp32", flops=2 * 9 * 7 * 5, nbytes=0,
        providers=[("right", lambda: a @ b), ("wrong", lambda: (a @ b) + 1e-2 * torch.randn(9, 7))],
        reference=lambda: a.double() @ b.double(),
    ))
    assert [r["provider"] for r in rows] == ["right", "wrong"]
    assert rows[0]["status"] == "ok" and rows[0]["rel_err"] < 1e-6
    assert rows[1]["status"] == "wrong" and "median_ms" not in rows[1]


def test_a_failing_provider_is_an_error_row_not_a_crash():
    ctx = Context(device="cpu", quick=True)

    def boom():
        raise RuntimeError("no kernel for this shape")

    rows = list(measure(ctx, base={}, dtype="fp32", flops=1, nbytes=1, providers=[("x", boom)], reference=None))
    assert rows[0]["status"] == "error" and "no kernel" in rows[0]["note"]


def test_csv_rows_are_on_disk_before_the_run_ends(tmp_path):
    path = tmp_path / "t.csv"
    sink = CsvSink(path)
    sink.write({"op": "matmul", "provider": "a", "median_ms": 1.5, "status": "ok"})
    # read while the sink is still open: the row is already there
    with open(path) as fh:
        got = list(csv.DictReader(fh))
    assert len(got) == 1 and got[0]["median_ms"] == "1.5"
    assert list(got[0].keys()) == list(COLUMNS)
    sink.close()


def test_markdown_has_every_row():
    rows = [{"op": "matmul", "provider": p, "status": "ok"} for p in ("a", "b", "c")]
    text = markdown(rows, {"device": "x"})
    assert text.count("| matmul |") == 3


def test_unknown_suite_is_one_clear_error(capsys):
    assert main(["bench", "--only", "matmul,nonsense"]) == 2
    err = capsys.readouterr().err
    assert "nonsense" in err and "Traceback" not in err
