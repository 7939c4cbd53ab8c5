"""The ``flopscale`` command.

Exit statuses: 0 success; 2 bad input or an environment fault (unwritable or invalid path,
full disk, out of memory, undecodable file, a corrupt file), printed as one line
``flopscale CMD: error: ...`` on stderr; 130 interrupted (SIGINT, Ctrl-C); 143 terminated
(SIGTERM); 1 an unexpected exception -- a bug in flopscale -- printed as one line that names
the exception; ``FLOPSCALE_DEBUG=1`` re-raises it with its traceback.

SIGTERM ends a command the way Ctrl-C does: it raises :class:`Terminated` (a
``KeyboardInterrupt``) in the main thread, so ``finally`` blocks run and atomic writes remove
their temporary files.  A forked worker process that inherits the handler dies as SIGTERM's
default action would, without a traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import signal
import sys
import threading
import warnings
from typing import Iterator, NoReturn, Sequence

from .commands import COMMANDS
from .commands._common import UserError

DESCRIPTION = (
    "flopscale: how many FLOP/s do your GPUs really deliver, and what model should you "
    "train with them?"
)
EPILOG = (
    "Counting conventions: a count is in FLOP, a rate in FLOP/s, 1 PF-day = 8.64e19 FLOP. "
    "Every MFU names the peak it divides by. Run 'flopscale <command> --help' for details."
)

EXIT_OK = 0
EXIT_BUG = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 128 + signal.SIGINT   # 130
EXIT_TERMINATED = 128 + signal.SIGTERM   # 143
DEBUG_ENV = "FLOPSCALE_DEBUG"


class Terminated(KeyboardInterrupt):
    """SIGTERM received: raised in the main thread so that cleanup runs as after Ctrl-C."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``flopscale CMD: error: ...`` and exit 2 (no usage block)."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {_one_line(message)} "
                         f"(see '{self.prog} --help')\n")
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="flopscale", description=DESCRIPTION, epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        mod = importlib.import_module(f"flopscale.profiler.commands.{name}")
        p = sub.add_parser(name, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP))
        mod.add_arguments(p)
        if not any("--json" in a.option_strings for a in p._actions):
            p.add_argument("--json", action="store_true", help="print a JSON object instead of text")
        p.set_defaults(_run=mod.run)
    return parser


def _one_line(text: object) -> str:
    """``text`` on one line (an error message must never span several)."""
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip())


_OOM_WORDS = ("out of memory", "can't allocate memory", "cannot allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """A MemoryError, or torch's report of a failed allocation (``torch.OutOfMemoryError`` on a
    GPU, a RuntimeError from the CPU allocator): the machine's limit, not a bug."""
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    if oom is not None and isinstance(exc, oom):
        return True
    return type(exc) is RuntimeError and any(w in str(exc).lower() for w in _OOM_WORDS)


def describe_fault(exc: BaseException) -> str:
    """One line for an environment fault (OSError, out of memory, UnicodeError)."""
    if is_out_of_memory(exc):
        detail = f" ({_one_line(exc)[:300]})" if str(exc) else ""
        return f"out of memory{detail}: try smaller sizes or fewer rows"
    if isinstance(exc, UnicodeEncodeError):
        return (f"cannot write this text in the output's encoding ({_one_line(exc)}); "
                "set PYTHONIOENCODING=utf-8")
    if isinstance(exc, UnicodeError):
        return f"cannot decode text (not UTF-8?): {_one_line(exc)}"
    if isinstance(exc, OSError):
        what = exc.strerror or _one_line(exc) or type(exc).__name__
        if exc.errno == errno.ENOSPC:
            what = "no space left on device"
        names = [n for n in (exc.filename, exc.filename2) if n is not None]
        where = ": " + " -> ".join(os.fsdecode(n) if isinstance(n, (str, bytes, os.PathLike)) else str(n)
                                   for n in names) if names else ""
        return _one_line(f"{what}{where}")
    return _one_line(exc)


class _SignalState:
    terminated = False


@contextlib.contextmanager
def signals_raise(state: _SignalState) -> Iterator[None]:
    """While the block runs, SIGTERM raises :class:`Terminated` in this (main) thread.

    SIGTERMs after the first are ignored, so they cannot cut the cleanup short (SIGKILL can).
    A forked child that inherited the handler restores the default action and re-sends the
    signal to itself (it dies silently, as without the handler)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    owner = os.getpid()

    def on_term(signum, frame):  # noqa: ARG001
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if state.terminated:
            return
        state.terminated = True
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, on_term)
    except (ValueError, OSError):  # pragma: no cover - not the main thread of the interpreter
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _one_line_warnings(command: str) -> Iterator[None]:
    """Warnings from domain code print as ``flopscale CMD: warning: ...`` (one line); numpy's
    floating-point RuntimeWarnings are hidden unless FLOPSCALE_DEBUG is set."""
    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ARG001
        stream = file or sys.stderr
        try:
            stream.write(f"flopscale {command}: warning: {_one_line(message)}\n")
        except (OSError, ValueError):
            pass

    with warnings.catch_warnings():
        warnings.showwarning = show
        if os.environ.get(DEBUG_ENV, "").strip() in ("", "0"):
            # numpy's floating-point notices ("divide by zero encountered in log") say nothing
            # to a user: a non-finite result is refused or reported by the domain code itself
            warnings.filterwarnings("ignore", message=r".*encountered in ", category=RuntimeWarning)
        yield


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    cmd = args.command
    state = _SignalState()
    try:
        with signals_raise(state), _one_line_warnings(cmd):
            rc = args._run(args)
            sys.stdout.flush()  # a full disk or closed pipe shows here, not at exit
    except UserError as exc:
        print(f"flopscale {cmd}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except Terminated:
        print(f"flopscale {cmd}: terminated (SIGTERM)", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print(f"flopscale {cmd}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # e.g. 'flopscale ... | head'; silence the flush at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BUG
    except (OSError, MemoryError, UnicodeError) as exc:
        print(f"flopscale {cmd}: error: {describe_fault(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # a bug: one line naming it, the traceback on request
        if is_out_of_memory(exc):
            print(f"flopscale {cmd}: error: {describe_fault(exc)}", file=sys.stderr)
            return EXIT_USAGE
        if os.environ.get(DEBUG_ENV, "").strip() not in ("", "0"):
            raise
        print(f"flopscale {cmd}: internal error: {type(exc).__name__}: {_one_line(exc)} "
              f"(a bug in flopscale; set {DEBUG_ENV}=1 to see the traceback)", file=sys.stderr)
        return EXIT_BUG
    if state.terminated:  # the command caught the signal and returned: still not a success
        print(f"flopscale {cmd}: terminated (SIGTERM)", file=sys.stderr)
        return EXIT_TERMINATED
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
