"""flopscale bench (not available yet: issue #8)."""
from __future__ import annotations

import argparse

from ._common import not_yet

NAME = "bench"
HELP = "benchmark flopscale kernels against torch baselines"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    return not_yet(NAME, 8)
