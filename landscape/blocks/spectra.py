"""The spectrum of every diagonal block ``H_bb`` of a curvature matrix, all blocks advanced together.

For a partition of the parameters into blocks (modules, tensors, or named globs), :func:`block_spectra` runs ``p``
Rademacher probes through :class:`~landscape.blocks.lanczos.BlockLanczos`: per Krylov step, one batched pass over
the data multiplies every block's vector at once (not one pass per block), and each block's recurrences give what
:func:`landscape.spectrum.spectrum` gives for the whole matrix: top-``k`` Ritz values with residuals, the SLQ
density, the trace ``tr(H_bb)`` with its probe standard error (exact from BackPACK's diagonal where it applies,
Dangel, Kunstner, Hennig 2020) and ``||H_bb||_F``.

On top: :attr:`BlockSpectra.heterogeneity`, the Jensen-Shannon distances between the blocks' densities (Zhang et al.
2024; :mod:`landscape.blocks.heterogeneity`), and :attr:`BlockSpectra.full`, how far the block-diagonal
approximation ``D = diag(H_11, ..., H_BB)`` is from ``H``: ``lambda_max(D) = max_b lambda_max(H_bb)`` against
``lambda_max(H)``, and the share of ``||H||_F^2`` off the diagonal blocks, ``1 - sum_b ||H_bb||_F^2 / ||H||_F^2``
(Granziol & Juarev 2026 report order-one errors of the block-diagonal picture on large models), from one Lanczos
pass of ``H`` with the same probes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from landscape._checks import check_int
from landscape.blocks.dense import dense_blocks, dense_spectrum
from landscape.blocks.heterogeneity import Heterogeneity, heterogeneity
from landscape.blocks.lanczos import BlockLanczos, BlockTridiagonals, column_chunks
from landscape.blocks.partition import BlockPartition, BlockSpec
from landscape.blocks.restart import refine as refine_top
from landscape.layerwise import layerwise_curvature
from landscape.linalg._common import draw
from landscape.linalg.lanczos import LanczosDecomposition, lanczos
from landscape.linalg.probes import SeedLike, make_generator, seed_record
from landscape.linalg.results import Estimate
from landscape.memory import KRYLOV_SHARE, MemoryBudgetError, block_lanczos_vectors, estimate, gib, krylov_vectors
from landscape.operators import empirical_fisher, ggn, hessian
from landscape.operators.base import CurvatureOperator
from landscape.operators.exact import ExactDiagonalUnavailable
from landscape.operators.problem_operator import ProblemOperator
from landscape.problem import Problem
from landscape.progress import progress as progress_bar
from landscape.spectrum import Spectrum, krylov_summary

OPERATORS = {"hessian": hessian, "ggn": ggn, "fisher": empirical_fisher}
EXACT_TRACES = ("auto", "exact", "slq")


@dataclass(frozen=True)
class FullComparison:
    """The block-diagonal approximation ``D`` against the full matrix ``H`` (same probes, same steps).

    ``lambda_max_full`` and ``lambda_max_blocks = max_b lambda_max(H_bb)``; ``frobenius_full`` and
    ``frobenius_blocks = sqrt(sum_b ||H_bb||_F^2)``; ``off_diagonal_share = 1 - frobenius_blocks^2 /
    frobenius_full^2`` (the part of ``H`` the blocks leave out, an SLQ estimate); traces ``tr H`` and
    ``sum_b tr H_bb`` estimate the same number (the blocks cover every parameter) and differ by probe noise.
    """

    lambda_max_full: float
    lambda_max_blocks: float
    lambda_max_relative_error: float
    frobenius_full: Estimate
    frobenius_blocks: float
    off_diagonal_share: float
    trace_full: Estimate
    trace_blocks: float
    num_matvecs: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "lambda_max_full": self.lambda_max_full,
            "lambda_max_blocks": self.lambda_max_blocks,
            "lambda_max_relative_error": self.lambda_max_relative_error,
            "frobenius_full": self.frobenius_full.value,
            "frobenius_full_stderr": self.frobenius_full.stderr,
            "frobenius_blocks": self.frobenius_blocks,
            "off_diagonal_share": self.off_diagonal_share,
            "trace_full": self.trace_full.value,
            "trace_full_stderr": self.trace_full.stderr,
            "trace_blocks": self.trace_blocks,
            "num_matvecs": self.num_matvecs,
        }


@dataclass(frozen=True)
class BlockSpectra:
    """Spectra of the diagonal blocks ``H_bb`` (see the module docstring).

    Attributes
    ----------
    names, members, sizes
        Block names, their parameter names and their numbers of parameters.
    spectra
        ``{name: Spectrum}``: each block's top eigenvalues (with residuals), trace, Frobenius norm, density, LLA.
    traces, trace_stderrs, trace_methods
        ``(B,)`` ``tr(H_bb)`` and how each was obtained: BackPACK's exact diagonal summed over the block
        (``"exact (diagonal)"``), the dense small block's (``"exact (dense block)"``), both with stderr 0, or the
        SLQ estimate of :attr:`spectra` (``"slq"``).
    heterogeneity
        :class:`~landscape.blocks.heterogeneity.Heterogeneity`: ``np.asarray(result.heterogeneity)`` is the
        ``(B, B)`` Jensen-Shannon distance matrix.
    full
        :class:`FullComparison` of the block-diagonal approximation with the full matrix, or ``None``.
    curvature
        ``"hessian"``, ``"ggn"``, ``"fisher"`` or the operator's class name.
    num_params, num_matvecs, passes, seed, wall_time, settings
        Provenance: products (columns) in all, block products (data passes) of the block recurrences, the seed,
        seconds, every setting and the problem's description (mode policy included).
    """

    names: tuple[str, ...]
    members: tuple[tuple[str, ...], ...]
    sizes: np.ndarray
    spectra: dict[str, Spectrum]
    traces: np.ndarray
    trace_stderrs: np.ndarray
    trace_methods: tuple[str, ...]
    heterogeneity: Heterogeneity
    full: FullComparison | None
    curvature: str
    num_params: int
    num_matvecs: int
    passes: int
    seed: int | None
    wall_time: float
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def lambda_max(self) -> np.ndarray:
        """``(B,)`` top eigenvalue of each block."""
        return np.array([self.spectra[n].lambda_max for n in self.names])

    @property
    def trace_method(self) -> str:
        """How the traces were obtained, in one word per kind (``"slq"``, ``"exact (diagonal)"``, ...)."""
        return ", ".join(dict.fromkeys(self.trace_methods))

    @property
    def frobenius(self) -> np.ndarray:
        return np.array([self.spectra[n].frobenius.value for n in self.names])

    def table(self) -> str:
        """Plain text: per block, parameters, top eigenvalue (and its residual), trace +- stderr, Frobenius norm."""
        width = max(len("block"), *(len(n) for n in self.names))
        head = f"{'block':<{width}}  {'params':>9}  {'lambda_max':>11}  {'residual':>8}  {'trace':>11}  {'stderr':>8}"
        rows = [head + f"  {'frobenius':>10}", "-" * (len(head) + 12)]
        for i, n in enumerate(self.names):
            s = self.spectra[n]
            rows.append(
                f"{n:<{width}}  {self.sizes[i]:>9,}  {s.lambda_max:>11.5g}  {s.eigen_residuals[0]:>8.1e}  "
                f"{self.traces[i]:>11.5g}  {self.trace_stderrs[i]:>8.2g}  {s.frobenius.value:>10.5g}"
            )
        return "\n".join(rows)

    def summary(self) -> str:
        h = self.heterogeneity
        pair = h.most_different
        lines = [
            f"{self.curvature} block spectra of {self.num_params:,} parameters in {len(self.names)} blocks "
            f"({self.num_matvecs} products in {self.passes} block passes, {self.wall_time:.2f} s, seed {self.seed}; "
            f"traces {self.trace_method})",
            self.table(),
            f"heterogeneity (Jensen-Shannon distance): mean {h.mean:.3g}, max {h.max:.3g}"
            + (f" ({pair[0]} vs {pair[1]})" if pair else ""),
        ]
        unconverged = [n for n in self.names if not self.spectra[n].eigen_converged.all()]
        refined = self.settings.get("refine")
        if refined and refined["blocks"]:
            lines.append(
                f"top eigenvalues of {len(refined['blocks'])} block(s) refined by thick restart ({refined['steps']} "
                f"steps, basis of {refined['max_basis']} vectors); {len(refined['converged'])} converged"
            )
        if unconverged:
            lines.append(
                f"top eigenvalues NOT converged in {len(unconverged)} block(s) ({', '.join(unconverged[:5])}"
                f"{' ...' if len(unconverged) > 5 else ''}): more num_steps, or refine="
            )
        if self.full is not None:
            f = self.full
            lines.append(
                f"block-diagonal vs full: lambda_max {f.lambda_max_blocks:.5g} vs {f.lambda_max_full:.5g} "
                f"(relative error {f.lambda_max_relative_error:.2g}); off-diagonal share of ||H||_F^2 "
                f"{f.off_diagonal_share:.3g}"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready numbers."""
        return {
            "names": list(self.names),
            "members": [list(m) for m in self.members],
            "sizes": self.sizes.tolist(),
            "blocks": {n: self.spectra[n].to_dict() for n in self.names},
            "traces": self.traces.tolist(),
            "trace_stderrs": self.trace_stderrs.tolist(),
            "trace_methods": list(self.trace_methods),
            "lambda_max": self.lambda_max.tolist(),
            "heterogeneity": self.heterogeneity.to_dict(),
            "full": None if self.full is None else self.full.to_dict(),
            "curvature": self.curvature,
            "num_params": self.num_params,
            "num_matvecs": self.num_matvecs,
            "passes": self.passes,
            "seed": self.seed,
            "wall_time": self.wall_time,
            "settings": {k: v for k, v in self.settings.items() if k != "problem"},
        }

    def plot(self, kind: str = "ridge", ax: Any = None, **kwargs: Any) -> Any:
        """``"ridge"`` (the blocks' densities, log scale, with their top eigenvalues), ``"bars"`` (top eigenvalue
        and trace per block) or ``"heatmap"`` (the Jensen-Shannon distances); see :mod:`landscape.plot.blocks`."""
        from landscape.plot.blocks import block_spectra_plot

        return block_spectra_plot(self, kind, ax, **kwargs)


def _operator(problem_or_op: Problem | CurvatureOperator, operator: str, engine: str, block: str):
    if isinstance(problem_or_op, Problem):
        if operator not in OPERATORS:
            raise ValueError(f"operator must be one of {sorted(OPERATORS)}, got {operator!r}")
        return OPERATORS[operator](problem_or_op, engine=engine, block=block), operator
    if isinstance(problem_or_op, ProblemOperator):
        names = {"HessianOperator": "hessian", "GGNOperator": "ggn", "EmpiricalFisherOperator": "fisher"}
        return problem_or_op, names.get(type(problem_or_op).__name__, type(problem_or_op).__name__)
    raise TypeError(
        "block_spectra needs a Problem or an operator built from one (hessian(problem), ggn(problem), "
        f"empirical_fisher(problem)) to know which parameters form each block; got {type(problem_or_op).__name__}"
    )


def _plan(
    op: ProblemOperator, p: int, steps: int, widest: int, memory_budget: int | None, columns: int | None
) -> tuple[bool, int]:
    """``(store the basis, columns per pass)``: the widest pass with the full basis that fits the budget, else the
    three-term recurrence; :class:`MemoryBudgetError` when not even one column at a time fits. One estimate is
    measured (:func:`landscape.memory.estimate`); the others differ only in their Krylov vectors."""
    widths = [int(columns)] if columns else column_chunks(widest)
    est = estimate(
        op.problem, "block_spectra", memory_budget=memory_budget, num_probes=p, num_steps=steps, columns=widths[0]
    )
    per_vector = op.shape[0] * torch.empty((), dtype=op.dtype).element_size()
    rest = est.need - est.parts["Krylov vectors"]
    for stored in (True, False):
        for width in widths:
            if rest + block_lanczos_vectors(p, steps, width, stored) * per_vector <= est.budget:
                return stored, width
    small = estimate(
        op.problem,
        "block_spectra",
        memory_budget=memory_budget,
        num_probes=p,
        num_steps=steps,
        columns=widths[-1],
        stored=False,
    )
    small.check("Use fewer probes (num_probes=), fewer columns per pass (columns=1) or smaller batches")
    return False, widths[-1]  # pragma: no cover - check() raised: the smallest plan does not fit


def _exact_traces(op: ProblemOperator, by: BlockSpec, names: tuple[str, ...], mode: str):
    """Per-block traces from BackPACK's exact diagonal (``None`` with the reason when it does not apply)."""
    if mode == "slq":
        return None, "slq: asked for"
    try:
        lw = layerwise_curvature(op, by=by, method="exact")
    except ExactDiagonalUnavailable as err:
        if mode == "exact":
            raise
        return None, f"slq: no exact diagonal ({err})"
    if lw.names != names:  # pragma: no cover - both come from layerwise.parameter_groups
        raise RuntimeError(f"exact traces came in another block order: {lw.names} vs {names}")
    return lw.traces, f"exact: {lw.settings.get('note', 'BackPACK diagonal')}"


def block_spectra(
    problem_or_op: Problem | CurvatureOperator,
    *,
    by: BlockSpec = "module",
    k: int = 5,
    num_probes: int = 4,
    num_steps: int = 40,
    operator: str = "hessian",
    engine: str = "auto",
    block: str = "auto",
    tol: float = 1e-4,
    sigma: float | str | None = None,
    full: bool = True,
    traces: str = "auto",
    seed: SeedLike = 0,
    progress: bool = False,
    memory_budget: int | None = None,
    columns: int | None = None,
    dense_max: int | None = None,
    refine: int = 0,
    max_basis: int | None = None,
) -> BlockSpectra:
    """Top-``k`` eigenvalues, trace, Frobenius norm and SLQ density of every diagonal block, in batched passes.

    Parameters
    ----------
    problem_or_op
        A :class:`Problem` (the ``operator`` of it is built) or an operator built from one.
    by
        ``"module"`` (one block per module owning parameters), ``"parameter"`` (one per tensor) or
        ``{block name: glob or list of globs}`` over parameter names (first match wins; unmatched parameters form
        ``"(other)"``).
    k
        Top eigenvalues per block (at most the smallest block's size and ``num_steps``).
    num_probes, num_steps
        Rademacher probes and Lanczos steps per block (a block of ``|b| <= num_steps`` parameters is exact after
        ``|b|`` steps). Cost: ``num_probes * B`` products per step, in one data pass per step when they fit.
    operator, engine, block
        ``"hessian"``, ``"ggn"`` or ``"fisher"`` with a Problem, and the product engine and block strategy.
    tol
        A Ritz value counts as converged when its residual is ``<= tol * max |theta|``.
    sigma
        Smoothing width of the heterogeneity's common grid: default Zhang et al.'s ``sqrt(1e-5)``, or
        ``"resolution"`` (the Lanczos resolution of the widest support), or a number.
    full
        Also run ``num_probes`` recurrences of the full matrix from the same probes (``num_probes * num_steps``
        products, ``1/B`` of the blocks' cost) to compare it with the block-diagonal approximation.
    traces
        ``"auto"`` (BackPACK's exact diagonal where it applies, else SLQ), ``"exact"`` (or an error saying why
        not) or ``"slq"``.
    seed
        Seed or generator for the probes.
    progress
        A progress bar over the steps on stderr.
    memory_budget
        Bytes the analysis may use (default: 80% of the memory available now). The basis costs what one
        spectrum's does (``num_probes (num_steps + 1)`` vectors of all parameters); when it does not fit, the
        three-term recurrence runs (``settings["reorthogonalisation"]``), and when the columns of one pass do
        not fit, they go through in several passes per step (``settings["columns"]``).
    columns
        Columns per pass (default: the most that fit).
    dense_max
        Blocks of at most this many parameters (default ``num_steps``, where Lanczos would need all ``|b|`` steps
        anyway) are built column by column, ``H_bb e_i`` for all their entries in one pass (``|b|`` products
        instead of ``num_probes |b|`` over ``|b|`` passes), and diagonalised exactly: eigenvalues with their
        multiplicities (which single-vector Lanczos cannot see), exact trace, Frobenius norm and density
        (``method="exact"``). ``0`` sends every block through Lanczos.
    refine
        Steps (one data pass each) of thick-restart Lanczos for the blocks whose top-``k`` Ritz pairs did not reach
        ``tol`` in ``num_steps`` steps (:mod:`landscape.blocks.restart`): all of them advanced together, each on a
        basis of ``max_basis`` vectors (default ``2 k + 4``, fewer where the budget is short), until converged or
        ``refine`` steps are spent. Their spectra then carry the restarted eigenvalues, residuals and bounds
        (``settings["refined"]``); ``0`` (default) keeps the density recurrences' Ritz values.
    max_basis
        Vectors of the restarted basis (at least ``k + 3``).
    """
    t0 = time.perf_counter()
    op, curvature = _operator(problem_or_op, operator, engine, block)
    problem: Problem = op.problem
    if traces not in EXACT_TRACES:
        raise ValueError(f"traces must be one of {EXACT_TRACES}, got {traces!r}")
    check_int("k", k, 1, "top eigenvalues per block")
    check_int("num_probes", num_probes, 1, "Rademacher probes per block")
    check_int("num_steps", num_steps, 1, "Lanczos steps per block")
    if columns is not None:
        check_int("columns", columns, 1, "columns per pass")
    if k > num_steps:
        raise ValueError(f"k={k} eigenvalues need num_steps >= k, got num_steps={num_steps}")
    check_int("refine", refine, 0, "restarted steps for unconverged blocks")
    part = BlockPartition.of(problem.param_names, problem.param_numels, by)
    space = problem.space
    # Sharded (FSDP2): the recurrences run on this rank's shards, laid out by the local partition; every block goes
    # through Lanczos with full-column products (its entries are spread over the ranks).
    local = None if space is None else BlockPartition.of(problem.param_names, space.local_numels, by)
    if local is not None:
        if dense_max:
            raise ValueError("dense_max > 0 builds blocks column by column, not done on a sharded model: drop it")
        if traces == "exact":
            raise ValueError("exact traces need BackPACK on a plain copy of the model, not a sharded one: traces='slq'")
        dense_max, traces = 0, "slq"
    small = [(n, s) for n, s in zip(part.names, part.sizes, strict=True) if s < k]
    if small:
        listed = ", ".join(f"{n!r} ({s} parameter{'s' * (s != 1)})" for n, s in small[:5])
        raise ValueError(
            f"k={k} eigenvalues per block, but block(s) {listed} have fewer parameters: pass k <= "
            f"{min(part.sizes)}, or merge the small blocks with a mapping by={{name: globs}}"
        )
    dense_max = int(num_steps) if dense_max is None else check_int("dense_max", dense_max, 0, "largest exact block")
    dense = tuple(b for b, size in enumerate(part.sizes) if size <= dense_max)
    lanczos_blocks = [b for b in range(part.num_blocks) if b not in dense]
    steps = min(int(num_steps), max((part.sizes[b] for b in lanczos_blocks), default=1))
    p, B = int(num_probes), part.num_blocks
    # The widest pass: every (probe, block) pair of the Lanczos blocks, or every entry of the dense ones.
    # Products restricted to each block's parameters where the operator has them (the Hessian by double backward):
    # a column then costs a backward pass through the part of the graph that links the block to itself, and no
    # full-length input columns are held (one vector of transients is counted instead).
    restricted = local is None and hasattr(op, "block_products") and op.engine != "forward_over_reverse"
    widest = 1 if restricted else max(p * len(lanczos_blocks), sum(part.sizes[b] for b in dense))
    stored, width = _plan(op, p, steps, widest, memory_budget, columns)
    gen = make_generator(seed)
    Z = draw(op, p, "rademacher", gen)
    before = op.num_matvecs
    matrices, dense_passes = dense_blocks(op, part, dense, width, restricted) if dense else ({}, 0)
    layout = part if local is None else local  # this rank's entries of each block
    state = BlockLanczos(
        op,
        layout,
        Z,
        steps,
        store_basis=stored,
        columns=width,
        skip=dense,
        restricted=restricted,
        sizes=part.sizes,
    )
    with progress_bar(steps if lanczos_blocks else 0, "block Lanczos", progress, unit="step") as bar:
        while lanczos_blocks and not state.done:
            state.step()
            bar.update(1)
    tri = state.result()
    basis_bytes = state.Q.numel() * state.Q.element_size()
    del state
    block_wall = time.perf_counter() - t0
    eps = torch.finfo(op.dtype).eps
    reorth = "full (CGS2)" if stored else "local: three-term recurrence (memory budget)"
    shared = {"k": k, "tol": tol, "eps": eps, "seed": seed, "wall": block_wall, "num_steps": int(num_steps)}
    spectra = {
        name: dense_spectrum(matrices[b], k=k, num_steps=int(num_steps), wall=block_wall)
        if b in matrices
        else _block_spectrum(tri, b, part.sizes[b], reorth=reorth, **shared)
        for b, name in enumerate(part.names)
    }
    refined = None
    if refine:
        spectra, refined = refine_top(op, layout, spectra, refine, max_basis, memory_budget, restricted, gen)
    block_matvecs = op.num_matvecs - before
    exact, note = _exact_traces(op, by, part.names, traces)
    methods = tuple(
        "exact (diagonal)" if exact is not None else "exact (dense block)" if b in matrices else "slq" for b in range(B)
    )
    comparison = (
        _compare_full(op, Z, min(int(num_steps), part.num_params), spectra, memory_budget, seed, eps) if full else None
    )
    settings: dict[str, Any] = {
        "by": part.by,
        "k": k,
        "num_probes": p,
        "num_steps": int(num_steps),
        "tol": tol,
        "full": full,
        "traces": traces,
        "trace_note": note,
        "reorthogonalisation": reorth,
        "columns": width,
        "products": "restricted to each block (double backward on the block's gradients)"
        if restricted
        else "full columns, each block's rows kept",
        "dense_max": dense_max,
        "dense_blocks": [part.names[b] for b in dense],
        "basis_bytes": basis_bytes,
        "refine": refined,
        **problem.describe(),
    }
    if hasattr(op, "chosen"):
        settings["engine"] = {str(w): name for w, name in op.chosen.items()}
    return BlockSpectra(
        names=part.names,
        members=part.members,
        sizes=np.array(part.sizes),
        spectra=spectra,
        traces=exact if exact is not None else np.array([spectra[n].trace.value for n in part.names]),
        trace_stderrs=np.zeros(B) if exact is not None else np.array([spectra[n].trace.stderr for n in part.names]),
        trace_methods=methods,
        heterogeneity=heterogeneity(part.names, [spectra[n].density for n in part.names], sigma=sigma),
        full=comparison,
        curvature=curvature,
        num_params=part.num_params,
        num_matvecs=op.num_matvecs - before,
        passes=tri.passes + dense_passes + (refined or {}).get("passes", 0),
        seed=seed_record(seed),
        wall_time=time.perf_counter() - t0,
        settings={**settings, "block_matvecs": block_matvecs},
    )


def _block_spectrum(
    tri: BlockTridiagonals,
    b: int,
    size: int,
    *,
    k: int,
    tol: float,
    eps: float,
    seed: SeedLike,
    wall: float,
    num_steps: int,
    reorth: str,
) -> Spectrum:
    """Block ``b``'s recurrences as a :class:`Spectrum` of the ``size``-dimensional operator ``H_bb``."""
    m = int(tri.steps[b].max())
    dec = LanczosDecomposition(
        alphas=tri.alphas[b, :, :m].copy(),
        betas=tri.betas[b, :, :m].copy(),
        steps=tri.steps[b].copy(),
        start_norms=tri.start_norms[b].copy(),
        basis=None,
        num_matvecs=int(tri.matvecs[b]),
        seed=seed_record(seed),
        wall_time=wall,
        settings={
            "num_steps": num_steps,
            "distribution": "rademacher",
            "restart_on_breakdown": False,
            "reorthogonalisation": reorth,
            "probe_groups": 1,
        },
    )
    summary = krylov_summary(dec, size, k=k, tol=tol, sigma=None, eps=eps, seed=seed)
    return Spectrum(
        **summary,
        subsets=None,
        num_params=int(size),
        num_matvecs=int(tri.matvecs[b]),
        seed=seed_record(seed),
        wall_time=wall,
        settings={
            "num_probes": dec.num_probes,
            "num_steps": num_steps,
            "k": k,
            "tol": tol,
            "reorthogonalisation": reorth,
        },
    )


def _compare_full(
    op: ProblemOperator,
    Z: torch.Tensor,
    steps: int,
    spectra: Mapping[str, Spectrum],
    memory_budget: int | None,
    seed: SeedLike,
    eps: float,
) -> FullComparison:
    """One Lanczos pass of the full operator from the same probes, against the block-diagonal approximation."""
    before = op.num_matvecs
    vectors = krylov_vectors(memory_budget, op.shape[0], op.dtype, op.device)
    # Stricter than lanczos()'s own check, which raises only below two vectors and otherwise runs the probes in
    # groups, one after another: here every probe's two vectors fit at once, or the error names full=False.
    if vectors < 2 * Z.shape[1]:
        raise MemoryBudgetError(
            f"comparing with the full matrix needs {2 * Z.shape[1]} vectors ({gib(2 * Z.shape[1] * Z[:, 0].nbytes)})"
            f"; {KRYLOV_SHARE:.0%} of memory_budget allows {vectors}. Pass full=False or raise memory_budget="
        )
    dec = lanczos(op, steps, v0=Z, seed=seed, restart_on_breakdown=False, keep_basis=False, memory_budget=memory_budget)
    whole = krylov_summary(dec, op.shape[0], k=1, tol=1e-4, sigma=None, eps=eps, seed=seed)
    lam_full = float(whole["eigenvalues"][0])
    lam_blocks = max(s.lambda_max for s in spectra.values())
    fro_blocks_sq = sum(s.frobenius.value**2 for s in spectra.values())
    fro_full: Estimate = whole["frobenius"]
    return FullComparison(
        lambda_max_full=lam_full,
        lambda_max_blocks=lam_blocks,
        lambda_max_relative_error=abs(lam_blocks - lam_full) / abs(lam_full) if lam_full else math.nan,
        frobenius_full=fro_full,
        frobenius_blocks=math.sqrt(fro_blocks_sq),
        off_diagonal_share=1.0 - fro_blocks_sq / fro_full.value**2 if fro_full.value > 0 else math.nan,
        trace_full=whole["trace"],
        trace_blocks=float(sum(s.trace.value for s in spectra.values())),
        num_matvecs=op.num_matvecs - before,
    )
