"""One conversion of results and settings to JSON: ``json.dumps(x, default=jsonable)`` or ``jsonable(x)``."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["field_dict", "jsonable", "strict_json"]


def jsonable(x: Any) -> Any:
    """``x`` with every container, array, tensor and result made of JSON types (recursively).

    Mappings become dicts with string keys, sequences lists, numpy scalars and 0-d tensors Python numbers, arrays and
    tensors nested lists, objects with ``to_dict()`` their dict, paths, dtypes and devices their names; anything else
    its ``str``. Non-finite floats stay floats (``json.dumps`` writes them as ``NaN``/``Infinity``); see
    :func:`strict_json` for strict JSON.
    """
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().tolist()
    if hasattr(x, "to_dict"):
        return jsonable(x.to_dict())
    return str(x)


def field_dict(result: Any, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """Every field of the dataclass ``result`` but those in ``exclude`` by name, in the order ``__init__`` takes them
    (as declared, the keyword-only ones last: a result's own fields before the seed, wall time and settings it
    inherits), with its value as it is (a shallow view, the start of a ``to_dict()`` that lists its fields)."""
    ordered = sorted(dataclasses.fields(result), key=lambda f: bool(f.kw_only))
    return {f.name: getattr(result, f.name) for f in ordered if f.name not in exclude}


def strict_json(x: Any) -> Any:
    """:func:`jsonable` with every non-finite float written as the string ``"nan"``, ``"inf"`` or ``"-inf"``."""
    x = jsonable(x)
    if isinstance(x, dict):
        return {k: strict_json(v) for k, v in x.items()}
    if isinstance(x, list):
        return [strict_json(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return x
