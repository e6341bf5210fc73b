"""Whether an optimizer is linearly stable at the current point, and how sharpness evolves against its threshold.

Near a point ``w`` the loss is the quadratic ``L(w + d) ~ L(w) + g^T d + d^T H d / 2``, and one optimizer step is a
linear map of the deviation. Every criterion below asks whether that map (or its mean square, for SGD) is a
contraction; the learning rate at which it stops being one is the criterion's ``max_stable_lr``.

Deterministic methods, one curvature ``lambda`` per eigen-direction. Each iteration is a linear recurrence whose
characteristic roots leave the unit disk through ``z = -1`` as ``lr lambda`` grows, so setting ``z = -1`` gives
the threshold (PyTorch's parameterisation, momentum ``beta``, dampening ``tau``):

- gradient descent ``w <- w - lr g``: ``lambda_max(H) < 2 / lr``. Cohen, Kaur, Li, Kolter, Talwalkar, "Gradient
  descent on neural networks typically occurs at the edge of stability" (ICLR 2021): during training the sharpness
  rises to ``2 / lr`` (progressive sharpening) and hovers there.
- heavy ball (Polyak 1964), ``b <- beta b + (1 - tau) g``, ``w <- w - lr b``:
  ``lambda_max < 2 (1 + beta) / ((1 - tau) lr)`` (``(2 + 2 beta) / lr`` without dampening).
- Nesterov, ``b <- beta b + (1 - tau) g``, ``w <- w - lr (g + beta b)``:
  ``lambda_max < 2 (1 + beta) / ((1 + beta + beta (1 - tau)) lr)`` (``(2 + 2 beta) / ((1 + 2 beta) lr)``).
- Adam with a frozen preconditioner ``P = diag(sqrt(v_hat)) + eps`` (Cohen et al., "Adaptive gradient methods at the
  edge of stability", 2022): the EMA momentum makes each direction of ``P^{-1/2} H P^{-1/2}`` a heavy-ball recurrence
  with step ``lr (1 - beta1)``, so ``lambda_max(P^{-1} H) < (2 + 2 beta1) / (lr (1 - beta1))`` (``= 38 / lr`` at
  ``beta1 = 0.9``); decoupled weight decay ``wd`` (AdamW) turns ``2`` into ``2 - lr wd``. ``lambda_max(P^{-1} H)`` is
  computed as that of the symmetric ``P^{-1/2} H P^{-1/2}`` (same spectrum). Where BackPACK supports the model, the
  exact Hessian diagonal adds ``tr(P^{-1} H) = sum_i H_ii / P_i`` and the certified lower bound
  ``max_i H_ii / P_i <= lambda_max(P^{-1} H)`` (a Rayleigh quotient) to the criterion's details.
- SAM (Foret et al. 2021), quadratic analysis of Long & Bartlett, "Sharpness-aware minimization and the edge of
  stability" (2023): normalised SAM ``w <- w - lr grad L(w + rho g / ||g||)`` multiplies the top direction by
  ``1 - lr lambda (1 + rho lambda / ||g||)``, stable while ``lr lambda (1 + rho lambda / ||g||) < 2`` at the current
  gradient norm; unnormalised SAM ``w <- w - lr grad L(w + rho g)`` iterates ``I - lr H - lr rho H^2``, stable iff
  ``lambda_max < (sqrt(1 + 8 rho / lr) - 1) / (2 rho)``.

SGD with batch size ``B`` out of ``n`` examples, batches drawn uniformly without replacement, independently across
steps; per-example Hessians ``H_i`` with ``H = (1/n) sum H_i`` and ``p = (n - B) / (B (n - 1))``:

- exact mean-square stability (Mulayoff & Michaeli, "Exact mean square linear stability analysis for SGD", COLT
  2024): ``Sigma_t = E[d_t d_t^T]`` evolves by ``Sigma <- E[(I - lr H_B) Sigma (I - lr H_B)]``, i.e.
  ``Q = I - lr (I (x) H + H (x) I) + lr^2 [(1 - p) H (x) H + p (1/n) sum H_i (x) H_i]``. ``Q`` is a positive,
  self-adjoint map, so its spectral radius is its top eigenvalue and ``rho(Q) < 1`` iff ``lr < 2 / lambda_gen`` with
  the *generalised sharpness* ``lambda_gen = lambda_max(C^+ D)``, ``C = (H (+) H) / 2``, ``D`` the bracket: the
  stable learning rates form an interval, and ``lambda_gen`` (hence the critical lr) is monotone in ``B``. Needs the
  dense ``H_i``: small problems only. ``lambda_gen = lambda_max(H)`` for ``B = n``.
- necessary conditions from the same analysis (Mulayoff & Michaeli, Prop. 3), computable matrix-free:
  ``lr <= 2 lambda_1 / (lambda_1^2 + p (1/n) sum (v_1^T H_i v_1 - lambda_1)^2)`` and
  ``lr <= 2 tr H / ((1 - p) ||H||_F^2 + p (1/n) sum ||H_i||_F^2)``; and ``lambda_max(H) < 2 / lr`` (the mean
  ``E[w_t]`` follows gradient descent).
- Wu & Su, "The implicit regularization of dynamical stability in SGD" (ICML 2023): ``tr H <= 2 / lr`` at ``B = 1``
  for MSE at an interpolating minimum (rank-one ``H_i``); with ``mean ||H_i||_F^2 >= (tr H)^2`` the Frobenius condition
  above gives ``tr H < 2 / (p lr)`` for any ``B``, which is what is reported.
- Wu, Ma, E, "How SGD selects the global minima in over-parameterized learning" (NeurIPS 2018): non-uniformity
  ``s = lambda_max((1/n) sum H_i^2 - H^2)^{1/2} <= 1 / (lr sqrt(p))`` (necessary only in one dimension).
- Dexter, Ocejo, Keerthi, Gupta, Acharya, Khanna, "A precise characterization of SGD stability using loss surface
  geometry" (ICLR 2024): coherence ``sigma = lambda_max(S) / max_i lambda_max(H_i)``, ``S_ij = ||H_i^{1/2} H_j^{1/2}||_F
  = sqrt(tr(H_i H_j))`` (high when the examples' curvature is aligned). Their divergence condition (Bernoulli
  sampling, PSD ``H_i``, interpolation) is compared here in the form ``lambda_max(H) < sigma / (lr sqrt(n/B - 1))``,
  taken from its restatement by Chang & Khanna (2025); it is a heuristic indicator and can disagree with the exact
  criterion on small problems.
- batch sharpness: the mean of ``lambda_max(H_B)`` over sampled minibatches against ``2 / lr`` (gradient descent on
  one batch), :func:`landscape.scaling.batch_sharpness`.

Losses with ``reduction="sum"`` use the minibatch loss ``(n/B) sum_{i in B} l_i`` (an unbiased estimate of the full
loss), so ``H_i = n d^2 l_i / dw^2``. Per-example Hessians are those of each example's loss under the Problem's mode
policy: with BatchNorm in train mode the examples of a batch interact and they are not defined (an error says so).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import grad, vjp, vmap

from landscape.batch import take
from landscape.example_pool import Examples
from landscape.linalg import EigenResult, top_eigen
from landscape.linalg.probes import make_generator, sample_probes
from landscape.operators import hessian, hessian_dense
from landscape.operators.base import CurvatureOperator
from landscape.operators.exact import ExactDiagonalUnavailable, exact_diagonal
from landscape.problem import Problem

KINDS = ("exact", "necessary", "sufficient", "heuristic")
OPTIMIZERS = ("gd", "sgd", "heavy_ball", "momentum", "nesterov", "adam", "adamw", "sam")
SAM_VARIANTS = ("normalized", "unnormalized")
# exact="auto" builds the dense per-example Hessians and the (P(P+1)/2)^2 second-moment map up to this many parameters.
EXACT_AUTO_MAX_PARAMS = 40
EXACT_MAX_PARAMS = 120
# Numbers of per-example products held at once: a chunk of examples times parameters times vectors.
CHUNK_ELEMENTS = 2**24
# The coherence matrix needs every example's products at once (n * P * probes numbers); above this it is skipped.
COHERENCE_MAX_ELEMENTS = 5 * 10**7

REF_GD = "Cohen, Kaur, Li, Kolter, Talwalkar, ICLR 2021"
REF_HEAVY_BALL = "Polyak 1964 (PyTorch form); Cohen et al., ICLR 2021"
REF_NESTEROV = "Nesterov 1983 (PyTorch form); linear stability at z = -1"
REF_ADAM = "Cohen, Ghorbani, Krishnan, Agarwal, Medapati, Badura, Suo, Cardoze, Nado, Dahl, Gilmer 2022"
REF_SAM = "Long & Bartlett, Sharpness-aware minimization and the edge of stability, 2023"
REF_MM = "Mulayoff & Michaeli, Exact mean square linear stability analysis for SGD, COLT 2024"
REF_WU_SU = "Wu & Su, ICML 2023"
REF_WU_MA_E = "Wu, Ma, E, NeurIPS 2018"
REF_DEXTER = "Dexter, Ocejo, Keerthi, Gupta, Acharya, Khanna, ICLR 2024"
REF_BATCH = "landscape.scaling.batch_sharpness; Andreyev & Beneventano 2024 (edge of stochastic stability)"


# ------------------------------------------------------------------------------------------------------ results
@dataclass(frozen=True)
class Criterion:
    """One stability criterion evaluated at one learning rate.

    Attributes
    ----------
    name
        What is compared, e.g. ``"gradient descent"`` or ``"mean-square SGD (exact)"``.
    kind
        ``"exact"`` (necessary and sufficient for the linearised dynamics), ``"necessary"`` (failing it means
        unstable), ``"sufficient"`` (passing it means stable) or ``"heuristic"`` (neither, or only under assumptions
        named in ``note``).
    value, threshold
        The criterion holds iff ``value < threshold`` (a sharpness-like quantity against an lr-dependent bound).
    margin
        ``(threshold - value) / threshold``: the relative headroom, positive iff the criterion holds (1 for an
        infinite threshold, ``-inf`` for an infinite value).
    stable
        The verdict ``value < threshold``.
    max_stable_lr
        The largest learning rate at which the criterion still holds, everything else fixed (``inf`` when it holds
        for every lr).
    reference
        Where the criterion comes from.
    note
        Assumptions and caveats.
    details
        Supporting numbers (spectral radius, standard errors, statistics the value is made of).
    """

    name: str
    kind: str
    value: float
    threshold: float
    margin: float
    stable: bool
    max_stable_lr: float
    reference: str
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {
            "name": self.name,
            "kind": self.kind,
            "value": self.value,
            "threshold": self.threshold,
            "margin": self.margin,
            "stable": self.stable,
            "max_stable_lr": self.max_stable_lr,
            "reference": self.reference,
            "note": self.note,
            "details": _jsonable(self.details),
        }


def _criterion(
    name: str,
    kind: str,
    value: float,
    threshold: float,
    max_stable_lr: float,
    reference: str,
    note: str = "",
    details: dict[str, Any] | None = None,
) -> Criterion:
    value, threshold = float(value), float(threshold)
    if math.isinf(threshold):
        margin = 1.0
    elif math.isinf(value):
        margin = -math.inf
    else:
        margin = (threshold - value) / threshold
    return Criterion(
        name=name,
        kind=kind,
        value=value,
        threshold=threshold,
        margin=float(margin),
        stable=bool(value < threshold),
        max_stable_lr=float(max_stable_lr),
        reference=reference,
        note=note,
        details=dict(details or {}),
    )


@dataclass(frozen=True)
class StabilityReport:
    """Stability criteria of one optimizer at one learning rate, at the Problem's current parameters.

    Attributes
    ----------
    optimizer
        The update rule analysed: ``"gd"``, ``"heavy_ball"``, ``"nesterov"``, ``"sgd"`` (minibatch, no momentum),
        ``"adam"``, ``"adamw"`` or ``"sam"``.
    lr
        The learning rate the verdicts refer to.
    batch_size
        ``B`` for minibatch SGD, ``None`` for full batch.
    num_samples
        ``n``, examples in the Problem's data.
    criteria
        The :class:`Criterion` list, exact and necessary ones first.
    seed
        Seed of every random start, probe and batch.
    num_matvecs
        Full-data Hessian-vector products (``num_per_example_products`` counts the single-example ones).
    num_per_example_products
        Per-example Hessian-vector products (each a pass over one example) and dense per-example Hessian columns.
    wall_time
        Seconds spent.
    settings
        The optimizer's hyperparameters and where they came from, ``problem`` (``Problem.describe()``: BatchNorm and
        dropout policy, dtype, parameters) and the estimator settings.
    notes
        What was left out and why.
    """

    optimizer: str
    lr: float
    batch_size: int | None
    num_samples: int
    criteria: tuple[Criterion, ...]
    seed: int
    num_matvecs: int
    num_per_example_products: int
    wall_time: float
    settings: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def binding(self) -> tuple[Criterion, ...]:
        """The exact and necessary criteria: those whose failure means the linearised dynamics are unstable."""
        return tuple(c for c in self.criteria if c.kind in ("exact", "necessary"))

    @property
    def stable(self) -> bool:
        """All exact and necessary criteria hold (heuristic and sufficient ones do not enter the verdict)."""
        return all(c.stable for c in self.binding)

    @property
    def max_stable_lr(self) -> float:
        """The most restrictive ``max_stable_lr`` of the exact and necessary criteria.

        With an exact criterion this is the stability threshold; with necessary ones only it is an upper bound on it.
        """
        return min((c.max_stable_lr for c in self.binding), default=math.inf)

    @property
    def max_stable_lr_is_exact(self) -> bool:
        return any(c.kind == "exact" for c in self.criteria)

    def __getitem__(self, name: str) -> Criterion:
        for c in self.criteria:
            if c.name == name:
                return c
        raise KeyError(f"no criterion {name!r}; this report has: {', '.join(c.name for c in self.criteria)}")

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.criteria]

    def summary(self) -> str:
        """A short human-readable report."""
        mode = self.settings.get("problem", {}).get("mode", "?")
        batch = "full batch" if self.batch_size is None else f"batch size {self.batch_size} of {self.num_samples}"
        bound = "exact" if self.max_stable_lr_is_exact else "upper bound from necessary conditions"
        lines = [
            f"{self.optimizer} at lr = {self.lr:.6g} ({batch}): {'STABLE' if self.stable else 'UNSTABLE'}; "
            f"max stable lr {self.max_stable_lr:.6g} ({bound})"
        ]
        for c in self.criteria:
            rel = "<" if c.stable else ">="
            lines.append(
                f"  [{c.kind:>10}] {c.name}: {c.value:.6g} {rel} {c.threshold:.6g} (margin {100 * c.margin:+.1f}%, "
                f"max lr {c.max_stable_lr:.6g})"
            )
        lines.extend(f"  note: {n}" for n in self.notes)
        lines.append(
            f"({self.num_matvecs} Hessian-vector products, {self.num_per_example_products} per-example products, "
            f"{self.wall_time:.2f} s, mode {mode}, seed {self.seed})"
        )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready numbers (``inf`` where a criterion never binds)."""
        return {
            "optimizer": self.optimizer,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "num_samples": self.num_samples,
            "stable": self.stable,
            "max_stable_lr": self.max_stable_lr,
            "max_stable_lr_is_exact": self.max_stable_lr_is_exact,
            "criteria": [c.to_dict() for c in self.criteria],
            "seed": self.seed,
            "num_matvecs": self.num_matvecs,
            "num_per_example_products": self.num_per_example_products,
            "wall_time": self.wall_time,
            "settings": _jsonable(self.settings),
            "notes": list(self.notes),
        }


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Tensor):
        return obj.detach().cpu().tolist()
    return obj


# ------------------------------------------------------------------------------------------------------ update rules
@dataclass(frozen=True)
class _Rule:
    """An update rule with its hyperparameters, resolved from strings or from a ``torch.optim`` instance."""

    kind: str
    lr: float
    momentum: float = 0.0
    dampening: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    rho: float | None = None
    sam: str = "normalized"
    preconditioner: Tensor | None = None
    source: str = "arguments"

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.kind, "lr": self.lr, "source": self.source}
        if self.kind in ("heavy_ball", "nesterov"):
            out.update(momentum=self.momentum, dampening=self.dampening)
        if self.kind in ("adam", "adamw"):
            out.update(betas=list(self.betas), eps=self.eps)
        if self.kind == "sam":
            out.update(rho=self.rho, sam=self.sam)
        out["weight_decay"] = self.weight_decay
        return out

    @property
    def momentum_factor(self) -> float:
        """``c`` with the threshold ``c / lr`` on ``lambda_max(H + wd I)`` for the gradient-descent family."""
        beta, tau = self.momentum, self.dampening
        if self.kind == "heavy_ball":
            return 2.0 * (1.0 + beta) / (1.0 - tau)
        if self.kind == "nesterov":
            return 2.0 * (1.0 + beta) / (1.0 + beta + beta * (1.0 - tau))
        return 2.0

    def threshold(self, lr: float) -> float:
        """Bound on the rule's sharpness (``lambda_max(H + wd I)``, or of ``P^{-1/2}(H + wd I) P^{-1/2}`` for Adam)."""
        if self.kind in ("adam", "adamw"):
            b1 = self.betas[0]
            two = 2.0 - lr * self.weight_decay if self.kind == "adamw" else 2.0
            return (1.0 + b1) * two / (lr * (1.0 - b1))
        return self.momentum_factor / lr

    def max_lr(self, sharpness: float) -> float:
        """The largest lr with ``sharpness < threshold(lr)``."""
        if self.kind in ("adam", "adamw"):
            b1 = self.betas[0]
            wd = self.weight_decay if self.kind == "adamw" else 0.0
            denom = sharpness * (1.0 - b1) + wd * (1.0 + b1)
            return math.inf if denom <= 0 else 2.0 * (1.0 + b1) / denom
        return math.inf if sharpness <= 0 else self.momentum_factor / sharpness

    @property
    def label(self) -> str:
        return {
            "gd": "gradient descent: lambda_max(H) < 2/lr",
            "heavy_ball": "heavy ball: lambda_max(H) < 2(1+beta)/((1-tau) lr)",
            "nesterov": "Nesterov: lambda_max(H) < 2(1+beta)/((1+beta+beta(1-tau)) lr)",
            "adam": "Adam, frozen preconditioner: lambda_max(P^-1 H) < (2+2 beta1)/(lr (1-beta1))",
            "adamw": "AdamW, frozen preconditioner: lambda_max(P^-1 H) < (1+beta1)(2-lr wd)/(lr (1-beta1))",
        }[self.kind]

    @property
    def reference(self) -> str:
        return {
            "gd": REF_GD,
            "heavy_ball": REF_HEAVY_BALL,
            "nesterov": REF_NESTEROV,
            "adam": REF_ADAM,
            "adamw": REF_ADAM,
        }[self.kind]


def _check_unit(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must lie in [0, 1), got {value!r}")
    return value


def _check_lr(lr: object) -> float:
    if isinstance(lr, bool) or not isinstance(lr, (int, float, np.floating)) or not 0 < lr < math.inf:
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    return float(lr)


def _param_groups(problem: Problem, optimizer: torch.optim.Optimizer) -> list[dict]:
    """The optimizer's param groups holding the Problem's parameters (every selected parameter must be in one)."""
    named = dict(problem.model.named_parameters())
    owner = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    missing = [n for n in problem.param_names if id(named[n]) not in owner]
    if missing:
        raise ValueError(
            f"the optimizer does not update {len(missing)} of the Problem's parameters ({', '.join(missing[:5])}): "
            "build the Problem with params=[...] matching the optimizer's, or pass the optimizer of this model"
        )
    groups: list[dict] = []
    for n in problem.param_names:
        g = owner[id(named[n])]
        if all(g is not h for h in groups):
            groups.append(g)
    return groups


def _shared(groups: list[dict], key: str, default: Any = None) -> Any:
    values = [g.get(key, default) for g in groups]
    first = values[0]
    as_float = (lambda v: float(v)) if isinstance(first, (int, float, Tensor)) and not isinstance(first, bool) else None
    same = all((as_float(v) == as_float(first)) if as_float else (v == first) for v in values)
    if not same:
        raise ValueError(
            f"the optimizer's param groups holding the Problem's parameters differ in {key!r} ({values}); analyse one "
            "group at a time with Problem(params=[...])"
        )
    return float(first) if as_float else first


def _adam_state_preconditioner(
    problem: Problem, optimizer: torch.optim.Optimizer, amsgrad: bool, beta2: float, eps: float
) -> Tensor:
    """``sqrt(v / (1 - beta2^t)) + eps`` from the optimizer's state, flat in the Problem's parameter order."""
    named = dict(problem.model.named_parameters())
    pieces = []
    for n in problem.param_names:
        state = optimizer.state.get(named[n], {})
        key = "max_exp_avg_sq" if amsgrad else "exp_avg_sq"
        if key not in state or "step" not in state:
            raise ValueError(
                f"the Adam optimizer has no state for parameter {n!r} yet: take at least one optimizer step, or pass "
                "preconditioner= (diag(sqrt(v_hat)) + eps) or adam_state= (v_hat) explicitly"
            )
        step = float(state["step"])
        v = state[key].detach().to(device=problem.device, dtype=torch.float64)
        bias2 = 1.0 - beta2**step
        pieces.append((v.sqrt() / math.sqrt(bias2) + eps).reshape(-1))
    return torch.cat(pieces).to(problem.dtype)


def _flat_from(problem: Problem, value: Tensor | Mapping[str, Tensor], name: str) -> Tensor:
    if isinstance(value, Mapping):
        missing = [n for n in problem.param_names if n not in value]
        if missing:
            raise ValueError(f"{name} lacks entries for parameters {missing[:5]}")
        value = problem.flatten({n: torch.as_tensor(value[n]).reshape(-1) for n in problem.param_names})
    if not isinstance(value, Tensor) or value.shape != (problem.num_params,):
        raise ValueError(
            f"{name} must be a flat tensor of shape ({problem.num_params},) or a dict parameter name -> tensor, got "
            f"{getattr(value, 'shape', type(value).__name__)}"
        )
    return value.detach().to(device=problem.device, dtype=problem.dtype)


def _resolve_rule(
    problem: Problem,
    optimizer: str | torch.optim.Optimizer,
    lr: float | None,
    *,
    momentum: float,
    nesterov: bool,
    dampening: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    preconditioner: Tensor | Mapping[str, Tensor] | None,
    adam_state: Tensor | Mapping[str, Tensor] | None,
    rho: float | None,
    sam: str,
) -> _Rule:
    if isinstance(optimizer, torch.optim.Optimizer):
        return _rule_from_torch(problem, optimizer, lr, preconditioner, adam_state)
    if not isinstance(optimizer, str) or optimizer.lower() not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS} or a torch.optim.Optimizer, got {optimizer!r}")
    name = optimizer.lower()
    if lr is None:
        raise ValueError(f"optimizer={optimizer!r} needs lr=")
    lr = _check_lr(lr)
    momentum = _check_unit("momentum", momentum)
    dampening = _check_unit("dampening", dampening)
    weight_decay = float(weight_decay)
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if name in ("heavy_ball", "momentum", "nesterov") and momentum == 0.0:
        raise ValueError(f"optimizer={optimizer!r} needs momentum > 0 (PyTorch's SGD momentum, e.g. 0.9)")
    if name in ("gd", "sgd", "heavy_ball", "momentum", "nesterov"):
        kind = "gd" if momentum == 0.0 else ("nesterov" if nesterov or name == "nesterov" else "heavy_ball")
        return _Rule(kind, lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay)
    if name in ("adam", "adamw"):
        b1, b2 = (_check_unit("betas[0]", betas[0]), _check_unit("betas[1]", betas[1]))
        if preconditioner is not None and adam_state is not None:
            raise ValueError("pass preconditioner= or adam_state=, not both")
        if preconditioner is not None:
            pre = _flat_from(problem, preconditioner, "preconditioner")
        elif adam_state is not None:
            v_hat = _flat_from(problem, adam_state, "adam_state")
            if bool((v_hat < 0).any()):
                raise ValueError("adam_state (v_hat, Adam's bias-corrected second moment) must be >= 0")
            pre = v_hat.sqrt() + eps
        else:
            raise ValueError(
                f"optimizer={optimizer!r} needs the frozen preconditioner: pass a torch.optim.Adam instance with "
                "state, preconditioner= (diag(sqrt(v_hat)) + eps, flat) or adam_state= (v_hat, flat or per parameter)"
            )
        if not bool((pre > 0).all()):
            raise ValueError("the preconditioner must be > 0 everywhere (sqrt(v_hat) + eps with eps > 0)")
        return _Rule(name, lr, betas=(b1, b2), eps=float(eps), weight_decay=weight_decay, preconditioner=pre)
    if rho is None or not float(rho) > 0:
        raise ValueError(f"optimizer='sam' needs rho > 0 (the perturbation radius), got {rho!r}")
    if sam not in SAM_VARIANTS:
        raise ValueError(f"sam must be one of {SAM_VARIANTS}, got {sam!r}")
    if momentum or weight_decay:
        raise ValueError("the SAM criteria are for SAM on plain gradient descent: momentum and weight_decay must be 0")
    return _Rule("sam", lr, rho=float(rho), sam=sam)


def _rule_from_torch(
    problem: Problem,
    optimizer: torch.optim.Optimizer,
    lr: float | None,
    preconditioner: Tensor | Mapping[str, Tensor] | None,
    adam_state: Tensor | Mapping[str, Tensor] | None,
) -> _Rule:
    groups = _param_groups(problem, optimizer)
    if _shared(groups, "maximize", False):
        raise ValueError("the optimizer has maximize=True; the criteria are for minimisation")
    lr = _check_lr(lr if lr is not None else _shared(groups, "lr"))
    wd = _shared(groups, "weight_decay", 0.0)
    source = f"torch.optim.{type(optimizer).__name__}"
    if isinstance(optimizer, torch.optim.SGD):
        momentum = _shared(groups, "momentum", 0.0)
        dampening = _shared(groups, "dampening", 0.0)
        nest = bool(_shared(groups, "nesterov", False))
        kind = "gd" if momentum == 0 else ("nesterov" if nest else "heavy_ball")
        return _Rule(kind, lr, momentum=momentum, dampening=dampening, weight_decay=wd, source=source)
    if isinstance(optimizer, torch.optim.Adam):
        b1, b2 = (float(b) for b in _shared(groups, "betas"))
        eps = _shared(groups, "eps")
        decoupled = isinstance(optimizer, torch.optim.AdamW) or bool(_shared(groups, "decoupled_weight_decay", False))
        if preconditioner is not None or adam_state is not None:
            raise ValueError("with a torch.optim.Adam instance the preconditioner comes from its state: drop it")
        pre = _adam_state_preconditioner(problem, optimizer, bool(_shared(groups, "amsgrad", False)), b2, eps)
        kind = "adamw" if decoupled else "adam"
        return _Rule(kind, lr, betas=(b1, b2), eps=eps, weight_decay=wd, preconditioner=pre, source=source)
    raise TypeError(
        f"{type(optimizer).__name__} is not supported: pass torch.optim.SGD, Adam or AdamW, or describe the update "
        f"rule with optimizer in {OPTIMIZERS}"
    )


# ------------------------------------------------------------------------------------------------------ operators
class _Transformed(CurvatureOperator):
    """``S (A + shift I) S`` with ``S = diag(scale)`` (identity when ``scale`` is None); counts its own products."""

    def __init__(self, op: CurvatureOperator, *, scale: Tensor | None = None, shift: float = 0.0):
        super().__init__(op.shape[0], op.dtype, op.device)
        self.op = op
        self.scale = None if scale is None else scale.to(device=op.device, dtype=op.dtype).reshape(-1, 1)
        self.shift = float(shift)

    def _matmat(self, V: Tensor) -> Tensor:
        W = V if self.scale is None else self.scale * V
        out = self.op @ W
        if self.shift:
            out = out + self.shift * W
        return out if self.scale is None else self.scale * out


def _preconditioned_diagonal(op: CurvatureOperator, rule: _Rule) -> dict[str, Any]:
    """The exact diagonal of ``P^-1 (H + wd I)`` (coupled weight decay) where BackPACK supports the model.

    ``e_i^T P^{-1/2} (H + wd I) P^{-1/2} e_i = (H_ii + wd) / P_i``, so its maximum is a certified lower bound on
    ``lambda_max(P^-1 H)`` (a Rayleigh quotient) and its sum is the preconditioned trace ``tr(P^-1 H)``, which
    governs the mean curvature Adam sees. Costs one second-order backward pass per batch; skipped (with the reason)
    where no exact diagonal exists, since estimating it would cost more than the Lanczos run it checks.
    """
    try:
        exact = exact_diagonal(op)
    except ExactDiagonalUnavailable as err:
        return {"diagonal": f"not computed: {err.reason}"}
    shift = rule.weight_decay if rule.kind == "adam" else 0.0
    ratio = (exact.value.to(rule.preconditioner.device) + shift) / rule.preconditioner.double()
    return {
        "preconditioned_trace": float(ratio.sum()),
        "diagonal_lower_bound": float(ratio.max()),
        "diagonal": f"exact ({exact.backend}, {exact.extension}, {exact.wall_time:.2g} s)",
    }


def _top(
    op: CurvatureOperator,
    k: int,
    tol: float,
    seed: int | torch.Generator,
    progress: bool = False,
    vectors: bool = False,
) -> EigenResult:
    """Top eigenvalue(s); without the vectors unless asked (``k=1`` then runs on two vectors of memory: 1 GB on
    GPT-2 small instead of a basis)."""
    return top_eigen(op, k, tol=tol, seed=seed, progress=progress, vectors=vectors)


# ------------------------------------------------------------------------------------------------------ per-example
def _check_per_example(problem: Problem) -> None:
    if problem.mode == "train" and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in problem.model.modules()):
        raise ValueError(
            "the SGD criteria need per-example Hessians, which BatchNorm in train mode does not define (examples of "
            "a batch interact): use Problem(mode='eval'), or pass batch_size=None for the full-batch criteria"
        )


class _PerExample:
    """Products ``H_i V`` with every example's Hessian (``torch.func.vmap`` over examples, in chunks)."""

    def __init__(self, problem: Problem):
        _check_per_example(problem)
        self.problem = problem
        self.data = Examples(problem).all()  # data-parallel: every rank gets every example
        self.n = problem.num_samples
        self.scale = problem.example_scale()
        self.num_products = 0
        self.vmap_examples = True  # until a forward pass turns out not to run under vmap

    def chunks(self, width: int) -> Iterator[slice]:
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


class _CovarianceOperator(CurvatureOperator):
    """``(1/n) sum_i (H_i + wd I)^2 - (H + wd I)^2`` (Wu, Ma, E's second moment minus the squared mean)."""

    def __init__(self, per_example: _PerExample, shift: float):
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


@dataclass
class _SGDStats:
    """Curvature statistics the SGD criteria are made of (exact from dense ``H_i``, or matrix-free estimates)."""

    lam: float
    var_q: float
    trace: float
    fro2: float
    mean_fro2_i: float
    s2: float
    coherence: float | None
    lam_s: float | None
    max_lam_i: float | None
    exact: bool
    psd: bool | None = None
    generalized: float | None = None
    rho: Callable[[float], float] | None = None
    details: dict[str, Any] = field(default_factory=dict)


def _generalized_sharpness(Hs: np.ndarray, p: float, tol: float) -> tuple[float, Callable[[float], float], dict]:
    """Mulayoff & Michaeli's ``lambda_gen = lambda_max(C^+ D)`` and ``lr -> rho(Q(lr))``, from dense ``H_i``.

    Works on symmetric matrices supported on the joint range of the ``H_i`` (on its complement every step is the
    identity), in the eigenbasis of ``H`` there, where ``C = (H (+) H) / 2`` is diagonal, ``h_a + h_b`` over 2.
    """
    n, P, _ = Hs.shape
    # Singular values of the stacked H_i are sqrt(eig(sum H_i^2)) to absolute accuracy eps * max: zeros stay small.
    _, sv, Vt = np.linalg.svd(Hs.reshape(n * P, P), full_matrices=False)
    top = float(sv.max()) / math.sqrt(n)
    U = Vt[sv > tol * float(sv.max())].T if top > 0 else np.zeros((P, 0))
    r = U.shape[1]
    if r == 0:
        return 0.0, lambda lr: 1.0, {"range_dim": 0}
    G = np.einsum("pa,ipq,qb->iab", U, Hs, U)
    h, V = np.linalg.eigh(G.mean(0))
    G = np.einsum("pa,ipq,qb->iab", V, G, V)
    details = {"range_dim": r, "min_curvature_on_range": float(h.min())}
    if h.min() <= tol * max(abs(h).max(), top):
        # H is singular or indefinite where some H_i act: a drift no learning rate can damp.
        return math.inf, lambda lr: math.inf, details
    # K[(a,b),(c,d)] = sum_i G_i[a,c] G_i[b,d] / n = (Gflat^T Gflat)[(a,c),(b,d)] with axes permuted.
    Gflat = G.reshape(n, r * r)
    K = (Gflat.T @ Gflat / n).reshape(r, r, r, r).transpose(0, 2, 1, 3).reshape(r * r, r * r)
    a, b = np.triu_indices(r)
    i1, i2 = a * r + b, b * r + a
    w = np.where(a == b, 0.5, 1.0 / math.sqrt(2.0))
    Ksym = w[:, None] * (K[np.ix_(i1, i1)] + K[np.ix_(i1, i2)] + K[np.ix_(i2, i1)] + K[np.ix_(i2, i2)]) * w[None, :]
    Dsym = p * Ksym + (1.0 - p) * np.diag(h[a] * h[b])
    Dsym = (Dsym + Dsym.T) / 2
    A = h[a] + h[b]
    Ais = 1.0 / np.sqrt(A)
    lam_gen = 2.0 * float(np.linalg.eigvalsh(Ais[:, None] * Dsym * Ais[None, :]).max())

    def rho(lr: float) -> float:
        return float(np.linalg.eigvalsh(np.diag(1.0 - lr * A) + lr**2 * Dsym).max())

    return lam_gen, rho, details


def _dense_stats(problem: Problem, p: float, shift: float) -> tuple[_SGDStats, int]:
    """All SGD statistics from the dense per-example Hessians (one ``hessian_dense`` per example)."""
    _check_per_example(problem)
    data = Examples(problem).all()
    n = problem.num_samples
    P = problem.num_params
    one = (problem.with_data([take(data, slice(i, i + 1))], distributed=False) for i in range(n))
    # Each single-example problem's loss is its own mean; times count_i / C (mean; N for sum losses) its share.
    Hs = np.stack(
        [problem.example_scale(example.num_counted) * hessian_dense(example).double().cpu().numpy() for example in one]
    )
    Hs = (Hs + Hs.transpose(0, 2, 1)) / 2 + shift * np.eye(P)[None]
    tol = 100.0 * P * float(torch.finfo(problem.dtype).eps)
    H = Hs.mean(0)
    eig_h, vec_h = np.linalg.eigh(H)
    lam, v1 = float(eig_h[-1]), vec_h[:, -1]
    q = np.einsum("a,iab,b->i", v1, Hs, v1)
    eig_i = np.linalg.eigvalsh(Hs)
    scale_i = max(float(np.abs(eig_i).max()), 1e-300)
    tr_ij = np.einsum("iab,jba->ij", Hs, Hs)
    S = np.sqrt(np.clip(tr_ij, 0.0, None))
    lam_s = float(np.linalg.eigvalsh(S).max())
    max_lam_i = float(eig_i[:, -1].max())
    M2 = np.einsum("iab,ibc->ac", Hs, Hs) / n
    s2 = float(np.linalg.eigvalsh(M2 - H @ H).max())
    gen, rho, details = _generalized_sharpness(Hs, p, tol)
    stats = _SGDStats(
        lam=lam,
        var_q=float(np.mean((q - lam) ** 2)),
        trace=float(np.trace(H)),
        fro2=float(np.sum(H * H)),
        mean_fro2_i=float(np.mean(np.sum(Hs * Hs, axis=(1, 2)))),
        s2=max(s2, 0.0),
        coherence=lam_s / max_lam_i if max_lam_i > 0 else math.nan,
        lam_s=lam_s,
        max_lam_i=max_lam_i,
        exact=True,
        psd=bool(eig_i.min() >= -tol * scale_i),
        generalized=gen,
        rho=rho,
        details=details,
    )
    return stats, n * P


def _matrix_free_stats(
    problem: Problem, shift: float, gen: torch.Generator, tol: float, num_probes: int, progress: bool = False
) -> tuple[_SGDStats, int, int]:
    """SGD statistics without dense matrices: Lanczos, one per-example pass along ``v_1``, Hutchinson probes."""
    _check_per_example(problem)
    op = hessian(problem, engine="double_backward")
    top = _top(_Transformed(op, shift=shift), 1, tol, gen, progress, vectors=True)
    lam, v1 = float(top.values[0]), top.vectors[:, 0]
    pe = _PerExample(problem)
    n, P = pe.n, problem.num_params
    q = torch.cat([(pe.apply(v1, rows) @ v1) for rows in pe.chunks(1)]) + shift
    exact_probes = P <= num_probes
    m = P if exact_probes else num_probes
    Z = (
        torch.eye(P, dtype=problem.dtype, device=problem.device)
        if exact_probes
        else sample_probes(P, m, distribution="rademacher", seed=gen, dtype=problem.dtype, device=problem.device)
    )
    keep = n * P * m <= COHERENCE_MAX_ELEMENTS
    Ys = torch.empty(n, m, P, dtype=problem.dtype, device=problem.device) if keep else None
    HZ = torch.zeros(m, P, dtype=problem.dtype, device=problem.device)
    fro_i = torch.zeros(n, m, dtype=torch.float64)
    for rows in pe.chunks(m):
        Yc = pe.apply(Z, rows) + shift * Z.T.unsqueeze(0)
        HZ += Yc.sum(0)
        fro_i[rows] = (Yc * Yc).sum(-1).double().cpu()
        if Ys is not None:
            Ys[rows] = Yc
    HZ /= n
    tr_samples = (HZ * Z.T).sum(-1).double().cpu().numpy()
    fro_samples = (HZ * HZ).sum(-1).double().cpu().numpy()
    fro_i_samples = fro_i.mean(0).numpy()
    cov = _CovarianceOperator(pe, shift)
    s2 = float(_top(cov, 1, tol, gen, progress).values[0])
    details: dict[str, Any] = {"probes": "unit vectors (exact)" if exact_probes else f"{m} Rademacher"}
    if not exact_probes:
        for key, smp in (("trace", tr_samples), ("fro2", fro_samples), ("mean_fro2_i", fro_i_samples)):
            details[f"{key}_stderr"] = float(np.std(smp, ddof=1) / math.sqrt(m))
    coherence = lam_s = max_lam_i = None
    if Ys is not None:
        flat = Ys.reshape(n, m * P).double()
        gram = (flat @ flat.T / (1 if exact_probes else m)).cpu().numpy()
        lam_s = float(np.linalg.eigvalsh(np.sqrt(np.clip((gram + gram.T) / 2, 0.0, None))).max())
        if exact_probes:
            mats = Ys.double().cpu().numpy()
            max_lam_i = float(np.linalg.eigvalsh((mats + mats.transpose(0, 2, 1)) / 2)[:, -1].max())
        else:
            max_lam_i = _max_per_example_eigenvalue(pe, shift, gen)
            details["max_lam_i"] = "30 power iterations per example (a lower bound)"
        coherence = lam_s / max_lam_i if max_lam_i > 0 else math.nan
    else:
        details["coherence"] = f"skipped: n * P * probes = {n * P * m} > {COHERENCE_MAX_ELEMENTS} numbers"
    stats = _SGDStats(
        lam=lam,
        var_q=float(((q.double() - lam) ** 2).mean()),
        trace=float(np.mean(tr_samples)) if not exact_probes else float(np.sum(tr_samples)),
        fro2=float(np.mean(fro_samples)) if not exact_probes else float(np.sum(fro_samples)),
        mean_fro2_i=float(np.mean(fro_i_samples)) if not exact_probes else float(np.sum(fro_i_samples)),
        s2=max(s2, 0.0),
        coherence=coherence,
        lam_s=lam_s,
        max_lam_i=max_lam_i,
        exact=False,
        details=details,
    )
    return stats, int(op.num_matvecs), pe.num_products


def _max_per_example_eigenvalue(pe: _PerExample, shift: float, gen: torch.Generator, iters: int = 30) -> float:
    """``max_i lambda_max(H_i)`` by power iteration on every example at once (a lower bound after ``iters``)."""
    problem = pe.problem
    best = 0.0
    for rows in pe.chunks(1):
        c = rows.stop - rows.start
        V = torch.randn(c, problem.num_params, generator=gen, dtype=problem.dtype).to(problem.device)
        V /= V.norm(dim=1, keepdim=True)
        ray = torch.zeros(c, dtype=problem.dtype, device=problem.device)
        for _ in range(iters):
            W = pe.apply(V, rows, per_example=True) + shift * V
            ray = (W * V).sum(1)
            V = W / W.norm(dim=1, keepdim=True).clamp_min(torch.finfo(problem.dtype).tiny)
        best = max(best, float(ray.max()))
    return best


def _sgd_criteria(stats: _SGDStats, rule: _Rule, lr: float, n: int, B: int) -> list[Criterion]:
    p = (n - B) / (B * (n - 1)) if n > 1 else 0.0
    out: list[Criterion] = []
    how = "exact, from dense per-example Hessians" if stats.exact else "matrix-free estimate"
    if stats.generalized is not None:
        psd = bool(stats.psd)
        out.append(
            _criterion(
                "mean-square SGD (exact)",
                "exact" if psd else "heuristic",
                stats.generalized,
                2.0 / lr,
                math.inf if stats.generalized <= 0 else 2.0 / stats.generalized,
                REF_MM,
                "generalised sharpness lambda_max(C^+ D) against 2/lr; E|w_t - w*|^2 -> 0 iff it holds (batches drawn "
                "uniformly without replacement, independently across steps)"
                + ("" if psd else "; some H_i are indefinite, outside the theorem's regular-minimum assumption"),
                {"spectral_radius": stats.rho(lr) if stats.rho else math.nan, "p": p, **stats.details},
            )
        )
    gd_threshold = 2.0 / lr
    out.append(
        _criterion(
            "mean (gradient descent): lambda_max(H) < 2/lr",
            "necessary",
            stats.lam,
            gd_threshold,
            rule.max_lr(stats.lam),
            f"{REF_MM}, Thm. 1; {REF_GD}",
            "E[w_t] follows gradient descent, and a bounded second moment needs a bounded mean",
        )
    )
    top_dir = (stats.lam**2 + p * stats.var_q) / stats.lam if stats.lam > 0 else math.inf
    out.append(
        _criterion(
            "top-direction variance (M&M Prop. 3)",
            "necessary",
            top_dir,
            gd_threshold,
            2.0 / top_dir if top_dir > 0 else math.inf,
            f"{REF_MM}, Prop. 3 (15)",
            f"(lambda_1^2 + p mean_i (v_1^T H_i v_1 - lambda_1)^2) / lambda_1 against 2/lr; {how}",
            {"lambda_max": stats.lam, "var_q": stats.var_q, "p": p},
        )
    )
    fro = ((1.0 - p) * stats.fro2 + p * stats.mean_fro2_i) / stats.trace if stats.trace > 0 else math.inf
    out.append(
        _criterion(
            "Frobenius (M&M Prop. 3)",
            "necessary",
            fro,
            gd_threshold,
            2.0 / fro if fro > 0 else math.inf,
            f"{REF_MM}, Prop. 3 (16)",
            f"((1-p) ||H||_F^2 + p mean_i ||H_i||_F^2) / tr H against 2/lr; {how}"
            + ("" if stats.exact else " (Hutchinson: compare the margin with the standard errors in details)"),
            {"trace": stats.trace, "fro2": stats.fro2, "mean_fro2_i": stats.mean_fro2_i, "p": p, **stats.details},
        )
    )
    trace_threshold = math.inf if p == 0 else 2.0 / (p * lr)
    out.append(
        _criterion(
            "trace: tr H < 2/(p lr)",
            "heuristic",
            stats.trace,
            trace_threshold,
            math.inf if p == 0 or stats.trace <= 0 else 2.0 / (p * stats.trace),
            f"{REF_WU_SU} (B = 1: tr H <= 2/lr)",
            "necessary for MSE at an interpolating minimum with scalar outputs (rank-one H_i); heuristic otherwise",
        )
    )
    s = math.sqrt(stats.s2)
    out.append(
        _criterion(
            "non-uniformity: s < 1/(lr sqrt(p))",
            "heuristic",
            s,
            math.inf if p == 0 else 1.0 / (lr * math.sqrt(p)),
            math.inf if p == 0 or s == 0 else 1.0 / (s * math.sqrt(p)),
            REF_WU_MA_E,
            "s = lambda_max(mean_i H_i^2 - H^2)^(1/2); necessary only in one dimension",
        )
    )
    if stats.coherence is not None:
        ratio = n / B - 1.0
        thr = math.inf if ratio <= 0 else stats.coherence / (lr * math.sqrt(ratio))
        out.append(
            _criterion(
                "coherence: lambda_max(H) < sigma/(lr sqrt(n/B - 1))",
                "heuristic",
                stats.lam,
                thr,
                math.inf if ratio <= 0 or stats.lam <= 0 else stats.coherence / (stats.lam * math.sqrt(ratio)),
                REF_DEXTER,
                "sigma = lambda_max(S) / max_i lambda_max(H_i), S_ij = sqrt(tr(H_i H_j)); the form of Dexter et al.'s "
                "divergence condition (Bernoulli sampling, PSD H_i, interpolation) as restated by Chang & Khanna 2025",
                {"sigma": stats.coherence, "lambda_max_S": stats.lam_s, "max_lambda_max_H_i": stats.max_lam_i},
            )
        )
    return out


def _batch_sharpness_criterion(problem: Problem, rule: _Rule, lr: float, B: int, seed: int) -> tuple[Criterion, int]:
    from landscape.scaling import batch_sharpness

    res = batch_sharpness(problem, B, seed=seed)
    value = res.mean + rule.weight_decay
    return (
        _criterion(
            "batch sharpness: mean lambda_max(H_B)",
            "heuristic",
            value,
            rule.threshold(lr),
            rule.max_lr(value),
            REF_BATCH,
            f"mean over {res.num_batches} sampled minibatches of the top eigenvalue of the minibatch Hessian against "
            "the full-batch threshold: each batch's own step is stable below it; SGD tends to train where it is near "
            "the threshold",
            {"values": res.values.tolist(), "std": res.std, "stderr": res.stderr},
        ),
        int(res.num_matvecs),
    )


# ------------------------------------------------------------------------------------------------------ stability
def stability(
    problem: Problem,
    optimizer: str | torch.optim.Optimizer,
    lr: float | None = None,
    *,
    batch_size: int | None = None,
    momentum: float = 0.0,
    nesterov: bool = False,
    dampening: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    preconditioner: Tensor | Mapping[str, Tensor] | None = None,
    adam_state: Tensor | Mapping[str, Tensor] | None = None,
    rho: float | None = None,
    sam: str = "normalized",
    exact: bool | str = "auto",
    tol: float = 1e-5,
    num_probes: int = 16,
    seed: int = 0,
    progress: bool = False,
) -> StabilityReport:
    """Linear-stability criteria of an optimizer at ``lr`` at the Problem's current parameters.

    The formulas and papers are in the module docstring: ``lambda_max(H) < 2/lr`` for gradient descent,
    ``2(1+beta)/lr`` for heavy ball, ``(2+2beta)/((1+2beta) lr)`` for Nesterov, ``lambda_max(P^-1 H) <
    (2+2beta1)/(lr(1-beta1))`` for Adam with a frozen preconditioner, Long & Bartlett's SAM conditions, and for
    minibatch SGD the exact mean-square criterion of Mulayoff & Michaeli (small problems) with the necessary and
    heuristic conditions that scale. Weight decay (coupled) adds ``wd I`` to the Hessian.

    Parameters
    ----------
    problem : Problem
        Loss, data and parameters; the model is never modified, and its mode is restored after every evaluation.
    optimizer : str or torch.optim.Optimizer
        ``"gd"``/``"sgd"`` (plain, heavy ball with ``momentum > 0``, Nesterov with ``nesterov=True``),
        ``"heavy_ball"`` (alias ``"momentum"``), ``"nesterov"``, ``"adam"``, ``"adamw"``, ``"sam"``; or a
        ``torch.optim.SGD``/``Adam``/``AdamW`` whose hyperparameters (and, for Adam, preconditioner
        ``sqrt(v / (1 - beta2^t)) + eps`` from its state) are read for the Problem's parameters.
    lr : float, optional
        Learning rate; default the optimizer instance's (required with a string).
    batch_size : int, optional
        Minibatch size ``B`` for SGD (``None`` or ``n``: full batch).
    momentum, nesterov, dampening : PyTorch SGD's momentum settings (strings only).
    betas, eps : Adam's (strings only).
    weight_decay : float
        Coupled weight decay (decoupled for ``"adamw"``).
    preconditioner : Tensor or dict, optional
        Adam's ``diag(sqrt(v_hat)) + eps``, flat or per parameter name.
    adam_state : Tensor or dict, optional
        Adam's bias-corrected second moment ``v_hat`` instead (the preconditioner is ``sqrt(v_hat) + eps``).
    rho : float
        SAM's radius (``optimizer="sam"``).
    sam : {"normalized", "unnormalized"}
        SAM's perturbation ``rho g/||g||`` or ``rho g``.
    exact : bool or "auto"
        Minibatch SGD: build the dense per-example Hessians for the exact criterion (``"auto"``: when the Problem has
        at most 40 parameters; at most 120 allowed).
    tol : float
        Relative Ritz residual tolerance of the Lanczos runs.
    num_probes : int
        Hutchinson probes of the matrix-free SGD statistics (unit vectors, hence exact, when ``P <= num_probes``).
    seed : int
        Seed of a local generator for every random start, probe and sampled batch; the global RNG is never touched.
    progress : bool
        Show a progress bar (stderr) over the Lanczos steps of every top-eigenvalue computation.

    Returns
    -------
    StabilityReport
        ``.criteria``, ``.stable`` (all exact and necessary criteria hold), ``.max_stable_lr``, ``.summary()``,
        ``.to_dict()``.
    """
    start = time.perf_counter()
    if not isinstance(problem, Problem):
        raise TypeError(f"problem must be a landscape.Problem, got {type(problem).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if exact not in ("auto", True, False):
        raise ValueError(f"exact must be 'auto', True or False, got {exact!r}")
    rule = _resolve_rule(
        problem,
        optimizer,
        lr,
        momentum=momentum,
        nesterov=nesterov,
        dampening=dampening,
        betas=betas,
        eps=eps,
        weight_decay=weight_decay,
        preconditioner=preconditioner,
        adam_state=adam_state,
        rho=rho,
        sam=sam,
    )
    lr = rule.lr
    n = problem.num_samples
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or not 1 <= batch_size <= n:
            raise ValueError(f"batch_size must be an int in [1, n={n}], got {batch_size!r}")
        batch_size = int(batch_size)
        if rule.kind == "sam" and batch_size < n:
            raise ValueError("the SAM criteria are for full-batch SAM: pass batch_size=None")
        if isinstance(optimizer, str) and optimizer.lower() == "gd" and batch_size < n:
            raise ValueError("optimizer='gd' is full-batch gradient descent: use optimizer='sgd' with batch_size")
    minibatch = batch_size is not None and batch_size < n
    gen = make_generator(int(seed))
    notes: list[str] = []
    criteria: list[Criterion] = []
    matvecs = 0
    per_example = 0
    settings: dict[str, Any] = {"optimizer": rule.describe(), "problem": problem.describe(), "tol": tol}

    if rule.kind == "sam":
        op = hessian(problem, engine="double_backward")
        lam = float(_top(op, 1, tol, gen, progress).values[0])
        matvecs += op.num_matvecs
        if rule.sam == "normalized":
            _, g = problem.loss_and_grad()
            gnorm = float(g.norm())
            eff = lam * (1.0 + rule.rho * lam / gnorm) if gnorm > 0 else math.inf
            criteria.append(
                _criterion(
                    "normalized SAM: lr lambda (1 + rho lambda/||g||) < 2",
                    "exact",
                    lr * eff,
                    2.0,
                    2.0 / eff if eff > 0 else math.inf,
                    REF_SAM,
                    "the SAM step at the current gradient norm, along the top eigenvector; the bound shrinks as "
                    "||g|| -> 0, so normalised SAM settles where it is ~2 rather than converging",
                    {"lambda_max": lam, "grad_norm": gnorm, "rho": rule.rho},
                )
            )
        else:
            thr = (math.sqrt(1.0 + 8.0 * rule.rho / lr) - 1.0) / (2.0 * rule.rho)
            criteria.append(
                _criterion(
                    "unnormalized SAM: lambda_max < (sqrt(1 + 8 rho/lr) - 1)/(2 rho)",
                    "exact",
                    lam,
                    thr,
                    2.0 / (lam * (1.0 + rule.rho * lam)) if lam > 0 else math.inf,
                    REF_SAM,
                    "SAM iterates I - lr H - lr rho H^2 on the quadratic model",
                    {"rho": rule.rho},
                )
            )
    elif rule.kind in ("adam", "adamw"):
        op = hessian(problem, engine="double_backward")
        scaled = _Transformed(
            op, scale=rule.preconditioner.rsqrt(), shift=rule.weight_decay if rule.kind == "adam" else 0.0
        )
        lam_p = float(_top(scaled, 1, tol, gen, progress).values[0])
        matvecs += op.num_matvecs
        pre = rule.preconditioner.double()
        diag = _preconditioned_diagonal(op, rule)
        if diag.get("diagonal_lower_bound", -math.inf) > lam_p * (1.0 + 10.0 * tol) + 1e-12:
            notes.append(
                f"Lanczos missed the top of P^-1 H: its value {lam_p:.6g} is below the exact lower bound "
                f"max_i (H_ii + wd)/P_i = {diag['diagonal_lower_bound']:.6g}; that bound is used instead"
            )
            lam_p = diag["diagonal_lower_bound"]
        criteria.append(
            _criterion(
                rule.label,
                "necessary" if minibatch else "exact",
                lam_p,
                rule.threshold(lr),
                rule.max_lr(lam_p),
                rule.reference,
                "preconditioner frozen at its current value (bias correction of the first moment ~1 late in training)"
                + ("; with minibatches this governs the mean dynamics only" if minibatch else ""),
                {"preconditioner_min": float(pre.min()), "preconditioner_max": float(pre.max()), **diag},
            )
        )
        if minibatch:
            notes.append("Adam with minibatches: only the mean dynamics (a necessary condition) are analysed")
    else:
        momentum_sgd = rule.kind != "gd"
        use_exact = (
            minibatch
            and not momentum_sgd
            and (exact is True or (exact == "auto" and problem.num_params <= EXACT_AUTO_MAX_PARAMS))
        )
        if use_exact and problem.num_params > EXACT_MAX_PARAMS:
            raise ValueError(
                f"exact=True builds (P(P+1)/2)^2 matrices; P={problem.num_params} > {EXACT_MAX_PARAMS}: use exact=False"
            )
        if minibatch and not momentum_sgd:
            p = (n - batch_size) / (batch_size * (n - 1))
            if use_exact:
                stats, per_example = _dense_stats(problem, p, rule.weight_decay)
            else:
                stats, mv, per_example = _matrix_free_stats(
                    problem, rule.weight_decay, gen, tol, int(num_probes), progress
                )
                matvecs += mv
                if stats.coherence is None:
                    notes.append(f"coherence criterion {stats.details['coherence']}")
                notes.append(
                    "no exact mean-square criterion (needs the dense per-example Hessians: exact=True, P <= "
                    f"{EXACT_MAX_PARAMS}); max_stable_lr is an upper bound"
                )
            criteria.extend(_sgd_criteria(stats, rule, lr, n, batch_size))
            settings["sgd"] = {
                "p": p,
                "exact": use_exact,
                "num_probes": int(num_probes),
                "sampling": "uniform B-subsets",
            }
        else:
            op = hessian(problem, engine="double_backward")
            lam = float(_top(_Transformed(op, shift=rule.weight_decay), 1, tol, gen, progress).values[0])
            matvecs += op.num_matvecs
            criteria.append(
                _criterion(
                    rule.label,
                    "necessary" if minibatch else "exact",
                    lam,
                    rule.threshold(lr),
                    rule.max_lr(lam),
                    rule.reference,
                    "quadratic model at the current point"
                    + ("; with minibatches this governs the mean dynamics E[w_t] only" if minibatch else ""),
                    {"weight_decay": rule.weight_decay} if rule.weight_decay else {},
                )
            )
            if minibatch:
                notes.append(
                    "momentum SGD with minibatches: the exact mean-square analysis and the bounds derived from it are "
                    "for plain SGD; only the mean dynamics and the batch sharpness are reported"
                )
        if minibatch:
            crit, mv = _batch_sharpness_criterion(problem, rule, lr, batch_size, int(seed))
            criteria.append(crit)
            matvecs += mv

    order = {k: i for i, k in enumerate(KINDS)}
    criteria.sort(key=lambda c: order[c.kind])
    name = rule.kind if not (minibatch and rule.kind == "gd") else "sgd"
    return StabilityReport(
        optimizer=name,
        lr=lr,
        batch_size=batch_size if minibatch else None,
        num_samples=n,
        criteria=tuple(criteria),
        seed=int(seed),
        num_matvecs=int(matvecs),
        num_per_example_products=int(per_example),
        wall_time=time.perf_counter() - start,
        settings=settings,
        notes=tuple(notes),
    )


# ------------------------------------------------------------------------------------------------------ tracker
TRACKED_RULES = ("gd", "heavy_ball", "nesterov", "adam", "adamw")
_THRESHOLD_LABELS = {
    "gd": "2/lr",
    "heavy_ball": "(2+2β)/lr",
    "nesterov": "(2+2β)/((1+2β) lr)",
    "adam": "(2+2β₁)/((1−β₁) lr)",
    "adamw": "(1+β₁)(2−lr·wd)/((1−β₁) lr)",
}


class EdgeOfStabilityTracker:
    """A training-loop callback recording sharpness against the optimizer's stability threshold every ``every`` steps.

    Under full-batch gradient descent the top Hessian eigenvalue rises during training (progressive sharpening)
    until it reaches ``2/lr``, then hovers there while the loss keeps decreasing non-monotonically (Cohen, Kaur, Li,
    Kolter, Talwalkar, "Gradient descent on neural networks typically occurs at the edge of stability", ICLR 2021);
    with momentum the threshold is ``(2 + 2 beta)/lr`` (heavy ball) or ``(2 + 2 beta)/((1 + 2 beta) lr)``
    (Nesterov), and Adam's *preconditioned* sharpness ``lambda_max(P^-1 H)`` settles at ``(2 + 2 beta1)/((1 -
    beta1) lr)`` (Cohen et al. 2022). Each record evaluates the full-data loss and the top ``k`` eigenvalues of the
    Hessian by Lanczos (:func:`landscape.linalg.top_eigen`) started from the previous record's eigenvectors: the
    sharpness changes little between records, so a warm start needs a few Hessian-vector products where a random
    start needs tens. The optimizer's current learning rate and momentum are read at every record (schedules are
    followed); for Adam the preconditioner ``sqrt(v / (1 - beta2^t)) + eps`` comes from its state.

    The model, its mode, its ``.grad`` fields and the optimizer are only read; random starts come from a local
    generator.

    Parameters
    ----------
    problem : Problem
        The loss whose Hessian is tracked (typically the full training set, or a fixed subset of it); it reads the
        model's parameters at each record.
    optimizer : torch.optim.SGD, Adam, AdamW, or str
        The optimizer of the training loop, or ``"gd"``/``"heavy_ball"``/``"nesterov"`` with ``lr=`` (and
        ``momentum=``) for a loop without a ``torch.optim`` object.
    every : int
        Record when ``step % every == 0``.
    k : int
        Number of top eigenvalues recorded.
    path : str or PathLike, optional
        HDF5 file (a :class:`landscape.cache.Cache`) rewritten after every record, under ``key``.
    key : str
        Entry name in the cache file.
    lr, momentum, nesterov : for a string optimizer.
    tol : float
        Relative Ritz residual tolerance of Lanczos.
    max_matvecs : int, optional
        Lanczos budget per record.
    warm_start : bool
        Start Lanczos from the previous eigenvectors (``False``: a fresh random start every record).
    seed : int
        Seed of the local generator for random starts.
    """

    def __init__(
        self,
        problem: Problem,
        optimizer: str | torch.optim.Optimizer,
        *,
        every: int = 10,
        k: int = 1,
        path: str | os.PathLike[str] | None = None,
        key: str = "edge_of_stability",
        lr: float | None = None,
        momentum: float = 0.0,
        nesterov: bool = False,
        tol: float = 1e-3,
        max_matvecs: int | None = None,
        warm_start: bool = True,
        seed: int = 0,
    ):
        if not isinstance(problem, Problem):
            raise TypeError(f"problem must be a landscape.Problem, got {type(problem).__name__}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= problem.num_params:
            raise ValueError(f"k must be an int in [1, {problem.num_params}], got {k!r}")
        if isinstance(optimizer, str) and optimizer.lower() not in ("gd", "sgd", "heavy_ball", "momentum", "nesterov"):
            raise ValueError(
                f"a string optimizer must be 'gd', 'sgd', 'heavy_ball' or 'nesterov' (got {optimizer!r}); for Adam "
                "pass the torch.optim.Adam instance, whose state holds the preconditioner"
            )
        if not isinstance(optimizer, (str, torch.optim.SGD, torch.optim.Adam)):
            raise TypeError(f"optimizer must be torch.optim.SGD, Adam, AdamW or a string, got {type(optimizer)}")
        self.problem = problem
        self.optimizer = optimizer
        self.every = every
        self.k = k
        self.path = path
        self.key = key
        self.tol = float(tol)
        self.max_matvecs = max_matvecs
        self.warm_start = bool(warm_start)
        self.seed = int(seed)
        self._string = {"lr": lr, "momentum": momentum, "nesterov": nesterov}
        self._gen = make_generator(self.seed)
        self._vectors: Tensor | None = None
        self._pre_vector: Tensor | None = None
        self._records: list[dict[str, Any]] = []
        self._rule_kind: str | None = None
        first = self._rule()
        if first is not None and first.kind not in TRACKED_RULES:
            raise ValueError(f"cannot track {first.kind}")
        self._rule_kind = None if first is None else first.kind

    def _rule(self) -> _Rule | None:
        """The update rule now; ``None`` for an Adam without state (no step taken yet)."""
        if isinstance(self.optimizer, str):
            s = self._string
            return _resolve_rule(
                self.problem,
                self.optimizer,
                s["lr"],
                momentum=s["momentum"],
                nesterov=s["nesterov"],
                dampening=0.0,
                betas=(0.9, 0.999),
                eps=1e-8,
                weight_decay=0.0,
                preconditioner=None,
                adam_state=None,
                rho=None,
                sam="normalized",
            )
        try:
            return _rule_from_torch(self.problem, self.optimizer, None, None, None)
        except ValueError as err:
            if "no state" in str(err):
                return None
            raise

    def step(self, step: int) -> dict[str, Any] | None:
        """Record if ``step % every == 0``; returns the record or ``None``."""
        if step % self.every:
            return None
        return self.record(step)

    __call__ = step

    def record(self, step: int) -> dict[str, Any]:
        """Evaluate loss, sharpness and threshold now, whatever the step."""
        start = time.perf_counter()
        rule = self._rule()
        if rule is not None:
            self._rule_kind = rule.kind
        loss = self.problem.loss()
        op = hessian(self.problem, engine="double_backward")
        v0 = self._vectors if self.warm_start else None
        res = top_eigen(op, self.k, tol=self.tol, max_matvecs=self.max_matvecs, v0=v0, seed=self._gen)
        self._vectors = res.vectors.detach().clone()
        matvecs = int(op.num_matvecs)
        pre_value, pre_matvecs = math.nan, 0
        if rule is not None and rule.kind in ("adam", "adamw"):
            pop = hessian(self.problem, engine="double_backward")
            wd = rule.weight_decay if rule.kind == "adam" else 0.0
            scaled = _Transformed(pop, scale=rule.preconditioner.rsqrt(), shift=wd)
            v0 = self._pre_vector if self.warm_start else None
            pres = top_eigen(scaled, 1, tol=self.tol, max_matvecs=self.max_matvecs, v0=v0, seed=self._gen)
            self._pre_vector = pres.vectors.detach().clone()
            pre_value, pre_matvecs = float(pres.values[0]), int(pop.num_matvecs)
        if rule is None:
            threshold, lr = math.nan, math.nan
        elif rule.kind in ("adam", "adamw"):
            threshold, lr = rule.threshold(rule.lr), rule.lr
        else:
            # The threshold applies to lambda_max(H + wd I): report it for lambda_max(H).
            threshold, lr = rule.threshold(rule.lr) - rule.weight_decay, rule.lr
        relevant = pre_value if rule is not None and rule.kind in ("adam", "adamw") else float(res.values[0])
        rec = {
            "step": int(step),
            "loss": float(loss),
            "sharpness": np.asarray(res.values, dtype=np.float64),
            "residuals": np.asarray(res.residuals, dtype=np.float64),
            "converged": np.asarray(res.converged, dtype=bool),
            "threshold": float(threshold),
            "edge": relevant / threshold if threshold == threshold and threshold > 0 else math.nan,
            "lr": float(lr),
            "num_matvecs": matvecs,
            "preconditioned_sharpness": pre_value,
            "preconditioned_matvecs": pre_matvecs,
            "wall_time": time.perf_counter() - start,
        }
        self._records.append(rec)
        if self.path is not None:
            self.save()
        return rec

    @property
    def history(self) -> dict[str, np.ndarray]:
        """Arrays over the records: ``step``, ``loss``, ``sharpness`` ``(m, k)`` (top eigenvalues of H),
        ``residuals``/``converged`` ``(m, k)``, ``threshold`` (the optimizer's bound on the relevant sharpness:
        ``lambda_max(H)``, or the preconditioned one for Adam), ``edge`` (relevant sharpness / threshold; 1 at the
        edge of stability), ``lr``, ``num_matvecs`` (Hessian-vector products of the record),
        ``preconditioned_sharpness`` and ``preconditioned_matvecs`` (Adam; ``nan``/0 otherwise), ``wall_time``."""
        m, k = len(self._records), self.k
        out: dict[str, np.ndarray] = {
            "step": np.array([r["step"] for r in self._records], dtype=np.int64),
            "sharpness": np.array([r["sharpness"] for r in self._records], dtype=np.float64).reshape(m, k),
            "residuals": np.array([r["residuals"] for r in self._records], dtype=np.float64).reshape(m, k),
            "converged": np.array([r["converged"] for r in self._records], dtype=bool).reshape(m, k),
        }
        for name, dtype in (
            ("loss", np.float64),
            ("threshold", np.float64),
            ("edge", np.float64),
            ("lr", np.float64),
            ("num_matvecs", np.int64),
            ("preconditioned_sharpness", np.float64),
            ("preconditioned_matvecs", np.int64),
            ("wall_time", np.float64),
        ):
            out[name] = np.array([r[name] for r in self._records], dtype=dtype)
        return out

    @property
    def settings(self) -> dict[str, Any]:
        return {
            "rule": self._rule_kind,
            "every": self.every,
            "k": self.k,
            "tol": self.tol,
            "max_matvecs": self.max_matvecs,
            "warm_start": self.warm_start,
            "seed": self.seed,
            "problem": self.problem.describe(),
        }

    def save(self, path: str | os.PathLike[str] | None = None) -> str:
        """Write the history (arrays) and settings (attributes) to an HDF5 cache file under ``self.key``."""
        from landscape.cache import Cache

        path = path if path is not None else self.path
        if path is None:
            raise ValueError("no path: pass save(path) or EdgeOfStabilityTracker(..., path=...)")
        with Cache(path, timeout=10.0) as cache:
            cache.put(self.key, "edge_of_stability", self.history, {"settings": self.settings})
            return cache.path

    @staticmethod
    def load(
        path: str | os.PathLike[str], key: str = "edge_of_stability"
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The history and settings saved by :meth:`save`."""
        from landscape.cache import Cache

        with Cache(path, readonly=True) as cache:
            entry = cache.get(key)
        if entry is None:
            raise KeyError(f"{path} holds no entry {key!r}")
        return entry.arrays, entry.attrs.get("settings", {})

    def plot(self, ax: Any = None, *, color: str | None = None, label: str | None = None) -> Any:
        """Sharpness (solid) against the optimizer's threshold (dashed) over the steps; returns the axes.

        For Adam the preconditioned sharpness ``lambda_max(P^-1 H)`` is drawn against its threshold, with
        ``lambda_max(H)`` faint; eigenvalues ``2..k`` are drawn faint too. ``color`` and ``label`` (a prefix of the
        legend entries) tell several runs apart on one axes.
        """
        if ax is None:
            import matplotlib.pyplot as plt

            ax = plt.figure(figsize=(6.4, 3.6)).add_subplot()
        h = self.history
        steps = h["step"]
        kind = self._rule_kind or "gd"
        color = color or "tab:blue"
        prefix = f"{label}: " if label else ""
        if kind in ("adam", "adamw"):
            ax.plot(steps, h["preconditioned_sharpness"], color=color, label=f"{prefix}λ_max(P⁻¹H)")
            ax.plot(steps, h["sharpness"][:, 0], color=color, alpha=0.35, lw=1, label=f"{prefix}λ_max(H)")
        else:
            ax.plot(steps, h["sharpness"][:, 0], color=color, label=f"{prefix}λ_max(H)")
            for j in range(1, self.k):
                ax.plot(steps, h["sharpness"][:, j], color=color, alpha=0.35, lw=1, label=f"{prefix}λ_{j + 1}(H)")
        threshold = _THRESHOLD_LABELS.get(kind, "threshold")
        ax.plot(steps, h["threshold"], color=color, linestyle="--", lw=1.2, label=f"{prefix}{threshold}")
        ax.set_xlabel("step")
        ax.set_ylabel("sharpness")
        ax.legend(loc="best", frameon=False)
        return ax

    def __repr__(self) -> str:
        n = len(self._records)
        return f"EdgeOfStabilityTracker(rule={self._rule_kind}, every={self.every}, k={self.k}, records={n})"


__all__ = ["Criterion", "EdgeOfStabilityTracker", "StabilityReport", "stability"]
