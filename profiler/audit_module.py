"""Audit one training step of *any* ``nn.Module``: :func:`audit_module` (also ``profiler.audit(...)``).

One step = forward, loss, backward, optimizer step, ``zero_grad``.  It runs once under
:class:`profiler.stepcount.StepCounter` (FLOPs by module path and phase, causal-aware attention),
then is timed with nothing attached (median of repetitions within ``time_budget_s``).  With
``compile=True`` the forward and the loss are also compiled with ``torch.compile``: the
compiled forward/backward graphs are counted from their fake-tensor metadata (no run under a
dispatch mode, which would send the compiled code back to eager) and must agree with the eager
count; the compiled step is then timed with nothing attached and its MFU reported beside the
eager one.  The optimizer step stays eager in both.

The default optimizer is ``torch.optim.AdamW(lr=0)``: the same work as a real AdamW step,
but the model's weights do not change.  Model FLOPs are the matmul and attention work (no
recompute): what MFU = model FLOPs / (wall time x peak) divides; executed FLOPs add the
attention's backward recompute (HFU).  Non-matmul work (softmax, norms, elementwise, the
optimizer) is estimated per element and reported apart.

The estimates (6ND, Kaplan, PaLM, Chinchilla Appendix F) need a shape: layers = attention
calls in the forward pass, heads and head size from the query of the first call, sequence =
the batch's, d_model = the token embedding's width, vocabulary = its rows (or ``vocab``),
d_ff = ``d_ff`` or 4 d_model (assumed, said so).
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import sys
import time
from typing import Any, Callable

from . import flopcount
from .params import Inventory, inventory, with_top_k
from .stepcount import OUTSIDE, StepCounter, Tally, graph_flops

__all__ = ["AuditError", "audit_module", "load_factory", "module_step"]

MODEL_KINDS = ("attn_scores", "attn_pv", "logits", "matmul")


class AuditError(ValueError):
    """Bad input to an audit: a batch, model or factory the audit cannot use."""


# ------------------------------------------------------------------------------ the step


def _ids_and_call(batch: Any) -> tuple[tuple, dict, Any]:
    import torch

    if isinstance(batch, torch.Tensor):
        if batch.dim() != 2 or batch.dtype not in (torch.int64, torch.int32):
            raise AuditError(f"batch must be token ids [B, S] (int64) or a dict of tensors, got "
                             f"{batch.dtype} {tuple(batch.shape)}")
        return (batch,), {}, batch
    if isinstance(batch, dict):
        ids = batch.get("input_ids")
        if ids is None:
            ids = next((v for v in batch.values() if isinstance(v, torch.Tensor) and v.dim() == 2
                        and not v.is_floating_point()), None)
        if ids is None:
            raise AuditError("a dict batch needs 'input_ids' (or another 2-D integer tensor) for B and S")
        return (), dict(batch), ids
    raise AuditError(f"batch must be a tensor of token ids [B, S] or a dict of tensors, not {type(batch).__name__}")


def _default_loss(out: Any, batch: Any, ids: Any) -> Any:
    """The loss in ``out`` (a scalar, ``.loss``, ``["loss"]``), else cross-entropy of logits ``[B, S, V]``
    against ``labels`` or the token ids themselves (same FLOPs as shifted next-token targets)."""
    import torch
    import torch.nn.functional as F

    cand = out
    if isinstance(out, dict) or hasattr(out, "loss"):
        loss = out.get("loss") if isinstance(out, dict) else getattr(out, "loss", None)
        if isinstance(loss, torch.Tensor) and loss.dim() == 0:
            return loss
        cand = out.get("logits") if isinstance(out, dict) else getattr(out, "logits", None)
    elif isinstance(out, (tuple, list)):
        for t in out:
            if isinstance(t, torch.Tensor) and t.dim() == 0 and t.is_floating_point():
                return t
        cand = next((t for t in out if isinstance(t, torch.Tensor) and t.dim() == 3), None)
    if isinstance(cand, torch.Tensor) and cand.dim() == 0:
        return cand
    if not (isinstance(cand, torch.Tensor) and cand.dim() == 3 and cand.shape[:2] == ids.shape):
        raise AuditError("the model must return logits [B, S, V] or a loss; pass loss_fn=... for other outputs")
    labels = batch.get("labels", ids) if isinstance(batch, dict) else ids
    return F.cross_entropy(cand.float().reshape(-1, cand.shape[-1]), labels.reshape(-1))


def module_step(model: Any, batch: Any, optimizer: Any, loss_fn: Callable | None = None,
                forward: Callable | None = None, counter: StepCounter | None = None) -> Callable[[], Any]:
    """One training step of ``model`` on ``batch`` as a closure (forward + loss, backward,
    ``optimizer.step()``, ``zero_grad``).  ``forward`` replaces the forward-and-loss function
    (e.g. a compiled one); ``counter`` gets its phase set around the optimizer step."""
    args, kwargs, ids = _ids_and_call(batch)

    def fwd_loss() -> Any:
        out = model(*args, **kwargs)
        return loss_fn(out, batch) if loss_fn is not None else _default_loss(out, batch, ids)

    fl = forward or fwd_loss

    def step() -> Any:
        loss = fl()
        if not (hasattr(loss, "backward") and getattr(loss, "dim", lambda: 1)() == 0):
            raise AuditError("the loss must be a scalar tensor")
        loss.backward()
        if counter is not None:
            counter.phase = "optimizer"
        try:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        finally:
            if counter is not None:
                counter.phase = None
        return loss

    step.forward_and_loss = fwd_loss  # type: ignore[attr-defined]
    return step


# ------------------------------------------------------------------------------ helpers


def _dtype_name(model: Any) -> str:
    import torch

    names = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}
    for p in model.parameters():
        if p.is_floating_point():
            return names.get(p.dtype, str(p.dtype))
    return "fp32"


def _shape(tally: Tally, inv: Inventory, B: int, S: int, d_ff: int | None, notes: list[str]) -> flopcount.StepShape:
    calls = tally.attention_calls
    L = len(calls)
    if calls:
        bh, heads, _sq, _sk, hd = calls[0]
        H = heads if heads else max(1, bh // B)
    else:
        H, hd = 1, inv.d_model or 1
        notes.append("no scaled_dot_product_attention call seen: the attention terms of the estimates are 0 "
                     "(a hand-written attention counts as dense matmuls, inside 'other')")
    d = inv.d_model or H * hd
    ff = d_ff or 4 * d
    if d_ff is None:
        notes.append(f"shape for the estimates: layers {L} (attention calls), heads {H}, head dim {hd}, d_model {d}, "
                     f"vocabulary {inv.vocab}; d_ff {ff} assumed (4 d_model; pass d_ff=...)")
    return flopcount.StepShape(B * S, S, L, H, hd, d, ff, inv.vocab or 0)


_QKV_NAMES = {"q_proj", "k_proj", "v_proj", "qkv_proj", "qkv", "wq", "wk", "wv", "wqkv", "query", "key", "value",
              "c_attn", "in_proj", "to_q", "to_k", "to_v", "to_qkv", "kv_proj"}
_OUT_NAMES = {"o_proj", "out_proj", "wo", "to_out", "c_proj", "proj", "dense", "out", "o"}
_MLP_PARTS = {"mlp", "ffn", "feed_forward", "feedforward", "ff", "moe", "experts"}


def name_group(path: str) -> str | None:
    """``qkv``, ``out_proj`` or ``mlp`` from a module path's names (``layers.0.attn.q_proj`` -> qkv), or None."""
    parts = path.lower().split(".")
    if any(p in _MLP_PARTS for p in parts[:-1]) or parts[-1] in _MLP_PARTS:
        return "mlp"
    if parts[-1] in _QKV_NAMES:
        return "qkv"
    in_attn = any("attn" in p or "attention" in p for p in parts[:-1])
    if parts[-1] in ("o_proj", "out_proj", "wo", "to_out") or (in_attn and parts[-1] in _OUT_NAMES):
        return "out_proj"
    if parts[-1] in ("w1", "w2", "w3", "gate_proj", "up_proj", "down_proj", "fc1", "fc2", "c_fc", "w_gate", "w_up",
                     "w_down", "gate", "up", "down"):
        return "mlp"
    return None


def _group(tally: Tally, inv: Inventory) -> dict[str, Any]:
    """The AuditResult breakdown (:data:`profiler.audit.BREAKDOWN_GROUPS`) from the tally.
    Matmuls go to ``qkv``/``out_proj``/``mlp`` by their module's name (:func:`name_group`), to
    ``router``/``mlp`` when inside the found router/experts, else to ``other``."""
    from .audit import BREAKDOWN_GROUPS

    groups = {g: {"model_flops": 0, "executed_flops": 0, "nonmatmul_flops": 0, "time_s": None, "launches": None,
                  "forward": 0, "backward": 0} for g in BREAKDOWN_GROUPS}
    experts = [g.path for g in inv.experts]
    routers = [g.router for g in inv.experts if g.router]

    def under(p: str, prefixes: list[str]) -> bool:
        return any(p == x or p.startswith(x + ".") for x in prefixes)

    for (ph, p, k), v in tally.flops.items():
        v = int(round(v))
        if k == "nonmatmul":
            g = "optimizer" if ph == "optimizer" else "softmax_norm_elementwise"
            groups[g]["nonmatmul_flops"] += v
            continue
        if k in ("recompute", "masked"):
            g = "backward_recompute" if k == "recompute" else "masked_work"
            groups[g]["executed_flops"] += v
            if ph in ("forward", "backward"):
                groups[g][ph] += v
            continue
        if k == "matmul":
            g = "router" if under(p, routers) else "mlp" if under(p, experts) else (name_group(p) or "other")
        else:
            g = k
        e = groups[g]
        e["model_flops"] += v
        e["executed_flops"] += v
        if ph in ("forward", "backward"):
            e[ph] += v
    groups["attention_time_s"] = None  # type: ignore[assignment]
    return groups


def _by_module(tally: Tally, max_depth: int = 3) -> dict[str, dict[str, float]]:
    """FLOPs per module path, summed up the hierarchy like FlopCounterMode (the root is "")."""
    out: dict[str, dict[str, float]] = {}
    for (ph, p, k), v in tally.flops.items():
        parts = [] if p in ("", OUTSIDE) else p.split(".")
        chain = [OUTSIDE] if p == OUTSIDE else [""] + [".".join(parts[:i + 1]) for i in range(min(len(parts), max_depth))]
        for node in chain:
            e = out.setdefault(node, {"model_flops": 0.0, "executed_flops": 0.0, "nonmatmul_flops": 0.0,
                                      "forward": 0.0, "backward": 0.0, "optimizer": 0.0})
            if k == "nonmatmul":
                e["nonmatmul_flops"] += v
                if ph == "optimizer":
                    e["optimizer"] += v
            elif k in ("recompute", "masked"):
                e["executed_flops"] += v
            else:
                e["model_flops"] += v
                e["executed_flops"] += v
                if ph in ("forward", "backward"):
                    e[ph] += v
    return {k: {kk: int(round(vv)) for kk, vv in v.items()} for k, v in sorted(out.items())}


def _timing(step: Callable, dev: Any, budget: float, progress: Any, what: str) -> dict[str, Any]:
    """Median wall time of ``step`` within ``budget`` seconds.  One step is timed first (after the
    counted step, which warmed everything up); when it takes more than half the budget it is
    the measurement (one repetition), else :func:`profiler.bench` repeats the step in the budget."""
    import torch

    from .timing import bench

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    t0 = time.perf_counter()
    sync()
    step()
    sync()
    first = time.perf_counter() - t0
    if progress is not None:
        progress(what, 1, first, budget)
    if 2 * first > budget:
        return {"step_s": first, "iqr_s": 0.0, "min_s": first, "repetitions": 1, "clock": "perf_counter",
                "note": "one repetition: a step takes more than half the time budget"}
    count = [1]

    def ticking() -> Any:
        r = step()
        count[0] += 1
        if progress is not None:
            progress(what, count[0], time.perf_counter() - t0, budget)
        return r

    tm = bench(ticking, warmup=1, time_budget_s=budget, flush_l2=False, device=str(dev), min_rep=1)
    return {"step_s": tm.median_s, "iqr_s": tm.iqr_s, "min_s": tm.min_s, "repetitions": tm.count, "clock": tm.clock}


def _mfu(flops: float, t: float | None, ceilings: Any, dtype: str) -> dict[str, Any] | None:
    peak = ceilings.peak(dtype) if (ceilings is not None and t) else None
    if not peak:
        return None
    return {"value": flops / t / peak, "peak_flop_per_s": peak, "peak_source": ceilings.label, "dtype": dtype}


# ------------------------------------------------------------------------------ compiled


def _count_compiled(fwd_loss: Callable) -> tuple[Tally, int]:
    """Trace ``fwd_loss`` with torch.compile through AOT autograd and count the forward and
    backward graphs (fake-tensor metadata; nothing runs under a dispatch mode).  Returns the
    tally and the number of graphs (more than 2 means graph breaks)."""
    import torch
    from torch._functorch.aot_autograd import aot_module_simplified, make_boxed_func

    tally = Tally()
    graphs = [0]

    def keep(phase: str):
        def compiler(gm: Any, example_inputs: Any) -> Any:
            graph_flops(gm, phase, tally)
            graphs[0] += 1
            return make_boxed_func(gm.forward)
        return compiler

    def backend(gm: Any, example_inputs: Any) -> Any:
        return aot_module_simplified(gm, example_inputs, fw_compiler=keep("forward"), bw_compiler=keep("backward"))

    torch._dynamo.reset()
    loss = torch.compile(fwd_loss, backend=backend)()
    loss.backward()
    torch._dynamo.reset()
    return tally, graphs[0]


# ------------------------------------------------------------------------------ the audit


def audit_module(
    model: Any,
    batch: Any,
    *,
    loss_fn: Callable | None = None,
    optimizer: Any = None,
    compile: bool | dict = False,
    vocab: int | None = None,
    top_k: int | None = None,
    d_ff: int | None = None,
    time_budget_s: float = 1.0,
    ceilings: Any = None,
    timed: bool = True,
    progress: Callable[[str, int, float, float], None] | None = None,
    name: str | None = None,
):
    """Audit one training step of ``model`` on ``batch``; returns a :class:`profiler.audit.AuditResult`.

    ``batch``: token ids ``[B, S]`` (``model(ids)``) or a dict of tensors (``model(**batch)``; B and S
    from ``input_ids``).  ``loss_fn(output, batch)`` -> scalar; by default the model's own loss or
    cross-entropy of its logits ``[B, S, V]``.  ``optimizer`` defaults to AdamW with lr 0 (same
    work, weights unchanged); an optimizer you pass is stepped once per audited step (the counted
    one and the timed ones), so pass a copy of the model if its weights matter.  The model is put
    in training mode for the audit and back in its former mode after.  ``vocab``/``top_k``/``d_ff`` override what the audit infers
    (:mod:`profiler.params`).  ``time_budget_s`` bounds the timed repetitions (at least one
    runs); ``progress(stage, step, elapsed_s, budget_s)`` is called after each timed step.
    ``ceilings`` defaults to ``profiler.calibrate(quick=True)``.  ``compile``: True, or a dict of
    ``torch.compile`` keyword arguments for the timed compiled step (e.g. ``{"backend":
    "aot_eager"}``, ``{"mode": "max-autotune"}``); compiling takes its own time (reported as
    ``compile_s``) on top of the budget.  See the module docstring.
    """
    import torch

    if not isinstance(model, torch.nn.Module):
        raise AuditError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    params = list(model.parameters())
    if not params:
        raise AuditError(f"{type(model).__name__} has no parameters: nothing to train or audit")
    if not (time_budget_s > 0):
        raise AuditError(f"time budget must be positive, got {time_budget_s}")
    dev = params[0].device
    _a, _k, ids = _ids_and_call(batch)
    B, S = int(ids.shape[0]), int(ids.shape[1])
    dtype = _dtype_name(model)
    notes: list[str] = []
    inv = inventory(model, vocab=vocab, top_k=top_k)
    if optimizer is None:
        optimizer = torch.optim.AdamW(params, lr=0.0)
        notes.append("optimizer: AdamW with lr 0 (the work of an AdamW step; the weights do not change)")
    was_training = model.training
    model.train()
    try:
        return _audit(model, batch, B, S, dtype, dev, inv, optimizer, notes, loss_fn=loss_fn, compile=compile,
                      d_ff=d_ff, time_budget_s=time_budget_s, ceilings=ceilings, timed=timed, progress=progress,
                      name=name)
    finally:
        model.train(was_training)


def _audit(model, batch, B, S, dtype, dev, inv, optimizer, notes, *, loss_fn, compile, d_ff, time_budget_s, ceilings,
           timed, progress, name):
    import torch

    from . import devices
    from .audit import AuditResult, device_info

    counter = StepCounter(model, inv.output_layer, inv.output_weight, inv.vocab)
    step = module_step(model, batch, optimizer, loss_fn, counter=counter)
    try:
        with counter:
            step()
    except AuditError:
        raise
    except Exception as exc:  # the user's model failed on this batch: say so in one line, keep the cause chained
        raise AuditError(f"the training step failed: {type(exc).__name__}: {_line(exc)}") from exc
    tally = counter.tally
    if inv.experts:
        fwd = {g.path: tally.under(g.path, ("matmul",), "forward") for g in inv.experts}
        inv = with_top_k(inv, fwd, B * S)
    if tally.failures:
        notes.append("ops not counted (formula failed): " + ", ".join(f"{k} x{v}" for k, v in tally.failures.items()))
    if tally.dense_attention_note:
        notes.append("an attention with an explicit mask is counted dense (its zeros are not inspected)")
    model_flops = int(round(tally.total(MODEL_KINDS)))
    executed = int(round(tally.total(MODEL_KINDS + ("recompute", "masked"))))
    breakdown = _group(tally, inv)
    nonmatmul = int(breakdown["softmax_norm_elementwise"]["nonmatmul_flops"])
    shape = _shape(tally, inv, B, S, d_ff, notes)
    counts = inv.counts
    if shape.n_layer:
        from dataclasses import replace

        counts = replace(counts, kaplan=12 * shape.n_layer * shape.d_model ** 2)
    ests = flopcount.published_estimates(
        shape, counts, measured=model_flops, attention=tally.total(("attn_scores", "attn_pv")),
        logits=tally.total(("logits",)))
    named = [g for g in ("qkv", "out_proj", "mlp") if breakdown[g]["model_flops"]]
    if named:
        notes.append("matmul groups " + ", ".join(named) + " assigned by module names (q_proj/wq, o_proj/wo, mlp/ffn, ...);"
                     " matmuls in other modules are in 'other'")
    if not tally.total(("logits",)):
        notes.append("no output-layer matmul recognised: logits FLOPs are inside 'other'")

    plain = module_step(model, batch, optimizer, loss_fn)
    timing: dict[str, Any] = {"step_s": None}
    mfu = hfu = None
    compiled: dict[str, Any] | None = None
    peak_mem = None
    if timed:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
        timing = _timing(plain, dev, time_budget_s, progress, "eager step")
        timing["tokens_per_s"] = B * S / timing["step_s"]
        if dev.type == "cuda":
            peak_mem = int(torch.cuda.max_memory_allocated(dev))
        if ceilings is None:
            ceilings = devices.calibrate(dev, quick=True)
        mfu = _mfu(model_flops, timing["step_s"], ceilings, dtype)
        hfu = _mfu(executed, timing["step_s"], ceilings, dtype)
        if mfu is None:
            notes.append(f"no {dtype} ceiling for this device: MFU not computed")
    else:
        notes.append("not timed (timed=False): no time, MFU or HFU")
    if compile:
        opts = dict(compile) if isinstance(compile, dict) else {}
        compiled = _audit_compiled(model, batch, optimizer, loss_fn, plain, dev, time_budget_s, progress,
                                   timed, ceilings, dtype, model_flops, tally, opts)
    if dev.type != "cuda":
        notes.append("peak memory: not tracked on the CPU (torch keeps no CPU allocator statistics)")
    by_phase = {ph: int(round(tally.total(MODEL_KINDS, ph))) for ph in ("forward", "backward")}
    by_phase["optimizer_nonmatmul"] = int(breakdown["optimizer"]["nonmatmul_flops"])
    return AuditResult(
        config=None, batch=B, seq=S, impl="torch", device=device_info(dev), dtype=dtype, params=counts,
        model_flops=model_flops, executed_flops=executed, nonmatmul_flops=nonmatmul, breakdown=breakdown,
        analytic=None, estimates=ests, flop_counter={"total": None, "note": "not run"}, timing=timing, mfu=mfu,
        hfu=hfu, mfu_datasheet=None, peak_memory_bytes=peak_mem, notes=notes,
        model=name or type(model).__name__, by_module=_by_module(tally), phases=by_phase, compiled=compiled,
        assumptions=list(inv.assumptions), shape=shape,
    )


def _audit_compiled(model, batch, optimizer, loss_fn, plain, dev, budget, progress, timed, ceilings, dtype,
                    model_flops, tally, opts) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {"options": {k: str(v) for k, v in opts.items()},
                           "backend": str(opts.get("backend", "inductor")), "scope": "forward and loss compiled; backward through the "
                           "compiled graph; optimizer step eager"}
    try:
        ctally, n_graphs = _count_compiled(plain.forward_and_loss)
    except Exception as exc:  # no compiler, an op dynamo cannot trace, ...
        out["error"] = f"could not trace the step with torch.compile: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        return out
    cflops = int(round(ctally.total(MODEL_KINDS)))
    eager_fb = int(round(tally.total(MODEL_KINDS, "forward") + tally.total(MODEL_KINDS, "backward")))
    out.update({"graphs": n_graphs, "model_flops_forward_backward": cflops,
                "eager_model_flops_forward_backward": eager_fb,
                "ratio_to_eager": cflops / eager_fb if eager_fb else None,
                "model_flops": model_flops})
    if not timed:
        return out
    try:
        torch._dynamo.reset()
        fast = torch.compile(plain.forward_and_loss, **opts)
        step = module_step(model, batch, optimizer, loss_fn, forward=fast)
        if progress is not None:
            progress("compiling", 0, 0.0, budget)
        t0 = time.perf_counter()
        step()
        out["compile_s"] = time.perf_counter() - t0
        t = _timing(step, dev, budget, progress, "compiled step")
    except Exception as exc:
        out["error"] = f"compiled step failed: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        return out
    finally:
        torch._dynamo.reset()
    out["timing"] = t
    out["mfu"] = _mfu(model_flops, t["step_s"], ceilings, dtype)
    return out


# ------------------------------------------------------------------------------ factories


def load_factory(spec: str, factory_args: str | None = None) -> Any:
    """Import ``PKG.MODULE:FACTORY`` or ``path/to/file.py:FACTORY`` and call it with the JSON
    object ``factory_args`` as keyword arguments (a JSON list: positional).  Raises
    :class:`AuditError` with one clear sentence for every way this can fail."""
    if not spec or ":" not in spec:
        raise AuditError(f"--model must be PKG.MODULE:FACTORY or path/to/file.py:FACTORY, got {spec!r}")
    target, _, attr = spec.rpartition(":")
    if not target or not attr.isidentifier():
        raise AuditError(f"--model must be PKG.MODULE:FACTORY or path/to/file.py:FACTORY, got {spec!r}")
    try:
        kw = json.loads(factory_args) if factory_args else {}
    except json.JSONDecodeError as exc:
        raise AuditError(f"--factory-args is not valid JSON: {exc.msg} (at character {exc.pos})") from None
    if not isinstance(kw, (dict, list)):
        raise AuditError("--factory-args must be a JSON object (keyword arguments) or list (positional)")
    if target.endswith(".py") or os.sep in target or "/" in target:
        if not os.path.isfile(target):
            raise AuditError(f"--model: no such file: {target}")
        name = "_flopscale_user_model_" + str(abs(hash(os.path.abspath(target))))
        try:
            mspec = importlib.util.spec_from_file_location(name, target)
            mod = importlib.util.module_from_spec(mspec)  # type: ignore[arg-type]
            sys.modules[name] = mod
            mspec.loader.exec_module(mod)  # type: ignore[union-attr]
        except Exception as exc:
            sys.modules.pop(name, None)
            raise AuditError(f"--model: importing {target} failed: {type(exc).__name__}: {_line(exc)}") from None
    else:
        try:
            mod = importlib.import_module(target)
        except Exception as exc:
            raise AuditError(f"--model: cannot import {target}: {type(exc).__name__}: {_line(exc)}") from None
    factory = getattr(mod, attr, None)
    if factory is None or not callable(factory):
        raise AuditError(f"--model: {target} has no callable {attr!r}")
    try:
        with contextlib.redirect_stdout(sys.stderr):
            model = factory(*kw) if isinstance(kw, list) else factory(**kw)
    except Exception as exc:
        raise AuditError(f"--model: {attr}() raised {type(exc).__name__}: {_line(exc)}") from None
    return model


def _line(exc: BaseException) -> str:
    s = str(exc).strip().splitlines()
    return s[0] if s else "(no message)"
