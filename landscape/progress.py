"""Progress bars for long loops: a tqdm bar with an ETA when enabled, a silent stand-in otherwise.

The library is silent by default: every analysis takes ``progress: bool = False`` and only the command line turns it
on (when stderr is a terminal and ``--quiet`` is not given). Bars advance per unit of real work (a chunk of grid
points, a Lanczos step, a block of probes, a direction), never per matrix-vector product inside a hot loop, and
never change a result: they only count.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import IO, Any


class NoProgress:
    """The disabled bar: iterates like the iterable it wraps and ignores every update."""

    def __init__(self, iterable: Iterable[Any] | None = None):
        self._iterable = iterable

    def __iter__(self) -> Iterator[Any]:
        return iter(() if self._iterable is None else self._iterable)

    def update(self, n: float = 1) -> None:
        """Ignore an advance of ``n`` units."""

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        """Ignore a status text."""

    def close(self) -> None:
        """Nothing to close."""

    def __enter__(self) -> NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(
    iterable_or_total: Iterable[Any] | int | None = None,
    desc: str = "",
    enabled: bool = False,
    *,
    unit: str = "it",
    file: IO[str] | None = None,
) -> Any:
    """A progress bar over an iterable, or over ``total`` units advanced with ``.update(n)``.

    Parameters
    ----------
    iterable_or_total
        An iterable to wrap (its length, if known, gives the ETA), an int number of units, or ``None`` (unknown).
    desc
        Label in front of the bar.
    enabled
        ``False`` (default) returns a :class:`NoProgress` that writes nothing.
    unit
        Name of one unit (``"point"``, ``"step"``, ...).
    file
        Stream to write to; default ``sys.stderr`` at call time.

    Returns
    -------
    tqdm.tqdm or NoProgress
        Usable as an iterable, with ``update(n)``, ``set_postfix_str(s)``, ``close()`` and as a context manager.
    """
    iterable = None if iterable_or_total is None or isinstance(iterable_or_total, int) else iterable_or_total
    total = iterable_or_total if isinstance(iterable_or_total, int) else None
    if not enabled:
        return NoProgress(iterable)
    from tqdm import tqdm

    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr if file is None else file,
        leave=False,
        dynamic_ncols=True,
        mininterval=0.2,
    )


__all__ = ["NoProgress", "progress"]
