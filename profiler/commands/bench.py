"""flopscale bench: kernels against torch baselines, one table, CSV written row by row.

The benchmarks are found by name when the command runs (``flopscale.benchmarks.run``):
nothing in ``profiler`` imports ``benchmarks``.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
from pathlib import Path

from ._common import UserError, print_json

NAME = "bench"
HELP = "benchmark flopscale kernels against torch baselines (CSV row by row + Markdown summary)"
DESCRIPTION = (
    "Benchmark flopscale kernels against torch baselines measured in the same run. Each row: op, "
    "shape, dtype, provider, median time, TFLOP/s (model FLOP), % of the measured ceiling, GB/s, "
    "speedup against the baseline (first provider), and the relative error against a float64 "
    "reference, checked before timing. Suites: matmul, attention, blocksparse, overhead, lawfit "
    "(the default set), and collectives (all-reduce, all-gather, reduce-scatter, broadcast on "
    "local ranks under torchrun; only with --only collectives). "
    "Without a GPU the lawfit and profiler-overhead rows run, kernels get a tiny interpreter "
    "correctness pass, and GPU rows are listed as skipped. A finished table is never overwritten: "
    "a second run the same day writes <card>-<date>-2.csv. Progress (rows, ETA) goes to stderr "
    "when it is a terminal and --json is not given. Exit status 143 after SIGTERM and 130 after "
    "Ctrl-C, with the rows that finished kept in both tables."
)
RUNNER = "flopscale.benchmarks.run"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="fewer shapes (under 5 minutes on one H200)")
    parser.add_argument("--only", default=None, metavar="SUITES",
                        help="comma-separated suites, named above (default: all but collectives)")
    parser.add_argument("--out", default="flopscale-bench", metavar="DIR",
                        help="folder for <card>-<date>.csv and .md (default: ./flopscale-bench)")
    parser.add_argument("--json", action="store_true", help="print the rows and header as JSON")


def selected_suites(text: str | None, known: tuple[str, ...]) -> list[str] | None:
    """The suites named by ``--only`` (None: the default set); an empty selection is an error."""
    if text is None:
        return None
    only = [s.strip() for s in text.split(",") if s.strip()]
    if not only:
        raise UserError(f"--only {text!r} names no suite; choose from {', '.join(known)}")
    unknown = [s for s in only if s not in known]
    if unknown:
        raise UserError(f"unknown suite(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    return only


def check_out_dir(out: Path) -> None:
    """Before any work: ``--out`` is a folder that exists or can be made, and can be written."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None


def _progress_writer():
    """A one-line progress display on a terminal's stderr."""
    def show(msg: str) -> None:
        sys.stderr.write("\r\x1b[2K[bench] " + msg)
        if msg.startswith("suite ") and " done in " in msg:
            sys.stderr.write("\n")
        sys.stderr.flush()
    return show


def run(args: argparse.Namespace) -> int:
    import torch

    if not torch.cuda.is_available():
        # the kernels' correctness pass runs under the Triton interpreter; set before triton loads
        os.environ.setdefault("TRITON_INTERPRET", "1")
    runner = importlib.import_module(RUNNER)
    only = selected_suites(args.only, tuple(runner.SUITES))
    out = Path(args.out)
    check_out_dir(out)
    echo = None if args.json else print
    progress = _progress_writer() if not args.json and sys.stderr.isatty() else None
    rows, header, csv_path, md_path = runner.run(only, args.quick, out, progress=progress, echo=echo)
    if progress is not None:
        sys.stderr.write("\n")
    if args.json:
        print_json({"environment": header, "rows": rows, "csv": csv_path, "markdown": md_path})
    else:
        print()
        for k, v in header.items():
            print(f"{k}: {v}")
        print(f"rows written to {csv_path} and {md_path}" if csv_path else "no row finished: no table written")
    if header.get("terminated"):
        kept = "the tables hold the rows that finished" if csv_path else "no row had finished, no table written"
        print(f"flopscale bench: terminated (SIGTERM); {kept}", file=sys.stderr)
        return 143  # 128 + SIGTERM, as for any terminated command
    bad = [r for r in rows if r.get("status") in ("wrong", "error")]
    if bad:
        print(f"{len(bad)} row(s) wrong or failed: see the status and note columns", file=sys.stderr)
        return 1
    return 0
