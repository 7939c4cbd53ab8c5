"""The inverse plan: a given model size N (and tokens D, or the law's compute-optimal D for N)
-> its concrete shape, exact FLOPs, layout, wall-clock and GPU-days."""
from __future__ import annotations

from typing import Any

from . import budget as _budget
from . import plan as _plan
from . import plan_text as _text
from .flopcount import flops_per_token
from .model import param_counts


def inverse(n: float, d: float | None, law: Any, fam: dict[str, Any], common: dict[str, Any], spec: Any, dtype: str,
            peak: float, mfu_model: Any, assumptions: list[str]) -> tuple[dict[str, Any], str]:
    """(JSON-safe dict, text).  ``d`` None: the tokens for which the law makes ``n``
    compute-optimal (``lawfit.optimal_for_params`` with the family's exact FLOPs per token)."""
    from .parallel import search

    fam_law = dict(count=law.count, **fam)
    _plan.check_shapeable(n, **fam_law)
    extra: dict[str, Any] = {}
    if d is None:
        fpt_n = (lambda x: _plan.family(x, **fam_law)["flops_per_token"]) if common.get("exact_count", True) else None
        alloc = law.optimal_for_params(n, fpt_n)
        d = alloc.D
        extra = {"from_law": True, "law_compute_flop": None,
                 "law_loss": alloc.loss, "ci": {k: list(v) for k, v in alloc.ci.items()}, "ci_level": alloc.ci_level}
    cfg = _plan.shape_for(n, **fam_law)
    pc = param_counts(cfg)
    n_shape = _plan.law_params(pc, law.count)
    fpt = flops_per_token(cfg)
    if extra:
        extra["law_compute_flop"] = fpt * d
    m = mfu_model(pc.total)
    cluster = common.get("cluster")
    lays = None
    m_eff = m
    if cluster is not None:
        lays = search(cfg, pc, fpt, cluster, peak_flop_per_s=peak, mfu=m, batch_tokens=common["batch_tokens"],
                      fixed=common.get("layout"))
        m_eff = lays.best.mfu_at_scale
    gpus = common["gpus"]
    tt = _budget.train_time(fpt * d, gpus=gpus, peak_flop_per_s=peak, mfu=m_eff)
    loss = law.loss(n_shape, d)
    warnings = []
    if abs(n_shape / n - 1) > 0.1:
        warnings.append(f"no shape in the search matches N = {n:.3g} within 10% (closest: {n_shape:.3g})")
    out = {"N": n, "D": d, "shape": cfg.to_dict(), "shape_N": n_shape, "shape_params": pc.to_dict(),
           "flops_per_token": fpt, "flops_per_token_6N": 6.0 * n_shape, "compute_flop": fpt * d,
           "pf_days": _budget.pf_days(fpt * d), "six_nd": 6.0 * n * d, "loss": loss, "mfu": m,
           "wall_clock_days": tt.wall_clock_days, "gpu_days": tt.gpu_days, "gpu_hours": tt.gpu_hours,
           "gpus": gpus, "mfu_at_scale": m_eff, "warnings": warnings,
           "layout": lays.best.layout.to_dict() if lays else None,
           "memory_per_gpu_bytes": lays.best.memory.total_bytes if lays else None,
           "layouts": lays.to_dict() if lays else None, **extra}
    if lays is not None:
        from .planner import communication_dict

        out["communication"] = communication_dict(cluster, lays.best)
    if extra:
        out["law"] = law.name
    lines = _text.inverse_lines({**out, "_cfg": cfg, "law": law.name}, spec.key, peak, dtype,
                                mfu_model.describe(pc.total), assumptions, lays, cluster)
    if extra:
        out["law"] = {"name": law.name, "citation": law.citation, "n_counts": law.n_counts, "count_used": law.count}
    return out, "\n".join(lines)
