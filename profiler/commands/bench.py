"""flopscale bench: kernels against torch baselines, one table, CSV written row by row."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._common import UserError, print_json

NAME = "bench"
HELP = "benchmark flopscale kernels against torch baselines (CSV row by row + Markdown summary)"
DESCRIPTION = (
    "Benchmark flopscale kernels against torch baselines measured in the same run. Each row: op, "
    "shape, dtype, provider, median time, TFLOP/s (model FLOP), %% of the measured ceiling, GB/s, "
    "speedup against the baseline (first provider), and the relative error against a float64 "
    "reference, checked before timing. Suites: matmul, attention, blocksparse, overhead, lawfit "
    "(the default set), and collectives (all-reduce, all-gather, reduce-scatter, broadcast on "
    "local ranks under torchrun; only with --only collectives). "
    "Without a GPU the lawfit and profiler-overhead rows run, kernels get a tiny interpreter "
    "correctness pass, and GPU rows are listed as skipped."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="fewer shapes (under 5 minutes on one H200)")
    parser.add_argument("--only", default=None, metavar="SUITES",
                        help="comma-separated suites: matmul,attention,blocksparse,overhead,lawfit,collectives "
                             "(default: all but collectives)")
    parser.add_argument("--out", default="flopscale-bench", metavar="DIR",
                        help="folder for <card>-<date>.csv and .md (default: ./flopscale-bench)")
    parser.add_argument("--json", action="store_true", help="print the rows and header as JSON")


def run(args: argparse.Namespace) -> int:
    import os

    import torch

    if not torch.cuda.is_available():
        # the kernels' correctness pass runs under the Triton interpreter; set before triton loads
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from flopscale.benchmarks.run import SUITES, run as run_suites

    only = None
    if args.only:
        only = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = [s for s in only if s not in SUITES]
        if unknown:
            raise UserError(f"unknown suite(s) {', '.join(unknown)}; choose from {', '.join(SUITES)}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    echo = None if args.json else print

    def progress(msg: str) -> None:
        print(f"[bench] {msg}", file=sys.stderr, flush=True)

    rows, header, csv_path, md_path = run_suites(only, args.quick, out, progress=progress, echo=echo)
    if args.json:
        print_json({"environment": header, "rows": rows, "csv": csv_path, "markdown": md_path})
    else:
        print()
        for k, v in header.items():
            print(f"{k}: {v}")
        print(f"rows written to {csv_path} and {md_path}")
    bad = [r for r in rows if r.get("status") in ("wrong", "error")]
    if bad:
        print(f"{len(bad)} row(s) wrong or failed: see the status and note columns", file=sys.stderr)
        return 1
    return 0
