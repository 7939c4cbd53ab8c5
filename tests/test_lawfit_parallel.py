"""Conditioned coordinates, blocks of starts and worker processes in lawfit's batched fits."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from flopscale import lawfit
from flopscale.lawfit._errors import LawfitError
from flopscale.lawfit._optim import BatchResult, Objective, _duplicates, batched_lbfgs
from flopscale.lawfit._parallel import can_fork, resolve_workers, run_blocks
from flopscale.lawfit.fitting import SAME_OPTIMUM_RTOL, SPLIT_MIN, _inputs_of, _multistart

from test_lawfit import chinchilla_240

COLS = {"N": "Model Size", "C": "Training FLOP"}


def _inputs(df: pd.DataFrame):
    N = df["Model Size"].to_numpy()
    D = df["Training FLOP"].to_numpy() / (6 * N)
    return {"N": N, "D": D, "log_N": np.log(N), "log_D": np.log(D)}, np.log(df["loss"].to_numpy())


def test_conditioned_objective_is_the_same_function_in_new_coordinates():
    """f_z(z) = f(z T) and grad_z = T grad_theta; the starts map there and back exactly."""
    df = chinchilla_240().sample(frac=0.7, random_state=np.random.default_rng().integers(1 << 30))
    x, y = _inputs(df)
    obj = Objective(lawfit.Chinchilla(), x, y, 1e-3)
    con = obj.conditioned()
    assert not con.identity
    rng = np.random.default_rng()
    theta = np.column_stack([rng.uniform(0, 25, 50), rng.uniform(0, 25, 50), rng.uniform(-1, 1, 50),
                             rng.uniform(0, 2, 50), rng.uniform(0, 2, 50)])
    z = con.to_internal(theta)
    np.testing.assert_allclose(con.to_external(z), theta, rtol=1e-13, atol=1e-12)
    # the centred intercept: a - alpha log N = a' - alpha (log N - mean log N)
    np.testing.assert_allclose(z[:, 0], theta[:, 0] - theta[:, 3] * x["log_N"].mean(), rtol=1e-13, atol=1e-12)
    f0, g0 = obj(theta)
    f1, g1 = con(z)
    np.testing.assert_allclose(f1, f0, rtol=1e-10)   # the exponents round differently
    # gradient in z against central differences of f_z
    i = int(np.argmin(np.abs(f1 - np.median(f1))))
    for j in range(5):
        e = np.zeros(5)
        e[j] = 1e-6 * max(1.0, abs(z[i, j]))
        fd = (con(z[i:i + 1] + e)[0][0] - con(z[i:i + 1] - e)[0][0]) / (2 * e[j])
        assert g1[i, j] == pytest.approx(fd, rel=1e-4, abs=1e-9)
    np.testing.assert_allclose(con.logpred(z), obj.logpred(theta), rtol=1e-12, atol=1e-11)   # log space
    # laws without a conditioning are left alone
    assert Objective(lawfit.laws.KaplanN(), x, y, 1e-3).conditioned().identity


def test_blocks_never_merge_across_labels_and_keep_their_own_best():
    rng = np.random.default_rng()
    n = int(rng.integers(5, 30))
    K = rng.standard_normal((6, n))
    K = np.concatenate([K, K[[1, 4]]])                       # rows 6, 7 copy rows 1, 4
    same = _duplicates(K, 1e-6, labels=np.array([0, 0, 0, 1, 1, 1, 0, 0]))
    assert same[6] == 1 and same[7] == 7                     # row 4 is in the other block
    # one batch with labels == one call per block (a quadratic per start: the paths are per start)
    P, S = 4, 40
    c = rng.standard_normal((S, P))
    H = np.diag(rng.uniform(0.5, 5.0, P))

    def fg(X, rows):
        r = X - c[rows]
        return 0.5 * np.einsum("ij,jk,ik->i", r, H, r) + rows.astype(float), r @ H

    x0 = rng.standard_normal((S, P)) * 3
    lab = (np.arange(S) >= S // 2).astype(int)
    both = batched_lbfgs(fg, x0, labels=lab, abandon_after=1, abandon_ratio=1.5, gtol=1e-10, fscale=0, ftol=0)
    parts = [batched_lbfgs(lambda X, r, o=o: fg(X, r + o), x0[o:o + S // 2], abandon_after=1, abandon_ratio=1.5,
                           gtol=1e-10, fscale=0, ftol=0) for o in (0, S // 2)]
    joined = BatchResult.join(parts, [np.arange(S // 2), np.arange(S // 2, S)], S)
    np.testing.assert_array_equal(both.status, joined.status)
    np.testing.assert_allclose(both.x, joined.x, rtol=1e-12, atol=1e-12)
    # the second block's best is ~S/2 higher: with one shared best every start there is abandoned
    assert (both.status[S // 2:] != 4).any()


def _square(i):
    return np.arange(5) * i


def in_a_fresh_process(request) -> bool:
    """Run the calling test again in a new pytest process when this one cannot fork workers
    (lawfit forks only while the process has a single thread; an earlier test may have left
    threads behind, e.g. torch.compile's compile workers). True when the child ran it."""
    if can_fork() or os.environ.get("LAWFIT_TEST_CHILD"):
        return False
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", request.node.nodeid],
                          cwd=request.config.rootpath, env={**os.environ, "LAWFIT_TEST_CHILD": "1"},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout, proc.stdout[-2000:]
    return True


def test_run_blocks_redoes_a_block_whose_worker_fails_or_dies(request):
    if in_a_fresh_process(request):
        return
    if not can_fork():
        pytest.skip("forked workers are used only on Linux without other threads")
    parent = os.getpid()
    out, n_child = run_blocks(_square, 2, 2)
    assert n_child == 1 and [list(o) for o in out] == [[0] * 5, [0, 1, 2, 3, 4]]

    def raising(i):
        if os.getpid() != parent:
            raise RuntimeError("only in the worker")
        return _square(i)

    def dying(i):
        if os.getpid() != parent:
            os._exit(3)
        return _square(i)

    for fn in (raising, dying):
        out, n_child = run_blocks(fn, 3, 2)
        assert n_child == 0 and [list(o) for o in out] == [list(_square(i)) for i in range(3)]

    def broken(i):
        raise ValueError("a bug in the block itself")

    with pytest.raises(ValueError, match="a bug in the block itself"):
        run_blocks(broken, 2, 2)


def test_workers_are_validated(monkeypatch):
    monkeypatch.delenv("LAWFIT_WORKERS", raising=False)
    assert resolve_workers(None) >= 1 and resolve_workers(3) == 3
    for bad in (0, -1, 1.5, "two"):
        with pytest.raises(LawfitError, match="workers must be a positive integer"):
            resolve_workers(bad)
    monkeypatch.setenv("LAWFIT_WORKERS", "0")
    with pytest.raises(LawfitError, match=r"\$LAWFIT_WORKERS"):
        resolve_workers(None)
    monkeypatch.setenv("LAWFIT_WORKERS", "1")
    assert resolve_workers(None) == 1


def test_the_grid_fit_is_the_same_with_one_or_two_workers():
    """The 4,500 starts are deduplicated, then split into fixed halves whatever the CPU count;
    one worker runs the halves as one labelled batch, two run them in two processes."""
    df = chinchilla_240()
    one = lawfit.fit(df, columns=COLS, workers=1)
    two = lawfit.fit(df, columns=COLS, workers=2)
    assert one.n_starts == two.n_starts == 4500
    assert one.processes == 1 and two.processes == (2 if can_fork() else 1)
    for k, v in one.params.items():
        assert two.params[k] == pytest.approx(v, rel=1e-6)
    assert one.objective == pytest.approx(two.objective, rel=1e-12)
    merged = "merged with a duplicate start (counted in its outcome)"
    assert one.start_outcomes[merged] == two.start_outcomes[merged] > 2000
    # a start whose end objective sits at the 1e-5 threshold may land either side (rounding)
    assert abs(one.n_at_best - two.n_at_best) <= 3
    assert 4500 - one.start_outcomes[merged] >= SPLIT_MIN         # the split was exercised


def test_merging_duplicate_starts_changes_no_competitive_outcome():
    """Merged starts take the outcome of the start they were merged into.  Against every one
    of Hoffmann's 4,500 starts run alone (Besiroglu et al. 2024's 240 runs): the same starts
    reach the best optimum, and a start whose end objective changes is in a degenerate fit
    (at least 10x the best objective), never near the best."""
    df = chinchilla_240()
    df = pd.DataFrame({"N": df["Model Size"], "D": df["Training FLOP"] / (6 * df["Model Size"]), "loss": df["loss"]})
    x = _inputs_of(df, ["N", "D"])
    y = np.log(df["loss"].to_numpy())
    law = lawfit.Chinchilla()
    obj = Objective(law, x, y, 1e-3).conditioned()
    grid = law._starts(x, y, None, None)
    merged = _multistart(obj, grid, workers=1)
    alone = _multistart(obj, grid, workers=1, merge=False)
    assert merged.n_merged > 2000 and alone.n_merged == 0
    assert merged.nfev < 0.7 * alone.nfev                    # what merging is for
    best = min(merged.f.min(), alone.f.min())
    at_best = lambda f: f <= best * (1 + SAME_OPTIMUM_RTOL)  # noqa: E731
    np.testing.assert_array_equal(at_best(merged.f), at_best(alone.f))
    changed = np.abs(merged.f - alone.f) > 1e-5 * alone.f
    assert np.all(np.minimum(merged.f, alone.f)[changed] >= 10 * best)


def test_a_start_hidden_behind_a_dominant_term_is_not_merged():
    """Equal predictions are not enough: with A = e^25 the A term hides B, beta and E, which
    differ between these two starts and matter once A shrinks."""
    df = chinchilla_240()
    x, y = _inputs(df)
    obj = Objective(lawfit.Chinchilla(), x, y, 1e-3)
    th = np.array([[25.0, 5.0, 0.5, 0.0, 0.3], [25.0, 10.0, -0.5, 0.0, 0.6],   # same predictions
                   [0.0, 6.0, 0.6, 2.0, 0.3], [0.0, 6.0, 0.6, 2.5, 0.3]])     # A term below 1e-7 of the loss
    lp = obj.logpred(th)
    assert np.max(np.abs(lp[0] - lp[1])) < 1e-6 and np.max(np.abs(lp[2] - lp[3])) < 1e-12
    dup = _duplicates(obj.merge_key(th), 1e-6)
    assert list(dup) == [0, 1, 2, 2]
