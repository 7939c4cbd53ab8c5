"""flopscale profile: time kernels and say how much of the device they use.

    flopscale profile matmul                      # default shape for this device
    flopscale profile matmul --shape 8192x8192x8192 --dtype bf16
    flopscale profile attention --shape 4,32,4096,128 --causal
    flopscale profile blocksparse --shape 4,32,4096,128 --pattern local --density 0.25
    flopscale profile all

Parses the options, makes one call to :func:`profiler.profile_run.profile_kernels` and
prints the :class:`~profiler.profile_run.ProfileRun` it returns (text or ``--json``).
"""
from __future__ import annotations

import argparse
import os

from ..profile_cases import DTYPES, OPS, PROVIDERS, ProfileError
from ..profile_run import ProfileOptions, profile_kernels
from ._common import UserError, check_output_path, print_json

NAME = "profile"
HELP = "profile kernels: time, FLOP/s, share of measured ceiling, MFU, bandwidth, telemetry"
DESCRIPTION = (
    "Profile flopscale kernels against torch: time (median, L2 flushed; 'unstable' when the IQR is half the "
    "median or more), FLOP/s (TFLOP/s or GFLOP/s by magnitude), share of the roofline ceiling, MFU (measured "
    "ceiling by default, --peak datasheet for the datasheet dense peak), GB/s, arithmetic intensity, bound, SM "
    "clock and power. Without --shape each kind uses a default shape for the device. On a machine without a GPU "
    "the flopscale kernels run under the Triton interpreter: their times are not hardware figures; the torch "
    "rows are real CPU numbers."
)
OUTPUTS = ("csv", "trace", "plot")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("op", choices=OPS, help="what to profile ('all': a standard suite)")
    parser.add_argument("--shape", help="matmul (and blocksparse --mode): MxNxK; attention/blocksparse: B,H,S,D")
    parser.add_argument("--dtype", choices=sorted(DTYPES),
                        help="element type (default bf16 on a GPU, fp32 on the CPU; fp8: matmul on sm_89+)")
    parser.add_argument("--causal", action="store_true", help="attention: causal (top-left) mask")
    parser.add_argument("--kv-heads", type=int, default=None,
                        help="attention: key/value heads (grouped-query attention; default H)")
    parser.add_argument("--pattern", choices=("local", "causal", "random", "dense"), default="local",
                        help="blocksparse: layout pattern (default local)")
    parser.add_argument("--density", type=float, default=0.25,
                        help="blocksparse: target fraction of blocks present (default 0.25)")
    parser.add_argument("--block", type=int, default=64, help="blocksparse: block side (default 64)")
    parser.add_argument("--mode", choices=("sdd", "dsd", "dds"), default=None,
                        help="blocksparse: profile the block-sparse matmul in this mode with --shape MxNxK "
                             "(default: block-sparse attention with --shape B,H,S,D)")
    parser.add_argument("--provider", choices=("both",) + PROVIDERS, default="both",
                        help="which implementation(s) to run (default both)")
    parser.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                        help="seconds of timed repetitions per row (default 1.0 on a GPU, 0.3 on the CPU)")
    parser.add_argument("--peak", choices=("measured", "datasheet"), default="measured",
                        help="peak for MFU and the ceiling share (default: measured ceiling)")
    parser.add_argument("--recalibrate", action="store_true", help="measure the ceilings again")
    parser.add_argument("--cuda-graph", action="store_true", help="time CUDA graph replays (small kernels)")
    parser.add_argument("--no-flush-l2", action="store_true", help="do not flush the L2 cache between repetitions")
    parser.add_argument("--seed", type=int, default=0, help="seed for the random inputs")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    parser.add_argument("--csv", metavar="PATH", help="also write the rows as CSV")
    parser.add_argument("--trace", metavar="PATH", help="also write a Chrome/Perfetto trace of one call per row")
    parser.add_argument("--plot", metavar="PATH", help="also write a roofline PNG")
    parser.add_argument("--distributed", type=int, default=None, metavar="N",
                        help="print the torchrun line that profiles the same cases on N ranks "
                             "(python -m flopscale.profiler.distributed profile ...) and exit")


def _options(args: argparse.Namespace) -> ProfileOptions:
    return ProfileOptions.from_namespace(args)


def distributed_line(args: argparse.Namespace, nproc: int) -> list[str]:
    """The torchrun command that runs this profile on ``nproc`` ranks (``--distributed``)."""
    probe = argparse.ArgumentParser(add_help=False)
    add_arguments(probe)
    argv: list[str] = [args.op]
    for action in probe._actions:
        if not action.option_strings or action.dest in ("distributed", "op", "help", "json"):
            continue
        value = getattr(args, action.dest, action.default)
        if value == action.default or value is None:
            continue
        flag = action.option_strings[0]
        if isinstance(action, argparse._StoreTrueAction):
            argv.append(flag)
        else:
            argv += [flag, str(value)]
    return ["torchrun", f"--nproc-per-node={nproc}", "-m", "flopscale.profiler.distributed", "profile", *argv]


def _print_distributed(args: argparse.Namespace) -> int:
    import shlex

    import torch

    n = args.distributed
    if n < 1:
        raise UserError(f"--distributed must be a number of ranks >= 1, got {n}")
    if args.trace or args.plot:
        raise UserError("--trace and --plot are per-device outputs: they do not go with --distributed")
    line = distributed_line(args, n)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    notes = []
    if gpus:
        notes.append(f"backend nccl, one rank per GPU ({gpus} GPU(s) here)")
        if n > gpus:
            notes.append(f"{n} ranks > {gpus} GPUs on this machine: use --nproc-per-node {gpus} per node")
    else:
        notes.append("no CUDA GPU here: the ranks use gloo on the CPU (kernels under the Triton interpreter)")
    notes.append("several nodes: add --nnodes M --node-rank R --rdzv-endpoint HOST:PORT to the torchrun line "
                 "on every node")
    if args.json:
        print_json({"command": line, "line": shlex.join(line), "nproc_per_node": n, "notes": notes})
        return 0
    print(shlex.join(line))
    for note in notes:
        print(f"# {note}")
    return 0




def run(args: argparse.Namespace) -> int:
    import torch

    if getattr(args, "distributed", None) is not None:
        return _print_distributed(args)
    for opt in OUTPUTS:  # before any work: an output that cannot be written fails now, not after it
        check_output_path(getattr(args, opt), f"--{opt}")
    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        # kernels must run under the Triton interpreter; set before triton is imported
        os.environ.setdefault("TRITON_INTERPRET", "1")
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    try:
        res = profile_kernels(_options(args), device)
    except ProfileError as exc:
        raise UserError(str(exc)) from None
    if args.csv:
        res.write_csv(args.csv)
    if args.trace:
        res.write_trace(args.trace)
    if args.plot:
        res.write_plot(args.plot)
    if args.json:
        print_json(res.to_dict())
    else:
        print(res.to_text())
    return 0
