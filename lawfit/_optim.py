"""Batched robust-regression machinery: the summed Huber objective on log loss and a
batched L-BFGS that minimises it from thousands of starts at once.

Everything is numpy: the objective and its analytic gradient are evaluated for all starts
(rows of ``theta``) in one pass over the data, in cache-sized chunks, and the L-BFGS two-loop
recursion and the backtracking line search run on whole arrays of starts.  Starts that have converged
leave the working set, so late iterations only pay for the starts still moving, and starts
that have become the same model (:meth:`Objective.merge_key`) are merged into one (see
:func:`batched_lbfgs`).  :meth:`Objective.conditioned` gives the same objective in
coordinates the optimiser handles better (for Chinchilla, intercepts centred on the mean log N
and log D); ``labels`` split the starts into blocks that never interact, so that blocks can
run in separate processes (``lawfit._parallel``) with the same result.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.optimize import minimize

from .laws import Chinchilla, Law

FG = Callable[[np.ndarray, np.ndarray], "tuple[np.ndarray, np.ndarray]"]

# status codes of batched_lbfgs
CONVERGED, MAXITER, LINESEARCH, BAD_START, ABANDONED = 0, 1, 2, 3, 4
STATUS_TEXT = {CONVERGED: "converged", MAXITER: "iteration limit", LINESEARCH: "no further decrease",
               BAD_START: "non-finite objective at start", ABANDONED: "stopped far from the best"}


CHUNK_BYTES = 32 * 1024 ** 2
"""Working memory of one chunk of the objective (see Objective.chunk)."""


class Objective:
    """``f(theta) = sum_i w_i * huber_delta(log pred_i(theta) - log y_i)``, batched over rows.

    ``weights`` is None (all ones), shape [n] (shared), or shape [R, n] with a weight row per
    group; then each call says which group each theta row belongs to.
    """

    def __init__(self, law: Law, x: dict[str, np.ndarray], logy: np.ndarray, delta: float,
                 weights: np.ndarray | None = None, chunk: int = 256) -> None:
        self.law = law
        self.x = x
        self.logy = np.ascontiguousarray(logy, dtype=float)
        self.n = len(self.logy)
        self.delta = float(delta)
        self.weights = None if weights is None else np.asarray(weights, dtype=float)
        # rows of starts per chunk: at most `chunk`, and few enough that the chunk's working
        # arrays (about five of chunk x runs) stay within CHUNK_BYTES however many runs there are
        self.chunk = max(1, min(int(chunk), CHUNK_BYTES // (8 * 5 * max(self.n, 1))))
        self.fast = type(law) is Chinchilla
        self._ws: list[np.ndarray] | None = None
        if self.fast:
            n = self.n
            lN = np.asarray(x["log_N"], dtype=float)
            lD = np.asarray(x["log_D"], dtype=float)
            # theta [k, 5] @ M [5, 2n] = [a - alpha log N | b - beta log D] in one pass
            self._M = np.zeros((5, 2 * n))
            self._M[0, :n] = 1.0
            self._M[1, n:] = 1.0
            self._M[3, :n] = -lN
            self._M[4, n:] = -lD
            # [sum, -sum log N] and [sum, -sum log D] of the weighted terms in one product each
            self._Gn = np.ascontiguousarray(np.stack([np.ones(n), -lN], axis=1))
            self._Gd = np.ascontiguousarray(np.stack([np.ones(n), -lD], axis=1))

    def _w(self, groups: np.ndarray | None, s0: int, s1: int) -> np.ndarray | None:
        if self.weights is None:
            return None
        if self.weights.ndim == 1:
            return self.weights
        return self.weights[groups[s0:s1]]

    def __call__(self, theta: np.ndarray, groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        theta = np.asarray(theta, dtype=float)
        S, P = theta.shape
        f = np.empty(S)
        g = np.empty((S, P))
        with np.errstate(all="ignore"):
            for s0 in range(0, S, self.chunk):
                s1 = min(S, s0 + self.chunk)
                w = self._w(groups, s0, s1)
                if self.fast:
                    self._chinchilla(theta[s0:s1], w, f[s0:s1], g[s0:s1])
                else:
                    self._generic(theta[s0:s1], w, f[s0:s1], g[s0:s1])
        bad = ~np.isfinite(f)
        if bad.any():
            f[bad] = np.inf
        return f, g

    def logpred(self, theta: np.ndarray) -> np.ndarray:
        """log(prediction) [S, n] for each row of ``theta`` (the key for merging duplicate starts)."""
        theta = np.asarray(theta, dtype=float)
        with np.errstate(all="ignore"):
            if not self.fast:
                return self.law._logpred_backward(theta, self.x)[0]
            n = self.n
            out = np.empty((len(theta), n))
            for s0 in range(0, len(theta), self.chunk):    # cache-sized pieces, as in __call__
                th = theta[s0:s0 + self.chunk]
                T = np.exp(self._exponents(th, np.empty((len(th), 2 * n))))
                s = np.add(T[:, :n], T[:, n:], out=out[s0:s0 + len(th)])
                s += np.exp(th[:, 2])[:, None]
                np.log(s, out=s)
            return out

    def value(self, theta: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
        return self(theta, groups)[0]

    def merge_key(self, theta: np.ndarray, floor: float = 1e-7) -> "np.ndarray | None":
        """What two starts must share to be merged (see :func:`batched_lbfgs`), or None where
        this objective has no such key (then nothing is merged).

        Chinchilla: the log of each term, ``A/N^alpha`` and ``B/D^beta`` at every run and ``E``,
        each clamped from below at ``log(floor * observed loss)``.  Two starts with equal keys
        (to the merge tolerance) have the same terms wherever a term is not negligible in
        absolute size, so they are the same model and stay the same.  Equal *predictions*
        alone are not enough: a start dominated by one huge term (``A = e^25``) predicts the
        same losses for any B, beta and E, yet those come back once A shrinks."""
        if not self.fast:
            return None
        theta = np.asarray(theta, dtype=float)
        lo = np.log(floor) + self.logy
        K = np.empty((len(theta), 2 * self.n + 1))
        self._exponents(theta, K[:, :-1])
        np.maximum(K[:, :self.n], lo, out=K[:, :self.n])
        np.maximum(K[:, self.n:-1], lo, out=K[:, self.n:-1])
        K[:, -1] = np.maximum(theta[:, 2], lo.min())
        return K

    def _exponents(self, theta: np.ndarray, out: np.ndarray) -> np.ndarray:
        """``out = [a - alpha log N | b - beta log D]`` per row, in row chunks (no large BLAS
        product, see _small_matmul)."""
        for s0 in range(0, len(theta), self.chunk):
            np.matmul(theta[s0:s0 + self.chunk], self._M, out=out[s0:s0 + self.chunk])
        return out

    def conditioned(self) -> "Conditioned":
        """This objective in coordinates the optimiser handles better (see :class:`Conditioned`).

        Chinchilla: ``a - alpha log N = (a - alpha c_N) - alpha (log N - c_N)`` with ``c_N`` the
        mean log N of the data (likewise b, beta, log D).  In the raw parameters ``a`` and
        ``alpha`` are almost collinear (log N is ~20 with a spread of ~1.5), which makes L-BFGS
        crawl; the centred intercepts remove that.  Other laws: the identity."""
        P = self.law.n_params
        T = np.eye(P)
        if not self.fast:
            return Conditioned(self, T)
        cN, cD = float(np.mean(self.x["log_N"])), float(np.mean(self.x["log_D"]))
        T[3, 0], T[4, 1] = cN, cD
        # in z the objective is the same fused Chinchilla objective on centred log N and log D
        xc = dict(self.x, log_N=np.asarray(self.x["log_N"], float) - cN, log_D=np.asarray(self.x["log_D"], float) - cD)
        return Conditioned(self, T, Objective(self.law, xc, self.logy, self.delta, self.weights, self.chunk))

    def _generic(self, th, w, f_out, g_out):
        lp, backward = self.law._logpred_backward(th, self.x)
        r = lp - self.logy
        c = np.clip(r, -self.delta, self.delta)
        h = c * (r - 0.5 * c)
        if w is not None:
            h = h * w
            c = c * w
        f_out[:] = h.sum(1)
        g_out[:] = backward(c)

    def _chinchilla(self, th, w, f_out, g_out):
        """Fused Chinchilla objective: log pred = log(exp(a - alpha lN) + exp(b - beta lD) + exp(e)).

        No max-shift is needed: overflow gives inf, which the line search rejects."""
        k, n, d = th.shape[0], self.n, self.delta
        if self._ws is None:
            self._ws = [np.empty((self.chunk, 2 * n))] + [np.empty((self.chunk, n)) for _ in range(3)]
        T, sb, r, c = (b[:k] for b in self._ws)
        np.exp(self._exponents(th, T), out=T)
        t1, t2 = T[:, :n], T[:, n:]
        ee = np.exp(th[:, 2])
        np.add(t1, t2, out=sb)
        sb += ee[:, None]
        np.log(sb, out=r)
        r -= self.logy                    # residual of log loss
        np.clip(r, -d, d, out=c)          # c = huber'(r)
        if w is None:                     # huber(r) = c (r - c/2)
            f_out[:] = np.einsum("ij,ij->i", c, r) - 0.5 * np.einsum("ij,ij->i", c, c)
        else:
            r -= 0.5 * c
            c *= w
            f_out[:] = np.einsum("ij,ij->i", c, r)
        c /= sb                           # d objective / d(sum of exps)
        T.reshape(k, 2, n)[:] *= c[:, None, :]
        g_out[:, 0::3] = t1 @ self._Gn    # a, alpha
        g_out[:, 1::3] = t2 @ self._Gd    # b, beta
        g_out[:, 2] = ee * c.sum(1)


class Conditioned:
    """An :class:`Objective` in linear coordinates ``z`` with ``theta = z @ T``.

    The model, the objective values and its optima are those of the wrapped objective; only
    the optimiser's path changes (starts map exactly, ``to_internal``/``to_external``)."""

    def __init__(self, obj: Objective, T: np.ndarray, direct: Objective | None = None) -> None:
        self.obj = obj
        self.T = np.asarray(T, dtype=float)
        self.Tinv = np.linalg.inv(self.T)
        self.identity = bool(np.array_equal(self.T, np.eye(len(self.T))))
        if direct is None and not self.identity:
            raise ValueError("a change of coordinates needs the objective written directly in z")
        self.direct = obj if direct is None else direct    # the objective as a function of z

    def to_internal(self, theta: np.ndarray) -> np.ndarray:
        theta = np.asarray(theta, dtype=float)
        return theta.copy() if self.identity else _small_matmul(theta, self.Tinv)

    def to_external(self, z: np.ndarray) -> np.ndarray:
        z = np.asarray(z, dtype=float)
        return z.copy() if self.identity else _small_matmul(z, self.T)

    def gradient_to_external(self, g: np.ndarray) -> np.ndarray:
        """A gradient with respect to z, as one with respect to the law's parameters."""
        g = np.asarray(g, dtype=float)
        return g.copy() if self.identity else _small_matmul(g, self.Tinv.T)

    def __call__(self, z: np.ndarray, groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        return self.direct(z, groups)

    def logpred(self, z: np.ndarray) -> np.ndarray:
        return self.direct.logpred(z)

    def merge_key(self, z: np.ndarray, floor: float = 1e-7) -> "np.ndarray | None":
        return self.direct.merge_key(z, floor)     # the terms are the same in z (centred logs)


# Large products here are done in row chunks (Objective._exponents) or without BLAS
# (_small_matmul): a multithreaded BLAS (OpenBLAS by default) answers one large product with
# worker threads that then spin for a while, and with two worker processes on two cores the
# spinning threads take the core the other process needs (measured: one 4,500-row product
# before the split made the two-process fit slower than one).
def _small_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for a [..., P] by [P, P] product, without BLAS."""
    return np.einsum("...j,jk->...k", a, b)


@dataclass
class BatchResult:
    x: np.ndarray        # [S, P] end points
    f: np.ndarray        # [S] objective at the end points
    g: np.ndarray        # [S, P] gradient there
    nit: np.ndarray      # [S] iterations
    status: np.ndarray   # [S] CONVERGED / MAXITER / LINESEARCH / BAD_START / ABANDONED
    nfev: int            # objective evaluations, counted per start
    rep: np.ndarray | None = None   # [S] the start whose run stood for this one (itself if never merged)
    processes: int = 1   # how many processes ran the starts

    @property
    def n_merged(self) -> int:
        return 0 if self.rep is None else int(np.sum(self.rep != np.arange(len(self.rep))))

    def spread(self, uniq: np.ndarray, rep0: np.ndarray) -> "BatchResult":
        """This result, for the starts ``uniq``, extended to all starts: start ``j`` was merged
        before the first step into ``rep0[j]`` (one of ``uniq``) and takes its outcome."""
        S = len(rep0)
        pos = np.full(S, -1)
        pos[uniq] = np.arange(len(uniq))
        src = pos[rep0]
        if np.any(src < 0):
            raise ValueError("every representative must be one of the starts that ran")
        rep_u = uniq[self.rep] if self.rep is not None else uniq
        nit = np.zeros(S, dtype=int)
        nit[uniq] = self.nit
        return BatchResult(self.x[src], self.f[src], self.g[src], nit, self.status[src], self.nfev, rep_u[src],
                           self.processes)

    @classmethod
    def join(cls, parts: "list[BatchResult]", index: "list[np.ndarray]", S: int, processes: int = 1) -> "BatchResult":
        """One result for ``S`` starts from runs on the blocks ``index[i]`` (start numbers)."""
        P = parts[0].x.shape[1]
        out = cls(np.empty((S, P)), np.empty(S), np.empty((S, P)), np.zeros(S, dtype=int),
                  np.empty(S, dtype=int), 0, np.arange(S), processes)
        for r, idx in zip(parts, index):
            out.x[idx], out.f[idx], out.g[idx], out.nit[idx], out.status[idx] = r.x, r.f, r.g, r.nit, r.status
            out.nfev += r.nfev
            if r.rep is not None:
                out.rep[idx] = idx[r.rep]
        return out


def batched_lbfgs(fg: FG, x0: np.ndarray, *, m: int = 10, maxiter: int = 1000, gtol: float = 1e-5,
                  ftol: float = 2.2e-9, fscale: float = 1.0, max_ls: int = 30, c1: float = 1e-4,
                  abandon_after: int | None = None, abandon_ratio: float = 2.0,
                  merge_key: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
                  merge_at: "tuple[int, ...]" = (), merge_tol: float = 1e-9,
                  labels: np.ndarray | None = None) -> BatchResult:
    """Minimise ``fg`` from every row of ``x0`` at once with L-BFGS (memory ``m``).

    ``fg(X, rows) -> (f [k], G [k, P])`` evaluates the objective and gradient for the rows of
    ``X`` (``rows`` are their indices in ``x0``).  The two-loop recursion, the backtracking
    (Armijo) line search and the stopping tests run on whole arrays of starts.  A start stops
    when ``max|g| <= gtol`` or ``(f_prev - f) <= ftol * max(|f_prev|, |f|, fscale)`` (scipy's
    L-BFGS-B rule with ``fscale=1``), or when the line search finds no decrease.  Pairs
    failing the curvature condition are stored as zeros, which the recursion ignores.  With
    ``abandon_after=k``, starts still running after k iterations whose objective is above
    ``abandon_ratio`` times the best found so far are stopped (status ABANDONED).

    Duplicate starts: after each iteration listed in ``merge_at``, ``merge_key(X, rows)`` gives a
    vector per running start (for a fit, :meth:`Objective.merge_key`: the log of every term of
    the model at every data point, terms negligible in absolute size clamped); starts whose
    vectors round to the same multiple of ``merge_tol`` in every entry (so they differ by less
    than ``merge_tol`` everywhere) describe the same model, with the same objective and the same
    gradient in every parameter that matters, and only the lowest-numbered one runs on.  (On a
    grid many starts differ only in a term that is negligible at every data point, e.g.
    ``A/N^alpha`` with ``A = 1, alpha = 2``: their other parameters then follow the same path.
    Equal predictions alone are not enough: a dominant term can hide the others.)  Merging
    before the first step is the caller's (see ``lawfit.fitting._multistart``).
    A merged start reports its representative's end point, objective, gradient and status;
    ``rep`` says which start that was and ``nit`` counts the iterations it ran itself.

    ``labels`` (one small non-negative int per start) splits the starts into blocks that never
    interact: starts merge only within their block and the abandonment test compares with the
    best of their own block.  Every other step is per start, so running the blocks together or
    one call per block (e.g. in parallel processes) follows the same paths.
    The state is kept parameter-major ([P, starts]) so the many reductions over P are cheap.
    (A dense per-start BFGS was tried too: on the Chinchilla grid it needed ~1.7x more
    evaluations than L-BFGS with m=10, which forgets stale curvature at the Huber kinks.)
    """
    with np.errstate(all="ignore"):
        return _batched_lbfgs(fg, x0, m, maxiter, gtol, ftol, fscale, max_ls, c1, abandon_after, abandon_ratio,
                              merge_key, frozenset(merge_at), merge_tol, labels)


def _duplicates(K: np.ndarray, tol: float, labels: np.ndarray | None = None) -> np.ndarray:
    """For each row of ``K`` [A, n], the index of the first row that rounds to the same multiple
    of ``tol`` in every entry (itself when none does, or when the row is not finite); with
    ``labels``, only rows with the same label count as the same."""
    K = np.asarray(K, dtype=float)
    A = len(K)
    idx = np.arange(A)
    with np.errstate(invalid="ignore"):
        fin = np.all(np.abs(K) < 1e6, axis=1)          # false for NaN and inf too
    rows = np.flatnonzero(fin)
    if len(rows) < 2:
        return idx
    q = np.rint((K if len(rows) == A else K[rows]) * (1.0 / tol))    # whole numbers, exact in float64
    lab = None if labels is None else np.asarray(labels, dtype=np.int64)[rows]
    # hash each row (exact int64 arithmetic, wrapping), then check every entry of each row
    # against the first row with its hash
    mult = np.random.default_rng(12345).integers(1, 2 ** 62, size=q.shape[1] + 1, dtype=np.int64) | 1
    h = q.astype(np.int64) @ mult[:-1]
    if lab is not None:
        h += lab * mult[-1]
    _, first, inv = np.unique(h, return_index=True, return_inverse=True)
    cand = first[inv.ravel()]
    other = np.flatnonzero(cand != np.arange(len(rows)))
    same = np.all(q[other] == q[cand[other]], axis=1)
    if lab is not None:
        same &= lab[other] == lab[cand[other]]
    out = idx.copy()
    out[rows[other[same]]] = rows[cand[other[same]]]
    return out


def _batched_lbfgs(fg, x0, m, maxiter, gtol, ftol, fscale, max_ls, c1, abandon_after, abandon_ratio,
                   merge_key=None, merge_at=frozenset(), merge_tol=1e-9, labels=None):
    x0 = np.asarray(x0, dtype=float)
    S, P = x0.shape
    rows = np.arange(S)
    f, G = fg(x0, rows)
    nfev = S
    out_x, out_f, out_g = x0.copy(), f.copy(), G.copy()
    nit = np.zeros(S, dtype=int)
    status = np.full(S, MAXITER)
    rep = np.arange(S)
    ok0 = np.isfinite(f) & np.isfinite(G).all(1)
    status[~ok0] = BAD_START
    rows = rows[ok0]
    X = np.ascontiguousarray(x0[ok0].T)        # [P, A]
    Gt = np.ascontiguousarray(G[ok0].T)
    f = f[ok0]
    A = len(rows)
    Sh = np.zeros((m, P, A))
    Yh = np.zeros((m, P, A))
    rho = np.zeros((m, A))
    gamma = np.ones(A)
    first = np.ones(A, dtype=bool)
    lab_all = np.zeros(S, dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
    if lab_all.shape != (S,) or (S and lab_all.min() < 0):
        raise ValueError("labels must be one non-negative integer per start")
    best = np.full(int(lab_all.max()) + 1 if S else 1, np.inf)   # best objective so far, per block
    np.minimum.at(best, lab_all[rows], f)
    n_hist = 0
    for it in range(maxiter):
        if A == 0:
            break
        # two-loop recursion over the stored pairs, newest first
        q = Gt.copy()
        hist = [(it - 1 - j) % m for j in range(n_hist)]
        alph = []
        for k in hist:
            a_k = rho[k] * (Sh[k] * q).sum(0)
            q -= a_k * Yh[k]
            alph.append(a_k)
        q *= gamma
        for k, a_k in zip(reversed(hist), reversed(alph)):
            q += (a_k - rho[k] * (Yh[k] * q).sum(0)) * Sh[k]
        d = -q
        gd = (Gt * d).sum(0)
        bad = ~(gd < 0)
        if bad.any():                           # not a descent direction: steepest descent
            d[:, bad] = -Gt[:, bad]
            gd[bad] = -(Gt[:, bad] ** 2).sum(0)
        t = np.ones(A)
        if first.any():                         # no curvature yet: a unit-length first step
            t[first] = 1.0 / np.maximum(np.sqrt((d[:, first] ** 2).sum(0)), 1.0)
        Xn = X + t * d
        fn, Gn = fg(Xn.T, rows)
        Gn = Gn.T.copy()
        nfev += A
        ok = np.isfinite(fn) & (fn <= f + c1 * t * gd)
        for _ in range(max_ls):
            if ok.all():
                break
            w = np.flatnonzero(~ok)
            # backtrack to the minimiser of the cubic through f and its slope at 0 and at t
            # (the quadratic through f(0), f'(0), f(t) where the cubic has none), kept within
            # [0.1, 0.5] of the last step
            tw, g0, f1 = t[w], gd[w], fn[w]
            g1 = (Gn[:, w] * d[:, w]).sum(0)
            d1 = g0 + g1 + 3.0 * (f[w] - f1) / tw
            d2 = np.sqrt(d1 * d1 - g0 * g1)
            tc = tw - tw * (g1 + d2 - d1) / (g1 - g0 + 2.0 * d2)
            tq = -g0 * tw ** 2 / (2.0 * (f1 - f[w] - g0 * tw))
            tq = np.where(np.isfinite(tc), tc, np.where(np.isfinite(tq), tq, 0.1 * tw))
            t[w] = np.clip(tq, 0.1 * tw, 0.5 * tw)
            Xw = X[:, w] + t[w] * d[:, w]
            Xn[:, w] = Xw
            fw, Gw = fg(Xw.T, rows[w])
            nfev += len(w)
            fn[w] = fw
            Gn[:, w] = Gw.T
            ok[w] = np.isfinite(fw) & (fw <= f[w] + c1 * t[w] * gd[w])
        s = Xn - X
        y = Gn - Gt
        sy = (s * y).sum(0)
        yy = (y * y).sum(0)
        good = ok & (sy > 1e-10 * yy) & (sy > 1e-300) & np.isfinite(yy)
        k = it % m
        gm = good.astype(float)
        np.multiply(s, gm, out=Sh[k])
        np.multiply(y, gm, out=Yh[k])
        rho[k] = np.where(good, 1.0 / np.where(good, sy, 1.0), 0.0)
        gamma = np.where(good, sy / np.where(good, yy, 1.0), gamma)
        first &= ~good
        n_hist = min(n_hist + 1, m)
        f_old = f
        if ok.all():
            X, f, Gt = Xn, fn, Gn
        else:
            X = np.where(ok, Xn, X)
            f = np.where(ok, fn, f)
            Gt = np.where(ok, Gn, Gt)
        np.minimum.at(best, lab_all[rows], f)
        small_f = (f_old - f) <= ftol * np.maximum(np.maximum(np.abs(f_old), np.abs(f)), fscale)
        small_g = np.abs(Gt).max(0) <= gtol
        done = ~ok | small_f | small_g
        code = np.where(ok, CONVERGED, LINESEARCH)
        if abandon_after is not None and it + 1 >= abandon_after:
            far = ~done & (f > abandon_ratio * best[lab_all[rows]])
            code = np.where(far, ABANDONED, code)
            done |= far
        nit[rows] += 1
        if done.any():
            r = rows[done]
            out_x[r], out_f[r], out_g[r] = X[:, done].T, f[done], Gt[:, done].T
            status[r] = code[done]
            keep = ~done
            rows, X, f, Gt = rows[keep], X[:, keep], f[keep], Gt[:, keep]
            Sh, Yh, rho = Sh[:, :, keep], Yh[:, :, keep], rho[:, keep]
            gamma, first = gamma[keep], first[keep]
            A = len(rows)
        if merge_key is not None and (it + 1) in merge_at and A > 1:
            dup = _duplicates(np.asarray(merge_key(X.T, rows), dtype=float), merge_tol,
                              None if labels is None else lab_all[rows])
            keep = dup == np.arange(A)
            if not keep.all():
                rep[rows[~keep]] = rows[dup[~keep]]
                rows, X, f, Gt = rows[keep], X[:, keep], f[keep], Gt[:, keep]
                Sh, Yh, rho = Sh[:, :, keep], Yh[:, :, keep], rho[:, keep]
                gamma, first = gamma[keep], first[keep]
                A = len(rows)
    if A:
        out_x[rows], out_f[rows], out_g[rows] = X.T, f, Gt.T
    # a merged start takes its representative's outcome (representatives may be merged later too)
    root = rep.copy()
    while True:
        nxt = root[root]
        if np.array_equal(nxt, root):
            break
        root = nxt
    merged = root != np.arange(S)
    if merged.any():
        out_x[merged], out_f[merged], out_g[merged] = out_x[root[merged]], out_f[root[merged]], out_g[root[merged]]
        status[merged] = status[root[merged]]
    return BatchResult(out_x, out_f, out_g, nit, status, nfev, root)


def polish(obj: "Objective | Conditioned", theta0: np.ndarray, group: int | None = None, maxiter: int = 2000):
    """Refine one start with scipy's L-BFGS-B at tight tolerances (float64, analytic gradient),
    in the coordinates of ``obj``."""
    groups = None if group is None else np.array([group])

    def fun(th):
        f, g = obj(th[None, :], groups)
        if not np.isfinite(f[0]):
            return np.inf, np.zeros_like(th)
        return f[0], g[0]

    return minimize(fun, np.asarray(theta0, float), jac=True, method="L-BFGS-B",
                    options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": maxiter, "maxls": 50})
