"""lawfit under bad input and faults: CSV rows of the wrong width, undecodable files, degenerate
fits, duplicate runs, absurd budgets, memory bounds, signals to forked workers, and a
property test of the CSV reader through the CLI."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pandas as pd
import pytest

from flopscale import lawfit
from flopscale.lawfit import fitting
from flopscale.lawfit._optim import Objective
from flopscale.profiler.cli import main

LAW = lawfit.Chinchilla(E=1.8, A=480.0, B=2100.0, alpha=0.35, beta=0.37)


def _runs(n, seed=0):
    rng = np.random.default_rng(seed)
    N = 10 ** rng.uniform(7.5, 10, n)
    D = 10 ** rng.uniform(9, 11.5, n)
    return pd.DataFrame({"N": N, "D": D, "loss": LAW(N=N, D=D) * np.exp(0.005 * rng.standard_normal(n))})


def _err_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [l for l in err.strip().splitlines() if ": warning:" not in l]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- #2: a row with one extra field must not shift the columns ----------------------------------
def test_csv_row_width_mismatch_is_an_error_naming_the_line(tmp_path, capsys):
    good = tmp_path / "good.csv"
    _runs(30).to_csv(good, index=False)
    lines = good.read_text().splitlines()
    bad = tmp_path / "extra.csv"
    bad.write_text("\n".join([lines[0]] + [l + ",7" for l in lines[1:]]) + "\n")   # every row one field more
    with pytest.raises(lawfit.LawfitError, match="line 2 has 4 fields, but the header has 3"):
        lawfit.fit(bad)
    short = tmp_path / "short.csv"
    short.write_text("\n".join(lines[:5] + [lines[5].rsplit(",", 1)[0]] + lines[6:]) + "\n")
    assert main(["fit", str(short)]) == 2
    assert "line 6 has 2 fields" in _err_line(capsys)


def test_non_utf8_files_are_one_line(tmp_path, capsys):
    csv = tmp_path / "latin1.csv"
    csv.write_bytes("N,D,loss\n1e9,2e10,2.5\n".encode() + b"\xff\xfe,1,2\n")
    assert main(["fit", str(csv)]) == 2
    assert "not UTF-8" in _err_line(capsys)
    fit = tmp_path / "fit.json"
    fit.write_bytes(b'{"format": "lawfit.fit/1", "x": "\xff"}')
    assert main(["allocate", "--fit", str(fit), "--compute", "1e21"]) == 2
    assert "not UTF-8" in _err_line(capsys)
    assert main(["allocate", "--fit", str(tmp_path), "--compute", "1e21"]) == 2
    assert "directory" in _err_line(capsys)


# -- #4: degenerate fits are "not identifiable", never converged with NaN ------------------------
@pytest.mark.parametrize("case", ["all_losses_equal", "one_run_repeated", "five_rows_five_params"])
def test_degenerate_fits_are_not_identifiable(case, tmp_path, capsys):
    df = _runs(40)
    if case == "all_losses_equal":
        df["loss"] = 2.5
    elif case == "one_run_repeated":
        df = pd.concat([df.iloc[:1]] * 30, ignore_index=True)
    else:
        df = df.iloc[:5]
    with pytest.raises(lawfit.LawfitError, match="not identifiable"):
        lawfit.fit(df, starts=50)
    path = tmp_path / "runs.csv"
    df.to_csv(path, index=False)
    assert main(["fit", str(path), "--starts", "50"]) == 2
    line = _err_line(capsys)
    assert "not identifiable" in line and "nan" not in line.lower()


def test_polish_message_never_reads_converged_abnormal():
    class P:
        success = False
        message = "ABNORMAL: "
    msg = fitting._polish_message(P())
    assert "ABNORMAL" not in msg and msg
    res = lawfit.fit(_runs(60), starts=100)
    assert res.converged and "ABNORMAL" not in res.summary()
    assert "nan" not in res.summary().lower()


# -- #9: duplicates flagged, absurd budgets refused ------------------------------------------------
def test_duplicate_runs_are_flagged():
    df = _runs(40)
    df = pd.concat([df, df.iloc[[3, 7]]], ignore_index=True)
    with pytest.warns(lawfit.LawfitWarning, match="2 of 42 rows repeat an earlier row"):
        res = lawfit.fit(df, starts=60)
    assert any("repeat an earlier row" in n for n in res.notes)


def test_allocate_refuses_bool_and_budgets_no_model_fits(capsys):
    for bad in (True, False, [1e21, True]):
        with pytest.raises(lawfit.LawfitError, match="number"):
            lawfit.allocate(bad)
    with pytest.raises(lawfit.LawfitError, match="too small"):
        lawfit.allocate(1e-30)
    tiny = lawfit.allocate(1e12)                     # a model of ~100 parameters: labelled
    assert tiny.N < 1e6 and any("extrapolation" in w for w in tiny.warnings)
    assert main(["allocate", "--compute", "1e-30"]) == 2
    line = _err_line(capsys)
    assert "1.4e+15" not in line and "1e-30" in line
    assert main(["allocate", "--compute", "1e-30", "--json"]) == 2
    assert capsys.readouterr().out == ""


# -- #1: memory bounded --------------------------------------------------------------------------
def test_objective_memory_does_not_grow_with_starts_times_rows():
    """One evaluation of 256 starts on 200,000 runs: before, a chunk of 256 starts held
    ~5 x 256 x 200,000 doubles (2 GB); now chunks are sized to stay near CHUNK_BYTES."""
    n = 200_000
    rng = np.random.default_rng(1)
    lN, lD = rng.uniform(17, 23, n), rng.uniform(20, 26, n)
    x = {"N": np.exp(lN), "D": np.exp(lD), "log_N": lN, "log_D": lD}
    obj = Objective(lawfit.Chinchilla(), x, np.log(LAW(N=x["N"], D=x["D"])), 1e-3)
    theta = np.tile([6.0, 7.6, 0.6, 0.35, 0.37], (256, 1)) + 0.01 * rng.standard_normal((256, 5))
    tracemalloc.start()
    f, g = obj(theta)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert np.all(np.isfinite(f)) and np.all(np.isfinite(g))
    assert peak < 120 * 1024 ** 2, f"{peak / 1024 ** 2:.0f} MiB"
    assert obj.chunk * 5 * n * 8 <= 2 * 32 * 1024 ** 2


def test_merge_keys_are_skipped_when_they_would_not_fit(monkeypatch):
    monkeypatch.setattr(fitting, "MERGE_BYTES", 1024)        # as if the runs were many
    res = lawfit.fit(_runs(50), starts=40)
    assert res.converged and not any("merged" in k for k in res.start_outcomes)


def test_huge_requests_are_refused_before_any_work(capsys):
    t0 = time.perf_counter()
    with pytest.raises(lawfit.LawfitError, match="limit"):
        lawfit.fit(_runs(30), starts=10 ** 8)
    with pytest.raises(lawfit.LawfitError, match="limit"):
        lawfit.fit(_runs(30), bootstrap=10 ** 8)
    with pytest.raises(lawfit.LawfitError, match="GiB"):       # 1000 weights per run of 1e6 runs: 16 GB
        lawfit.fit(_runs(1_000_000), bootstrap=1000)
    assert time.perf_counter() - t0 < 5
    assert main(["fit", "chinchilla_fig4_epoch", "--starts", "100000000"]) == 2
    assert "limit" in _err_line(capsys)


# -- #6: signals and forked workers --------------------------------------------------------------
def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_signal_to_fit_with_two_workers_leaves_no_worker(sig, tmp_path):
    csv = tmp_path / "runs.csv"
    _runs(3000, seed=2).to_csv(csv, index=False)        # a grid fit of several seconds
    proc = subprocess.Popen([sys.executable, "-m", "flopscale", "fit", str(csv), "--workers", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        kids: list[int] = []
        deadline = time.time() + 30
        while time.time() < deadline and not kids and proc.poll() is None:
            time.sleep(0.05)
            kids = _children(proc.pid)
        if not kids:
            pytest.skip("the fit finished or never forked a worker on this machine")
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
        deadline = time.time() + 10
        while time.time() < deadline and any(_alive(k) for k in kids):
            time.sleep(0.05)
        assert not any(_alive(k) for k in kids), "a worker outlived its parent"
        assert "Traceback" not in err
        if sig == signal.SIGTERM:
            assert proc.returncode != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_child_restores_default_signal_handlers(request):
    import multiprocessing

    from test_lawfit_parallel import in_a_fresh_process

    if in_a_fresh_process(request):
        return
    from flopscale.lawfit import _parallel

    def probe(i):
        return (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))

    old = signal.signal(signal.SIGTERM, lambda *a: None)
    try:
        if not _parallel.can_fork():
            pytest.skip("no fork here")
        out, n_child = _parallel.run_blocks(probe, 2, 2)
    finally:
        signal.signal(signal.SIGTERM, old)
    assert n_child == 1
    assert out[1] == (signal.SIG_DFL, signal.SIG_DFL)
    assert multiprocessing.current_process().name == "MainProcess"


# -- property test of the CSV reader through the CLI ------------------------------------------------
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

_cell = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64).map(repr),
                  st.sampled_from(["", "x", "1e9", "-3", "0", "nan", "inf", "1,2", '"', "1e400"]),
                  st.integers(-10, 10 ** 12).map(str))


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(rows=st.lists(st.lists(_cell, min_size=2, max_size=4), min_size=0, max_size=12),
       header=st.sampled_from(["N,D,loss", "params,tokens,loss", "N,D", "a,b,c,d", ""]))
def test_csv_reader_exits_0_with_finite_numbers_or_2_with_one_line(tmp_path_factory, rows, header):
    """Any small CSV through ``flopscale fit`` (in process): exit 0 with finite parameters, or
    exit 2 with exactly one line on stderr - nothing else."""
    import contextlib
    import io

    path = tmp_path_factory.mktemp("prop") / "runs.csv"
    path.write_text(header + "\n" + "\n".join(",".join(r) for r in rows) + "\n")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["fit", str(path), "--starts", "8", "--workers", "1", "--json"])
    lines = [l for l in err.getvalue().strip().splitlines() if ": warning:" not in l]
    if rc == 0:
        d = json.loads(out.getvalue())
        assert all(np.isfinite(v) for v in d["params"].values())
        assert not lines
    else:
        assert rc == 2, err.getvalue()
        assert len(lines) == 1 and "Traceback" not in err.getvalue(), err.getvalue()


def test_worker_count_follows_the_cpus_that_are_idle(monkeypatch):
    """Issue 14 part 5: on a machine whose other core is busy, fit's default is one process."""
    from flopscale.lawfit import _parallel

    samples = iter([{0: (0, 0), 1: (0, 0)}, {0: (95, 100), 1: (2, 100)}])   # cpu1 busy over the window
    monkeypatch.setattr(_parallel, "_cpu_times", lambda: next(samples))
    monkeypatch.setattr(_parallel.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.delenv(_parallel.ENV, raising=False)
    assert _parallel.resolve_workers(None) == 1
    samples = iter([{0: (0, 0), 1: (0, 0)}, {0: (95, 100), 1: (90, 100)}])
    monkeypatch.setattr(_parallel, "_cpu_times", lambda: next(samples))
    assert _parallel.free_cpus() == 2
    assert _parallel.resolve_workers(None, lazy=True) == _parallel.AUTO


def test_blas_is_pinned_to_one_thread_during_a_fit(monkeypatch):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    seen = []
    real = fitting._fit

    def spy(*a, **k):
        seen.append([i["num_threads"] for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas"])
        return real(*a, **k)

    monkeypatch.setattr(fitting, "_fit", spy)
    if not any(i.get("user_api") == "blas" for i in threadpoolctl.threadpool_info()):
        pytest.skip("no BLAS library threadpoolctl can see")
    lawfit.fit(_runs(40), starts=20)
    assert seen and seen[0] and all(n == 1 for n in seen[0])


def test_extreme_sizes_and_token_caps_are_refused_not_overflowed(capsys):
    for argv in (["allocate", "--params=1e200", "--json"], ["allocate", "--params=1.3e-183", "--json"],
                 ["allocate", "--compute=1e18", "--max-tokens=1.7e-187", "--json"]):
        assert main(argv) == 2, argv
        assert capsys.readouterr().out == ""
    with pytest.raises(lawfit.LawfitError, match="outside"):
        lawfit.optimal_for_params(1e200)
