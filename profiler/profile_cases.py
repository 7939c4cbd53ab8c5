"""The cases ``flopscale profile`` runs: parsing shapes, default shapes per kind, the
standard suite, shape rules, and the seeded inputs of each (case, provider).

Shapes: matmul (and block-sparse matmul, ``mode`` sdd/dsd/dds) ``MxNxK`` -- A is MxK, B is
KxN; attention and block-sparse attention ``B,H,S,D``.  Without a shape each kind gets
:func:`default_shape` (large on a GPU; on the CPU small enough for the Triton interpreter).
Bad input raises :class:`ProfileError` (one line; the CLI turns it into exit 2).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["ProfileError", "Case", "OPS", "DTYPES", "PROVIDERS", "parse_matmul_shape", "parse_attention_shape",
           "default_shape", "standard_suite", "validate_case", "prepare", "Prepared", "INTERPRETER_FLOP_LIMIT"]


class ProfileError(ValueError):
    """Bad options for a profile (a shape, a dtype, a layout): one line for the user."""


OPS = ("matmul", "attention", "blocksparse", "all")
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "fp8": "float8_e4m3fn"}
PROVIDERS = ("flopscale", "torch")
# the Triton interpreter runs ~3e7 FLOP/s on a CPU core: larger problems are skipped there
INTERPRETER_FLOP_LIMIT = 1e8

CPU_NOTE = ("no CUDA GPU: flopscale kernels run under the Triton interpreter, so their times are NOT "
            "hardware figures; the torch rows are real CPU numbers")


# ------------------------------------------------------------------ parsing


def parse_matmul_shape(text: str) -> tuple[int, int, int]:
    parts = text.lower().replace(",", "x").split("x")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) < 1:
        raise ProfileError(f"--shape for matmul must be MxNxK with positive integers, got {text!r}")
    return dims  # type: ignore[return-value]


def parse_attention_shape(text: str) -> tuple[int, int, int, int]:
    parts = text.replace("x", ",").split(",")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(dims) != 4 or min(dims) < 1:
        raise ProfileError(f"--shape for attention must be B,H,S,D with positive integers, got {text!r}")
    return dims  # type: ignore[return-value]


@dataclass
class Case:
    op: str  # matmul | attention | blocksparse
    shape: tuple
    dtype: str
    causal: bool = False
    kv_heads: int | None = None
    pattern: str = "local"
    density: float = 0.25
    block: int = 64
    mode: str | None = None  # blocksparse matmul mode; None = block-sparse attention

    @property
    def matmul_shaped(self) -> bool:
        return self.op == "matmul" or (self.op == "blocksparse" and self.mode is not None)

    @property
    def title(self) -> str:
        if self.matmul_shaped:
            s = "x".join(map(str, self.shape))
        else:
            s = ",".join(map(str, self.shape))
        extra = []
        if self.causal:
            extra.append("causal")
        if self.kv_heads:
            extra.append(f"kv_heads={self.kv_heads}")
        if self.op == "blocksparse":
            extra.append(f"{self.mode + ' ' if self.mode else ''}{self.pattern} d={self.density:g} b={self.block}")
        return f"{self.op} {s} {self.dtype}" + (f" ({', '.join(extra)})" if extra else "")


def standard_suite(on_gpu: bool, fp8_ok: bool) -> list[Case]:
    """The cases of ``flopscale profile all`` (small ones on the CPU)."""
    if not on_gpu:
        return [
            Case("matmul", (128, 128, 128), "fp32"),
            Case("matmul", (96, 80, 72), "fp32"),
            Case("attention", (1, 2, 128, 32), "fp32"),
            Case("attention", (1, 2, 128, 32), "fp32", causal=True),
            Case("blocksparse", (1, 2, 128, 32), "fp32", pattern="local", density=0.5, block=32),
            Case("blocksparse", (128, 128, 64), "fp32", pattern="random", density=0.25, block=32, mode="sdd"),
        ]
    cases = [
        Case("matmul", (4096, 4096, 4096), "bf16"),
        Case("matmul", (8192, 8192, 8192), "bf16"),
        Case("matmul", (8192, 8192, 8192), "fp16"),
    ]
    if fp8_ok:
        cases.append(Case("matmul", (8192, 8192, 8192), "fp8"))
    cases += [
        Case("attention", (4, 32, 4096, 128), "bf16"),
        Case("attention", (4, 32, 4096, 128), "bf16", causal=True),
        Case("attention", (1, 32, 16384, 128), "bf16", causal=True),
        Case("blocksparse", (4, 32, 4096, 128), "bf16", pattern="local", density=0.25),
        Case("blocksparse", (4, 32, 4096, 128), "bf16", pattern="random", density=0.25),
        Case("blocksparse", (4096, 4096, 4096), "bf16", pattern="random", density=0.25, mode="sdd"),
        Case("blocksparse", (4096, 4096, 4096), "bf16", pattern="random", density=0.25, mode="dsd"),
    ]
    return cases


# ------------------------------------------------------------------ inputs


@dataclass
class Prepared:
    fn: Callable[[], Any]
    interpreted: bool = False
    note: str = ""
    meta: dict = field(default_factory=dict)


def _torch_dtype(name: str) -> Any:
    import torch

    dt = getattr(torch, DTYPES[name], None)
    if dt is None:
        raise ProfileError(f"this torch has no {DTYPES[name]}")
    return dt


def _randn(shape: tuple, dtype: Any, device: Any, gen: Any) -> Any:
    import torch

    x = torch.randn(*shape, generator=gen, dtype=torch.float32, device=device)
    return x if dtype == torch.float32 else x.to(dtype)


def _layout(case: Case, rows: int, cols: int) -> Any:
    """One layout (shared by all heads) of ``rows x cols`` blocks in the case's pattern."""
    from flopscale import kernels

    BL = kernels.BlockLayout
    if case.pattern == "dense":
        return BL.dense(1, rows, cols, block=case.block)
    if case.pattern == "random":
        return BL.random(1, rows, cols, case.density, seed=0, block=case.block)
    if rows != cols:
        raise ProfileError(f"--pattern {case.pattern} needs a square block grid, got {rows}x{cols} blocks")
    if case.pattern == "causal":
        return BL.causal(1, rows, block=case.block)
    window = max(1, int(round(case.density * rows)))
    return BL.local(1, rows, window, block=case.block)


def validate_case(case: Case) -> None:
    """Shape rules checked before anything runs (one clear line per mistake)."""
    if case.op != "blocksparse":
        return
    blk = case.block
    if case.mode is not None:
        M, N, K = case.shape
        rows, cols = {"sdd": (M, N), "dsd": (M, K), "dds": (K, N)}[case.mode]
        if rows % blk or cols % blk:
            raise ProfileError(f"blocksparse {case.mode}: the sparse side {rows}x{cols} must be a multiple of "
                            f"--block {blk}")
        if case.pattern in ("local", "causal") and rows != cols:
            raise ProfileError(f"--pattern {case.pattern} needs a square sparse side, got {rows}x{cols}; "
                            "use --pattern random or dense")


def _blocksparse_api(name: str) -> Any:
    try:
        from flopscale import kernels

        return getattr(kernels, name)
    except (ImportError, AttributeError) as exc:
        raise _Unavailable(f"block-sparse kernels are not available ({type(exc).__name__}: {exc})") from None


def _prepare_blocksparse_matmul(case: Case, provider: str, device: Any, gen: Any, interpreted: bool) -> Prepared:
    import torch

    M, N, K = case.shape
    blk, mode = case.block, case.mode
    sparse_dims = {"sdd": (M, N), "dsd": (M, K), "dds": (K, N)}[mode]
    dt = _torch_dtype(case.dtype)
    a = _randn((1, 1, M, K), dt, device, gen)
    b = _randn((1, 1, K, N), dt, device, gen)
    if provider == "torch":
        return Prepared(lambda: torch.matmul(a, b), note="dense torch.matmul (every block)")
    bsm = _blocksparse_api("blocksparse_matmul")
    from flopscale.kernels.blocksparse_layer import dense_to_sparse

    layout = _layout(case, sparse_dims[0] // blk, sparse_dims[1] // blk)
    if mode == "dsd":
        a = dense_to_sparse(a, layout)
    elif mode == "dds":
        b = dense_to_sparse(b, layout)
    meta = {"layout_density": float(layout.density), "layout_nnz": int(layout.nnz)}
    return Prepared(lambda: bsm(a, b, layout, mode), interpreted=interpreted, meta=meta)


def prepare(case: Case, provider: str, device: Any, seed: int) -> Prepared:
    """The function to time for ``case`` and ``provider`` (inputs built once, seeded)."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator(device=device).manual_seed(seed)
    on_cpu = device.type == "cpu"
    interpreted = provider == "flopscale" and on_cpu
    dt = _torch_dtype(case.dtype)
    if case.op == "blocksparse" and case.mode is not None:
        return _prepare_blocksparse_matmul(case, provider, device, gen, interpreted)
    if case.op == "matmul":
        M, N, K = case.shape
        if case.dtype == "fp8":
            if on_cpu:
                raise ProfileError("fp8 matmul needs a GPU of compute capability 8.9 or newer")
            a = _randn((M, K), dt, device, gen)
            b = _randn((K, N), dt, device, gen)
            if provider == "flopscale":
                from flopscale import kernels

                return Prepared(lambda: kernels.matmul(a, b))
            bt = b.t().contiguous().t()  # column-major, as torch._scaled_mm requires
            one = torch.ones((), device=device)
            return Prepared(lambda: torch._scaled_mm(a, bt, scale_a=one, scale_b=one, out_dtype=torch.bfloat16),
                            note="torch._scaled_mm")
        a = _randn((M, K), dt, device, gen)
        b = _randn((K, N), dt, device, gen)
        if provider == "flopscale":
            from flopscale import kernels

            return Prepared(lambda: kernels.matmul(a, b), interpreted=interpreted)
        return Prepared(lambda: torch.matmul(a, b), note="torch.matmul")
    B, H, S, D = case.shape
    Hkv = case.kv_heads or H
    if H % Hkv:
        raise ProfileError(f"--kv-heads {Hkv} must divide the number of heads {H}")
    q = _randn((B, H, S, D), dt, device, gen)
    k = _randn((B, Hkv, S, D), dt, device, gen)
    v = _randn((B, Hkv, S, D), dt, device, gen)
    if case.op == "attention":
        if provider == "flopscale":
            from flopscale import kernels

            return Prepared(lambda: kernels.attention(q, k, v, causal=case.causal), interpreted=interpreted)
        kw = {"enable_gqa": True} if Hkv != H else {}
        return Prepared(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=case.causal, **kw),
                        note="F.scaled_dot_product_attention")
    # block-sparse attention
    bsa = _blocksparse_api("blocksparse_attention")
    R = -(-S // case.block)
    layout = _layout(case, R, R)
    meta = {"layout_density": float(layout.density), "layout_nnz": int(layout.nnz)}
    if provider == "flopscale":
        return Prepared(lambda: bsa(q, k, v, layout, causal=case.causal), interpreted=interpreted, meta=meta)
    # the torch path: dense attention with the layout as an element mask
    mask = layout.element_mask(S, S).to(device).unsqueeze(0)  # [1, 1, S, S]
    if case.causal:
        mask = mask & torch.ones(S, S, dtype=torch.bool, device=device).tril()
    kw = {"enable_gqa": True} if Hkv != H else {}
    return Prepared(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **kw),
                    note="dense SDPA with the layout as a mask (counted dense)", meta=meta)


class _Unavailable(Exception):
    pass


def _flops_upper_bound(case: Case) -> float:
    """Dense model FLOPs of the case (no masking): decides whether the interpreter may run it."""
    if case.matmul_shaped:
        M, N, K = case.shape
        return 2.0 * M * N * K
    B, H, S, D = case.shape
    return 4.0 * B * H * S * S * D




def default_shape(op: str, on_gpu: bool, mode: str | None = None) -> tuple:
    """The shape used when none is given: large enough on a GPU to reach its ceiling, small
    enough on the CPU for the Triton interpreter (under ``INTERPRETER_FLOP_LIMIT``)."""
    if op == "matmul" or (op == "blocksparse" and mode is not None):
        return (8192, 8192, 8192) if on_gpu and op == "matmul" else (4096, 4096, 4096) if on_gpu else (128, 128, 128)
    if op == "attention":
        return (4, 32, 4096, 128) if on_gpu else (1, 2, 128, 64)
    if op == "blocksparse":
        return (4, 32, 4096, 128) if on_gpu else (1, 2, 256, 64)
    raise ProfileError(f"no default shape for {op!r}")
