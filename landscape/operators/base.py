"""The linear-operator abstraction every estimator multiplies with.

Estimators in :mod:`landscape.linalg` only ever see a :class:`CurvatureOperator`: something with ``@`` on flat
vectors ``(n,)`` and blocks ``(n, k)``, a ``shape``, ``dtype`` and ``device``, and a ``num_matvecs`` counter. They
never know whether it multiplies with a Hessian, a GGN, a Fisher or a dense test matrix.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse.linalg
import torch
from torch import Tensor

from landscape.sharding import LOCAL, VectorSpace


class CurvatureOperator:
    """A symmetric ``n x n`` linear operator acting on flat torch vectors.

    Subclasses implement :meth:`_matmat` for a block ``(n, k)``; ``op @ v`` and ``op @ V`` dispatch to it and count
    one matrix-vector product per column in :attr:`num_matvecs`.

    :attr:`space` says where the vectors live (:mod:`landscape.sharding`): whole in this process
    (:data:`~landscape.sharding.LOCAL`), or this rank's shard of a vector split over ranks, whose inner products
    the estimators sum over ranks through it. ``shape`` is then the *local* length; ``space.size(n)`` the global.
    """

    space: VectorSpace = LOCAL

    def __init__(self, n: int, dtype: torch.dtype, device: torch.device):
        self._n = int(n)
        self._dtype = dtype
        self._device = torch.device(device)
        self.num_matvecs = 0

    @property
    def shape(self) -> tuple[int, int]:
        return (self._n, self._n)

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    def _matmat(self, V: Tensor) -> Tensor:
        raise NotImplementedError

    def __matmul__(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"operator @ expects a torch.Tensor, got {type(x).__name__}")
        if x.ndim not in (1, 2) or x.shape[0] != self._n:
            raise ValueError(
                f"operator of shape {self.shape} cannot multiply a tensor of shape {tuple(x.shape)}: "
                f"pass a flat vector ({self._n},) or a block ({self._n}, k)"
            )
        V = x.reshape(self._n, -1).to(device=self._device, dtype=self._dtype)
        if V.shape[1] == 0:
            return torch.zeros_like(x, dtype=self._dtype, device=self._device)
        out = self._matmat(V)
        self.num_matvecs += V.shape[1]
        return out.reshape(x.shape)

    @property
    def adds_in_place(self) -> bool:
        """Whether :meth:`add_product_` accumulates into ``out`` without a product-sized vector of its own (the
        memory estimate of the three-term recurrence counts one vector less then)."""
        return False

    def add_product_(self, v: Tensor, out: Tensor) -> Tensor:
        """``out += H v`` in place for a flat ``v``; counts one product. Operators that can accumulate the product
        straight into ``out`` override :meth:`_add_product` and never hold a second vector (the Lanczos three-term
        recurrence then needs two); this default allocates ``H v`` and adds it."""
        if v.ndim != 1 or v.shape != out.shape or v.shape[0] != self._n:
            raise ValueError(f"add_product_ needs two flat vectors of length {self._n}")
        if not self._add_product(v, out):
            out.add_(self._matmat(v[:, None])[:, 0])
        self.num_matvecs += 1
        return out

    def _add_product(self, v: Tensor, out: Tensor) -> bool:
        """Accumulate ``H v`` into ``out`` without a temporary vector; ``False`` when this operator cannot."""
        return False

    def to_scipy(self) -> scipy.sparse.linalg.LinearOperator:
        """Export as a ``scipy.sparse.linalg.LinearOperator`` (numpy in, numpy out; for interoperability only)."""
        np_dtype = torch.empty((), dtype=self._dtype).numpy().dtype

        def matmat(X: np.ndarray) -> np.ndarray:
            V = torch.as_tensor(np.ascontiguousarray(X), dtype=self._dtype, device=self._device)
            return (self @ V).detach().cpu().numpy()

        return scipy.sparse.linalg.LinearOperator(
            self.shape, matvec=matmat, matmat=matmat, rmatvec=matmat, rmatmat=matmat, dtype=np_dtype
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={self._n}, dtype={self._dtype}, device={self._device})"


class MatrixOperator(CurvatureOperator):
    """Wrap an explicit symmetric matrix (tests, synthetic spectra, small exact problems)."""

    def __init__(self, matrix: Tensor):
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"MatrixOperator needs a square matrix, got shape {tuple(matrix.shape)}")
        super().__init__(matrix.shape[0], matrix.dtype, matrix.device)
        self.matrix = matrix

    def _matmat(self, V: Tensor) -> Tensor:
        return self.matrix @ V
