"""The examples of a Problem's data as one pool, to draw minibatches and per-example quantities from.

Minibatch analyses (batch sharpness, the gradient noise scale, m-sharpness, the SGD noise of the stability checks)
draw examples by their index in the whole data set: ``0 .. N-1``, the batches in order. Data-parallel, the whole data
set is the ranks' shards in rank order (what one process holding their concatenation would see), and a draw made
with a shared seed is the same on every rank. Each rank contributes the drawn examples it holds and one
``all_gather`` hands every rank all of them, in the order drawn: the minibatch, and every result computed from it,
is bit for bit the one a single process gets. Only the ``B`` drawn examples travel (``N`` for :meth:`Examples.all`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from landscape.problem import DataError, Problem


class Examples:
    """All examples of ``problem`` as two tensors, addressed by global index (see the module docstring).

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
        inputs, targets = [], []
        for b in problem.batches():
            inputs.append(b.inputs)
            targets.append(b.targets)
        shard = problem.shard
        self._offset = 0 if shard is None else sum(shard.shard_sizes[: shard.rank])
        if not inputs:  # an empty shard: nothing to contribute
            self._inputs = self._targets = None
            return
        try:
            self._inputs, self._targets = torch.cat(inputs), torch.cat(targets)
        except RuntimeError as err:
            raise DataError(
                f"the batches cannot be joined into one data set to draw examples from ({err}); batches must share "
                "every dimension but the first"
            ) from err

    def take(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """``(X[indices], y[indices])`` of the whole data set, on every rank (one ``all_gather`` if data-parallel)."""
        indices = torch.as_tensor(indices, dtype=torch.long).reshape(-1).cpu()
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.num_samples):
            lo, hi = int(indices.min()), int(indices.max())
            raise IndexError(f"example indices must lie in [0, {self.num_samples}), got {lo}..{hi}")
        dist = self.problem.dist
        if dist is None:
            idx = indices.to(self._inputs.device)
            return self._inputs[idx], self._targets[idx]
        held = self.problem.num_local_samples if self._inputs is not None else 0
        mine = (indices >= self._offset) & (indices < self._offset + held)
        positions = mine.nonzero().reshape(-1)
        local = (indices[positions] - self._offset).to(self.problem.device)
        part = None if self._inputs is None else (positions, self._inputs[local].cpu(), self._targets[local].cpu())
        parts = [p for p in dist.all_gather_object(part, "all_gather of drawn examples") if p is not None]
        first_x, first_y = parts[0][1], parts[0][2]
        X = first_x.new_empty((indices.numel(), *first_x.shape[1:]))
        y = first_y.new_empty((indices.numel(), *first_y.shape[1:]))
        for pos, xs, ys in parts:
            X[pos] = xs
            y[pos] = ys
        return X.to(self.problem.device), y.to(self.problem.device)

    def all(self) -> tuple[Tensor, Tensor]:
        """Every example of the whole data set, in order (on every rank)."""
        return self.take(torch.arange(self.num_samples))

    def problem_of(self, indices: Tensor, *, batch_size: int | None = None) -> Problem:
        """The problem restricted to the examples ``indices`` (one batch unless ``batch_size``), held whole by this
        process: data-parallel, every rank computes on the same gathered examples without communicating."""
        return self.problem.with_data(self.take(indices), batch_size=batch_size, distributed=False)
