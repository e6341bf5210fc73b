"""The :func:`stability` entry: every criterion of one update rule at one learning rate, in one report.

It resolves the rule (:mod:`landscape.stability.rules`), measures the curvature its criteria need (the top eigenvalue
of the Hessian with coupled weight decay, of Adam's preconditioned Hessian, or the minibatch statistics of
:mod:`landscape.stability.sgd`) and gathers the verdicts in a :class:`~landscape.stability.report.StabilityReport`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from landscape import reductions
from landscape._checks import check_batch_size, check_seed, generator, seed_int
from landscape.linalg import top_eigen
from landscape.operators import hessian
from landscape.operators.base import CurvatureOperator
from landscape.operators.exact import ExactDiagonalUnavailable, exact_diagonal
from landscape.operators.transformed import Transformed
from landscape.problem import Problem, check_problem
from landscape.scaling import finite_population_factor
from landscape.stability.report import KINDS, Criterion, StabilityReport, criterion
from landscape.stability.rules import REF_SAM, Rule, resolve_rule
from landscape.stability.sgd import (
    EXACT_AUTO_MAX_PARAMS,
    EXACT_MAX_PARAMS,
    batch_sharpness_criterion,
    dense_stats,
    matrix_free_stats,
    sgd_criteria,
)

__all__ = ["stability"]


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
    seed: int | torch.Generator = 0,
    progress: bool = False,
) -> StabilityReport:
    """Linear-stability criteria of an optimizer at ``lr`` at the Problem's current parameters.

    The formulas and papers are in the docstrings of :mod:`landscape.stability.rules` and
    :mod:`landscape.stability.sgd`: ``lambda_max(H) < 2/lr`` for gradient descent,
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
    seed : int or torch.Generator
        Seed of a local generator for every random start, probe and sampled batch; the global RNG is never touched.
        A ``torch.Generator`` gives the ``int`` seed (one draw from it), which the report records.
    progress : bool
        Show a progress bar (stderr) over the Lanczos steps of every top-eigenvalue computation.

    Returns
    -------
    StabilityReport
        ``.criteria``, ``.stable`` (all exact and necessary criteria hold), ``.max_stable_lr``, ``.summary()``,
        ``.to_dict()``.
    """
    start = time.perf_counter()
    check_problem(problem)
    check_seed(seed)
    if exact not in ("auto", True, False):
        raise ValueError(f"exact must be 'auto', True or False, got {exact!r}")
    rule = resolve_rule(
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
        batch_size = check_batch_size("batch_size", batch_size, n)
        if rule.kind == "sam" and batch_size < n:
            raise ValueError("the SAM criteria are for full-batch SAM: pass batch_size=None")
        if isinstance(optimizer, str) and optimizer.lower() == "gd" and batch_size < n:
            raise ValueError("optimizer='gd' is full-batch gradient descent: use optimizer='sgd' with batch_size")
    minibatch = batch_size is not None and batch_size < n
    seed = seed_int(seed)
    gen = generator(seed)
    notes: list[str] = []
    criteria: list[Criterion] = []
    matvecs = 0
    per_example = 0
    settings: dict[str, Any] = {"optimizer": rule.describe(), "problem": problem.describe(), "tol": tol}

    if rule.kind == "sam":
        op = hessian(problem, engine="double_backward")
        # Without the vectors, k=1 runs on two vectors of memory (1 GB on GPT-2 small) instead of a Lanczos basis.
        lam = float(top_eigen(op, 1, tol=tol, seed=gen, progress=progress, vectors=False).values[0])
        matvecs += op.num_matvecs
        if rule.sam == "normalized":
            _, g = problem.loss_and_grad()
            gnorm = reductions.norm(g)
            eff = lam * (1.0 + rule.rho * lam / gnorm) if gnorm > 0 else math.inf
            criteria.append(
                criterion(
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
                criterion(
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
        scaled = Transformed(
            op, scale=rule.preconditioner.rsqrt(), shift=rule.weight_decay if rule.kind == "adam" else 0.0
        )
        lam_p = float(top_eigen(scaled, 1, tol=tol, seed=gen, progress=progress, vectors=False).values[0])
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
            criterion(
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
            p = finite_population_factor(batch_size, n)
            if use_exact:
                stats, per_example = dense_stats(problem, p, rule.weight_decay)
            else:
                stats, mv, per_example = matrix_free_stats(
                    problem, rule.weight_decay, gen, tol, int(num_probes), progress
                )
                matvecs += mv
                if stats.coherence is None:
                    notes.append(f"coherence criterion {stats.details['coherence']}")
                notes.append(
                    "no exact mean-square criterion (needs the dense per-example Hessians: exact=True, P <= "
                    f"{EXACT_MAX_PARAMS}); max_stable_lr is an upper bound"
                )
            criteria.extend(sgd_criteria(stats, rule, lr, n, batch_size))
            settings["sgd"] = {
                "p": p,
                "exact": use_exact,
                "num_probes": int(num_probes),
                "sampling": "uniform B-subsets",
            }
        else:
            op = hessian(problem, engine="double_backward")
            shifted = Transformed(op, shift=rule.weight_decay)
            lam = float(top_eigen(shifted, 1, tol=tol, seed=gen, progress=progress, vectors=False).values[0])
            matvecs += op.num_matvecs
            criteria.append(
                criterion(
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
            crit, mv = batch_sharpness_criterion(problem, rule, lr, batch_size, seed)
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
        seed=seed,
        num_matvecs=int(matvecs),
        num_per_example_products=int(per_example),
        wall_time=time.perf_counter() - start,
        settings=settings,
        notes=tuple(notes),
    )


def _preconditioned_diagonal(op: CurvatureOperator, rule: Rule) -> dict[str, Any]:
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
