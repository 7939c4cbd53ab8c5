"""flopscale profile: time kernels and say how much of the device they use.

    flopscale profile matmul --shape 8192x8192x8192 --dtype bf16
    flopscale profile attention --shape 4,32,4096,128 --causal
    flopscale profile blocksparse --shape 4,32,4096,128 --pattern local --density 0.25
    flopscale profile all

Each case runs two providers -- the flopscale kernel and the torch path it
replaces -- and prints one row per provider: median time (L2 flushed between
repetitions), achieved TFLOP/s (model FLOPs), share of the roofline ceiling, MFU
against the named peak, GB/s of compulsory traffic, arithmetic intensity, bound,
SM clock and board power (NVML).  FLOP and byte counts come from a
``profiler.Profile`` of one call (the kernels' declared costs; torch's FLOP
formulas), times from ``profiler.bench``.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ._common import UserError, print_json, write_text_atomic

NAME = "profile"
HELP = "profile kernels: time, TFLOP/s, share of measured ceiling, bandwidth, telemetry"
DESCRIPTION = (
    "Profile flopscale kernels against torch: time (median, L2 flushed), TFLOP/s, share of the "
    "roofline ceiling, MFU (measured ceiling by default, --peak datasheet for the datasheet "
    "dense peak), GB/s, arithmetic intensity, bound, SM clock and power. On a machine without "
    "a GPU the flopscale kernels run under the Triton interpreter: their times are not hardware "
    "figures; the torch rows are real CPU numbers."
)

OPS = ("matmul", "attention", "blocksparse", "all")
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "fp8": "float8_e4m3fn"}
PROVIDERS = ("flopscale", "torch")
# the Triton interpreter runs ~3e7 FLOP/s on a CPU core: larger problems are skipped there
INTERPRETER_FLOP_LIMIT = 1e8

CPU_NOTE = ("no CUDA GPU: flopscale kernels run under the Triton interpreter, so their times are NOT "
            "hardware figures; the torch rows are real CPU numbers")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("op", choices=OPS, help="what to profile ('all': a standard suite)")
    parser.add_argument("--shape", help="matmul (and blocksparse --mode): MxNxK; attention/blocksparse: B,H,S,D")
    parser.add_argument("--dtype", choices=sorted(DTYPES),
                        help="element type (default bf16 on a GPU, fp32 on the CPU; fp8: matmul on sm_89+)")
    parser.add_argument("--causal", action="store_true", help="attention: causal (top-left) mask")
    parser.add_argument("--kv-heads", type=int, default=None,
                        help="attention: key/value heads (grouped-query attention; default H)")
    parser.add_argument("--pattern", choices=("local", "causal", "random", "dense"), default="local",
                        help="blocksparse: layout pattern (default local)")
    parser.add_argument("--density", type=float, default=0.25,
                        help="blocksparse: target fraction of blocks present (default 0.25)")
    parser.add_argument("--block", type=int, default=64, help="blocksparse: block side (default 64)")
    parser.add_argument("--mode", choices=("sdd", "dsd", "dds"), default=None,
                        help="blocksparse: profile the block-sparse matmul in this mode with --shape MxNxK "
                             "(default: block-sparse attention with --shape B,H,S,D)")
    parser.add_argument("--provider", choices=("both",) + PROVIDERS, default="both",
                        help="which implementation(s) to run (default both)")
    parser.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                        help="seconds of timed repetitions per row (default 1.0 on a GPU, 0.3 on the CPU)")
    parser.add_argument("--peak", choices=("measured", "datasheet"), default="measured",
                        help="peak for MFU and the ceiling share (default: measured ceiling)")
    parser.add_argument("--recalibrate", action="store_true", help="measure the ceilings again")
    parser.add_argument("--cuda-graph", action="store_true", help="time CUDA graph replays (small kernels)")
    parser.add_argument("--no-flush-l2", action="store_true", help="do not flush the L2 cache between repetitions")
    parser.add_argument("--seed", type=int, default=0, help="seed for the random inputs")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    parser.add_argument("--csv", metavar="PATH", help="also write the rows as CSV")
    parser.add_argument("--trace", metavar="PATH", help="also write a Chrome/Perfetto trace of one call per row")
    parser.add_argument("--plot", metavar="PATH", help="also write a roofline PNG")
    parser.add_argument("--distributed", type=int, default=None, metavar="N",
                        help="print the torchrun line that profiles the same cases on N ranks "
                             "(python -m flopscale.profiler.distributed profile ...) and exit")


# ------------------------------------------------------------------ parsing


def parse_matmul_shape(text: str) -> tuple[int, int, int]:
    parts = text.lower().replace(",", "x").split("x")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) < 1:
        raise UserError(f"--shape for matmul must be MxNxK with positive integers, got {text!r}")
    return dims  # type: ignore[return-value]


def parse_attention_shape(text: str) -> tuple[int, int, int, int]:
    parts = text.replace("x", ",").split(",")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(dims) != 4 or min(dims) < 1:
        raise UserError(f"--shape for attention must be B,H,S,D with positive integers, got {text!r}")
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
        raise UserError(f"this torch has no {DTYPES[name]}")
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
        raise UserError(f"--pattern {case.pattern} needs a square block grid, got {rows}x{cols} blocks")
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
            raise UserError(f"blocksparse {case.mode}: the sparse side {rows}x{cols} must be a multiple of "
                            f"--block {blk}")
        if case.pattern in ("local", "causal") and rows != cols:
            raise UserError(f"--pattern {case.pattern} needs a square sparse side, got {rows}x{cols}; "
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
                raise UserError("fp8 matmul needs a GPU of compute capability 8.9 or newer")
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
        raise UserError(f"--kv-heads {Hkv} must divide the number of heads {H}")
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


# ------------------------------------------------------------------ running


def _progress(i: int, n: int, text: str) -> None:
    if n <= 1:
        return
    width = 20
    done = int(width * i / n)
    bar = "#" * done + "-" * (width - done)
    line = f"[{bar}] {i}/{n} {text}"
    if sys.stderr.isatty():
        end = "\n" if i == n else ""
        sys.stderr.write("\r\x1b[2K" + line + end)
    else:
        sys.stderr.write(line + "\n")
    sys.stderr.flush()


def run_case(case: Case, provider: str, device: Any, args: argparse.Namespace, budget: float) -> tuple[dict, Any]:
    """Profile one (case, provider): returns (row, Profile of one call)."""
    from .. import record
    from ..telemetry import Telemetry
    from ..timing import Timing, bench

    row: dict[str, Any] = {"case": case.title, "op": case.op, "provider": provider,
                           "shape": "x".join(map(str, case.shape)) if case.matmul_shaped else ",".join(map(str, case.shape)),
                           "dtype": case.dtype, "causal": case.causal}
    try:
        prep = prepare(case, provider, device, args.seed)
    except _Unavailable as exc:
        row.update(skipped=True, note=str(exc))
        return row, None
    row.update(prep.meta)
    if case.mode:
        row["mode"] = case.mode
    if prep.interpreted and _flops_upper_bound(case) > INTERPRETER_FLOP_LIMIT:
        row.update(skipped=True, interpreted=True, note=(
            f"Triton interpreter: about {_flops_upper_bound(case):.3g} FLOP is too slow to interpret "
            f"(limit {INTERPRETER_FLOP_LIMIT:.0e}); the torch row has the real CPU numbers"))
        return row, None
    # one call inside a Profile: the cost (and a warm-up)
    try:
        with record.Profile(device=device) as prof:
            prep.fn()
    except ValueError as exc:
        row.update(skipped=True, note=f"cannot run: {exc}")
        return row, None
    recs = prof.records
    flops = sum(r.flops for r in recs)
    row.update(
        flops=flops,
        executed_flops=sum(r.executed_flops for r in recs),
        nonmatmul_flops=sum(r.nonmatmul_flops for r in recs),
        bytes=sum(r.bytes for r in recs),
        launches=len(recs),
        recorded_ops=sorted({r.op for r in recs}),
        peak_dtype=recs[0].peak_dtype if recs else case.dtype,
        interpreted=prep.interpreted,
        skipped=False,
    )
    notes = [prep.note] if prep.note else []
    if any(r.note for r in recs):
        notes += sorted({r.note for r in recs if r.note})
    if prep.interpreted:
        # the Profile call was the warm-up; one more call, timed: the interpreter is too slow
        # (and too far from hardware) for a distribution to matter
        notes.append("Triton interpreter: not a hardware time")
        t0 = time.perf_counter()
        prep.fn()
        t = Timing.from_times([time.perf_counter() - t0], clock="perf_counter", warmup=1)
        tel_summary: dict[str, Any] = {}
    else:
        with Telemetry(device=device) as tel:
            t = bench(prep.fn, warmup=2, time_budget_s=budget, flush_l2=not args.no_flush_l2,
                      cuda_graph=args.cuda_graph and device.type == "cuda", device=device,
                      min_rep=3 if device.type == "cpu" else 10)
        tel_summary = tel.summary()
    row.update(time_s=t.median_s, time_iqr_s=t.iqr_s, time_min_s=t.min_s, reps=t.count, clock=t.clock)
    if tel_summary.get("available"):
        row.update(sm_clock_mhz=tel_summary["sm_clock_mhz"], power_w=tel_summary["power_w"],
                   temperature_c_max=tel_summary["temperature_c_max"],
                   throttle_reasons=tel_summary["throttle_reasons"])
        if tel_summary["power_w"]:
            # FLOP per joule: model FLOPs over (mean board power x median time of a call)
            row["flop_per_joule"] = flops / (tel_summary["power_w"] * t.median_s)
    row["note"] = "; ".join(notes)
    return row, prof


def _annotate(rows: list[dict], ceilings: Any) -> Any:
    import pandas as pd

    from ..roofline import annotate

    live = [r for r in rows if not r.get("skipped")]
    if not live:
        return pd.DataFrame(rows)
    df = pd.DataFrame(live)
    ann = annotate(df, ceilings)
    return ann


def _fmt(x: Any, scale: float = 1.0, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    v = float(x) * scale
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"


def _text_table(df: Any, skipped: list[dict]) -> str:
    headers = ["case", "provider", "time (ms)", "IQR (ms)", "TFLOP/s", "ceiling (%)", "MFU (%)", "GB/s",
               "FLOP/B", "bound", "SM (MHz)", "power (W)"]
    lines = []
    body = []
    for _, r in df.iterrows():
        body.append([
            str(r["case"]), str(r["provider"]) + (" *" if r.get("interpreted") else ""),
            _fmt(r["time_s"], 1e3), _fmt(r["time_iqr_s"], 1e3), _fmt(r["flop_per_s"], 1e-12),
            _fmt(r["ceiling_share"], 100), _fmt(r["mfu"], 100), _fmt(r["bytes_per_s"], 1e-9),
            _fmt(r["arithmetic_intensity"]), str(r["bound"]), _fmt(r.get("sm_clock_mhz")), _fmt(r.get("power_w")),
        ])
    for r in skipped:
        body.append([r["case"], r["provider"], "skipped"] + [""] * (len(headers) - 3))
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(headers)]
    lines.append("  ".join(h.ljust(w) if i < 2 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths))))
    lines.append("  ".join("-" * w for w in widths))
    for b in body:
        lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(b, widths))))
    return "\n".join(lines)


@dataclass
class ProfileRun:
    """What :func:`collect` measured on one device: rows (dicts), the annotated table and more."""

    rows: list[dict]
    df: Any  # pandas DataFrame of the rows that ran, annotated with roofline columns
    skipped: list[dict]
    profiles: list[tuple[str, Any]]  # (row title, profiler.Profile of one call)
    ceilings: Any
    spec: Any
    notes: list[str]
    on_gpu: bool

    def rows_json(self) -> list[dict]:
        return _rows_json(self.df, self.skipped)


def check_args(args: argparse.Namespace, on_gpu: bool) -> list[Case]:
    """Validate the options and build the cases (one clear line per mistake)."""
    if args.time_budget is not None and not (args.time_budget > 0):
        raise UserError(f"--time-budget must be > 0 seconds, got {args.time_budget}")
    if args.block not in (16, 32, 64, 128):
        raise UserError(f"--block must be one of 16, 32, 64, 128, got {args.block}")
    if not (0 < args.density <= 1):
        raise UserError(f"--density must be in (0, 1], got {args.density}")
    if args.kv_heads is not None and args.kv_heads < 1:
        raise UserError(f"--kv-heads must be >= 1, got {args.kv_heads}")
    for opt in ("csv", "trace", "plot"):
        p = getattr(args, opt)
        if p:
            parent = os.path.dirname(os.path.abspath(p))
            if not os.path.isdir(parent):
                raise UserError(f"--{opt}: directory does not exist: {parent}")

    import torch

    dtype = args.dtype or ("bf16" if on_gpu else "fp32")
    fp8_ok = on_gpu and torch.cuda.get_device_capability(torch.cuda.current_device()) >= (8, 9)
    if args.op == "all":
        if args.shape:
            raise UserError("'profile all' runs a fixed suite: --shape does not apply")
        cases = standard_suite(on_gpu, fp8_ok)
    else:
        if not args.shape:
            raise UserError(f"'profile {args.op}' needs --shape ("
                            f"{'MxNxK' if args.op == 'matmul' or args.mode else 'B,H,S,D'})")
        if dtype == "fp8" and (args.op != "matmul" or not fp8_ok):
            raise UserError("fp8 is supported for matmul on GPUs of compute capability 8.9 or newer only")
        if args.op == "matmul":
            cases = [Case("matmul", parse_matmul_shape(args.shape), dtype)]
        elif args.op == "blocksparse" and args.mode:
            cases = [Case("blocksparse", parse_matmul_shape(args.shape), dtype, pattern=args.pattern,
                          density=args.density, block=args.block, mode=args.mode)]
        else:
            shape = parse_attention_shape(args.shape)
            if args.kv_heads is not None and shape[1] % args.kv_heads:
                raise UserError(f"--kv-heads {args.kv_heads} must divide the number of heads {shape[1]}")
            cases = [Case(args.op, shape, dtype, causal=args.causal, kv_heads=args.kv_heads,
                          pattern=args.pattern, density=args.density, block=args.block)]
    for case in cases:
        validate_case(case)
    return cases


def collect(args: argparse.Namespace, device: Any, cases: list[Case] | None = None,
            before_job: Callable[[int, Case, str], None] | None = None, show_progress: bool = True,
            after_job: Callable[[int, dict], None] | None = None) -> ProfileRun:
    """Profile the cases of ``args`` on ``device``: every (case, provider) row, annotated.

    ``before_job(i, case, provider)`` runs before each row and ``after_job(i, row)`` after it
    (``profiler.distributed`` uses them to keep the ranks in step and to keep finished rows).
    Raises :class:`UserError` for bad options.
    """
    on_gpu = device.type == "cuda"
    if cases is None:
        cases = check_args(args, on_gpu)
    budget = args.time_budget if args.time_budget is not None else (1.0 if on_gpu else 0.3)
    providers = PROVIDERS if args.provider == "both" else (args.provider,)

    from ..roofline import resolve_ceilings
    from ..devices import calibrate, current_spec

    if args.peak == "measured":
        ceilings = calibrate(device, recalibrate=args.recalibrate, quick=not on_gpu)
    else:
        if args.recalibrate:
            calibrate(device, recalibrate=True)
        ceilings = resolve_ceilings("datasheet", device=device)
    spec = current_spec(device)

    rows: list[dict] = []
    profiles: list[Any] = []
    jobs = [(c, p) for c in cases for p in providers]
    show = show_progress and (args.op == "all" or len(jobs) > 2)
    for i, (case, prov) in enumerate(jobs):
        if before_job is not None:
            before_job(i, case, prov)
        if show:
            _progress(i, len(jobs), f"{case.title} [{prov}]")
        row, prof = run_case(case, prov, device, args, budget)
        rows.append(row)
        if after_job is not None:
            after_job(i, row)
        if prof is not None:
            profiles.append((f"{case.title} [{prov}]", prof))
    if show:
        _progress(len(jobs), len(jobs), "done")

    df = _annotate(rows, ceilings)
    skipped = [r for r in rows if r.get("skipped")]
    if args.op != "all" and not len(df.get("time_s", [])) and skipped:
        raise UserError("; ".join(r.get("note", "skipped") for r in skipped))

    notes = []
    if not on_gpu:
        notes.append(CPU_NOTE)
    if "ceiling_share" in df.columns:
        over = df[(df["ceiling_share"] > 1.05) & ~df.get("interpreted", False).astype(bool)]
        if len(over):
            notes.append(f"{len(over)} row(s) beat the ceiling by more than 5%: the ceilings look stale or were "
                         "measured under load; rerun with --recalibrate")
    if not ceilings.flops:
        notes.append(f"no peak rates in {ceilings.label}: MFU and ceiling share are not computed")
    if spec.estimated:
        notes.append(f"device not in the spec table: {spec.source}")
    return ProfileRun(rows, df, skipped, profiles, ceilings, spec, notes, on_gpu)


def distributed_line(args: argparse.Namespace, nproc: int) -> list[str]:
    """The torchrun command that runs this profile on ``nproc`` ranks (``--distributed``)."""
    probe = argparse.ArgumentParser(add_help=False)
    add_arguments(probe)
    argv: list[str] = [args.op]
    for action in probe._actions:
        if not action.option_strings or action.dest in ("distributed", "op", "help", "json"):
            continue
        value = getattr(args, action.dest, action.default)
        if value == action.default or value is None:
            continue
        flag = action.option_strings[0]
        if isinstance(action, argparse._StoreTrueAction):
            argv.append(flag)
        else:
            argv += [flag, str(value)]
    return ["torchrun", f"--nproc-per-node={nproc}", "-m", "flopscale.profiler.distributed", "profile", *argv]


def _print_distributed(args: argparse.Namespace) -> int:
    import shlex

    import torch

    n = args.distributed
    if n < 1:
        raise UserError(f"--distributed must be a number of ranks >= 1, got {n}")
    if args.trace or args.plot:
        raise UserError("--trace and --plot are per-device outputs: they do not go with --distributed")
    line = distributed_line(args, n)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    notes = []
    if gpus:
        notes.append(f"backend nccl, one rank per GPU ({gpus} GPU(s) here)")
        if n > gpus:
            notes.append(f"{n} ranks > {gpus} GPUs on this machine: use --nproc-per-node {gpus} per node")
    else:
        notes.append("no CUDA GPU here: the ranks use gloo on the CPU (kernels under the Triton interpreter)")
    notes.append("several nodes: add --nnodes M --node-rank R --rdzv-endpoint HOST:PORT to the torchrun line "
                 "on every node")
    if args.json:
        print_json({"command": line, "line": shlex.join(line), "nproc_per_node": n, "notes": notes})
        return 0
    print(shlex.join(line))
    for note in notes:
        print(f"# {note}")
    return 0


def run(args: argparse.Namespace) -> int:
    import torch

    if getattr(args, "distributed", None) is not None:
        return _print_distributed(args)
    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        # kernels must run under the Triton interpreter; set before triton is imported
        os.environ.setdefault("TRITON_INTERPRET", "1")
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    cases = check_args(args, on_gpu)
    res = collect(args, device, cases)
    df, skipped, rows, profiles, ceilings, spec, notes = (res.df, res.skipped, res.rows, res.profiles,
                                                          res.ceilings, res.spec, res.notes)
    if args.csv:
        write_text_atomic(args.csv, df.to_csv(index=False))
    if args.trace:
        write_text_atomic(args.trace, _merged_trace(profiles))
    if args.plot:
        from ..roofline import plot_roofline

        if "time_s" in df.columns and len(df):
            plot_df = df.copy()
            plot_df["op"] = plot_df["case"] + " [" + plot_df["provider"] + "]"
            from ._common import atomic_path

            with atomic_path(args.plot) as tmp:
                plot_roofline(plot_df, ceilings, tmp, title=f"flopscale profile: {ceilings.label}")

    if args.json:
        print_json({
            "device": spec.to_dict(),
            "peak": args.peak,
            "peak_source": ceilings.label,
            "ceilings": ceilings.to_dict(),
            "notes": notes,
            "rows": _rows_json(df, skipped),
        })
        return 0
    for n in notes:
        print(f"note: {n}")
    print(_text_table(df, skipped) if len(df) and "time_s" in df.columns else "(no rows)")
    print()
    print(footer(args, ceilings, rows))
    return 0


def footer(args: argparse.Namespace, ceilings: Any, rows: list[dict]) -> str:
    """The lines under the table: which peak, what the columns mean, per-row notes."""
    lines = [f"peak for MFU and ceiling share: {ceilings.label}"]
    peaks = ", ".join(f"{k} {v / 1e12:.4g} TFLOP/s" for k, v in ceilings.flops.items())
    bw = f"{ceilings.bandwidth / 1e9:.4g} GB/s" if ceilings.bandwidth else "unknown"
    lines.append(f"  peaks: {peaks or 'none'}; bandwidth {bw}")
    lines.append("  time: median of repetitions" + ("" if args.no_flush_l2 else ", L2 flushed between them")
                 + "; TFLOP/s counts model FLOPs; ceiling = roofline time / time; GB/s = compulsory bytes / time")
    if any(r.get("interpreted") and not r.get("skipped") for r in rows):
        lines.append("  * Triton interpreter: a single call timed on the CPU, not a hardware figure")
    for r in rows:
        if r.get("note"):
            lines.append(f"  {r['case']} [{r['provider']}]: {r['note']}")
    return "\n".join(lines)


def _rows_json(df: Any, skipped: list[dict]) -> list[dict]:
    out = []
    if len(df) and "time_s" in df.columns:
        out = df.to_dict(orient="records")
    return out + skipped


def _merged_trace(profiles: list[tuple[str, Any]]) -> str:
    import json

    events: list[dict] = []
    for pid, (name, prof) in enumerate(profiles):  # one process track per row, each from 0
        for ev in prof.chrome_trace()["traceEvents"]:
            ev = dict(ev, pid=pid)
            if ev.get("ph") == "M" and ev.get("name") == "process_name":
                ev["args"] = {"name": name}
            events.append(ev)
    return json.dumps({"traceEvents": events, "displayTimeUnit": "ms", "otherData": {"producer": "flopscale profile"}})
