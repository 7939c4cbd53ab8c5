"""flopscale audit: C = 6ND against the FLOPs a transformer training step really executes.

Parses, makes one domain call (:func:`profiler.audit.run_audit` for the built-in decoder,
:func:`profiler.audit_module.audit_module` for ``--model``), prints the result it gets back.
"""
from __future__ import annotations

import argparse
from typing import Any

from ..audit_report import render_sweep
from ._common import UserError, check_output_path, print_json, save_png

NAME = "audit"
HELP = "audit C = 6ND against the FLOPs a transformer training step really executes"
DESCRIPTION = (
    "Run one training step (forward, backward, optimizer step) under the profiler and compare the FLOPs it "
    "executes with 6ND, Kaplan's, PaLM's and Chinchilla's Appendix F estimates. The built-in decoder "
    "(--arch gpt2|llama|moe) or your own model (--model PKG.MODULE:FACTORY or path/to/file.py:FACTORY: the "
    "factory returns an nn.Module taking token ids [B, S] and returning logits [B, S, V] or a loss). Counts "
    "are in FLOP (a multiply-add is 2); model FLOPs are matmul and attention work without recompute (MFU), "
    "executed FLOPs add the recompute (HFU). MFU = model FLOPs / (wall time x peak), the peak named."
)

# defaults: a step that takes well under a second on a laptop CPU
DEFAULTS = dict(n_layer=2, d_model=128, n_head=4, n_ctx=128, vocab=2048, batch=4)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    m = parser.add_argument_group("your model")
    m.add_argument("--model", default=None, metavar="SPEC",
                   help="PKG.MODULE:FACTORY or path/to/file.py:FACTORY returning the nn.Module to audit")
    m.add_argument("--factory-args", default=None, metavar="JSON", help="keyword arguments of the factory (JSON)")
    m.add_argument("--compile", action="store_true",
                   help="also count and time the torch.compile'd step and report its MFU beside eager")
    m.add_argument("--top-k", type=int, default=None, help="experts per token of an MoE (default: inferred)")
    g = parser.add_argument_group("built-in model shape")
    g.add_argument("--arch", choices=("gpt2", "llama", "moe"), default="gpt2",
                   help="gpt2: learned positions, LayerNorm, GELU; llama: RoPE, RMSNorm, SwiGLU (d_ff 8/3 d rounded "
                        "up to 256), untied; moe: llama block with routed experts (default %(default)s)")
    g.add_argument("--n-layer", type=int, default=DEFAULTS["n_layer"], help="layers (default %(default)s)")
    g.add_argument("--d-model", type=int, default=DEFAULTS["d_model"], help="model width (default %(default)s)")
    g.add_argument("--n-head", type=int, default=DEFAULTS["n_head"], help="query heads (default %(default)s)")
    g.add_argument("--n-kv-head", type=int, default=None, help="key/value heads (grouped-query; default = n-head)")
    g.add_argument("--d-ff", type=int, default=None, help="MLP width (default 4 x d-model; llama/moe 8/3 d rounded)")
    g.add_argument("--n-experts", type=int, default=None, help="--arch moe: experts per layer (default 8)")
    g.add_argument("--n-ctx", type=int, default=DEFAULTS["n_ctx"], help="sequence length (default %(default)s)")
    g.add_argument("--vocab", type=int, default=DEFAULTS["vocab"], help="vocabulary size (default %(default)s)")
    g.add_argument("--tied", action="store_true", help="tie the output layer to the token embedding")
    g.add_argument("--batch", type=int, default=DEFAULTS["batch"], help="sequences per step (default %(default)s)")
    r = parser.add_argument_group("run")
    r.add_argument("--impl", choices=("auto", "torch", "kernels"), default="auto",
                   help="built-in model: kernels (flopscale Triton ops) or torch (torch.matmul + SDPA); default "
                        "kernels on CUDA, torch on a CPU")
    r.add_argument("--device", default=None, help="torch device (default: cuda if present, else cpu)")
    r.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default=None,
                   help="parameter and compute dtype (default: bf16 on CUDA, fp32 on a CPU)")
    r.add_argument("--time-budget", type=float, default=1.0,
                   help="seconds spent timing the step (default 1; at least one timed step runs)")
    r.add_argument("--sweep", action="store_true",
                   help="built-in model: also run widths d/4 .. 4d and tabulate measured/6ND and MFU against size")
    r.add_argument("--plot", default=None, metavar="PNG", help="with --sweep: write the figure here")
    r.add_argument("--records", action="store_true", help="with --json: include every launch record")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of text")


def render(res) -> str:
    """The text report of an audit result (kept for callers of the old helper)."""
    return res.to_text()


def _positive(args: argparse.Namespace, *names: str, optional: bool = False) -> None:
    for name in names:
        v = getattr(args, name)
        if (v is None and not optional) or (v is not None and v <= 0):
            raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {v}")


def _config(args: argparse.Namespace):
    from ..model import GPTConfig

    _positive(args, "n_layer", "d_model", "n_head", "n_ctx", "vocab", "batch")
    _positive(args, "n_kv_head", "d_ff", "n_experts", "top_k", optional=True)
    if args.arch != "moe" and (args.n_experts is not None or args.top_k is not None):
        raise UserError("--n-experts and --top-k apply to --arch moe (or to --model)")
    moe = dict(n_experts=args.n_experts, top_k=args.top_k) if args.arch == "moe" else {}
    try:
        return GPTConfig(args.n_layer, args.d_model, args.n_head, args.n_ctx, args.vocab, n_kv_head=args.n_kv_head,
                         d_ff=args.d_ff, tied=args.tied, arch=args.arch, **moe)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _device(args: argparse.Namespace):
    import torch

    if args.device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(args.device)
    except (RuntimeError, ValueError):
        raise UserError(f"unknown torch device {args.device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: no CUDA device on this machine")
    if dev.type not in ("cuda", "cpu"):
        raise UserError(f"--device {args.device}: only cuda and cpu are supported")
    return dev


def _audit_user_model(args: argparse.Namespace, dev, progress):
    import torch

    from ..audit_module import AuditError, audit_module, load_factory

    _positive(args, "batch", "n_ctx", "vocab")
    _positive(args, "top_k", optional=True)
    for flag in ("sweep", "tied", "n_experts", "n_kv_head", "d_ff"):
        if getattr(args, flag) not in (None, False):
            raise UserError(f"--{flag.replace('_', '-')} applies to the built-in model, not to --model")
    try:
        progress.note("building the model")
        model = load_factory(args.model, args.factory_args)
        if not isinstance(model, torch.nn.Module):
            raise UserError(f"--model: the factory returned {type(model).__name__}, not a torch.nn.Module")
        if args.dtype:
            from ..audit import _torch_dtype

            model = model.to(dtype=_torch_dtype(args.dtype))
        model = model.to(dev)
        ids = torch.randint(0, args.vocab, (args.batch, args.n_ctx), generator=torch.Generator().manual_seed(0))
        progress.note("counting FLOPs (one step under the counter)")
        return audit_module(model, ids.to(dev), compile=args.compile, vocab=args.vocab, top_k=args.top_k,
                            time_budget_s=args.time_budget, progress=progress, name=args.model)
    except AuditError as exc:
        raise UserError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    from ..progress import Progress

    from ..timing import check_time_budget

    try:
        check_time_budget(args.time_budget, "--time-budget")
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if args.plot and not args.sweep:
        raise UserError("--plot draws the --sweep figure: add --sweep")
    check_output_path(args.plot, "--plot")
    dev = _device(args)
    progress = Progress("flopscale audit", enabled=False if args.json else None)
    sweep_rows = None
    try:
        if args.model:
            res = _audit_user_model(args, dev, progress)
        else:
            if args.compile:
                raise UserError("--compile applies to --model (the built-in model's audit records launch by launch)")
            cfg = _config(args)
            impl = None if args.impl == "auto" else args.impl
            if impl == "kernels" and dev.type == "cpu":
                from flopscale.kernels._runtime import interpreter_on

                if not interpreter_on():
                    raise UserError("--impl kernels on a CPU needs the Triton interpreter (TRITON_INTERPRET=1); "
                                    "use --impl torch")
            from ..audit import run_audit, sweep_audits

            res = run_audit(cfg, args.batch, impl=impl, device=dev, dtype=args.dtype, time_budget_s=args.time_budget,
                            keep_records=bool(args.records and args.json), progress=progress)
            if args.sweep:
                sweep_rows = sweep_audits(cfg, args.batch, res, impl=impl, device=dev, dtype=args.dtype,
                                          time_budget_s=args.time_budget, progress=progress)
    finally:
        progress.close()
    if sweep_rows is not None and args.plot:
        _plot_sweep(sweep_rows, res.config, args.plot)
    if args.json:
        out = res.to_dict(with_records=bool(args.records))
        if sweep_rows is not None:
            out["sweep"] = sweep_rows["measured"]
            out["sweep_analytic"] = sweep_rows["analytic"]
            if args.plot:
                out["plot"] = args.plot
        print_json(out)
        return 0
    print(res.to_text())
    if sweep_rows is not None:
        print()
        print(render_sweep(sweep_rows, args.plot))
    return 0


def _plot_sweep(rows: dict[str, list[dict[str, Any]]], cfg, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    by_ctx: dict[int, list[dict[str, Any]]] = {}
    for r in rows["analytic"]:
        by_ctx.setdefault(r["n_ctx"], []).append(r)
    for n_ctx, rs in sorted(by_ctx.items()):
        ax.plot([r["N_non_embedding"] for r in rs], [r["ratio_to_6N_non_embedding"] for r in rs], "-o", ms=3,
                label=f"exact count, n_ctx {n_ctx}")
    m = rows["measured"]
    ax.plot([r["params"]["non_embedding"] for r in m], [r["ratio_to_6ND_non_embedding"] for r in m], "k*", ms=9,
            label=f"measured (n_ctx {cfg.n_ctx}, vocab {cfg.vocab})")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("non-embedding parameters N")
    ax.set_ylabel("model FLOPs / 6ND")
    ax.set_title("Where 6ND holds: training FLOPs against 6ND")
    ax.legend(fontsize=8)
    save_png(fig, path)
