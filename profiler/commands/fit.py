"""flopscale fit (not available yet: issue #3)."""
from __future__ import annotations

import argparse

from ._common import not_yet

NAME = "fit"
HELP = "fit a scaling law to a table of training runs, with bootstrap intervals"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    return not_yet(NAME, 3)
