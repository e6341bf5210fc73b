"""The comparison of a command's JSON output on several ranks with one process's, shared by the torchrun tests."""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator
from typing import Any

import numpy as np

# Ritz residuals and error bounds are differences of O(||H||) vectors: their rounding error is absolute, ~eps ||H||.
TOLERANT = ("residual", "error_bound")
# Durations written inside descriptions ("exact (backpack-for-pytorch 1.7.1, DiagHessian, 0.019 s)") are timings.
DURATION = re.compile(r"\b\d+(\.\d+)? s\b")


def _leaves(tree: Any, ignore: Collection[str], path: str = "") -> Iterator[tuple[str, Any]]:
    """``(path, value)`` of every number, flag, string and null of ``tree`` outside the keys in ``ignore``."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key not in ignore:
                yield from _leaves(value, ignore, f"{path}/{key}")
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from _leaves(value, ignore, f"{path}/{i}")
    else:
        yield path, tree


def assert_same_numbers(got: Any, want: Any, *, rtol: float, atol: float, ignore: Collection[str]) -> None:
    """The same keys and types; floats within ``rtol`` (paths naming a :data:`TOLERANT` quantity: or ``atol``
    absolute), NaN equal to NaN; ints, flags, strings (strict JSON's "nan" and "inf" among them; durations in them
    masked) and nulls equal."""
    got_leaves, want_leaves = dict(_leaves(got, ignore)), dict(_leaves(want, ignore))
    assert got_leaves.keys() == want_leaves.keys()
    for path, w in want_leaves.items():
        g = got_leaves[path]
        assert type(g) is type(w), f"{path}: {g!r} vs {w!r}"
        if isinstance(w, float):
            tolerance = atol if any(word in path for word in TOLERANT) else 0.0
            assert np.isclose(g, w, rtol=rtol, atol=tolerance, equal_nan=True), f"{path}: {g!r} vs {w!r}"
        elif isinstance(w, str):
            assert DURATION.sub("T s", g) == DURATION.sub("T s", w), f"{path}: {g!r} vs {w!r}"
        else:
            assert g == w, f"{path}: {g!r} vs {w!r}"
