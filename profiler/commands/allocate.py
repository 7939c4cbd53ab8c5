"""flopscale allocate (not available yet: issue #3)."""
from __future__ import annotations

import argparse

from ._common import not_yet

NAME = "allocate"
HELP = "turn a compute budget into compute-optimal parameters N and tokens D"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    return not_yet(NAME, 3)
