"""Fused attention: ``kernels.attention`` against torch SDPA with each backend.

16k tokens per batch (B = 16384 / S), head dims 64 and 128 (d_model 2048), sequence
lengths 1k-16k, causal and not, forward and backward.  The first provider, SDPA with
the flash backend, is the baseline.  Model FLOP: forward 4*B*H*D*P with P the unmasked
(query, key) pairs (S*S dense, S(S+1)/2 causal); backward 2x forward (no recompute).
Correctness is checked on head 0 of batch 0 against a float64 reference.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from .harness import DTYPES, Context, guarded, measure, skipped

SUITE = "attention"
TOKENS = 16384
D_MODEL = 2048
SEQS = (1024, 2048, 4096, 8192, 16384)
SEQS_QUICK = (1024, 4096, 16384)


def pairs(s: int, causal: bool) -> int:
    return s * (s + 1) // 2 if causal else s * s


def _sdpa(backend) -> Callable:
    from torch.nn.attention import sdpa_kernel

    def f(q, k, v, causal):
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    return f


def providers(quick: bool = False) -> list[tuple[str, Callable]]:
    """SDPA per backend (flash first: the baseline), then ``kernels.attention``.  ``quick``
    leaves out the memory-efficient backend (the slowest of the three on Hopper)."""
    from flopscale import kernels
    from torch.nn.attention import SDPBackend

    out = [("sdpa-flash", _sdpa(SDPBackend.FLASH_ATTENTION))]
    if hasattr(SDPBackend, "CUDNN_ATTENTION"):
        out.append(("sdpa-cudnn", _sdpa(SDPBackend.CUDNN_ATTENTION)))
    if not quick:
        out.append(("sdpa-efficient", _sdpa(SDPBackend.EFFICIENT_ATTENTION)))
    out.append(("kernels.attention", lambda q, k, v, causal: kernels.attention(q, k, v, causal=causal)))
    return out


def _reference_head0(q, k, v, causal, grad=None):
    """float64 attention of batch 0, head 0 (and its gradients when ``grad`` is given)."""
    q0, k0, v0 = (t[:1, :1].detach().double().requires_grad_(grad is not None) for t in (q, k, v))
    s_q, s_k = q0.shape[-2], k0.shape[-2]
    scores = (q0 @ k0.transpose(-1, -2)) / math.sqrt(q0.shape[-1])
    if causal:
        mask = torch.ones(s_q, s_k, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~mask, float("-inf"))
    o = torch.softmax(scores, -1) @ v0
    if grad is None:
        return o
    o.backward(grad[:1, :1].double())
    return torch.cat([q0.grad.flatten(), k0.grad.flatten(), v0.grad.flatten()])


INTERPRETER_DTYPES = ("fp32", "fp16")  # without a GPU: tiny correctness rows under the Triton interpreter
CPU_SKIPPED_PROVIDERS = ("sdpa-flash", "kernels.attention")


def expected_rows(ctx: Context) -> int:
    """Rows :func:`rows` yields for ``ctx``: per head dim, length and masking, a forward and a
    backward row per provider (skipped rows included)."""
    seqs = len(SEQS_QUICK if ctx.quick else SEQS)
    if not ctx.on_gpu:
        return len(INTERPRETER_DTYPES) * 2 + 2 * seqs * 2 * 2 * len(CPU_SKIPPED_PROVIDERS)
    return 2 * seqs * 2 * 2 * len(providers(ctx.quick))


def rows(ctx: Context) -> Iterator[dict]:
    if not ctx.on_gpu:
        yield from _interpreter_pass(ctx)
        for d in (64, 128):
            for s in (SEQS_QUICK if ctx.quick else SEQS):
                for causal in (False, True):
                    for p in ("fwd", "bwd"):
                        base = dict(suite=SUITE, op="attention" + ("-causal" if causal else ""),
                                    shape=f"{TOKENS // s}x{D_MODEL // d}x{s}x{d}", dtype="bf16", **{"pass": p})
                        yield from skipped(base, "no CUDA device", CPU_SKIPPED_PROVIDERS)
        return
    provs = providers(ctx.quick)
    names = [name for name, _ in provs]
    for d in (128, 64):
        for s in (SEQS_QUICK if ctx.quick else SEQS):
            b, h = TOKENS // s, D_MODEL // d
            for causal in (False, True):
                base = dict(suite=SUITE, op="attention" + ("-causal" if causal else ""),
                            shape=f"{b}x{h}x{s}x{d}", dtype="bf16", **{"pass": "fwd+bwd"})
                yield from guarded(_one(ctx, provs, "bf16", b, h, s, d, causal), base, names)
                torch.cuda.empty_cache()


def _one(ctx, provs, dtype, b, h, s, d, causal) -> Iterator[dict]:
    dt = DTYPES[dtype]
    dev = ctx.device
    q, k, v = (torch.randn(b, h, s, d, device=dev, dtype=dt, requires_grad=True) for _ in range(3))
    grad = torch.randn(b, h, s, d, device=dev, dtype=dt)
    fwd_flops = 4.0 * b * h * d * pairs(s, causal)
    esize = q.element_size()
    op = "attention" + ("-causal" if causal else "")
    shape = f"{b}x{h}x{s}x{d}"
    fwd_bytes = 4 * b * h * s * d * esize  # q, k, v read, o written
    # forward
    base = dict(suite=SUITE, op=op, shape=shape, **{"pass": "fwd"})
    fwd = [(name, (lambda f=f: f(q, k, v, causal))) for name, f in provs]
    yield from measure(ctx, base=base, dtype=dtype, flops=fwd_flops, nbytes=fwd_bytes, providers=fwd,
                       reference=lambda: _reference_head0(q, k, v, causal), check=lambda o: o[:1, :1])
    # backward: one forward per provider, then time the backward alone
    base = dict(suite=SUITE, op=op, shape=shape, **{"pass": "bwd"})
    bwd = []
    for name, f in provs:
        def make(f=f):
            o = f(q, k, v, causal)

            def step():
                for t in (q, k, v):
                    t.grad = None
                o.backward(grad, retain_graph=True)

            return step

        try:
            bwd.append((name, make()))
        except Exception as exc:  # provider unavailable for this shape: reported as an error row
            def failing(exc=exc):
                raise exc

            bwd.append((name, failing))
    # backward bytes: q, k, v, o, dO read; dq, dk, dv written
    yield from measure(ctx, base=base, dtype=dtype, flops=2 * fwd_flops, nbytes=8 * b * h * s * d * esize,
                       providers=bwd, reference=lambda: _reference_head0(q, k, v, causal, grad),
                       check=lambda _: torch.cat([t.grad[:1, :1].flatten() for t in (q, k, v)]))


def _interpreter_pass(ctx: Context) -> Iterator[dict]:
    """Tiny correctness rows under the Triton interpreter (fp32 and fp16)."""
    from flopscale import kernels

    for dtype in INTERPRETER_DTYPES:
        for causal in (False, True):
            dt = DTYPES[dtype]
            b, h, s, d = 1, 2, 37, 32
            q, k, v = (torch.randn(b, h, s, d, dtype=dt) for _ in range(3))
            base = dict(suite=SUITE, op="attention" + ("-causal" if causal else ""), shape=f"{b}x{h}x{s}x{d}",
                        **{"pass": "fwd"})
            yield from measure(
                ctx, base=base, dtype=dtype, flops=4.0 * b * h * d * pairs(s, causal), nbytes=4 * q.numel() * q.element_size(),
                providers=[("kernels.attention", lambda: kernels.attention(q, k, v, causal=causal))],
                reference=lambda: _reference_head0(q, k, v, causal), check=lambda o: o[:1, :1],
            )
