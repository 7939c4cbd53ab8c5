"""Roofline position, MFU and HFU.

Definitions (every rate in FLOP/s, bandwidth in bytes/s, times in seconds):

* ``peak`` -- the rate of the record's ``peak_dtype``: the *measured ceiling*
  (``profiler.calibrate()``) by default, the *datasheet dense peak* on request
  (``peak="datasheet"``).  Every result carries ``peak_source`` naming it.
* MFU = model FLOPs / (wall time x peak), as nanoGPT and PaLM define it; HFU the same
  with executed FLOPs.  Over many launches (possibly of different dtypes):
  ``sum_i(F_i / peak_i) / T`` -- the time the FLOPs would take at peak over the time
  they took.  ``T`` is the wall time of the profiled region (the default,
  ``over="wall"``).  The same ratio over the sum of the recorded launches' own times
  (``over="records"``) is *not* MFU -- the gaps between launches, unrecorded ops and
  host work are left out -- and is reported as ``mfu_op_time`` / ``hfu_op_time``.
* A ratio above 1 (an MFU, a per-launch share of peak, a ceiling share) is impossible
  for a right ceiling and a right time: it is flagged (``flags``), never silently shown.
* Roofline time of a launch = ``max(executed/peak + nonmatmul/peak_fp32,
  bytes/bandwidth)``: non-matmul work runs on the vector units, whose ceiling is
  the float32 (non-tensor-core) rate.  ``ceiling_share`` = roofline time / measured
  time (1.0 = on the roofline).  ``bound`` says which term is larger; for a pure
  matmul this is arithmetic intensity against the ridge point ``peak/bandwidth``.
* Arithmetic intensity = (executed + non-matmul FLOPs) / compulsory bytes.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._io import atomic_path
from .devices import Ceilings, calibrate, current_spec

__all__ = ["resolve_ceilings", "annotate", "summarise", "Utilisation", "utilisation", "ratio_flags", "plot_roofline"]


def resolve_ceilings(peak: str = "measured", ceilings: Ceilings | None = None, device: Any = None) -> Ceilings:
    """``ceilings`` if given; else the measured ceilings (cached, or a quick calibration)
    for ``peak="measured"``, or the datasheet peaks of this device for ``"datasheet"``."""
    if ceilings is not None:
        return ceilings
    if peak == "datasheet":
        return Ceilings.from_spec(current_spec(device))
    if peak != "measured":
        raise ValueError(f"peak must be 'measured' or 'datasheet', got {peak!r}")
    return calibrate(device, quick=True)


def _col(df: Any, name: str) -> np.ndarray:
    return df[name].to_numpy(dtype=np.float64)


def annotate(df: Any, ceilings: Ceilings) -> Any:
    """Add rate, roofline and utilisation columns to a table of launches (see module doc)."""
    out = df.copy()
    nan = math.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        t = _col(out, "time_s")
        t = np.where(t > 0, t, nan)
        flops = _col(out, "flops")
        exe = _col(out, "executed_flops")
        nonmm = _col(out, "nonmatmul_flops")
        nbytes = _col(out, "bytes")
        peak = np.array([(ceilings.flops.get(d) or nan) for d in out["peak_dtype"]], dtype=np.float64)
        vec = ceilings.flops.get("fp32") or nan
        bw = ceilings.bandwidth or nan
        out["flop_per_s"] = flops / t
        out["executed_flop_per_s"] = exe / t
        out["bytes_per_s"] = nbytes / t
        out["arithmetic_intensity"] = np.where(nbytes > 0, (exe + nonmm) / nbytes, nan)
        out["peak_flop_per_s"] = peak
        out["bandwidth"] = bw
        out["ridge"] = peak / bw
        t_comp = np.where(exe > 0, exe / peak, 0.0) + np.where(nonmm > 0, nonmm / vec, 0.0)
        t_mem = np.where(nbytes > 0, nbytes / bw, 0.0)
        roof = np.fmax(t_comp, t_mem)
        roof = np.where(np.isnan(t_comp) | np.isnan(t_mem), nan, roof)
        out["roofline_time_s"] = roof
        out["ceiling_share"] = roof / t
        out["mfu"] = flops / t / peak
        out["hfu"] = exe / t / peak
        bound = np.where(t_comp >= t_mem, "compute", "memory")
        bound = np.where(np.isnan(t_comp) | np.isnan(t_mem), "unknown", bound)
        out["bound"] = bound
    out["peak_source"] = ceilings.label
    return out


def summarise(table: Any) -> Any:
    """Group an annotated table by op: sums, rates, share of time, and ``peak_share`` /
    ``executed_peak_share``: the op's model / executed FLOPs over (its own summed time x peak),
    a utilisation of that op's time (not MFU, which divides by the wall time)."""
    import pandas as pd

    if len(table) == 0:
        return pd.DataFrame(columns=["op", "count", "flops", "executed_flops", "nonmatmul_flops", "bytes",
                                     "time_s", "time_share", "flop_per_s", "bytes_per_s", "peak_share",
                                     "executed_peak_share", "ceiling_share", "peak_source"])
    t = table.copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        t["_ideal"] = _col(t, "flops") / _col(t, "peak_flop_per_s")
        t["_ideal_exe"] = _col(t, "executed_flops") / _col(t, "peak_flop_per_s")
    g = t.groupby("op", sort=False)
    s = g.agg(count=("op", "size"), flops=("flops", "sum"), executed_flops=("executed_flops", "sum"),
              nonmatmul_flops=("nonmatmul_flops", "sum"), bytes=("bytes", "sum"),
              time_s=("time_s", lambda x: x.sum(min_count=1)),
              _ideal=("_ideal", lambda x: x.sum(min_count=1)),
              _ideal_exe=("_ideal_exe", lambda x: x.sum(min_count=1)),
              _roof=("roofline_time_s", lambda x: x.sum(min_count=1)),
              peak_source=("peak_source", "first")).reset_index()
    with np.errstate(divide="ignore", invalid="ignore"):
        total = np.nansum(_col(s, "time_s"))
        s["time_share"] = _col(s, "time_s") / total if total > 0 else math.nan
        s["flop_per_s"] = _col(s, "flops") / _col(s, "time_s")
        s["bytes_per_s"] = _col(s, "bytes") / _col(s, "time_s")
        s["peak_share"] = _col(s, "_ideal") / _col(s, "time_s")
        s["executed_peak_share"] = _col(s, "_ideal_exe") / _col(s, "time_s")
        s["ceiling_share"] = _col(s, "_roof") / _col(s, "time_s")
    s = s.drop(columns=["_ideal", "_ideal_exe", "_roof"])
    s = s.sort_values("time_s", ascending=False, na_position="last").reset_index(drop=True)
    cols = ["op", "count", "flops", "executed_flops", "nonmatmul_flops", "bytes", "time_s", "time_share",
            "flop_per_s", "bytes_per_s", "peak_share", "executed_peak_share", "ceiling_share", "peak_source"]
    return s[cols]


@dataclass
class Utilisation:
    """MFU/HFU over a set of launches, with the peak they divide by.

    ``mfu``/``hfu``: fractions (0..1) over ``time_s`` -- the wall time of the region for
    ``over="wall"`` (conventional MFU), the sum of launch times for ``over="records"``;
    ``mfu_op_time``/``hfu_op_time``: the same FLOPs over the recorded launches' own time
    (``op_time_s``), a utilisation of the busy time only, never called MFU;
    ``peak_flop_per_s``: dtype -> the peak used (FLOP/s); ``peak_source`` names it
    (measured ceiling or datasheet); ``unpeaked_flops``: model FLOPs whose dtype had no
    peak (left out); ``flags``: ratios above 1 and what they mean; ``per_op``:
    :func:`summarise` table.
    """

    mfu: float
    hfu: float
    flops: int
    executed_flops: int
    nonmatmul_flops: int
    bytes: int
    time_s: float
    over: str
    peak: str
    peak_source: str
    unpeaked_flops: int = 0
    per_op: Any = field(default=None, repr=False)
    note: str = ""
    mfu_op_time: float = math.nan
    hfu_op_time: float = math.nan
    op_time_s: float = math.nan
    wall_time_s: float | None = None
    peak_flop_per_s: dict = field(default_factory=dict)
    flags: list = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mfu": self.mfu, "hfu": self.hfu, "mfu_op_time": self.mfu_op_time, "hfu_op_time": self.hfu_op_time,
            "flops": self.flops, "executed_flops": self.executed_flops,
            "nonmatmul_flops": self.nonmatmul_flops, "bytes": self.bytes, "time_s": self.time_s,
            "op_time_s": self.op_time_s, "over": self.over, "peak": self.peak, "peak_source": self.peak_source,
            "peak_flop_per_s": dict(self.peak_flop_per_s), "mfu_definition": self.definition,
            "unpeaked_flops": self.unpeaked_flops, "flags": list(self.flags), "note": self.note,
            "per_op": [] if self.per_op is None else self.per_op.to_dict(orient="records"),
        }

    @property
    def definition(self) -> str:
        if self.over == "wall":
            return "MFU = model FLOPs / (wall time of the region x peak)"
        return "model FLOPs / (sum of the recorded launches' times x peak): a utilisation of op time, not MFU"

    def __str__(self) -> str:
        name = "MFU" if self.over == "wall" else "op-time utilisation"
        hname = "HFU" if self.over == "wall" else "executed"
        text = (f"{name} {_pct(self.mfu)} / {hname} {_pct(self.hfu)} of {self.peak_source} "
                f"over {self.time_s:.4g} s ({'wall time' if self.over == 'wall' else 'sum of op times'})")
        if self.over == "wall" and math.isfinite(self.mfu_op_time):
            text += f"; over op time only {_pct(self.mfu_op_time)}"
        return text


def _pct(x: float) -> str:
    return f"{x * 100:.1f}%" if x is not None and math.isfinite(x) else "n/a"


# a ratio this far above 1 is reported as impossible (timer resolution and rounding stay below it)
RATIO_TOLERANCE = 1.02


def ratio_flags(table: Any, mfu: float | None = None, ceilings: Ceilings | None = None) -> list[str]:
    """Sentences for every ratio above 1 in an annotated table (and the total MFU): such a ratio
    means the ceiling or the time is wrong, so it is named, with what to do about it."""
    flags: list[str] = []
    if mfu is not None and math.isfinite(mfu) and mfu > RATIO_TOLERANCE:
        flags.append(f"MFU {mfu:.3g} > 1: the peak is too low or the time too short")
    if table is None or len(table) == 0 or "mfu" not in table.columns:
        return flags
    measured = ceilings is None or ceilings.source == "measured"
    with np.errstate(invalid="ignore"):
        over_peak = table[_col(table, "mfu") > RATIO_TOLERANCE]
        over_roof = table[(_col(table, "ceiling_share") > RATIO_TOLERANCE) & ~(_col(table, "mfu") > RATIO_TOLERANCE)]
    if len(over_peak):
        worst = float(np.nanmax(_col(over_peak, "mfu")))
        dts = ", ".join(sorted(set(map(str, over_peak["peak_dtype"]))))
        flags.append(f"{len(over_peak)} launch(es) ran faster than the {dts} peak (up to {worst:.3g}x): "
                     + ("the measured ceiling is stale or was measured under load; recalibrate "
                        "(profiler.calibrate(recalibrate=True), flopscale profile --recalibrate)" if measured
                        else "the datasheet peak is wrong for this device"))
    if len(over_roof):
        worst = float(np.nanmax(_col(over_roof, "ceiling_share")))
        flags.append(f"{len(over_roof)} launch(es) beat the roofline (ceiling share up to {worst:.3g}): their data "
                     "came from caches faster than the memory bandwidth ceiling, or the ceilings are wrong")
    return flags


def utilisation(source: Any, peak: str = "measured", ceilings: Ceilings | None = None,
                over: str = "wall") -> Utilisation:
    """MFU and HFU of a :class:`profiler.Profile` (or an annotated/raw table).

    ``peak``: "measured" (default) or "datasheet"; ``ceilings`` overrides both.
    ``over``: "wall" (default: the region's wall time, conventional MFU; needs a Profile)
    or "records" (sum of launch times; a utilisation of op time).  ``mfu_op_time`` is
    always the op-time ratio.
    """
    if over not in ("records", "wall"):
        raise ValueError(f"over must be 'records' or 'wall', got {over!r}")
    wall = None
    if hasattr(source, "raw_table"):
        wall = source.wall_time_s
        if ceilings is None:
            ceilings = source._ceilings(peak)
        table = source.raw_table()
    else:
        table = source
    ceilings = resolve_ceilings(peak, ceilings)
    if "peak_flop_per_s" not in table.columns:
        table = annotate(table, ceilings)
    with np.errstate(divide="ignore", invalid="ignore"):
        flops = _col(table, "flops")
        exe = _col(table, "executed_flops")
        peakv = _col(table, "peak_flop_per_s")
        has_peak = np.isfinite(peakv) & (peakv > 0)
        ideal = float(np.sum(np.where(has_peak, flops / np.where(has_peak, peakv, 1.0), 0.0)))
        ideal_exe = float(np.sum(np.where(has_peak, exe / np.where(has_peak, peakv, 1.0), 0.0)))
    unpeaked = int(np.sum(np.where(has_peak, 0, flops)))
    op_time = float(np.nansum(_col(table, "time_s")))
    if over == "wall":
        if wall is None:
            raise ValueError("over='wall' needs a Profile (a table has no wall time); pass over='records' "
                             "for a utilisation of op time")
        T = float(wall)
    else:
        T = op_time
    note = ""
    if unpeaked:
        dts = sorted(set(table.loc[~has_peak & (flops > 0), "peak_dtype"]))
        note = f"{unpeaked:.3e} FLOP of dtype {', '.join(dts)} have no peak in {ceilings.label}; left out"
    mfu = ideal / T if T > 0 else math.nan
    hfu = ideal_exe / T if T > 0 else math.nan
    mfu_op = ideal / op_time if op_time > 0 else math.nan
    hfu_op = ideal_exe / op_time if op_time > 0 else math.nan
    if not has_peak.any() and flops.sum() > 0:
        mfu = hfu = mfu_op = hfu_op = math.nan
    used = sorted(set(table.loc[has_peak, "peak_dtype"])) if len(table) else []
    peaks = {str(d): float(ceilings.flops[d]) for d in used if ceilings.flops.get(d)}
    flags = ratio_flags(table, mfu, ceilings)
    if over == "wall" and math.isfinite(mfu_op) and mfu_op > RATIO_TOLERANCE and not flags:
        flags.append(f"utilisation over op time {mfu_op:.3g} > 1: the peak is too low or the op times too short")
    return Utilisation(
        mfu=mfu, hfu=hfu, flops=int(flops.sum()), executed_flops=int(exe.sum()),
        nonmatmul_flops=int(_col(table, "nonmatmul_flops").sum()), bytes=int(_col(table, "bytes").sum()),
        time_s=T, over=over, peak=ceilings.source, peak_source=ceilings.label, unpeaked_flops=unpeaked,
        per_op=summarise(table), note=note, mfu_op_time=mfu_op, hfu_op_time=hfu_op, op_time_s=op_time,
        wall_time_s=None if wall is None else float(wall), peak_flop_per_s=peaks, flags=flags,
    )


def plot_roofline(source: Any, ceilings: Ceilings | None = None, path: str | os.PathLike = "roofline.png",
                  title: str | None = None, peak: str = "measured") -> Path:
    """Draw the launches on the ceilings' roofline and save a PNG (matplotlib, Agg canvas).

    x: arithmetic intensity (FLOP/byte); y: achieved FLOP/s (executed + non-matmul);
    one roof per dtype present: ``min(peak, intensity * bandwidth)``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if hasattr(source, "table"):
        table = source.table(peak=peak, ceilings=ceilings)
        ceilings = resolve_ceilings(peak, ceilings or source._ceilings(peak))
    else:
        ceilings = resolve_ceilings(peak, ceilings)
        table = source if "arithmetic_intensity" in source.columns else annotate(source, ceilings)
    fig = Figure(figsize=(8, 5.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ai = _col(table, "arithmetic_intensity")
        y = (_col(table, "executed_flops") + _col(table, "nonmatmul_flops")) / _col(table, "time_s")
    ok = np.isfinite(ai) & np.isfinite(y) & (ai > 0) & (y > 0)
    lo = float(np.nanmin(ai[ok])) / 4 if ok.any() else 0.1
    hi = float(np.nanmax(ai[ok])) * 4 if ok.any() else 1e4
    bw = ceilings.bandwidth
    dtypes = [d for d in dict.fromkeys(list(table.get("peak_dtype", [])) + ["fp32"]) if ceilings.flops.get(d)]
    if bw:
        ridge_max = max((ceilings.flops[d] / bw for d in dtypes), default=1.0)
        lo, hi = min(lo, 0.1), max(hi, ridge_max * 4)
        xs = np.logspace(math.log10(lo), math.log10(hi), 256)
        for d in dtypes:
            ax.plot(xs, np.minimum(ceilings.flops[d], xs * bw), lw=1.5, label=f"roof {d}: {ceilings.flops[d] / 1e12:.3g} TFLOP/s")
        ax.plot(xs, xs * bw, ls=":", color="grey", lw=1, label=f"bandwidth {bw / 1e9:.4g} GB/s")
    ops = list(dict.fromkeys(table["op"])) if len(table) else []
    for op in ops:
        m = ok & (table["op"].to_numpy() == op)
        if m.any():
            ax.scatter(ai[m], y[m], s=24, label=op, zorder=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel("achieved FLOP/s")
    ax.set_title(title or f"roofline: {ceilings.label}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    if ops or dtypes:
        ax.legend(fontsize=7, loc="lower right")
    path = Path(path)
    with atomic_path(path) as tmp:  # no partial PNG if interrupted
        fig.savefig(tmp, format="png")
    return path
