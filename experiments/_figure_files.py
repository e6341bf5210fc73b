"""The figure files of the README experiments: ``NAME.png`` (150 dpi) and ``NAME.pdf`` in the ``--out`` folder, and
the line that says where they went and how long the run took. The scripts import it as a sibling module (Python puts
a script's own folder first on ``sys.path``)."""

from __future__ import annotations

import time
from pathlib import Path

from landscape.plot import save


def save_png_and_pdf(fig, out: Path, name: str, start: float) -> None:
    """Write ``out/name.png`` and ``out/name.pdf`` (folders created) and print them with the seconds since ``start``
    (a ``time.perf_counter()`` value)."""
    save(fig, out / f"{name}.png", dpi=150)
    save(fig, out / f"{name}.pdf")
    print(f"\nwrote {out / f'{name}.png'} and .pdf in {time.perf_counter() - start:.0f} s")
