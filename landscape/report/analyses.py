"""Every analysis a report shows, run on one Problem: spectrum, surfaces, sharpness, stability, batch-size scaling.

With ``cache=`` every result is stored in the HDF5 cache under a content key of the weights, data and settings
(the spectrum and the surface through their own ``cache=``, the others through :mod:`landscape.store`), so a
second report of the same model, data and settings reads them back instead of recomputing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from landscape._json import jsonable, strict_json
from landscape.blocks import BlockSpectra, block_spectra
from landscape.cache import Cache, opened
from landscape.example_pool import Examples
from landscape.memory import release_free_memory
from landscape.problem import Problem
from landscape.report.html import ReportData, build_report
from landscape.report.provenance import Provenance, model_hash
from landscape.roughness import RoughnessIndex, roughness_index
from landscape.scaling import ScalingReport, lr_batch_scaling
from landscape.sharpness import Sharpness, sharpness
from landscape.spectrum import Spectrum, spectrum
from landscape.stability import OPTIMIZERS, StabilityReport, stability
from landscape.store import ORDER_FREE_ANALYSES, cached
from landscape.surface import Surface, filter_normalized, interpolate, surface

ADAM_PRECONDITIONER_BATCHES = 32


@dataclass(frozen=True)
class OptimizerSetting:
    """One optimizer configuration whose linear stability the report checks.

    ``batch_size`` is used by ``"sgd"`` (minibatch SGD; ``None``: full batch) and by ``"adam"``/``"adamw"`` for the
    minibatches that estimate Adam's second moment; ``rho`` is SAM's radius.
    """

    optimizer: str
    lr: float
    batch_size: int | None = None
    momentum: float = 0.0
    rho: float | None = None

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")

    @classmethod
    def parse(
        cls, text: str, *, lr: float, batch_size: int | None = None, momentum: float = 0.0, rho: float = 0.05
    ) -> OptimizerSetting:
        """``"name"`` or ``"name:lr"`` (e.g. ``"adam:0.001"``), the other settings from the keywords."""
        name, _, rate = text.partition(":")
        name = name.strip().lower()
        try:
            value = float(rate) if rate else float(lr)
        except ValueError:
            raise ValueError(f"{text!r}: the learning rate after ':' must be a number") from None
        return cls(
            name,
            value,
            batch_size=batch_size,
            momentum=momentum if name in ("sgd", "gd", "heavy_ball", "momentum", "nesterov") else 0.0,
            rho=rho if name == "sam" else None,
        )


@dataclass(frozen=True)
class Analyses:
    """Results of :func:`analyse`; ``None`` (or empty) for what was not computed."""

    spectrum: Spectrum | None
    surface: Surface | None
    interpolation: Surface | None
    sharpness: Sharpness | None
    stability: tuple[StabilityReport, ...]
    scaling: ScalingReport | None
    roughness: RoughnessIndex | None = None
    notes: tuple[str, ...] = ()
    cache: dict[str, Any] = field(default_factory=dict)
    wall_times: dict[str, float] = field(default_factory=dict)
    blocks: BlockSpectra | None = None


def adam_second_moment(problem: Problem, batch_size: int, *, num_batches: int = 32, seed: int = 0) -> Tensor:
    """Mean squared minibatch gradient at the current weights: Adam's second moment ``v`` at a stationary point.

    ``v = mean_k g_{B_k}^2`` over ``num_batches`` minibatches of ``batch_size`` examples drawn without replacement
    (a local generator seeded with ``seed``); the frozen preconditioner is then ``sqrt(v) + eps``. This stands in
    for an optimizer's own state when only the weights are known. Data-parallel, the examples are drawn from the
    whole data set and gathered onto every rank (:class:`landscape.example_pool.Examples`): the same minibatches, and
    the same ``v``, as one process.
    """
    examples = Examples(problem)
    n = examples.num_samples
    size = min(int(batch_size), n)
    gen = torch.Generator().manual_seed(int(seed))
    total = torch.zeros(problem.num_params, dtype=problem.dtype, device=problem.device)
    for _ in range(num_batches):
        idx = torch.randperm(n, generator=gen)[:size]
        _, g = examples.problem_of(idx).loss_and_grad()
        total += g.square()
    return total / num_batches


def _adam_batch(problem: Problem, s: OptimizerSetting) -> int:
    return s.batch_size or min(64, problem.num_samples)


def _note(problem: Problem, s: OptimizerSetting) -> str | None:
    """How an Adam preconditioner was obtained (said next to its verdict)."""
    if s.optimizer not in ("adam", "adamw"):
        return None
    return (
        f"{s.optimizer} at lr = {s.lr:.6g}: the frozen preconditioner sqrt(v) + eps uses v = the mean squared "
        f"gradient of {ADAM_PRECONDITIONER_BATCHES} random minibatches of {_adam_batch(problem, s)} examples at the "
        "current weights (Adam's second moment at a stationary point), not a training run's optimizer state."
    )


def _stability(problem: Problem, s: OptimizerSetting, seed: int) -> StabilityReport:
    kwargs: dict[str, Any] = {"seed": seed}
    if s.optimizer == "sgd" and s.batch_size is not None and s.batch_size < problem.num_samples:
        kwargs["batch_size"] = s.batch_size
    if s.optimizer in ("sgd", "gd", "heavy_ball", "momentum", "nesterov"):
        kwargs["momentum"] = s.momentum
    if s.optimizer == "sam":
        kwargs["rho"] = s.rho
    if s.optimizer in ("adam", "adamw"):
        kwargs["adam_state"] = adam_second_moment(
            problem, _adam_batch(problem, s), num_batches=ADAM_PRECONDITIONER_BATCHES, seed=seed
        )
    return stability(problem, s.optimizer, s.lr, **kwargs)


def analyse(
    problem: Problem,
    *,
    optimizers: Sequence[OptimizerSetting] = (),
    batch_sizes: Sequence[int] | None = (),
    scaling_optimizer: str = "sgd",
    num_batches: int = 4,
    top_k: int = 5,
    num_probes: int = 8,
    num_steps: int = 40,
    span: float = 1.0,
    resolution: int = 21,
    interpolate_from: nn.Module | None = None,
    interpolation_resolution: int = 41,
    rho: float = 0.05,
    sam_steps: int = 5,
    num_samples: int = 10,
    num_matvecs: int = 40,
    roughness_directions: int = 10,
    blocks: Mapping[str, Any] | None = None,
    seed: int = 0,
    cache: Cache | str | os.PathLike[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> Analyses:
    """Run the report's analyses on ``problem``.

    Parameters
    ----------
    problem : Problem
        Analysed at its current weights; the model is not modified.
    optimizers : sequence of OptimizerSetting
        Settings whose stability is checked (none: the stability section says "not computed").
    batch_sizes : sequence of int or None
        Batch sizes of :func:`landscape.lr_batch_scaling` (empty: skipped; ``None``: its default).
    scaling_optimizer, num_batches
        The scaling rule (``"sgd"``: linear, ``"adam"``: square root) and minibatches per batch size.
    top_k, num_probes, num_steps
        Spectrum: top eigenvalues, SLQ probes and Lanczos steps.
    span, resolution
        The 2D filter-normalised surface covers ``[-span, span]^2`` with ``resolution`` points per axis (0: skipped).
    interpolate_from : nn.Module, optional
        A second model of the same architecture (e.g. the initial weights): the loss along the line from it to the
        problem's model is added.
    rho, sam_steps, num_samples, num_matvecs
        Sharpness: SAM radius and ascent steps, average-case draws, trace/Frobenius budget.
    roughness_directions : int
        Directions of the roughness index (span 0.1, 11 points each; 0: skipped).
    blocks : mapping, optional
        Also the spectra of the diagonal blocks (the report's "Block spectra" section): the keywords of
        :func:`landscape.block_spectra` (``{}``: its defaults; e.g. ``{"by": "parameter", "k": 3}``); ``None``: skipped.
    seed : int
        Seed of every stochastic step (the global RNG is never touched).
    cache : Cache or path, optional
        HDF5 cache of every result. On a problem spanning several ranks (``torchrun``: data-parallel or replicated
        data) rank 0's cache decides for all of them (the others pass ``None``): every rank must call this
        function, and every rank computes what rank 0 does not find, so their collectives match.
    log : callable, optional
        Receives one line per finished step.
    """
    say = log or (lambda _msg: None)
    times: dict[str, float] = {}
    notes: list[str] = []
    info: dict[str, Any] = {}

    vector_bytes = problem.num_params * torch.empty((), dtype=problem.dtype).element_size()

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        out = fn()
        times[name] = time.perf_counter() - t0
        say(f"{name}: {times[name]:.2f} s")
        # What a section freed (graphs, activations: blocks below glibc's mmap threshold) back to the system before
        # the next one starts; on ResNet-18 1.3-2.4 GB stayed resident after the sections (BENCHMARKS.md, stop 23).
        release_free_memory(vector_bytes, problem.device)
        return out

    with opened(cache) if cache is not None else contextlib.nullcontext() as store:
        reused: dict[str, bool] = {}

        def stored(name: str, config: dict[str, Any], fn: Callable[[], Any]) -> Any:
            # Results of the full-data loss alone are shared by any sharding (landscape.cache.key_for).
            order_free = name in ORDER_FREE_ANALYSES
            result, hit = cached(store, problem, name, {**config, "seed": seed}, fn, order_free=order_free)
            reused[name] = hit
            return result

        before = len(store) if store is not None else 0
        spec = timed(
            "spectrum",
            lambda: spectrum(problem, k=top_k, num_probes=num_probes, num_steps=num_steps, seed=seed, cache=store),
        )
        reused["spectrum"] = store is not None and len(store) == before
        config = {"rho": rho, "steps": sam_steps, "num_samples": num_samples, "num_matvecs": num_matvecs}
        sharp = timed(
            "sharpness",
            lambda: stored(
                "sharpness",
                config,
                lambda: sharpness(
                    problem,
                    rho,
                    seed=seed,
                    steps=sam_steps,
                    num_samples=num_samples,
                    num_matvecs=num_matvecs,
                    keskar=False,
                    perturbations=False,  # four parameter-sized vectors the report never shows
                ),
            ),
        )
        block_result = None
        if blocks is not None:
            settings = dict(blocks)
            block_result = timed(
                "blocks",
                lambda: stored("block_spectra", settings, lambda: block_spectra(problem, seed=seed, **settings)),
            )
        rough = None
        if roughness_directions:
            rough = timed(
                "roughness",
                lambda: stored(
                    "roughness",
                    {"num_directions": roughness_directions, "span": 0.1, "points": 11},
                    lambda: roughness_index(problem, roughness_directions, 0.1, 11, seed=seed),
                ),
            )
        reports = []
        for s in optimizers:
            name = f"stability {s.optimizer} lr={s.lr:g}"
            config = {**dataclasses.asdict(s), "adam_batches": ADAM_PRECONDITIONER_BATCHES}
            reports.append(
                timed(
                    name,
                    lambda s=s, name=name, config=config: stored(name, config, lambda: _stability(problem, s, seed)),
                )
            )
            note = _note(problem, s)
            if note:
                notes.append(note)
        scaling = None
        if batch_sizes is None or len(batch_sizes) > 0:
            sizes = None if batch_sizes is None else [b for b in batch_sizes if b < problem.num_samples]
            config = {"batch_sizes": sizes, "optimizer": scaling_optimizer, "num_batches": num_batches}
            scaling = timed(
                "scaling",
                lambda: stored(
                    "scaling",
                    config,
                    lambda: lr_batch_scaling(
                        problem, sizes or None, optimizer=scaling_optimizer, num_batches=num_batches, seed=seed
                    ),
                ),
            )
        # The surfaces last: their directions (two parameter-sized vectors, kept in the result) would otherwise be
        # held through every later section (1 GB on GPT-2 small; BENCHMARKS.md, stop 24).
        surf = None
        if resolution:
            dirs = filter_normalized(problem, 2, seed=seed)
            surf = timed(
                "surface", lambda: surface(problem, dirs, span=(-span, span), resolution=resolution, cache=store)
            )
            info["surface_points_from_cache"] = int((surf.settings.get("cache") or {}).get("points_from_cache", 0))
            info["surface_points"] = int(np.asarray(surf.loss).size)
        interp = None
        if interpolate_from is not None:
            config = {"from": model_hash(interpolate_from), "resolution": interpolation_resolution}
            interp = timed(
                "interpolation",
                lambda: stored(
                    "interpolation",
                    config,
                    lambda: interpolate(problem, interpolate_from, problem.model, resolution=interpolation_resolution),
                ),
            )
        if store is not None:
            info["from_cache"] = reused
            info["spectrum_from_cache"] = reused["spectrum"]
    return Analyses(spec, surf, interp, sharp, tuple(reports), scaling, rough, tuple(notes), info, times, block_result)


def write_report(
    out_dir: str | os.PathLike[str],
    analyses: Analyses,
    provenance: Provenance,
    *,
    title: str = "Loss landscape report",
) -> Path:
    """Write ``report.html`` and ``report.json`` (every number shown, plus cache use) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fields = {
        "spectrum": analyses.spectrum,
        "surface": analyses.surface,
        "interpolation": analyses.interpolation,
        "sharpness": analyses.sharpness,
        "stability": analyses.stability,
        "scaling": analyses.scaling,
        "roughness": analyses.roughness,
        **({} if analyses.blocks is None else {"blocks": analyses.blocks}),
    }
    path = out / "report.html"
    build_report(path, title=title, provenance=provenance, notes=analyses.notes, **fields)
    data = ReportData(
        title=title,
        provenance=provenance,
        notes=analyses.notes,
        **{k: (tuple(v) if k == "stability" else v) for k, v in fields.items()},
    ).to_dict()
    data["cache"] = analyses.cache
    (out / "report.json").write_text(json.dumps(strict_json(data), indent=1, default=jsonable), encoding="utf-8")
    return path


def stderr_log(quiet: bool) -> Callable[[str], None] | None:
    """A ``log`` for :func:`analyse` printing to stderr, or ``None`` when quiet."""
    if quiet:
        return None
    return lambda msg: print(msg, file=sys.stderr, flush=True)
