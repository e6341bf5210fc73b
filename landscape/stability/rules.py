"""The update rules whose stability is analysed, resolved from strings or ``torch.optim`` instances, with their
thresholds on the sharpness.

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
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from landscape._checks import check_positive, check_unit
from landscape.problem import Problem

__all__ = [
    "OPTIMIZERS",
    "REF_ADAM",
    "REF_BATCH",
    "REF_DEXTER",
    "REF_GD",
    "REF_HEAVY_BALL",
    "REF_MM",
    "REF_NESTEROV",
    "REF_SAM",
    "REF_WU_MA_E",
    "REF_WU_SU",
    "SAM_VARIANTS",
    "Rule",
    "resolve_rule",
    "rule_from_torch",
]

OPTIMIZERS = ("gd", "sgd", "heavy_ball", "momentum", "nesterov", "adam", "adamw", "sam")
SAM_VARIANTS = ("normalized", "unnormalized")

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


@dataclass(frozen=True)
class Rule:
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
        """The rule's kind and hyperparameters, JSON-ready."""
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
        """The criterion's name: the rule and its threshold."""
        return {
            "gd": "gradient descent: lambda_max(H) < 2/lr",
            "heavy_ball": "heavy ball: lambda_max(H) < 2(1+beta)/((1-tau) lr)",
            "nesterov": "Nesterov: lambda_max(H) < 2(1+beta)/((1+beta+beta(1-tau)) lr)",
            "adam": "Adam, frozen preconditioner: lambda_max(P^-1 H) < (2+2 beta1)/(lr (1-beta1))",
            "adamw": "AdamW, frozen preconditioner: lambda_max(P^-1 H) < (1+beta1)(2-lr wd)/(lr (1-beta1))",
        }[self.kind]

    @property
    def reference(self) -> str:
        """Where the rule's threshold comes from."""
        return {
            "gd": REF_GD,
            "heavy_ball": REF_HEAVY_BALL,
            "nesterov": REF_NESTEROV,
            "adam": REF_ADAM,
            "adamw": REF_ADAM,
        }[self.kind]


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


def resolve_rule(
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
) -> Rule:
    """The update rule described by :func:`landscape.stability` arguments (see there), each one checked."""
    if isinstance(optimizer, torch.optim.Optimizer):
        return rule_from_torch(problem, optimizer, lr, preconditioner, adam_state)
    if not isinstance(optimizer, str) or optimizer.lower() not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS} or a torch.optim.Optimizer, got {optimizer!r}")
    name = optimizer.lower()
    if lr is None:
        raise ValueError(f"optimizer={optimizer!r} needs lr=")
    lr = check_positive("lr", lr, "learning rate")
    momentum = check_unit("momentum", momentum, "PyTorch SGD's momentum")
    dampening = check_unit("dampening", dampening, "PyTorch SGD's dampening")
    weight_decay = check_positive("weight_decay", weight_decay, "coupled weight decay", allow_zero=True)
    if name in ("heavy_ball", "momentum", "nesterov") and momentum == 0.0:
        raise ValueError(f"optimizer={optimizer!r} needs momentum > 0 (PyTorch's SGD momentum, e.g. 0.9)")
    if name in ("gd", "sgd", "heavy_ball", "momentum", "nesterov"):
        kind = "gd" if momentum == 0.0 else ("nesterov" if nesterov or name == "nesterov" else "heavy_ball")
        return Rule(kind, lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay)
    if name in ("adam", "adamw"):
        b1 = check_unit("betas[0]", betas[0], "Adam's first-moment decay")
        b2 = check_unit("betas[1]", betas[1], "Adam's second-moment decay")
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
        return Rule(name, lr, betas=(b1, b2), eps=float(eps), weight_decay=weight_decay, preconditioner=pre)
    if rho is None:
        raise ValueError("optimizer='sam' needs rho > 0 (the perturbation radius), got None")
    rho = check_positive("rho", rho, "SAM's perturbation radius")
    if sam not in SAM_VARIANTS:
        raise ValueError(f"sam must be one of {SAM_VARIANTS}, got {sam!r}")
    if momentum or weight_decay:
        raise ValueError("the SAM criteria are for SAM on plain gradient descent: momentum and weight_decay must be 0")
    return Rule("sam", lr, rho=rho, sam=sam)


def rule_from_torch(
    problem: Problem,
    optimizer: torch.optim.Optimizer,
    lr: float | None,
    preconditioner: Tensor | Mapping[str, Tensor] | None,
    adam_state: Tensor | Mapping[str, Tensor] | None,
) -> Rule:
    """The update rule of a ``torch.optim.SGD``, ``Adam`` or ``AdamW`` for the Problem's parameters: its
    hyperparameters (shared by the param groups holding them) and, for Adam, the preconditioner from its state."""
    groups = _param_groups(problem, optimizer)
    if _shared(groups, "maximize", False):
        raise ValueError("the optimizer has maximize=True; the criteria are for minimisation")
    lr = check_positive("lr", lr if lr is not None else _shared(groups, "lr"), "learning rate")
    wd = _shared(groups, "weight_decay", 0.0)
    source = f"torch.optim.{type(optimizer).__name__}"
    if isinstance(optimizer, torch.optim.SGD):
        momentum = _shared(groups, "momentum", 0.0)
        dampening = _shared(groups, "dampening", 0.0)
        nest = bool(_shared(groups, "nesterov", False))
        kind = "gd" if momentum == 0 else ("nesterov" if nest else "heavy_ball")
        return Rule(kind, lr, momentum=momentum, dampening=dampening, weight_decay=wd, source=source)
    if isinstance(optimizer, torch.optim.Adam):
        b1, b2 = (float(b) for b in _shared(groups, "betas"))
        eps = _shared(groups, "eps")
        decoupled = isinstance(optimizer, torch.optim.AdamW) or bool(_shared(groups, "decoupled_weight_decay", False))
        if preconditioner is not None or adam_state is not None:
            raise ValueError("with a torch.optim.Adam instance the preconditioner comes from its state: drop it")
        pre = _adam_state_preconditioner(problem, optimizer, bool(_shared(groups, "amsgrad", False)), b2, eps)
        kind = "adamw" if decoupled else "adam"
        return Rule(kind, lr, betas=(b1, b2), eps=eps, weight_decay=wd, preconditioner=pre, source=source)
    raise TypeError(
        f"{type(optimizer).__name__} is not supported: pass torch.optim.SGD, Adam or AdamW, or describe the update "
        f"rule with optimizer in {OPTIMIZERS}"
    )
