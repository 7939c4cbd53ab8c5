"""The plan with no arguments: measure a small training step on this machine, plan one day of
it, and tabulate larger budgets on the default card at an assumed, stated MFU."""
from __future__ import annotations

from typing import Any

from . import budget as _budget
from . import plan as _plan
from . import plan_text as _text
from .textfmt import fmt_count, fmt_rate, fmt_time, table


def default_plan(law: Any, fam: dict[str, Any], dtype: str) -> Any:
    import torch

    from . import devices
    from .audit import run_audit
    from .model import GPTConfig
    from .planner import DEFAULT_TABLE, PlanError, PlanResult

    on_gpu = torch.cuda.is_available()
    cfg, batch = (GPTConfig(4, 1024, 8, 1024, 32000), 8) if on_gpu else (GPTConfig(2, 128, 4, 128, 2048), 4)
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
    if ceiling:
        mfu_here = _budget.MFUModel.constant(min(1.0, rate / ceiling), "measured on this machine's small step")
        peak_here = ceiling
    else:  # no ceiling: the measured rate itself, MFU 1 of it
        mfu_here = _budget.MFUModel.constant(1.0, "the measured rate itself (no ceiling)")
        peak_here = rate
    try:
        here = _plan.plan_budget(law, gpus=1, days=1, peak_flop_per_s=peak_here, mfu=mfu_here,
                                 device=dev.get("key") or dev.get("kind"), dtype=res.dtype, peak_source=(
                                     res.mfu["peak_source"] if res.mfu else "measured rate"), **fam)
    except ValueError as exc:
        raise PlanError(str(exc).splitlines()[0]) from None
    lines.append("")
    lines.append(f"One day of this machine: C = 86,400 s x {fmt_rate(rate)} (measured model-FLOP rate, assumed "
                 f"the same for the planned model) = {here.compute_flop:.4g} FLOP = {here.pf_days:.3g} PF-days")
    lines += _text.plan_lines(here, law, unit="GPU" if on_gpu else "CPU")
    spec = devices.get_spec(_plan.DEFAULT_CARD)
    peak = float(spec.peak(dtype) or 0.0)
    if not peak:
        raise PlanError(f"{spec.key} has no dense {dtype} peak")
    mfu_card = _budget.MFUModel.constant(_plan.DEFAULT_MFU, "assumed")
    rows, table_plans = [], []
    for gpus, days in DEFAULT_TABLE:
        q = _plan.plan_budget(law, gpus=gpus, days=days, peak_flop_per_s=peak, mfu=mfu_card, device=spec.key,
                              dtype=dtype, peak_source="datasheet dense peak", **fam)
        table_plans.append(((gpus, days), q))
        rows.append([f"{gpus:g} x {days:g}", f"{q.compute_flop:.3e}", f"{q.pf_days:.3g}", f"{q.N_opt:.3g}",
                     f"{q.D_opt:.3g}", f"{q.tokens_per_param:.3g}", "n/a" if q.loss_opt is None else f"{q.loss_opt:.3f}",
                     f"{q.shape.n_layer} x {q.shape.d_model} / {q.shape.n_head}", f"{q.ratio_to_6n:.3f}"])
    lines.append("")
    lines.append(f"Larger budgets on {spec.key} ({spec.name}): C = GPUs x days x 86,400 s x {fmt_rate(peak)} "
                 f"({dtype} dense datasheet peak) x MFU {_plan.DEFAULT_MFU:.2f} (ASSUMED, constant across sizes; "
                 "measure yours with 'flopscale audit --json' and pass --measured; no layout: plan one budget with "
                 "--gpus to see its layout and memory)")
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
    out["default_card"] = {"device": spec.key, "name": spec.name, "dtype": dtype, "peak_flop_per_s": peak,
                           "mfu": _plan.DEFAULT_MFU, "mfu_source": "assumed, constant across model sizes"}
    out["table"] = [{**q.to_dict(), "gpus": g, "days": d} for (g, d), q in table_plans]
    return PlanResult("default", out, "\n".join(lines), plan=here, table=table_plans, law=law)
