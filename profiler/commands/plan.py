"""flopscale plan (not available yet: issue #7)."""
from __future__ import annotations

import argparse

from ._common import not_yet

NAME = "plan"
HELP = "plan a training run: GPUs x days -> compute budget -> compute-optimal N, D, model shape, wall-clock"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    return not_yet(NAME, 7)
