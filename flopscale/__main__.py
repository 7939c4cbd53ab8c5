"""``python -m flopscale``: the same as the ``flopscale`` command."""
from flopscale.profiler.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
