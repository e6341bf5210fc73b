"""``python -m landscape``: the command line, also as ``torchrun --nproc_per_node=N -m landscape COMMAND ...``."""

from landscape.cli import run

run()
