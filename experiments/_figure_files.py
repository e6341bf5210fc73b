"""The figure files of the README experiments: ``NAME.png`` (150 dpi) and ``NAME.pdf`` in the ``--out`` folder, and
the line that says where they went and how long the run took; and the command line those scripts share (``--smoke``,
``--out``, optionally ``--seed``) with the start of the run it times. The scripts import it as a sibling module (Python
puts a script's own folder first on ``sys.path``)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from landscape.plot import save


def begin(
    doc: str, out: Path, full: dict, smoke: dict, argv: list[str] | None, seed_help: str | None = None
) -> tuple[argparse.Namespace, dict, float]:
    """Parse ``--smoke``, ``--out`` (default ``out``) and, when ``seed_help`` names what it seeds, ``--seed`` (default
    0) from ``argv``; run on one torch thread; return the arguments, the configuration (``smoke`` under ``--smoke``,
    else ``full``) and the start time (``time.perf_counter()``) for :func:`save_png_and_pdf`."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny configuration for CI (seconds)")
    if seed_help is not None:
        parser.add_argument("--seed", type=int, default=0, help=seed_help)
    parser.add_argument("--out", type=Path, default=out, help="folder for the figures")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    return args, smoke if args.smoke else full, time.perf_counter()


def save_png_and_pdf(fig, out: Path, name: str, start: float) -> None:
    """Write ``out/name.png`` and ``out/name.pdf`` (folders created) and print them with the seconds since ``start``
    (a ``time.perf_counter()`` value)."""
    save(fig, out / f"{name}.png", dpi=150)
    save(fig, out / f"{name}.pdf")
    print(f"\nwrote {out / f'{name}.png'} and .pdf in {time.perf_counter() - start:.0f} s")
