"""The benchmark harness: correctness before speed, rows kept as they arrive."""
from __future__ import annotations

import csv
import math
import time

import numpy as np
import pytest
import torch

from flopscale.benchmarks.harness import COLUMNS, Context, CsvSink, markdown, measure, rel_err
from flopscale.profiler.cli import main


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


def test_a_failing_reference_makes_every_provider_an_error_row():
    ctx = Context(device="cpu", quick=True)

    def ref():
        raise RuntimeError("reference exploded")

    rows = list(measure(ctx, base={"op": "x"}, dtype="fp32", flops=1, nbytes=1,
                        providers=[("a", lambda: torch.ones(2)), ("b", lambda: torch.ones(2))], reference=ref))
    assert [(r["provider"], r["status"]) for r in rows] == [("a", "error"), ("b", "error")]
    assert "reference exploded" in rows[0]["note"]


def test_guarded_turns_a_crash_into_rows_for_the_providers_not_yet_reported():
    from flopscale.benchmarks.harness import guarded

    def shape_rows():
        yield {"provider": "torch", "status": "ok"}
        raise RuntimeError("illegal memory access")

    rows = list(guarded(shape_rows(), {"op": "m"}, ("torch", "kernels")))
    assert [(r["provider"], r["status"]) for r in rows] == [("torch", "ok"), ("kernels", "error")]
    assert "illegal memory access" in rows[1]["note"] and rows[1]["op"] == "m"

    def oom_rows():
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        yield  # pragma: no cover

    rows = list(guarded(oom_rows(), {"op": "m"}, ("torch",)))
    assert rows[0]["status"] == "skipped" and "out of memory" in rows[0]["note"]
    # everything already reported: the failure still leaves one row
    rows = list(guarded(shape_rows(), {"op": "m"}, ("torch",)))
    assert [r["status"] for r in rows] == ["ok", "error"] and rows[1]["provider"] == "-"


def test_a_failing_suite_is_a_row_and_the_run_goes_on_with_both_tables(tmp_path, monkeypatch):
    import flopscale.benchmarks.run as brun

    def fake_rows(name, ctx):
        yield {"suite": name, "op": "op1", "provider": "p", "status": "ok"}
        if name == "matmul":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(brun, "suite_rows", fake_rows)
    rows, header, csv_path, md_path = brun.run(["matmul", "lawfit"], quick=True, out=tmp_path, echo=None)
    assert [(r["suite"], r["status"]) for r in rows] == [("matmul", "ok"), ("matmul", "error"), ("lawfit", "ok")]
    assert "illegal memory access" in rows[1]["note"]
    with open(csv_path) as fh:
        assert len(list(csv.DictReader(fh))) == 3
    text = md_path.read_text()
    assert text.count("| op1 |") == 2 and "interrupted" not in text


def test_the_time_limit_skips_the_rest_and_the_markdown_can_be_rebuilt(tmp_path, monkeypatch):
    import time

    import flopscale.benchmarks.run as brun

    def slow_rows(name, ctx):
        for i in range(100):
            time.sleep(0.02)
            yield {"suite": name, "op": f"op{i}", "provider": "p", "status": "ok", "median_ms": 1.25}

    monkeypatch.setattr(brun, "suite_rows", slow_rows)
    monkeypatch.setenv("FLOPSCALE_BENCH_TIME_LIMIT_S", "0.1")
    rows, header, csv_path, md_path = brun.run(["matmul", "attention"], quick=True, out=tmp_path, echo=None)
    done = [r for r in rows if r["status"] == "ok"]
    assert 1 <= len(done) < 20
    assert [r["suite"] for r in rows if r["status"] == "skipped"] == ["matmul", "attention"]
    md_path.unlink()
    rebuilt = brun.markdown_from_csv(csv_path)
    text = rebuilt.read_text()
    assert rebuilt == md_path and text.count("| p |") == len(done) and "1.25" in text
    assert text.count("| skipped |") == 2


def test_sigterm_ends_the_run_with_both_tables(tmp_path, monkeypatch):
    import os
    import signal

    import flopscale.benchmarks.run as brun

    def term():  # what `timeout` sends, arriving while a provider runs
        os.kill(os.getpid(), signal.SIGTERM)
        return torch.ones(3)

    def rows_then_term(name, ctx):
        yield {"suite": name, "op": "first", "provider": "p", "status": "ok"}
        # inside measure(), whose per-provider handler must not swallow the termination
        yield from measure(ctx, base={"suite": name, "op": "never"}, dtype="fp32", flops=1, nbytes=1,
                           providers=[("p", term)] * 1000, reference=None)

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(brun, "suite_rows", rows_then_term)
    rows, header, csv_path, md_path = brun.run(["matmul", "attention"], quick=True, out=tmp_path, echo=None)
    assert [r["op"] for r in rows][:1] == ["first"] and len(rows) < 10
    assert "terminated" in md_path.read_text() and signal.getsignal(signal.SIGTERM) == before


def test_lawfit_suite_is_skipped_with_the_reason_when_its_data_is_absent(monkeypatch, tmp_path):
    import flopscale.benchmarks.bench_lawfit as bl
    from flopscale.benchmarks.run import suite_rows

    def missing():
        raise FileNotFoundError(f"no such file: {tmp_path / 'missing.csv'}")

    monkeypatch.setattr(bl, "_data", missing)
    rows = list(suite_rows("lawfit", Context(device="cpu", quick=True)))
    assert len(rows) == 1 and rows[0]["status"] == "skipped"
    assert "missing.csv" in rows[0]["note"]


def test_lawfit_baselines_evaluate_the_same_objective_as_lawfit():
    """The per-start loops of the lawfit benchmark time the objective lawfit minimises: the
    replication-form function and the analytic one agree with lawfit's fused objective, and the
    analytic gradient with central differences."""
    import flopscale.benchmarks.bench_lawfit as bl
    from flopscale import lawfit
    from flopscale.lawfit._optim import Objective
    from flopscale.lawfit.fitting import _inputs_of

    df = bl._data()
    x = _inputs_of(df, ["N", "D"])
    logy = np.log(df["loss"].to_numpy())
    obj = Objective(lawfit.Chinchilla(), x, logy, bl.DELTA)
    rng = np.random.default_rng()
    theta = np.column_stack([rng.uniform(3, 9, 20), rng.uniform(3, 9, 20), rng.uniform(0.3, 0.8, 20),
                             rng.uniform(0.1, 0.6, 20), rng.uniform(0.1, 0.6, 20)])
    f, g = obj(theta)
    w = rng.integers(0, 3, len(logy)).astype(float)
    fw, _ = Objective(lawfit.Chinchilla(), x, logy, bl.DELTA, weights=w)(theta)
    for i, th in enumerate(theta):
        assert bl.replication_objective(th, df["N"].to_numpy(), df["D"].to_numpy(), df["loss"].to_numpy()) \
            == pytest.approx(f[i], rel=1e-12)
        fa, ga = bl.objective_and_gradient(th, x["log_N"], x["log_D"], logy)
        assert fa == pytest.approx(f[i], rel=1e-12)
        np.testing.assert_allclose(ga, g[i], rtol=1e-9, atol=1e-12 * np.abs(g[i]).max())
        assert bl.objective_and_gradient(th, x["log_N"], x["log_D"], logy, w)[0] == pytest.approx(fw[i], rel=1e-12)
    th = theta[0]
    for j in range(5):
        e = np.zeros(5)
        e[j] = 1e-6
        fd = (bl.objective_and_gradient(th + e, x["log_N"], x["log_D"], logy)[0]
              - bl.objective_and_gradient(th - e, x["log_N"], x["log_D"], logy)[0]) / 2e-6
        assert bl.objective_and_gradient(th, x["log_N"], x["log_D"], logy)[1][j] == pytest.approx(fd, rel=1e-4, abs=1e-9)


# ------------------------------------------------------------ signals, file names, selection


def _fake_suite(n_rows):
    def rows(name, ctx):
        for i in range(n_rows):
            yield {"suite": name, "op": f"op{i}", "provider": "p", "status": "ok", "median_ms": 1.0 + i}
    return rows


def test_sigterm_makes_the_command_exit_143_and_keeps_the_rows(tmp_path, monkeypatch, capsys):
    import os
    import signal

    import flopscale.benchmarks.run as brun

    def rows_then_term(name, ctx):
        yield {"suite": name, "op": "first", "provider": "p", "status": "ok"}
        os.kill(os.getpid(), signal.SIGTERM)  # what `timeout` or a scheduler sends
        yield {"suite": name, "op": "never", "provider": "p", "status": "ok"}

    monkeypatch.setattr(brun, "suite_rows", rows_then_term)
    rc = main(["bench", "--only", "overhead", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 143 and "terminated" in err
    (csv_path,) = tmp_path.glob("*.csv")
    with open(csv_path) as fh:
        assert [r["op"] for r in csv.DictReader(fh)] == ["first"]


def test_a_second_run_the_same_day_never_overwrites_the_first(tmp_path, monkeypatch):
    import flopscale.benchmarks.run as brun

    monkeypatch.setattr(brun, "suite_rows", _fake_suite(2))
    _, _, csv1, md1 = brun.run(["overhead"], quick=True, out=tmp_path, echo=None)
    first = csv1.read_text()
    _, _, csv2, md2 = brun.run(["overhead"], quick=True, out=tmp_path, echo=None)
    _, _, csv3, _ = brun.run(["overhead"], quick=True, out=tmp_path, echo=None)
    assert csv1.read_text() == first and md1.exists()
    assert csv2 != csv1 and csv2.stem == csv1.stem + "-2" and md2.stem == csv2.stem
    assert csv3.stem == csv1.stem + "-3"


def test_an_existing_table_is_kept_and_a_run_without_rows_leaves_no_file(tmp_path, monkeypatch):
    import flopscale.benchmarks.run as brun

    stem = f"{brun.card_slug()}-{time.strftime('%Y-%m-%d')}"
    (tmp_path / f"{stem}.csv").write_text("earlier results\n")

    def interrupted(name, ctx):
        raise KeyboardInterrupt
        yield  # pragma: no cover

    monkeypatch.setattr(brun, "suite_rows", interrupted)
    with pytest.raises(KeyboardInterrupt):
        brun.run(["overhead"], quick=True, out=tmp_path, echo=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{stem}.csv"]  # no header-only -2 file
    assert (tmp_path / f"{stem}.csv").read_text() == "earlier results\n"


@pytest.mark.parametrize("only", [",", "", " , "])
def test_an_empty_selection_is_refused_in_one_line(capsys, only, tmp_path):
    assert main(["bench", "--only", only, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "names no suite" in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_progress_counts_rows_with_eta_on_a_terminal_only(tmp_path, monkeypatch, capsys):
    import sys

    import flopscale.benchmarks.run as brun

    monkeypatch.setattr(brun, "suite_rows", _fake_suite(3))
    monkeypatch.setattr(brun, "suite_size", lambda name, ctx: 3)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["bench", "--only", "overhead,lawfit", "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "rows 1/6" in err and "rows 6/6" in err and "ETA" in err
    assert main(["bench", "--only", "overhead", "--out", str(tmp_path / "b"), "--json"]) == 0
    assert "[bench]" not in capsys.readouterr().err  # off with --json
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert main(["bench", "--only", "overhead", "--out", str(tmp_path / "c")]) == 0
    assert "[bench]" not in capsys.readouterr().err  # off when stderr is not a terminal


def test_no_import_statement_in_the_profiler_names_the_benchmarks():
    """Arrows point one way: benchmarks -> profiler; the bench command finds its runner by name."""
    import ast
    from pathlib import Path

    import flopscale.profiler as prof_pkg

    root = Path(prof_pkg.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            if any(n.split(".")[:2] == ["flopscale", "benchmarks"] or n.split(".")[0] == "benchmarks" for n in names):
                offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert offenders == []


def test_unstable_timings_and_shares_above_the_ceiling_are_flagged_in_the_note(monkeypatch):
    from types import SimpleNamespace

    import flopscale.benchmarks.harness as h
    from flopscale.profiler.timing import Timing

    shaky = Timing.from_times([0.002, 0.003, 0.004, 0.007, 0.008])
    monkeypatch.setattr(h, "time_fn", lambda fn, ctx, **k: (shaky, ""))
    ctx = Context(device="cuda", quick=True, ceilings=SimpleNamespace(flops={"fp32": 1e9}, bandwidth=None))
    (row,) = h.measure(ctx, base={}, dtype="fp32", flops=8e6, nbytes=0, providers=[("p", lambda: None)],
                       reference=None)
    assert row["pct_ceiling"] == pytest.approx(200.0)  # 8e6 FLOP in 4 ms = 2e9 FLOP/s against 1e9
    assert "unstable" in row["note"] and "impossible" in row["note"]
    assert h.ceiling_note(99.0) == "" and h.ceiling_note(float("nan")) == ""


def test_an_unusable_out_folder_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    import flopscale.benchmarks.run as brun

    def no_work(*a, **k):
        raise AssertionError("the benchmarks ran before --out was checked")

    monkeypatch.setattr(brun, "run", no_work)
    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "file", tmp_path / "file" / "sub"):
        assert main(["bench", "--only", "overhead", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "--out" in err and err.count("\n") == 1 and "Traceback" not in err


# ------------------------------------------------------------- rows each suite says it will yield


@pytest.mark.parametrize("quick", [True, False])
@pytest.mark.parametrize("suite", ["matmul", "attention", "blocksparse"])
def test_expected_rows_is_the_number_of_rows_a_cpu_run_yields(suite, quick):
    """Without a GPU these suites run a tiny interpreter pass and list the GPU rows as skipped:
    cheap enough to run here and count."""
    import importlib

    from flopscale.benchmarks.run import suite_rows

    mod = importlib.import_module(f"flopscale.benchmarks.bench_{suite}")
    ctx = Context(device="cpu", quick=quick, time_budget_s=0.05)
    rows = list(suite_rows(suite, ctx))
    assert {r["suite"] for r in rows} == {suite}
    assert any(r["status"] == "skipped" for r in rows) and any(r["status"] == "ok" for r in rows)
    assert mod.expected_rows(ctx) == len(rows)


def test_expected_rows_of_matmul_on_a_gpu_follows_its_loops(monkeypatch):
    """A dry enumeration of the GPU branch: every (dtype, shape) job is replaced by one row per
    provider, which is what the harness yields for it."""
    import flopscale.benchmarks.bench_matmul as bm

    def one_row_per_provider(rows, base, names):
        rows.close()  # never started: no tensors
        for p in names:
            yield dict(base, provider=p, status="ok")

    monkeypatch.setattr(bm, "guarded", one_row_per_provider)
    for capability in ((8, 0), (9, 0)):  # without and with fp8
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, c=capability: c)
        for quick in (True, False):
            ctx = Context(device="cuda", quick=quick)
            assert bm.expected_rows(ctx) == len(list(bm.rows(ctx)))


@pytest.mark.parametrize("forks", [True, False])
def test_expected_rows_of_lawfit_is_the_number_of_rows_it_reports(monkeypatch, forks):
    """The lawfit suite takes minutes: run its row logic with the fits, loops and refits stubbed."""
    import contextlib
    from types import SimpleNamespace

    import flopscale.benchmarks.bench_lawfit as bl
    import flopscale.lawfit._parallel as par
    import flopscale.lawfit.fitting as fitting
    from flopscale import lawfit
    from flopscale.benchmarks.run import suite_rows

    law = lawfit.Chinchilla()
    params = {k: float(v) for k, v in law._from_theta(law._to_theta(
        {"E": 1.8, "A": 480.0, "B": 2000.0, "alpha": 0.35, "beta": 0.37})).items()}
    fake_fit = SimpleNamespace(processes=1, objective=1.0, params=params, n_at_best=3, start_outcomes={})
    monkeypatch.setattr(par, "can_fork", lambda: forks)
    monkeypatch.setattr(par, "usable_cpus", lambda: 2)
    monkeypatch.setattr(lawfit, "fit", lambda *a, **k: fake_fit)
    monkeypatch.setattr(bl, "_Spinner", contextlib.nullcontext)
    monkeypatch.setattr(bl, "_scipy_loop", lambda starts, data, analytic: (
        np.tile(law._to_theta(params), (2, 1)), np.array([1.0, 2.0])))
    monkeypatch.setattr(fitting, "_bootstrap", lambda *a, **k: ({"alpha": np.array([0.3, 0.4])}, 0, 0))
    monkeypatch.setattr(bl, "minimize", lambda *a, **k: None)
    ctx = Context(device="cpu", quick=True)
    rows = list(suite_rows("lawfit", ctx))
    assert all(r["status"] == "ok" for r in rows)
    assert bl.expected_rows(ctx) == len(rows) == (10 if forks else 7)  # 3 rows per worker count + 4
    # without its data set the suite is one skipped row, and says so in advance
    monkeypatch.setattr(bl, "_data", lambda: (_ for _ in ()).throw(FileNotFoundError("no data")))
    assert bl.expected_rows(ctx) == len(list(suite_rows("lawfit", ctx))) == 1


def test_expected_rows_of_collectives_with_one_rank_is_the_skipped_row(monkeypatch):
    import flopscale.benchmarks.bench_collectives as bc

    monkeypatch.setenv("FLOPSCALE_COLLECTIVES_NPROC", "1")
    ctx = Context(device="cpu", quick=True)
    rows = list(bc.rows(ctx))
    assert [r["status"] for r in rows] == ["skipped"] and bc.expected_rows(ctx) == 1
    monkeypatch.setenv("FLOPSCALE_COLLECTIVES_NPROC", "2")
    monkeypatch.setenv("FLOPSCALE_COLLECTIVES_SIZES", "1K:1M")
    assert bc.expected_rows(ctx) == 4 * 6  # four collectives x 1, 4, 16, 64, 256 KiB and 1 MiB


def test_every_suite_declares_its_row_count():
    """With every suite's count known, ``flopscale bench`` shows rows done / total and an ETA."""
    from flopscale.benchmarks.run import SUITES, Progress, suite_size

    ctx = Context(device="cpu", quick=True)
    sizes = {name: suite_size(name, ctx) for name in SUITES}
    assert all(isinstance(v, int) and v > 0 for v in sizes.values()), sizes
    assert Progress(list(SUITES), sizes).total == sum(sizes.values())


class _GpuBranchOnCpu(Context):
    """Takes a suite's GPU branch with CPU tensors: for dry enumerations of its rows."""

    @property
    def on_gpu(self) -> bool:
        return True


def _one_row_per_provider(ctx, *, base, providers, dtype, flops, nbytes, **_):
    for name, _fn in providers:  # what the harness's measure yields, without calling anything
        yield dict(base, provider=name, dtype=dtype, flops=flops, bytes=nbytes, status="ok")


@pytest.mark.parametrize("quick", [True, False])
def test_expected_rows_of_attention_and_blocksparse_on_a_gpu_follow_their_loops(monkeypatch, quick):
    """A dry enumeration of the GPU branches at small sizes: every measurement replaced by one
    row per provider (the harness's contract), everything else as it runs."""
    import flopscale.benchmarks.bench_attention as ba
    import flopscale.benchmarks.bench_blocksparse as bs

    ctx = _GpuBranchOnCpu(device="cpu", quick=quick)
    monkeypatch.setattr(ba, "measure", _one_row_per_provider)
    monkeypatch.setattr(ba, "SEQS", (16, 32, 64, 128, 256))
    monkeypatch.setattr(ba, "SEQS_QUICK", (16, 64, 256))
    monkeypatch.setattr(ba, "TOKENS", 256)
    monkeypatch.setattr(ba, "D_MODEL", 256)
    rows = list(ba.rows(ctx))
    assert {r["pass"] for r in rows} == {"fwd", "bwd"} and all(r["status"] == "ok" for r in rows)
    assert ba.expected_rows(ctx) == len(rows)

    monkeypatch.setattr(bs, "measure", _one_row_per_provider)
    monkeypatch.setattr(bs, "MATMUL_N", 128)
    monkeypatch.setattr(bs, "ATTENTION_SHAPE", (1, 2, 128, 16))
    monkeypatch.setattr(bs, "BLOCK", 16)
    rows = list(bs.rows(ctx))
    assert all(r["status"] in ("ok", "skipped") for r in rows), [r.get("note") for r in rows]
    assert bs.expected_rows(ctx) == len(rows)
