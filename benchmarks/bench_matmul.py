"""Dense matmul: ``kernels.matmul`` against ``torch.matmul`` (cuBLAS), forward.

Shapes: square 1024-8192, LLM projection shapes (tokens x d_model -> QKV, MLP up
and down), weight gradients of small models (M*N small, K = tokens: split-K) and GPT-2's LM
head (vocabulary 50257: rows not 16-byte aligned), in fp16, bf16, fp32 (tf32 when torch
allows it) and fp8 e4m3 on sm_89+.
Model FLOP = 2*M*N*K; bytes = A + B read once, C written once.
"""
from __future__ import annotations

from typing import Iterator

import torch

from .harness import DTYPES, Context, guarded, measure, skipped

SUITE = "matmul"

SQUARE = (1024, 2048, 4096, 8192)
SQUARE_QUICK = (1024, 4096, 8192)
# (M tokens, K, N): QKV of a 4096-wide model, MLP up/down of Llama-style widths
LLM = ((16384, 4096, 12288), (16384, 4096, 14336), (16384, 14336, 4096), (8192, 8192, 28672))
LLM_QUICK = ((16384, 4096, 12288), (16384, 14336, 4096))
# weight gradients of small models (M*N small, K = tokens): the split-K path
WGRAD = ((768, 65536, 768), (1024, 16384, 1024))
# GPT-2's LM head, logits = h @ W^T with a vocabulary of 50257 (rows not 16-byte aligned)
LM_HEAD = ((8192, 768, 50257),)


def _shapes(ctx: Context):
    sq = SQUARE_QUICK if ctx.quick else SQUARE
    return [(n, n, n) for n in sq] + list(LLM_QUICK if ctx.quick else LLM) + list(WGRAD) + list(LM_HEAD)


def _dtypes(ctx: Context):
    names = ["bf16", "fp16"] if ctx.quick else ["bf16", "fp16", "tf32"]
    if ctx.on_gpu and torch.cuda.get_device_capability() >= (8, 9) and hasattr(torch, "float8_e4m3fn"):
        names.append("fp8")
    return names


# without a GPU: a tiny correctness pass under the Triton interpreter in these dtypes
INTERPRETER_DTYPES = ("fp32", "fp16")
PROVIDERS = ("torch.matmul", "kernels.matmul")


def expected_rows(ctx: Context) -> int:
    """Rows :func:`rows` yields for ``ctx`` (one per provider, shape and dtype; skipped rows included)."""
    if not ctx.on_gpu:
        return len(PROVIDERS) * (len(INTERPRETER_DTYPES) + len(_shapes(ctx)))
    return len(PROVIDERS) * len(_dtypes(ctx)) * len(_shapes(ctx))


def rows(ctx: Context) -> Iterator[dict]:
    from flopscale import kernels

    if not ctx.on_gpu:
        # a tiny correctness pass under the Triton interpreter, then the GPU rows as skipped
        for dtype in INTERPRETER_DTYPES:
            m, k, n = 33, 47, 29
            dt = DTYPES[dtype]
            a = torch.randn(m, k, dtype=dt)
            b = torch.randn(k, n, dtype=dt)
            base = dict(suite=SUITE, op="matmul", shape=f"{m}x{n}x{k}", **{"pass": "fwd"})
            yield from measure(
                ctx, base=base, dtype=dtype, flops=2 * m * n * k, nbytes=(m * k + k * n + m * n) * a.element_size(),
                providers=[("torch.matmul", lambda: torch.matmul(a, b)), ("kernels.matmul", lambda: kernels.matmul(a, b))],
                reference=lambda: a.double() @ b.double(),
            )
        for m, k, n in _shapes(ctx):
            yield from skipped(dict(suite=SUITE, op="matmul", shape=f"{m}x{n}x{k}", dtype="bf16", **{"pass": "fwd"}),
                               "no CUDA device", PROVIDERS)
        return

    for dtype in _dtypes(ctx):
        for m, k, n in _shapes(ctx):
            base = dict(suite=SUITE, op="matmul", shape=f"{m}x{n}x{k}", **{"pass": "fwd"})
            names = ("torch._scaled_mm (fast accum)" if dtype == "fp8" else "torch.matmul", "kernels.matmul")
            yield from guarded(_one(ctx, base, dtype, m, k, n, kernels), dict(base, dtype=dtype), names)


def _one(ctx: Context, base: dict, dtype: str, m: int, k: int, n: int, kernels) -> Iterator[dict]:
    dev = "cuda" if ctx.on_gpu else "cpu"
    flops = 2.0 * m * n * k
    old_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
    try:
        if dtype == "fp8":
            a16 = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
            b16 = torch.randn(k, n, device=dev, dtype=torch.bfloat16)
            a = a16.to(torch.float8_e4m3fn)
            b = b16.to(torch.float8_e4m3fn)
            bt = b.t().contiguous().t()  # cuBLAS fp8 wants b column-major
            one = torch.ones((), device=dev, dtype=torch.float32)
            nbytes = m * k + k * n + 2 * m * n
            # fast accumulation on both sides: Triton's fp8 dot on sm_90 accumulates in the tensor
            # cores' reduced precision by default, so cuBLAS is asked for the same
            providers = [
                ("torch._scaled_mm (fast accum)",
                 lambda: torch._scaled_mm(a, bt, scale_a=one, scale_b=one, out_dtype=torch.bfloat16, use_fast_accum=True)),
                ("kernels.matmul", lambda: kernels.matmul(a, b, out_dtype=torch.bfloat16)),
            ]
            reference = lambda: a.float().double() @ b.float().double()  # noqa: E731 - the quantised inputs, exactly
        else:
            dt = DTYPES[dtype]
            a = torch.randn(m, k, device=dev, dtype=dt)
            # an odd N is a vocabulary: b is the embedding [N, K] read transposed, as an LM head does
            b = torch.randn(n, k, device=dev, dtype=dt).mT if n % 2 else torch.randn(k, n, device=dev, dtype=dt)
            nbytes = (m * k + k * n + m * n) * a.element_size()
            providers = [("torch.matmul", lambda: torch.matmul(a, b)), ("kernels.matmul", lambda: kernels.matmul(a, b))]
            reference = lambda: a.double() @ b.double()  # noqa: E731
        # launch overhead would dominate the small shapes: those are retimed as device time only
        yield from measure(ctx, base=base, dtype=dtype, flops=flops, nbytes=nbytes, providers=providers,
                           reference=reference, hide_launch="auto")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old_tf32
        torch.cuda.empty_cache()
