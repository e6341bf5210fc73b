"""The ``landscape`` command line (click).

With no model, commands run on a built-in default: a small MLP trained for a few seconds on scikit-learn's
shipped digits data, so ``landscape spectrum`` works on a fresh machine with no arguments.

Every analysis command builds the Problem from the shared options, checks that the data fit the model, answers
from ``--out/landscape.h5`` when the same model, data and settings were analysed before (content keys, never file
names), shows progress bars on stderr when it is a terminal (never with ``--quiet``), writes ``COMMAND.json`` and
its figures into ``--out`` and prints a one-screen summary with error bars (``--json``: the JSON instead). Errors a
user can act on are one line on stderr with exit code 2; ``--debug`` shows the traceback.

:mod:`~landscape.cli.app` holds the click group and the shared options, :mod:`~landscape.cli.setup` builds the
Problem, :mod:`~landscape.cli.output` answers from the cache and prints; the commands live in one module per family
and register on the group when imported here.
"""

# Importing a command module registers its commands on ``main``.
from landscape.cli import analyses, blocks, report, spectra, surfaces  # noqa: F401
from landscape.cli.app import UserError, common_options, main, run
from landscape.cli.setup import build_problem, check_data_fits

__all__ = ["UserError", "build_problem", "check_data_fits", "common_options", "main", "run"]
