"""flopscale plan: GPUs x days -> compute budget -> compute-optimal N, D, model shape, wall-clock."""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from ._common import UserError, print_json, save_png, write_text_atomic
from .audit import fmt_count, fmt_rate, fmt_time, table

NAME = "plan"
HELP = "plan a training run: GPUs x days -> compute budget -> compute-optimal N, D, model shape, wall-clock"
DESCRIPTION = (
    "Turn 'G GPUs for T days' into a compute budget C = GPUs x days x 86,400 s x peak(dtype) x MFU (FLOP), "
    "let a scaling law allocate it to parameters N and tokens D, pick a concrete model shape with N close to "
    "the optimum, count its exact FLOPs per token (matmuls, causal attention, logits; not only 6N) and give "
    "the wall-clock and GPU-days to train it. With no arguments: measure a small transformer step on this "
    "machine, plan one day of it, and tabulate larger budgets on a default card at a stated, assumed MFU. "
    "1 PF-day = 8.64e19 FLOP; peaks are dense datasheet rates."
)

# the budgets tabulated on the default card by the no-argument mode: (GPUs, days)
DEFAULT_TABLE = ((1, 1), (8, 7), (64, 30), (512, 30), (2048, 60), (8192, 90))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    b = parser.add_argument_group("budget")
    from ..devices import SPECS

    b.add_argument("--gpu", default=None, help=f"card: {', '.join(sorted(SPECS))} (default h100-sxm)")
    b.add_argument("--gpus", type=float, default=None, help="number of GPUs (default 1)")
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
    g.add_argument("--law", default=None, help="published fit: besiroglu2024 (default), hoffmann2022, kaplan2020")
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
    i = parser.add_argument_group("inverse: a given model")
    i.add_argument("--params", type=float, default=None, help="parameters N of a model to train (law's convention)")
    i.add_argument("--tokens", type=float, default=None, help="tokens D to train it on")
    c = parser.add_argument_group(
        "cluster (communication-aware)",
        "a data-parallel step = compute + the part of the gradient all-reduce that the backward pass does not hide")
    c.add_argument("--nodes", type=int, default=None, help="nodes M (GPUs = M x --gpus-per-node)")
    c.add_argument("--gpus-per-node", type=int, default=None, help="GPUs per node G (default 8, assumed)")
    bw = c.add_mutually_exclusive_group()
    bw.add_argument("--interconnect-gbps", type=float, default=None, metavar="X",
                    help="inter-node bandwidth per GPU in Gbit/s (e.g. 400 for one NDR InfiniBand NIC per GPU); "
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
    o = parser.add_argument_group("output")
    o.add_argument("--report", default=None, metavar="MD", help="write a Markdown report with figures")
    o.add_argument("--no-neighbours", action="store_true", help="skip the table of neighbouring budgets")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of text")


# ----------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------


def _positive(name: str, v: float | None) -> None:
    if v is not None and not (math.isfinite(v) and v > 0):
        raise UserError(f"{name} must be positive, got {v:g}")


def _law(args: argparse.Namespace, max_tokens: float | None):
    from ..plan import DEFAULT_LAW, LawBackend

    count = None if args.law_params is None else args.law_params.replace("-", "_")
    try:
        from flopscale import lawfit
    except ImportError as exc:  # pragma: no cover
        raise UserError(f"lawfit is not importable: {exc}") from None
    try:
        if args.fit:
            if not Path(args.fit).exists():
                raise UserError(f"fit file not found: {args.fit}")
            fit = lawfit.load_fit(args.fit)
            return LawBackend(fit, max_tokens=max_tokens, count=count, name=f"fit {Path(args.fit).name}")
        return LawBackend(args.law or DEFAULT_LAW, max_tokens=max_tokens, count=count)
    except lawfit.LawfitError as exc:
        raise UserError(str(exc).splitlines()[0]) from None
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"cannot use the fit in {args.fit}: {type(exc).__name__}: {exc}") from None


def _spec(key: str):
    from .. import devices

    try:
        return devices.get_spec(key)
    except devices.UnknownDeviceError as exc:
        raise UserError(str(exc)) from None


def _peak(spec, dtype: str) -> float:
    p = spec.peak(dtype)
    if not p:
        have = ", ".join(sorted(spec.peak_flops)) or "none"
        raise UserError(f"{spec.key} has no dense {dtype} peak (has: {have})")
    return float(p)


def _mfu_model(args: argparse.Namespace, spec, peak: float):
    """(MFUModel, description of where it came from)."""
    from .. import budget, devices
    from ..plan import DEFAULT_MFU

    if args.mfu is not None:
        try:
            return budget.MFUModel.constant(budget.check_mfu(args.mfu), "given with --mfu"), None
        except ValueError as exc:
            raise UserError(str(exc)) from None
    if args.measured:
        try:
            meas = budget.load_measured(args.measured, args.dtype)
        except budget.MeasuredFileError as exc:
            raise UserError(str(exc)) from None
        key = meas.device_key
        if key is None and meas.device_name:
            found = devices.match(meas.device_name)
            key = found.key if found else None
        if key is None or key == "cpu":
            where = meas.device_name or "an unknown device"
            raise UserError(f"{args.measured} was measured on {where}, not on a known card: cannot plan for {spec.key}")
        if key != spec.key:
            raise UserError(f"{args.measured} was measured on {key}, not on --gpu {spec.key}")
        if meas.dtype and meas.dtype != args.dtype:
            raise UserError(f"{args.measured} was measured in {meas.dtype}, not in --dtype {args.dtype}")
        try:
            return meas.mfu_model(peak, f"{spec.key} {args.dtype} datasheet"), meas
        except (budget.MeasuredFileError, ValueError) as exc:
            raise UserError(str(exc).splitlines()[0]) from None
    return budget.MFUModel.constant(DEFAULT_MFU, "assumed; measure it with 'flopscale audit --json' and --measured"), None


def _family(args: argparse.Namespace) -> dict[str, Any]:
    from ..plan import DEFAULT_N_CTX, DEFAULT_VOCAB

    n_ctx = args.n_ctx if args.n_ctx is not None else DEFAULT_N_CTX
    vocab = args.vocab if args.vocab is not None else DEFAULT_VOCAB
    for name, v in (("--n-ctx", n_ctx), ("--vocab", vocab), ("--kv-group", args.kv_group)):
        if v <= 0:
            raise UserError(f"{name} must be a positive integer, got {v}")
    return {"n_ctx": n_ctx, "vocab": vocab, "kv_group": args.kv_group}


_EXPLICIT = ("gpu", "gpus", "days", "compute", "mfu", "measured", "params", "tokens", "nodes", "gpus_per_node",
             "interconnect_gbps", "measured_collectives", "overlap", "batch_tokens", "grad_dtype")
_COMM_OPTIONS = ("gpus_per_node", "interconnect_gbps", "measured_collectives", "overlap", "batch_tokens", "grad_dtype")
_GRAD_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "tf32": 4, "fp64": 8}


def _comm_model(args: argparse.Namespace, spec) -> Any:
    """The communication model of ``--nodes/--gpus-per-node/...``, or None without ``--nodes``.

    Every part says whether it is measured, given on the command line or assumed.
    """
    from .. import budget
    from ..collectives import CollectivesFileError, intra_node_bandwidth, load_collectives_csv

    if args.nodes is None and args.gpus_per_node is None:
        extra = [k for k in _COMM_OPTIONS if getattr(args, k) is not None]
        if extra:
            raise UserError(f"--{extra[0].replace('_', '-')} needs --nodes M (and --gpus-per-node G)")
        return None
    if args.nodes is not None and args.nodes < 1:
        raise UserError(f"--nodes must be a positive integer, got {args.nodes}")
    if args.gpus_per_node is not None and args.gpus_per_node < 1:
        raise UserError(f"--gpus-per-node must be a positive integer, got {args.gpus_per_node}")
    if args.interconnect_gbps is not None and not (math.isfinite(args.interconnect_gbps)
                                                   and args.interconnect_gbps > 0):
        raise UserError(f"--interconnect-gbps must be a positive bandwidth in Gbit/s, got {args.interconnect_gbps:g}")
    if args.overlap is not None and not (0.0 <= args.overlap <= 1.0):
        raise UserError(f"--overlap must be in [0, 1], got {args.overlap:g}")
    if args.batch_tokens is not None and not (math.isfinite(args.batch_tokens) and args.batch_tokens > 0):
        raise UserError(f"--batch-tokens must be positive, got {args.batch_tokens:g}")
    nodes = args.nodes if args.nodes is not None else 1
    g = args.gpus_per_node if args.gpus_per_node is not None else 8
    sources: dict[str, dict[str, Any]] = {}

    def part(name: str, value: Any, status: str, source: str) -> None:
        sources[name] = {"value": value, "status": status, "source": source}

    part("nodes", nodes, "given" if args.nodes is not None else "assumed",
         "--nodes" if args.nodes is not None else "1 node (default; --nodes)")
    part("gpus_per_node", g, "given" if args.gpus_per_node is not None else "assumed",
         "--gpus-per-node" if args.gpus_per_node is not None else "8 GPUs per node (default; --gpus-per-node)")
    if args.gpus is not None and float(args.gpus) != float(nodes * g):
        raise UserError(f"--gpus {args.gpus:g} disagrees with --nodes {nodes} x --gpus-per-node {g} = {nodes * g}")
    gd = args.grad_dtype or args.dtype
    if gd not in _GRAD_BYTES:
        raise UserError(f"no gradient size known for dtype {gd}: give --grad-dtype fp32, bf16 or fp16")
    part("gradient_bytes_per_param", _GRAD_BYTES[gd], "given" if args.grad_dtype else "assumed",
         f"{gd} gradients, " + ("--grad-dtype" if args.grad_dtype else "the training dtype (default; --grad-dtype)")
         + "; every parameter, embeddings included, is all-reduced once per step")
    bt = args.batch_tokens if args.batch_tokens is not None else budget.DEFAULT_BATCH_TOKENS
    part("batch_tokens", bt, "given" if args.batch_tokens is not None else "assumed",
         "--batch-tokens" if args.batch_tokens is not None else
         f"{budget.DEFAULT_BATCH_TOKENS:,} tokens per optimizer step (default; --batch-tokens)")
    ov = args.overlap if args.overlap is not None else budget.DEFAULT_OVERLAP
    part("overlap", ov, "given" if args.overlap is not None else "assumed",
         "--overlap (e.g. measured by torchrun -m flopscale.profiler.distributed ddp)" if args.overlap is not None else
         "no overlap (default; an upper bound on the step time; measure it with "
         "torchrun -m flopscale.profiler.distributed ddp and pass --overlap)")
    part("backward_share", budget.BACKWARD_SHARE, "assumed",
         "the backward pass takes 2/3 of the compute time (its share of the model FLOPs): at most that much "
         "communication can hide behind it")
    measured = intra = inter = None
    if args.measured_collectives:
        try:
            measured = load_collectives_csv(args.measured_collectives)
        except CollectivesFileError as exc:
            raise UserError(str(exc)) from None
        part("allreduce_bus_bandwidth", None, "measured",
             f"{args.measured_collectives}: all-reduce on {measured.world_size} {measured.backend} ranks, read at "
             f"the {budget.DEFAULT_BUCKET_BYTES / 2**20:g} MiB DDP bucket size")
        part("bus_bandwidth_at_scale", None, "assumed",
             f"the bus bandwidth measured on {measured.world_size} ranks holds on {nodes * g}")
        if "gloo" in measured.backend:
            part("measured_on", measured.backend, "measured", "gloo ranks (CPUs, loopback): not a GPU interconnect")
    else:
        if g > 1:
            found = intra_node_bandwidth(spec.key)
            if found is None:
                raise UserError(f"no intra-node bandwidth known for {spec.key}: give --measured-collectives")
            intra = found[0]
            part("intra_node_bandwidth", intra, "assumed",
                 f"{spec.key} link rate, {found[1]}; a real all-reduce reaches less (NCCL typically 80-90%), so "
                 "this is optimistic")
        if nodes > 1:
            if args.interconnect_gbps is None:
                raise UserError(f"--nodes {nodes} needs the inter-node bandwidth: give --interconnect-gbps X "
                                "(Gbit/s per GPU) or --measured-collectives c.csv")
            inter = args.interconnect_gbps * 1e9 / 8.0
            part("inter_node_bandwidth", inter, "given",
                 f"--interconnect-gbps {args.interconnect_gbps:g} Gbit/s per GPU, taken as the cross-node "
                 "all-reduce bus bandwidth of each rail (the link rate: optimistic)")
    try:
        return budget.CommModel(nodes, g, float(_GRAD_BYTES[gd]), batch_tokens=float(bt), overlap=float(ov),
                                intra_Bps=intra, inter_Bps=inter, measured=measured, sources=sources)
    except ValueError as exc:
        raise UserError(str(exc)) from None


# ----------------------------------------------------------------------------------------
# explicit mode: a card, GPUs x days (or C), an MFU
# ----------------------------------------------------------------------------------------


def _explicit_mode(args: argparse.Namespace, fam: dict[str, Any]) -> dict[str, Any]:
    from .. import budget
    from ..plan import DEFAULT_CARD, neighbours, plan_budget

    if (args.params is None) != (args.tokens is None):
        raise UserError("the inverse question needs both --params N and --tokens D")
    gpu = args.gpu
    if gpu is None and args.measured:
        try:
            meas = budget.load_measured(args.measured, args.dtype)
        except budget.MeasuredFileError as exc:
            raise UserError(str(exc)) from None
        gpu = meas.device_key if meas.device_key and meas.device_key != "cpu" else None
    gpu_defaulted = gpu is None
    spec = _spec(gpu or DEFAULT_CARD)
    peak = _peak(spec, args.dtype)
    mfu_model, meas = _mfu_model(args, spec, peak)
    comm = _comm_model(args, spec)
    law = _law(args, args.max_tokens)
    gpus = float(comm.gpus) if comm is not None else (args.gpus if args.gpus is not None else 1.0)
    days = args.days if args.days is not None else 1.0
    common = dict(gpus=gpus, peak_flop_per_s=peak, mfu=mfu_model, device=spec.key, dtype=args.dtype,
                  peak_source="datasheet dense peak", exact_count=(args.count == "exact"), comm=comm, **fam)
    assumptions = []
    if gpu_defaulted:
        assumptions.append(f"card: {spec.key} (default; choose one with --gpu)")
    if args.gpus is None and comm is None:
        assumptions.append("GPUs: 1 (default; --gpus)")
    if comm is not None:
        assumptions += [f"communication: {v['source']}" for v in comm.sources.values() if v["status"] == "assumed"]
    if args.compute is None and args.params is None and args.days is None:
        assumptions.append("days: 1 (default; --days)")
    if args.n_ctx is None or args.vocab is None:
        assumptions.append(f"model family: n_ctx {fam['n_ctx']}, vocab {fam['vocab']} (defaults; --n-ctx, --vocab)")
    out: dict[str, Any] = {"mode": "plan", "device": spec.to_dict(), "assumptions": assumptions,
                           "law": {"name": law.name, "citation": law.citation, "n_counts": law.n_counts,
                                   "count_used": law.count},
                           "mfu_model": mfu_model.to_dict()}
    if args.params is not None:
        inv = _inverse(args.params, args.tokens, law, fam, gpus, peak, mfu_model, spec, args.dtype, comm)
        out.update(inv)
        out["_text"] = _render_inverse(inv, spec, args, assumptions, mfu_model)
        return out
    try:
        if args.compute is not None:
            p = plan_budget(law, compute=args.compute, **common)
            nb = [] if args.no_neighbours else neighbours(law, compute=args.compute, **common)
        else:
            p = plan_budget(law, days=days, **common)
            nb = [] if args.no_neighbours else neighbours(law, days=days, **common)
    except ValueError as exc:
        raise UserError(str(exc).splitlines()[0]) from None
    out.update(p.to_dict())
    out["neighbours"] = [{"factor": f, **q.to_dict()} for f, q in nb]
    out["_plan"] = p
    out["_neighbours"] = nb
    out["_law"] = law
    out["_text"] = _render_plan(p, nb, spec, args, assumptions, law, mfu_model, meas)
    return out


def _inverse(n, d, law, fam, gpus, peak, mfu_model, spec, dtype, comm=None) -> dict[str, Any]:
    from .. import budget
    from ..flopcount import flops_per_token
    from ..model import param_counts
    from ..plan import law_params, shape_for

    cfg = shape_for(n, count=law.count, **fam)
    pc = param_counts(cfg)
    n_shape = law_params(pc, law.count)
    fpt = flops_per_token(cfg)
    m = mfu_model(pc.total)
    step = comm.step(pc.total, fpt, peak, m) if comm is not None else None
    tt = budget.train_time(fpt * d, gpus=gpus, peak_flop_per_s=peak, mfu=step.mfu_at_scale if step else m)
    loss = None
    try:
        loss = law.loss(n_shape, d)
    except Exception:  # noqa: BLE001 - a loss is a bonus here
        loss = None
    return {"N": n, "D": d, "shape": cfg.to_dict(), "shape_N": n_shape, "shape_params": pc.to_dict(),
            "flops_per_token": fpt, "flops_per_token_6N": 6.0 * n_shape, "compute_flop": fpt * d,
            "pf_days": budget.pf_days(fpt * d), "six_nd": 6.0 * n * d, "loss": loss, "mfu": m,
            "wall_clock_days": tt.wall_clock_days, "gpu_days": tt.gpu_days, "gpu_hours": tt.gpu_hours,
            "gpus": gpus, "mfu_at_scale": step.mfu_at_scale if step else m,
            "communication": comm.to_dict(step) if comm is not None else None}


def _render_inverse(inv, spec, args, assumptions, mfu_model) -> str:
    c = inv["shape"]
    lines = [f"flopscale plan (inverse): N = {fmt_count(inv['N'])} parameters on D = {fmt_count(inv['D'])} tokens"]
    for a in assumptions:
        lines.append(f"  assumed: {a}")
    lines.append(f"  shape: n_layer {c['n_layer']}, d_model {c['d_model']}, n_head {c['n_head']} (head_dim "
                 f"{c['head_dim']}), d_ff {c['d_ff']}, n_ctx {c['n_ctx']}, vocab {c['vocab']}: N = "
                 f"{fmt_count(inv['shape_N'])} ({inv['shape_params']['total']:,} total parameters)")
    lines.append(f"  FLOPs per token: {fmt_count(inv['flops_per_token'], 'FLOP')} exact (6N = "
                 f"{fmt_count(inv['flops_per_token_6N'], 'FLOP')}, ratio {inv['flops_per_token'] / inv['flops_per_token_6N']:.3f})")
    lines.append(f"  compute: {fmt_count(inv['compute_flop'], 'FLOP')} = {inv['pf_days']:.4g} PF-days "
                 f"(6ND would say {fmt_count(inv['six_nd'], 'FLOP')})")
    if inv["loss"] is not None:
        lines.append(f"  predicted loss: {inv['loss']:.4f}")
    lines.append(f"  on {inv['gpus']:g} x {spec.key} at {fmt_rate(_peak(spec, args.dtype))} {args.dtype} (datasheet) x "
                 f"{mfu_model.describe(inv['shape_params']['total'])}:")
    if inv.get("communication"):
        lines += _comm_lines(inv["communication"], "    ")
    lines.append(f"    wall-clock {inv['wall_clock_days']:.4g} days, {inv['gpu_days']:.4g} GPU-days "
                 f"({inv['gpu_hours']:.4g} GPU-hours)")
    return "\n".join(lines)


def _shape_text(p) -> str:
    c = p.shape
    return (f"n_layer {c.n_layer}, d_model {c.d_model}, n_head {c.n_head}"
            + (f" (n_kv_head {c.kv_heads})" if c.kv_heads != c.n_head else "")
            + f", head_dim {c.head_dim}, d_ff {c.ff}, n_ctx {c.n_ctx}, vocab {c.vocab}")


def _ci_text(p, key: str) -> str:
    v = p.ci.get(key)
    return f" [{v[0]:.4g}, {v[1]:.4g}]" if v else ""


def _plan_lines(p, law, indent: str = "  ", unit: str = "GPU") -> list[str]:
    lines = []
    matched = "total" if p.law_count == "total" else "non-embedding"
    lines.append(f"{indent}compute-optimal ({law.name}; its N counts {law.n_counts or matched}; shapes are matched "
                 f"on {matched} parameters):")
    if p.ci:
        level = f"{100 * p.ci_level:g}% " if p.ci_level else ""
        ci_note = f" ({level}bootstrap percentile intervals)"
    else:
        ci_note = " (this law has no intervals)"
    lines.append(f"{indent}  N = {p.N_opt:.4g}{_ci_text(p, 'N')} parameters, D = {p.D_opt:.4g}{_ci_text(p, 'D')} "
                 f"tokens, D/N = {p.tokens_per_param:.3g}{_ci_text(p, 'tokens_per_param')}, predicted loss "
                 + ("n/a" if p.loss_opt is None else f"{p.loss_opt:.4f}{_ci_text(p, 'loss')}") + ci_note)
    lines.append(f"{indent}model: {_shape_text(p)}")
    other = (f"{p.params.non_embedding:,} non-embedding" if p.law_count == "total" else f"{p.params.total:,} total")
    lines.append(f"{indent}  N = {p.N_shape:,.0f} {matched} parameters ({other}); FLOPs per token "
                 f"{fmt_count(p.flops_per_token, 'FLOP')} exact (matmuls, causal attention, logits; forward + "
                 f"backward) = {p.ratio_to_6n:.3f} x 6N")
    lines.append(f"{indent}  trains on D = {p.D_shape:.4g} tokens (= C / exact FLOPs per token), predicted loss "
                 + ("n/a" if p.loss_shape is None else f"{p.loss_shape:.4f}"))
    if p.step is not None and p.comm is not None:
        lines += _comm_lines(p.comm.to_dict(p.step), indent + "  ")
    if p.time is not None:
        at = f"MFU {p.mfu:.3f}"
        if p.step is not None:
            at = f"MFU {p.mfu_at_scale:.3f} at scale ({p.mfu:.3f} x {p.step.efficiency:.3f} compute share of a step)"
        lines.append(f"{indent}  wall-clock {p.time.wall_clock_days:.4g} days on {p.time.gpus:g} {unit}"
                     f"{'' if p.time.gpus == 1 else 's'} = {p.time.gpu_days:.4g} {unit}-days at {at}")
    for n in p.notes:
        lines.append(f"{indent}  note: {n}")
    return lines


def _comm_lines(c: dict[str, Any], indent: str = "  ") -> list[str]:
    """The communication part of a plan: the cluster, the all-reduce, one step, what is measured."""
    st = c["step"]
    src = c["sources"]
    lines = [f"{indent}communication (data parallel; the gradient is all-reduced once per optimizer step):"]
    lines.append(f"{indent}  {c['nodes']} node(s) x {c['gpus_per_node']} GPUs = {c['gpus']} GPUs; gradient "
                 f"{fmt_count(st['grad_bytes'], 'B')} = {fmt_count(st['params'])} parameters x "
                 f"{c['grad_bytes_per_param']:g} B; {fmt_count(c['batch_tokens'])} tokens per step")
    if c["gpus"] > 1:
        if c.get("measured_busbw_Bps"):
            lines.append(f"{indent}  all-reduce: {c['algorithm']}, {c['measured_busbw_Bps'] / 1e9:.4g} GB/s "
                         f"({src['allreduce_bus_bandwidth']['source']})")
        else:
            parts = []
            if c.get("intra_node_Bps") and c["gpus_per_node"] > 1:
                parts.append(f"inside a node {c['intra_node_Bps'] / 1e9:.4g} GB/s per GPU")
            if c.get("inter_node_Bps_per_gpu") and c["nodes"] > 1:
                parts.append(f"across nodes {c['inter_node_Bps_per_gpu'] / 1e9:.4g} GB/s per GPU")
            lines.append(f"{indent}  all-reduce: {c['algorithm']}; " + ", ".join(parts))
    lines.append(f"{indent}  per step: compute {fmt_time(st['compute_s'])}, all-reduce {fmt_time(st['comm_s'])}, "
                 f"hidden {fmt_time(st['hidden_s'])} (overlap {c['overlap']:g}, at most 2/3 of compute), exposed "
                 f"{fmt_time(st['exposed_s'])} -> step {fmt_time(st['step_s'])}; MFU {st['mfu']:.3f} -> "
                 f"{st['mfu_at_scale']:.3f} at scale")
    for kind in ("measured", "given"):
        names = c[kind]
        if names:
            lines.append(f"{indent}  {kind}: " + "; ".join(f"{k.replace('_', ' ')}: {src[k]['source']}" for k in names))
    if c["assumed"]:
        lines.append(f"{indent}  assumed (see the top): " + ", ".join(k.replace("_", " ") for k in c["assumed"]))
    return lines


def _render_plan(p, nb, spec, args, assumptions, law, mfu_model, meas) -> str:
    lines = ["flopscale plan"]
    for a in assumptions:
        lines.append(f"  assumed: {a}")
    lines.append(f"budget: {p.compute_flop:.4g} FLOP = {p.pf_days:.4g} PF-days")
    if p.budget is not None:
        lines.append(f"  {p.budget.derivation}")
    else:
        lines.append("  given with --compute")
    lines.append(f"  {mfu_model.describe(p.params.total)}")
    for n in getattr(meas, "notes", None) or []:
        lines.append(f"  measured: {n}")
    if meas is not None and not mfu_model.is_constant:
        lines.append(f"  allocation and MFU iterated to a fixed point ({p.iterations} iterations, "
                     f"{'converged' if p.converged else 'not converged'})")
    lines += _plan_lines(p, law)
    if nb:
        lines.append("")
        lines.append("neighbouring budgets (same GPUs, days scaled)" if args.compute is None
                     else "neighbouring budgets (compute scaled)")
        rows = []
        for f, q in [(1.0, p), *nb]:
            rows.append(_row(q, f))
        rows.sort(key=lambda r: float(r[1]))
        lines.append(table(rows, ["x", "C FLOP", "PF-days", "N", "D", "D/N", "loss", "n_layer x d_model", "FLOP/tok /6N",
                                  "days", "GPU-days"]))
    return "\n".join(lines)


def _row(q, f) -> list[str]:
    return [f"{f:g}", f"{q.compute_flop:.3e}", f"{q.pf_days:.3g}", f"{q.N_opt:.3g}", f"{q.D_opt:.3g}",
            f"{q.tokens_per_param:.3g}", "n/a" if q.loss_opt is None else f"{q.loss_opt:.3f}",
            f"{q.shape.n_layer} x {q.shape.d_model}", f"{q.ratio_to_6n:.3f}",
            "n/a" if q.time is None else f"{q.time.wall_clock_days:.3g}",
            "n/a" if q.time is None else f"{q.time.gpu_days:.3g}"]


# ----------------------------------------------------------------------------------------
# default mode: measure this machine, plan a day of it, tabulate a default card
# ----------------------------------------------------------------------------------------


def _default_mode(args: argparse.Namespace, fam: dict[str, Any]) -> dict[str, Any]:
    import torch

    from .. import budget
    from ..audit import run_audit
    from ..model import GPTConfig
    from ..plan import DEFAULT_CARD, DEFAULT_MFU, plan_budget

    law = _law(args, args.max_tokens)
    on_gpu = torch.cuda.is_available()
    if on_gpu:
        cfg, batch = GPTConfig(4, 1024, 8, 1024, 32000), 8
    else:
        cfg, batch = GPTConfig(2, 128, 4, 128, 2048), 4
    res = run_audit(cfg, batch, flop_counter=False, time_budget_s=1.0)
    rate = res.achieved_flop_per_s
    ceiling = res.mfu["peak_flop_per_s"] if res.mfu else None
    lines = ["flopscale plan (no arguments): measure this machine, plan one day of it, then larger budgets", ""]
    dev = res.device
    if dev.get("kind") == "cpu":
        lines.append(f"This machine: {dev.get('name')} -- no CUDA device, so the step below runs the torch reference "
                     "path (torch.matmul, scaled_dot_product_attention) on the CPU, not the Triton kernels.")
    else:
        lines.append(f"This machine: {dev.get('name')} ({'flopscale Triton kernels' if res.impl == 'kernels' else 'torch'}"
                     f", {res.dtype}).")
    c = res.config
    lines.append(f"  measured: one training step of n_layer {c.n_layer}, d_model {c.d_model}, n_head {c.n_head}, "
                 f"n_ctx {c.n_ctx}, vocab {c.vocab}, batch {res.batch}, {res.dtype}: "
                 f"{fmt_time(res.timing['step_s'])} per step (median of {res.timing['repetitions']}), "
                 f"{fmt_count(res.model_flops, 'FLOP')} model FLOPs (profiled launch by launch) -> {fmt_rate(rate)}")
    if res.mfu:
        lines.append(f"  MFU {100 * res.mfu['value']:.2f}% of {fmt_rate(ceiling)} {res.dtype}: {res.mfu['peak_source']}")
    # one day of this device at the measured rate
    if ceiling:
        mfu_here = budget.MFUModel.constant(min(1.0, rate / ceiling), "measured on this machine's small step")
        peak_here = ceiling
    else:  # no ceiling: the measured rate itself, MFU 1 of it
        mfu_here = budget.MFUModel.constant(1.0, "the measured rate itself (no ceiling)")
        peak_here = rate
    here = plan_budget(law, gpus=1, days=1, peak_flop_per_s=peak_here, mfu=mfu_here,
                       device=dev.get("key") or dev.get("kind"), dtype=res.dtype, peak_source=(
                           res.mfu["peak_source"] if res.mfu else "measured rate"), **fam)
    lines.append("")
    lines.append(f"One day of this machine: C = 86,400 s x {fmt_rate(rate)} (measured model-FLOP rate, assumed "
                 f"the same for the planned model) = {here.compute_flop:.4g} FLOP = {here.pf_days:.3g} PF-days")
    lines += _plan_lines(here, law, unit="GPU" if on_gpu else "CPU")
    # larger budgets on the default card
    spec = _spec(DEFAULT_CARD)
    peak = _peak(spec, args.dtype)
    mfu_card = budget.MFUModel.constant(DEFAULT_MFU, "assumed")
    rows = []
    table_plans = []
    for gpus, days in DEFAULT_TABLE:
        q = plan_budget(law, gpus=gpus, days=days, peak_flop_per_s=peak, mfu=mfu_card, device=spec.key,
                        dtype=args.dtype, peak_source="datasheet dense peak", **fam)
        table_plans.append(((gpus, days), q))
        rows.append([f"{gpus:g} x {days:g}", f"{q.compute_flop:.3e}", f"{q.pf_days:.3g}", f"{q.N_opt:.3g}",
                     f"{q.D_opt:.3g}", f"{q.tokens_per_param:.3g}",
                     "n/a" if q.loss_opt is None else f"{q.loss_opt:.3f}",
                     f"{q.shape.n_layer} x {q.shape.d_model} / {q.shape.n_head}", f"{q.ratio_to_6n:.3f}"])
    lines.append("")
    lines.append(f"Larger budgets on {spec.key} ({spec.name}): C = GPUs x days x 86,400 s x {fmt_rate(peak)} "
                 f"({args.dtype} dense datasheet peak) x MFU {DEFAULT_MFU:.2f} (ASSUMED, constant across sizes; "
                 "measure yours with 'flopscale audit --json' and pass --measured)")
    lines.append(table(rows, ["GPUs x days", "C FLOP", "PF-days", "N", "D", "D/N", "loss",
                              "n_layer x d_model / heads", "FLOP/tok /6N"]))
    lines.append(f"  law: {law.name} ({law.citation or 'user fit'}); N counts {law.n_counts or law.count}; "
                 f"model family n_ctx {fam['n_ctx']}, vocab {fam['vocab']}, d_ff = 4 d_model, untied output layer")
    lines.append("  plan your own: flopscale plan --gpu h100-sxm --gpus 1024 --days 30 [--mfu 0.4 | --measured m.json]")
    out: dict[str, Any] = {"mode": "default", "measured": {
        "device": dev, "impl": res.impl, "dtype": res.dtype, "config": c.to_dict(), "batch": res.batch,
        "step_s": res.timing["step_s"], "model_flops": res.model_flops, "achieved_flop_per_s": rate,
        "mfu": res.mfu, "params": res.params.to_dict(),
        "note": ("CPU: torch reference path, not the Triton kernels" if dev.get("kind") == "cpu" else None)}}
    out.update(here.to_dict())
    out["this_device"] = here.to_dict()
    out["default_card"] = {"device": spec.key, "name": spec.name, "dtype": args.dtype, "peak_flop_per_s": peak,
                           "mfu": DEFAULT_MFU, "mfu_source": "assumed, constant across model sizes"}
    out["table"] = [{**q.to_dict(), "gpus": g, "days": d} for (g, d), q in table_plans]
    out["_plan"] = here
    out["_neighbours"] = []
    out["_table"] = table_plans
    out["_law"] = law
    out["_text"] = "\n".join(lines)
    return out


# ----------------------------------------------------------------------------------------
# the Markdown report
# ----------------------------------------------------------------------------------------


def _frontier_figure(path: Path, law, points: list[tuple[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cs = [q.compute_flop for _, q in points]
    lo, hi = min(cs) / 30, max(cs) * 30
    grid = np.logspace(math.log10(lo), math.log10(hi), 40)
    losses = []
    for C in grid:
        try:
            losses.append(law.allocate(float(C), None).loss)
        except Exception:  # noqa: BLE001
            losses.append(float("nan"))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(grid, losses, "-", color="C0", label=f"compute-optimal loss ({law.name}, C = 6ND)")
    for k, (name, q) in enumerate(points):
        if q.loss_opt is not None:
            style = dict(marker="*", ms=14, color="k") if k == 0 else dict(marker="o", ms=6)
            ax.plot([q.compute_flop], [q.loss_opt], linestyle="none", label=name, **style)
    ax.set_xscale("log")
    ax.set_xlabel("training compute C (FLOP)")
    ax.set_ylabel("predicted loss")
    ax.set_title("Loss against compute, plan marked")
    ax.legend(fontsize=8)
    save_png(fig, path)


def _mfu_figure(path: Path, mfu_model: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(p["N"], p["mfu"]) for p in mfu_model["points"] if p["N"] is not None]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot([n for n, _ in pts], [m for _, m in pts], "o-", label="measured (interpolated in log N)")
    ax.set_xscale("log")
    ax.set_xlabel("parameters N (total)")
    ax.set_ylabel("MFU (of the datasheet peak)")
    ax.set_title("MFU against model size")
    ax.legend(fontsize=8)
    save_png(fig, path)


def _write_report(path: str, result: dict[str, Any]) -> None:
    """Markdown with the printed plan and figures beside it (each file written atomically)."""
    md = Path(path)
    stem = md.stem
    law = result.get("_law")
    figures = []
    p = result.get("_plan")
    if p is not None and law is not None:
        points = [("this plan", p)] + [(f"x{f:g}", q) for f, q in result.get("_neighbours", [])]
        points += [(f"{g:g} GPUs x {d:g} days", q) for (g, d), q in result.get("_table", [])]
        fig = md.with_name(f"{stem}_frontier.png")
        _frontier_figure(fig, law, points)
        figures.append(("Loss against compute (the law's compute-optimal frontier, the plan marked)", fig.name))
    mm = result.get("mfu_model")
    if mm and not mm.get("constant"):
        fig = md.with_name(f"{stem}_mfu.png")
        _mfu_figure(fig, mm)
        figures.append(("MFU against model size (measured)", fig.name))
    text = ["# flopscale plan", "", "```", result.get("_text", ""), "```", ""]
    for caption, name in figures:
        text += [f"## {caption}", "", f"![{caption}]({name})", ""]
    text += ["Units: FLOP, FLOP/s; 1 PF-day = 8.64e19 FLOP. Peaks are dense datasheet rates; every MFU above says "
             "whether it was given, assumed or measured.", ""]
    write_text_atomic(md, "\n".join(text))


def _strip_private(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if not k.startswith("_")}


def run(args: argparse.Namespace) -> int:
    for name in ("gpus", "days", "compute", "max_tokens", "params", "tokens"):
        _positive("--" + name.replace("_", "-"), getattr(args, name))
    if args.compute is not None and args.days is not None:
        raise UserError("give --compute or --days (with --gpus), not both")
    fam = _family(args)
    if args.report:
        parent = Path(args.report).resolve().parent
        if not parent.is_dir():
            raise UserError(f"--report: directory does not exist: {parent}")
    if not any(getattr(args, k) is not None for k in _EXPLICIT):
        result = _default_mode(args, fam)
    else:
        result = _explicit_mode(args, fam)
    if args.report:
        _write_report(args.report, result)
        result["report"] = args.report
    if args.json:
        print_json(_strip_private(result))
    else:
        print(result["_text"])
        if args.report:
            print(f"\nreport written to {args.report}")
    return 0
