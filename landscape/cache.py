"""A content-addressed HDF5 cache of results: one file per run directory, safe against crashes and second writers.

Entries are keyed by a sha256 over what determines a result: the parameter bytes, a fingerprint of the data, the
method's settings and the library version (:meth:`Cache.key`, :meth:`Cache.key_for`), never by file names, so stale
results are never reused silently. Each entry stores arrays and JSON-able provenance (seeds, versions, mode policy,
wall time, creation time). A grid entry (:meth:`Cache.grid`) holds a surface being computed: a value per point and
field, NaN until written, and a ``done`` mask, so an interrupted run resumes exactly where it stopped.

Safety:

- every mutation is a transaction on a temporary copy in the same directory (copy, modify, flush, fsync,
  ``os.replace``), so the file on disk is at every moment a complete old or new version, even under ``SIGKILL``;
- a writer holds an exclusive ``flock`` on ``<path>.lock`` for its lifetime, which the OS drops if the process dies;
- an existing file that is not a landscape cache (not HDF5, truncated, foreign, newer format) is reported and never
  written.

Layout (HDF5)::

    /                         attrs: format="landscape-cache", format_version, landscape_version, created
    /entries/<key>            attrs: _kind, user attributes (nested values as JSON strings listed in _json)
    /entries/<key>/arrays/*   the entry's arrays (a grid's static arrays: coordinates, directions)
    /entries/<key>/values/*   grids only: one float64 dataset of the grid's shape per field, NaN until done
    /entries/<key>/done       grids only: bool mask of the points written
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import inspect
import json
import math
import os
import re
import secrets
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import filelock
import h5py
import numpy as np
import torch
from torch import Tensor

from landscape._version import __version__

FORMAT = "landscape-cache"
FORMAT_VERSION = 1

# Lock files are flock-ed, so the OS releases them when a writer dies. Newer filelock versions fall back to a soft
# lock (a marker file) where flock is unsupported; such a lock would outlive a killed writer, so refuse it.
_LOCK_OPTIONS = (
    {"fallback_to_soft": False}
    if "fallback_to_soft" in inspect.signature(filelock.FileLock.__init__).parameters
    else {}
)

_RESERVED_PREFIX = "_"
_KIND, _JSON, _SHAPE, _FIELDS = "_kind", "_json", "_grid_shape", "_grid_fields"


class CacheError(Exception):
    """The cache file cannot be used: foreign, corrupt, of a newer format, or an entry does not match the request."""


class CacheLockedError(CacheError):
    """Another process holds the cache's write lock."""


def _library_version() -> str:
    return __version__


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------------- content keys
def _json_default(obj: object) -> object:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (torch.dtype, torch.device)):
        return str(obj)
    raise TypeError(
        f"cannot store {type(obj).__name__} as JSON: cache configs and attributes take str, numbers, bool, None, "
        "lists and dicts (convert arrays with .tolist(), store big ones as arrays)"
    )


def _canonical_json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_json_default)


def _update(h: hashlib._Hash, tag: str, payload: bytes) -> None:
    # Length-prefixed fields: no two different inputs concatenate to the same byte stream.
    h.update(f"{tag}:{len(payload)}:".encode())
    h.update(payload)


def _tensor_bytes(t: Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def content_key(
    *,
    params: Tensor | Mapping[str, Tensor],
    data_fingerprint: str,
    config: Mapping[str, Any],
    version: str | None = None,
) -> str:
    """sha256 of (parameter bytes, data fingerprint, canonical JSON of ``config``, library version).

    Parameters
    ----------
    params
        One tensor, or a dict ``name -> tensor`` hashed in sorted name order. Dtype and shape are hashed with the
        bytes, so a cast or a reshape changes the key.
    data_fingerprint
        :func:`landscape.data.data_fingerprint` of the data.
    config
        Every setting that changes the result; JSON-able (dict keys are sorted, so their order does not matter).
    version
        Library version; default ``landscape.__version__`` (a new version never reuses old results).

    Returns
    -------
    str
        64 hexadecimal digits.
    """
    h = hashlib.sha256(b"landscape.cache.key/v1")
    named = {"": params} if isinstance(params, Tensor) else params
    if not isinstance(named, Mapping) or not all(isinstance(t, Tensor) for t in named.values()):
        raise TypeError("params must be a tensor or a dict name -> tensor")
    _update(h, "n", str(len(named)).encode())
    for name in sorted(named):
        t = named[name]
        _update(h, "p", f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        _update(h, "b", _tensor_bytes(t))
    _update(h, "d", str(data_fingerprint).encode())
    _update(h, "c", _canonical_json(dict(config)).encode())
    _update(h, "v", (version if version is not None else _library_version()).encode())
    return h.hexdigest()


def _loss_description(loss_fn: object) -> dict[str, Any]:
    # repr() of a loss module hides options such as label_smoothing; its public scalar attributes show them.
    options = {
        k: v
        for k, v in sorted(vars(loss_fn).items())
        if not k.startswith("_") and k != "training" and (v is None or isinstance(v, (bool, int, float, str)))
    }
    return {"type": type(loss_fn).__qualname__, "options": options}


def key_for(problem: Any, kind: str, config: Mapping[str, Any], *, order_free: bool = False) -> str:
    """Content key of a result of ``kind`` computed on ``problem`` with ``config``.

    Hashes the problem's selected parameters together with the rest of the model state (unselected parameters and
    buffers such as BatchNorm statistics, which change the loss too), the fingerprint of its data, its settings
    (:meth:`Problem.describe`: mode policy, dtype, device, parameter selection), the model's ``repr`` and the loss
    options. Changes to a model's Python code that its ``repr`` does not show are not detected: use a fresh output
    directory after editing a model.

    The data fingerprint is :meth:`Problem.sample_fingerprint` (the set of examples) when ``order_free`` (a result
    that depends on the data only through the full-data loss, e.g. a surface or a spectrum without data subsets)
    and the problem is in eval mode: such a result is shared by any batching and any number of data-parallel ranks.
    Otherwise it is :meth:`Problem.data_fingerprint` (the batches in order).
    """
    state = problem.key_state()
    full = {
        "kind": str(kind),
        # Without the ranks and shard sizes of a data-parallel run: the data fingerprint describes the whole data
        # set, so a result computed with one number of ranks is reused (a surface resumed) with another.
        "problem": {k: v for k, v in problem.describe().items() if k not in ("distributed", "replicated", "sharded")},
        "model": repr(problem.model),
        "loss": _loss_description(problem.loss_fn),
        "config": dict(config),
    }
    by_set = order_free and problem.mode == "eval"
    fingerprint = problem.sample_fingerprint() if by_set else problem.data_fingerprint()
    return content_key(params=state, data_fingerprint=fingerprint, config=full)


# ---------------------------------------------------------------------------------------------------- attributes
def _check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
        raise ValueError(f"{what} name {name!r} is not usable in HDF5: use a non-empty string without '/'")


def _write_attrs(obj: h5py.HLObject, attrs: Mapping[str, Any]) -> None:
    """Store scalars natively and everything else (dicts, lists, None) as canonical JSON strings."""
    as_json = json.loads(obj.attrs.get(_JSON, "[]"))
    for name, value in attrs.items():
        _check_name(name, "attribute")
        if name.startswith(_RESERVED_PREFIX):
            raise ValueError(f"attribute names starting with {_RESERVED_PREFIX!r} are reserved by the cache: {name!r}")
        if isinstance(value, np.generic):
            value = value.item()
        native = isinstance(value, (bool, float, str)) or (isinstance(value, int) and -(2**63) <= value < 2**63)
        if name in as_json:
            as_json.remove(name)
        if native:
            obj.attrs[name] = value
        else:
            try:
                obj.attrs[name] = _canonical_json(value)
            except TypeError as err:
                raise TypeError(f"attribute {name!r}: {err}") from None
            as_json.append(name)
    obj.attrs[_JSON] = json.dumps(sorted(as_json))


def _read_attrs(obj: h5py.HLObject) -> dict[str, Any]:
    as_json = set(json.loads(obj.attrs.get(_JSON, "[]")))
    out: dict[str, Any] = {}
    for name, value in obj.attrs.items():
        if name.startswith(_RESERVED_PREFIX):
            continue
        if name in as_json:
            out[name] = json.loads(value)
        elif isinstance(value, bytes):
            out[name] = value.decode()
        elif isinstance(value, np.generic):
            out[name] = value.item()
        else:
            out[name] = value
    return out


def _write_arrays(group: h5py.Group, arrays: Mapping[str, Any]) -> None:
    for name, value in arrays.items():
        _check_name(name, "array")
        if isinstance(value, Tensor):
            raise TypeError(f"array {name!r} is a torch tensor: pass value.cpu().numpy()")
        arr = np.asarray(value)
        if arr.dtype == object:
            raise TypeError(f"array {name!r} has dtype object, which HDF5 cannot store: pass a numeric array")
        group.create_dataset(name, data=arr)


def _read_arrays(group: h5py.Group) -> dict[str, np.ndarray]:
    return {name: np.asarray(ds[()]) for name, ds in group.items()}


# ---------------------------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class CacheEntry:
    """One stored result: its key, kind (``"spectrum"``, ``"surface"``, ...), arrays and provenance attributes.

    For a grid entry, ``arrays`` holds the static arrays, one array per field and the ``done`` mask.
    """

    key: str
    kind: str
    arrays: dict[str, np.ndarray]
    attrs: dict[str, Any]


class Cache:
    """An HDF5 result cache at ``path`` (see the module docstring).

    Parameters
    ----------
    path
        The cache file; created (with its directory) if missing.
    timeout
        Seconds to wait for another process's write lock before raising :class:`CacheLockedError`; ``0`` fails at
        once, ``None`` waits indefinitely.
    readonly
        Open without the write lock (the file must exist): reading is safe while another process writes, since the
        file is only ever replaced whole.

    Raises
    ------
    CacheError
        The file exists but is not a landscape cache of a readable format version (it is left untouched).
    CacheLockedError
        Another process is writing this cache.
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout: float | None = 0.0, readonly: bool = False):
        self.path = os.path.abspath(os.fspath(path))
        self.readonly = readonly
        self._lock: filelock.BaseFileLock | None = None
        if os.path.lexists(self.path) or readonly:
            self._validate()
        if readonly:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self._lock = filelock.FileLock(
            self.path + ".lock",
            timeout=-1 if timeout is None else float(timeout),
            thread_local=False,
            **_LOCK_OPTIONS,
        )
        try:
            self._lock.acquire()
        except filelock.Timeout:
            self._lock = None
            raise CacheLockedError(
                f"another process is writing the cache {self.path} (it holds {self.path}.lock): wait for it to "
                "finish, pass a timeout to wait, or use another output directory"
            ) from None
        try:
            self._remove_stale_temporaries()
            if os.path.lexists(self.path):
                self._validate()  # the file may have appeared while we waited for the lock
            else:
                self._create()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Release the write lock (idempotent). Everything is already on disk."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __repr__(self) -> str:
        state = "read-only" if self.readonly else ("writer" if self._lock is not None else "closed")
        return f"Cache({self.path!r}, {state})"

    # ------------------------------------------------------------------ file format
    def _untouched(self, reason: str, fix: str = "move it away or choose another output directory") -> CacheError:
        return CacheError(f"{self.path}: {reason}; the file was left untouched. Fix: {fix}")

    def _validate(self) -> None:
        if not os.path.exists(self.path):
            raise CacheError(f"{self.path}: no cache file there (a read-only cache must exist)")
        if os.path.isdir(self.path):
            raise CacheError(f"{self.path} is a directory, not a cache file: pass the path of an .h5 file inside it")
        if not h5py.is_hdf5(self.path):
            raise self._untouched("not an HDF5 file, so not a landscape cache")
        try:
            with h5py.File(self.path, "r", locking=False) as f:
                fmt = f.attrs.get("format")
                version = f.attrs.get("format_version")
                written_by = f.attrs.get("landscape_version", "?")
                if "entries" in f and not isinstance(f["entries"], h5py.Group):
                    raise self._untouched("corrupt cache (/entries is not a group)")
        except OSError as err:
            raise self._untouched(f"corrupt or truncated HDF5 file ({err})") from None
        if fmt != FORMAT:
            raise self._untouched(f"an HDF5 file without the format={FORMAT!r} marker, so not a landscape cache")
        if not isinstance(version, (int, np.integer)) or version < 1:
            raise self._untouched(f"a landscape cache with an invalid format_version {version!r} (corrupt)")
        if version > FORMAT_VERSION:
            raise self._untouched(
                f"written by landscape {written_by} in cache format version {int(version)}, newer than the "
                f"version {FORMAT_VERSION} this landscape reads",
                fix="upgrade landscape, or use another output directory",
            )

    def _temporary(self) -> str:
        # Not tempfile.mkstemp: its 0600 mode would become the cache's; O_CREAT's 0666 honours the umask.
        directory, name = os.path.split(self.path)
        tmp = os.path.join(directory, f".{name}.tx-{secrets.token_hex(8)}.tmp")
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        return tmp

    def _remove_stale_temporaries(self) -> None:
        # Holding the lock, any transaction file is left over from a writer that died before os.replace.
        directory, name = os.path.split(self.path)
        pattern = re.compile(rf"^\.{re.escape(name)}\.tx-[0-9a-f]{{16}}\.tmp$")
        for entry in os.listdir(directory):
            if pattern.match(entry):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(directory, entry))

    def _commit(self, tmp: str) -> None:
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        directory = os.open(os.path.dirname(self.path), os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    @contextlib.contextmanager
    def _replacing(self) -> Iterator[str]:
        """A temporary file that atomically replaces the cache file when the block succeeds and is removed when not."""
        tmp = self._temporary()
        try:
            yield tmp
            self._commit(tmp)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _create(self) -> None:
        with self._replacing() as tmp:
            # fsm + persist: space freed by replaced entries is reused instead of growing the file.
            with h5py.File(tmp, "w", libver=("v110", "latest"), fs_strategy="fsm", fs_persist=True, locking=False) as f:
                f.attrs["format"] = FORMAT
                f.attrs["format_version"] = FORMAT_VERSION
                f.attrs["landscape_version"] = _library_version()
                f.attrs["created"] = _now()
                f.create_group("entries")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[h5py.File]:
        """Modify a copy of the file and atomically replace the original with it when the block succeeds."""
        if self.readonly:
            raise CacheError(f"{self.path} was opened read-only: open Cache(path) without readonly=True to write")
        if self._lock is None:
            raise CacheError(f"the cache {self.path} is closed: open a new Cache to write")
        with self._replacing() as tmp:
            shutil.copyfile(self.path, tmp)
            shutil.copymode(self.path, tmp)
            try:
                f = h5py.File(tmp, "r+", locking=False)
            except OSError as err:
                raise self._untouched(f"corrupt HDF5 file ({err})") from None
            with f:
                yield f
                f.flush()

    @contextlib.contextmanager
    def _reading(self) -> Iterator[h5py.File]:
        try:
            f = h5py.File(self.path, "r", locking=False)
        except OSError as err:
            raise self._untouched(f"corrupt HDF5 file ({err})") from None
        with f:
            try:
                yield f
            except (OSError, KeyError) as err:
                raise self._untouched(f"corrupt cache entry ({err})") from None

    # ------------------------------------------------------------------ keys
    key = staticmethod(content_key)
    key_for = staticmethod(key_for)

    def keys(self) -> list[str]:
        """Keys of all stored entries, sorted."""
        with self._reading() as f:
            return sorted(f["entries"].keys())

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str) or "/" in key or not key:
            return False
        with self._reading() as f:
            return key in f["entries"]

    def __len__(self) -> int:
        with self._reading() as f:
            return len(f["entries"])

    def attributes(self, kind: str | None = None) -> dict[str, dict[str, Any]]:
        """``{key: attrs}`` of every entry (of ``kind`` only, if given), read without their arrays."""
        with self._reading() as f:
            return {
                key: _read_attrs(group)
                for key, group in f["entries"].items()
                if kind is None or str(group.attrs[_KIND]) == kind
            }

    # ------------------------------------------------------------------ generic entries
    def put(self, key: str, kind: str, arrays: Mapping[str, Any], attrs: Mapping[str, Any] | None = None) -> None:
        """Store (or replace) an entry in one atomic transaction.

        ``attrs`` must be JSON-able (nested dicts and lists are stored as JSON strings; tuples come back as lists);
        ``created`` and ``landscape_version`` are added unless given. Names starting with ``_`` are reserved.
        """
        _check_name(key, "key")
        with self._transaction() as f:
            entries = f["entries"]
            if key in entries:
                del entries[key]
            group = entries.create_group(key)
            group.attrs[_KIND] = str(kind)
            _write_attrs(group, {"created": _now(), "landscape_version": _library_version(), **(attrs or {})})
            _write_arrays(group.create_group("arrays"), arrays)

    def get(self, key: str) -> CacheEntry | None:
        """The entry stored under ``key``, or ``None``."""
        if key not in self:
            return None
        with self._reading() as f:
            group = f["entries"][key]
            arrays = _read_arrays(group["arrays"])
            if _SHAPE in group.attrs:
                for name, ds in group["values"].items():
                    arrays[name] = np.asarray(ds[()])
                arrays["done"] = np.asarray(group["done"][()])
            return CacheEntry(key=key, kind=str(group.attrs[_KIND]), arrays=arrays, attrs=_read_attrs(group))

    # ------------------------------------------------------------------ grids
    def grid(
        self,
        key: str,
        *,
        shape: Sequence[int] | None = None,
        fields: Sequence[str] = ("loss", "accuracy"),
        arrays: Mapping[str, Any] | None = None,
        attrs: Mapping[str, Any] | None = None,
        kind: str = "surface",
    ) -> GridEntry:
        """Create or reopen a resumable grid of ``shape`` points with one float64 value per point and field.

        A new grid stores ``arrays`` (static: coordinates, directions), NaN values and an all-false ``done`` mask in
        one transaction. An existing one is returned with its progress after checking that ``shape`` and ``fields``
        (and any ``arrays`` given) equal the stored ones; ``attrs`` of a reopened grid are kept as first stored.
        ``shape=None`` reopens whatever is stored, without checking shape or fields.

        Raises
        ------
        CacheError
            The stored grid has another shape, other fields or other static arrays, or the key holds no grid.
        """
        _check_name(key, "key")
        fields = tuple(fields)
        for name in fields:
            _check_name(name, "field")
        if len(set(fields)) != len(fields) or not fields:
            raise ValueError(f"fields must be distinct and non-empty, got {fields}")
        if key in self:
            handle = GridEntry(self, key)
            handle._check(shape, None if shape is None else fields, arrays)
            return handle
        if shape is None:
            raise CacheError(f"{self.path} holds no grid under key {key[:12]}...: pass shape=... to create it")
        shape = tuple(int(s) for s in shape)
        if not shape or any(s < 1 for s in shape):
            raise ValueError(f"shape must be a non-empty tuple of positive ints, got {shape}")
        clash = set(arrays or {}) & {*fields, "done"}
        if clash:
            raise ValueError(f"static array names {sorted(clash)} clash with the fields or 'done': rename them")
        with self._transaction() as f:
            group = f["entries"].create_group(key)
            group.attrs[_KIND] = str(kind)
            group.attrs[_SHAPE] = np.asarray(shape, dtype=np.int64)
            group.attrs[_FIELDS] = json.dumps(list(fields))
            _write_attrs(group, {"created": _now(), "landscape_version": _library_version(), **(attrs or {})})
            _write_arrays(group.create_group("arrays"), arrays or {})
            values = group.create_group("values")
            for name in fields:
                values.create_dataset(name, data=np.full(shape, np.nan))
            group.create_dataset("done", data=np.zeros(shape, dtype=bool))
        return GridEntry(self, key)


def opened(cache: Cache | str | os.PathLike[str]) -> contextlib.AbstractContextManager[Cache]:
    """A context giving a :class:`Cache`: the one passed (left open on exit) or one opened at a path (closed)."""
    return contextlib.nullcontext(cache) if isinstance(cache, Cache) else Cache(cache)


def _same_array(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind in "fc":
        return bool(np.array_equal(a, b, equal_nan=True))
    return bool(np.array_equal(a, b))


class GridEntry:
    """A handle on a resumable grid in a :class:`Cache` (see :meth:`Cache.grid`); its state mirrors the file."""

    def __init__(self, cache: Cache, key: str):
        self.cache = cache
        self.key = key
        with cache._reading() as f:
            group = f["entries"][key]
            if _SHAPE not in group.attrs:
                raise CacheError(
                    f"{cache.path}: the entry {key[:12]}... is a {group.attrs[_KIND]!r} result, not a grid; the file "
                    "was left untouched. Fix: use another key or output directory"
                )
            self.kind = str(group.attrs[_KIND])
            self.shape = tuple(int(s) for s in group.attrs[_SHAPE])
            self.fields = tuple(json.loads(group.attrs[_FIELDS]))
            self.arrays = _read_arrays(group["arrays"])
            self.attrs = _read_attrs(group)
            self._values = {name: np.asarray(group["values"][name][()]) for name in self.fields}
            self._done = np.asarray(group["done"][()])

    def _check(
        self, shape: Sequence[int] | None, fields: tuple[str, ...] | None, arrays: Mapping[str, Any] | None
    ) -> None:
        problems = []
        if shape is not None and tuple(int(s) for s in shape) != self.shape:
            problems.append(f"shape {tuple(shape)} was asked, {self.shape} is stored")
        if fields is not None and fields != self.fields:
            problems.append(f"fields {fields} were asked, {self.fields} are stored")
        for name, value in (arrays or {}).items():
            if name not in self.arrays:
                problems.append(f"array {name!r} is not stored")
            elif not _same_array(np.asarray(value), self.arrays[name]):
                problems.append(f"array {name!r} differs from the stored one")
        if problems:
            raise CacheError(
                f"{self.cache.path}: the grid under key {self.key[:12]}... does not match the request ("
                + "; ".join(problems)
                + "); the file was left untouched. Fix: include every setting in the key, or use another output "
                "directory"
            )

    @property
    def done(self) -> np.ndarray:
        """Bool array of ``shape``: which points hold values (a copy)."""
        return self._done.copy()

    @property
    def complete(self) -> bool:
        return bool(self._done.all())

    def values(self, field: str) -> np.ndarray:
        """Float64 array of ``shape`` with the values of ``field``, NaN where not done (a copy)."""
        if field not in self._values:
            raise KeyError(f"no field {field!r}; the grid has {self.fields}")
        return self._values[field].copy()

    def write(self, flat_indices: Sequence[int] | np.ndarray, **field_values: Sequence[float] | np.ndarray) -> None:
        """Store values at the points ``flat_indices`` (C order) and mark them done, in one atomic transaction.

        Every field must be given, each with one value per index. On return the values are on disk.
        """
        idx = np.asarray(flat_indices)
        if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
            raise TypeError(f"flat_indices must be a 1-D sequence of ints, got shape {idx.shape} dtype {idx.dtype}")
        idx = idx.astype(np.int64)
        size = math.prod(self.shape)
        if idx.size and (idx.min() < 0 or idx.max() >= size):
            raise IndexError(f"flat_indices must lie in [0, {size}) for a grid of shape {self.shape}")
        if np.unique(idx).size != idx.size:
            raise ValueError("flat_indices contains duplicates")
        if set(field_values) != set(self.fields):
            raise ValueError(f"write needs exactly the fields {self.fields}, got {tuple(field_values)}")
        new = {}
        for name, vals in field_values.items():
            vals = np.asarray(vals, dtype=np.float64).reshape(-1)
            if vals.size != idx.size:
                raise ValueError(f"field {name!r} has {vals.size} values for {idx.size} indices")
            arr = self._values[name].copy()
            arr.reshape(-1)[idx] = vals
            new[name] = arr
        done = self._done.copy()
        done.reshape(-1)[idx] = True
        with self.cache._transaction() as f:
            group = f["entries"][self.key]
            for name, arr in new.items():
                group["values"][name][...] = arr
            group["done"][...] = done
        self._values, self._done = new, done

    def finish(self, attrs: Mapping[str, Any] | None = None) -> None:
        """Record final provenance (wall time, ...) and a ``finished`` time once every point is done."""
        if not self.complete:
            raise ValueError(f"{int((~self._done).sum())} of {self._done.size} points are not done yet")
        final = {"finished": _now(), **(attrs or {})}
        with self.cache._transaction() as f:
            _write_attrs(f["entries"][self.key], final)
        self.attrs = {**self.attrs, **final}

    def __repr__(self) -> str:
        return f"GridEntry({self.key[:12]}..., shape={self.shape}, fields={self.fields}, done={int(self._done.sum())})"
