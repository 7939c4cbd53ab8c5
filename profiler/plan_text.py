"""Text of a plan: the lines :class:`profiler.planner.PlanResult` prints (no computation here)."""
from __future__ import annotations

from typing import Any

from .textfmt import fmt_bytes, fmt_count, fmt_rate, fmt_time, table

__all__ = ["shape_text", "plan_lines", "comm_lines", "layout_lines", "neighbour_table", "inverse_lines"]


def shape_text(c: Any) -> str:
    arch = "" if getattr(c, "arch", "gpt2") == "gpt2" else f"{c.arch}: "
    moe = (f", {c.experts_} experts, top-{c.top_k_}" if getattr(c, "arch", "gpt2") == "moe" else "")
    return (f"{arch}n_layer {c.n_layer}, d_model {c.d_model}, n_head {c.n_head}"
            + (f" (n_kv_head {c.kv_heads})" if c.kv_heads != c.n_head else "")
            + f", head_dim {c.head_dim}, d_ff {c.ff}, n_ctx {c.n_ctx}, vocab {c.vocab}{moe}")


def _ci_text(p: Any, key: str) -> str:
    v = p.ci.get(key)
    return f" [{v[0]:.4g}, {v[1]:.4g}]" if v else ""


def _loss(v: float | None, ci: str = "") -> str:
    return "n/a" if v is None else f"{v:.4f}{ci}"


def plan_lines(p: Any, law: Any, indent: str = "  ", unit: str = "GPU") -> list[str]:
    """The allocation, the model, its layout and the wall-clock of one :class:`PlanPoint`."""
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
                 + _loss(p.loss_opt, _ci_text(p, "loss")) + ci_note)
    lines.append(f"{indent}model: {shape_text(p.shape)}")
    pc = p.params
    other = (f"{pc.active_non_embedding:,} non-embedding" if p.law_count == "total" else f"{pc.active:,} total")
    if pc.active != pc.total:
        matched += " active"
        other += f"; {pc.total:,} stored, every expert counted"
    lines.append(f"{indent}  N = {p.N_shape:,.0f} {matched} parameters ({other}); FLOPs per token "
                 f"{fmt_count(p.flops_per_token, 'FLOP')} exact (matmuls, causal attention, logits; forward + "
                 f"backward) = {p.ratio_to_6n:.3f} x 6N")
    lines.append(f"{indent}  trains on D = {p.D_shape:.4g} tokens (= C / exact FLOPs per token), predicted loss "
                 + _loss(p.loss_shape))
    if p.layouts is not None:
        lines += layout_lines(p.layouts, p.cluster, indent + "  ")
    elif p.step is not None and p.comm is not None:
        lines += comm_lines(p.comm.to_dict(p.step), indent + "  ")
    if p.time is not None:
        at = f"MFU {p.mfu:.3f}"
        if p.layout is not None:
            at = f"MFU {p.mfu_at_scale:.3f} at scale ({p.mfu:.3f} x {p.layout.efficiency:.3f} compute share of a step)"
        elif p.step is not None:
            at = f"MFU {p.mfu_at_scale:.3f} at scale ({p.mfu:.3f} x {p.step.efficiency:.3f} compute share of a step)"
        lines.append(f"{indent}  wall-clock {p.time.wall_clock_days:.4g} days on {p.time.gpus:g} {unit}"
                     f"{'' if p.time.gpus == 1 else 's'} = {p.time.gpu_days:.4g} {unit}-days at {at}")
    for w in p.warnings:
        lines.append(f"{indent}  WARNING: {w}")
    for n in p.notes:
        lines.append(f"{indent}  note: {n}")
    return lines


def layout_lines(res: Any, cluster: Any, indent: str = "    ") -> list[str]:
    """The chosen layout, its memory per GPU and step time, and the runners-up with why."""
    b = res.best
    lay = b.layout
    m = b.memory
    lines = [f"{indent}layout on {cluster.nodes} node(s) x {cluster.gpus_per_node} GPUs: tensor parallel {lay.tp} "
             f"(inside a node), pipeline {lay.pp}, data parallel {lay.dp}, ZeRO stage {lay.zero_stage}, micro-batch "
             f"{lay.micro_batch} sequence(s), recompute {lay.recompute} (best of {res.fitting} fitting layouts, "
             f"{res.considered} considered)"]
    cap = f" of {fmt_bytes(m.capacity_bytes)}" if m.capacity_bytes else ""
    lines.append(f"{indent}  memory per GPU {fmt_bytes(m.total_bytes)}{cap}: weights {fmt_bytes(m.weights_bytes)}, "
                 f"gradients {fmt_bytes(m.gradients_bytes)}, optimizer {fmt_bytes(m.optimizer_bytes)} (mixed-precision "
                 f"Adam 2+2+12 B/param, ZeRO-{lay.zero_stage}), activations {fmt_bytes(m.activations_bytes)} "
                 f"({fmt_count(m.params_per_gpu)} parameters on the fullest GPU; fits under "
                 f"{100 * (1 - m.reserve):.0f}% of the card, the rest assumed for context and fragmentation)")
    lines.append(f"{indent}  step ({b.batch_sequences:,} sequences, {b.micro_batches} micro-batches per pipeline): "
                 f"compute {fmt_time(b.compute_s)}, recompute {fmt_time(b.recompute_s)} (executed, not model, "
                 f"FLOPs), TP comm {fmt_time(b.tp_s)}, pipeline sends {fmt_time(b.p2p_s)}, bubble "
                 f"{fmt_time(b.bubble_s)} ((p-1)/m = {(lay.pp - 1) / b.micro_batches:.3g}), DP all-reduce "
                 f"{fmt_time(b.dp_s)} of which {fmt_time(b.hidden_s)} hidden -> step {fmt_time(b.step_s)}; "
                 f"MFU {b.mfu:.3f} -> {b.mfu_at_scale:.3f} at scale")
    for w in res.why():
        lines.append(f"{indent}  runner-up: {w}")
    src = cluster.sources
    for kind in ("measured", "given"):
        names = [k for k, v in src.items() if v.get("status") == kind]
        if names:
            lines.append(f"{indent}  {kind}: " + "; ".join(f"{k.replace('_', ' ')}: {src[k]['source']}" for k in names))
    assumed = [k for k, v in src.items() if v.get("status") == "assumed"]
    if assumed:
        lines.append(f"{indent}  assumed (see the top): " + ", ".join(k.replace("_", " ") for k in assumed))
    return lines


def comm_lines(c: dict[str, Any], indent: str = "  ") -> list[str]:
    """The data-parallel all-reduce of a :class:`profiler.budget.CommModel` (API without layouts)."""
    st = c["step"]
    lines = [f"{indent}communication (data parallel; the gradient is all-reduced once per optimizer step):"]
    lines.append(f"{indent}  {c['nodes']} node(s) x {c['gpus_per_node']} GPUs = {c['gpus']} GPUs; gradient "
                 f"{fmt_count(st['grad_bytes'], 'B')}; {fmt_count(c['batch_tokens'])} tokens per step")
    lines.append(f"{indent}  per step: compute {fmt_time(st['compute_s'])}, all-reduce {fmt_time(st['comm_s'])}, "
                 f"hidden {fmt_time(st['hidden_s'])}, exposed {fmt_time(st['exposed_s'])} -> step "
                 f"{fmt_time(st['step_s'])}; MFU {st['mfu']:.3f} -> {st['mfu_at_scale']:.3f} at scale")
    return lines


def neighbour_row(q: Any, f: float) -> list[str]:
    return [f"{f:g}", f"{q.compute_flop:.3e}", f"{q.pf_days:.3g}", f"{q.N_opt:.3g}", f"{q.D_opt:.3g}",
            f"{q.tokens_per_param:.3g}", "n/a" if q.loss_opt is None else f"{q.loss_opt:.3f}",
            f"{q.shape.n_layer} x {q.shape.d_model}", f"{q.ratio_to_6n:.3f}",
            "-" if q.layout is None else f"{q.layout.layout.tp}/{q.layout.layout.pp}/{q.layout.layout.dp}",
            "n/a" if q.time is None else f"{q.time.wall_clock_days:.3g}",
            "n/a" if q.time is None else f"{q.time.gpu_days:.3g}"]


def neighbour_table(p: Any, nb: list[tuple[float, Any]], by_compute: bool) -> list[str]:
    rows = sorted((neighbour_row(q, f) for f, q in [(1.0, p), *nb]), key=lambda r: float(r[1]))
    return ["", "neighbouring budgets (compute scaled)" if by_compute else "neighbouring budgets (same GPUs, days scaled)",
            table(rows, ["x", "C FLOP", "PF-days", "N", "D", "D/N", "loss", "n_layer x d_model", "FLOP/tok /6N",
                         "tp/pp/dp", "days", "GPU-days"])]


def inverse_lines(inv: dict[str, Any], spec_key: str, peak: float, dtype: str, mfu_text: str,
                  assumptions: list[str], layouts: Any = None, cluster: Any = None) -> list[str]:
    c = inv["shape"]
    head = ("flopscale plan (compute-optimal tokens for a given N, as 'allocate --params')" if inv.get("from_law")
            else "flopscale plan (inverse)")
    lines = [f"{head}: N = {fmt_count(inv['N'])} parameters on D = {fmt_count(inv['D'])} tokens"]
    for a in assumptions:
        lines.append(f"  assumed: {a}")
    if inv.get("from_law"):
        lines.append(f"  D = {inv['D']:.4g} tokens and C = {inv['law_compute_flop']:.4g} FLOP are where {inv['law']} "
                     f"puts N = {inv['N']:.4g} on its compute-optimal frontier")
    lines.append(f"  shape: {shape_text(inv['_cfg'])}: N = {fmt_count(inv['shape_N'])} "
                 f"({inv['shape_params']['total']:,} total parameters)")
    lines.append(f"  FLOPs per token: {fmt_count(inv['flops_per_token'], 'FLOP')} exact (6N = "
                 f"{fmt_count(inv['flops_per_token_6N'], 'FLOP')}, ratio "
                 f"{inv['flops_per_token'] / inv['flops_per_token_6N']:.3f})")
    lines.append(f"  compute: {fmt_count(inv['compute_flop'], 'FLOP')} = {inv['pf_days']:.4g} PF-days "
                 f"(6ND would say {fmt_count(inv['six_nd'], 'FLOP')})")
    if inv["loss"] is not None:
        lines.append(f"  predicted loss: {inv['loss']:.4f}")
    lines.append(f"  on {inv['gpus']:g} x {spec_key} at {fmt_rate(peak)} {dtype} (datasheet) x {mfu_text}:")
    if layouts is not None:
        lines += layout_lines(layouts, cluster, "    ")
    lines.append(f"    wall-clock {inv['wall_clock_days']:.4g} days, {inv['gpu_days']:.4g} GPU-days "
                 f"({inv['gpu_hours']:.4g} GPU-hours) at MFU {inv['mfu_at_scale']:.3f}")
    for w in inv.get("warnings", []):
        lines.append(f"  WARNING: {w}")
    return lines
