"""Data-parallel analyses on ``torch.distributed``: each rank holds a shard of the data, products are all-reduced.

With the data split into shards ``D_r`` of ``n_r`` samples (uneven shards allowed) the full-data loss is the
size-weighted mean over *all* ``N = sum_r n_r`` samples, so every rank weighs its batches by ``n_b / N`` and

    L(w) = sum_r L_r(w),    H v = sum_r H_r v,    L_r(w) = sum_{b in D_r} (n_b / N) L_b(w)

(``reduction="sum"`` losses: weight 1). One ``all_reduce(SUM)`` of the partial product per matrix-vector product
(or per block of vectors) gives every rank the full product; probes come from the same seed on every rank, so every
estimator (Lanczos, Hutch++, SLQ, power iteration) runs unchanged and returns the same result on all ranks. The
global sample count ``N`` costs one ``all_gather`` of the local counts, once per Problem.

A rank that fails (an exception, or killed) makes the other ranks' next collective fail, either at once (the
connection closes) or after the process group's timeout; :class:`DistributedError` then names the rank and the
collective, and says that committed cache chunks are kept.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from landscape.batch import as_tree, num_examples, tensor_leaves

DEFAULT_TIMEOUT = 300.0
TIMEOUT_ENV = "LANDSCAPE_DIST_TIMEOUT"
# How long a rank waits at exit for the others before destroying the process group anyway (see _destroy).
EXIT_BARRIER_SECONDS = 30.0
DISTRIBUTED_CHOICES = (None, "auto", True, False, "replicated")


class DistributedError(RuntimeError):
    """A collective failed: another rank raised, was killed, or did not answer within the timeout."""


@dataclass(frozen=True)
class ShardInfo:
    """Where this rank stands in a data-parallel Problem (recorded in ``Problem.describe()["distributed"]``).

    Attributes
    ----------
    rank, world_size
        This process's rank and the number of ranks in the group.
    backend
        ``"gloo"`` (CPU) or ``"nccl"`` (CUDA).
    shard_sizes
        Samples held by each rank, in rank order; their sum is the global sample count.
    batch_counts
        Non-empty batches held by each rank, in rank order (the whole data set's batches are theirs in that order).
    """

    rank: int
    world_size: int
    backend: str
    shard_sizes: tuple[int, ...]
    batch_counts: tuple[int, ...]

    @property
    def num_samples(self) -> int:
        return sum(self.shard_sizes)

    @property
    def num_batches(self) -> int:
        return sum(self.batch_counts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "world_size": self.world_size,
            "backend": self.backend,
            "shard_sizes": list(self.shard_sizes),
            "batch_counts": list(self.batch_counts),
        }


class DataParallel:
    """The collectives a data-parallel :class:`~landscape.problem.Problem` needs, with a communication count.

    Parameters
    ----------
    group : ProcessGroup, optional
        Default: the default (world) group, which must be initialised.

    Attributes
    ----------
    num_all_reduces, bytes_all_reduced
        All-reduces issued by this rank and the payload bytes it contributed to them (``numel * element_size``; the
        bytes on the wire are about twice that per rank for a ring all-reduce).
    """

    def __init__(self, group: Any = None):
        if not dist.is_available() or not dist.is_initialized():
            raise DistributedError(
                "torch.distributed is not initialised: call landscape.distributed.init() (or "
                "torch.distributed.init_process_group) first, or pass distributed=False"
            )
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.backend = str(dist.get_backend(group))
        self.num_all_reduces = 0
        self.bytes_all_reduced = 0

    def _fail(self, what: str, err: Exception) -> DistributedError:
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        return DistributedError(
            f"rank {self.rank} of {self.world_size}: the collective '{what}' failed ({first}). Another rank raised, "
            "was killed or did not answer within the process group's timeout: see that rank's log. Chunks already "
            "committed to a cache are kept; rerun (with any number of ranks) to resume"
        )

    def all_reduce_(self, tensor: Tensor, what: str) -> Tensor:
        """Sum ``tensor`` over ranks, in place; returns it."""
        try:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group)
        except (RuntimeError, ConnectionError) as err:
            raise self._fail(what, err) from err
        self.num_all_reduces += 1
        self.bytes_all_reduced += tensor.numel() * tensor.element_size()
        return tensor

    def all_gather_object(self, obj: Any, what: str) -> list[Any]:
        """Every rank's ``obj``, in rank order."""
        out: list[Any] = [None] * self.world_size
        try:
            dist.all_gather_object(out, obj, group=self.group)
        except (RuntimeError, ConnectionError) as err:
            raise self._fail(what, err) from err
        return out

    def broadcast_object(self, obj: Any, what: str, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` on every rank (others pass anything, e.g. ``None``)."""
        box = [obj]
        try:
            dist.broadcast_object_list(box, src=src, group=self.group)
        except (RuntimeError, ConnectionError) as err:
            raise self._fail(what, err) from err
        return box[0]

    def __repr__(self) -> str:
        return f"DataParallel(rank={self.rank}, world_size={self.world_size}, backend={self.backend!r})"


def decided_by_rank0(ranks: DataParallel | None, decide: Callable[[], Any], what: str) -> Any:
    """``decide()`` run on rank 0 alone (say a cache lookup: rank 0 alone holds the file), its value handed to every
    rank of ``ranks``, so all of them take the same path and their collectives match; in one process
    (``ranks=None``) just ``decide()``.

    An exception on rank 0 is raised there as it is, and on the other ranks as a :class:`DistributedError` quoting
    it (they would otherwise wait for rank 0 until the timeout).
    """
    if ranks is None:
        return decide()
    value, error = None, None
    if ranks.rank == 0:
        try:
            value = decide()
        except Exception as err:  # every rank must hear of it
            error = err
    reply = ranks.broadcast_object((value, None if error is None else f"{type(error).__name__}: {error}"), what)
    if error is not None:
        raise error
    if reply[1] is not None:
        raise DistributedError(f"rank {ranks.rank} of {ranks.world_size}: rank 0 failed in the {what}: {reply[1]}")
    return reply[0]


def resolve(distributed: bool | str | None) -> DataParallel | None:
    """The :class:`DataParallel` a Problem uses, from its ``distributed=`` argument.

    ``None``/``"auto"``: data-parallel exactly when ``torch.distributed`` is initialised. ``True``: required (an error
    if it is not initialised). ``False`` or ``"replicated"``: never (each rank analyses the data it holds alone; see
    :func:`resolve_replicas`).
    """
    if distributed not in DISTRIBUTED_CHOICES or (
        isinstance(distributed, str) and distributed not in ("auto", "replicated")
    ):
        raise ValueError(f"distributed must be None, 'auto', True, False or 'replicated', got {distributed!r}")
    if distributed is False or distributed == "replicated":
        return None
    if distributed is True:
        return DataParallel()
    return DataParallel() if dist.is_available() and dist.is_initialized() else None


def resolve_replicas(distributed: bool | str | None) -> DataParallel | None:
    """For ``distributed="replicated"`` (every rank holds the whole data set): the group over which the *work* of a
    loss surface is split, grid points dealt out to ranks. Products and losses stay local (no communication).
    An error if no process group is initialised."""
    if distributed != "replicated":
        return None
    if not (dist.is_available() and dist.is_initialized()):
        raise DistributedError(
            "distributed='replicated' needs an initialised process group: call landscape.distributed.init() "
            "(under torchrun) first"
        )
    return DataParallel()


def init(*, backend: str | None = None, timeout: float | None = None, device: torch.device | str | None = None) -> bool:
    """Initialise the default process group from torchrun's environment (``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR``).

    Does nothing (returns ``False``) when ``WORLD_SIZE`` is unset or 1, or when a group is already initialised.

    Parameters
    ----------
    backend : str, optional
        Default ``"nccl"`` when ``device`` is CUDA (or CUDA is available and ``device`` is None), else ``"gloo"``.
    timeout : float, optional
        Seconds a collective waits for the other ranks before failing (default: ``$LANDSCAPE_DIST_TIMEOUT`` or 300).
    device : optional
        The device analyses run on; with CUDA, each rank takes ``cuda:LOCAL_RANK``.

    Returns
    -------
    bool
        Whether this call initialised the group.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    if timeout is None:
        timeout = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT))
    cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    if backend is None:
        backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout))
    # A group left to the interpreter's teardown can abort the process ("terminate called without an active
    # exception", exit -6) after all the work is done: the group this call made is destroyed at exit.
    atexit.register(_destroy)
    return True


def _destroy() -> None:
    """At exit: on gloo, wait (at most ``EXIT_BARRIER_SECONDS``) until every rank has got here, then destroy the group.

    Without it, a rank that is done (rank 1, say, while rank 0 still writes a report) tears its group down while the
    other's is still up; a 2-rank ``demo`` aborted at exit that way in 2 of 14 runs ("terminate called without an
    active exception", SIGABRT, after all its work). Leaving together is the usual remedy; that it removes this abort
    is not proven (a rare event). A rank that died makes the barrier fail, which is ignored: the group is destroyed
    regardless.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    with contextlib.suppress(Exception):
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=EXIT_BARRIER_SECONDS))
    with contextlib.suppress(Exception):
        dist.destroy_process_group()


def get_rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    """Number of ranks (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Overwrite ``module``'s parameters and buffers on every rank with rank ``src``'s, in place.

    For a model each rank builds itself (say trained with the same seed): its bits could still differ between
    ranks (thread counts change reduction orders), and a data-parallel analysis needs one point ``w``.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=src)


def shard(
    data: tuple[Tensor, ...] | Tensor, rank: int | None = None, world_size: int | None = None
) -> tuple[Tensor, ...] | Tensor:
    """Rank ``rank``'s contiguous block of ``(X, y)`` (or of one tensor, e.g. token ids ``(N, T)``): ``N // W`` or
    ``N // W + 1`` samples (first ranks larger).

    Parameters
    ----------
    data : (Tensor, Tensor), tuple of tensors or Tensor
        The whole data set, identical on every rank.
    rank, world_size : int, optional
        Default: this process's, from the initialised group (the whole data when not distributed).
    """
    r = get_rank() if rank is None else rank
    w = get_world_size() if world_size is None else world_size
    X = data if isinstance(data, Tensor) else data[0]
    if not 0 <= r < w:
        raise ValueError(f"rank must lie in [0, world_size), got rank={r}, world_size={w}")
    if len(X) < w:
        raise ValueError(f"cannot shard {len(X)} samples over {w} ranks: every rank needs at least one")
    base, extra = divmod(len(X), w)
    start = r * base + min(r, extra)
    stop = start + base + (1 if r < extra else 0)
    return X[start:stop] if isinstance(data, Tensor) else tuple(t[start:stop] for t in data)


def _samples(batch: object) -> Iterable[tuple[str, bytes, bytes]]:
    """Per sample of one batch: a header (dtypes, shapes) and the sample's bytes (inputs and targets of a pair)."""
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2 and all(isinstance(t, Tensor) for t in batch)):
        yield from _tree_samples(batch)
        return
    x, y = batch
    n = len(y)
    x = x.detach().cpu().contiguous()
    y = y.detach().cpu().contiguous()
    header = f"{x.dtype}{tuple(x.shape[1:])}|{y.dtype}{tuple(y.shape[1:])}"
    xb = x.reshape(n, -1).view(torch.uint8).numpy()
    yb = y.reshape(n, -1).view(torch.uint8).numpy()
    for i in range(n):
        yield header, xb[i].tobytes(), yb[i].tobytes()


def _tree_samples(batch: object) -> Iterable[tuple[str, bytes, bytes]]:
    """:func:`_samples` of any batch tree (:mod:`landscape.batch`): every tensor's row of the sample, keyed by path."""
    leaves = [(path, t.detach().cpu().contiguous()) for path, t in tensor_leaves(as_tree(batch)) if t.ndim > 0]
    n = num_examples(batch)
    header = "|".join(f"{path}:{t.dtype}{tuple(t.shape[1:])}" for path, t in leaves)
    rows = [t.reshape(n, -1).view(torch.uint8).numpy() for _, t in leaves]
    for i in range(n):
        yield header, b"".join(r[i].tobytes() for r in rows), b""


def shard_digest(data: Iterable[object]) -> tuple[int, int]:
    """``(sum of per-sample sha256 mod 2**256, sample count)`` of one rank's batches.

    The sum of per-sample hashes (an additive multiset hash) does not depend on how the samples are split into
    shards or batches or on their order, so the combined fingerprint describes the whole data set whatever the
    number of ranks: a distributed run resumes from a cache written with another number of ranks.
    """
    total = 0
    count = 0
    for batch in data:
        for header, xb, yb in _samples(batch):
            h = hashlib.sha256(header.encode())
            h.update(len(xb).to_bytes(8, "big"))
            h.update(xb)
            h.update(yb)
            total = (total + int.from_bytes(h.digest(), "big")) % (1 << 256)
            count += 1
    return total, count


def combine_digests(digests: Iterable[tuple[int, int]]) -> str:
    """The data fingerprint of the union of shards from their :func:`shard_digest` values."""
    total = 0
    count = 0
    for s, n in digests:
        total = (total + s) % (1 << 256)
        count += n
    h = hashlib.sha256(b"landscape.data_fingerprint/sharded/v1")
    h.update(f"N{count}:{total:064x}".encode())
    return h.hexdigest()
