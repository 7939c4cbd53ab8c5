"""One module per ``flopscale`` subcommand.

Each module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``.  ``flopscale.profiler.cli`` builds the parser from ``COMMANDS``.
"""
COMMANDS = ("plan", "profile", "audit", "fit", "allocate", "bench", "inspect", "env")
