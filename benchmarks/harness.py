"""One harness, several providers per operator, one table.

Each suite module (``benchmarks/bench_<suite>.py``) defines ``SUITE`` (its name) and
``rows(ctx) -> Iterator[dict]``.  A row describes one (op, shape, dtype, provider,
pass) measurement; the harness fills in derived columns, writes each row to the CSV
as soon as it arrives (so an interrupted run keeps what it finished) and prints it.

Every provider is checked for correctness against a float64 (or fp32) reference
*before* it is timed: a fast wrong answer is reported as ``wrong``, not fast.

Columns (units in the names):
    suite, op, shape, dtype, pass, provider, status, median_ms, iqr_ms, reps,
    tflops (model FLOP / median time, 1e12 FLOP/s), pct_ceiling (of the measured
    ceiling for that dtype), gbps (compulsory bytes / median time, 1e9 B/s),
    speedup (baseline median / this median, baseline measured in the same run),
    rel_err (||out - ref|| / ||ref|| against the reference), flops (model FLOP),
    bytes, note
"""
from __future__ import annotations

import csv
import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch

COLUMNS = (
    "suite", "op", "shape", "dtype", "pass", "provider", "status", "median_ms", "iqr_ms", "reps",
    "tflops", "pct_ceiling", "gbps", "speedup", "rel_err", "flops", "bytes", "note",
)

# tolerance on ||out - ref|| / ||ref|| by input dtype (DESIGN: fp32 << 1e-4, 1e-3 with tf32,
# fp16/bf16 about 1e-2).  Expected errors with fp32 accumulation are set by the rounding of the
# output: ~3e-4 for fp16, ~2e-3 for bf16 (unit roundoff 2^-8), whatever K is, so 1e-2 leaves
# 4-5x margin for bf16 and still catches a wrong tile.  The fp8 reference uses the quantised
# inputs exactly; the looser bound is for Hopper's fast (reduced-precision, ~13-14 bit) fp8
# tensor-core accumulation, which a truncation model puts at 1-2e-2 for K = 14336.
TOLERANCE = {
    "fp32": 1e-4, "tf32": 2e-3, "fp16": 1e-2, "bf16": 1e-2, "fp8": 5e-2,
}

# a call whose eager median is below this is retimed with the launch overhead hidden
# (hide_launch="auto"): there the host's launch overhead, not the kernels, would set the time
LAUNCH_BOUND_BELOW_S = 200e-6

DTYPES = {
    "fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
}


@dataclasses.dataclass
class Context:
    """What a suite needs to know about this run."""

    device: str
    quick: bool
    ceilings: Any = None  # profiler Ceilings: .flops[dtype] (FLOP/s), .bandwidth (B/s)
    time_budget_s: float = 0.5

    @property
    def on_gpu(self) -> bool:
        return self.device == "cuda"

    def ceiling(self, dtype: str) -> float | None:
        if self.ceilings is None:
            return None
        flops = getattr(self.ceilings, "flops", {}) or {}
        return flops.get(dtype) or flops.get("bf16" if dtype == "fp16" else dtype)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; NaN anywhere gives inf (never passes)."""
    out64 = out.detach().to(torch.float64)
    ref64 = ref.detach().to(torch.float64).to(out64.device)
    if not torch.isfinite(out64).all():
        return math.inf
    denom = torch.linalg.vector_norm(ref64).item()
    num = torch.linalg.vector_norm(out64 - ref64).item()
    return num / denom if denom > 0 else num


def time_fn(fn: Callable[[], Any], ctx: Context, cuda_graph: bool = False, hide_launch: bool | str = False):
    """Time ``fn`` with :func:`profiler.bench` (L2 flushed between repetitions on a GPU).

    ``cuda_graph``: replay a CUDA graph of ``fn`` (only for calls known to be capturable).
    ``hide_launch``: True = device spin before each start event (device time only, see
    :func:`profiler.bench`); ``"auto"`` = time eagerly and, on a GPU, retime that way when
    the eager median is under ``LAUNCH_BOUND_BELOW_S``.  Returns ``(Timing, note)``.
    """
    from flopscale.profiler import bench

    kw = dict(time_budget_s=ctx.time_budget_s, flush_l2=ctx.on_gpu, cuda_graph=bool(cuda_graph))
    if hide_launch == "auto":
        t = bench(fn, **kw)
        if not ctx.on_gpu or t.median_s >= LAUNCH_BOUND_BELOW_S:
            return t, ""
        h = bench(fn, hide_launch=True, **kw)
        if not h.hide_launch:
            return t, ""
        return h, f"device time, launch overhead hidden (eager median {t.median_s * 1e6:.1f} us)"
    t = bench(fn, hide_launch=bool(hide_launch), **kw)
    notes = (["CUDA graph replay"] if cuda_graph else []) + (["device time, launch overhead hidden"] if t.hide_launch else [])
    return t, "; ".join(notes)


def _recover_cuda() -> None:
    """After a failing provider: wait for the device, so an asynchronous error surfaces here."""
    if not torch.cuda.is_available():
        return
    try:
        torch.cuda.synchronize()
    except Exception:
        pass


def _error_note(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:160] if text else ''}"


def guarded(rows: Iterable[dict], base: dict, providers: Iterable[str] = ("-",)) -> Iterator[dict]:
    """Pass ``rows`` through; if producing them raises (building inputs, out of memory, a CUDA
    error), end with one error row per provider in ``providers`` that has no row yet."""
    seen: set[str] = set()
    try:
        for row in rows:
            seen.add(str(row.get("provider")))
            yield row
    except Exception as exc:  # noqa: BLE001 - a failing shape is a row, never the end of the run
        oom = isinstance(exc, torch.cuda.OutOfMemoryError)
        if torch.cuda.is_available():
            try:
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
            except Exception:
                pass
        missing = [p for p in providers if p not in seen] or ["-"]
        for p in missing:
            yield dict(base, provider=p, status="skipped" if oom else "error",
                       note="out of memory" if oom else _error_note(exc))


def measure(
    ctx: Context,
    *,
    base: dict,
    providers: list[tuple[str, Callable[[], Any]]],
    reference: Callable[[], torch.Tensor] | None,
    dtype: str,
    flops: float,
    nbytes: float,
    check: Callable[[Any], torch.Tensor] | None = None,
    cuda_graph: bool = False,
    hide_launch: bool | str = False,
    baseline_s: float | None = None,
) -> Iterator[dict]:
    """Check then time each provider; the first provider that passes is the baseline
    (unless ``baseline_s``, a median in seconds measured in the same run, is given).

    ``providers``: (name, fn) with the baseline (torch) first.  ``check`` maps a
    provider's return value to the tensor compared with ``reference()``.  ``cuda_graph`` and
    ``hide_launch``: see :func:`time_fn` (``hide_launch="auto"`` for calls that may be
    launch-bound: small kernels).
    A reference that cannot be computed makes every provider an error row.
    """
    tol = TOLERANCE.get(dtype, 1e-2)
    try:
        ref = reference() if reference is not None else None
    except Exception as exc:  # noqa: BLE001
        oom = isinstance(exc, torch.cuda.OutOfMemoryError)
        if oom:
            torch.cuda.empty_cache()
        note = ("reference: out of memory" if oom else "reference failed: " + _error_note(exc))
        for name, _fn in providers:
            yield dict(base, provider=name, dtype=dtype, flops=flops, bytes=nbytes,
                       status="skipped" if oom else "error", note=note)
        return
    for name, fn in providers:
        row = dict(base, provider=name, dtype=dtype, flops=flops, bytes=nbytes)
        note = ""
        try:
            out = fn()
            err = None
            if ref is not None:
                err = rel_err(check(out) if check else out, ref)
                row["rel_err"] = err
            out = None  # free the output (and any autograd graph) before timing
            if err is not None and not err <= tol:
                row.update(status="wrong", note=f"rel_err {err:.2e} > tolerance {tol:.0e}")
                yield row
                continue
            if not ctx.on_gpu:
                row.update(status="ok", note="correctness only (no GPU: interpreter timings are not hardware figures)")
                yield row
                continue
            t, note = time_fn(fn, ctx, cuda_graph=cuda_graph, hide_launch=hide_launch)
        except torch.cuda.OutOfMemoryError:
            out = None
            _recover_cuda()
            torch.cuda.empty_cache()
            row.update(status="skipped", note="out of memory")
            yield row
            continue
        except Exception as exc:  # a provider that fails is a row, not a crash
            out = None
            _recover_cuda()
            row.update(status="error", note=_error_note(exc))
            yield row
            continue
        med = t.median_s
        row.update(status="ok", median_ms=med * 1e3, iqr_ms=t.iqr_s * 1e3, reps=t.count)
        notes = [note]
        if t.unstable:
            notes.append(f"timing {t.stability_note}")
        if flops:
            row["tflops"] = flops / med / 1e12
            peak = ctx.ceiling(dtype)
            if peak:
                row["pct_ceiling"] = 100.0 * flops / med / peak
                notes.append(ceiling_note(row["pct_ceiling"]))
        row["note"] = "; ".join(x for x in (row.get("note"), *notes) if x)
        if not row["note"]:
            del row["note"]
        if nbytes:
            row["gbps"] = nbytes / med / 1e9
        if baseline_s is None:
            baseline_s = med
            row["speedup"] = 1.0
        else:
            row["speedup"] = baseline_s / med
        yield row


def ceiling_note(pct: float) -> str:
    """'' for a share of the ceiling up to 100 % (2 % for rounding), else the flag a ratio above 1 needs."""
    if pct is None or not math.isfinite(pct) or pct <= 102.0:
        return ""
    return (f"{pct:.0f}% of the measured ceiling is impossible: the ceiling is stale or was measured under "
            "load (recalibrate: profiler.calibrate(recalibrate=True))")


def skipped(base: dict, reason: str, providers: Iterable[str] = ("-",)) -> Iterator[dict]:
    for p in providers:
        yield dict(base, provider=p, status="skipped", note=reason)


class CsvSink:
    """Write rows as they arrive; flush after each so an interrupted run keeps them.

    The file is created exclusively (an existing file is never overwritten: FileExistsError)
    and only when the first row arrives, so a run that ends before its first row leaves no
    header-only file behind.  ``rows`` counts the rows written."""

    def __init__(self, path: Path, exclusive: bool = True):
        self.path = Path(path)
        self.rows = 0
        self._mode = "x" if exclusive else "w"
        self._fh = None
        self._w = None
        if exclusive:  # claim the name now (a concurrent run picks another); written on the first row
            self._fh = open(self.path, "x", newline="")
            self._fh.close()
            self._fh = None
            self._mode = "w"

    def _open(self) -> None:
        self._fh = open(self.path, self._mode, newline="")
        self._w = csv.DictWriter(self._fh, fieldnames=COLUMNS, extrasaction="ignore")
        self._w.writeheader()

    def write(self, row: dict) -> None:
        if self._fh is None:
            self._open()
        self._w.writerow({k: _fmt_csv(row.get(k)) for k in COLUMNS})
        self.rows += 1
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        """Close; a file that never got a row is removed (no empty or header-only table)."""
        if self._fh is not None:
            self._fh.close()
        if self.rows == 0:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass


def _fmt_csv(v: Any) -> Any:
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.6g}"
    return "" if v is None else v


def fmt(v: Any, spec: str = ".3g") -> str:
    if v is None or v == "":
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "inf"
        return format(v, spec)
    return str(v)


TABLE_COLS = (
    ("op", "op", "s"), ("shape", "shape", "s"), ("dtype", "dtype", "s"), ("pass", "pass", "s"),
    ("provider", "provider", "s"), ("status", "status", "s"), ("median_ms", "ms", ".4g"),
    ("tflops", "TFLOP/s", ".4g"), ("pct_ceiling", "%ceil", ".3g"), ("gbps", "GB/s", ".4g"),
    ("speedup", "speedup", ".3g"), ("rel_err", "rel_err", ".1e"),
)


def format_row(row: dict, widths: dict[str, int] | None = None) -> str:
    widths = widths or {}
    cells = "  ".join(f"{fmt(row.get(k), spec):<{widths.get(k, 10)}}" for k, _, spec in TABLE_COLS)
    return f"{cells}  {row.get('note') or ''}".rstrip()


def header_line(widths: dict[str, int] | None = None) -> str:
    widths = widths or {}
    return "  ".join(f"{title:<{widths.get(k, 10)}}" for k, title, _ in TABLE_COLS) + "  note"


WIDTHS = {"op": 18, "shape": 22, "dtype": 5, "pass": 11, "provider": 29, "status": 7,
          "median_ms": 9, "tflops": 8, "pct_ceiling": 6, "gbps": 8, "speedup": 7, "rel_err": 8}


def markdown(rows: list[dict], header: dict[str, Any]) -> str:
    lines = ["# flopscale bench", ""]
    for k, v in header.items():
        lines.append(f"- **{k}**: {v}")
    lines += [
        "",
        "TFLOP/s = model FLOP / median time; %ceil = share of the measured ceiling for the dtype; "
        "GB/s = compulsory bytes / median time; speedup = baseline (first provider) median / this "
        "median, measured in the same run; rel_err = ||out - ref|| / ||ref|| against a float64/fp32 reference.",
        "",
        "| " + " | ".join(t for _, t, _ in TABLE_COLS) + " | note |",
        "|" + "---|" * (len(TABLE_COLS) + 1),
    ]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(k), s) for k, _, s in TABLE_COLS) + f" | {r.get('note') or ''} |")
    return "\n".join(lines) + "\n"


def environment() -> dict[str, Any]:
    """Card, clocks, power, driver and library versions, for the table header."""
    import platform

    info: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "python": platform.python_version(),
                            "torch": torch.__version__, "cuda": torch.version.cuda}
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:
        info["triton"] = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info["device"] = f"{p.name} (sm_{p.major}{p.minor}, {p.multi_processor_count} SMs)"
    else:
        info["device"] = f"CPU ({torch.get_num_threads()} threads), no CUDA device"
    info.update(nvml_snapshot())
    return info


def nvml_snapshot() -> dict[str, Any]:
    """Clocks, power and temperature now, or why they are unavailable."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:
        return {"nvml": f"unavailable ({exc})"}
    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
    except Exception as exc:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
        return {"nvml": f"query failed ({exc})"}
    out: dict[str, Any] = {}
    failed: list[str] = []
    queries = {  # each field on its own: one unsupported query must not hide the others
        "driver": lambda: pynvml.nvmlSystemGetDriverVersion(),
        "sm_clock_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
        "mem_clock_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM),
        "power_w": lambda: pynvml.nvmlDeviceGetPowerUsage(h) / 1000.0,
        "temperature_c": lambda: pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU),
    }
    try:
        for key, query in queries.items():
            try:
                v = query()
                out[key] = v.decode() if isinstance(v, bytes) else v
            except Exception:
                failed.append(key)
        if failed:
            out["nvml"] = "not available: " + ", ".join(failed)
        return out
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
