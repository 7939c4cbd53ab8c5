"""Profile flopscale kernels against the torch path they replace: ``flopscale profile``.

    from flopscale.profiler.profile_run import ProfileOptions, profile_kernels
    run = profile_kernels(ProfileOptions(op="matmul"))     # default shape for the device
    print(run)            # the table, the peak used, notes
    run.to_dict()         # the same as 'flopscale profile ... --json'

Each (case, provider) row: the model/executed FLOPs and bytes of one call (from a
:class:`profiler.Profile`: the kernels' declared costs, torch's FLOP formulas), the
median of timed repetitions (:func:`profiler.bench`, L2 flushed; the IQR beside it, and
"unstable" when the IQR is at least half the median), the achieved rate (model FLOPs /
median time), share of the roofline ceiling, MFU against the named peak (for one call
repeated, the call's time is its wall time), GB/s, arithmetic intensity, bound, SM clock
and board power (NVML).  A row faster than the measured ceiling makes the ceilings be
measured again once; what still beats them is flagged.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .profile_cases import (CPU_NOTE, DTYPES, INTERPRETER_FLOP_LIMIT, PROVIDERS, Case, ProfileError, _flops_upper_bound,
                            _Unavailable, default_shape, parse_attention_shape, parse_matmul_shape, prepare,
                            standard_suite, validate_case)
from .profile_table import rate_unit

__all__ = ["ProfileOptions", "ProfileRun", "build_cases", "profile_kernels", "run_case", "rows_table"]


@dataclass
class ProfileOptions:
    """Plain values describing a profile (the CLI's options)."""

    op: str = "matmul"  # matmul | attention | blocksparse | all
    shape: str | None = None  # None: default_shape(op)
    dtype: str | None = None  # None: bf16 on a GPU, fp32 on the CPU
    causal: bool = False
    kv_heads: int | None = None
    pattern: str = "local"
    density: float = 0.25
    block: int = 64
    mode: str | None = None
    provider: str = "both"
    time_budget: float | None = None  # seconds of timed repetitions per row
    peak: str = "measured"
    recalibrate: bool = False
    cuda_graph: bool = False
    flush_l2: bool = True
    seed: int = 0

    @classmethod
    def from_namespace(cls, ns: Any) -> "ProfileOptions":
        names = cls.__dataclass_fields__
        values = {k: getattr(ns, k) for k in names if hasattr(ns, k)}
        if hasattr(ns, "no_flush_l2"):
            values["flush_l2"] = not ns.no_flush_l2
        return cls(**values)


def check_options(o: ProfileOptions) -> None:
    if o.time_budget is not None:
        v = o.time_budget
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ProfileError(f"--time-budget must be a finite number of seconds > 0, got {v}")
    if o.block not in (16, 32, 64, 128):
        raise ProfileError(f"--block must be one of 16, 32, 64, 128, got {o.block}")
    if not (0 < o.density <= 1):
        raise ProfileError(f"--density must be in (0, 1], got {o.density}")
    if o.kv_heads is not None and o.kv_heads < 1:
        raise ProfileError(f"--kv-heads must be >= 1, got {o.kv_heads}")


def build_cases(o: ProfileOptions, on_gpu: bool) -> tuple[list[Case], list[str]]:
    """Validate the options and build the cases; returns (cases, notes)."""
    import torch

    check_options(o)
    notes: list[str] = []
    dtype = o.dtype or ("bf16" if on_gpu else "fp32")
    fp8_ok = on_gpu and torch.cuda.get_device_capability(torch.cuda.current_device()) >= (8, 9)
    if o.op == "all":
        if o.shape:
            raise ProfileError("'profile all' runs a fixed suite: --shape does not apply")
        cases = standard_suite(on_gpu, fp8_ok)
    else:
        if dtype == "fp8" and (o.op != "matmul" or not fp8_ok):
            raise ProfileError("fp8 is supported for matmul on GPUs of compute capability 8.9 or newer only")
        matmul_shaped = o.op == "matmul" or (o.op == "blocksparse" and o.mode)
        if o.shape:
            shape = parse_matmul_shape(o.shape) if matmul_shaped else parse_attention_shape(o.shape)
        else:
            shape = default_shape(o.op, on_gpu, o.mode)
            sep = "x" if matmul_shaped else ","
            notes.append(f"no --shape: default {o.op} shape {sep.join(map(str, shape))} on "
                         f"{'a GPU' if on_gpu else 'the CPU'}")
        if o.op == "matmul":
            cases = [Case("matmul", shape, dtype)]
        elif matmul_shaped:
            cases = [Case("blocksparse", shape, dtype, pattern=o.pattern, density=o.density, block=o.block,
                          mode=o.mode)]
        else:
            if o.kv_heads is not None and shape[1] % o.kv_heads:
                raise ProfileError(f"--kv-heads {o.kv_heads} must divide the number of heads {shape[1]}")
            cases = [Case(o.op, shape, dtype, causal=o.causal, kv_heads=o.kv_heads, pattern=o.pattern,
                          density=o.density, block=o.block)]
    for case in cases:
        validate_case(case)
    return cases, notes


# ------------------------------------------------------------------ running


def _progress(i: int, n: int, text: str) -> None:
    if n <= 1:
        return
    width = 20
    done = int(width * i / n)
    line = f"[{'#' * done}{'-' * (width - done)}] {i}/{n} {text}"
    if sys.stderr.isatty():
        sys.stderr.write("\r\x1b[2K" + line + ("\n" if i == n else ""))
    else:
        sys.stderr.write(line + "\n")
    sys.stderr.flush()


def run_case(case: Case, provider: str, device: Any, o: ProfileOptions, budget: float) -> tuple[dict, Any]:
    """Profile one (case, provider): returns (row, Profile of one call)."""
    from . import record
    from .telemetry import Telemetry
    from .timing import Timing, bench

    row: dict[str, Any] = {"case": case.title, "op": case.op, "provider": provider,
                           "shape": ("x" if case.matmul_shaped else ",").join(map(str, case.shape)),
                           "dtype": case.dtype, "causal": case.causal}
    try:
        prep = prepare(case, provider, device, o.seed)
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
    t_first = time.perf_counter()
    try:  # one call inside a Profile: the cost (and a warm-up)
        with record.Profile(device=device, modules=False) as prof:
            prep.fn()
    except ValueError as exc:
        row.update(skipped=True, note=f"cannot run: {exc}")
        return row, None
    t_first = time.perf_counter() - t_first
    recs = prof.records
    flops = sum(r.flops for r in recs)
    row.update(flops=flops, executed_flops=sum(r.executed_flops for r in recs),
               nonmatmul_flops=sum(r.nonmatmul_flops for r in recs), bytes=sum(r.bytes for r in recs),
               launches=len(recs), recorded_ops=sorted({r.op for r in recs}),
               peak_dtype=recs[0].peak_dtype if recs else case.dtype, interpreted=prep.interpreted, skipped=False)
    notes = [prep.note] if prep.note else []
    notes += sorted({r.note for r in recs if r.note})
    tel_summary: dict[str, Any] = {}
    if prep.interpreted:
        # the interpreter is too slow (and too far from hardware) for a distribution to matter:
        # the Profile call was the warm-up and one more call is timed -- unless the first call
        # already used up the time budget, then its own time stands
        notes.append("Triton interpreter: not a hardware time")
        if t_first > budget:
            notes.append(f"the first call took {t_first:.3g} s, over the time budget of {budget:g} s: its time is shown")
            t = Timing.from_times([t_first], clock="perf_counter", warmup=0)
        else:
            t0 = time.perf_counter()
            prep.fn()
            t = Timing.from_times([time.perf_counter() - t0], clock="perf_counter", warmup=1)
    else:
        # the budget covers the warm-up too: a call that takes a good part of it is warmed up once
        warmup = 1 if t_first > budget / 4 else 2
        with Telemetry(device=device) as tel:
            t = bench(prep.fn, warmup=warmup, time_budget_s=budget, flush_l2=o.flush_l2,
                      cuda_graph=o.cuda_graph and device.type == "cuda", device=device,
                      min_rep=3 if device.type == "cpu" else 10)
        tel_summary = tel.summary()
    row.update(time_s=t.median_s, time_iqr_s=t.iqr_s, time_min_s=t.min_s, reps=t.count, clock=t.clock,
               time_unstable=t.unstable)
    if t.unstable:
        notes.append(f"timing {t.stability_note}: the median is a rough figure (a busy machine?)")
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

    from .roofline import annotate

    live = [r for r in rows if not r.get("skipped")]
    return annotate(pd.DataFrame(live), ceilings) if live else pd.DataFrame(rows)


def _beats_peak(df: Any) -> Any:
    """Rows (not interpreted) whose model rate beats their dtype's ceiling by more than 5%."""
    if "mfu" not in df.columns or not len(df):
        return df.iloc[0:0]
    live = ~df.get("interpreted", False).astype(bool)
    return df[live & (df["mfu"] > 1.05)]


# ------------------------------------------------------------------ rendering


def _fmt(x: Any, scale: float = 1.0, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    v = float(x) * scale
    if v == 0:
        return "0"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.{digits}g}"


def _above_one(x: Any) -> str:
    """'!' after a ratio that cannot be above 1 but is (beyond rounding)."""
    try:
        return "!" if float(x) > 1.02 else ""
    except (TypeError, ValueError):
        return ""


def rows_table(df: Any, skipped: list[dict]) -> str:
    """The rows as an aligned text table; the rate unit (TFLOP/s, GFLOP/s, ...) follows the magnitude."""
    has = len(df) and "flop_per_s" in df.columns
    scale, unit = rate_unit(list(df["flop_per_s"]) if has else [])
    headers = ["case", "provider", "time (ms)", "IQR (ms)", unit, "ceiling (%)", "MFU (%)", "GB/s", "FLOP/B",
               "bound", "SM (MHz)", "power (W)"]
    body = []
    for _, r in (df.iterrows() if has else iter(())):
        t = _fmt(r["time_s"], 1e3) + (" unstable" if bool(r.get("time_unstable", False)) else "")
        body.append([str(r["case"]), str(r["provider"]) + (" *" if r.get("interpreted") else ""), t,
                     _fmt(r["time_iqr_s"], 1e3), _fmt(r["flop_per_s"], 1 / scale),
                     _fmt(r["ceiling_share"], 100) + _above_one(r["ceiling_share"]),
                     _fmt(r["mfu"], 100) + _above_one(r["mfu"]), _fmt(r["bytes_per_s"], 1e-9),
                     _fmt(r["arithmetic_intensity"]), str(r["bound"]), _fmt(r.get("sm_clock_mhz")),
                     _fmt(r.get("power_w"))])
    for r in skipped:
        body.append([r["case"], r["provider"], "skipped"] + [""] * (len(headers) - 3))
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(headers), "  ".join("-" * w for w in widths)] + [line(b) for b in body])


def footer_text(ceilings: Any, rows: list[dict], flush_l2: bool = True) -> str:
    """The lines under the table: which peak, what the columns mean, per-row notes."""
    from .profile_table import fmt_rate

    lines = [f"peak for MFU and ceiling share: {ceilings.label}"]
    peaks = ", ".join(f"{k} {fmt_rate(v)}" for k, v in ceilings.flops.items())
    bw = f"{ceilings.bandwidth / 1e9:.4g} GB/s" if ceilings.bandwidth else "unknown"
    lines.append(f"  peaks: {peaks or 'none'}; bandwidth {bw}")
    lines.append("  time: median of repetitions" + (", L2 flushed between them" if flush_l2 else "")
                 + "; FLOP/s counts model FLOPs; MFU = model FLOPs / (time of a call x peak); "
                   "ceiling = roofline time / time; GB/s = compulsory bytes / time; ! = above 100%, impossible")
    if any(r.get("interpreted") and not r.get("skipped") for r in rows):
        lines.append("  * Triton interpreter: a single call timed on the CPU, not a hardware figure")
    for r in rows:
        if r.get("note"):
            lines.append(f"  {r['case']} [{r['provider']}]: {r['note']}")
    return "\n".join(lines)


@dataclass
class ProfileRun:
    """What :func:`profile_kernels` measured on one device; renders itself (str, to_dict)."""

    rows: list[dict]
    df: Any  # pandas DataFrame of the rows that ran, annotated with roofline columns
    skipped: list[dict]
    profiles: list[tuple[str, Any]]  # (row title, profiler.Profile of one call)
    ceilings: Any
    spec: Any
    notes: list[str]
    on_gpu: bool
    peak: str = "measured"
    flush_l2: bool = True

    def rows_json(self) -> list[dict]:
        out = self.df.to_dict(orient="records") if len(self.df) and "time_s" in self.df.columns else []
        return out + self.skipped

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.spec.to_dict(), "peak": self.peak, "peak_source": self.ceilings.label,
                "ceilings": self.ceilings.to_dict(), "notes": list(self.notes), "rows": self.rows_json()}

    def to_text(self) -> str:
        lines = [f"note: {n}" for n in self.notes]
        lines.append(rows_table(self.df, self.skipped) if len(self.df) and "time_s" in self.df.columns
                     else "(no rows)")
        lines += ["", footer_text(self.ceilings, self.rows, self.flush_l2)]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()

    def write_csv(self, path: Any) -> None:
        from ._io import write_text_atomic

        write_text_atomic(path, self.df.to_csv(index=False))

    def write_trace(self, path: Any) -> None:
        """One Chrome/Perfetto process track per row, each from 0."""
        import json

        from ._io import write_text_atomic

        events: list[dict] = []
        for pid, (name, prof) in enumerate(self.profiles):
            for ev in prof.chrome_trace()["traceEvents"]:
                ev = dict(ev, pid=pid)
                if ev.get("ph") == "M" and ev.get("name") == "process_name":
                    ev["args"] = {"name": name}
                events.append(ev)
        write_text_atomic(path, json.dumps({"traceEvents": events, "displayTimeUnit": "ms",
                                            "otherData": {"producer": "flopscale profile"}}))

    def write_plot(self, path: Any) -> None:
        from .roofline import plot_roofline

        if "time_s" in self.df.columns and len(self.df):
            plot_df = self.df.copy()
            plot_df["op"] = plot_df["case"] + " [" + plot_df["provider"] + "]"
            plot_roofline(plot_df, self.ceilings, path, title=f"flopscale profile: {self.ceilings.label}")


def profile_kernels(o: ProfileOptions, device: Any = None, cases: list[Case] | None = None,
                    before_job: Callable[[int, Case, str], None] | None = None, show_progress: bool = True,
                    after_job: Callable[[int, dict], None] | None = None) -> ProfileRun:
    """Profile the cases of ``o`` on ``device`` (default: the current GPU, else the CPU).

    ``before_job(i, case, provider)`` runs before each row and ``after_job(i, row)`` after it
    (``profiler.distributed`` uses them to keep the ranks in step and to keep finished rows).
    Raises :class:`ProfileError` for bad options.
    """
    import torch

    from .devices import calibrate, current_spec
    from .roofline import resolve_ceilings

    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    on_gpu = device.type == "cuda"
    notes: list[str] = []
    if cases is None:
        cases, notes = build_cases(o, on_gpu)
    else:
        check_options(o)
    budget = o.time_budget if o.time_budget is not None else (1.0 if on_gpu else 0.3)
    providers = PROVIDERS if o.provider == "both" else (o.provider,)
    if o.peak == "measured":
        ceilings = calibrate(device, recalibrate=o.recalibrate, quick=not on_gpu)
    else:
        if o.recalibrate:
            calibrate(device, recalibrate=True)
        ceilings = resolve_ceilings("datasheet", device=device)
    spec = current_spec(device)

    rows: list[dict] = []
    profiles: list[Any] = []
    jobs = [(c, p) for c in cases for p in providers]
    show = show_progress and (o.op == "all" or len(jobs) > 2)
    for i, (case, prov) in enumerate(jobs):
        if before_job is not None:
            before_job(i, case, prov)
        if show:
            _progress(i, len(jobs), f"{case.title} [{prov}]")
        row, prof = run_case(case, prov, device, o, budget)
        rows.append(row)
        if after_job is not None:
            after_job(i, row)
        if prof is not None:
            profiles.append((f"{case.title} [{prov}]", prof))
    if show:
        _progress(len(jobs), len(jobs), "done")

    df = _annotate(rows, ceilings)
    skipped = [r for r in rows if r.get("skipped")]
    if o.op != "all" and not len(df.get("time_s", [])) and skipped:
        raise ProfileError("; ".join(r.get("note", "skipped") for r in skipped))
    if not on_gpu:
        notes.append(CPU_NOTE)
    beaten = _beats_peak(df)
    if len(beaten) and o.peak == "measured" and not o.recalibrate:
        # a measurement beat the cached ceiling: measure the ceilings again, once
        ceilings = calibrate(device, recalibrate=True, quick=not on_gpu)
        df = _annotate(rows, ceilings)
        notes.append(f"{len(beaten)} row(s) beat the cached ceiling: ceilings measured again ({ceilings.label})")
        beaten = _beats_peak(df)
    if len(beaten):
        notes.append(f"{len(beaten)} row(s) still faster than the {ceilings.label} (MFU above 100%): "
                     + ("the ceiling was measured under load" if o.peak == "measured"
                        else "the datasheet peak does not fit this device"))
    if "ceiling_share" in df.columns:
        live = ~df.get("interpreted", False).astype(bool)
        over = df[live & (df["ceiling_share"] > 1.05) & ~(df["mfu"] > 1.05)]
        if len(over):
            notes.append(f"{len(over)} row(s) beat the roofline ceiling (share above 100%): their data came from "
                         "caches faster than the measured memory bandwidth, or the ceilings are stale")
    if not ceilings.flops:
        notes.append(f"no peak rates in {ceilings.label}: MFU and ceiling share are not computed")
    if spec.estimated:
        notes.append(f"device not in the spec table: {spec.source}")
    return ProfileRun(rows, df, skipped, profiles, ceilings, spec, notes, on_gpu, peak=o.peak, flush_l2=o.flush_l2)
