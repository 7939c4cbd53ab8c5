"""flopscale profile (not available yet: issue #6)."""
from __future__ import annotations

import argparse

from ._common import not_yet

NAME = "profile"
HELP = "profile kernels: time, TFLOP/s, share of measured ceiling, bandwidth, telemetry"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    return not_yet(NAME, 6)
