"""Everything about a Hessian's spectrum from one shared Krylov pass.

``n_v`` Lanczos recurrences with full reorthogonalisation (one block product per step, so one data pass per step
for all probes) give at once:

- top eigenvalues: the extreme Ritz values, with Ritz residuals ``beta_m |y_{m,i}|`` and error bounds;
- the spectral density: Gauss quadrature nodes/weights (stochastic Lanczos quadrature; Ubaru, Chen, Saad 2017;
  Ghorbani, Krishnan, Xiao 2019);
- trace and Frobenius norm: ``tr H ~ P mean_l v_l^T H v_l`` and ``||H||_F^2 ~ P mean_l v_l^T H^2 v_l`` (both exact
  per probe once ``m >= 2``), with standard errors across probes;
- the LLA criteria ``re`` and ``Kh_n`` (Gabdullin et al. 2024).

With ``subsets=k`` the data are split into ``k`` disjoint parts and the same pass is repeated on each part: the
spread of trace and ``lambda_max`` across parts is the standard error due to the finite data set (the quantity
Papyan 2020 and Granziol et al. 2022 warn dominates on small data), reported beside the probe error.

With ``cache=`` a result is stored under a content key of the problem and every setting, and a later call with the
same problem and settings returns it without a single Hessian-vector product.
"""

from __future__ import annotations

import functools
import math
import os
import time
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from landscape.cache import Cache
from landscape.linalg.lanczos import LanczosDecomposition, lanczos
from landscape.linalg.probes import SeedLike, make_generator, seed_record
from landscape.linalg.results import Diagnostics, Estimate
from landscape.linalg.short_recurrence import genuine
from landscape.linalg.slq import LLACriteria, SpectralDensity
from landscape.memory import MemoryEstimate, estimate
from landscape.operators import CurvatureOperator, ggn, hessian
from landscape.problem import Problem
from landscape.store import Codec, remember

OPERATORS = {"hessian": hessian, "ggn": ggn}


@dataclass(frozen=True)
class SubsetSpread:
    """Trace and ``lambda_max`` on ``k`` disjoint data subsets: the data-sampling error of the full-data values."""

    traces: np.ndarray
    lambda_max: np.ndarray
    sizes: np.ndarray

    @staticmethod
    def _stderr(x: np.ndarray) -> float:
        return float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else math.nan

    @property
    def trace_stderr(self) -> float:
        return self._stderr(self.traces)

    @property
    def lambda_max_stderr(self) -> float:
        return self._stderr(self.lambda_max)


@dataclass(frozen=True)
class Spectrum(Diagnostics):
    """Top eigenvalues, trace, Frobenius norm and spectral density from one Krylov pass (see module docstring); the
    seed, wall time and settings come from :class:`~landscape.linalg.results.Diagnostics`."""

    eigenvalues: np.ndarray
    eigen_residuals: np.ndarray
    eigen_error_bounds: np.ndarray
    eigen_converged: np.ndarray
    eigenvectors: Tensor | None
    trace: Estimate
    frobenius: Estimate
    density: SpectralDensity
    lla: LLACriteria
    subsets: SubsetSpread | None
    num_params: int
    num_matvecs: int

    @property
    def lambda_max(self) -> float:
        return float(self.eigenvalues[0])

    def summary(self) -> str:
        """A short human-readable report (numbers with their error bars)."""
        lines = [
            f"{self.settings.get('operator', 'operator')} spectrum of {self.num_params:,} parameters "
            f"({self.num_matvecs} matrix-vector products, {self.wall_time:.2f} s, seed {self.seed})",
            "top eigenvalues: "
            + ", ".join(f"{v:.6g}" for v in self.eigenvalues)
            + f"  (max Ritz residual {np.max(self.eigen_residuals):.1e}, "
            + ("all converged" if bool(np.all(self.eigen_converged)) else "NOT all converged")
            + ")",
            f"trace: {self.trace.value:.6g} +- {self.trace.stderr:.2g} (probe stderr)",
            f"Frobenius norm: {self.frobenius.value:.6g} +- {self.frobenius.stderr:.2g}",
            f"density: support [{self.density.lambda_min:.4g}, {self.density.lambda_max:.4g}], "
            f"{self.density.num_probes} probes x {self.density.nodes.shape[1]} steps, sigma {self.density.sigma:.3g}",
            f"negative curvature (LLA): re = |lambda_min/lambda_max| = {self.lla.re:.3g}, Kh_0.5 = {self.lla.kh:.3g}",
        ]
        if self.subsets is not None:
            lines.append(
                f"across {self.subsets.traces.size} data subsets: trace stderr {self.subsets.trace_stderr:.2g}, "
                f"lambda_max stderr {self.subsets.lambda_max_stderr:.2g}"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready numbers (no tensors)."""
        out = {
            "eigenvalues": self.eigenvalues.tolist(),
            "eigen_residuals": self.eigen_residuals.tolist(),
            "eigen_error_bounds": self.eigen_error_bounds.tolist(),
            "eigen_converged": [bool(c) for c in self.eigen_converged],
            "trace": self.trace.value,
            "trace_stderr": self.trace.stderr,
            "frobenius": self.frobenius.value,
            "frobenius_stderr": self.frobenius.stderr,
            "density": {
                "lambda_min": self.density.lambda_min,
                "lambda_max": self.density.lambda_max,
                "sigma": self.density.sigma,
                "num_probes": self.density.num_probes,
                "num_steps": int(self.density.nodes.shape[1]),
            },
            "lla": {"re": self.lla.re, "kh": self.lla.kh, "n": self.lla.n},
            "num_params": self.num_params,
            "num_matvecs": self.num_matvecs,
            "seed": self.seed,
            "wall_time": self.wall_time,
            "settings": self.settings,
        }
        if self.subsets is not None:
            out["subsets"] = {
                "traces": self.subsets.traces.tolist(),
                "lambda_max": self.subsets.lambda_max.tolist(),
                "trace_stderr": self.subsets.trace_stderr,
                "lambda_max_stderr": self.subsets.lambda_max_stderr,
            }
        return out

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Lossless split into numpy arrays and JSON-able attributes (the form stored by :class:`Cache`).

        Nested results (trace, Frobenius, density, LLA, subsets) become dicts of their scalar fields, their arrays
        are stored as ``"<field>.<name>"``; :meth:`from_arrays` inverts it exactly.
        """
        arrays: dict[str, np.ndarray] = {}
        attrs: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "eigenvectors":
                if value is not None:
                    t = value.detach().cpu()
                    # numpy has no bfloat16; float32 holds every bfloat16 value exactly.
                    arrays[f.name] = (t.float() if t.dtype == torch.bfloat16 else t).numpy()
                    attrs["eigenvectors_dtype"] = str(t.dtype).replace("torch.", "")
            elif is_dataclass(value):
                attrs[f.name] = _split(value, f"{f.name}.", arrays)
            elif isinstance(value, np.ndarray):
                arrays[f.name] = value
            else:
                attrs[f.name] = value
        return arrays, attrs

    @classmethod
    def from_arrays(
        cls, arrays: dict[str, np.ndarray], attrs: dict[str, Any], *, device: torch.device | str = "cpu"
    ) -> Spectrum:
        """Rebuild a :class:`Spectrum` from :meth:`to_arrays` output (extra attributes are ignored).

        ``device`` places the eigenvectors, if any.
        """
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "eigenvectors":
                vec = arrays.get(f.name)
                dtype = getattr(torch, attrs.get("eigenvectors_dtype", "float64"))
                kwargs[f.name] = None if vec is None else torch.as_tensor(vec).to(device=device, dtype=dtype)
            elif f.name in _NESTED:
                part = attrs[f.name]
                kwargs[f.name] = None if part is None else _join(_NESTED[f.name], f"{f.name}.", arrays, part)
            elif f.name in arrays:
                kwargs[f.name] = arrays[f.name]
            else:
                kwargs[f.name] = attrs[f.name]
        return cls(**kwargs)


_NESTED = {
    "trace": Estimate,
    "frobenius": Estimate,
    "density": SpectralDensity,
    "lla": LLACriteria,
    "subsets": SubsetSpread,
}


def _split(result: Any, prefix: str, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Move a result's array fields into ``arrays`` (names prefixed); return its other fields."""
    rest = {}
    for f in fields(result):
        value = getattr(result, f.name)
        if isinstance(value, np.ndarray):
            arrays[prefix + f.name] = value
        else:
            rest[f.name] = value
    return rest


def _join(cls: type, prefix: str, arrays: dict[str, np.ndarray], rest: dict[str, Any]) -> Any:
    """Inverse of :func:`_split`."""
    names = {f.name for f in fields(cls)}
    own = {name[len(prefix) :]: a for name, a in arrays.items() if name.startswith(prefix)}
    return cls(**{k: v for k, v in rest.items() if k in names}, **own)


def _krylov(
    op: CurvatureOperator,
    num_probes: int,
    num_steps: int,
    gen: torch.Generator,
    keep_basis: bool,
    progress: bool,
    memory_budget: int | None = None,
    group: int | None = None,
):
    return lanczos(
        op,
        num_steps,
        num_probes=num_probes,
        distribution="rademacher",
        seed=gen,
        restart_on_breakdown=False,
        keep_basis=keep_basis,
        progress=progress,
        memory_budget=memory_budget,
        probe_group=group,
    )


def _probe_group(
    op: CurvatureOperator, num_probes: int, num_steps: int, memory_budget: int | None
) -> tuple[int | None, MemoryEstimate | None]:
    """The most probes that may run at once within the memory budget (:func:`landscape.memory.estimate`; all of
    them when the operator has no problem to estimate), and the estimate of that plan; :class:`MemoryBudgetError`
    when not even one fits."""
    problem = getattr(op, "problem", None)
    if not isinstance(problem, Problem):
        return None, None
    for group in range(num_probes, 0, -1):
        est = estimate(
            problem,
            "spectrum",
            memory_budget=memory_budget,
            num_probes=num_probes,
            num_steps=num_steps,
            group=group,
            in_place_product=op.adds_in_place,
        )
        if est.fits:
            return group, est
    est.check("Use fewer steps (num_steps=) or smaller batches")
    return None, None


def spectrum(
    problem_or_op: Problem | CurvatureOperator,
    *,
    engine: str = "auto",
    block: str = "auto",
    k: int = 5,
    num_probes: int = 8,
    num_steps: int = 40,
    subsets: int | None = None,
    operator: str = "hessian",
    eigenvectors: bool = False,
    tol: float = 1e-4,
    sigma: float | None = None,
    seed: SeedLike = 0,
    cache: Cache | str | os.PathLike[str] | None = None,
    progress: bool = False,
    memory_budget: int | None = None,
) -> Spectrum:
    """Top-``k`` eigenvalues, trace, Frobenius norm, spectral density and LLA criteria from one Krylov pass.

    Parameters
    ----------
    problem_or_op
        A :class:`Problem` (its ``operator`` is built) or any symmetric :class:`CurvatureOperator`.
    k
        Number of top eigenvalues: the ``i``-th is the largest ``i``-th Ritz value over the probes (each a lower
        bound of ``lambda_i``), with that probe's residual, error bound and Ritz vector; on the three-term
        recurrence (see ``memory_budget``) the top-``k`` of the probe whose worst top-``k`` residual is smallest.
    num_probes, num_steps
        SLQ probes ``n_v`` and Lanczos steps ``m`` per probe; cost ``n_v * m`` products in ``m`` data passes.
    subsets
        Repeat the pass on this many disjoint data subsets (needs a Problem) for the data-sampling error.
    operator
        ``"hessian"`` or ``"ggn"`` when given a Problem.
    engine, block
        Product engine and block strategy of that operator (``"auto"`` measures; fix both for bit-identical
        re-runs).
    eigenvectors
        Keep the Lanczos bases to return the top-``k`` Ritz vectors (memory ``n_v * m * P`` numbers).
    tol
        A Ritz pair counts as converged when its residual is ``<= tol * max |theta|``.
    sigma
        Density smoothing width; default the Lanczos resolution ``(lambda_max - lambda_min) / m``.
    seed
        Seed or generator for the probes (an int with ``cache``).
    cache
        A :class:`Cache` or the path of one. The result is stored under a content key of the problem (parameters,
        model state, data, mode policy) and every setting above; a later identical call returns the stored
        :class:`Spectrum` (its ``wall_time`` and ``num_matvecs`` are those of the original computation) without
        computing anything. Needs a :class:`Problem`.
    progress
        Show a progress bar over the Lanczos steps (and one per data subset) on stderr; never part of the cache key.
    memory_budget
        Bytes the analysis may use (default: 80% of the memory available now). When the ``n_v (m + 1)`` basis
        vectors do not fit half of it, the probes run on the three-term recurrence (``2 n_v`` vectors; see
        :func:`landscape.linalg.lanczos.lanczos`): the density keeps its accuracy, and the top-``k`` Ritz values
        count each eigenvalue once (copies and spurious values removed, Cullum & Willoughby 1985). When the whole
        run (:func:`landscape.memory.estimate`) does not fit with every probe at once, the probes run in groups,
        one after another (``settings["probe_groups"]``).
        ``settings["reorthogonalisation"]`` says which ran. Not part of the cache key.
    """
    settings = {
        "engine": engine,
        "block": block,
        "k": k,
        "num_probes": num_probes,
        "num_steps": num_steps,
        "subsets": subsets,
        "operator": operator,
        "eigenvectors": eigenvectors,
        "tol": tol,
        "sigma": sigma,
        "seed": seed,
    }
    # Data-parallel, rank 0's cache decides (the others' is ignored), so every rank takes the same path.
    on_ranks = isinstance(problem_or_op, Problem) and problem_or_op.ranks is not None
    if cache is not None and not isinstance(problem_or_op, Problem):
        raise TypeError(
            f"cache= needs a Problem, got a {type(problem_or_op).__name__}: an operator alone has no content key "
            "(its parameters and data are unknown). Pass the Problem, or drop cache="
        )
    if cache is not None and isinstance(seed, torch.Generator):
        raise TypeError(
            "cache= needs an int seed: a torch.Generator's draws depend on its state, which the cache key cannot "
            "record. Pass seed=<int>, or drop cache="
        )
    if cache is None and not on_ranks:
        return _compute(problem_or_op, **settings, progress=progress, memory_budget=memory_budget)
    codec = Codec(Spectrum.to_arrays, functools.partial(Spectrum.from_arrays, device=problem_or_op.device))
    # Data-parallel, every rank computes (the products are all-reduced), with a progress bar on rank 0 alone.
    show = progress and (not on_ranks or problem_or_op.ranks.rank == 0)
    result, _ = remember(
        cache,
        problem_or_op,
        "spectrum",
        settings,
        lambda: _compute(problem_or_op, **settings, progress=show, memory_budget=memory_budget),
        codec=codec,
        order_free=not settings["subsets"],
    )
    return result


def _compute(
    problem_or_op: Problem | CurvatureOperator,
    *,
    engine: str,
    block: str,
    k: int,
    num_probes: int,
    num_steps: int,
    subsets: int | None,
    operator: str,
    eigenvectors: bool,
    tol: float,
    sigma: float | None,
    seed: SeedLike,
    progress: bool = False,
    memory_budget: int | None = None,
) -> Spectrum:
    t0 = time.perf_counter()
    if isinstance(problem_or_op, Problem):
        if operator not in OPERATORS:
            raise ValueError(f"operator must be one of {sorted(OPERATORS)}, got {operator!r}")
        op = OPERATORS[operator](problem_or_op, engine=engine, block=block)
        settings: dict[str, Any] = {"operator": operator, **problem_or_op.describe()}
    elif isinstance(problem_or_op, CurvatureOperator):
        if subsets:
            raise ValueError("subsets=k needs a Problem (the data are split), not an operator")
        op = problem_or_op
        settings = {"operator": type(op).__name__}
    else:
        raise TypeError(f"spectrum expects a Problem or CurvatureOperator, got {type(problem_or_op).__name__}")
    if k < 1 or k > num_steps:
        raise ValueError(f"k must be between 1 and num_steps={num_steps}, got {k}")
    group, planned = _probe_group(op, num_probes, num_steps, memory_budget)
    gen = make_generator(seed)
    before = op.num_matvecs
    dec = _krylov(op, num_probes, num_steps, gen, eigenvectors, progress, memory_budget, group)
    P = op.space.size(op.shape[0])  # the global dimension (sharded: op.shape is this rank's)
    summary = krylov_summary(dec, P, k=k, tol=tol, sigma=sigma, eps=torch.finfo(op.dtype).eps, seed=seed)
    spread = None
    if subsets:
        parts = problem_or_op.subsets(subsets)
        traces, lmax, sizes = [], [], []
        for part in parts:
            sub = _krylov(
                OPERATORS[operator](part, engine=engine, block=block),
                num_probes,
                num_steps,
                gen,
                keep_basis=False,
                progress=progress,
                memory_budget=memory_budget,
                group=group,
            )
            sub_density = SpectralDensity.from_lanczos(sub, P)
            traces.append(sub_density.trace().value)
            lmax.append(sub_density.lambda_max)
            sizes.append(part.num_samples)
        spread = SubsetSpread(np.array(traces), np.array(lmax), np.array(sizes))
    settings.update(num_probes=num_probes, num_steps=num_steps, k=k, tol=tol, subsets=subsets)
    settings["reorthogonalisation"] = dec.settings["reorthogonalisation"]
    settings["probe_groups"] = dec.settings["probe_groups"]
    if planned is not None:  # what the plan expected (the machine's free memory decides it): compare with the peak
        settings["memory"] = {
            "probes_at_once": group,
            "expected_peak_bytes": planned.total,
            "need_bytes": planned.need,
            "budget_bytes": planned.budget,
            "parts": dict(planned.parts),
        }
    if hasattr(op, "chosen"):
        settings["engine"] = {str(w): name for w, name in op.chosen.items()}
    elif isinstance(getattr(op, "settings", None), dict):  # finite differences: the step and the error bound
        settings["products"] = dict(op.settings)
    return Spectrum(
        **summary,
        subsets=spread,
        num_params=P,
        num_matvecs=op.num_matvecs - before,
        seed=seed_record(seed),
        wall_time=time.perf_counter() - t0,
        settings=settings,
    )


def krylov_summary(
    dec: LanczosDecomposition, num_params: int, *, k: int, tol: float, sigma: float | None, eps: float, seed: SeedLike
) -> dict[str, Any]:
    """The fields of a :class:`Spectrum` that one Lanczos pass of a ``num_params``-dimensional operator gives:
    top-``k`` Ritz pairs with residuals and bounds, the SLQ density, its trace, the Frobenius norm from its second
    moment and the LLA criteria (shared with :func:`landscape.blocks.block_spectra`, one pass per diagonal block)."""
    density = SpectralDensity.from_lanczos(dec, num_params, sigma=sigma)
    values, residuals, bounds, converged, vectors = _top_ritz(dec, k, tol, eps)
    fro_sq = num_params * density.moments(2).samples[:, 1]
    fro_sq_mean = float(fro_sq.mean())
    fro_sq_se = float(fro_sq.std(ddof=1) / math.sqrt(fro_sq.size)) if fro_sq.size > 1 else math.nan
    frob = Estimate(
        value=math.sqrt(max(fro_sq_mean, 0.0)),
        stderr=fro_sq_se / (2 * math.sqrt(fro_sq_mean)) if fro_sq_mean > 0 else math.nan,
        num_matvecs=dec.num_matvecs,
        seed=seed_record(seed),
        method="slq",
        wall_time=dec.wall_time,
        samples=fro_sq,
        settings={"squared": fro_sq_mean, "squared_stderr": fro_sq_se},
    )
    return {
        "eigenvalues": values,
        "eigen_residuals": residuals,
        "eigen_error_bounds": bounds,
        "eigen_converged": converged,
        "eigenvectors": vectors,
        "trace": density.trace(),
        "frobenius": frob,
        "density": density,
        "lla": density.lla_criteria(),
    }


class _Candidate(NamedTuple):
    """One probe's top-``k`` Ritz pairs (descending), with their residuals, error bounds, eigenvector coordinates
    ``Y`` in the probe's basis, and the probe's largest ``|theta|`` (the convergence scale)."""

    probe: int
    values: np.ndarray
    residuals: np.ndarray
    bounds: np.ndarray
    Y: np.ndarray
    scale: float


def _largest(values: np.ndarray, residuals: np.ndarray) -> int:
    """The candidate with the largest value; among those that no residual tells apart from it (closer than the
    smaller of the two residuals: two probes converged to one eigenvalue differ by rounding), the smallest residual,
    so the choice does not flip with rounding (one process against the same run sharded)."""
    top = int(np.argmax(values))
    tied = np.flatnonzero(values[top] - values <= np.minimum(residuals[top], residuals))
    return int(tied[np.argmin(residuals[tied])])


def _top_ritz(dec: LanczosDecomposition, k: int, tol: float, eps: float):
    """Top-``k`` Ritz pairs over all recurrences, each with its own probe's residual ``beta_m |y_{m,i}|``, error bound
    ``min(r, r^2 / gap)`` (the gap to that probe's other Ritz values) and Ritz vector.

    Fully reorthogonalised, the ``i``-th is the largest ``i``-th Ritz value of any probe: each is a lower bound of
    ``lambda_i`` (Cauchy interlacing of the Rayleigh-Ritz values of a subspace; Parlett 1998, section 10.1), so the
    largest is the closest, and a probe whose few steps resolved the top well gives the top, another the next ones
    (of values within their residuals of each other, the best converged: :func:`_largest`).
    On the three-term recurrence that bound fails (a copy of a converged eigenvalue on its way in sits above the
    next eigenvalue: 10.005 between 20 and 10 on the tests' known spectrum), so there the top-``k`` come from the one
    probe whose worst top-``k`` residual is smallest. Probes with fewer than ``k`` (genuine) Ritz values take no
    part."""
    local = dec.basis is None and dec.settings.get("reorthogonalisation", "").startswith("local")
    candidates = []
    for probe in range(dec.num_probes):
        theta, Y = dec.ritz(probe)
        if theta.size < k:
            continue
        res = dec.ritz_residuals(probe)
        if local:
            # Without reorthogonalisation converged eigenvalues repeat and spurious values appear: count each
            # eigenvalue once (Cullum-Willoughby).
            alphas, betas = dec.tridiagonal(probe)
            mask = genuine(alphas, betas, theta, res, eps)
            theta, Y, res = theta[mask], Y[:, mask], res[mask]
            if theta.size < k:
                continue
        idx = np.argsort(theta)[::-1][:k]
        others = np.sort(theta)
        gaps = np.array(
            [
                np.min(np.abs(np.delete(others, np.searchsorted(others, t)) - t)) if theta.size > 1 else math.inf
                for t in theta[idx]
            ]
        )
        r = res[idx]
        bounds = np.minimum(r, r**2 / np.maximum(gaps, 1e-300))
        candidates.append(_Candidate(probe, theta[idx], r, bounds, Y[:, idx], float(np.abs(theta).max())))
    if not candidates:
        raise ValueError(f"every Lanczos recurrence ended before {k} steps: ask for fewer eigenvalues")
    tops = np.stack([c.values for c in candidates])  # (probes, k), each row descending
    res = np.stack([c.residuals for c in candidates])
    if local:
        pick = np.full(k, int(np.argmin(res.max(axis=1))))
    else:
        pick = np.array([_largest(tops[:, i], res[:, i]) for i in range(k)])
    cols = np.arange(k)
    values, residuals = tops[pick, cols], res[pick, cols]
    bounds = np.stack([c.bounds for c in candidates])[pick, cols]
    scale = max(candidates[c].scale for c in set(pick.tolist())) or 1.0
    vectors = None
    if dec.basis is not None:
        columns = []
        for i, c in enumerate(pick):
            Y = candidates[c].Y
            y = torch.as_tensor(Y[:, i], dtype=dec.basis.dtype, device=dec.basis.device)
            columns.append(dec.basis[candidates[c].probe][:, : Y.shape[0]] @ y)
        vectors = torch.stack(columns, dim=1)
    return values.copy(), residuals, bounds, residuals <= tol * scale, vectors
