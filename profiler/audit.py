"""Audit ``C = 6ND``: profile one training step of :class:`profiler.model.GPT` launch by launch.

(For any other ``nn.Module`` -- a Llama or MoE of your own, compiled or not -- see
:mod:`profiler.audit_module`; ``profiler.audit(model, batch, ...)`` calls it, and returns the
same :class:`AuditResult`.  The built-in model takes ``GPTConfig(arch="gpt2"|"llama"|"moe")``.)

:func:`run_audit` runs a forward pass, the backward pass and an optimizer step (AdamW) under
:class:`profiler.Profile`, attributes every launch to the module that issued it (forward *and*
backward, through module hooks that set :func:`profiler.record.label`), and groups the FLOPs:

``qkv``, ``attn_scores``, ``attn_pv``, ``out_proj``, ``mlp``, ``logits`` (model FLOPs of the
matmuls and the attention), ``softmax_norm_elementwise`` (non-matmul FLOPs outside the
optimizer), ``optimizer`` (the AdamW step, non-matmul), ``backward_recompute`` (executed, not
model, FLOPs: attention scores recomputed in the backward pass), ``masked_work`` (executed, not
model: scores computed in tiles that straddle the causal diagonal, then masked).

``model_flops`` = forward + backward matmul and attention FLOPs, no recompute (what MFU
divides); ``executed_flops`` adds the recompute and the masked work (what HFU divides).
Non-matmul FLOPs are reported apart.  Beside them: 6ND (non-embedding and total N), Kaplan's,
PaLM's and Chinchilla Appendix F's estimates with the terms that explain each difference, and
``torch.utils.flop_counter.FlopCounterMode``'s total as a cross-check (it counts a causal
``scaled_dot_product_attention`` as dense, and has no formula for the CPU attention kernel).

The step's time is measured apart from the recorded step (median of repetitions through
:func:`profiler.bench`), so recording costs do not enter MFU.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from . import flopcount
from .model import GPT, GPTConfig, ParamCounts, param_counts

__all__ = [
    "BREAKDOWN_GROUPS",
    "GROUP_LABELS",
    "group_of",
    "AuditResult",
    "run_audit",
    "scope_labels",
    "make_step",
    "default_sweep_configs",
    "sweep_audits",
    "audit_module",
]

BREAKDOWN_GROUPS = (
    "qkv",
    "attn_scores",
    "attn_pv",
    "out_proj",
    "mlp",
    "router",
    "logits",
    "softmax_norm_elementwise",
    "optimizer",
    "backward_recompute",
    "masked_work",
    "other",
)
GROUP_LABELS = {
    "qkv": "QKV projection",
    "attn_scores": "attention scores (Q K^T)",
    "attn_pv": "attention x V",
    "out_proj": "output projection",
    "mlp": "MLP (experts for an MoE)",
    "router": "MoE router",
    "logits": "logits (output layer)",
    "softmax_norm_elementwise": "softmax / norm / elementwise",
    "optimizer": "optimizer (AdamW)",
    "backward_recompute": "backward recompute",
    "masked_work": "computed-then-masked tiles",
    "other": "other (unattributed matmul)",
}

OPTIMIZER_SCOPE = "optimizer"


def group_of(scope: str | None) -> str | None:
    """The matmul group of a record's scope (``"backward/blocks.3.attn.qkv"`` -> ``"qkv"``).

    Returns ``"attention"`` for the attention core (split into scores and x V later),
    ``"optimizer"`` for the optimizer step, None for anything else.
    """
    if not scope:
        return None
    s = str(scope)
    if OPTIMIZER_SCOPE in s.split("/"):
        return "optimizer"
    leaf = s.rsplit("/", 1)[-1]
    if leaf.endswith("attn.qkv"):
        return "qkv"
    if leaf.endswith("attn.core"):
        return "attention"
    if leaf.endswith("attn.proj"):
        return "out_proj"
    if leaf.endswith("mlp.router"):
        return "router"
    if (leaf.endswith(".fc") or leaf.endswith(".proj")) and (".mlp." in f".{leaf}"):
        return "mlp"
    if leaf == "lm_head" or leaf.endswith(".lm_head"):
        return "logits"
    return None


def phase_of(scope: str | None) -> str:
    """``"forward"``, ``"backward"``, ``"optimizer"`` or ``"unknown"``: the phase label in ``scope``."""
    if not scope:
        return "unknown"
    for part in str(scope).split("/"):
        if part in ("forward", "backward", "optimizer"):
            return part
    return "unknown"


# ----------------------------------------------------------------------------------------
# scope labels through module hooks
# ----------------------------------------------------------------------------------------


class _LabelStack(threading.local):
    """One active ``label(...)`` context per thread, re-entered whenever the top changes.

    Backward hooks do not always nest (the autograd engine may interleave branches), so the
    stack removes an entry wherever it is and re-labels with the new top: ``label`` contexts
    are always entered and exited in pairs.
    """

    def __init__(self) -> None:
        self.entries: list[tuple[int, str]] = []
        self.active: Any = None

    def _relabel(self, label_fn: Callable[[str], Any]) -> None:
        if self.active is not None:
            cm, self.active = self.active, None
            cm.__exit__(None, None, None)
        if self.entries:
            cm = label_fn(self.entries[-1][1])
            cm.__enter__()
            self.active = cm

    def push(self, token: int, name: str, label_fn: Callable[[str], Any]) -> None:
        self.entries.append((token, name))
        self._relabel(label_fn)

    def pop(self, token: int, label_fn: Callable[[str], Any]) -> None:
        for i in range(len(self.entries) - 1, -1, -1):
            if self.entries[i][0] == token:
                del self.entries[i]
                break
        else:
            return
        self._relabel(label_fn)

    def clear(self) -> None:
        self.entries.clear()
        if self.active is not None:
            cm, self.active = self.active, None
            cm.__exit__(None, None, None)


def _label_fn() -> Callable[[str], Any]:
    from .record import label

    return label


@contextlib.contextmanager
def scope_labels(model: Any, label_fn: Callable[[str], Any] | None = None) -> Iterator[Callable[[str], Any]]:
    """Label every launch with ``"<phase>/<module name>"`` while the block runs.

    Hooks on the leaf modules that launch work (matmuls, attention, norms, embeddings) set
    the label in the forward pass (pre/post hooks) and in the backward pass (full backward
    pre/post hooks, which run on the autograd thread).  Yields ``phase(name)``: a context
    manager for a whole phase (``"forward"``, ``"backward"``, ``"optimizer"``) so that
    launches outside the leaf modules still carry the phase.
    """
    import torch

    label_fn = label_fn or _label_fn()
    stack = _LabelStack()
    handles = []
    counter = iter(range(1, 1 << 62))
    leaf_types = (torch.nn.Linear, torch.nn.LayerNorm, torch.nn.RMSNorm, torch.nn.Embedding)
    from . import model as _m

    leaf_types = leaf_types + (_m.Linear, _m.TiedHead, _m.CausalAttention)
    for name, mod in model.named_modules():
        if not isinstance(mod, leaf_types):
            continue
        fwd_tok: list[int] = []
        bwd_tok: list[int] = []

        def f_pre(m, args, _n=name, _t=fwd_tok):
            tok = next(counter)
            _t.append(tok)
            stack.push(tok, f"forward/{_n}", label_fn)

        def f_post(m, args, out, _t=fwd_tok):
            if _t:
                stack.pop(_t.pop(), label_fn)

        def b_pre(m, grad_out, _n=name, _t=bwd_tok):
            tok = next(counter)
            _t.append(tok)
            stack.push(tok, f"backward/{_n}", label_fn)

        def b_post(m, grad_in, grad_out, _t=bwd_tok):
            if _t:
                stack.pop(_t.pop(0), label_fn)

        handles.append(mod.register_forward_pre_hook(f_pre))
        handles.append(mod.register_forward_hook(f_post))
        if not isinstance(mod, torch.nn.Embedding):  # its input (token ids) takes no gradient
            handles.append(mod.register_full_backward_pre_hook(b_pre))
            handles.append(mod.register_full_backward_hook(b_post))

    @contextlib.contextmanager
    def phase(name: str) -> Iterator[None]:
        tok = next(counter)
        stack.push(tok, name, label_fn)
        try:
            yield
        finally:
            stack.pop(tok, label_fn)

    try:
        yield phase
    finally:
        for h in handles:
            h.remove()
        stack.clear()


# ----------------------------------------------------------------------------------------
# the step
# ----------------------------------------------------------------------------------------


def make_step(model: Any, optimizer: Any, idx: Any, targets: Any, phase: Callable[[str], Any] | None = None):
    """A closure running one training step: forward, backward, optimizer step, zero grads.

    With ``phase`` (from :func:`scope_labels`) each part runs inside its phase label.
    """
    null = contextlib.nullcontext

    def step() -> Any:
        with phase("forward") if phase else null():
            _, loss = model(idx, targets)
        if phase is not None:
            _backward_with_phase(loss, phase)
        else:
            loss.backward()
        with phase("optimizer") if phase else null():
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def _backward_with_phase(loss: Any, phase: Callable[[str], Any]) -> None:
    """``loss.backward()`` inside the "backward" phase label.

    On a CPU the autograd engine runs the backward ops on this thread, so they all carry the
    phase; on CUDA they run on the engine's device thread, where the leaf-module backward hooks
    label every matmul and attention launch (the remaining elementwise launches carry no phase).
    """
    with phase("backward"):
        loss.backward()


def _group_records(records: list[Any]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Sum records into :data:`BREAKDOWN_GROUPS` (see module docstring)."""
    groups = {
        g: {"model_flops": 0, "executed_flops": 0, "nonmatmul_flops": 0, "time_s": 0.0, "launches": 0,
            "forward": 0, "backward": 0}
        for g in BREAKDOWN_GROUPS
    }
    attention_time = 0.0
    notes: list[str] = []
    unattributed_ops: dict[str, int] = {}

    def add(g: str, model: float, executed: float, phase: str, time_s: float | None, launch: bool = True):
        e = groups[g]
        e["model_flops"] += model
        e["executed_flops"] += executed
        if phase in ("forward", "backward"):
            e[phase] += model if g not in ("backward_recompute", "masked_work") else executed
        if time_s is not None:
            e["time_s"] += time_s
        if launch:
            e["launches"] += 1

    for r in records:
        scope = getattr(r, "scope", None)
        g = group_of(scope)
        ph = phase_of(scope)
        flops = int(getattr(r, "flops", 0) or 0)
        executed = int(getattr(r, "executed_flops", flops) or 0)
        nonmm = int(getattr(r, "nonmatmul_flops", 0) or 0)
        t = getattr(r, "time_s", None)
        t = float(t) if t is not None else None
        if g == "optimizer":
            e = groups["optimizer"]
            e["nonmatmul_flops"] += nonmm
            e["model_flops"] += flops
            e["executed_flops"] += executed
            e["launches"] += 1
            e["time_s"] += t or 0.0
            continue
        if nonmm:
            groups["softmax_norm_elementwise"]["nonmatmul_flops"] += nonmm
        if flops == 0 and executed == 0:
            # a non-matmul launch: its time goes to the elementwise group
            e = groups["softmax_norm_elementwise"]
            e["launches"] += 1
            e["time_s"] += t or 0.0
            continue
        if g == "attention":
            detail = getattr(r, "detail", None) or {}
            scores = detail.get("scores")
            pv = detail.get("pv")
            if scores is None or pv is None or scores + pv != flops:
                scores, pv = flops // 2, flops - flops // 2
            extra = executed - flops
            recompute = int(detail.get("recompute", 0) or 0)
            masked = int(detail.get("masked", 0) or 0)
            if recompute + masked != extra:  # no (consistent) split declared: all of it is recompute
                recompute, masked = extra, 0
            add("attn_scores", scores, scores, ph, None)
            add("attn_pv", pv, pv, ph, None, launch=False)
            if recompute:
                add("backward_recompute", 0, recompute, ph, None, launch=False)
            if masked:
                add("masked_work", 0, masked, ph, None, launch=False)
            attention_time += t or 0.0
            continue
        if g is None:
            g = "other"
            name = str(getattr(r, "op", "?"))
            unattributed_ops[name] = unattributed_ops.get(name, 0) + flops
        add(g, flops, flops, ph, t)
        if executed != flops:
            add("backward_recompute", 0, executed - flops, ph, None, launch=False)
    if unattributed_ops:
        notes.append(
            "matmul FLOPs outside any known module scope (group 'other'): "
            + ", ".join(f"{k} {v:.3g}" for k, v in sorted(unattributed_ops.items()))
        )
    groups["attn_scores"]["time_s"] = None
    groups["attn_pv"]["time_s"] = None
    groups["attention_time_s"] = attention_time  # type: ignore[assignment]
    return groups, notes


@dataclass
class AuditResult:
    """Everything an audit measured and derived (see the module docstring): of the built-in
    model (:func:`run_audit`; ``config`` and ``analytic`` set) or of any module
    (:func:`profiler.audit_module.audit_module`; ``config`` and ``analytic`` None, ``by_module``,
    ``assumptions`` and ``shape`` set).  ``compiled``: the torch.compile'd step, when asked for.
    ``print(result)`` shows the report; ``to_dict()`` the same as JSON-ready data."""

    config: GPTConfig | None
    batch: int
    seq: int
    impl: str
    device: dict[str, Any]
    dtype: str
    params: ParamCounts
    model_flops: int
    executed_flops: int
    nonmatmul_flops: int
    breakdown: dict[str, Any]
    analytic: flopcount.StepFlops | None
    estimates: list[flopcount.Estimate]
    flop_counter: dict[str, Any]
    timing: dict[str, Any]
    mfu: dict[str, Any] | None
    hfu: dict[str, Any] | None
    mfu_datasheet: dict[str, Any] | None
    peak_memory_bytes: int | None
    records: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    model: str | None = None
    by_module: dict[str, dict[str, int]] | None = None
    phases: dict[str, int] | None = None
    compiled: dict[str, Any] | None = None
    assumptions: list[str] = field(default_factory=list)
    shape: flopcount.StepShape | None = None

    @property
    def tokens(self) -> int:
        return self.batch * self.seq

    @property
    def six_nd(self) -> float:
        """6 N D with N the (active, for an MoE) non-embedding parameters."""
        return flopcount.six_nd(self.params.active_non_embedding, self.tokens)

    def to_text(self) -> str:
        from .audit_report import render

        return render(self)

    def __str__(self) -> str:
        return self.to_text()

    @property
    def achieved_flop_per_s(self) -> float | None:
        t = self.timing.get("step_s")
        return self.model_flops / t if t else None

    def to_dict(self, with_records: bool = False) -> dict[str, Any]:
        from dataclasses import asdict

        out = {
            "model": self.model or ("GPT" if self.config is not None else None),
            "config": self.config.to_dict() if self.config is not None else None,
            "batch": self.batch,
            "seq": self.seq,
            "tokens": self.tokens,
            "impl": self.impl,
            "device": self.device,
            "dtype": self.dtype,
            "params": self.params.to_dict(),
            "model_flops": self.model_flops,
            "executed_flops": self.executed_flops,
            "nonmatmul_flops": self.nonmatmul_flops,
            "analytic_model_flops": self.analytic.total if self.analytic is not None else None,
            "six_nd": self.six_nd,
            "six_nd_total": flopcount.six_nd(self.params.active, self.tokens),
            "flops_per_token": self.model_flops / self.tokens,
            "estimates": [e.to_dict() for e in self.estimates],
            "breakdown": self.breakdown,
            "flop_counter": self.flop_counter,
            "timing": self.timing,
            "achieved_flop_per_s": self.achieved_flop_per_s,
            "mfu": self.mfu,
            "hfu": self.hfu,
            "mfu_datasheet": self.mfu_datasheet,
            "peak_memory_bytes": self.peak_memory_bytes,
            "phases": self.phases,
            "by_module": self.by_module,
            "compiled": self.compiled,
            "shape": asdict(self.shape) if self.shape is not None else None,
            "assumptions": list(self.assumptions),
            "notes": list(self.notes),
        }
        if with_records:
            out["records"] = self.records
        return out


def _torch_dtype(name: str):
    import torch

    table = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}
    if name not in table:
        raise ValueError(f"dtype must be one of {sorted(table)}, got {name!r}")
    return table[name]


def device_info(device: Any) -> dict[str, Any]:
    """Key, name and kind of ``device`` (the spec key only for a known card)."""
    from . import devices

    try:
        spec = devices.current_spec(device)
    except Exception as exc:  # pragma: no cover - defensive
        return {"key": None, "name": str(device), "kind": str(device), "error": str(exc)}
    kind = "cuda" if str(device).startswith("cuda") else "cpu"
    return {
        "key": spec.key if (kind == "cuda" and not spec.estimated) else (spec.key if kind == "cpu" else None),
        "name": spec.name,
        "kind": kind,
        "estimated_spec": bool(spec.estimated),
    }


def _flop_counter_total(step: Callable[[], Any], impl: str, device_kind: str) -> dict[str, Any]:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        step()
    counts = fc.get_flop_counts().get("Global", {})
    by_op = {str(k): int(v) for k, v in counts.items()}
    total = int(fc.get_total_flops())
    attention_ops = [k for k in by_op if "attention" in k]
    note = []
    if impl == "torch":
        if attention_ops:
            note.append(
                "FlopCounterMode counts a causal scaled_dot_product_attention as dense (every query-key "
                "pair), so it exceeds the model count by the masked half of the attention"
            )
        else:
            note.append(
                "FlopCounterMode has no formula for this device's scaled_dot_product_attention kernel "
                f"({device_kind}), so its total leaves the attention out; it also counts a causal "
                "attention as dense where it does count one"
            )
    else:
        note.append("FlopCounterMode counts the flopscale attention op by its registered (causal-aware) formula")
    return {"total": total, "by_op": by_op, "note": "; ".join(note)}


def run_audit(
    cfg: GPTConfig,
    batch: int,
    *,
    seq: int | None = None,
    impl: str | None = None,
    device: Any = None,
    dtype: str | None = None,
    time_budget_s: float = 1.0,
    flop_counter: bool = True,
    ceilings: Any = None,
    seed: int = 0,
    keep_records: bool = False,
    timed: bool = True,
    progress: Callable[..., Any] | None = None,
) -> AuditResult:
    """Profile one training step of ``GPT(cfg)`` on ``batch`` x ``seq`` tokens.

    ``impl`` defaults to ``"kernels"`` on a CUDA device and ``"torch"`` on the CPU (the
    Triton kernels only run under the slow interpreter there); ``dtype`` to bf16 on CUDA and
    fp32 on the CPU.  ``ceilings`` (a :class:`profiler.devices.Ceilings`) defaults to
    ``profiler.calibrate(quick=True)`` for the device.  The model's parameters stay in
    ``dtype`` and so does the AdamW state.  ``timed=False`` skips the timing (and MFU): for
    counting FLOPs where time means nothing, e.g. under the Triton interpreter.
    ``time_budget_s`` bounds the timed repetitions (at least one runs, after one warm-up);
    ``progress(stage, step, elapsed_s, budget_s)`` is called as the work goes on.
    """
    import torch

    from . import devices
    from .record import Profile

    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind = dev.type
    impl = impl or ("kernels" if kind == "cuda" else "torch")
    dtype = dtype or ("bf16" if kind == "cuda" else "fp32")
    tdt = _torch_dtype(dtype)
    S = cfg.n_ctx if seq is None else int(seq)
    if batch <= 0:
        raise ValueError(f"batch must be positive, got {batch}")
    if not (0 < S <= cfg.n_ctx):
        raise ValueError(f"seq must be in 1..n_ctx ({cfg.n_ctx}), got {S}")

    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT(cfg, impl=impl)
    model = model.to(device=dev, dtype=tdt)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    idx = torch.randint(0, cfg.vocab, (batch, S), generator=gen).to(dev)
    targets = torch.randint(0, cfg.vocab, (batch, S), generator=gen).to(dev)
    plain_step = make_step(model, opt, idx, targets)

    if progress is not None:
        progress("warm-up step", 0, 0.0, time_budget_s)
    plain_step()  # warm-up: allocate the optimizer state, load kernels
    if kind == "cuda":
        torch.cuda.synchronize(dev)

    notes: list[str] = []
    if progress is not None:
        progress("counting FLOPs (one recorded step)", 0, 0.0, time_budget_s)
    with scope_labels(model) as phase:
        labelled_step = make_step(model, opt, idx, targets, phase)
        with Profile(all_ops=True) as prof:
            labelled_step()
    records = list(prof.records)
    breakdown, gnotes = _group_records(records)
    notes += gnotes

    matmul_groups = ("qkv", "attn_scores", "attn_pv", "out_proj", "mlp", "router", "logits", "other")
    model_flops = int(sum(breakdown[g]["model_flops"] for g in matmul_groups))
    executed_flops = model_flops + int(breakdown["backward_recompute"]["executed_flops"]) + int(
        breakdown["masked_work"]["executed_flops"])
    nonmatmul = int(breakdown["softmax_norm_elementwise"]["nonmatmul_flops"])
    analytic = flopcount.step_flops(cfg, batch, S, recompute=(impl == "kernels"))
    if model_flops != analytic.total:
        notes.append(
            f"recorded model FLOPs {model_flops:.6g} differ from the exact analytic count {analytic.total:.6g} "
            f"(ratio {model_flops / analytic.total:.6f})"
        )
    ests = flopcount.estimates(cfg, batch, measured=model_flops, seq=S)

    if progress is not None and flop_counter:
        progress("FlopCounterMode cross-check step", 0, 0.0, time_budget_s)
    fc = _flop_counter_total(plain_step, impl, kind) if flop_counter else {"total": None, "note": "not run"}
    if fc.get("total") is not None:
        fc["ratio_to_model_flops"] = fc["total"] / model_flops if model_flops else None

    timing: dict[str, Any] = {"step_s": None, "profiled_step_wall_s": getattr(prof, "wall_time_s", None)}
    mfu = hfu = None
    achieved = None
    if timed:
        from .audit_module import _timing

        tm = _timing(plain_step, dev, time_budget_s, progress, "timing step")
        timing.update({k: tm[k] for k in ("step_s", "iqr_s", "min_s", "repetitions", "clock")})
        timing["tokens_per_s"] = batch * S / tm["step_s"]
        if "note" in tm:
            timing["note"] = tm["note"]
        achieved = model_flops / tm["step_s"]
        if ceilings is None:
            if progress is not None:
                progress("measuring this device's ceilings (cached after the first run)", 0, 0.0, time_budget_s)
            ceilings = devices.calibrate(dev, quick=True)
        peak = ceilings.peak(dtype) if ceilings is not None else None
        if peak:
            mfu = {"value": achieved / peak, "peak_flop_per_s": peak, "peak_source": ceilings.label, "dtype": dtype}
            hfu = {"value": executed_flops / tm["step_s"] / peak, "peak_flop_per_s": peak,
                   "peak_source": ceilings.label, "dtype": dtype}
        else:
            notes.append(f"no measured {dtype} ceiling for this device: MFU not computed")
    else:
        notes.append("not timed (timed=False): no time, MFU or HFU")
    dinfo = device_info(dev)
    spec = None
    if kind == "cuda":
        spec = devices.current_spec(dev)
    mfu_ds = None
    if achieved is not None and spec is not None and spec.peak(dtype):
        mfu_ds = {"value": achieved / spec.peak(dtype), "peak_flop_per_s": spec.peak(dtype),
                  "peak_source": f"{'estimated' if spec.estimated else 'datasheet'} dense peak ({spec.name})",
                  "dtype": dtype}
    if kind == "cpu":
        notes.append(
            "CPU run: the step uses the torch reference path (torch.matmul, scaled_dot_product_attention), "
            "not the Triton kernels, which run only under the slow interpreter on a CPU"
            if impl == "torch" else "CPU run under the Triton interpreter: times are not hardware figures"
        )
    peak_mem = getattr(prof, "peak_memory_bytes", None)

    rec_rows = []
    if keep_records:
        for r in records:
            rec_rows.append({k: getattr(r, k, None) for k in ("op", "scope", "shapes", "dtype", "flops",
                                                               "executed_flops", "nonmatmul_flops", "bytes",
                                                               "time_s")})
    phases = {ph: int(sum(breakdown[g][ph] for g in matmul_groups)) for ph in ("forward", "backward")}
    phases["optimizer_nonmatmul"] = int(breakdown["optimizer"]["nonmatmul_flops"])
    return AuditResult(
        model=f"GPT (built-in, arch {cfg.arch})",
        phases=phases,
        shape=flopcount.StepShape(batch * S, S, cfg.n_layer, cfg.n_head, cfg.head_dim, cfg.d_model, cfg.ff, cfg.vocab),
        config=cfg,
        batch=batch,
        seq=S,
        impl=impl,
        device=dinfo,
        dtype=dtype,
        params=param_counts(cfg),
        model_flops=model_flops,
        executed_flops=executed_flops,
        nonmatmul_flops=nonmatmul,
        breakdown=breakdown,
        analytic=analytic,
        estimates=ests,
        flop_counter=fc,
        timing=timing,
        mfu=mfu,
        hfu=hfu,
        mfu_datasheet=mfu_ds,
        peak_memory_bytes=peak_mem,
        records=rec_rows,
        notes=notes,
    )


def sweep_audits(cfg: GPTConfig, batch: int, base: AuditResult | None = None, *, impl: str | None = None,
                 device: Any = None, dtype: str | None = None, time_budget_s: float = 1.0,
                 progress: Callable[..., Any] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Audits at widths around ``cfg`` (:func:`default_sweep_configs`), each against 6ND, and
    the exact count of this family at published-like shapes.  Returns ``{"measured": rows,
    "analytic": rows}``; ``base`` is reused for ``cfg`` itself."""
    measured = []
    for c in default_sweep_configs(cfg):
        if progress is not None:
            progress(f"sweep: d_model {c.d_model}", 0, 0.0, time_budget_s)
        r = base if (base is not None and c == cfg) else run_audit(
            c, batch, impl=impl, device=device, dtype=dtype, time_budget_s=max(0.2, time_budget_s / 2),
            flop_counter=False)
        measured.append({
            "n_layer": c.n_layer, "d_model": c.d_model, "n_head": c.n_head, "n_kv_head": c.kv_heads,
            "n_ctx": c.n_ctx, "vocab": c.vocab, "arch": c.arch,
            "params": r.params.to_dict(),
            "model_flops": r.model_flops,
            "six_nd": r.six_nd,
            "ratio_to_6ND_non_embedding": r.model_flops / r.six_nd,
            "ratio_to_6ND_total": r.model_flops / flopcount.six_nd(r.params.active, r.tokens),
            "step_s": r.timing["step_s"],
            "achieved_flop_per_s": r.achieved_flop_per_s,
            "mfu": r.mfu,
            "device": r.device,
            "dtype": r.dtype,
        })
    shapes = [(12, 768, 12), (24, 1024, 16), (24, 2048, 16), (32, 4096, 32), (40, 5120, 40), (80, 8192, 64),
              (96, 12288, 96)]
    analytic = []
    for n_ctx in sorted({cfg.n_ctx, 2048, 8192}):
        cfgs = [GPTConfig(L, d, h, n_ctx, cfg.vocab, arch=cfg.arch, n_experts=cfg.n_experts, top_k=cfg.top_k)
                for L, d, h in shapes]
        analytic.extend(flopcount.sweep(cfgs))
    return {"measured": measured, "analytic": analytic}


def default_sweep_configs(cfg: GPTConfig, factors=(0.25, 0.5, 1, 2, 4)) -> list[GPTConfig]:
    """Widths around ``cfg`` (same depth, context, vocabulary, head dimension), for ``--sweep``."""
    out = []
    hd = cfg.head_dim
    seen = set()
    for f in factors:
        d = max(hd, int(round(cfg.d_model * f / hd)) * hd)
        if d in seen:
            continue
        seen.add(d)
        heads = d // hd
        kv = cfg.kv_heads
        # keep the grouped-query ratio where it divides
        ratio = cfg.n_head // kv
        kv_new = heads // ratio if heads % ratio == 0 and heads >= ratio else heads
        d_ff = None if cfg.d_ff is None else max(1, int(round(cfg.ff * d / cfg.d_model)))
        out.append(GPTConfig(cfg.n_layer, d, heads, cfg.n_ctx, cfg.vocab, n_kv_head=kv_new, d_ff=d_ff, tied=cfg.tied,
                             arch=cfg.arch, n_experts=cfg.n_experts, top_k=cfg.top_k))
    return out


def audit_module(*args: Any, **kwargs: Any) -> AuditResult:
    """Audit one training step of any ``nn.Module``: see :func:`profiler.audit_module.audit_module`."""
    from .audit_module import audit_module as _audit_module

    return _audit_module(*args, **kwargs)


class _CallableModule(__import__("types").ModuleType):
    """``profiler.audit(model, batch, ...)`` calls :func:`audit_module`; ``profiler.audit.X`` is this module's X."""

    def __call__(self, *args: Any, **kwargs: Any) -> AuditResult:
        return audit_module(*args, **kwargs)


__import__("sys").modules[__name__].__class__ = _CallableModule
