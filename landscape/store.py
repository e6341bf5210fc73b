"""Analysis results kept in the HDF5 cache between report runs, rebuilt as the same frozen dataclasses.

A result (a nest of dataclasses, numpy arrays, tensors, tuples and dicts) is encoded as tagged JSON and stored as
one ``uint8`` array under the content key of the problem and the analysis settings (:meth:`Cache.key_for`), so a
report of unchanged weights, data and settings reuses it. Only dataclasses defined in ``landscape`` modules are
rebuilt from a file; anything else is refused. Under ``torchrun`` rank 0 alone holds the cache and its lookups
decide for every rank (:func:`cached`).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import math
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch

from landscape.cache import Cache
from landscape.distributed import decided_by_rank0

T = TypeVar("T")
KIND_PREFIX = "report-"


def encode(value: Any) -> Any:
    """Tagged JSON-able form of a result (dataclasses, arrays, tensors, tuples, dicts, numbers, strings)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        return {
            "__dataclass__": f"{cls.__module__}:{cls.__qualname__}",
            "fields": {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)},
        }
    if isinstance(value, np.ndarray):
        return {"__ndarray__": _floats(value.tolist()), "dtype": str(value.dtype), "shape": list(value.shape)}
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        return {
            "__tensor__": _floats(t.float().tolist() if t.dtype == torch.bfloat16 else t.tolist()),
            "dtype": str(t.dtype).replace("torch.", ""),
        }
    if isinstance(value, (torch.dtype, torch.device)):
        return str(value)
    if isinstance(value, np.generic):
        return encode(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v) for v in value]}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        # Pairs, not a JSON object: keys may be ints or tuples (e.g. an engine chosen per block width).
        return {"__dict__": [[encode(k), encode(v)] for k, v in value.items()]}
    if value is None or isinstance(value, (bool, int, str)):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} in a report cache entry")


def _floats(nested: Any) -> Any:
    if isinstance(nested, list):
        return [_floats(v) for v in nested]
    if isinstance(nested, float) and not math.isfinite(nested):
        return {"__float__": repr(nested)}
    return nested


def _unfloats(nested: Any) -> Any:
    if isinstance(nested, list):
        return [_unfloats(v) for v in nested]
    if isinstance(nested, dict):
        return float(nested["__float__"])
    return nested


def _class(name: str) -> type:
    module, _, qualname = name.partition(":")
    if module != "landscape" and not module.startswith("landscape."):
        raise ValueError(f"refusing to rebuild {name!r}: not a landscape result type")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and dataclasses.is_dataclass(obj)):
        raise ValueError(f"{name!r} is not a dataclass")
    return obj


def decode(value: Any) -> Any:
    """Inverse of :func:`encode`."""
    if isinstance(value, list):
        return [decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__dataclass__" in value:
        cls = _class(value["__dataclass__"])
        return cls(**{k: decode(v) for k, v in value["fields"].items()})
    if "__ndarray__" in value:
        return np.array(_unfloats(value["__ndarray__"]), dtype=value["dtype"]).reshape(value["shape"])
    if "__tensor__" in value:
        return torch.tensor(_unfloats(value["__tensor__"]), dtype=getattr(torch, value["dtype"]))
    if "__float__" in value:
        return float(value["__float__"])
    if "__tuple__" in value:
        return tuple(decode(v) for v in value["__tuple__"])
    if "__dict__" in value:
        return {decode(k): decode(v) for k, v in value["__dict__"]}
    raise ValueError(f"unknown tagged value with keys {sorted(value)}")


def _lookup(store: Cache | None, key: str | None, kind: str) -> str | None:
    """The stored payload (tagged JSON text) under ``key``, if it is a ``kind`` entry; ``None`` without a store."""
    if store is None:
        return None
    entry = store.get(key)
    if entry is None or entry.kind != kind or "payload" not in entry.arrays:
        return None
    return entry.arrays["payload"].tobytes().decode()


def cached(
    store: Cache | None,
    problem: Any,
    name: str,
    config: dict[str, Any],
    compute: Callable[[], T],
    *,
    order_free: bool = False,
) -> tuple[T, bool]:
    """``(result, from_cache)``: the result stored for this problem, analysis and config, else ``compute()``, stored.

    Without a store it just computes. A result that cannot be encoded is returned without being stored. On a
    problem spanning several ranks (:attr:`Problem.ranks`), rank 0's store decides for every rank: a stored result
    is handed to all of them, and on a miss every rank computes (their collectives match) and rank 0 stores it.
    ``order_free``: a result of the full-data loss alone (:func:`landscape.cache.key_for`).
    """
    kind = KIND_PREFIX + name
    key = store.key_for(problem, kind, config, order_free=order_free) if store is not None else None
    lookup = functools.partial(_lookup, store, key, kind)
    text = decided_by_rank0(getattr(problem, "ranks", None), lookup, "broadcast of a cache lookup")
    if text is not None:
        try:
            return decode(json.loads(text)), True
        except (KeyError, TypeError, ValueError, AttributeError, ImportError):
            pass  # written by another version of a result type: recompute and replace it (the same on every rank)
    result = compute()
    if store is None:
        return result, False
    try:
        text = json.dumps(encode(result), allow_nan=False)
    except (TypeError, ValueError):
        return result, False
    store.put(key, kind, {"payload": np.frombuffer(text.encode(), dtype=np.uint8)}, {"config": config})
    return result, False
