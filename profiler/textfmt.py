"""Number formats and plain-text tables for the domain objects that render themselves.

``fmt_count`` (engineering notation, 4 significant digits), ``fmt_rate`` (FLOP/s with an SI
prefix), ``fmt_time`` (us / ms / s) and ``table`` (aligned columns under a ruled header).
"""
from __future__ import annotations

import math

__all__ = ["fmt_count", "fmt_rate", "fmt_time", "fmt_signed", "fmt_bytes", "table"]


def fmt_count(x: float | None, unit: str = "") -> str:
    """Engineering notation with 4 significant digits: ``1.234e+18 FLOP``; n/a for None or NaN."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    s = f"{x:,.0f}" if abs(x) < 1e6 and float(x).is_integer() else f"{x:.4g}"
    return f"{s} {unit}".rstrip()


def fmt_rate(x: float | None, unit: str = "FLOP/s") -> str:
    if not x or not math.isfinite(x):
        return "n/a"
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}"


def fmt_time(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "n/a"
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.3g} s"


def fmt_signed(x: float) -> str:
    return f"{x:+.3g}"


def fmt_bytes(n: float | None) -> str:
    """Binary prefixes: 1 GiB = 2**30 bytes."""
    if n is None or not math.isfinite(n):
        return "n/a"
    for scale, prefix in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {prefix}"
    return f"{n:.0f} B"


def table(rows: list[list[str]], header: list[str], right: set[int] | None = None) -> str:
    right = right if right is not None else set(range(1, len(header)))
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for k, r in enumerate([header, *rows]):
        cells = [str(c).rjust(widths[i]) if i in right else str(c).ljust(widths[i]) for i, c in enumerate(r)]
        lines.append("  " + "  ".join(cells).rstrip())
        if k == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return "\n".join(lines)
