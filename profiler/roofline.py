"""Roofline position, MFU and HFU.

Definitions (every rate in FLOP/s, bandwidth in bytes/s, times in seconds):

* ``peak`` -- the rate of the record's ``peak_dtype``: the *measured ceiling*
  (``profiler.calibrate()``) by default, the *datasheet dense peak* on request
  (``peak="datasheet"``).  Every result carries ``peak_source`` naming it.
* MFU = model FLOPs / time / peak; HFU = executed FLOPs / time / peak.  Over many
  launches (possibly of different dtypes): ``sum_i(F_i / peak_i) / T`` -- the time
  the FLOPs would take at peak over the time they took; ``T`` is the sum of the
  launch times (``over="records"``) or the wall time of the region (``"wall"``).
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

__all__ = ["resolve_ceilings", "annotate", "summarise", "Utilisation", "utilisation", "plot_roofline"]


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
    """Group an annotated table by op: sums, rates, MFU/HFU (time-weighted), share of time."""
    import pandas as pd

    if len(table) == 0:
        return pd.DataFrame(columns=["op", "count", "flops", "executed_flops", "nonmatmul_flops", "bytes",
                                     "time_s", "time_share", "flop_per_s", "bytes_per_s", "mfu", "hfu",
                                     "ceiling_share", "peak_source"])
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
        s["mfu"] = _col(s, "_ideal") / _col(s, "time_s")
        s["hfu"] = _col(s, "_ideal_exe") / _col(s, "time_s")
        s["ceiling_share"] = _col(s, "_roof") / _col(s, "time_s")
    s = s.drop(columns=["_ideal", "_ideal_exe", "_roof"])
    s = s.sort_values("time_s", ascending=False, na_position="last").reset_index(drop=True)
    cols = ["op", "count", "flops", "executed_flops", "nonmatmul_flops", "bytes", "time_s", "time_share",
            "flop_per_s", "bytes_per_s", "mfu", "hfu", "ceiling_share", "peak_source"]
    return s[cols]


@dataclass
class Utilisation:
    """MFU/HFU over a set of launches, with the peak they divide by.

    ``mfu``/``hfu``: fractions (0..1); ``time_s``: the denominator time (seconds);
    ``unpeaked_flops``: model FLOPs whose dtype had no peak (left out of MFU);
    ``per_op``: :func:`summarise` table.
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "mfu": self.mfu, "hfu": self.hfu, "flops": self.flops, "executed_flops": self.executed_flops,
            "nonmatmul_flops": self.nonmatmul_flops, "bytes": self.bytes, "time_s": self.time_s,
            "over": self.over, "peak": self.peak, "peak_source": self.peak_source,
            "unpeaked_flops": self.unpeaked_flops, "note": self.note,
            "per_op": [] if self.per_op is None else self.per_op.to_dict(orient="records"),
        }

    def __str__(self) -> str:
        return (f"MFU {self.mfu * 100:.1f}% / HFU {self.hfu * 100:.1f}% of {self.peak_source} "
                f"over {self.time_s:.4g} s ({self.over})")


def utilisation(source: Any, peak: str = "measured", ceilings: Ceilings | None = None,
                over: str = "records") -> Utilisation:
    """MFU and HFU of a :class:`profiler.Profile` (or an annotated/raw table).

    ``peak``: "measured" (default) or "datasheet"; ``ceilings`` overrides both.
    ``over``: "records" (sum of launch times) or "wall" (the region's wall time;
    needs a Profile).
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
    if over == "wall":
        if wall is None:
            raise ValueError("over='wall' needs a Profile (a table has no wall time)")
        T = float(wall)
    else:
        T = float(np.nansum(_col(table, "time_s")))
    note = ""
    if unpeaked:
        dts = sorted(set(table.loc[~has_peak & (flops > 0), "peak_dtype"]))
        note = f"{unpeaked:.3e} FLOP of dtype {', '.join(dts)} have no peak in {ceilings.label}; left out"
    mfu = ideal / T if T > 0 else math.nan
    hfu = ideal_exe / T if T > 0 else math.nan
    if not has_peak.any() and flops.sum() > 0:
        mfu = hfu = math.nan
    return Utilisation(
        mfu=mfu, hfu=hfu, flops=int(flops.sum()), executed_flops=int(exe.sum()),
        nonmatmul_flops=int(_col(table, "nonmatmul_flops").sum()), bytes=int(_col(table, "bytes").sum()),
        time_s=T, over=over, peak=ceilings.source, peak_source=ceilings.label, unpeaked_flops=unpeaked,
        per_op=summarise(table), note=note,
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
