"""Hessian-vector products of an FSDP2-sharded model by central differences of FSDP's own gradients.

    H v ~ (g(w + eps v) - g(w - eps v)) / (2 eps)

with ``g`` the full-data gradient computed by the sharded model itself (its forward all-gathers one layer's
parameters at a time, its backward reduce-scatters the gradient), so a product costs two gradients (four
extrapolated) and the memory of training: no layer is held whole longer than FSDP holds it, which the exact product
(whole parameters gathered, differentiated twice; :class:`~landscape.operators.hessian.HessianOperator`) cannot
offer at scale. This is how Granziol and Juarev (2026) run stochastic Lanczos quadrature up to 10^11 parameters.

Step and error. Central differences ``D(eps)`` have truncation error ``eps^2 / 6 ||D^3 L[v, v, .]||`` and
rounding error about ``u ||g|| / eps`` (``u`` the unit roundoff of the dtype the model computes in; Nocedal &
Wright, *Numerical Optimization*, 2nd ed., sec. 8.1). The step starts at ``delta_0 = eps ||v|| = u^(1/3) (1 +
||w||)``; on the first product ``D(2 eps)`` measures the truncation error (``||D(2 eps) - D(eps)|| / 3``) and the
gradients' norms the rounding error, and while truncation dominates the step is cut tenfold, for up to
``CALIBRATION_ROUNDS`` steps; the one with the smallest error bound serves every later product. (A ReLU network's
gradient is piecewise linear: a step that crosses many kinks measures an average rather than the Hessian and does
not follow the ``eps^2`` law: the command line's built-in ReLU MLP in float32 keeps a bound of 0.16 at every step
tried, and its top eigenvalues come out 2-3% off. Smooth activations (tanh, GELU) reach 1e-3 in float32.)

- ``extrapolate=True`` (default): every product also takes ``D(2 eps)`` and returns Richardson's extrapolation
  ``D(eps) + (D(eps) - D(2 eps)) / 3`` (the five-point stencil, error ``O(eps^4)``), four gradients a product. Its
  recorded error bound is measured on that very direction: ``||D(2 eps) - D(eps)|| / 3``, the leading truncation
  error of ``D(eps)`` (which the extrapolation removes, so it over-states what is left), plus the rounding term
  ``ROUNDING_SAFETY u (||g_+|| + ||g_-||) / (2 eps)`` (times 1.5 for the stencil's weights), relative to
  ``||H v||``.
- ``extrapolate=False``: ``D(eps)`` alone, two gradients a product. The truncation error is measured once, on the
  first product's direction, and assumed for the others with a factor ``TRUNCATION_SAFETY``: the third derivative
  varies between directions (along the top eigenvector of the tiny GPT-2 of the tests the error was 5x the bound
  measured on a random direction), so this bound is a rough guide and the default extrapolates.

``settings["error_bound"]`` is the largest relative bound so far: an estimate from measured terms with safety
factors, checked against exact products in the tests (float64 and float32, an MLP and GPT-2), not a proof.

Mixed precision. With FSDP2's ``MixedPrecisionPolicy(param_dtype=torch.bfloat16)`` the shards are float32 master
weights but every gradient is computed in bf16 (``u = 2^-9``), where differences of gradients carry no usable
second-order information (tried on the tests' tiny GPT-2: the top eigenvalue came out 1.9 against 21.7, the
recorded bound 0.27 did not hold). Such a model is refused with the fix: analyse it wrapped without a
``param_dtype`` (``fully_shard(m)``: gradients of the float32 master weights), or with the exact engine, which
differentiates the gathered float32 shards whatever the policy (tested: equal to the unsharded float32 model).

The model must be in eval mode's sense deterministic (dropout off: the analysis puts it in eval mode and restores
it); every rank runs the same number of forward/backward passes (FSDP's collectives must match), the ranks with
fewer batches adding passes of weight zero. FSDP averages gradients over ranks; the losses are scaled by the
number of ranks so the reduced gradient is the full-data sum with the batch weights over the global count.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

from landscape.batch import to as to_device
from landscape.operators.base import CurvatureOperator
from landscape.problem import Problem, check_finite
from landscape.sharding import is_dtensor

#: Factor on ``u ||g|| / eps`` in the recorded bound: a gradient's rounding error is ``u`` times the magnitudes
#: summed along its computation, a few times ``||g||`` for the models tested.
ROUNDING_SAFETY = 10.0
#: Factor on the truncation error measured on the first product's direction, for the others' without extrapolation.
TRUNCATION_SAFETY = 4.0
#: Steps tried on the first product, ``delta_0 10^-j`` for ``j < CALIBRATION_ROUNDS``.
CALIBRATION_ROUNDS = 4


def compute_dtype(model: torch.nn.Module, default: torch.dtype) -> torch.dtype:
    """The dtype FSDP2 computes ``model``'s forward in: its mixed-precision policy's ``param_dtype`` (bf16 weights
    all-gathered from float32 master shards, say), else ``default`` (the shards' own dtype). FSDP2 has no public
    getter for the policy; its state's is read where present."""
    state = getattr(model, "_get_fsdp_state", None)
    policy = getattr(state(), "_mp_policy", None) if callable(state) else None
    dtype = getattr(policy, "param_dtype", None)
    return dtype if isinstance(dtype, torch.dtype) else default


class FiniteDifferenceHessian(CurvatureOperator):
    """``H v`` by central differences of the sharded model's own gradients (see the module docstring).

    Parameters
    ----------
    problem : Problem
        A Problem of an FSDP2-sharded model (``problem.space`` set), in ``mode="eval"``.
    step : float, optional
        The perturbation's length ``delta = eps ||v||``; default ``u^(1/3) (1 + ||w||)``.
    extrapolate : bool
        Richardson-extrapolate every product (four gradients, error ``O(eps^4)``, a bound measured per product);
        ``False``: plain central differences (two gradients, a bound measured on the first product).

    Attributes
    ----------
    settings : dict
        ``engine``, ``step`` (calibrated) and ``first_step``, ``extrapolate``, ``compute_dtype``, ``error_bound``
        (largest relative error estimate so far), ``truncation`` (the largest relative truncation error of
        ``D(eps)`` measured), ``gradients`` (full-data gradients computed).
    """

    def __init__(self, problem: Problem, *, step: float | None = None, extrapolate: bool = True):
        space = problem.space
        if space is None:
            raise ValueError(
                "finite-difference products are for FSDP2-sharded models (their own gradients); this Problem's model "
                "is not sharded: use engine='double_backward' (exact)"
            )
        if problem.mode != "eval":
            raise ValueError("finite-difference products need mode='eval' (dropout and batch statistics off)")
        named = dict(problem.model.named_parameters())
        self.params = [named[n] for n in problem.param_names]
        plain = [n for n, p in zip(problem.param_names, self.params, strict=True) if not is_dtensor(p)]
        if plain:
            raise ValueError(
                f"parameters {plain[:3]} are not sharded (outside every fully_shard): FSDP does not reduce their "
                "gradients; wrap the root module with fully_shard too, or use engine='double_backward'"
            )
        if problem.shard is not None and min(problem.shard.batch_counts) == 0:
            raise ValueError("finite-difference products need every rank to hold at least one batch of data")
        super().__init__(space.local_size, problem.dtype, problem.device)
        self.space = space
        self.problem = problem
        self.compute_dtype = compute_dtype(problem.model, self.params[0].dtype)
        if torch.finfo(self.compute_dtype).eps > 1e-4:
            raise ValueError(
                f"the sharded model computes in {self.compute_dtype} (FSDP's mixed-precision param_dtype): gradient "
                "differences carry no usable curvature at that precision. Wrap the model for the analysis without "
                "param_dtype (fully_shard(module): float32 master weights), or use engine='double_backward' (exact, "
                "on the gathered float32 shards)"
            )
        self.unit_roundoff = torch.finfo(self.compute_dtype).eps / 2
        weights = torch.cat([p.detach().to_local().reshape(-1).to(torch.float64) for p in self.params])
        self.weight_norm = space.norm(weights)
        del weights
        self.step = float(step) if step is not None else self.unit_roundoff ** (1 / 3) * (1.0 + self.weight_norm)
        self.first_step = self.step
        self.extrapolate = bool(extrapolate)
        self.gradients = 0
        self.truncation: float | None = None
        self.error_bound = 0.0

    @property
    def settings(self) -> dict:
        return {
            "engine": "finite_difference",
            "product": "central differences of FSDP's own gradients",
            "step": self.step,
            "first_step": self.first_step,
            "extrapolate": self.extrapolate,
            "compute_dtype": str(self.compute_dtype).replace("torch.", ""),
            "error_bound": self.error_bound,
            "truncation": self.truncation,
            "gradients": self.gradients,
        }

    def describe(self) -> dict:
        return {"operator": type(self).__name__, **self.settings, **self.problem.describe()}

    def _matmat(self, V: Tensor) -> Tensor:
        return torch.stack([self._product(V[:, j]) for j in range(V.shape[1])], dim=1)

    def _product(self, v: Tensor) -> Tensor:
        norm = self.space.norm(v)
        if norm == 0.0:
            return torch.zeros_like(v)
        if self.truncation is None:
            return self._calibrate(v, norm)
        eps = self.step / norm
        out, rounding = self._difference(v, eps)
        size = max(self.space.norm(out), 1e-300)
        if self.extrapolate:
            out, bound, truncation = self._extrapolate(v, eps, out, rounding, size)
            self.truncation = max(self.truncation, truncation)
        else:
            bound = rounding / size + TRUNCATION_SAFETY * self.truncation
        return self._done(out, bound)

    def _calibrate(self, v: Tensor, norm: float) -> Tensor:
        """The first product at steps ``delta_0 10^-j``, ``j < CALIBRATION_ROUNDS``, while truncation dominates;
        the step of the smallest error bound is kept for the later products, and its product returned."""
        best = None
        for j in range(CALIBRATION_ROUNDS):
            step = self.first_step * 10.0**-j
            eps = step / norm
            out, rounding = self._difference(v, eps)
            size = max(self.space.norm(out), 1e-300)
            extrapolated, bound, truncation = self._extrapolate(v, eps, out, rounding, size)
            if not self.extrapolate:  # the plain difference is the product; its bound counts the truncation
                extrapolated, bound = out, rounding / size + truncation
            if best is None or bound < best[1]:
                best = (extrapolated, bound, truncation, step)
            if truncation <= 2 * rounding / size:  # rounding dominates from here on: smaller steps only lose
                break
        out, bound, self.truncation, self.step = best
        return self._done(out, bound)

    def _extrapolate(self, v: Tensor, eps: float, out: Tensor, rounding: float, size: float):
        """Richardson from ``D(eps)`` (``out``, consumed) and ``D(2 eps)``: the extrapolated product, its relative
        error bound and the relative truncation error of ``D(eps)``."""
        wide, _ = self._difference(v, 2 * eps)
        wide.sub_(out)  # D(2 eps) - D(eps): 3 x the truncation error of D(eps), to leading order
        truncation = self.space.norm(wide) / 3 / size
        out.sub_(wide, alpha=1 / 3)  # Richardson: the O(eps^2) term removed
        # (4 D(eps) - D(2 eps)) / 3 rounds to (4 r + r / 2) / 3 = 1.5 r
        return out, 1.5 * rounding / size + truncation, truncation

    def _done(self, out: Tensor, bound: float) -> Tensor:
        self.error_bound = max(self.error_bound, bound)
        check_finite(out.sum(), "finite-difference curvature-vector product", -1)
        return out.to(self.dtype)

    def _difference(self, v: Tensor, eps: float) -> tuple[Tensor, float]:
        """``(g(w + eps v) - g(w - eps v)) / (2 eps)`` and its rounding bound (absolute)."""
        plus, minus = self._gradient(v, eps), self._gradient(v, -eps)
        rounding = ROUNDING_SAFETY * self.unit_roundoff * (self.space.norm(plus) + self.space.norm(minus)) / (2 * eps)
        return plus.sub_(minus).div_(2 * eps), rounding

    @contextlib.contextmanager
    def _moved(self, v: Tensor, eps: float) -> Iterator[None]:
        """The sharded weights at ``w + eps v`` (this rank's rows moved in place), restored bit for bit after."""
        saved = []
        offset = 0
        with torch.no_grad():
            try:
                for p in self.params:
                    local = p.to_local()
                    saved.append(local.clone())
                    piece = v[offset : offset + local.numel()].view(local.shape)
                    local.add_(piece.to(local.dtype), alpha=eps)
                    offset += local.numel()
                yield
            finally:
                for p, old in zip(self.params, saved, strict=False):
                    p.to_local().copy_(old)

    def _gradient(self, v: Tensor, eps: float) -> Tensor:
        """This rank's shard of the full-data gradient at ``w + eps v``, from the sharded model's own passes."""
        problem = self.problem
        model = problem.model
        world = problem.shard.world_size
        passes = max(problem.shard.batch_counts)
        grads = [p.grad for p in self.params]
        modes = [(m, m.training) for m in model.modules()]
        try:
            for p in self.params:
                p.grad = None
            model.eval()
            with self._moved(v, eps), torch.enable_grad():
                batches = list(problem.batches())
                for i in range(passes):
                    batch = batches[min(i, len(batches) - 1)]
                    weight = batch.weight if i < len(batches) else 0.0  # a pass of weight 0 keeps FSDP in step
                    data = to_device(batch.data, problem.device, self.compute_dtype)
                    loss = problem.objective.mean(model, data) * (weight * world)
                    check_finite(loss.detach(), "loss", i)
                    loss.backward()
            self.gradients += 1
            return torch.cat(
                [
                    torch.zeros(p.to_local().numel(), dtype=torch.float64, device=problem.device)
                    if p.grad is None
                    else p.grad.to_local().reshape(-1).to(torch.float64)
                    for p in self.params
                ]
            )
        finally:
            for p, g in zip(self.params, grads, strict=True):
                p.grad = g
            for m, training in modes:
                m.training = training
