"""lawfit speed: the batched 4,500-start Chinchilla fit against per-start scipy L-BFGS-B loops,
measured side by side in one run on the same data, and the time of 1,000 bootstrap refits.

Data: the shipped data set ``chinchilla_fig4_epoch`` (``lawfit.datasets``) without its five
highest-loss runs (240 runs), D = C/(6N), as in Besiroglu et al. 2024.  Providers:

* ``lawfit batched, W workers``: ``lawfit.fit(df, workers=W)`` end to end (Hoffmann's 4,500-start
  grid, duplicate starts merged, batched L-BFGS with analytic gradients, scipy polish of the best
  end points).  W = 2 is what ``fit`` does on a 2-CPU machine (two forked processes, each
  running half of the starts); W = 1 is one process.  Both give the same fit.
* ``scipy per-start, finite diff``: **the baseline of the issue** -- the loop as the Chinchilla
  replication code runs it: ``scipy.optimize.minimize(objective, start, args=(N, D, losses),
  method="L-BFGS-B")`` from each start in turn, default options, no gradient (scipy
  differentiates numerically), with a plain numpy objective in the replication's form (logs of
  the data taken inside the objective, Huber by ``np.where``).  One process, one core.
* ``scipy per-start, analytic grad``: a stronger baseline the replication does not use: the same
  loop with a plain numpy objective that also returns its analytic gradient.
* ``..., loaded``: lawfit again while a competing process spins on one core for the whole fit
  (the "loaded" condition; ``auto workers`` is ``fit``'s own choice from the CPUs idle at the
  start).  ``slowdown`` in the note is the loaded time over the idle time of the same provider.

Every provider is timed in each of ``reps`` rounds in the same run (interleaved round by round,
so a burst of load on a shared machine hits all of them; lawfit's fits, half a second each,
three times a round); ``time_s`` is the fastest repetition, the note lists them all.  ``speedup`` in a row is that provider's time divided by the time of lawfit with
the most workers: how many times faster lawfit is; the note also gives the ratio to lawfit on
one process.  ``--quick`` runs the scipy loops on a random 5% of the starts and extrapolates
their time to 4,500 (said in the note); the full run loops over all 4,500 starts twice (about
3 minutes on 2 cores).  Run as a program, BLAS is pinned to one thread for every provider.

    python -m flopscale.benchmarks.bench_lawfit [--quick] [--out DIR]
"""
from __future__ import annotations

import os

if __name__ == "__main__":
    # Single-threaded BLAS for every provider: the per-start scipy loop otherwise pays for
    # OpenBLAS thread hand-offs on tiny vectors, which on a busy 2-core machine made it ~15x
    # slower than single-threaded and would inflate the speedup.  (Only effective when this
    # file is the program; 'flopscale bench' reports the variable as it finds it.)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import csv
import datetime as _dt
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scipy
from scipy.optimize import minimize

COLUMNS = ("op", "shape", "provider", "status", "time_s", "reps", "speedup", "objective", "rel_err",
           "E", "A", "B", "alpha", "beta", "starts_at_best", "note")


def _data() -> pd.DataFrame:
    from flopscale import lawfit

    df = lawfit.datasets.load("chinchilla_fig4_epoch").sort_values("loss").iloc[:-5].reset_index(drop=True)
    return pd.DataFrame({"N": df["Model Size"], "D": df["Training FLOP"] / (6 * df["Model Size"]), "loss": df["loss"]})


DELTA = 1e-3
FIT_TIMES_PER_ROUND = 3   # lawfit's fits are short, so one burst of load on the machine can double
                          # a single timing; the loops (a minute each) average such bursts out


def replication_objective(params, N, D, losses):
    """Summed Huber loss of log predictions, in the form the replication loop evaluates it:
    plain numpy, logs of the data taken on every call, the Huber branches by ``np.where``."""
    a, b, e, alpha, beta = params
    pred = np.log(np.exp(a - alpha * np.log(N)) + np.exp(b - beta * np.log(D)) + np.exp(e))
    r = np.log(losses) - pred
    ar = np.abs(r)
    return np.sum(np.where(ar <= DELTA, 0.5 * r * r, DELTA * (ar - 0.5 * DELTA)))


def objective_and_gradient(params, lN, lD, logy, w=None):
    """The same objective and its analytic gradient (plain numpy, logs precomputed)."""
    a, b, e, alpha, beta = params
    t1 = np.exp(a - alpha * lN)
    t2 = np.exp(b - beta * lD)
    te = np.exp(e)
    s = t1 + t2 + te
    r = np.log(s) - logy
    c = np.clip(r, -DELTA, DELTA)
    h = c * (r - 0.5 * c)
    if w is not None:
        h = h * w
        c = c * w
    u = c / s
    u1, u2 = u * t1, u * t2
    return h.sum(), np.array([u1.sum(), u2.sum(), te * u.sum(), -(u1 @ lN), -(u2 @ lD)])


def _scipy_loop(starts: np.ndarray, data: dict, analytic: bool):
    """Per-start scipy L-BFGS-B, default options; returns end thetas and objectives."""
    xs, fs = [], []
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        for th0 in starts:
            if analytic:
                r = minimize(objective_and_gradient, th0, args=(data["lN"], data["lD"], data["logy"]), jac=True,
                             method="L-BFGS-B")
            else:
                r = minimize(replication_objective, th0, args=(data["N"], data["D"], data["loss"]), method="L-BFGS-B")
            xs.append(r.x)
            fs.append(r.fun if np.isfinite(r.fun) else np.inf)
    return np.array(xs), np.array(fs)


def _spin() -> None:
    while True:
        pass


class _Spinner:
    """A competing process that spins on one core while the block runs (the "loaded" condition)."""

    def __enter__(self):
        import multiprocessing

        self.p = multiprocessing.get_context("fork").Process(target=_spin, daemon=True)
        self.p.start()
        time.sleep(0.3)            # let it take its core before the fit chooses its workers
        return self

    def __exit__(self, *exc):
        self.p.terminate()
        self.p.join(5)
        return False


def _params(law, theta) -> dict:
    return {k: float(v) for k, v in law._from_theta(theta).items()}


def _worker_counts() -> list[int]:
    """Worker counts timed, most first: 2 and 1 where processes can be forked on 2+ CPUs, else 1."""
    from flopscale.lawfit._parallel import can_fork, usable_cpus

    many = min(2, usable_cpus()) if can_fork() else 1
    return sorted({many, 1}, reverse=True)


def expected_rows(ctx) -> int:
    """Rows ``flopscale bench`` gets from this suite for ``ctx``: per worker count an idle fit,
    a loaded fit and a bootstrap row; a loaded fit with automatic workers; the two scipy
    loops; the scipy bootstrap -- or the one skipped row when the data set cannot be read."""
    try:
        _data()
    except (OSError, LookupError):
        return 1
    return 3 * len(_worker_counts()) + 4


def run(quick: bool = False, seed: int = 0) -> list[dict]:
    """Benchmark rows (dicts with the keys in ``COLUMNS``)."""
    from flopscale import lawfit
    from flopscale.lawfit.fitting import _bootstrap, _inputs_of

    df = _data()
    law = lawfit.Chinchilla()
    x = _inputs_of(df, ["N", "D"])
    logy = np.log(df["loss"].to_numpy())
    data = {"N": df["N"].to_numpy(), "D": df["D"].to_numpy(), "loss": df["loss"].to_numpy(),
            "lN": x["log_N"], "lD": x["log_D"], "logy": logy}
    grid = law._starts(x, logy, None, None)
    rows: list[dict] = []
    shape = f"{len(df)} runs x {len(grid)} starts"
    worker_counts = _worker_counts()

    lawfit.fit(df.iloc[:40], starts=20)  # warm-up (imports, caches)
    reps = 2
    rng = np.random.default_rng(seed)
    n_sub = len(grid) // 20 if quick else len(grid)
    sub = grid[np.sort(rng.choice(len(grid), n_sub, replace=False))] if quick else grid
    scale = len(grid) / len(sub)
    loops = (("scipy per-start, finite diff", False), ("scipy per-start, analytic grad", True))
    times: dict[str, list[float]] = {}
    fits: dict[int, object] = {}
    ends: dict[str, tuple] = {}
    loaded_fits: dict = {}
    for _ in range(reps):                     # interleaved: each round times every provider
        for _ in range(FIT_TIMES_PER_ROUND):  # lawfit's half second is timed three times a round
            for w in worker_counts:
                t0 = time.perf_counter()
                fits[w] = lawfit.fit(df, workers=w)
                times.setdefault(f"w{w}", []).append(time.perf_counter() - t0)
        with _Spinner():
            for _ in range(FIT_TIMES_PER_ROUND):
                for w in worker_counts + [None]:
                    t0 = time.perf_counter()
                    loaded_fits[w] = lawfit.fit(df, workers=w)
                    times.setdefault(f"loaded-w{w}", []).append(time.perf_counter() - t0)
        for name, analytic in loops:
            t0 = time.perf_counter()
            ends[name] = _scipy_loop(sub, data, analytic)
            times.setdefault(name, []).append((time.perf_counter() - t0) * scale)
    t_ref = min(times[f"w{worker_counts[0]}"])
    t_one = min(times["w1"])
    fit = fits[worker_counts[0]]
    merged = sum(v for k, v in fit.start_outcomes.items() if k.startswith("merged"))

    def _reps(ts):
        return ", ".join(f"{t:.3g}" for t in ts) + " s"

    def fit_row(provider, key, fw, note):
        """A row for one timed lawfit fit: its fastest time under ``times[key]`` and its optimum."""
        tw = min(times[key])
        return dict(op="chinchilla_fit", shape=shape, provider=provider, status="ok", time_s=tw, reps=len(times[key]),
                    speedup=tw / t_ref, objective=fw.objective, rel_err=(fw.objective - fit.objective) / fit.objective,
                    **fw.params, starts_at_best=fw.n_at_best, note=note)

    for w in worker_counts:
        fw = fits[w]
        how = (f"{fw.processes} forked processes, half of the starts each" if fw.processes > 1 else "one process")
        rows.append(fit_row(f"lawfit batched, {w} worker{'s' if w > 1 else ''}", f"w{w}", fw,
                            note=f"fastest of {len(times[f'w{w}'])} ({_reps(times[f'w{w}'])}); {how}; duplicate starts merged "
                              f"({merged} of {len(grid)}); scipy polish of the best end point (and distinct ones within 0.1%); starts_at_best counts "
                              f"merged starts with their representative"))
    for w in worker_counts + [None]:
        fw = loaded_fits[w]
        tw = min(times[f"loaded-w{w}"])
        idle = min(times[f"w{w if w is not None else worker_counts[0]}"])
        who = "auto workers" if w is None else f"{w} worker{'s' if w > 1 else ''}"
        rows.append(fit_row(f"lawfit batched, {who}, loaded", f"loaded-w{w}", fw,
                            note=f"one competing process spinning on a core during the fit; fastest of "
                              f"{len(times[f'loaded-w{w}'])} ({_reps(times[f'loaded-w{w}'])}); ran {fw.processes} "
                              f"process{'es' if fw.processes > 1 else ''}; slowdown {tw / idle:.2f}x against the "
                              f"idle time of {'the most workers' if w is None else 'the same workers'}; "
                              f"{min(times['scipy per-start, finite diff']) / tw:.0f}x faster than the replication "
                              f"loop (timed without the spinner)"))
    for name, analytic in loops:
        xs, fs = ends[name]
        t = min(times[name])
        b = int(np.argmin(fs))
        p = _params(law, xs[b])
        at_best = int(np.sum(fs <= fs[b] * (1 + 1e-5)))
        rel = (fs[b] - fit.objective) / fit.objective
        pdiff = max(abs(p[k] / fit.params[k] - 1) for k in p)
        role = ("the issue's baseline: the loop as the replication code runs it (numerical gradient, "
                "plain numpy objective)" if not analytic
                else "stronger baseline, not in the replication: the same loop with an analytic gradient")
        note = (f"{role}; fastest of {reps} ({_reps(times[name])}); one process; "
                + (f"{len(sub)} of {len(grid)} starts timed, time extrapolated x{scale:g}" if quick else "all starts")
                + f"; {t / t_one:.1f}x lawfit's time on one process"
                + f"; best params differ from lawfit's by {pdiff:.1e} (relative, max); "
                  f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")
        rows.append(dict(op="chinchilla_fit", shape=shape, provider=name, status="ok", time_s=t, reps=reps,
                         speedup=t / t_ref, objective=float(fs[b]), rel_err=float(rel), **p,
                         starts_at_best=at_best if not quick else f"{at_best} of {len(sub)}", note=note))

    # bootstrap: 1,000 weighted refits, batched, warm-started at the optimum
    k = 1000
    warm = law._to_theta(fit.params)[None]
    t_bs: dict[int, list[float]] = {}
    for _ in range(reps):
        for w in worker_counts:
            t0 = time.perf_counter()
            samples, failed, _ = _bootstrap(law, x, logy, DELTA, warm, k, np.random.default_rng(seed), w)
            t_bs.setdefault(w, []).append(time.perf_counter() - t0)
    lo, hi = np.percentile(samples["alpha"], [2.5, 97.5])
    t_boot = min(t_bs[worker_counts[0]])
    for w in worker_counts:
        rows.append(dict(op="bootstrap_refits", shape=f"{len(df)} runs x {k} resamples",
                         provider=f"lawfit batched, {w} worker{'s' if w > 1 else ''}",
                         status="ok" if failed == 0 else f"{failed} failed", time_s=min(t_bs[w]), reps=reps,
                         speedup=min(t_bs[w]) / t_boot, objective=None, rel_err=None, starts_at_best=None,
                         note=f"fastest of {reps} ({_reps(t_bs[w])}); 95% interval of alpha [{lo:.4f}, {hi:.4f}]; "
                              f"target < 30 s"))
    # the same refits one by one with scipy (a sample, extrapolated)
    n_s = 25 if quick else 100
    W = np.random.default_rng(seed + 1).multinomial(len(df), np.full(len(df), 1 / len(df)), size=n_s).astype(float)
    t0 = time.perf_counter()
    for i in range(n_s):
        minimize(objective_and_gradient, warm[0], args=(data["lN"], data["lD"], logy, W[i]), jac=True,
                 method="L-BFGS-B", options={"ftol": 1e-15, "gtol": 1e-10})
    t_sb = (time.perf_counter() - t0) * k / n_s
    rows.append(dict(op="bootstrap_refits", shape=f"{len(df)} runs x {k} resamples",
                     provider="scipy per-replicate, analytic grad", status="ok", time_s=t_sb, reps=1,
                     speedup=t_sb / t_boot, objective=None, rel_err=None, starts_at_best=None,
                     note=f"{n_s} replicates timed, extrapolated x{k / n_s:g}; tight tolerances like lawfit's; "
                          f"one process"))
    return rows


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def table(rows: list[dict]) -> str:
    cols = ["op", "provider", "time_s", "speedup", "objective", "rel_err", "alpha", "beta", "starts_at_best", "status"]
    w = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(w[c]) for c in cols)]
    for r in rows:
        lines.append("  ".join(_fmt(r.get(c)).ljust(w[c]) for c in cols))
    lines.append("speedup = this provider's time / the time of lawfit with the most workers (per op); "
                 "time_s in seconds of wall clock")
    for r in rows:
        if r.get("note"):
            lines.append(f"  {r['provider']} ({r['op']}): {r['note']}")
    return "\n".join(lines)


def environment() -> dict:
    return {"python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
            "pandas": pd.__version__, "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "unset"),
            "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="scipy loops on 5%% of the starts, time extrapolated")
    ap.add_argument("--out", default=None, metavar="DIR", help="write lawfit-<host>-<date>.csv there")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    env = environment()
    t0 = time.perf_counter()
    rows = run(quick=args.quick, seed=args.seed)
    print(f"# lawfit benchmark ({'quick' if args.quick else 'full'}), {env}")
    print(table(rows))
    print(f"# total {time.perf_counter() - t0:.1f} s")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"lawfit-cpu{env['cpus']}-{_dt.date.today().isoformat()}{'-quick' if args.quick else ''}.csv"
        with open(path, "w", newline="") as fh:
            fh.write("# " + ", ".join(f"{k}={v}" for k, v in env.items()) + "\n")
            fh.write(f"# command: python -m flopscale.benchmarks.bench_lawfit {' '.join(argv or sys.argv[1:])}\n")
            wr = csv.DictWriter(fh, fieldnames=list(COLUMNS), extrasaction="ignore")
            wr.writeheader()
            for r in rows:
                wr.writerow(r)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
