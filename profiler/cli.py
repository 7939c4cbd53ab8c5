"""The ``flopscale`` command."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flopscale", description=DESCRIPTION, epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        mod = importlib.import_module(f"flopscale.profiler.commands.{name}")
        p = sub.add_parser(name, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP))
        mod.add_arguments(p)
        if not any("--json" in a.option_strings for a in p._actions):
            p.add_argument("--json", action="store_true", help="print a JSON object instead of text")
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        rc = args._run(args)
    except UserError as exc:
        print(f"flopscale {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"flopscale {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # e.g. 'flopscale ... | head'; silence the flush at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
