"""Empirical Fisher products ``F v = (1/N) sum_i g_i (g_i^T v)`` with per-sample gradients ``g_i``.

``g_i`` is the gradient of sample ``i``'s loss ``l_i`` scaled so that the full-data loss is their mean
(``L = (1/N) sum_i l_i``). Unlike the GGN this uses the observed labels, not the model's predictive distribution
(Kunstner, Hennig, Balles 2019: it is *not* a curvature approximation in general). One product per batch is a
forward-mode pass giving all ``g_i^T v`` at once and one reverse pass giving ``sum_i g_i (g_i^T v)``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor
from torch.func import jvp, vjp, vmap

from landscape.operators.problem_operator import BlockDict, ProblemOperator, vector_product_loop
from landscape.problem import PreparedBatch


class EmpiricalFisherOperator(ProblemOperator):
    """The empirical Fisher ``(1/N) sum_i g_i g_i^T`` of a problem's data at a point."""

    accumulating = frozenset({"fisher"})

    def _strategies(self) -> list[tuple[str, str]]:
        return [("forward_over_reverse", "fisher"), ("forward_over_reverse", "fisher_batched")]

    def _fisher_fns(self, forward: Callable, batch: PreparedBatch) -> tuple[Callable, Callable]:
        params = self.params
        problem = self.problem
        objective = problem.objective
        n = problem.num_samples
        # L = sum_i c s_i with s_i sample i's summed loss and c = 1/C (C = all counted samples or tokens; mean) or 1
        # (sum); the scaled per-sample losses N c s_i average to L.
        scale = (1.0 / problem.num_counted if problem.reduction == "mean" else 1.0) * n

        def per_sample(p: dict) -> Tensor:
            out = objective.outputs(problem.model_fn(forward, p), batch.data)
            return scale * objective.example_sums(out, batch.data)

        _, pullback = vjp(per_sample, params)

        def directional(v: dict) -> Tensor:
            return jvp(per_sample, (params,), (v,))[1]

        return directional, lambda u: pullback(u / n)[0]

    def _product_fisher(
        self, forward: Callable, i: int, batch: PreparedBatch, V: Tensor, into: Tensor | None = None
    ) -> Tensor:
        directional, pullback = self._fisher_fns(forward, batch)
        return vector_product_loop(lambda v: pullback(directional(v)), self.problem, V, into)

    def _product_fisher_batched(self, forward: Callable, i: int, batch: PreparedBatch, V: Tensor) -> BlockDict:
        directional, pullback = self._fisher_fns(forward, batch)
        return vmap(pullback)(vmap(directional, randomness="same")(self.problem.unflatten(V)))
