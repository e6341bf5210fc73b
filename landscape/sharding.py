"""Flat vectors of FSDP2-sharded models: each rank holds its shard; inner products and norms are summed over ranks.

A model wrapped with ``torch.distributed.fsdp.fully_shard`` holds every parameter as a ``DTensor`` placed
``Shard(0)``: rank ``r`` keeps rows ``[r c, (r + 1) c)`` of it (``c = ceil(rows / R)``, torch.chunk's split; the
last ranks may hold fewer rows or none). In the flat vector of all selected parameters (``model.named_parameters()``
order) parameter ``p`` occupies ``[o_p, o_p + numel_p)``, and rank ``r``'s rows of it are the contiguous range
``[o_p + a_r s_p, o_p + b_r s_p)`` (``s_p`` entries per row). A rank's *local* vector is the concatenation of its
ranges over the parameters; the ranges of all ranks partition ``[0, n)``. A parameter that is not a DTensor (left
outside every ``fully_shard``, so replicated) belongs to rank 0 alone, so no entry is counted twice.

Then for local vectors ``x_r, y_r`` of global ``x, y``

    x . y = sum_r x_r . y_r,        ||x||^2 = sum_r ||x_r||^2,        Q^T Y = sum_r Q_r^T Y_r,

one all-reduce of a few numbers per reduction (:class:`ShardedSpace`), while the Krylov vectors cost ``n / R``
numbers per rank: a Lanczos basis of ``m`` vectors takes ``m n / R``. Everything an estimator does to vectors other
than reductions (axpy, scaling, Gram-Schmidt's updates ``W - Q C``) is local. :class:`VectorSpace` is the
unsharded space (reductions are local); every operator has one (``op.space``).

Random probes are drawn ``DRAW_CHUNK`` entries at a time, every rank consuming the same stream and keeping its
ranges (:meth:`ShardedSpace.draw`), so no rank ever holds a vector of the global length. Rademacher probes (SLQ,
Hutchinson, Hutch++, block spectra) are then the very vectors one process draws with the same seed: a sharded run
reproduces an unsharded one to rounding. Gaussian starts (top eigenvalues) are valid but other vectors than one
process's; converged eigenpairs do not depend on them.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from landscape import reductions
from landscape.distributed import DataParallel

# The module hooks FSDP2 registers on every module it wraps (unshard before forward, reshard after, gradient hooks).
_HOOK_DICTS = (
    "_forward_pre_hooks",
    "_forward_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
)


def is_dtensor(t: object) -> bool:
    """Whether ``t`` is a ``torch.distributed.tensor.DTensor`` (a sharded parameter).

    A DTensor exists only once its module has been imported, so a process that never imported it has none: the
    check then costs nothing, where importing ``torch.distributed.tensor`` to ask would page in ~40 MB of library
    code (a ninth of a ResNet-18 forward pass's peak RSS) in every process that builds a Problem.
    """
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(t, module.DTensor)


def is_sharded(model: nn.Module) -> bool:
    """Whether any parameter of ``model`` is a DTensor (FSDP2's ``fully_shard``)."""
    return any(is_dtensor(p) for p in model.parameters())


def full_tensor(t: Tensor) -> Tensor:
    """The whole tensor of a DTensor (an all-gather over its mesh), detached; any other tensor detached."""
    return t.detach().full_tensor() if is_dtensor(t) else t.detach()


@contextlib.contextmanager
def plain_forward(model: nn.Module) -> Iterator[None]:
    """Within it, calling ``model`` runs the wrapped modules' own ``forward`` without FSDP2's hooks.

    FSDP2 all-gathers a module's parameters in a forward pre-hook and puts its own unsharded tensors in place of
    the module's parameters, which would override the tensors ``torch.func.functional_call`` substitutes (so no
    derivative reaches them). The analysis hands the modules whole parameters itself; FSDP's hooks are stashed for
    the duration and put back, untouched, on exit (also on error). Other modules' hooks stay.
    """
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        yield
        return
    saved = []
    for module in model.modules():
        if isinstance(module, FSDPModule):
            saved.append((module, {name: getattr(module, name) for name in _HOOK_DICTS if hasattr(module, name)}))
            for name, hooks in saved[-1][1].items():
                setattr(module, name, type(hooks)())
    try:
        yield
    finally:
        for module, hooks in saved:
            for name, value in hooks.items():
                setattr(module, name, value)


class VectorSpace:
    """Flat vectors held whole by this process: reductions are local (the space of every unsharded operator)."""

    sharded = False

    def size(self, local: int) -> int:
        """The global length of vectors whose local length is ``local`` (the same here)."""
        return local

    def reduce_(self, t: Tensor) -> Tensor:
        """Sum partial reductions over ranks, in place (nothing to do here); returns ``t``."""
        return t

    def dot(self, a: Tensor, b: Tensor) -> float:
        """``a . b`` accumulated in float64, a chunk of ``2**20`` entries at a time (no float64 copy of a long
        vector)."""
        total = sum(torch.dot(x.double(), y.double()) for x, y in zip(a.split(_CHUNK), b.split(_CHUNK), strict=True))
        return float(self.reduce_(torch.as_tensor(total, dtype=torch.float64).reshape(1))[0])

    def norm(self, v: Tensor) -> float:
        """Euclidean norm of a flat vector (squares summed in float64: :mod:`landscape.reductions`)."""
        return reductions.norm(v)

    def norms(self, V: Tensor, dim: int = 0) -> Tensor:
        """Euclidean norms along ``dim`` (columns of an ``(n, k)`` block for ``dim=0``)."""
        return reductions.norms(V, dim)

    def sums(self, X: Tensor) -> Tensor:
        """Column sums ``sum_i X[i, j]`` of an ``(n, k)`` block in float64 (e.g. ``z_j^T H z_j`` from ``Z * HZ``)."""
        return X.sum(dim=0).double()

    def inner(self, A: Tensor, B: Tensor) -> Tensor:
        """``A^T B`` for blocks ``(n, a)`` and ``(n, b)``."""
        return A.T @ B

    def bmm(self, Q: Tensor, W: Tensor) -> Tensor:
        """``Q @ W`` batched over the leading dimension, contracting the vectors' (last) dimension of ``Q``
        ``(p, m, n)`` with ``W`` ``(p, n, k)``."""
        return torch.bmm(Q, W)

    def orthonormal(self, Y: Tensor) -> Tensor:
        """An orthonormal basis of the columns of ``Y`` (Householder QR, ``Q`` of the same width)."""
        return torch.linalg.qr(Y)[0]

    def local(self, full: Tensor) -> Tensor:
        """This process's entries of a global vector or ``(n, k)`` block (all of them here)."""
        return full

    def gather(self, local: Tensor) -> Tensor:
        """The global vector or block from this process's entries (itself here)."""
        return local

    def describe(self) -> dict:
        return {"sharded": False}


_CHUNK = 1 << 20
#: Entries of a random vector a sharded draw generates at a time.
DRAW_CHUNK = 1 << 20
LOCAL = VectorSpace()


@dataclass(frozen=True)
class Segment:
    """Entries ``[start, start + length)`` of the global flat vector held by this rank (one parameter's rows)."""

    start: int
    length: int


class ShardedSpace(VectorSpace):
    """Flat vectors split over the ranks of a process group: this rank holds :attr:`segments` of the global vector.

    Parameters
    ----------
    ranks : DataParallel
        The process group (its collectives are counted: ``ranks.num_all_reduces``, ``ranks.bytes_all_reduced``).
    segments : tuple of Segment
        This rank's ranges of the global flat vector, in order.
    global_size : int
        ``n``, the length of the global vector.
    local_numels : tuple of int, optional
        This rank's entries of each selected parameter, in parameter order, empty pieces included (what a block
        partition of the local vector is built from); default: one piece per segment.
    """

    sharded = True

    def __init__(
        self,
        ranks: DataParallel,
        segments: tuple[Segment, ...],
        global_size: int,
        local_numels: tuple[int, ...] | None = None,
    ):
        self.ranks = ranks
        self.segments = segments
        #: This rank's entries of each selected parameter, in order (the pieces of its local vector).
        self.local_numels = local_numels if local_numels is not None else tuple(s.length for s in segments)
        self.global_size = int(global_size)
        self.local_size = sum(s.length for s in segments)
        sizes = ranks.all_gather_object(self.local_size, "gather of the shard sizes of the flat vector")
        if sum(sizes) != self.global_size:
            raise ValueError(
                f"the ranks' shards hold {sum(sizes)} entries of a flat vector of {self.global_size}: every rank "
                "must select the same parameters of the same sharded model"
            )
        self.local_sizes = tuple(int(s) for s in sizes)

    def size(self, local: int) -> int:
        if local != self.local_size:
            raise ValueError(f"a local vector of this rank has {self.local_size} entries, got {local}")
        return self.global_size

    def reduce_(self, t: Tensor) -> Tensor:
        return self.ranks.all_reduce_(t, "all_reduce of an inner product of sharded vectors")

    def norm(self, v: Tensor) -> float:
        return math.sqrt(max(self.dot(v, v), 0.0))

    def norms(self, V: Tensor, dim: int = 0) -> Tensor:
        squares = reductions.sum_of_squares(V, dim)
        return self.reduce_(squares.contiguous()).sqrt().to(V.dtype)

    def sums(self, X: Tensor) -> Tensor:
        return self.reduce_(X.sum(dim=0).double().contiguous())

    def inner(self, A: Tensor, B: Tensor) -> Tensor:
        return self.reduce_((A.T @ B).contiguous())

    def bmm(self, Q: Tensor, W: Tensor) -> Tensor:
        return self.reduce_(torch.bmm(Q, W).contiguous())

    def orthonormal(self, Y: Tensor) -> Tensor:
        """CholeskyQR2 on the global block: ``G = Y^T Y`` (one all-reduce), ``Q = Y U diag(s)^{-1/2}`` over the
        eigenpairs of ``G`` above rounding (a rank-deficient ``Y`` gives fewer columns), twice for orthogonality to
        rounding (Yamamoto et al. 2015)."""
        Q = Y
        for _ in range(2):
            G = self.inner(Q, Q).double()
            s, U = torch.linalg.eigh(G)
            keep = s > s.max().clamp_min(0) * Q.shape[1] * torch.finfo(Y.dtype).eps
            Q = Q @ (U[:, keep] / s[keep].sqrt()).to(Y.dtype)
        return Q

    def local(self, full: Tensor) -> Tensor:
        return torch.cat([full[s.start : s.start + s.length] for s in self.segments])

    def draw(
        self,
        k: int,
        distribution: str,
        generator: torch.Generator,
        *,
        dtype: torch.dtype,
        device: torch.device | str,
        normalize: bool = False,
    ) -> Tensor:
        """This rank's rows ``(local_size, k)`` of ``k`` random vectors of the global length, drawn ``DRAW_CHUNK``
        entries at a time (every rank consumes the same stream, keeping its own entries): no vector of the global
        length is ever held.

        Rademacher vectors are the very ones :func:`landscape.linalg.probes.sample_probes` draws in one process (the
        CPU generator fills ``randint`` sequentially, so chunks continue the same stream). Gaussian ones are drawn
        per chunk, which torch's vectorised Box-Muller maps to other numbers than one draw of the whole vector:
        valid probes, the same on every number of ranks, not the unsharded process's. ``"sphere"`` and
        ``normalize`` scale by the global norm, which every rank sees whole as the chunks pass.
        """
        out = torch.empty(self.local_size, k, dtype=torch.float64)
        norms = torch.zeros(k, dtype=torch.float64)
        gdev = generator.device
        for j in range(k):
            kept = 0
            index = 0  # the segment the next kept entries belong to
            for start in range(0, self.global_size, DRAW_CHUNK):
                m = min(DRAW_CHUNK, self.global_size - start)
                if distribution == "rademacher":
                    chunk = torch.randint(0, 2, (m,), generator=generator, device=gdev).to(torch.float64)
                    chunk.mul_(2.0).sub_(1.0)
                else:
                    chunk = torch.randn(m, generator=generator, device=gdev, dtype=torch.float64)
                norms[j] += float(chunk.square().sum())
                while index < len(self.segments):
                    seg = self.segments[index]
                    lo, hi = max(seg.start, start), min(seg.start + seg.length, start + m)
                    if lo < hi:
                        out[kept : kept + hi - lo, j] = chunk[lo - start : hi - start].cpu()
                        kept += hi - lo
                    if seg.start + seg.length > start + m:
                        break  # the segment goes on into the next chunk
                    index += 1
        norms = norms.sqrt()
        if distribution == "sphere":
            out.mul_(math.sqrt(self.global_size) / norms)
        if normalize:
            out.div_(norms if distribution != "sphere" else math.sqrt(self.global_size))
        return out.to(device=device, dtype=dtype)

    def gather(self, local: Tensor) -> Tensor:
        """The global vector (or block): every rank writes its segments into zeros and one all-reduce sums them
        (``n`` numbers per column on the wire)."""
        full = local.new_zeros((self.global_size, *local.shape[1:]))
        offset = 0
        for s in self.segments:
            full[s.start : s.start + s.length] = local[offset : offset + s.length]
            offset += s.length
        return self.reduce_(full)

    def describe(self) -> dict:
        return {
            "sharded": True,
            "world_size": self.ranks.world_size,
            "global_size": self.global_size,
            "local_sizes": list(self.local_sizes),
        }


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules :func:`shard_model` wraps one by one: the items of every ``nn.ModuleList`` that hold parameters
    (a transformer's blocks, a ResNet's layers when listed), else every module with parameters of its own."""
    listed = [m for ml in model.modules() if isinstance(ml, nn.ModuleList) for m in ml if _has_params(m)]
    if listed:
        return listed
    return [m for m in model.modules() if m is not model and any(True for _ in m.parameters(recurse=False))]


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def shard_model(model: nn.Module) -> nn.Module:
    """``model`` wrapped with FSDP2's ``fully_shard`` as for training: each of :func:`shard_units` its own group,
    then the root (whatever is left: embeddings, a tied head). In place; returns the model. Needs an initialised
    process group."""
    from torch.distributed.fsdp import fully_shard

    for unit in shard_units(model):
        fully_shard(unit)
    fully_shard(model)
    return model


def space_for(model: nn.Module, names: list[str], ranks: DataParallel | None) -> ShardedSpace | None:
    """The :class:`ShardedSpace` of the parameters ``names`` of a sharded model (``None`` when none is a DTensor).

    Raises
    ------
    ValueError
        When the model is sharded but no process group is given, or a parameter is placed other than ``Shard(0)``
        on a one-dimensional mesh (FSDP2's default).
    """
    named = dict(model.named_parameters())
    if not any(is_dtensor(named[n]) for n in names):
        return None
    if ranks is None:
        raise ValueError(
            "the model's parameters are sharded (FSDP2 DTensors) but the Problem is not distributed: initialise the "
            "process group (landscape.distributed.init() under torchrun) and leave distributed=None"
        )
    from torch.distributed.tensor import Shard

    segments = []
    local_numels = []
    offset = 0
    for name in names:
        p = named[name]
        numel = p.numel()
        if not is_dtensor(p):
            local_numels.append(numel if ranks.rank == 0 else 0)
            if ranks.rank == 0:
                segments.append(Segment(offset, numel))
        else:
            placements = tuple(p.placements)
            if p.device_mesh.ndim != 1 or placements != (Shard(0),):
                raise ValueError(
                    f"parameter {name!r} is placed {placements} on a {p.device_mesh.ndim}-D mesh; landscape handles "
                    "FSDP2's default Shard(0) on a 1-D mesh (fully_shard without shard_placement_fn or HSDP)"
                )
            rows = p.shape[0] if p.ndim else 1
            per_row = numel // rows if rows else 0
            mesh_rank = p.device_mesh.get_local_rank()
            chunk = math.ceil(rows / p.device_mesh.size())
            first, last = min(mesh_rank * chunk, rows), min((mesh_rank + 1) * chunk, rows)
            local = p.to_local()
            if local.shape[0] != last - first:
                raise ValueError(
                    f"parameter {name!r}: this rank holds {local.shape[0]} rows, torch.chunk's split gives "
                    f"{last - first}: an uneven sharding landscape does not know"
                )
            local_numels.append((last - first) * per_row)
            if last > first:
                segments.append(Segment(offset + first * per_row, (last - first) * per_row))
        offset += numel
    return ShardedSpace(ranks, tuple(segments), offset, tuple(local_numels))
