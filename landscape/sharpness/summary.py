"""How sharp the point is, in one report: the Hessian's summaries beside every sharpness measure.

:func:`sharpness` gathers ``lambda_max``, the trace and the Frobenius norm of the Hessian (with error bars) and the
worst-case (SAM / ASAM; Foret, Kleiner, Mobahi, Neyshabur 2021; Kwon, Kim, Park, Choi 2021), average-case
(Andriushchenko, Croce, Mueller, Hein, Flammarion 2023) and Keskar (Keskar et al. 2017) sharpness of the current
point. On a quadratic at its minimum SAM sharpness is ``rho^2 lambda_max / 2`` and average-case sharpness
``rho^2 tr(H) / 2``, which :meth:`Sharpness.summary` prints beside the measured values.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any

from landscape._checks import Seed, check_int, check_positive, check_seed
from landscape.linalg import frobenius_norm, top_eigen
from landscape.linalg import trace as estimate_trace
from landscape.linalg.probes import seed_record
from landscape.linalg.results import Diagnostics, EigenResult, Estimate, FrobeniusEstimate
from landscape.operators import hessian
from landscape.problem import Problem, check_problem
from landscape.progress import progress as progress_bar
from landscape.sharpness.average import AverageSharpness, average_sharpness
from landscape.sharpness.keskar import KeskarSharpness, keskar_refusal, keskar_sharpness
from landscape.sharpness.sam import SAMSharpness, sam_sharpness

# Dimension of the random Keskar subspace in the gathered report (capped at the number of parameters).
KESKAR_SUBSPACE_DIM = 100


@dataclass(frozen=True)
class Sharpness(Diagnostics):
    """Curvature summaries and sharpness measures of one point, gathered by :func:`sharpness`.

    A part that was skipped is ``None``. ``lambda_max`` is the top-eigenpair result (Ritz residual in
    ``.residuals``), ``trace`` and ``frobenius`` carry standard errors; the sharpness parts are the results of
    :func:`sam_sharpness` (``sam_first_order``: p = 2, no ascent; ``sam``: p = 2 with ascent; ``sam_inf``: p = inf
    with ascent; ``asam``: adaptive, p = 2, with ascent), :func:`average_sharpness` and :func:`keskar_sharpness`
    (``keskar``: full space; ``keskar_subspace``: random subspace). ``seed``, ``wall_time`` and ``settings`` come
    from :class:`~landscape.linalg.results.Diagnostics`.
    """

    loss: float
    rho: float
    lambda_max: EigenResult | None
    trace: Estimate | None
    frobenius: FrobeniusEstimate | None
    sam_first_order: SAMSharpness | None
    sam: SAMSharpness | None
    sam_inf: SAMSharpness | None
    asam: SAMSharpness | None
    average: AverageSharpness | None
    keskar: KeskarSharpness | None
    keskar_subspace: KeskarSharpness | None
    num_params: int

    def _parts(self) -> list[Any]:
        return [
            p
            for p in (
                self.sam_first_order,
                self.sam,
                self.sam_inf,
                self.asam,
                self.average,
                self.keskar,
                self.keskar_subspace,
            )
            if p is not None
        ]

    @property
    def num_matvecs(self) -> int:
        """Hessian-vector products (eigenvalue, trace and Frobenius estimates)."""
        return sum(int(r.num_matvecs) for r in (self.lambda_max, self.trace, self.frobenius) if r is not None)

    @property
    def num_loss_evaluations(self) -> int:
        return sum(getattr(r, "num_loss_evaluations", 0) for r in self._parts())

    @property
    def num_gradient_evaluations(self) -> int:
        return sum(getattr(r, "num_gradient_evaluations", 0) for r in self._parts())

    def summary(self) -> str:
        """A short human-readable report: every measure with its error bar, beside its quadratic prediction."""
        mode = self.settings.get("problem", {}).get("mode", "?")
        lines = [
            f"sharpness of {self.num_params:,} parameters at L(w) = {self.loss:.6g} (mode {mode}, seed {self.seed})"
        ]
        r2 = self.rho**2 / 2
        if self.lambda_max is not None:
            lam = float(self.lambda_max.values[0])
            lines.append(
                f"lambda_max = {lam:.6g} (Ritz residual {float(self.lambda_max.residuals[0]):.1e}); "
                f"rho^2 lambda_max / 2 = {r2 * lam:.4g}"
            )
        if self.trace is not None:
            tr = float(self.trace.value)
            err = "(exact)" if self.trace.method == "exact" else f"+- {float(self.trace.stderr):.2g}"
            lines.append(f"trace = {tr:.6g} {err}; rho^2 tr / 2 = {r2 * tr:.4g}")
        if self.frobenius is not None:
            lines.append(f"Frobenius norm = {float(self.frobenius.value):.6g} +- {float(self.frobenius.stderr):.2g}")
        for part in (self.sam_first_order, self.sam, self.sam_inf, self.asam):
            if part is not None:
                err = f" +- {part.stderr:.2g}" if part.subset_values.size > 1 else ""
                start = f" ({part.random_starts} random start(s))" if part.random_starts else ""
                lines.append(f"{part.name}: {part.value:.6g}{err}{start}")
        if self.average is not None:
            a = self.average
            lines.append(f"average-case (rho = {a.rho:g}): {a.value:.6g} +- {a.stderr:.2g}")
        for part in (self.keskar, self.keskar_subspace):
            if part is not None:
                space = "full space" if part.subspace_dim is None else f"{part.subspace_dim}-dim subspace"
                lines.append(f"Keskar (eps = {part.eps:g}, {space}): {part.value:.6g} %")
        for name, why in self.settings.get("skipped", {}).items():
            lines.append(f"{name}: skipped, {why.split('; ')[0]}")
        lines.append(
            f"({self.num_matvecs} Hessian-vector products, {self.num_gradient_evaluations} gradient and "
            f"{self.num_loss_evaluations} loss evaluations, {self.wall_time:.2f} s)"
        )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready numbers (no tensors)."""
        out: dict[str, Any] = {
            "loss": self.loss,
            "rho": self.rho,
            "num_params": self.num_params,
            "num_matvecs": self.num_matvecs,
            "num_loss_evaluations": self.num_loss_evaluations,
            "num_gradient_evaluations": self.num_gradient_evaluations,
            "seed": self.seed,
            "wall_time": self.wall_time,
            "settings": self.settings,
        }
        if self.lambda_max is not None:
            out["lambda_max"] = {
                "value": float(self.lambda_max.values[0]),
                "residual": float(self.lambda_max.residuals[0]),
                "error_bound": float(self.lambda_max.error_bounds[0]),
                "converged": bool(self.lambda_max.converged[0]),
                "num_matvecs": int(self.lambda_max.num_matvecs),
            }
        for name in ("trace", "frobenius"):
            est = getattr(self, name)
            if est is not None:
                out[name] = {
                    "value": float(est.value),
                    "stderr": float(est.stderr),
                    "num_matvecs": est.num_matvecs,
                    "method": est.method,
                }
        for name in ("sam_first_order", "sam", "sam_inf", "asam", "average", "keskar", "keskar_subspace"):
            part = getattr(self, name)
            if part is not None:
                out[name] = part.to_dict()
        return out


def sharpness(
    problem: Problem,
    rho: float = 0.05,
    *,
    seed: Seed = 0,
    steps: int = 20,
    m: int | None = None,
    eta: float = 0.01,
    num_samples: int = 20,
    eps: float = 1e-3,
    subspace_dim: int | None = KESKAR_SUBSPACE_DIM,
    maxiter: int = 10,
    num_matvecs: int = 100,
    trace_method: str = "auto",
    eigen: bool = True,
    trace: bool = True,
    frobenius: bool = True,
    sam: bool = True,
    asam: bool = True,
    average: bool = True,
    keskar: bool | str = "auto",
    engine: str = "double_backward",
    progress: bool = False,
    memory_budget: int | None = None,
    perturbations: bool = True,
) -> Sharpness:
    """Curvature summaries and every sharpness measure of the current point, in one report.

    Gathers ``lambda_max`` (:func:`landscape.top_eigen` on :func:`landscape.hessian`, with its Ritz residual), the
    trace (:func:`landscape.trace`: exact where BackPACK supports the model, else Hutch++) and Frobenius norm
    (:func:`landscape.frobenius_norm`) with standard errors, SAM sharpness (p = 2 first order and with ``steps`` of
    ascent, p = inf with ascent), ASAM (p = 2, with ascent), average-case sharpness and Keskar sharpness (full space
    and a random subspace). On a quadratic at its minimum ``SAM = rho^2 lambda_max / 2`` and
    ``average = rho^2 tr(H) / 2``; :meth:`Sharpness.summary` prints
    these predictions beside the measured values.

    Parameters
    ----------
    problem : Problem
    rho : float
        Radius of SAM/ASAM and scale of the average-case noise.
    seed : int or torch.Generator
        Handed to every part (a generator is advanced through them in order).
    steps, m, eta
        Ascent steps, m-sharpness subset size and ASAM offset (:func:`sam_sharpness`); ``m`` applies to the SAM and
        ASAM parts.
    num_samples
        Draws of the average-case sharpness.
    eps, subspace_dim, maxiter
        Keskar sharpness; the subspace part uses ``min(subspace_dim, P)`` dimensions and is skipped for ``None``.
    num_matvecs
        Budget of the trace and of the Frobenius estimate (each).
    trace_method
        :func:`landscape.trace`'s ``method``: ``"auto"`` (default) is exact when every layer and the loss are
        supported by BackPACK's second-order backpropagation and Hutch++ otherwise (``trace.settings["note"]`` says
        which ran and why).
    eigen, trace, frobenius, sam, asam, average, keskar
        Set to ``False`` to skip that (expensive) part; it is then ``None`` in the result. ``keskar="auto"``
        (default) runs each Keskar part that fits ``memory_budget`` and records why the others were skipped in
        ``settings["skipped"]`` (at 10^7-10^8 parameters neither L-BFGS-B on every coordinate nor a 100-column
        random basis fits); ``True`` runs both or raises :class:`~landscape.memory.MemoryBudgetError`.
    engine
        Hessian-vector product engine; fixed by default (with column-by-column blocks) so the same seed gives
        bit-identical results, ``"auto"`` picks the fastest by timing.
    progress : bool
        Show a progress bar over the parts (eigenvalue, trace, ..., each SAM ascent, the average-case draws) on stderr.
    memory_budget : int, optional
        Bytes the Keskar parts may hold (default :func:`landscape.memory.default_budget`).
    perturbations : bool
        Keep the best perturbation ``e*`` of each SAM/ASAM part (``.perturbation``: a parameter-sized vector each,
        four in all, 2 GB on GPT-2 small); ``False`` drops them once their values are measured (``None``), as the
        report does.

    Returns
    -------
    Sharpness
    """
    start = time.perf_counter()
    check_problem(problem)
    rho = check_positive("rho", rho, "radius of the perturbation ball")
    seed = check_seed(seed)
    if keskar not in (True, False, "auto"):
        raise ValueError(f"keskar must be True, False or 'auto', got {keskar!r}")
    if subspace_dim is not None:
        subspace_dim = min(
            check_int("subspace_dim", subspace_dim, 1, "dimension of the random subspace"), problem.num_params
        )
    lam = tr = fro = None
    settings: dict[str, Any] = {"problem": problem.describe()}
    parts = [eigen, trace, frobenius, sam, sam, sam, asam, average, keskar, keskar and subspace_dim is not None]
    bar = progress_bar(sum(bool(p) for p in parts), "sharpness", progress, unit="part")

    def done(name: str) -> None:
        bar.set_postfix_str(name)
        bar.update(1)

    if eigen or trace or frobenius:
        op = hessian(problem, engine=engine, block="loop" if engine != "auto" else "auto")
        if eigen:
            lam = top_eigen(op, 1, seed=seed, vectors=False)  # the value alone: two vectors of memory
            done("lambda_max")
        if trace:
            tr = estimate_trace(
                op, method=trace_method, num_matvecs=num_matvecs, seed=seed, memory_budget=memory_budget
            )
            done("trace")
        if frobenius:
            fro = frobenius_norm(op, num_matvecs=num_matvecs, seed=seed, memory_budget=memory_budget)
            done("Frobenius")
        settings["hessian"] = {"engine": op.engine, "block": op.block, "chosen": dict(op.chosen)}
        # The operator keeps the gradient graphs its products reuse (1.4 GB on ResNet-18 at 128 images): gone before
        # the SAM ascents build gradients of their own.
        del op

    def ascent(**kw: Any) -> SAMSharpness:
        r = sam_sharpness(problem, rho, m=m, seed=seed, **kw)
        return r if perturbations else replace(r, perturbation=None)

    sam1 = sam2 = saminf = asam_r = None
    if sam:
        sam1 = ascent(p=2, steps=0)
        done("SAM first order")
        sam2 = ascent(p=2, steps=steps)
        done("SAM")
        saminf = ascent(p=math.inf, steps=steps)
        done("SAM p=inf")
    if asam:
        asam_r = ascent(p=2, adaptive=True, eta=eta, steps=steps)
        done("ASAM")
    avg = None
    if average:
        avg = average_sharpness(problem, rho, num_samples=num_samples, seed=seed)
        done("average")
    kes = kes_sub = None
    skipped: dict[str, str] = {}
    if keskar:
        for dim, name in ((None, "Keskar"), (subspace_dim, "Keskar subspace")):
            if name == "Keskar subspace" and dim is None:
                continue
            refused = keskar_refusal(problem, dim, memory_budget) if keskar == "auto" else None
            if refused is not None:
                skipped[name] = refused
            else:
                part = keskar_sharpness(
                    problem, eps, subspace_dim=dim, maxiter=maxiter, seed=seed, memory_budget=memory_budget
                )
                kes, kes_sub = (part, kes_sub) if dim is None else (kes, part)
            done(name)
    if skipped:
        settings["skipped"] = skipped
    bar.close()
    settings.update(
        {
            "steps": steps,
            "m": m,
            "eta": eta,
            "num_samples": num_samples,
            "eps": eps,
            "subspace_dim": subspace_dim,
            "maxiter": maxiter,
            "num_matvecs": num_matvecs,
            "trace_method": trace_method,
            "perturbations": perturbations,
        }
    )
    return Sharpness(
        loss=problem.loss(),
        rho=rho,
        lambda_max=lam,
        trace=tr,
        frobenius=fro,
        sam_first_order=sam1,
        sam=sam2,
        sam_inf=saminf,
        asam=asam_r,
        average=avg,
        keskar=kes,
        keskar_subspace=kes_sub,
        num_params=problem.num_params,
        seed=seed_record(seed),
        wall_time=time.perf_counter() - start,
        settings=settings,
    )


__all__ = ["Sharpness", "sharpness"]
