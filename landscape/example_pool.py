"""The examples of a Problem's data as one pool, to draw minibatches and per-example quantities from.

Minibatch analyses (batch sharpness, the gradient noise scale, m-sharpness, the SGD noise of the stability checks)
draw examples by their index in the whole data set: ``0 .. N-1``, the batches in order. Data-parallel, the whole data
set is the ranks' shards in rank order (what one process holding their concatenation would see), and a draw made
with a shared seed is the same on every rank. Each rank contributes the drawn examples it holds and one
``all_gather`` hands every rank all of them, in the order drawn: the minibatch, and every result computed from it,
is bit for bit the one a single process gets. Only the ``B`` drawn examples travel (``N`` for :meth:`Examples.all`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import Tensor

from landscape.batch import concat, pad_sequences, take, to
from landscape.problem import DataError, Problem


class Examples:
    """All examples of ``problem`` as one batch (a tree of tensors, :mod:`landscape.batch`), addressed by global
    index (see the module docstring).

    Parameters
    ----------
    problem : Problem
        Its batches (this rank's shard when data-parallel) are joined once, on its device and dtype.

    Attributes
    ----------
    num_samples : int
        ``N``, the examples of the whole data set (over all ranks).
    """

    def __init__(self, problem: Problem):
        self.problem = problem
        self.num_samples = problem.num_samples
        parts = [b.data for b in problem.batches()]
        shard = problem.shard
        self._offset = 0 if shard is None else sum(shard.shard_sizes[: shard.rank])
        if not parts:  # an empty shard: nothing to contribute
            self._data = None
            return
        try:
            self._data = concat(pad_sequences(parts, getattr(problem.objective, "ignore_index", -100)))
        except (RuntimeError, ValueError) as err:
            raise DataError(
                f"the batches cannot be joined into one data set to draw examples from ({err}); batches must share "
                "every dimension but the first (pad sequences to one length for per-example analyses)"
            ) from err

    def take(self, indices: Tensor) -> Any:
        """The examples ``indices`` of the whole data set as one batch (``(X[indices], y[indices])`` for pair
        batches), on every rank (one ``all_gather`` if data-parallel)."""
        indices = torch.as_tensor(indices, dtype=torch.long).reshape(-1).cpu()
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.num_samples):
            lo, hi = int(indices.min()), int(indices.max())
            raise IndexError(f"example indices must lie in [0, {self.num_samples}), got {lo}..{hi}")
        dist = self.problem.dist
        if dist is None:
            return take(self._data, indices.to(self.problem.device))
        held = self.problem.num_local_samples if self._data is not None else 0
        mine = (indices >= self._offset) & (indices < self._offset + held)
        positions = mine.nonzero().reshape(-1)
        local = (indices[positions] - self._offset).to(self.problem.device)
        part = None if self._data is None else (positions, to(take(self._data, local), torch.device("cpu")))
        parts = [p for p in dist.all_gather_object(part, "all_gather of drawn examples") if p is not None]
        leaves, spec = pytree.tree_flatten(parts[0][1])
        out = [t.new_empty((indices.numel(), *t.shape[1:])) if _batched(t) else t for t in leaves]
        for pos, chosen in parts:
            for slot, t in zip(out, pytree.tree_leaves(chosen), strict=True):
                if _batched(t):
                    slot[pos] = t
        return to(pytree.tree_unflatten(out, spec), self.problem.device)

    def all(self) -> Any:
        """Every example of the whole data set, in order (on every rank)."""
        return self.take(torch.arange(self.num_samples))

    def problem_of(self, indices: Tensor, *, batch_size: int | None = None) -> Problem:
        """The problem restricted to the examples ``indices`` (one batch unless ``batch_size``), held whole by this
        process: data-parallel, every rank computes on the same gathered examples without communicating."""
        chosen = self.take(indices)
        n = int(torch.as_tensor(indices).numel())
        step = n if batch_size is None else batch_size
        parts = [take(chosen, slice(lo, lo + step)) for lo in range(0, n, max(step, 1))]
        return self.problem.with_data(parts, distributed=False)


def _batched(t: object) -> bool:
    return isinstance(t, Tensor) and t.ndim > 0
