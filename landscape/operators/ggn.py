"""Generalised Gauss-Newton products ``G v = sum_b w_b J_b^T H_out J_b v``.

``J_b`` is the Jacobian of the network outputs w.r.t. the parameters and ``H_out`` the Hessian of the loss w.r.t.
the outputs (Schraudolph 2002; Martens 2020). For softmax cross-entropy ``H_out = diag(p) - p p^T`` per sample, so
``G`` is the Fisher under the model's predictive distribution (Sagun et al. 2018; Papyan 2020); for MSE it is
``(2/D) J^T J``. ``H_out v`` is taken by autodiff of the loss w.r.t. the outputs, so any twice-differentiable loss
works. One product costs a forward-mode pass (``J v``) and a reverse pass (``J^T u``) through a graph built once
per batch and product.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import jvp, vjp, vmap

from landscape.losses import LossError
from landscape.operators.problem_operator import BlockDict, ProblemOperator, vector_product_loop
from landscape.problem import PreparedBatch


class GGNOperator(ProblemOperator):
    """The generalised Gauss-Newton matrix of a problem's full-data loss (PSD for convex losses)."""

    accumulating = frozenset({"ggn"})

    def _strategies(self) -> list[tuple[str, str]]:
        return [("forward_over_reverse", "ggn"), ("forward_over_reverse", "ggn_batched")]

    def _ggn_fns(self, forward: Callable, batch: PreparedBatch) -> tuple[Callable, Callable, Callable]:
        params = self.params
        objective = self.problem.objective
        if not objective.separable:
            raise LossError(
                f"the GGN needs the loss as a function of the model's outputs; the {objective.name} loss does not "
                "separate them: use losses.causal_lm(), masked_lm() or supervised(criterion) (or the Hessian)"
            )

        def outputs(p: dict) -> Tensor:
            return objective.outputs(self.problem.model_fn(forward, p), batch.data)

        def out_loss(o: Tensor) -> Tensor:
            return batch.weight * objective.from_outputs(o, batch.data)

        out, pullback = vjp(outputs, params)
        # The output-space Hessian by reverse-over-reverse on a small graph: forward mode through some losses'
        # backward formulas (mse_loss in torch 2.13) fails with "ZeroTensors are immutable".
        with torch.enable_grad():
            leaf = out.detach().requires_grad_()
            g_out = torch.autograd.grad(out_loss(leaf), leaf, create_graph=True)[0]

        def jac(v: dict) -> Tensor:
            return jvp(outputs, (params,), (v,))[1]

        def out_hess(U: Tensor, batched: bool = False) -> Tensor:
            return torch.autograd.grad(g_out, leaf, U, retain_graph=True, is_grads_batched=batched)[0]

        return jac, out_hess, lambda u: pullback(u)[0]

    def _product_ggn(
        self, forward: Callable, i: int, batch: PreparedBatch, V: Tensor, into: Tensor | None = None
    ) -> Tensor:
        jac, out_hess, pullback = self._ggn_fns(forward, batch)
        return vector_product_loop(lambda v: pullback(out_hess(jac(v))), self.problem, V, into)

    def _product_ggn_batched(self, forward: Callable, i: int, batch: PreparedBatch, V: Tensor) -> BlockDict:
        jac, out_hess, pullback = self._ggn_fns(forward, batch)
        JV = vmap(jac, randomness="same")(self.problem.unflatten(V))
        return vmap(pullback)(out_hess(JV, batched=True))
