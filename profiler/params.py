"""Parameter counts of any ``nn.Module``: total, embedding, output layer, non-embedding, and the
parameters one token touches in a mixture of experts.

:func:`inventory` looks at the module tree and says what it assumed:

* **embedding** -- every ``nn.Embedding`` (token and position tables alike);
* **output layer** (``unembedding``) -- a module that is not an ``nn.Embedding`` and holds a
  2-D weight with the vocabulary (the largest embedding table's row count, or ``vocab``) as
  one dimension.  If that weight *is* an embedding's weight the output layer is tied and
  counts as embedding (once);
* **norms** -- parameters with fewer than two dimensions outside the embeddings (norm scales
  and shifts, biases): they sit in N but take part in no matmul;
* **experts** -- a ``ModuleList``/``Sequential``/``ModuleDict`` of at least two children of
  one class with equal parameter shapes, or a module whose own parameters are all 3-D with one
  leading size (weights stacked over the experts), whose name or class name contains "expert";
  **router** -- a module beside it (same parent) whose name contains "router" or "gate" and
  whose weight has the expert count as a dimension.  Active parameters per token are the
  total less ``(n_experts - top_k)`` experts per expert group; ``top_k`` comes from the
  caller, else from an attribute of the parent (``top_k``, ``num_experts_per_tok``, ``k``),
  else from the measured step (forward expert FLOPs / (2 x tokens x one expert's
  parameters)) -- :func:`with_top_k` fills it in then.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from .model import ParamCounts

__all__ = ["ExpertGroup", "Inventory", "inventory", "with_top_k"]

_TOP_K_ATTRS = ("top_k", "num_experts_per_tok", "k")


@dataclass(frozen=True)
class ExpertGroup:
    """One set of routed experts: ``path`` of the container, ``router`` path (or None),
    ``n_experts``, parameters of one expert, ``top_k`` (None until known) and where it came from."""

    path: str
    router: str | None
    n_experts: int
    expert_params: int
    top_k: int | None
    top_k_source: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "router": self.router, "n_experts": self.n_experts,
                "expert_params": self.expert_params, "top_k": self.top_k, "top_k_source": self.top_k_source}


@dataclass
class Inventory:
    """What :func:`inventory` found: ``counts`` (a :class:`ParamCounts`), the module paths it
    took for the embeddings, the output layer and the experts, the vocabulary, the width, and
    ``assumptions`` (sentences saying what it assumed)."""

    counts: ParamCounts
    embeddings: list[str]
    output_layer: str | None
    tied: bool
    vocab: int | None
    d_model: int | None
    experts: list[ExpertGroup] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)
    output_weight: Any = None  # the output layer's weight tensor (for recognising its matmuls)

    def to_dict(self) -> dict[str, Any]:
        return {"embeddings": self.embeddings, "output_layer": self.output_layer, "tied": self.tied,
                "vocab": self.vocab, "d_model": self.d_model, "experts": [e.to_dict() for e in self.experts],
                "assumptions": list(self.assumptions)}


def _expert_groups(model: Any) -> list[tuple[str, Any, int, int, str]]:
    """(path, parent module, n_experts, parameters per expert, parent path) of each expert set:
    a module list of like children, or one module holding 3-D weights stacked over the experts."""
    import torch.nn as nn

    out = []
    named = dict(model.named_modules())
    for name, mod in named.items():
        parent_name = name.rsplit(".", 1)[0] if "." in name else ""
        kids = list(mod.children())
        own = list(mod.parameters(recurse=False))
        if isinstance(mod, (nn.ModuleList, nn.Sequential, nn.ModuleDict)):
            if len(kids) < 2 or len({type(k) for k in kids}) != 1:
                continue
            shapes = {tuple(tuple(p.shape) for p in k.parameters()) for k in kids}
            if len(shapes) != 1 or not next(iter(shapes)):
                continue
            label = (name.rsplit(".", 1)[-1] + " " + type(kids[0]).__name__).lower()
            E, per = len(kids), sum(int(p.numel()) for p in kids[0].parameters())
        elif own and not kids and all(p.dim() == 3 for p in own) and len({int(p.shape[0]) for p in own}) == 1:
            E = int(own[0].shape[0])
            if E < 2:
                continue
            label = (name.rsplit(".", 1)[-1] + " " + type(mod).__name__).lower()
            per = sum(int(p.numel()) for p in own) // E
        else:
            continue
        if "expert" not in label:
            continue
        out.append((name, named.get(parent_name, model), E, per, parent_name))
    return out


def inventory(model: Any, *, vocab: int | None = None, top_k: int | None = None) -> Inventory:
    """Parameter counts of ``model`` and the module roles assumed (module docstring)."""
    import torch.nn as nn

    params = list(model.parameters())  # de-duplicated by torch: a tied weight once
    total = sum(int(p.numel()) for p in params)
    embs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Embedding)]
    emb_ids = {id(m.weight) for _, m in embs}
    embedding = sum(int(m.weight.numel()) for _, m in {id(m): (n, m) for n, m in embs}.values())
    notes: list[str] = []
    tok = max(embs, key=lambda nm: nm[1].num_embeddings)[1] if embs else None
    V = vocab if vocab is not None else (tok.num_embeddings if tok is not None else None)
    d_model = tok.embedding_dim if tok is not None else None
    if embs:
        notes.append("embedding parameters: every nn.Embedding (" + ", ".join(n for n, _ in embs) + ")")
    else:
        notes.append("no nn.Embedding found: embedding parameters counted as 0")

    output_layer, tied, unembedding, out_w = None, False, 0, None
    if V is not None:
        for n, m in model.named_modules():
            if isinstance(m, nn.Embedding):
                continue
            w = getattr(m, "weight", None)
            if isinstance(w, nn.Parameter) and w.dim() == 2 and V in tuple(w.shape):
                output_layer, out_w = n, w  # the last such module wins
        for n, m in model.named_modules():  # a tied head may hold the embedding's weight
            w = getattr(m, "weight", None)
            if output_layer is None and not isinstance(m, nn.Embedding) and w is not None and id(w) in emb_ids:
                output_layer, out_w = n, w
        if output_layer is not None:
            tied = id(out_w) in emb_ids
            unembedding = 0 if tied else int(out_w.numel())
            notes.append(f"output layer: '{output_layer}' (a weight with the vocabulary {V} as a dimension"
                         + ("; tied to the embedding, counted once as embedding)" if tied else ")"))
        elif tok is not None:
            tied, out_w = True, tok.weight
            notes.append("no module holds an output weight: assumed tied to the token embedding "
                         "(logits = the matmuls with an operand shaped like its weight)")
    norms = sum(int(p.numel()) for p in params if p.dim() < 2 and id(p) not in emb_ids)
    non_embedding = total - embedding - unembedding

    groups: list[ExpertGroup] = []
    for path, parent, E, per, parent_name in _expert_groups(model):
        router = None
        for cname, child in parent.named_children():
            w = getattr(child, "weight", None)
            if any(s in cname.lower() for s in ("router", "gate")) and w is not None and E in tuple(w.shape):
                router = f"{parent_name}.{cname}" if parent_name else cname
        k, src = top_k, "given"
        if k is None:
            for a in _TOP_K_ATTRS:
                v = getattr(parent, a, None)
                if isinstance(v, int) and not isinstance(v, bool) and 0 < v <= E:
                    k, src = v, f"attribute {parent_name or type(parent).__name__}.{a}"
                    break
            else:
                src = "not known before the step"
        groups.append(ExpertGroup(path, router, E, per, k, src))
    experts_total = sum(g.n_experts * g.expert_params for g in groups)
    routers = 0
    mods = dict(model.named_modules())
    for g in groups:
        if g.router is not None:
            routers += sum(int(p.numel()) for p in mods[g.router].parameters())
    if groups:
        notes.append("experts: " + "; ".join(
            f"'{g.path}' ({g.n_experts} x {g.expert_params:,} parameters, router "
            f"{repr(g.router) if g.router else 'not found'}, top_k {g.top_k if g.top_k else '?'} ({g.top_k_source}))"
            for g in groups))
    inactive = sum((g.n_experts - g.top_k) * g.expert_params for g in groups if g.top_k)
    counts = ParamCounts(
        total=total, non_embedding=non_embedding, embedding=embedding, unembedding=unembedding, norms=norms,
        kaplan=0, active=total - inactive, active_non_embedding=non_embedding - inactive,
        experts=experts_total, router=routers,
    )
    return Inventory(counts, [n for n, _ in embs], output_layer, tied, V, d_model, groups, notes, out_w)


def with_top_k(inv: Inventory, expert_forward_flops: dict[str, float], tokens: int) -> Inventory:
    """Fill in each expert group's unknown ``top_k`` from its measured forward FLOPs
    (``flops / (2 * tokens * expert_params)``, rounded) and recompute the active counts."""
    groups = []
    for g in inv.experts:
        if g.top_k is None:
            f = float(expert_forward_flops.get(g.path, 0.0))
            k = round(f / (2.0 * tokens * g.expert_params)) if g.expert_params and tokens else 0
            g = replace(g, top_k=max(1, min(g.n_experts, int(k))), top_k_source=(
                f"measured: forward expert FLOPs / (2 x tokens x expert parameters) = "
                f"{f / (2.0 * tokens * g.expert_params):.3f}"))
        groups.append(g)
    inactive = sum((g.n_experts - g.top_k) * g.expert_params for g in groups)
    c = inv.counts
    counts = replace(c, active=c.total - inactive, active_non_embedding=c.non_embedding - inactive)
    notes = [n for n in inv.assumptions if not n.startswith("experts: ")]
    if groups:
        notes.append("experts: " + "; ".join(
            f"'{g.path}' ({g.n_experts} x {g.expert_params:,} parameters, router "
            f"{repr(g.router) if g.router else 'not found'}, top_k {g.top_k} ({g.top_k_source}))" for g in groups))
    return replace(inv, counts=counts, experts=groups, assumptions=notes)
