"""A Problem's batches: the data as given, normalised to re-iterable batches, and each batch prepared for the loss."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from landscape.batch import take


class DataError(ValueError):
    """The data cannot be used as given (empty, not re-iterable, wrong batch format)."""


@dataclass(frozen=True)
class PreparedBatch:
    """One batch moved to the problem's device/dtype, with its weight in the full-data loss.

    ``data`` is the batch as a tree (:mod:`landscape.batch`), ``size`` its examples, ``count`` what its loss
    averages over (examples, or counted tokens) and ``weight`` its share ``count / total count`` of the full-data
    mean (1 for sum-reduced criteria).
    """

    data: Any
    weight: float
    size: int
    count: int

    @property
    def inputs(self) -> Any:
        """The inputs of an ``(inputs, targets)`` batch."""
        return self.data[0]

    @property
    def targets(self) -> Any:
        """The targets of an ``(inputs, targets)`` batch."""
        return self.data[1]

    def head(self, m: int) -> PreparedBatch:
        """The first ``m`` examples, weighted pro rata (a slice to time strategies on, not to sum)."""
        return PreparedBatch(take(self.data, slice(0, m)), self.weight * m / self.size, m, self.count)


def _is_tensor_pair(data: object) -> bool:
    return (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(t, Tensor) for t in data)
        and data[0].ndim > 0
        and data[1].ndim > 0
        and data[0].shape[0] == data[1].shape[0]
    )


def normalise_data(data: object, batch_size: int | None, *, allow_empty: bool = False) -> Iterable:
    if _is_tensor_pair(data):
        X, y = data
        if X.shape[0] == 0:
            if allow_empty:
                return []
            raise DataError("data is empty: (X, y) has no samples")
        if batch_size is None:
            return [(X, y)]
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        return list(zip(torch.split(X, batch_size), torch.split(y, batch_size), strict=True))
    if batch_size is not None:
        raise ValueError("batch_size applies only to a tensor pair (X, y); a loader already has batches")
    if isinstance(data, Iterator):
        raise DataError(
            "data is a one-shot iterator/generator, but every analysis passes over the data many times: "
            "pass a list of batches, a DataLoader, or a tensor pair (X, y)"
        )
    if not isinstance(data, Iterable):
        raise DataError(f"data must be a DataLoader, an iterable of (inputs, targets) or (X, y); got {type(data)}")
    return data
