"""Block-sparse matmul (dsd) and block-sparse attention against their dense counterparts.

The baseline (first provider) is the dense kernel on the same shape, so ``speedup`` beside
the density answers "what does sparsity buy": the target is time <= 1.3*d x dense at
density d >= 0.1, i.e. speedup >= 1/(1.3 d).  torch's own sparse paths (BSR matmul,
SDPA with a boolean mask) run beside them where available.

Model FLOP: dense 2*M*N*K (matmul) / 4*B*H*D*S*S (attention); block-sparse 2*nnz*block^2*N
and 4*B*H*D*P with P = nnz*block^2 (pairs in the layout's blocks).
"""
from __future__ import annotations

import math
from typing import Iterator

import torch
import torch.nn.functional as F

from .harness import DTYPES, Context, guarded, measure, skipped

SUITE = "blocksparse"
DENSITIES = (0.05, 0.1, 0.25, 0.5)
DENSITIES_QUICK = (0.1, 0.25, 0.5)
MATMUL_N = 4096  # on a GPU: N x N x N block-sparse (dsd) matmuls
ATTENTION_SHAPE = (4, 16, 4096, 64)  # on a GPU: B, H, S, D of the block-sparse attention rows
BLOCK = 64


def _random_layout(h: int, r: int, density: float, block: int, seed: int = 0):
    """Random blocks plus the diagonal, so no row is empty (torch's masked SDPA gives NaN there)."""
    from flopscale import kernels

    lay = kernels.BlockLayout.random(h, r, r, density=density, seed=seed, block=block)
    mask = lay.mask | torch.eye(r, dtype=torch.bool).expand(h, r, r)
    return kernels.BlockLayout(mask, block)


def _target_note(density: float) -> str:
    return f"density {density:.3f}; target speedup >= {1 / (1.3 * density):.2f}x dense" if density >= 0.1 else \
        f"density {density:.3f}"


MATMUL_PROVIDERS = ("kernels.matmul (dense)", "kernels.blocksparse_matmul", "torch BSR matmul")
ATTENTION_PROVIDERS = ("kernels.blocksparse_attention", "sdpa (bool mask)")
FIXED_LAYOUTS = 2  # local 8, strided 8 (beside the random layouts of each density)
CPU_SKIPPED_PROVIDERS = ("kernels.matmul (dense)", "kernels.blocksparse_matmul")


def expected_rows(ctx: Context) -> int:
    """Rows :func:`rows` yields for ``ctx`` (skipped rows included; a torch without BSR tensors
    gives a skipped row in place of the BSR matmul, so the count holds)."""
    nd = len(DENSITIES_QUICK if ctx.quick else DENSITIES)
    if not ctx.on_gpu:
        return 2 + nd * len(CPU_SKIPPED_PROVIDERS)  # the interpreter pass: one matmul and one attention row
    return nd * len(MATMUL_PROVIDERS) + 1 + (nd + FIXED_LAYOUTS) * len(ATTENTION_PROVIDERS)


def rows(ctx: Context) -> Iterator[dict]:
    if not ctx.on_gpu:
        yield from _interpreter_pass(ctx)
        for d in (DENSITIES_QUICK if ctx.quick else DENSITIES):
            yield from skipped(dict(suite=SUITE, op="bsmm-dsd", shape=f"{MATMUL_N}x{MATMUL_N}x{MATMUL_N} b{BLOCK}",
                                    dtype="bf16", **{"pass": "fwd"}, note=f"density {d}"),
                               "no CUDA device", CPU_SKIPPED_PROVIDERS)
        return
    yield from _matmul_rows(ctx, MATMUL_N, BLOCK, "bf16", dev=ctx.device)
    b, h, s, d = ATTENTION_SHAPE
    yield from _attention_rows(ctx, b=b, h=h, s=s, d=d, block=BLOCK, dtype="bf16", dev=ctx.device)


def _matmul_rows(ctx: Context, n: int, block: int, dtype: str, dev: str = "cuda") -> Iterator[dict]:
    dt = DTYPES[dtype]
    b = torch.randn(1, 1, n, n, device=dev, dtype=dt)
    names = MATMUL_PROVIDERS
    for density in (DENSITIES_QUICK if ctx.quick else DENSITIES):
        base = dict(suite=SUITE, op="bsmm-dsd", shape=f"{n}x{n}x{n} b{block}", dtype=dtype, **{"pass": "fwd"},
                    note=f"density {density}")
        yield from guarded(_matmul_density(ctx, b, n, block, dtype, density), base, names)
        torch.cuda.empty_cache()


def _matmul_density(ctx: Context, b: torch.Tensor, n: int, block: int, dtype: str, density: float) -> Iterator[dict]:
    from flopscale import kernels

    dev, dt = b.device, b.dtype
    r = n // block
    lay = _random_layout(1, r, density, block)
    a_dense = torch.randn(1, 1, n, n, device=dev, dtype=dt) * lay.element_mask().to(dev, dt)
    a_sparse = _to_sparse(a_dense, lay)
    nnz = lay.nnz
    esize = b.element_size()
    base = dict(suite=SUITE, op="bsmm-dsd", shape=f"{n}x{n}x{n} b{block}", **{"pass": "fwd"},
                note=_target_note(lay.density))
    provs = [("kernels.matmul (dense)", lambda: kernels.matmul(a_dense[0, 0], b[0, 0])),
             ("kernels.blocksparse_matmul", lambda: kernels.blocksparse_matmul(a_sparse, b, lay, "dsd")[0, 0])]
    try:
        # bf16/fp16 BSR @ dense on CUDA runs torch's Triton bsr_dense_mm; a torch without it errors per row
        a_bsr = a_dense[0, 0].to_sparse_bsr((block, block))
        provs.append(("torch BSR matmul", lambda: a_bsr @ b[0, 0]))
    except Exception as exc:  # noqa: BLE001
        yield dict(base, provider="torch BSR matmul", dtype=dtype, status="skipped",
                   note=f"no BSR tensor: {type(exc).__name__}: {str(exc)[:120]}")
    dense_flops = 2.0 * n ** 3
    rows_ = list(measure(ctx, base=base, dtype=dtype, flops=2.0 * nnz * block * block * n,
                         nbytes=(nnz * block * block + 2 * n * n) * esize, providers=provs,
                         reference=lambda: a_dense[0, 0].double() @ b[0, 0].double(), hide_launch="auto"))
    # the dense baseline does the full work: report its rate on its own FLOPs and bytes
    for row in rows_:
        if row["provider"].endswith("(dense)"):
            row["flops"] = dense_flops
            row["bytes"] = 3 * n * n * esize
            if row.get("median_ms"):
                sec = row["median_ms"] / 1e3
                row["tflops"] = dense_flops / sec / 1e12
                row["gbps"] = row["bytes"] / sec / 1e9
                peak = ctx.ceiling(dtype)
                row["pct_ceiling"] = 100.0 * dense_flops / sec / peak if peak else None
            row["note"] = "dense baseline (all blocks): " + (row.get("note") or "")
        yield row


def _to_sparse(x: torch.Tensor, lay) -> torch.Tensor:
    from flopscale.kernels.blocksparse_layer import dense_to_sparse

    return dense_to_sparse(x, lay)


def _attention_rows(ctx: Context, b, h, s, d, block, dtype, dev="cuda") -> Iterator[dict]:
    """The dense kernel once (its own unmasked reference and dense FLOPs), then per layout the
    block-sparse kernel and SDPA with the layout's boolean mask, with the dense median as
    the baseline of ``speedup``."""
    from flopscale import kernels

    dt = DTYPES[dtype]
    r = s // block
    q, k, v = (torch.randn(b, h, s, d, device=dev, dtype=dt) for _ in range(3))
    shape = f"{b}x{h}x{s}x{d} b{block}"
    nbytes = 4 * q.numel() * q.element_size()

    def reference(emask=None):
        q0, k0, v0 = (t[:1, :1].double() for t in (q, k, v))
        sc = (q0 @ k0.transpose(-1, -2)) / math.sqrt(d)
        if emask is not None:
            sc = sc.masked_fill(~emask[None], float("-inf"))
        return torch.softmax(sc, -1) @ v0

    base = dict(suite=SUITE, op="bsattn dense", shape=shape, **{"pass": "fwd"},
                note="dense baseline (every block, no mask)")
    dense_rows = list(guarded(measure(ctx, base=base, dtype=dtype, flops=4.0 * b * h * d * s * s, nbytes=nbytes,
                                      providers=[("kernels.attention (dense)", lambda: kernels.attention(q, k, v))],
                                      reference=reference, check=lambda o: o[:1, :1], hide_launch="auto"),
                              dict(base, dtype=dtype), ("kernels.attention (dense)",)))
    yield from dense_rows
    dense_ms = dense_rows[0].get("median_ms") if dense_rows else None
    baseline_s = dense_ms / 1e3 if dense_ms else None

    layouts = []
    for density in (DENSITIES_QUICK if ctx.quick else DENSITIES):
        layouts.append((f"random {density}", lambda density=density: _random_layout(1, r, density, block)))
    layouts.append(("local 8", lambda: kernels.BlockLayout.local(1, r, 8, block=block, causal=False)))
    layouts.append(("strided 8", lambda: kernels.BlockLayout.strided(1, r, 8, block=block, causal=False)))
    names = ATTENTION_PROVIDERS
    for name, make in layouts:
        base = dict(suite=SUITE, op=f"bsattn {name}", shape=shape, dtype=dtype, **{"pass": "fwd"})

        def one(name=name, make=make) -> Iterator[dict]:
            lay = make()
            pairs = lay.nnz * block * block
            emask = lay.element_mask().to(dev)  # [1, S, S]
            provs = [
                ("kernels.blocksparse_attention", lambda: kernels.blocksparse_attention(q, k, v, lay)),
                ("sdpa (bool mask)", lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=emask[None])),
            ]
            note = _target_note(lay.density) + ("; speedup against the dense kernel above" if baseline_s else "")
            yield from measure(ctx, base=dict(base, note=note), dtype=dtype, flops=4.0 * b * h * d * pairs,
                               nbytes=nbytes, providers=provs, reference=lambda: reference(emask),
                               check=lambda o: o[:1, :1], hide_launch="auto", baseline_s=baseline_s)

        yield from guarded(one(), base, names)
        torch.cuda.empty_cache()


def _interpreter_pass(ctx: Context) -> Iterator[dict]:
    """Tiny correctness rows under the Triton interpreter."""
    from flopscale import kernels

    block, r = 16, 3
    lay = _random_layout(1, r, 0.4, block, seed=1)
    n = r * block
    a_dense = torch.randn(1, 1, n, n) * lay.element_mask().float()
    b = torch.randn(1, 1, n, 24)
    a_sparse = _to_sparse(a_dense, lay)
    base = dict(suite=SUITE, op="bsmm-dsd", shape=f"{n}x24x{n} b{block}", **{"pass": "fwd"}, note=_target_note(lay.density))
    yield from measure(ctx, base=base, dtype="fp32", flops=2.0 * lay.nnz * block * block * 24, nbytes=0,
                       providers=[("kernels.blocksparse_matmul", lambda: kernels.blocksparse_matmul(a_sparse, b, lay, "dsd"))],
                       reference=lambda: a_dense.double() @ b.double())
    q, k, v = (torch.randn(1, 2, n, 16) for _ in range(3))
    emask = lay.element_mask()

    def reference():
        sc = (q.double() @ k.double().transpose(-1, -2)) / 4.0
        sc = sc.masked_fill(~emask[None], float("-inf"))
        return torch.softmax(sc, -1) @ v.double()

    base = dict(suite=SUITE, op="bsattn random", shape=f"1x2x{n}x16 b{block}", **{"pass": "fwd"}, note=_target_note(lay.density))
    yield from measure(ctx, base=base, dtype="fp32", flops=4.0 * 2 * 16 * lay.nnz * block * block, nbytes=0,
                       providers=[("kernels.blocksparse_attention", lambda: kernels.blocksparse_attention(q, k, v, lay))],
                       reference=reference)
