"""Progress of long work on stderr: one line rewritten in place, only on a terminal.

``Progress(prefix, enabled)`` is a callable ``(stage, step, elapsed_s, budget_s)``, the shape of
the ``progress`` hooks in :mod:`profiler.audit_module` and :func:`profiler.audit.run_audit`;
:meth:`Progress.note` shows a stage without a count.  ``enabled=None`` means "stderr is a
terminal".  Nothing is written when disabled (``--json``, a pipe, a file).
"""
from __future__ import annotations

import sys
import time
from typing import Any, TextIO

__all__ = ["Progress"]


class Progress:
    def __init__(self, prefix: str, enabled: bool | None = None, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty and isatty())
        self.enabled = enabled
        self.prefix = prefix
        self.t0 = time.perf_counter()
        self._shown = False

    def _write(self, text: str) -> None:
        if not self.enabled:
            return
        try:
            self.stream.write("\r\x1b[K" + f"{self.prefix}: {text}"[:200])
            self.stream.flush()
            self._shown = True
        except (OSError, ValueError):  # a closed or broken stderr must not stop the work
            self.enabled = False

    def note(self, stage: str) -> None:
        self._write(f"{stage} ({time.perf_counter() - self.t0:.1f} s so far)")

    def __call__(self, stage: str, step: int, elapsed_s: float, budget_s: float, *_: Any) -> None:
        if step <= 0:
            self.note(stage)
            return
        eta = max(0.0, budget_s - elapsed_s)
        self._write(f"{stage} {step}, {elapsed_s:.1f} s of the {budget_s:g} s budget, ETA {eta:.1f} s")

    def close(self) -> None:
        if self._shown and self.enabled:
            try:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
            except (OSError, ValueError):
                pass
        self._shown = False
