"""Run benchmark suites into one CSV (written row by row) and a Markdown summary.

    python -m benchmarks.run [--quick] [--only matmul,attention,...] [--out DIR]

is the same as ``flopscale bench``.
"""
from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import torch

from .harness import WIDTHS, Context, CsvSink, environment, format_row, header_line, markdown

SUITES = ("matmul", "attention", "blocksparse", "overhead", "lawfit", "collectives")
# what runs without --only; collectives (several processes under torchrun) only with --only collectives
DEFAULT_SUITES = ("matmul", "attention", "blocksparse", "overhead", "lawfit")
GPU_SUITES = ("matmul", "attention", "blocksparse")


def card_slug() -> str:
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0).lower()
        for key in ("h200", "h100", "a100", "b200", "l40s", "l4", "4090"):
            if key in name:
                return key
        return "".join(c if c.isalnum() else "-" for c in name).strip("-")
    return "cpu"


def suite_rows(name: str, ctx: Context) -> Iterator[dict]:
    mod = importlib.import_module(f"benchmarks.bench_{name}")
    if name == "lawfit":
        yield from _lawfit_rows(mod, ctx)
    else:
        yield from mod.rows(ctx)


def _lawfit_rows(mod, ctx: Context) -> Iterator[dict]:
    """The lawfit benchmark reports its own rows; map them onto the table's columns."""
    for r in mod.run(quick=ctx.quick):
        t = r.get("time_s")
        yield {
            "suite": "lawfit",
            "op": r.get("op", "fit"),
            "shape": r.get("shape", ""),
            "dtype": "fp64",
            "pass": "-",
            "provider": r.get("provider"),
            "status": r.get("status", "ok"),
            "median_ms": t * 1e3 if isinstance(t, (int, float)) else None,
            "reps": r.get("reps", 1),
            "speedup": r.get("speedup"),
            "rel_err": r.get("rel_err"),
            "note": r.get("note", ""),
        }


def run(
    only: list[str] | None = None,
    quick: bool = False,
    out: Path | None = None,
    progress: Callable[[str], None] | None = None,
    echo: Callable[[str], None] | None = print,
) -> tuple[list[dict], dict, Path | None, Path | None]:
    """Run the suites; return (rows, environment header, csv path, markdown path)."""
    names = list(only or DEFAULT_SUITES)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ctx = Context(device=device, quick=quick)
    ctx.out_dir = out  # suites that write files of their own (collectives) put them beside the table
    if device == "cuda":
        from profiler import calibrate

        ctx.ceilings = calibrate()
    header = environment()
    header["command"] = "flopscale bench" + (" --quick" if quick else "") + (f" --only {','.join(names)}" if only else "")
    if ctx.ceilings is not None:
        header["ceilings"] = ", ".join(f"{k} {v / 1e12:.0f} TFLOP/s" for k, v in ctx.ceilings.flops.items()) + \
            f"; copy {ctx.ceilings.bandwidth / 1e12:.2f} TB/s (measured, read+write)"
    csv_path = md_path = None
    sink = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        stem = f"{card_slug()}-{time.strftime('%Y-%m-%d')}"
        csv_path, md_path = out / f"{stem}.csv", out / f"{stem}.md"
        sink = CsvSink(csv_path)
    rows: list[dict] = []
    if echo:
        echo(header_line(WIDTHS))
    try:
        for name in names:
            if progress:
                progress(f"suite {name} ...")
            t0 = time.perf_counter()
            for row in suite_rows(name, ctx):
                rows.append(row)
                if sink:
                    sink.write(row)
                if echo:
                    echo(format_row(row, WIDTHS))
            if progress:
                progress(f"suite {name} done in {time.perf_counter() - t0:.1f} s")
        header["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    finally:
        if sink:
            sink.close()
        if md_path is not None:
            # written whatever happens, from the rows that finished
            header_end = dict(header)
            if "finished" not in header_end:
                header_end["finished"] = "interrupted: the table holds the rows that finished"
            from .harness import nvml_snapshot

            header_end["at end"] = nvml_snapshot()
            tmp = md_path.with_suffix(".md.tmp")
            tmp.write_text(markdown(rows, header_end))
            tmp.replace(md_path)
    return rows, header, csv_path, md_path


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", default=None)
    p.add_argument("--out", default="flopscale-bench")
    a = p.parse_args(argv)
    only = a.only.split(",") if a.only else None
    run(only, a.quick, Path(a.out), progress=lambda m: print(m, file=sys.stderr))
    return 0


if __name__ == "__main__":
    sys.exit(main())
