"""flopscale inspect (not available yet: issue #4)."""
from __future__ import annotations

import argparse

from ._common import not_yet

NAME = "inspect"
HELP = "compile every shipped kernel configuration for a target GPU and report registers, spills, shared memory, wgmma"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    return not_yet(NAME, 4)
