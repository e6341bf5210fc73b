"""Products with every example's Hessian ``H_i``, and the covariance operator they make.

With per-example losses ``l_i`` averaging to the full-data loss (:meth:`landscape.Problem.example_loss`), ``H_i``
is the Hessian of ``l_i`` and ``H = (1/n) sum_i H_i``. :class:`PerExample` multiplies vectors by all ``H_i`` at once
(``torch.func.vmap`` over the examples, in chunks bounded by :data:`CHUNK_ELEMENTS`), and
:class:`CovarianceOperator` is Wu, Ma, E's (NeurIPS 2018) ``(1/n) sum_i H_i^2 - H^2``, the variance of the
minibatch Hessian that SGD's stability depends on.

Per-example Hessians exist only where the examples of a batch do not interact: BatchNorm in train mode (batch
statistics) does not define them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import grad, vjp, vmap

from landscape.batch import take
from landscape.example_pool import Examples
from landscape.operators.base import CurvatureOperator
from landscape.problem import Problem

__all__ = ["CHUNK_ELEMENTS", "CovarianceOperator", "PerExample", "examples_interact"]

# Numbers of per-example products held at once: a chunk of examples times parameters times vectors.
CHUNK_ELEMENTS = 2**24


def examples_interact(problem: Problem) -> bool:
    """Whether the examples of a batch interact under the Problem's mode policy (BatchNorm in train mode), which
    leaves per-example Hessians undefined."""
    return problem.mode == "train" and any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for m in problem.model.modules()
    )


class PerExample:
    """Products ``H_i V`` with every example's Hessian (``torch.func.vmap`` over examples, in chunks).

    Parameters
    ----------
    problem : Problem
        Its examples are pooled on every rank (data-parallel: every rank gets every example).

    Attributes
    ----------
    n : int
        Number of examples.
    num_products : int
        Per-example Hessian-vector products so far (one per example and vector).
    vmap_examples : bool
        Whether the forward pass runs under ``vmap``; turned off (one example at a time) on the first forward pass
        that does not.
    """

    def __init__(self, problem: Problem):
        if examples_interact(problem):
            raise ValueError(
                "per-example Hessians are not defined with BatchNorm in train mode (examples of a batch interact): "
                "use Problem(mode='eval')"
            )
        self.problem = problem
        self.data = Examples(problem).all()
        self.n = problem.num_samples
        self.num_products = 0
        self.vmap_examples = True

    def chunks(self, width: int) -> Iterator[slice]:
        """Slices of examples small enough for ``width`` vectors each (see :data:`CHUNK_ELEMENTS`)."""
        size = max(1, CHUNK_ELEMENTS // max(1, self.problem.num_params * width))
        for lo in range(0, self.n, size):
            yield slice(lo, min(lo + size, self.n))

    def _flat(self, out: dict[str, Tensor], lead: int) -> Tensor:
        shape = out[self.problem.param_names[0]].shape[:lead]
        return torch.cat([out[n].reshape(*shape, -1) for n in self.problem.param_names], dim=-1)

    def apply(self, V: Tensor, rows: slice, *, per_example: bool = False) -> Tensor:
        """``H_i V`` for the examples ``rows``: ``V`` is ``(P,)`` or ``(P, m)`` shared, or ``(c, P)`` per example.

        Returns ``(c, P)`` or ``(c, m, P)``.
        """
        problem = self.problem
        params = problem.params_dict(share=True)  # read only: no copy of the weights per chunk
        examples = take(self.data, rows)
        count = rows.stop - rows.start
        randomness = "different" if problem.mode == "train" else "error"
        with problem.evaluation() as forward:
            loss_i = problem.example_loss(forward)

            def hvp_i(example: Any, v: dict[str, Tensor]) -> dict[str, Tensor]:
                # Reverse over reverse (H symmetric, so v^T H = H v): forward-over-reverse trips over torch's
                # immutable zero tangents on losses that are quadratic in the output (MSE of a linear model).
                return vjp(lambda p: grad(loss_i)(p, example), params)[1](v)[0]

            if self.vmap_examples:
                try:
                    return self._vmapped(hvp_i, examples, V, count, per_example, randomness)
                except RuntimeError as err:
                    if "vmap" not in str(err):
                        raise
                    # Data-dependent control flow in the forward pass (Hugging Face models build their attention
                    # masks with it): one example at a time from now on.
                    self.vmap_examples = False
            return self._loop(loss_i, params, V, rows, per_example)

    def _loop(self, loss_i: Callable, params: dict[str, Tensor], V: Tensor, rows: slice, per_example: bool) -> Tensor:
        """:meth:`apply` one example at a time, each example's graph shared by every column of ``V``."""
        problem = self.problem
        out = []
        for j, i in enumerate(range(rows.start, rows.stop)):
            example = take(self.data, i)
            _, pull = vjp(lambda p, example=example: grad(loss_i)(p, example), params)
            cols = [V[j]] if per_example else [V] if V.ndim == 1 else list(V.T)
            flat = [problem.flatten(pull(problem.unflatten(c))[0]) for c in cols]
            out.append(flat[0] if per_example or V.ndim == 1 else torch.stack(flat))
            self.num_products += len(cols)
        return torch.stack(out)

    def _vmapped(
        self, hvp_i: Callable, examples: Any, V: Tensor, count: int, per_example: bool, randomness: str
    ) -> Tensor:
        """:meth:`apply` through ``vmap`` over the examples (and over the columns of a block)."""
        problem = self.problem
        if per_example:
            out = vmap(hvp_i, in_dims=(0, 0), randomness=randomness)(examples, problem.unflatten(V.T))
            self.num_products += count
            return self._flat(out, 1)
        if V.ndim == 1:
            out = vmap(hvp_i, in_dims=(0, None), randomness=randomness)(examples, problem.unflatten(V))
            self.num_products += count
            return self._flat(out, 1)
        block = vmap(hvp_i, in_dims=(None, 0), randomness=randomness)
        out = vmap(block, in_dims=(0, None), randomness=randomness)(examples, problem.unflatten(V))
        self.num_products += count * V.shape[1]
        return self._flat(out, 2)


class CovarianceOperator(CurvatureOperator):
    """``(1/n) sum_i (H_i + wd I)^2 - (H + wd I)^2`` (Wu, Ma, E's second moment minus the squared mean).

    Parameters
    ----------
    per_example : PerExample
        The per-example products (its counter counts them).
    shift : float
        ``wd``, added to every ``H_i``.
    """

    def __init__(self, per_example: PerExample, shift: float):
        p = per_example.problem
        super().__init__(p.num_params, p.dtype, p.device)
        self.pe = per_example
        self.shift = shift

    def _matmat(self, V: Tensor) -> Tensor:
        out = torch.zeros_like(V)
        for j in range(V.shape[1]):
            v = V[:, j]
            second = torch.zeros_like(v)
            mean = torch.zeros_like(v)
            for rows in self.pe.chunks(2):
                Y = self.pe.apply(v, rows) + self.shift * v
                Z = self.pe.apply(Y, rows, per_example=True) + self.shift * Y
                second += Z.sum(0)
                mean += Y.sum(0)
            mean /= self.pe.n
            mean2 = torch.zeros_like(v)
            for rows in self.pe.chunks(1):
                mean2 += self.pe.apply(mean, rows).sum(0)
            out[:, j] = second / self.pe.n - (mean2 / self.pe.n + self.shift * mean)
        return out
