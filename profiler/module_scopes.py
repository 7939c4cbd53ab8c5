"""Automatic ``nn.Module`` scopes for :class:`profiler.Profile` records.

While active, a :class:`ModuleScopes` keeps a per-thread stack of the modules whose
``forward`` is running, so a record made with no hand-made label (``profiler.label``)
gets the module path as its ``scope``: ``"GPT/blocks/0/attn/qkv"``.  Hand-made labels
win: code that labels its own launches (the audit) sees exactly its labels.

* With ``model`` given, names are the model's own (``named_modules``): the root is called by
  its class name and children by their attribute names, joined by "/".  Hooks go on that
  model's modules only.
* Without a model, one global forward pre/post hook pair covers every module that runs; a
  module seen for the first time is named by its class, and its children (by attribute
  name) are named below it, as ``torch.utils.module_tracker`` does.
* Backward: when a module's outputs receive their gradients, the ops that follow carry
  ``"<forward scope> (backward)"`` until the gradients of the module's inputs are ready
  (``torch.autograd.graph.register_multi_grad_hook``).  Modules whose inputs need no
  gradient (the first layer) keep their backward scope until the backward pass ends.
"""
from __future__ import annotations

import threading
import weakref
from typing import Any

import torch


__all__ = ["ModuleScopes", "BACKWARD_SUFFIX"]

BACKWARD_SUFFIX = " (backward)"

_bw = threading.local()
_fw = threading.local()


def forward_scope() -> str:
    """The modules whose forward is running in this thread, joined by '/' ('' when none)."""
    return "/".join(getattr(_fw, "stack", None) or ())


def _fw_stack() -> list[str]:
    s = getattr(_fw, "stack", None)
    if s is None:
        s = _fw.stack = []
    return s


def backward_scope() -> str | None:
    """The innermost module whose backward is running in this thread, or None."""
    s = getattr(_bw, "stack", None)
    if not s:
        return None
    # a module and its parent can get their output gradients at the same moment (the parent
    # returns the child's output), in either order: the deepest scope is the innermost one
    best = s[-1]
    for scope in reversed(s):
        if scope.count("/") > best.count("/"):
            best = scope
    return best


def _bw_stack() -> list[str]:
    s = getattr(_bw, "stack", None)
    if s is None:
        s = _bw.stack = []
    return s


def _grad_tensors(x: Any) -> list[torch.Tensor]:
    from torch.utils._pytree import tree_flatten

    flat, _ = tree_flatten(x)
    return [t for t in flat if isinstance(t, torch.Tensor) and t.requires_grad]


class ModuleScopes:
    """Context manager: module names on the label stack (see the module docstring)."""

    def __init__(self, model: torch.nn.Module | None = None) -> None:
        self.model = model
        self._names: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._handles: list[Any] = []
        self._active = False  # gradient hooks outlive the block (they die with the graph): inert after it
        self._callback_queued = False
        if model is not None:
            root = type(model).__name__
            for name, mod in model.named_modules():
                self._names[mod] = name.split(".")[-1] if name else root

    # ------------------------------------------------------------ naming
    def _name(self, mod: torch.nn.Module) -> str:
        name = self._names.get(mod)
        if name is None:
            name = self._names[mod] = type(mod).__name__
            for child_name, child in mod.named_children():
                self._names.setdefault(child, child_name)
        return name

    # ------------------------------------------------------------- hooks
    def _pre(self, mod: torch.nn.Module, inputs: Any) -> None:
        if self.model is None:
            # name the children on first sight of the parent
            self._name(mod)
            for child_name, child in mod.named_children():
                self._names.setdefault(child, child_name)
        if not self._active:
            return
        name = self._name(mod)
        _fw_stack().append(name)
        if torch.is_grad_enabled():
            ts = _grad_tensors(inputs)
            if ts:
                scope = forward_scope()
                torch.autograd.graph.register_multi_grad_hook(ts, lambda _g, s=scope: self._bw_leave(s))

    def _post(self, mod: torch.nn.Module, inputs: Any, output: Any) -> None:
        if not self._active:
            return
        scope = forward_scope()
        s = _fw_stack()
        name = self._name(mod)
        if name in s:
            while s and s.pop() != name:
                pass
        if torch.is_grad_enabled():
            ts = _grad_tensors(output)
            if ts:
                torch.autograd.graph.register_multi_grad_hook(ts, lambda _g, s=scope: self._bw_enter(s))

    def _bw_enter(self, scope: str) -> None:
        if not self._active:
            return
        _bw_stack().append(scope)
        if not self._callback_queued:
            try:
                torch.autograd.Variable._execution_engine.queue_callback(self._bw_done)
                self._callback_queued = True
            except RuntimeError:
                pass

    def _bw_leave(self, scope: str) -> None:
        s = _bw_stack()
        if scope in s:
            while s and s.pop() != scope:
                pass

    def _bw_done(self) -> None:
        _bw_stack().clear()
        self._callback_queued = False

    # ----------------------------------------------------------- context
    def __enter__(self) -> "ModuleScopes":
        self._active = True
        if self.model is not None:
            for mod in self.model.modules():
                self._handles.append(mod.register_forward_pre_hook(self._pre))
                self._handles.append(mod.register_forward_hook(self._post))
        else:
            from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

            self._handles.append(register_module_forward_pre_hook(self._pre))
            self._handles.append(register_module_forward_hook(self._post))
        return self

    def __exit__(self, *exc: Any) -> bool:
        self._active = False
        for h in self._handles:
            h.remove()
        self._handles.clear()
        _bw_stack().clear()
        _fw_stack().clear()
        return False
