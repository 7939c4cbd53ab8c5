"""The table a person reads after profiling: ``print(prof)`` / ``prof.report()``.

One row per op (``by="op"``) or per module scope (``by="module"``: the ``scope`` of each
record, filled in automatically from ``nn.Module`` names, see :mod:`profiler.module_scopes`):
launch count, summed time and its share of the recorded time, model FLOPs, achieved rate
(model FLOPs / summed time, in TFLOP/s, GFLOP/s or MFLOP/s chosen by magnitude), share of
the roofline ceiling (roofline time / measured time), compulsory bytes and what bounds it.
Under the rows: wall time, MFU = model FLOPs / (wall time x peak) with the peak named, the
utilisation over op time only under its own name, and every ratio above 1 flagged.

:class:`ProfileReport` renders itself as text (``str``) and as a dict (``to_dict()``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ProfileReport", "build_report", "rate_unit", "fmt_rate", "fmt_si", "fmt_bytes", "fmt_time"]

NO_SCOPE = "(no module)"
FLAG = "!"


def rate_unit(values: Any, base: str = "FLOP/s") -> tuple[float, str]:
    """(scale, name) for a column of rates: TFLOP/s from 1e12 up, GFLOP/s from 1e9, MFLOP/s
    from 1e6, else plain -- chosen by the largest finite value."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    top = max((abs(v) for v in vals), default=0.0)
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M")):
        if top >= scale:
            return scale, prefix + base
    return 1.0, base


def fmt_rate(x: float | None, base: str = "FLOP/s") -> str:
    """One rate with its own unit: '252 GFLOP/s', '1.23 TFLOP/s'."""
    if x is None or not math.isfinite(x):
        return "-"
    scale, unit = rate_unit([x], base)
    return f"{x / scale:.3g} {unit}"


def fmt_si(x: float | None) -> str:
    """A count with an SI prefix: 12.6G, 340M, 512."""
    if x is None or not math.isfinite(float(x)):
        return "-"
    x = float(x)
    for scale, p in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{p}"
    return f"{x:.3g}"


def fmt_bytes(x: float | None) -> str:
    if x is None or not math.isfinite(float(x)):
        return "-"
    return fmt_si(x) + "B"


def fmt_time(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "-"
    if s >= 1:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3f} ms"
    return f"{s * 1e6:.1f} us"


def _pct(x: float | None, flag_above: float | None = None) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    text = f"{x * 100:.1f}%"
    if flag_above is not None and x > flag_above:
        text += FLAG
    return text


@dataclass
class ProfileReport:
    """Rows grouped by op or module, totals with MFU and its peak, flags and notes."""

    by: str
    rows: list[dict]
    utilisation: Any  # profiler.roofline.Utilisation (over the wall time)
    launches: int
    wall_time_s: float | None
    op_time_s: float
    notes: list[str] = field(default_factory=list)
    sections: list["ProfileReport"] = field(default_factory=list)  # e.g. the module table under the op table

    @property
    def flags(self) -> list[str]:
        return list(self.utilisation.flags) if self.utilisation is not None else []

    def to_dict(self) -> dict[str, Any]:
        u = self.utilisation
        d = {
            "by": self.by, "launches": self.launches, "wall_time_s": self.wall_time_s, "op_time_s": self.op_time_s,
            "rows": self.rows, "totals": None if u is None else u.to_dict(), "flags": self.flags,
            "notes": list(self.notes),
        }
        if d["totals"] is not None:
            d["totals"].pop("per_op", None)
        if self.sections:
            d["sections"] = [s.to_dict() for s in self.sections]
        return d

    # ------------------------------------------------------------------ text
    def _table_text(self) -> str:
        scale, unit = rate_unit([r["flop_per_s"] for r in self.rows])
        name = "op" if self.by == "op" else "module"
        headers = [name, "count", "time", "% time", "FLOPs", unit, "% ceiling", "bytes", "bound"]
        body = []
        for r in self.rows:
            rate = r["flop_per_s"]
            body.append([
                r["name"], str(r["count"]), fmt_time(r["time_s"]), _pct(r["time_share"]), fmt_si(r["flops"]),
                "-" if rate is None or not math.isfinite(rate) else f"{rate / scale:.3g}",
                _pct(r["ceiling_share"], flag_above=_tolerance()), fmt_bytes(r["bytes"]), r["bound"],
            ])
        tot_f = sum(r["flops"] for r in self.rows)
        tot_rate = tot_f / self.op_time_s if self.op_time_s > 0 else math.nan
        body.append(["total", str(self.launches), fmt_time(self.op_time_s), _pct(1.0 if self.rows else math.nan),
                     fmt_si(tot_f), "-" if not math.isfinite(tot_rate) else f"{tot_rate / scale:.3g}", "", 
                     fmt_bytes(sum(r["bytes"] for r in self.rows)), ""])
        widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(headers)]
        widths[0] = min(widths[0], 60)

        def line(cells: list[str]) -> str:
            out = []
            for i, (c, w) in enumerate(zip(cells, widths)):
                if i == 0:
                    c = c if len(c) <= w else "..." + c[-(w - 3):]
                    out.append(c.ljust(w))
                else:
                    out.append(c.rjust(w) if i < len(cells) - 1 else c.ljust(w))
            return "  ".join(out).rstrip()

        sep = "  ".join("-" * w for w in widths)
        lines = [line(headers), sep] + [line(b) for b in body[:-1]] + [sep, line(body[-1])]
        return "\n".join(lines)

    def to_text(self) -> str:
        u = self.utilisation
        wall = self.wall_time_s
        head = f"{self.launches} recorded launch(es)"
        if wall:
            share = f" ({self.op_time_s / wall * 100:.0f}% of the wall time)" if wall > 0 else ""
            head += f"; wall time {fmt_time(wall)}, recorded ops {fmt_time(self.op_time_s)}{share}"
        lines = [head, self._table_text()]
        if u is not None:
            lines.append("")
            lines.extend(totals_lines(u))
        for s in self.sections:
            lines.append("")
            lines.append(s._table_text())
        for f in self.flags:
            lines.append(f"{FLAG} {f}")
        for n in self.notes:
            lines.append(f"note: {n}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()

    def __repr__(self) -> str:  # shown as the table in a REPL or notebook
        return self.to_text()


def _tolerance() -> float:
    from .roofline import RATIO_TOLERANCE

    return RATIO_TOLERANCE


def totals_lines(u: Any) -> list[str]:
    """MFU with its definition and peak, HFU, and the op-time utilisation under its own name."""
    if not u.flops:
        return [f"MFU: no FLOPs recorded in {fmt_time(u.time_s)} ({'wall time' if u.over == 'wall' else 'op time'})"]
    peaks = ", ".join(f"{d} {fmt_rate(p)}" for d, p in u.peak_flop_per_s.items()) or "no peak for these dtypes"
    mark = FLAG if math.isfinite(u.mfu) and u.mfu > _tolerance() else ""
    if u.over == "wall":
        lines = [f"MFU {_pct(u.mfu)}{mark} = model FLOPs {u.flops:.3e} / (wall time {fmt_time(u.time_s)} x peak "
                 f"{peaks}); peak: {u.peak_source}"]
        lines.append(f"HFU {_pct(u.hfu)} (executed FLOPs {u.executed_flops:.3e}); utilisation over op time only "
                     f"(not MFU): {_pct(u.mfu_op_time)} of {fmt_time(u.op_time_s)}")
    else:
        lines = [f"utilisation over op time (not MFU) {_pct(u.mfu)}{mark}: model FLOPs {u.flops:.3e} / "
                 f"({fmt_time(u.time_s)} x peak {peaks}); peak: {u.peak_source}"]
    if u.note:
        lines.append(f"note: {u.note}")
    return lines


def _group_rows(table: Any, key: str) -> list[dict]:
    rows = []
    if len(table) == 0:
        return rows
    t = table.copy()
    if key == "scope":
        t["scope"] = t["scope"].replace("", NO_SCOPE)
    tt = t["time_s"].to_numpy(dtype=np.float64)
    op_total = float(np.nansum(tt))
    for name, g in t.groupby(key, sort=False):
        time_s = float(np.nansum(g["time_s"].to_numpy(dtype=np.float64)))
        flops = int(g["flops"].sum())
        roof = g["roofline_time_s"].to_numpy(dtype=np.float64)
        has_roof = np.isfinite(roof).any()
        by_bound = g.assign(_t=g["time_s"].fillna(0.0)).groupby("bound")["_t"].sum()
        rows.append({
            "name": str(name), "count": int(len(g)), "time_s": time_s,
            "time_share": time_s / op_total if op_total > 0 else math.nan,
            "flops": flops, "executed_flops": int(g["executed_flops"].sum()),
            "flop_per_s": flops / time_s if time_s > 0 else math.nan,
            "ceiling_share": float(np.nansum(roof)) / time_s if time_s > 0 and has_roof else math.nan,
            "bytes": int(g["bytes"].sum()),
            "bound": str(by_bound.idxmax()) if len(by_bound) else "unknown",
        })
    rows.sort(key=lambda r: -r["time_s"] if math.isfinite(r["time_s"]) else 0.0)
    return rows


def build_report(prof: Any, by: str | None = None, peak: str | None = None, ceilings: Any = None) -> ProfileReport:
    """The report of a finished :class:`profiler.Profile`.

    ``by``: "op" (one row per op), "module" (one row per module scope), or None: by op,
    with the module table under it when any record has a scope.
    """
    from .roofline import utilisation

    if by not in (None, "op", "module"):
        raise ValueError(f"by must be 'op' or 'module', got {by!r}")
    c = prof._ceilings(peak, ceilings)
    table = prof.table(peak, c)
    u = utilisation(prof, peak=peak or prof.peak, ceilings=c, over="wall") if prof.wall_time_s is not None else None
    op_time = float(np.nansum(table["time_s"].to_numpy(dtype=np.float64))) if len(table) else 0.0
    notes = [prof.note] if getattr(prof, "note", "") else []

    def make(kind: str) -> ProfileReport:
        return ProfileReport(by=kind, rows=_group_rows(table, "op" if kind == "op" else "scope"), utilisation=u,
                             launches=len(table), wall_time_s=prof.wall_time_s, op_time_s=op_time, notes=notes)

    if by is not None:
        return make(by)
    rep = make("op")
    if len(table) and (table["scope"] != "").any():
        rep.sections.append(make("module"))
    return rep
