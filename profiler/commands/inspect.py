"""flopscale inspect: compile every shipped kernel configuration for a target GPU, offline."""
from __future__ import annotations

import argparse
import sys
import time

from ._common import UserError, print_json

NAME = "inspect"
HELP = "compile every shipped kernel configuration for a target GPU and report registers, spills, shared memory, wgmma"
DESCRIPTION = (
    "Compile every shipped Triton kernel configuration for a target GPU without needing one "
    "(Triton's GPUTarget), and print one row per configuration: kernel, config, compiled or the "
    "error, registers per thread, spills (bytes of stack+local memory per thread; > 0 means the "
    "kernel spills) and stack bytes per thread, shared memory in bytes per program (and whether it "
    "fits the target's limit), static instruction counts read from SASS via the cuobjdump shipped "
    "with Triton (from PTX without it): wgmma = Hopper warpgroup MMA (HGMMA/QGMMA), mma.sync "
    "(HMMA/QMMA), TMA loads (UTMALDG) and stores (UTMASTG), and whether warp specialization took "
    "effect in the code (setmaxnreg between partitions). Progress goes to stderr when it is a "
    "terminal (not with --json). Exit status 1 if a configuration fails to compile, spills or "
    "does not fit in shared memory."
)

#: registers per thread above which a configuration is reported as close to the 255 limit
REGISTER_MARGIN = 247

JSON_KEYS = ("kernel", "config", "compiled", "registers", "stack_bytes", "spills", "shared_bytes", "tensor_core",
             "wgmma", "mma_sync", "tma_loads", "tma_stores", "warp_specialized")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default="sm90", help="target GPU architecture: sm80, sm86, sm89 or sm90 (default sm90)")
    parser.add_argument("--kernel", default=None, metavar="TEXT", help="only configurations whose 'kernel config' contains TEXT, e.g. 'matmul_tma[bf16]' or 'b128'")
    parser.add_argument("--json", action="store_true", help="print a JSON list of objects instead of a table")


def _row(r) -> dict:
    d = {k: getattr(r, k) for k in JSON_KEYS}
    d["error"] = r.error
    d["smem_limit"] = r.smem_limit
    d["fits_smem"] = r.fits_smem
    return d


def _fmt(v, yes="yes", no="no") -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return yes if v else no
    return str(v)


def _progress_printer(stream):
    """``progress(done, total)`` that redraws one status line on ``stream``."""

    def progress(done: int, total: int) -> None:
        end = "\n" if done >= total else ""
        stream.write(f"\rinspect: {done}/{total} configurations compiled{end}")
        stream.flush()

    return progress


def run(args: argparse.Namespace) -> int:
    try:
        from flopscale.kernels import inspect as kinspect
    except ImportError as exc:  # pragma: no cover - triton missing
        raise UserError(f"cannot inspect kernels: {exc}") from None
    try:
        cap = kinspect.parse_target(args.target)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    t0 = time.perf_counter()
    try:
        show = not args.json and sys.stderr.isatty()
        results = kinspect.inspect(cap, kernel_filter=args.kernel, progress=_progress_printer(sys.stderr) if show else None)
    except ImportError as exc:  # pragma: no cover - triton missing
        raise UserError(f"cannot inspect kernels: {exc}") from None
    elapsed = time.perf_counter() - t0
    if args.kernel and not results:
        raise UserError(f"no shipped kernel configuration matches {args.kernel!r}")
    bad = [r for r in results if not r.compiled or (r.spills or 0) > 0 or r.fits_smem is False]

    if args.json:
        print_json([_row(r) for r in results])
        return 1 if bad else 0

    headers = ("kernel", "config", "status", "regs", "stack[B]", "spills[B]", "smem[B]", "wgmma", "mma.sync",
               "TMA ld", "TMA st", "warp spec.")
    rows = []
    for r in results:
        if r.compiled:
            status = "ok" if r.fits_smem is not False else "smem>limit"
        else:
            status = f"error: {r.error}"
        rows.append((r.kernel, r.config, status, _fmt(r.registers), _fmt(r.stack_bytes), _fmt(r.spills),
                     _fmt(r.shared_bytes), _fmt(r.wgmma), _fmt(r.mma_sync), _fmt(r.tma_loads), _fmt(r.tma_stores),
                     _fmt(r.warp_specialized)))
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    print(line)
    print("-" * len(line))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    limit = kinspect.SMEM_LIMIT.get(cap)
    n_ok = sum(r.compiled for r in results)
    n_wgmma = sum(bool(r.wgmma) for r in results)
    print()
    print(
        f"sm_{cap}: {n_ok}/{len(results)} configurations compiled in {elapsed:.1f} s; "
        f"{n_wgmma} use wgmma; shared-memory limit {limit} bytes per block; "
        f"regs = registers per thread, stack/spills = stack and stack+local bytes per thread; "
        f"wgmma, mma.sync, TMA ld/st = static instruction counts in SASS"
    )
    near = [r for r in results if (r.registers or 0) > REGISTER_MARGIN]
    if near:
        print(f"{len(near)} configuration(s) within 8 registers of the 255-register limit (> {REGISTER_MARGIN})")
    mixed = [r for r in results if r.wgmma and r.mma_sync]
    if mixed:
        print(f"{len(mixed)} configuration(s) mix wgmma with mma.sync (part of the work off warpgroup MMA)")
    if bad:
        print(f"{len(bad)} configuration(s) failed to compile, spill or exceed shared memory")
    return 1 if bad else 0
