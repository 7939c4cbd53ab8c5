"""Automatic ``nn.Module`` scopes for :class:`profiler.Profile` records.

While active, a :class:`ModuleScopes` keeps a per-thread stack of the modules whose
``forward`` is running, so a record made with no hand-made label (``profiler.label``)
gets the module path as its ``scope``: ``"GPT/blocks/0/attn/qkv"``.  Hand-made labels
win: code that labels its own launches (the audit) sees exactly its labels.

* With ``model`` given, names are the model's own (``named_modules``): the root is called by
  its class name and children by their attribute names, joined by "/".  Hooks go on that
  model's modules only.
* Without a model, one global forward pre/post hook pair covers every module that runs; a
  module seen for the first time is a root named by its class, and everything below it
  is named by its dotted path from there (a ``ModuleList`` that never runs itself shows
  up as "blocks.0").
* Backward: when a module's output receives its gradient, the ops that follow carry
  ``"<forward scope> (backward)"`` until the gradient of the module's input is ready
  (tensor hooks on the first output and the first input that need a gradient).  Modules whose inputs need no
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
    return "/".join(e[2] for e in getattr(_fw, "stack", None) or ())


def _fw_stack() -> list[tuple[str, str, str]]:
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


def _first_grad_tensor(x: Any) -> torch.Tensor | None:
    """The first tensor in ``x`` (a tensor or nested tuples/lists/dicts) that needs a gradient."""
    if isinstance(x, torch.Tensor):
        return x if x.requires_grad else None
    if isinstance(x, (list, tuple)):
        for v in x:
            t = _first_grad_tensor(v)
            if t is not None:
                return t
    elif isinstance(x, dict):
        return _first_grad_tensor(list(x.values()))
    return None


class ModuleScopes:
    """Context manager: module names on the label stack (see the module docstring)."""

    def __init__(self, model: torch.nn.Module | None = None) -> None:
        self.model = model
        # module -> (root label, dotted path below the root); '' is the root itself
        self._names: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._handles: list[Any] = []
        self._active = False  # gradient hooks outlive the block (they die with the graph): inert after it
        self._callback_queued = False
        if model is not None:
            self._adopt(model)

    # ------------------------------------------------------------ naming
    def _adopt(self, root: torch.nn.Module) -> None:
        """Name ``root`` by its class and everything below it by its dotted path."""
        label = type(root).__name__
        for name, mod in root.named_modules():
            if mod not in self._names:
                self._names[mod] = (label, name)

    def _increment(self, mod: torch.nn.Module) -> str:
        """What this module adds to the scope: its path below the running module it is called
        from ("attn"; "blocks.0" past a ModuleList), or root label and path when called from
        outside its root ("GPT", "GPT/blocks.0")."""
        if mod not in self._names:
            self._adopt(mod)
        label, path = self._names[mod]
        stack = _fw_stack()
        if stack:
            p_label, p_path, _inc = stack[-1]
            if p_label == label:
                if p_path == "" and path:
                    return path
                if path.startswith(p_path + "."):
                    return path[len(p_path) + 1:]
        return f"{label}/{path}" if path else label

    # ------------------------------------------------------------- hooks
    def _pre(self, mod: torch.nn.Module, inputs: Any) -> None:
        if not self._active:
            return
        inc = self._increment(mod)
        label, path = self._names[mod]
        _fw_stack().append((label, path, inc))
        if torch.is_grad_enabled():
            t = _first_grad_tensor(inputs)
            if t is not None:
                scope = forward_scope()
                t.register_hook(lambda _g, s=scope: self._bw_leave(s))

    def _post(self, mod: torch.nn.Module, inputs: Any, output: Any) -> None:
        if not self._active:
            return
        scope = forward_scope()
        s = _fw_stack()
        key = self._names.get(mod)
        if key is not None and any(e[:2] == key for e in s):
            while s and s.pop()[:2] != key:
                pass
        if torch.is_grad_enabled():
            t = _first_grad_tensor(output)
            if t is not None:
                t.register_hook(lambda _g, sc=scope: self._bw_enter(sc))

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
