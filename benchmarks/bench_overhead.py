"""Profiler overhead: one training step of the audit model with and without ``profiler.Profile``.

The baseline is the plain step; the profiled step records every launch (``all_ops=True``,
the audit's setting).  ``speedup`` < 1 is the slowdown; ``note`` gives the overhead in
percent and, per recorded launch, in microseconds.  GPU target: at most 2 % on a
mid-size model.  On the CPU the torch reference path runs (real CPU numbers).
"""
from __future__ import annotations

from typing import Iterator

import torch

from .harness import Context, time_fn

SUITE = "overhead"


def _config(ctx: Context):
    from flopscale.profiler.model import GPTConfig

    if ctx.on_gpu:
        # mid-size: 24 x 1024, 2k context, 8 sequences per step
        return GPTConfig(n_layer=24, d_model=1024, n_head=16, n_ctx=2048, vocab=32000), 8
    return GPTConfig(n_layer=2, d_model=128, n_head=4, n_ctx=128, vocab=2048), 4


def expected_rows(ctx: Context) -> int:
    """Rows :func:`rows` yields (for the progress line): the plain and the profiled step."""
    return 2


def rows(ctx: Context) -> Iterator[dict]:
    from flopscale import profiler
    from flopscale.profiler.audit import make_step
    from flopscale.profiler.model import GPT

    cfg, batch = _config(ctx)
    device = "cuda" if ctx.on_gpu else "cpu"
    impl = "kernels" if ctx.on_gpu else "torch"
    dtype = torch.bfloat16 if ctx.on_gpu else torch.float32
    torch.manual_seed(0)
    model = GPT(cfg, impl=impl).to(device=device, dtype=dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    idx = torch.randint(0, cfg.vocab, (batch, cfg.n_ctx), device=device)
    targets = torch.randint(0, cfg.vocab, (batch, cfg.n_ctx), device=device)
    step = make_step(model, opt, idx, targets)
    shape = f"L{cfg.n_layer} d{cfg.d_model} S{cfg.n_ctx} B{batch}"
    base = dict(suite=SUITE, op="train-step", shape=shape, dtype="bf16" if ctx.on_gpu else "fp32",
                **{"pass": "fwd+bwd+opt"})

    # count the launches one profiled step records
    with profiler.Profile(all_ops=True) as prof:
        step()
    n_launches = len(prof.records)

    def profiled():
        with profiler.Profile(all_ops=True):
            step()

    budget = max(ctx.time_budget_s, 2.0)
    ctx_t = Context(device=ctx.device, quick=ctx.quick, time_budget_s=budget)
    # interleave to share any drift in machine load between the two
    plain_t, _ = time_fn(step, ctx_t)
    prof_t, _ = time_fn(profiled, ctx_t)
    plain_t2, _ = time_fn(step, ctx_t)
    # On a shared CPU other processes only ever slow a repetition down, so the overhead is
    # taken from the fastest repetitions there; on a GPU from the medians.  The ms and
    # speedup columns are always medians.
    stat = (lambda t: t.median_s) if ctx.on_gpu else (lambda t: t.min_s)
    stat_name = "medians" if ctx.on_gpu else "fastest repetitions (shared CPU)"
    plain = min(stat(plain_t), stat(plain_t2))
    over = stat(prof_t) - plain
    plain_med = min(plain_t.median_s, plain_t2.median_s)
    yield dict(base, provider="plain step", status="ok", median_ms=plain_med * 1e3, iqr_ms=plain_t.iqr_s * 1e3,
               reps=plain_t.count + plain_t2.count, speedup=1.0, note=f"{n_launches} launches per step")
    yield dict(base, provider="profiler.Profile", status="ok", median_ms=prof_t.median_s * 1e3,
               iqr_ms=prof_t.iqr_s * 1e3, reps=prof_t.count, speedup=plain_med / prof_t.median_s,
               note=f"overhead {100 * over / plain:+.1f} % = {over / n_launches * 1e6:+.1f} us per recorded launch "
                    f"({n_launches} launches, all_ops=True; from the {stat_name})")
