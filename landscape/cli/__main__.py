"""``python -m landscape.cli``: the command line, as ``python -m landscape``."""

import sys

from landscape.cli import run

sys.exit(run())
