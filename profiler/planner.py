"""One call from plain values to a plan that renders itself: :func:`make_plan` -> :class:`PlanResult`.

This is what ``flopscale plan`` runs and what the Python API returns.  The pieces it joins:
the card (:mod:`profiler.devices`), the MFU (given, measured or assumed: :mod:`profiler.budget`),
the scaling law (:class:`profiler.plan.LawBackend`, any name ``lawfit.allocate`` knows or a saved
fit), the cluster (:mod:`profiler.parallel`: nodes, links, what is measured, given or assumed)
and the plan itself (:func:`profiler.plan.plan_budget`, with the layout search).

Modes: *default* (no budget given: measure this machine, plan one day of it, tabulate a default
card), *plan* (GPUs x days or a FLOP budget), *inverse* (``params`` and ``tokens``) and
*params* (``params`` alone: the tokens for which the law makes N compute-optimal, as
``flopscale allocate --params``).  Bad input raises :class:`PlanError` with one line.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import budget as _budget
from . import plan as _plan
from . import plan_text as _text

__all__ = ["PlanError", "PlanResult", "make_plan", "communication_dict", "DEFAULT_INTERCONNECT_GBPS", "DEFAULT_TABLE"]

#: assumed inter-node bandwidth per GPU when none is given: one 400 Gbit/s NDR InfiniBand NIC
#: per GPU, as in NVIDIA's DGX H100 reference design
DEFAULT_INTERCONNECT_GBPS = 400.0
#: the budgets tabulated on the default card by the default mode: (GPUs, days)
DEFAULT_TABLE = ((1, 1), (8, 7), (64, 30), (512, 30), (2048, 60), (8192, 90))
_GRAD_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "tf32": 4, "fp64": 8}


class PlanError(ValueError):
    """A plan that cannot be made from these inputs (one line, for the command line)."""


@dataclass
class PlanResult:
    """A plan: ``to_text()`` for people, ``to_dict()`` for machines (JSON-safe values);
    ``plan`` the :class:`profiler.plan.PlanPoint` (None for the inverse modes), ``neighbours``
    ``[(factor, PlanPoint)]``, ``law`` the :class:`~profiler.plan.LawBackend`."""

    mode: str
    data: dict[str, Any]
    text: str
    plan: Any = None
    neighbours: list[tuple[float, Any]] = field(default_factory=list)
    table: list[tuple[tuple[float, float], Any]] = field(default_factory=list)
    law: Any = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.data)

    def to_text(self) -> str:
        return self.text

    __str__ = to_text

    def write_report(self, path: str) -> list[str]:
        """A Markdown report with figures beside it (each file written atomically); returns the paths."""
        from .plan_report import write_report

        return write_report(self, path)


# ----------------------------------------------------------------------------------------
# inputs -> domain objects
# ----------------------------------------------------------------------------------------


def _positive(name: str, v: float | None) -> None:
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
        raise PlanError(f"{name} must be positive, got {v!r}" if not isinstance(v, (int, float)) or isinstance(v, bool)
                        else f"{name} must be positive, got {v:g}")


def _whole(name: str, v: float | None) -> int | None:
    if v is None:
        return None
    _positive(name, v)
    if float(v) != int(v):
        raise PlanError(f"{name} must be a whole number, got {v:g}")
    return int(v)


def _law(law: str | None, fit: str | None, law_params: str | None, max_tokens: float | None) -> _plan.LawBackend:
    from flopscale import lawfit

    count = None if law_params is None else law_params.replace("-", "_")
    try:
        if fit:
            if not Path(fit).exists():
                raise PlanError(f"fit file not found: {fit}")
            return _plan.LawBackend(lawfit.load_fit(fit), max_tokens=max_tokens, count=count, name=f"fit {Path(fit).name}")
        return _plan.LawBackend(law or _plan.DEFAULT_LAW, max_tokens=max_tokens, count=count)
    except lawfit.LawfitError as exc:
        raise PlanError(str(exc).splitlines()[0]) from None
    except UnicodeError as exc:
        raise PlanError(f"cannot read the fit in {fit}: not UTF-8 text ({exc.reason})") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise PlanError(f"cannot use the fit in {fit}: {type(exc).__name__}: {exc}") from None


def _spec(key: str):
    from . import devices

    try:
        return devices.get_spec(key)
    except devices.UnknownDeviceError as exc:
        raise PlanError(str(exc)) from None


def _peak(spec, dtype: str) -> float:
    p = spec.peak(dtype)
    if not p:
        have = ", ".join(sorted(spec.peak_flops)) or "none"
        raise PlanError(f"{spec.key} has no dense {dtype} peak (has: {have})")
    return float(p)


def _mfu_model(mfu: float | None, measured: str | None, spec, dtype: str, peak: float):
    """(MFUModel, the measured file or None)."""
    from . import devices

    if mfu is not None:
        try:
            return _budget.MFUModel.constant(_budget.check_mfu(mfu), "given with --mfu"), None
        except ValueError as exc:
            raise PlanError(str(exc)) from None
    if measured:
        meas = _load_measured(measured, dtype)
        key = meas.device_key
        if key is None and meas.device_name:
            found = devices.match(meas.device_name)
            key = found.key if found else None
        if key is None or key == "cpu":
            where = meas.device_name or "an unknown device"
            raise PlanError(f"{measured} was measured on {where}, not on a known card: cannot plan for {spec.key}")
        if key != spec.key:
            raise PlanError(f"{measured} was measured on {key}, not on --gpu {spec.key}")
        if meas.dtype and meas.dtype != dtype:
            raise PlanError(f"{measured} was measured in {meas.dtype}, not in --dtype {dtype}")
        try:
            return meas.mfu_model(peak, f"{spec.key} {dtype} datasheet"), meas
        except ValueError as exc:
            raise PlanError(str(exc).splitlines()[0]) from None
    return _budget.MFUModel.constant(_plan.DEFAULT_MFU, "assumed; measure it with 'flopscale audit --json' and "
                                     "--measured"), None


def _load_measured(path: str, dtype: str):
    try:
        return _budget.load_measured(path, dtype)
    except _budget.MeasuredFileError as exc:
        raise PlanError(str(exc)) from None


def _family(n_ctx: int | None, vocab: int | None, kv_group: int) -> dict[str, Any]:
    n_ctx = n_ctx if n_ctx is not None else _plan.DEFAULT_N_CTX
    vocab = vocab if vocab is not None else _plan.DEFAULT_VOCAB
    for name, v in (("--n-ctx", n_ctx), ("--vocab", vocab), ("--kv-group", kv_group)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise PlanError(f"{name} must be a positive integer, got {v}")
    return {"n_ctx": n_ctx, "vocab": vocab, "kv_group": kv_group}


def _arch(arch: str | None, n_experts: int | None, top_k: int | None) -> dict[str, Any]:
    from .model import ARCHS, DEFAULT_EXPERTS, DEFAULT_TOP_K

    arch = arch or "gpt2"
    if arch not in ARCHS:
        raise PlanError(f"--arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    if arch != "moe":
        if n_experts is not None or top_k is not None:
            raise PlanError(f"--n-experts and --top-k belong to --arch moe, not {arch}")
        return {"arch": arch}
    e = n_experts if n_experts is not None else DEFAULT_EXPERTS
    k = top_k if top_k is not None else DEFAULT_TOP_K
    if e < 1 or k < 1 or k > e:
        raise PlanError(f"--top-k must be in [1, --n-experts]; got {k} of {e} experts")
    return {"arch": arch, "n_experts": e, "top_k": k}


def _cluster(spec, dtype: str, gpus: int, *, nodes: int | None, gpus_per_node: int | None,
             interconnect_gbps: float | None, measured_collectives: str | None, overlap: float | None,
             grad_dtype: str | None, batch_tokens: float):
    """The :class:`profiler.parallel.Cluster` of the plan; every part says whether it is
    measured, given or assumed."""
    from . import parallel
    from .collectives import CollectivesFileError, intra_node_bandwidth, load_collectives_csv

    if nodes is not None and (isinstance(nodes, bool) or nodes < 1):
        raise PlanError(f"--nodes must be a positive integer, got {nodes}")
    if gpus_per_node is not None and (isinstance(gpus_per_node, bool) or gpus_per_node < 1):
        raise PlanError(f"--gpus-per-node must be a positive integer, got {gpus_per_node}")
    if interconnect_gbps is not None and not (math.isfinite(interconnect_gbps) and interconnect_gbps > 0):
        raise PlanError(f"--interconnect-gbps must be a positive bandwidth in Gbit/s, got {interconnect_gbps:g}")
    if overlap is not None and not (0.0 <= overlap <= 1.0):
        raise PlanError(f"--overlap must be in [0, 1], got {overlap:g}")
    nodes_given = nodes is not None
    if nodes is not None:
        g = gpus_per_node if gpus_per_node is not None else 8
        if gpus is not None and gpus != nodes * g:
            raise PlanError(f"--gpus {gpus:g} disagrees with --nodes {nodes} x --gpus-per-node {g} = {nodes * g}")
        gpus = nodes * g
    else:
        g = gpus_per_node if gpus_per_node is not None else (gpus if gpus < 8 else math.gcd(gpus, 8))
        if gpus % g:
            raise PlanError(f"--gpus {gpus} does not fill nodes of --gpus-per-node {g}")
        nodes = gpus // g
    sources: dict[str, dict[str, Any]] = {}

    def part(name: str, value: Any, status: str, source: str) -> None:
        sources[name] = {"value": value, "status": status, "source": source}

    part("nodes", nodes, "given" if nodes_given or gpus_per_node is not None else "assumed",
         f"{nodes} node(s) of {g} GPUs" + ("" if nodes_given else " (the GPUs over --gpus-per-node)"))
    part("gpus_per_node", g, "given" if gpus_per_node is not None else "assumed",
         "--gpus-per-node" if gpus_per_node is not None else f"{g} GPUs per node (default; --gpus-per-node)")
    gd = grad_dtype or dtype
    if gd not in _GRAD_BYTES:
        raise PlanError(f"no gradient size known for dtype {gd}: give --grad-dtype fp32, bf16 or fp16")
    part("gradient_bytes_per_param", _GRAD_BYTES[gd], "given" if grad_dtype else "assumed",
         f"{gd} gradients, " + ("--grad-dtype" if grad_dtype else "the training dtype (default; --grad-dtype)"))
    part("batch_tokens", batch_tokens, "assumed" if batch_tokens == _budget.DEFAULT_BATCH_TOKENS else "given",
         f"{batch_tokens:,.0f} tokens per optimizer step" + (
             " (default; --batch-tokens)" if batch_tokens == _budget.DEFAULT_BATCH_TOKENS else " (--batch-tokens)"))
    ov = overlap if overlap is not None else _budget.DEFAULT_OVERLAP
    part("overlap", ov, "given" if overlap is not None else "assumed",
         "--overlap" if overlap is not None else "no overlap of the DP all-reduce with the backward pass (default; "
         "an upper bound on the step time; measure it with torchrun -m flopscale.profiler.distributed ddp)")
    part("memory", spec.memory_bytes, "assumed", f"{spec.key} memory from the device table; 10% of it kept for the "
         "CUDA context, fragmentation and buffers")
    measured = intra = inter = None
    found = intra_node_bandwidth(spec.key)
    if found is not None and g > 1:
        intra = found[0]
        part("intra_node_bandwidth", intra, "assumed",
             f"{spec.key} link rate, {found[1]}; a real collective reaches less (NCCL typically 80-90%): optimistic")
    if measured_collectives:
        try:
            measured = load_collectives_csv(measured_collectives)
        except CollectivesFileError as exc:
            raise PlanError(str(exc)) from None
        part("allreduce_bus_bandwidth", None, "measured",
             f"{measured_collectives}: all-reduce on {measured.world_size} {measured.backend} ranks, read at the "
             f"{_budget.DEFAULT_BUCKET_BYTES / 2**20:g} MiB DDP bucket size (the data-parallel gradient)")
        part("bus_bandwidth_at_scale", None, "assumed",
             f"the bus bandwidth measured on {measured.world_size} ranks holds on the data-parallel ranks")
    else:
        if g > 1 and intra is None:
            raise PlanError(f"no intra-node bandwidth known for {spec.key}: give --measured-collectives")
        if nodes > 1:
            gbps = interconnect_gbps if interconnect_gbps is not None else DEFAULT_INTERCONNECT_GBPS
            inter = gbps * 1e9 / 8.0
            part("inter_node_bandwidth", inter, "given" if interconnect_gbps is not None else "assumed",
                 f"--interconnect-gbps {gbps:g} Gbit/s per GPU" if interconnect_gbps is not None else
                 f"{gbps:g} Gbit/s per GPU (one NDR InfiniBand NIC per GPU, default; --interconnect-gbps)")
    if nodes > 1 and inter is None:
        inter = (interconnect_gbps or DEFAULT_INTERCONNECT_GBPS) * 1e9 / 8.0  # pipeline sends
    return parallel.Cluster(nodes, g, intra, inter, spec.memory_bytes, float(ov), measured,
                            bucket_bytes=_budget.DEFAULT_BUCKET_BYTES, grad_bytes_per_param=float(_GRAD_BYTES[gd]),
                            sources=sources)


def communication_dict(cluster: Any, cost: Any) -> dict[str, Any]:
    """The data-parallel part of a layout's step in the shape of the communication block."""
    lay = cost.layout
    measured_bus = None
    if cluster.measured is not None:
        measured_bus = cluster.measured.busbw_at(min(cluster.bucket_bytes, cost.grad_bytes))
    src = cluster.sources
    return {
        "nodes": cluster.nodes, "gpus_per_node": cluster.gpus_per_node, "gpus": cluster.gpus,
        "algorithm": ("none (one data-parallel rank)" if lay.dp == 1 else "ring, at the measured bus bandwidth"
                      if cluster.measured is not None else
                      "hierarchical: inside each node, then across nodes on one rail per GPU"),
        "grad_bytes_per_param": cluster.grad_bytes_per_param, "overlap": cluster.overlap,
        "batch_tokens": src.get("batch_tokens", {}).get("value"), "backward_share": cluster.backward_share,
        "intra_node_Bps": cluster.intra_Bps, "inter_node_Bps_per_gpu": cluster.inter_Bps,
        "measured_busbw_Bps": measured_bus, "bucket_bytes": cluster.bucket_bytes,
        "measured": [k for k, v in src.items() if v["status"] == "measured"],
        "given": [k for k, v in src.items() if v["status"] == "given"],
        "assumed": [k for k, v in src.items() if v["status"] == "assumed"],
        "sources": src,
        "step": {"gpus": cluster.gpus, "sequences": cost.batch_sequences, "params": cost.memory.params_per_gpu,
                 "grad_bytes": cost.grad_bytes, "compute_s": cost.compute_s, "comm_s": cost.dp_s,
                 "hidden_s": cost.hidden_s, "exposed_s": cost.exposed_dp_s, "step_s": cost.step_s, "mfu": cost.mfu,
                 "efficiency": cost.efficiency, "mfu_at_scale": cost.mfu_at_scale},
    }


# ----------------------------------------------------------------------------------------
# the plan
# ----------------------------------------------------------------------------------------


def make_plan(
    *,
    gpu: str | None = None, gpus: float | None = None, days: float | None = None, compute: float | None = None,
    dtype: str = "bf16", mfu: float | None = None, measured: str | None = None,
    law: str | None = None, fit: str | None = None, law_params: str | None = None, max_tokens: float | None = None,
    count: str = "exact", n_ctx: int | None = None, vocab: int | None = None, kv_group: int = 1,
    arch: str | None = None, n_experts: int | None = None, top_k: int | None = None, params: float | None = None, tokens: float | None = None,
    nodes: int | None = None, gpus_per_node: int | None = None, interconnect_gbps: float | None = None,
    measured_collectives: str | None = None, overlap: float | None = None, batch_tokens: float | None = None,
    grad_dtype: str | None = None, layout: str | None = None, neighbours: bool = True,
) -> PlanResult:
    """Plan a training run from plain values (the options of ``flopscale plan``, by name).

    With none of the budget, cluster or model options: the default mode (measures this
    machine).  Raises :class:`PlanError` (one line) for inputs that cannot be planned,
    including a model that fits no layout of the GPUs.
    """
    for name, v in (("--gpus", gpus), ("--days", days), ("--compute", compute), ("--max-tokens", max_tokens),
                    ("--params", params), ("--tokens", tokens), ("--batch-tokens", batch_tokens)):
        _positive(name, v)
    gpus_i = _whole("--gpus", gpus)
    if compute is not None and days is not None:
        raise PlanError("give --compute or --days (with --gpus), not both")
    fam = _family(n_ctx, vocab, kv_group)
    fam.update(_arch(arch, n_experts, top_k))
    explicit = dict(gpu=gpu, gpus=gpus, days=days, compute=compute, mfu=mfu, measured=measured, params=params,
                    tokens=tokens, nodes=nodes, gpus_per_node=gpus_per_node, interconnect_gbps=interconnect_gbps,
                    measured_collectives=measured_collectives, overlap=overlap, batch_tokens=batch_tokens,
                    grad_dtype=grad_dtype, layout=layout)
    lawb = _law(law, fit, law_params, max_tokens)
    if all(v is None for v in explicit.values()):
        from .plan_default import default_plan

        return default_plan(lawb, fam, dtype)
    layout_fixed = None
    if layout is not None:
        from .parallel import parse_layout

        try:
            layout_fixed = parse_layout(layout)
        except ValueError as exc:
            raise PlanError(f"--layout: {exc}") from None
    if tokens is not None and params is None:
        raise PlanError("--tokens needs --params N (the inverse question: N parameters on D tokens)")
    card = gpu
    if card is None and measured:
        meas = _load_measured(measured, dtype)
        card = meas.device_key if meas.device_key and meas.device_key != "cpu" else None
    spec = _spec(card or _plan.DEFAULT_CARD)
    peak = _peak(spec, dtype)
    mfu_model, meas = _mfu_model(mfu, measured, spec, dtype, peak)
    cluster_opts = dict(nodes=nodes, gpus_per_node=gpus_per_node, interconnect_gbps=interconnect_gbps,
                        measured_collectives=measured_collectives, overlap=overlap, grad_dtype=grad_dtype)
    bt = float(batch_tokens) if batch_tokens is not None else float(_budget.DEFAULT_BATCH_TOKENS)
    # a layout needs the GPUs: given, from --nodes, or one GPU when the budget is in days
    lay_out = gpus_i is not None or nodes is not None or days is not None or layout is not None or (
        compute is None and params is None)
    if compute is not None and gpus_i is None and nodes is None and (
            any(v is not None for v in cluster_opts.values()) or layout is not None):
        first = next(k for k, v in cluster_opts.items() if v is not None) if any(
            v is not None for v in cluster_opts.values()) else "layout"
        raise PlanError(f"--{first.replace('_', '-')} needs the GPUs: give --gpus G or --nodes M")
    cluster = None
    if lay_out:
        cluster = _cluster(spec, dtype, gpus_i or (None if nodes is not None else 1), **cluster_opts,
                           batch_tokens=bt) if (gpus_i or nodes) else _cluster(spec, dtype, 1, **cluster_opts,
                                                                             batch_tokens=bt)
    n_gpus = float(cluster.gpus) if cluster is not None else float(gpus_i or 1)
    assumptions = []
    if card is None:
        assumptions.append(f"card: {spec.key} (default; choose one with --gpu)")
    if gpus_i is None and nodes is None:
        assumptions.append("GPUs: 1 (default; --gpus)")
    if cluster is not None:
        assumptions += [f"cluster: {v['source']}" for v in cluster.sources.values() if v["status"] == "assumed"]
    if compute is None and params is None and days is None:
        assumptions.append("days: 1 (default; --days)")
    if n_ctx is None or vocab is None:
        assumptions.append(f"model family: n_ctx {fam['n_ctx']}, vocab {fam['vocab']} (defaults; --n-ctx, --vocab)")
    if arch is None:
        assumptions.append("architecture: gpt2 (default; --arch gpt2|llama|moe)")
    if cluster is None:
        assumptions.append("no layout: give --gpus (or --nodes) to lay the model out and check its memory")
    head: dict[str, Any] = {"mode": "plan", "device": spec.to_dict(), "assumptions": assumptions,
                            "law": {"name": lawb.name, "citation": lawb.citation, "n_counts": lawb.n_counts,
                                    "count_used": lawb.count},
                            "mfu_model": mfu_model.to_dict()}
    from .parallel import NoLayoutError

    common = dict(gpus=n_gpus, peak_flop_per_s=peak, mfu=mfu_model, device=spec.key, dtype=dtype,
                  peak_source="datasheet dense peak", exact_count=(count == "exact"), cluster=cluster,
                  layout=layout_fixed, batch_tokens=bt, **fam)
    try:
        if params is not None:
            from .plan_inverse import inverse

            data, text = inverse(params, tokens, lawb, fam, common, spec, dtype, peak, mfu_model, assumptions)
            return PlanResult("params" if tokens is None else "inverse", {**head, **data,
                              "mode": "params" if tokens is None else "inverse"}, text, law=lawb)
        if compute is not None:
            p = _plan.plan_budget(lawb, compute=compute, **common)
            nb = _plan.neighbours(lawb, compute=compute, **common) if neighbours else []
        else:
            d = days if days is not None else 1.0
            p = _plan.plan_budget(lawb, days=d, **common)
            nb = _plan.neighbours(lawb, days=d, **common) if neighbours else []
    except NoLayoutError as exc:
        raise PlanError(f"cannot fit: {exc}") from None
    except ValueError as exc:
        raise PlanError(str(exc).splitlines()[0]) from None
    data = {**head, **p.to_dict()}
    if p.layout is not None:
        data["communication"] = communication_dict(cluster, p.layout)
    data["neighbours"] = [{"factor": f, **q.to_dict()} for f, q in nb]
    text = _render(p, nb, lawb, mfu_model, meas, assumptions, by_compute=compute is not None)
    return PlanResult("plan", data, text, plan=p, neighbours=nb, law=lawb)


def _render(p, nb, lawb, mfu_model, meas, assumptions, by_compute: bool) -> str:
    lines = ["flopscale plan"]
    lines += [f"  assumed: {a}" for a in assumptions]
    lines.append(f"budget: {p.compute_flop:.4g} FLOP = {p.pf_days:.4g} PF-days")
    lines.append(f"  {p.budget.derivation}" if p.budget is not None else "  given with --compute")
    lines.append(f"  {mfu_model.describe(p.params.total)}")
    lines += [f"  measured: {n}" for n in (getattr(meas, "notes", None) or [])]
    if not (mfu_model.is_constant and p.cluster is None):
        lines.append(f"  allocation, MFU and layout iterated to a fixed point ({p.iterations} iterations, "
                     f"{'converged' if p.converged else 'not converged'})")
    lines += _text.plan_lines(p, lawb)
    if nb:
        lines += _text.neighbour_table(p, nb, by_compute)
    return "\n".join(lines)

