"""One name per module: the project's folders are importable only as ``flopscale.<name>``.

Run from a checkout, the repository root may be on ``sys.path`` and ``import kernels`` would
find the folder under its bare name; a second copy of the package would register every custom
op a second time. Each package calls :func:`require_namespaced` first thing.
"""
from __future__ import annotations


def require_namespaced(module_name: str, short: str) -> None:
    if module_name != f"flopscale.{short}":
        raise ImportError(
            f"this is flopscale's '{short}' package; import it as 'flopscale.{short}' "
            f"(from flopscale import {short}), not as '{module_name}'")
