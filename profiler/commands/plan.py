"""flopscale plan: GPUs x days -> compute budget -> compute-optimal N, D, model shape, layout, wall-clock.

Parse the options, make one call (:func:`profiler.planner.make_plan`) and print the result.
"""
from __future__ import annotations

import argparse

from ._common import UserError, check_output_path, print_json

NAME = "plan"
HELP = "plan a training run: GPUs x days -> compute budget -> compute-optimal N, D, model shape, layout, wall-clock"
DESCRIPTION = (
    "Turn 'G GPUs for T days' into a compute budget C = GPUs x days x 86,400 s x peak(dtype) x MFU at scale (FLOP), "
    "let a scaling law allocate it to parameters N and tokens D, pick a concrete model shape with N close to "
    "the optimum, count its exact FLOPs per token (matmuls, causal attention, logits; not only 6N), lay it out "
    "over tensor, pipeline and data parallelism so that it fits in memory, and give the wall-clock and GPU-days. "
    "With no arguments: measure a small transformer step on this machine, plan one day of it, and tabulate larger "
    "budgets on a default card at a stated, assumed MFU. 1 PF-day = 8.64e19 FLOP; peaks are dense datasheet rates."
)

def add_arguments(parser: argparse.ArgumentParser) -> None:
    b = parser.add_argument_group("budget")
    from ..devices import SPECS

    b.add_argument("--gpu", default=None, help=f"card: {', '.join(sorted(SPECS))} (default h100-sxm)")
    b.add_argument("--gpus", type=float, default=None, help="number of GPUs, a whole number (default 1)")
    b.add_argument("--days", type=float, default=None, help="days of training (default 1)")
    b.add_argument("--compute", type=float, default=None,
                   help="budget in FLOP, instead of GPUs x days (--gpus then only sets the wall-clock)")
    b.add_argument("--dtype", default="bf16", help="dtype whose dense peak applies (default bf16)")
    m = b.add_mutually_exclusive_group()
    m.add_argument("--mfu", type=float, default=None, help="model FLOPs utilisation in (0, 1] (default: assumed 0.40)")
    m.add_argument("--measured", default=None, metavar="JSON",
                   help="MFU from 'flopscale audit --json' (or --sweep) / 'flopscale profile --json' on the target card")
    lw = parser.add_argument_group("scaling law")
    g = lw.add_mutually_exclusive_group()
    g.add_argument("--law", default=None,
                   help="any law name 'flopscale allocate' knows: a published fit (besiroglu2024, the default; "
                        "hoffmann2022, kaplan2020, ...) or an allocation law")
    g.add_argument("--fit", default=None, metavar="JSON", help="a fit saved by 'flopscale fit --save'")
    lw.add_argument("--law-params", choices=("total", "non-embedding"), default=None,
                    help="what the law's N counts (default: as the published fit says; total for --fit)")
    lw.add_argument("--max-tokens", type=float, default=None, help="unique training tokens available")
    lw.add_argument("--count", choices=("exact", "6n"), default="exact",
                    help="FLOPs per token in the allocation: the shape family's exact count (default) or 6N")
    s = parser.add_argument_group("model family")
    s.add_argument("--n-ctx", type=int, default=None, help="sequence length (default 2048)")
    s.add_argument("--vocab", type=int, default=None, help="vocabulary size (default 32000)")
    s.add_argument("--kv-group", type=int, default=1, help="query heads per key/value head (default 1: no GQA)")
    s.add_argument("--arch", choices=("gpt2", "llama", "moe"), default=None,
                   help="gpt2 (GELU MLP 4d, learned positions; default), llama (SwiGLU 8d/3, RoPE, RMSNorm) or moe "
                        "(llama blocks with routed SwiGLU experts); the law's N counts the parameters a token uses")
    s.add_argument("--n-experts", type=int, default=None, help="experts per layer for --arch moe (default 8)")
    s.add_argument("--top-k", type=int, default=None, help="experts per token for --arch moe (default 2)")
    i = parser.add_argument_group("inverse: a given model")
    i.add_argument("--params", type=float, default=None,
                   help="parameters N of a model to train (law's convention); without --tokens, the tokens for which "
                        "the law makes N compute-optimal (as 'flopscale allocate --params')")
    i.add_argument("--tokens", type=float, default=None, help="tokens D to train it on")
    c = parser.add_argument_group(
        "cluster (communication-aware)",
        "the layout (tensor x pipeline x data parallel, ZeRO stage, micro-batch, recompute) is searched for the "
        "model: it must fit in the card's memory, and its step time (compute, recompute, TP all-reduces on the "
        "intra-node link, pipeline bubble, the exposed DP all-reduce on the inter-node link) sets the MFU at scale")
    c.add_argument("--nodes", type=int, default=None, help="nodes M (GPUs = M x --gpus-per-node)")
    c.add_argument("--gpus-per-node", type=int, default=None, help="GPUs per node G (default 8, assumed)")
    bw = c.add_mutually_exclusive_group()
    bw.add_argument("--interconnect-gbps", type=float, default=None, metavar="X",
                    help="inter-node bandwidth per GPU in Gbit/s (default 400, assumed: one NDR InfiniBand NIC per GPU); "
                         "the intra-node figure comes from the card's NVLink/PCIe link rate")
    bw.add_argument("--measured-collectives", default=None, metavar="CSV",
                    help="all-reduce bus bandwidth from a collectives run (torchrun -m flopscale.profiler.distributed "
                         "collectives --out c.csv, or the collectives-*.csv of 'flopscale bench --only collectives')")
    c.add_argument("--overlap", type=float, default=None,
                   help="share of the all-reduce hidden behind the backward pass, in [0, 1] (default 0, assumed; "
                        "measure it with torchrun -m flopscale.profiler.distributed ddp)")
    c.add_argument("--batch-tokens", type=float, default=None,
                   help="tokens per optimizer step, the global batch (default 4,194,304, assumed)")
    c.add_argument("--grad-dtype", choices=("fp32", "bf16", "fp16"), default=None,
                   help="dtype of the all-reduced gradients (default: --dtype, assumed)")
    c.add_argument("--layout", default=None, metavar="SPEC",
                   help="pin parts of the layout, e.g. 'tp=8,pp=8' or 'tp=1,pp=1,zero=0,mb=1,recompute=none' "
                        "(keys tp, pp, dp, zero, mb, recompute=none|selective|full); the rest is searched")
    o = parser.add_argument_group("output")
    o.add_argument("--report", default=None, metavar="MD", help="write a Markdown report with figures")
    o.add_argument("--no-neighbours", action="store_true", help="skip the table of neighbouring budgets")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of text")


_OPTIONS = ("gpu", "gpus", "days", "compute", "dtype", "mfu", "measured", "law", "fit", "law_params", "max_tokens",
            "count", "n_ctx", "vocab", "kv_group", "arch", "n_experts", "top_k", "params", "tokens", "nodes", "gpus_per_node", "interconnect_gbps",
            "measured_collectives", "overlap", "batch_tokens", "grad_dtype", "layout")


def run(args: argparse.Namespace) -> int:
    from ..planner import PlanError, make_plan

    check_output_path(args.report, "--report")
    try:
        result = make_plan(**{k: getattr(args, k) for k in _OPTIONS}, neighbours=not args.no_neighbours)
        written = result.write_report(args.report) if args.report else []
    except PlanError as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(f"--report: cannot write {args.report} ({exc.strerror or exc})") from None
    if args.json:
        out = result.to_dict()
        if args.report:
            out["report"] = args.report
            out["written"] = written
        print_json(out)
    else:
        print(result.to_text())
        if args.report:
            print(f"\nreport written to {args.report}")
    return 0
