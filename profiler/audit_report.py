"""Text rendering of audit results (:class:`profiler.audit.AuditResult`); number formats
come from :mod:`profiler.textfmt`.

Counts in FLOP, rates in FLOP/s with SI prefixes, times in us/ms/s.
"""
from __future__ import annotations

import math
from typing import Any

from .textfmt import fmt_count, fmt_rate, fmt_signed, fmt_time, table
from .timing import UNSTABLE_IQR_RATIO

__all__ = ["fmt_count", "fmt_rate", "fmt_time", "fmt_signed", "table", "render", "render_sweep"]


def _ratio(x: float | None) -> str:
    """A ratio to 3 decimals; n/a where it is undefined (an estimate of 0 FLOP)."""
    return f"{x:.3f}" if isinstance(x, (int, float)) and math.isfinite(x) else "n/a"


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


def _shape_lines(res) -> list[str]:
    c, pc, dev = res.config, res.params, res.device
    lines = []
    if c is not None:
        arch = {"gpt2": "GPT-2 style (learned positions, LayerNorm, GELU)",
                "llama": "Llama style (RoPE, RMSNorm, SwiGLU)",
                "moe": f"MoE (Llama block, {c.experts_} experts, top {c.top_k_})"}[c.arch]
        lines.append(f"flopscale audit: one training step (forward, backward, AdamW step) of the built-in decoder, "
                     f"{arch}")
        lines.append(
            f"  shape: n_layer {c.n_layer}, d_model {c.d_model}, n_head {c.n_head} (n_kv_head {c.kv_heads}, head_dim "
            f"{c.head_dim}), d_ff {c.ff}, n_ctx {c.n_ctx}, vocab {c.vocab}, {'tied' if c.tied else 'untied'} output layer")
        path = ("flopscale Triton kernels" if res.impl == "kernels"
                else "torch reference path (torch.matmul, scaled_dot_product_attention)")
    else:
        lines.append(f"flopscale audit: one training step (forward, loss, backward, optimizer step) of {res.model}")
        s = res.shape
        if s is not None:
            lines.append(f"  shape seen: {s.n_layer} attention layers, {s.n_head} heads x {s.head_dim}, d_model "
                         f"{s.d_model}, vocab {s.vocab} (d_ff {s.d_ff} for Appendix F)")
        path = "the model's own code, counted op by op"
    lines.append(f"  batch {res.batch} x {res.seq} tokens = D {res.tokens:,} tokens; {dev.get('name')} "
                 f"({dev.get('kind')}), {path}, {res.dtype}")
    lines.append(f"  parameters: total {pc.total:,}; non-embedding N {pc.non_embedding:,}; embeddings {pc.embedding:,}; "
                 f"output layer {pc.unembedding:,}" + (f"; Kaplan 12*L*d^2 {pc.kaplan:,}" if pc.kaplan else ""))
    if pc.active != pc.total:
        lines.append(f"  active per token (MoE): {pc.active:,} total, {pc.active_non_embedding:,} non-embedding "
                     f"(experts {pc.experts:,} in all, router {pc.router:,})")
    for a in res.assumptions:
        lines.append(f"  assumed: {a}")
    return lines


def _group_lines(res) -> list[str]:
    from .audit import GROUP_LABELS

    b = res.breakdown
    generic = res.config is None
    labels = dict(GROUP_LABELS)
    if generic:
        labels["other"] = "other matmuls (modules not named like q_proj, wo, mlp)"
    rows = []
    matmul = ("qkv", "attn_scores", "attn_pv", "out_proj", "mlp", "router", "logits", "other")
    for g in matmul:
        e = b[g]
        if not e["model_flops"] and (generic or g in ("router", "other")):
            continue
        if g == "attn_scores":
            tt = fmt_time(b["attention_time_s"]) + " (both)" if b.get("attention_time_s") is not None else ""
        elif g == "attn_pv":
            tt = "(above)" if b.get("attention_time_s") is not None else ""
        else:
            tt = fmt_time(e["time_s"]) if e.get("time_s") is not None else ""
        rows.append([labels[g], fmt_count(e["forward"]), fmt_count(e["backward"]), fmt_count(e["model_flops"]),
                     f"{100 * e['model_flops'] / res.model_flops:.1f}%" if res.model_flops else "", "", tt][:7 - generic])
    for g in ("backward_recompute", "masked_work"):
        e = b[g]
        if g == "backward_recompute" or e["executed_flops"]:
            rows.append([labels[g] + " (executed)", fmt_count(e["forward"]) if e["forward"] else "",
                         fmt_count(e["backward"]) if e["backward"] else "", "", "", "", "(in attention)"][:7 - generic])
    for g in ("softmax_norm_elementwise", "optimizer"):
        e = b[g]
        rows.append([labels[g], "", "", "", "", fmt_count(e["nonmatmul_flops"]),
                     fmt_time(e["time_s"]) if e.get("time_s") is not None else ""][:7 - generic])
    lines = ["FLOPs by group, in FLOP (model = matmul + attention work, no recompute)"]
    lines.append(table(rows, ["group", "forward", "backward", "model", "share", "non-matmul*",
                              "time (recorded)"][:7 - generic]))
    lines.append("  * non-matmul FLOPs are per-element estimates (softmax 5/element, norms 7, AdamW 12 per parameter, "
                 "...)" + ("; recorded times include recording overhead" if not generic else ""))
    if res.analytic is not None:
        same = "=" if res.model_flops == res.analytic.total else "!="
        lines.append(f"  model_flops    {fmt_count(res.model_flops, 'FLOP')} ({same} exact analytic count "
                     f"{fmt_count(res.analytic.total, 'FLOP')}; {fmt_count(res.model_flops / res.tokens, 'FLOP')} "
                     "per token)")
    else:
        lines.append(f"  model_flops    {fmt_count(res.model_flops, 'FLOP')} "
                     f"({fmt_count(res.model_flops / res.tokens, 'FLOP')} per token)")
    lines.append(f"  executed_flops {fmt_count(res.executed_flops, 'FLOP')} (model + backward recompute"
                 + (" + masked tiles)" if b["masked_work"]["executed_flops"] else ")"))
    if res.phases:
        p = res.phases
        lines.append(f"  by phase: forward {fmt_count(p['forward'], 'FLOP')}, backward {fmt_count(p['backward'], 'FLOP')}"
                     f" (model); optimizer {fmt_count(p['optimizer_nonmatmul'], 'FLOP')} (non-matmul)")
    lines.append(f"  non-matmul     {fmt_count(res.nonmatmul_flops, 'FLOP')} outside the optimizer, "
                 f"{fmt_count(b['optimizer']['nonmatmul_flops'], 'FLOP')} in it")
    return lines


def _module_lines(res, max_rows: int = 24) -> list[str]:
    if not res.by_module:
        return []
    rows = []
    for path, e in res.by_module.items():
        depth = 0 if path in ("",) else path.count(".") + 1
        if depth > 2 or not (e["model_flops"] or e["nonmatmul_flops"]):
            continue
        rows.append([("  " * depth) + (path.rsplit(".", 1)[-1] if path else f"{res.model} (all)"),
                     fmt_count(e["forward"]), fmt_count(e["backward"]), fmt_count(e["model_flops"]),
                     fmt_count(e["executed_flops"]), fmt_count(e["nonmatmul_flops"])])
    more = len(rows) - max_rows
    rows = rows[:max_rows]
    lines = ["", "FLOPs by module (summed up the hierarchy, two levels shown), in FLOP"]
    lines.append(table(rows, ["module", "forward", "backward", "model", "executed", "non-matmul"]))
    if more > 0:
        lines.append(f"  ... {more} more modules (to_dict()['by_module'] has them all)")
    return lines


def _estimate_lines(res) -> list[str]:
    lines = ["", "Estimates against the measured model_flops (terms: measured - estimate, in FLOP)"]
    rows = []
    for est in res.estimates:
        terms = ", ".join(f"{k} {fmt_signed(v)}" for k, v in est.terms.items() if v)
        if abs(est.residual) > max(0.5, 1e-9 * abs(est.measured)):
            terms += f", unexplained {fmt_signed(est.residual)}"
        rows.append([est.name, fmt_count(est.flops), _ratio(est.ratio), terms])
    lines.append(table(rows, ["estimate", "FLOP", "measured/est.", "explained by"], right={1, 2}))
    fc = res.flop_counter
    if fc.get("total") is not None:
        lines.append(f"  FlopCounterMode cross-check: {fmt_count(fc['total'], 'FLOP')} "
                     f"({_ratio(fc.get('ratio_to_model_flops'))} x model_flops). {fc.get('note', '')}")
    return lines


def _time_lines(res) -> list[str]:
    t = res.timing
    lines = [""]
    if t.get("step_s") is None:
        lines.append("Time: not measured")
    else:
        unstable = (f" (unstable: IQR at least {UNSTABLE_IQR_RATIO:.0%} of the median)"
                    if t.get("iqr_s") and t["iqr_s"] >= UNSTABLE_IQR_RATIO * t["step_s"] else "")
        lines.append(f"Time: {fmt_time(t['step_s'])} per step (median of {t['repetitions']}, IQR "
                     f"{fmt_time(t['iqr_s'])}{unstable}, {t['clock']}, wall time, nothing attached), "
                     f"{t['tokens_per_s']:,.0f} tokens/s, {fmt_rate(res.achieved_flop_per_s)} model FLOPs")
        if t.get("note"):
            lines.append(f"  ({t['note']})")
    if res.mfu:
        lines.append(f"  MFU {100 * res.mfu['value']:.2f}%, HFU {100 * res.hfu['value']:.2f}% "
                     f"(model/executed FLOPs / (wall time x peak)) of {fmt_rate(res.mfu['peak_flop_per_s'])} "
                     f"{res.mfu['dtype']}: {res.mfu['peak_source']}")
    if res.mfu_datasheet:
        m = res.mfu_datasheet
        lines.append(f"  MFU {100 * m['value']:.2f}% of {fmt_rate(m['peak_flop_per_s'])} {m['dtype']}: {m['peak_source']}")
    c = res.compiled
    if c:
        if "model_flops_forward_backward" in c:
            lines.append(f"  torch.compile: {c['graphs']} graph(s); compiled forward+backward count "
                         f"{fmt_count(c['model_flops_forward_backward'], 'FLOP')} = {c['ratio_to_eager']:.6f} x eager")
        if c.get("timing"):
            ct = c["timing"]
            mfu = f", MFU {100 * c['mfu']['value']:.2f}%" if c.get("mfu") else ""
            lines.append(f"  compiled step: {fmt_time(ct['step_s'])} (median of {ct['repetitions']}, IQR "
                         f"{fmt_time(ct['iqr_s'])}; compile {fmt_time(c.get('compile_s'))}){mfu} "
                         f"against eager {fmt_time(t.get('step_s'))}; {c['scope']}")
        if c.get("error"):
            lines.append(f"  torch.compile: {c['error']}")
    pm = res.peak_memory_bytes
    lines.append(f"  peak memory: {pm / 2**30:.3f} GiB" if pm else
                 "  peak memory: not tracked on the CPU (torch keeps no CPU allocator statistics)")
    for n in res.notes:
        if not n.startswith("peak memory"):
            lines.append(f"  note: {n}")
    return lines


def render(res) -> str:
    """The audit report a person reads."""
    return "\n".join(_shape_lines(res) + [""] + _group_lines(res) + _module_lines(res) + _estimate_lines(res)
                     + _time_lines(res))
