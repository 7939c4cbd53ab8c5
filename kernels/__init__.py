"""flopscale kernels: Triton kernels with autograd wrappers, pure-torch references
and declared costs.

Public names:

    kernels.matmul(a, b)
    kernels.scaled_matmul(a, b, scale_a, scale_b)   # fp8 with per-tensor or row-wise scales
    kernels.attention(q, k, v, causal=False, sm_scale=None)
        # causal: False | True/"top_left" (SDPA's alignment) | "bottom_right" (flash-attn >= 2.1)
    kernels.BlockLayout
    kernels.blocksparse_matmul(a, b, layout, mode, trans_a=False, trans_b=False)
    kernels.blocksparse_attention(q, k, v, layout, causal=False, sm_scale=None)
    kernels.Cost, kernels.cost_of, kernels.register_cost

Every op is a ``torch.library`` custom op in the ``flopscale`` namespace with a
registered FLOP formula, so ``torch.utils.flop_counter.FlopCounterMode`` and
``torch.compile`` see it.  ``kernels`` never imports ``profiler``.
"""
from __future__ import annotations
from flopscale._namespace import require_namespaced as _require_namespaced

_require_namespaced(__name__, 'kernels')

import importlib
from typing import Any

from ._cost import Cost, cost_of, register_cost, registered_ops

# public name -> submodule that defines it
_LAZY = {
    "matmul": "matmul_layer",
    "matmul_reference": "matmul_layer",
    "scaled_matmul": "matmul_layer",
    "BlockLayout": "layout",
    "blocksparse_matmul": "blocksparse_layer",
    "blocksparse_matmul_reference": "blocksparse_layer",
    "attention": "attention_layer",
    "attention_reference": "attention_layer",
    "blocksparse_attention": "blocksparse_attention_layer",
    "blocksparse_attention_reference": "blocksparse_attention_layer",
}

# modules that register ops; ``load_all()`` imports them
_OP_MODULES = ("matmul_layer", "blocksparse_layer", "attention_layer", "blocksparse_attention_layer")

__all__ = ["Cost", "cost_of", "register_cost", "registered_ops", "load_all", *_LAZY]


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'kernels' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def load_all() -> list[str]:
    """Import every op module (registering all custom ops); return their names."""
    for mod in _OP_MODULES:
        importlib.import_module(f"{__name__}.{mod}")
    return registered_ops()


# Register every op now: FlopCounterMode copies the FLOP-formula table when it is created,
# so an op first imported inside a FlopCounterMode block would otherwise count as zero.
load_all()
