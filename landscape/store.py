"""Results kept in the HDF5 cache under a content key, looked up before and stored after computing them: one store
for the CLI, the report, spectra and surfaces.

:func:`remember` is the one path: the key of the problem, the analysis kind and its settings
(:func:`landscape.cache.key_for`), a lookup decided by rank 0 under ``torchrun`` (rank 0 alone holds the file), the
result rebuilt on every rank by a :class:`Codec`, else computed on every rank (their collectives match) and stored by
rank 0. A :class:`Codec` turns a result into arrays and attributes and back; :data:`TAGGED_JSON` stores any nest of
dataclasses, arrays, tensors, tuples and dicts as tagged JSON in one ``uint8`` array, and only dataclasses defined in
``landscape`` modules are rebuilt from a file (anything else is refused). A result stored point by point while it is
computed (a loss surface) goes through :func:`resume_grid` instead: the same key and rank-0 lookup, handing over
what an interrupted run already finished.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import torch

from landscape.cache import Cache, CacheError, GridEntry, opened
from landscape.distributed import decided_by_rank0

T = TypeVar("T")
KIND_PREFIX = "report-"
#: The analyses whose result depends on the data only through the full-data loss, so that one stored result answers
#: any batching or sharding of the same examples (``order_free`` of :func:`remember`), by the names the command line
#: (``spectrum`` only without ``--subsets``) and the report (``interpolation``) store them under.
ORDER_FREE_ANALYSES = frozenset(
    {"spectrum", "eigen", "trace", "density", "interpolate", "interpolation", "sharpness", "roughness"}
)


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


@dataclass(frozen=True)
class Codec(Generic[T]):
    """How results of one type are stored: ``encode(result) -> (arrays, attrs)`` and ``decode(arrays, attrs)``.

    ``encode`` may raise ``TypeError``/``ValueError`` for a result it cannot store (it is then returned unstored);
    ``decode`` may raise ``KeyError``/``TypeError``/``ValueError`` for an entry another version wrote (it is then
    recomputed and replaced).
    """

    encode: Callable[[T], tuple[Mapping[str, np.ndarray], Mapping[str, Any]]]
    decode: Callable[[Mapping[str, np.ndarray], Mapping[str, Any]], T]


def _encode_payload(value: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    text = json.dumps(encode(value), allow_nan=False)
    return {"payload": np.frombuffer(text.encode(), dtype=np.uint8)}, {}


def _decode_payload(arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> Any:
    return decode(json.loads(arrays["payload"].tobytes().decode()))


TAGGED_JSON: Codec[Any] = Codec(_encode_payload, _decode_payload)

_STALE = (KeyError, TypeError, ValueError, AttributeError, ImportError)


def remember(
    cache: Cache | str | os.PathLike[str] | None,
    problem: Any,
    kind: str,
    config: Mapping[str, Any],
    compute: Callable[[], T],
    *,
    codec: Codec[T] = TAGGED_JSON,
    order_free: bool = False,
    attrs: Mapping[str, Any] | None = None,
    on_miss: Callable[[Cache, str], None] | None = None,
) -> tuple[T, bool]:
    """``(result, from_cache)``: the ``kind`` result stored for this problem and ``config``, else ``compute()``, stored.

    Parameters
    ----------
    cache
        An open :class:`~landscape.cache.Cache` (left open), a path (opened for the lookup and again for the store,
        so the lock is not held while computing), or ``None`` (just compute). Under ``torchrun`` rank 0's decides and
        the others' is ignored.
    problem
        What the content key describes (weights, data, loss, mode, dtype, parameter selection); its ``ranks``, if
        any, are the processes that share the lookup.
    kind, config
        The analysis and its settings, both part of the key.
    codec
        How the result is stored (default :data:`TAGGED_JSON`).
    order_free
        A result of the full-data loss alone, the same for any batching or sharding (:func:`~landscape.cache.key_for`).
    attrs
        Extra provenance stored beside the result (JSON-able).
    on_miss
        Called on rank 0 as ``on_miss(store, key)`` before computing a result the cache does not hold.

    Raises
    ------
    CacheError
        The key holds an entry of another kind (the file is left untouched).
    """
    ranks = getattr(problem, "ranks", None)
    key = None

    def lookup() -> tuple[dict, dict] | None:
        nonlocal key
        if cache is None:
            return None
        with opened(cache) as store:
            key = store.key_for(problem, kind, dict(config), order_free=order_free)
            entry = store.get(key)
            if entry is not None and entry.kind != kind:
                raise CacheError(
                    f"{store.path}: the entry {key[:12]}... is a {entry.kind!r}, not a {kind!r}; the file was left "
                    "untouched. Fix: use another output directory"
                )
            if entry is None and on_miss is not None:
                on_miss(store, key)
            return None if entry is None else (entry.arrays, entry.attrs)

    found = decided_by_rank0(ranks, lookup, "broadcast of a cache lookup")
    if found is not None:
        try:
            return codec.decode(*found), True
        except _STALE:
            pass  # written by another version of the result type: recompute and replace it (the same on every rank)
    result = compute()
    if key is None:  # no cache, or not rank 0
        return result, False
    try:
        arrays, extra = codec.encode(result)
    except (TypeError, ValueError):
        return result, False
    with opened(cache) as store:
        store.put(key, kind, arrays, {**extra, **(attrs or {})})
    return result, False


@dataclass(frozen=True)
class GridProgress:
    """What a grid entry holds when a run starts: the ``done`` mask, each field's values so far (NaN where not
    done), the attributes of a finished entry (``None`` while unfinished), and where it is (``None`` without one)."""

    done: np.ndarray
    values: dict[str, np.ndarray]
    finished: dict[str, Any] | None
    path: str | None
    key: str | None


def resume_grid(
    stack: contextlib.ExitStack,
    cache: Cache | str | os.PathLike[str] | None,
    problem: Any,
    kind: str,
    config: Mapping[str, Any] | Callable[[], Mapping[str, Any]],
    *,
    shape: tuple[int, ...],
    fields: Sequence[str],
    arrays: Mapping[str, np.ndarray] | Callable[[], Mapping[str, np.ndarray]],
    attrs: Mapping[str, Any] | None = None,
    order_free: bool = False,
) -> tuple[GridProgress, GridEntry | None]:
    """``(progress, entry)``: the resumable grid entry of this problem, ``kind`` and ``config``, opened on rank 0.

    Rank 0 opens ``cache`` in ``stack`` (kept open, and locked, until the stack closes), creates or checks the entry
    (:meth:`~landscape.cache.Cache.grid`) and reads its progress, which every rank of ``problem.ranks`` receives
    (:func:`~landscape.distributed.decided_by_rank0`); ``entry`` is rank 0's, to write finished points into, and
    ``None`` elsewhere or without a cache. ``config`` and ``arrays`` may be callables, evaluated on rank 0 alone.
    """
    entry: GridEntry | None = None

    def read() -> GridProgress:
        nonlocal entry
        if cache is None:
            nothing = np.full(shape, np.nan)
            return GridProgress(np.zeros(shape, dtype=bool), {f: nothing for f in fields}, None, None, None)
        store = stack.enter_context(opened(cache))
        settings = dict(config() if callable(config) else config)
        key = store.key_for(problem, kind, settings, order_free=order_free)
        static = arrays() if callable(arrays) else arrays
        extra = {"config": settings, **(attrs or {})}
        entry = store.grid(key, shape=shape, fields=tuple(fields), arrays=static, attrs=extra)
        finished = dict(entry.attrs) if entry.complete else None
        return GridProgress(entry.done, {f: entry.values(f) for f in fields}, finished, str(store.path), key)

    progress = decided_by_rank0(getattr(problem, "ranks", None), read, "broadcast of the cache's progress")
    return progress, entry


def cached(
    store: Cache | None,
    problem: Any,
    name: str,
    config: dict[str, Any],
    compute: Callable[[], T],
    *,
    order_free: bool = False,
) -> tuple[T, bool]:
    """A report analysis through :func:`remember`: kind ``"report-<name>"``, stored as :data:`TAGGED_JSON`."""
    return remember(
        store, problem, KIND_PREFIX + name, config, compute, order_free=order_free, attrs={"config": config}
    )
