"""flopscale audit: C = 6ND against the FLOPs a transformer training step really executes."""
from __future__ import annotations

import argparse
import math
from typing import Any

from ._common import UserError, print_json, save_png

NAME = "audit"
HELP = "audit C = 6ND against the FLOPs a transformer training step really executes"
DESCRIPTION = (
    "Run one training step (forward, backward, AdamW step) of a GPT decoder under the profiler, "
    "launch by launch, and compare the FLOPs it executes with 6ND, Kaplan's, PaLM's and Chinchilla's "
    "Appendix F estimates. Counts are in FLOP (a multiply-add is 2); model FLOPs are matmul and "
    "attention work without recompute (MFU), executed FLOPs add the recompute (HFU). On a CUDA device "
    "the step runs the flopscale Triton kernels; on a CPU it runs the torch reference path."
)

# defaults: a step that takes well under a second on a laptop CPU
DEFAULTS = dict(n_layer=2, d_model=128, n_head=4, n_ctx=128, vocab=2048, batch=4)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model shape")
    g.add_argument("--n-layer", type=int, default=DEFAULTS["n_layer"], help="layers (default %(default)s)")
    g.add_argument("--d-model", type=int, default=DEFAULTS["d_model"], help="model width (default %(default)s)")
    g.add_argument("--n-head", type=int, default=DEFAULTS["n_head"], help="query heads (default %(default)s)")
    g.add_argument("--n-kv-head", type=int, default=None, help="key/value heads (grouped-query; default = n-head)")
    g.add_argument("--d-ff", type=int, default=None, help="MLP width (default 4 x d-model)")
    g.add_argument("--n-ctx", type=int, default=DEFAULTS["n_ctx"], help="sequence length (default %(default)s)")
    g.add_argument("--vocab", type=int, default=DEFAULTS["vocab"], help="vocabulary size (default %(default)s)")
    g.add_argument("--tied", action="store_true", help="tie the output layer to the token embedding")
    g.add_argument("--batch", type=int, default=DEFAULTS["batch"], help="sequences per step (default %(default)s)")
    r = parser.add_argument_group("run")
    r.add_argument("--impl", choices=("auto", "torch", "kernels"), default="auto",
                   help="kernels: flopscale Triton ops; torch: torch.matmul + SDPA (default: kernels on CUDA, "
                        "torch on a CPU)")
    r.add_argument("--device", default=None, help="torch device (default: cuda if present, else cpu)")
    r.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default=None,
                   help="parameter and compute dtype (default: bf16 on CUDA, fp32 on a CPU)")
    r.add_argument("--time-budget", type=float, default=1.0, help="seconds spent timing the step (default 1)")
    r.add_argument("--sweep", action="store_true",
                   help="also run widths d/4 .. 4d and tabulate measured/6ND and MFU against size")
    r.add_argument("--plot", default=None, metavar="PNG", help="with --sweep: write the figure here")
    r.add_argument("--records", action="store_true", help="with --json: include every launch record")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of text")


# ----------------------------------------------------------------------------------------
# number formatting shared with 'flopscale plan'
# ----------------------------------------------------------------------------------------


def fmt_count(x: float | None, unit: str = "") -> str:
    """Engineering notation with 4 significant digits: 1.234e+18 FLOP."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    s = f"{x:,.0f}" if abs(x) < 1e6 and float(x).is_integer() else f"{x:.4g}"
    return f"{s} {unit}".rstrip()


def fmt_rate(x: float | None, unit: str = "FLOP/s") -> str:
    if not x:
        return "n/a"
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}"


def fmt_time(s: float | None) -> str:
    if s is None:
        return "n/a"
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.3g} s"


def fmt_signed(x: float) -> str:
    return f"{x:+.3g}"


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


# ----------------------------------------------------------------------------------------


def _config(args: argparse.Namespace):
    from ..model import GPTConfig

    for name in ("n_layer", "d_model", "n_head", "n_ctx", "vocab", "batch"):
        v = getattr(args, name)
        if v is None or v <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {v}")
    for name in ("n_kv_head", "d_ff"):
        v = getattr(args, name)
        if v is not None and v <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {v}")
    try:
        return GPTConfig(args.n_layer, args.d_model, args.n_head, args.n_ctx, args.vocab,
                         n_kv_head=args.n_kv_head, d_ff=args.d_ff, tied=args.tied)
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


def run(args: argparse.Namespace) -> int:
    cfg = _config(args)
    if args.time_budget is None or not (args.time_budget > 0):
        raise UserError(f"--time-budget must be positive, got {args.time_budget}")
    if args.plot and not args.sweep:
        raise UserError("--plot draws the --sweep figure: add --sweep")
    dev = _device(args)
    impl = None if args.impl == "auto" else args.impl
    if impl == "kernels" and dev.type == "cpu":
        from flopscale.kernels._runtime import interpreter_on

        if not interpreter_on():
            raise UserError("--impl kernels on a CPU needs the Triton interpreter (TRITON_INTERPRET=1); "
                            "use --impl torch")
    if dev.type == "cpu" and args.dtype in ("bf16", "fp16"):
        pass  # allowed, slow; the note in the output says the CPU numbers are not GPU figures
    from ..audit import run_audit

    res = run_audit(cfg, args.batch, impl=impl, device=dev, dtype=args.dtype, time_budget_s=args.time_budget,
                    keep_records=bool(args.records and args.json))
    sweep_rows = None
    if args.sweep:
        sweep_rows = _sweep(cfg, args, dev, impl, res)
        if args.plot:
            _plot_sweep(sweep_rows, cfg, args.plot)
    if args.json:
        out = res.to_dict(with_records=bool(args.records))
        if sweep_rows is not None:
            out["sweep"] = sweep_rows["measured"]
            out["sweep_analytic"] = sweep_rows["analytic"]
            if args.plot:
                out["plot"] = args.plot
        print_json(out)
        return 0
    print(render(res))
    if sweep_rows is not None:
        print()
        print(render_sweep(sweep_rows, args.plot))
    return 0


def _sweep(cfg, args, dev, impl, base) -> dict[str, list[dict[str, Any]]]:
    from .. import flopcount
    from ..audit import default_sweep_configs, run_audit
    from ..model import GPTConfig

    measured = []
    for c in default_sweep_configs(cfg):
        r = base if c == cfg else run_audit(c, args.batch, impl=impl, device=dev, dtype=args.dtype,
                                            time_budget_s=max(0.2, args.time_budget / 2), flop_counter=False)
        measured.append({
            "n_layer": c.n_layer, "d_model": c.d_model, "n_head": c.n_head, "n_kv_head": c.kv_heads,
            "n_ctx": c.n_ctx, "vocab": c.vocab,
            "params": r.params.to_dict(),
            "model_flops": r.model_flops,
            "six_nd": r.six_nd,
            "ratio_to_6ND_non_embedding": r.model_flops / r.six_nd,
            "ratio_to_6ND_total": r.model_flops / flopcount.six_nd(r.params.total, r.tokens),
            "step_s": r.timing["step_s"],
            "achieved_flop_per_s": r.achieved_flop_per_s,
            "mfu": r.mfu,
            "device": r.device,
            "dtype": r.dtype,
        })
    # the exact count (analytic, verified launch by launch above) at published-like shapes
    shapes = [(12, 768, 12), (24, 1024, 16), (24, 2048, 16), (32, 4096, 32), (40, 5120, 40), (80, 8192, 64),
              (96, 12288, 96)]
    analytic = []
    for n_ctx in sorted({cfg.n_ctx, 2048, 8192}):
        cfgs = [GPTConfig(L, d, h, n_ctx, cfg.vocab) for L, d, h in shapes]
        for row in flopcount.sweep(cfgs):
            analytic.append(row)
    return {"measured": measured, "analytic": analytic}


def render_sweep(rows: dict[str, list[dict[str, Any]]], plot: str | None) -> str:
    lines = ["Sweep: measured model FLOPs / 6ND across widths (same depth, context, vocabulary, batch)"]
    body = []
    for r in rows["measured"]:
        mfu = r["mfu"]["value"] if r["mfu"] else None
        body.append([str(r["d_model"]), str(r["n_head"]), fmt_count(r["params"]["non_embedding"]),
                     fmt_count(r["params"]["total"]), fmt_count(r["model_flops"]),
                     f"{r['ratio_to_6ND_non_embedding']:.3f}", f"{r['ratio_to_6ND_total']:.3f}",
                     fmt_time(r["step_s"]), "n/a" if mfu is None else f"{100 * mfu:.1f}%"])
    lines.append(table(body, ["d_model", "heads", "N non-emb", "N total", "model FLOP", "/6ND non-emb",
                              "/6ND total", "step", "MFU"]))
    if rows["measured"] and rows["measured"][0]["mfu"]:
        lines.append(f"  MFU against {rows['measured'][0]['mfu']['peak_source']}")
    lines.append("")
    lines.append("Exact count of this model family at larger shapes (analytic; the audit above reproduces it "
                 "launch by launch): per-token FLOPs / 6N")
    body = []
    for r in rows["analytic"]:
        body.append([str(r["n_ctx"]), str(r["n_layer"]), str(r["d_model"]), fmt_count(r["N_non_embedding"]),
                     f"{r['ratio_to_6N_non_embedding']:.3f}", f"{r['ratio_to_6N_total']:.3f}",
                     f"{100 * r['attention_share']:.1f}%", f"{100 * r['logits_share']:.1f}%"])
    lines.append(table(body, ["n_ctx", "n_layer", "d_model", "N non-emb", "/6N non-emb", "/6N total",
                              "attention", "logits"]))
    lines.append("  6ND is good where d_model >> n_ctx (attention small) and N >> vocab x d_model (logits small).")
    lines.append(f"  figure: {plot}" if plot else "  add --plot sweep.png for the figure")
    return "\n".join(lines)


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


def render(res) -> str:
    from ..audit import GROUP_LABELS

    c = res.config
    pc = res.params
    dev = res.device
    lines = ["flopscale audit: one training step (forward, backward, AdamW step) of a GPT decoder"]
    lines.append(
        f"  shape: n_layer {c.n_layer}, d_model {c.d_model}, n_head {c.n_head} (n_kv_head {c.kv_heads}, head_dim "
        f"{c.head_dim}), d_ff {c.ff}, n_ctx {c.n_ctx}, vocab {c.vocab}, {'tied' if c.tied else 'untied'} output layer"
    )
    path = ("flopscale Triton kernels" if res.impl == "kernels"
            else "torch reference path (torch.matmul, scaled_dot_product_attention)")
    lines.append(f"  batch {res.batch} x {res.seq} tokens = D {res.tokens:,} tokens; {dev.get('name')} "
                 f"({dev.get('kind')}), {path}, {res.dtype}")
    lines.append(
        f"  parameters: total {pc.total:,}; non-embedding N {pc.non_embedding:,}; embeddings {pc.embedding:,}; "
        f"output layer {pc.unembedding:,}; Kaplan 12*L*d^2 {pc.kaplan:,}"
    )
    lines.append("")
    lines.append("FLOPs by group, in FLOP (model = matmul + attention work, no recompute)")
    b = res.breakdown
    rows = []
    for g in ("qkv", "attn_scores", "attn_pv", "out_proj", "mlp", "logits"):
        e = b[g]
        t = b["attention_time_s"] if g == "attn_scores" else (None if g == "attn_pv" else e["time_s"])
        tt = fmt_time(t) + (" (both)" if g == "attn_scores" else "") if g != "attn_pv" else "(above)"
        rows.append([GROUP_LABELS[g], fmt_count(e["forward"]), fmt_count(e["backward"]), fmt_count(e["model_flops"]),
                     f"{100 * e['model_flops'] / res.model_flops:.1f}%" if res.model_flops else "", "", tt])
    if b["other"]["model_flops"]:
        e = b["other"]
        rows.append([GROUP_LABELS["other"], fmt_count(e["forward"]), fmt_count(e["backward"]),
                     fmt_count(e["model_flops"]), "", "", fmt_time(e["time_s"])])
    for g in ("backward_recompute", "masked_work"):
        e = b[g]
        if g == "backward_recompute" or e["executed_flops"]:
            rows.append([GROUP_LABELS[g] + " (executed)", fmt_count(e["forward"]) if e["forward"] else "",
                         fmt_count(e["backward"]) if e["backward"] else "", "", "", "", "(in attention)"])
    e = b["softmax_norm_elementwise"]
    rows.append([GROUP_LABELS["softmax_norm_elementwise"], "", "", "", "", fmt_count(e["nonmatmul_flops"]),
                 fmt_time(e["time_s"])])
    e = b["optimizer"]
    rows.append([GROUP_LABELS["optimizer"], "", "", "", "", fmt_count(e["nonmatmul_flops"]), fmt_time(e["time_s"])])
    lines.append(table(rows, ["group", "forward", "backward", "model", "share", "non-matmul*", "time (recorded)"]))
    lines.append("  * non-matmul FLOPs are the profiler's per-element estimates (softmax 5/element, norms 7, AdamW 12 "
                 "per parameter, ...); recorded times include recording overhead")
    same = "=" if res.model_flops == res.analytic.total else "!="
    lines.append(f"  model_flops    {fmt_count(res.model_flops, 'FLOP')} ({same} exact analytic count "
                 f"{fmt_count(res.analytic.total, 'FLOP')}; {fmt_count(res.model_flops / res.tokens, 'FLOP')} per token)")
    lines.append(f"  executed_flops {fmt_count(res.executed_flops, 'FLOP')} (model + backward recompute"
                 + (" + masked tiles)" if b["masked_work"]["executed_flops"] else ")"))
    lines.append(f"  non-matmul     {fmt_count(res.nonmatmul_flops, 'FLOP')} outside the optimizer, "
                 f"{fmt_count(b['optimizer']['nonmatmul_flops'], 'FLOP')} in it")
    lines.append("")
    lines.append("Estimates against the measured model_flops (terms: measured - estimate, in FLOP)")
    rows = []
    for est in res.estimates:
        terms = ", ".join(f"{k} {fmt_signed(v)}" for k, v in est.terms.items() if v)
        if abs(est.residual) > 0.5:
            terms += f", unexplained {fmt_signed(est.residual)}"
        rows.append([est.name, fmt_count(est.flops), f"{est.ratio:.3f}", terms])
    lines.append(table(rows, ["estimate", "FLOP", "measured/est.", "explained by"], right={1, 2}))
    fc = res.flop_counter
    if fc.get("total") is not None:
        lines.append(f"  FlopCounterMode cross-check: {fmt_count(fc['total'], 'FLOP')} "
                     f"({fc.get('ratio_to_model_flops', float('nan')):.3f} x model_flops). {fc.get('note', '')}")
    lines.append("")
    t = res.timing
    if t.get("step_s") is None:
        lines.append("Time: not measured")
    else:
        lines.append(f"Time: {fmt_time(t['step_s'])} per step (median of {t['repetitions']}, IQR "
                     f"{fmt_time(t['iqr_s'])}, {t['clock']}, not profiled), {t['tokens_per_s']:,.0f} tokens/s, "
                     f"{fmt_rate(res.achieved_flop_per_s)} model FLOPs")
    if res.mfu:
        lines.append(f"  MFU {100 * res.mfu['value']:.2f}%, HFU {100 * res.hfu['value']:.2f}% of "
                     f"{fmt_rate(res.mfu['peak_flop_per_s'])} {res.mfu['dtype']}: {res.mfu['peak_source']}")
    if res.mfu_datasheet:
        m = res.mfu_datasheet
        lines.append(f"  MFU {100 * m['value']:.2f}% of {fmt_rate(m['peak_flop_per_s'])} {m['dtype']}: {m['peak_source']}")
    pm = res.peak_memory_bytes
    lines.append(f"  peak memory: {pm / 2**30:.3f} GiB" if pm else
                 "  peak memory: not tracked on the CPU (torch keeps no CPU allocator statistics)")
    for n in res.notes:
        lines.append(f"  note: {n}")
    return "\n".join(lines)
