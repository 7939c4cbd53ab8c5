"""flopscale audit (not available yet: issue #7)."""
from __future__ import annotations

import argparse

from ._common import not_yet

NAME = "audit"
HELP = "audit C = 6ND against the FLOPs a transformer training step really executes"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    return not_yet(NAME, 7)
