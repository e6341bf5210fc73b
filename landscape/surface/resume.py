"""A surface through a resumable cache entry: only the points not yet done are evaluated, each chunk is committed.

The entry (:meth:`landscape.cache.Cache.grid`) is keyed by the content of the parameters, the data, the
BatchNorm/dropout policy, the directions and every grid setting, and holds a ``done`` mask beside the values; each
finished chunk is written atomically, so an interrupted run (even SIGKILL) resumes at the first unfinished chunk and
ends bit-identical to an uninterrupted one. A surface is stored point by point while it is computed, so this is a
grid entry rather than a whole result of :func:`landscape.store.remember`.

One process and data-parallel (``torchrun``) take the same path: rank 0 alone opens the cache and reads the entry's
progress, which :func:`landscape.distributed.decided_by_rank0` hands to every rank (in one process there are no
ranks and the progress is simply read). Every rank then evaluates the points not yet done on its shard, the chunk
sums are all-reduced, and rank 0 commits each chunk. The key does not depend on the number of ranks, so a run
interrupted with one number of ranks resumes with any other.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from typing import Any

import numpy as np
from torch import Tensor

from landscape.cache import Cache
from landscape.problem import Problem
from landscape.store import resume_grid
from landscape.surface.evaluate import GridOptions, _evaluate, _plan, _Points, _run_settings


def _cached_surface(
    problem: Problem,
    points: _Points,
    vectors: Tensor,
    coords: np.ndarray,
    shape: tuple[int, ...],
    accuracy: bool,
    options: GridOptions,
    dir_settings: dict,
    cache: Cache | str | os.PathLike[str] | None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """:func:`landscape.surface.surface`'s ``(loss, accuracy, settings)`` through the cache entry of this run.

    ``cache`` is rank 0's (``None``: no cache, only data-parallel: one process without a cache needs no entry); the
    other ranks' is ignored. A complete entry is read back without any forward pass, not even ``"auto"``'s timing.
    An error opening the cache is raised on rank 0 as it is and on every other rank as a ``DistributedError``.
    """
    ranks = problem.ranks
    with contextlib.ExitStack() as stack:
        # On rank 0 alone, once; directions stored narrower than float32 (bfloat16, which numpy lacks) as float32.
        directions = functools.cache(
            lambda: (vectors if vectors.element_size() >= 4 else vectors.float()).detach().cpu().numpy()
        )
        state, entry = resume_grid(
            stack,
            cache,
            problem,
            "surface",
            lambda: _config(directions(), options, accuracy, dir_settings),
            shape=shape,
            fields=("loss", "accuracy"),
            arrays=lambda: {"coords": np.stack([coords] * len(shape)), "directions": directions()},
            attrs={"problem": problem.describe()},
            order_free=True,
        )
        done = state.done
        if state.finished is not None:  # answered from the cache on every rank
            loss, acc, settings = state.values["loss"], state.values["accuracy"], dict(state.finished["settings"])
        else:

            def store_chunk(idx: np.ndarray, losses: np.ndarray, accs: np.ndarray | None) -> None:
                entry.write(idx, loss=losses, accuracy=np.full(idx.size, np.nan) if accs is None else accs)

            plan = _plan(problem, points, int(np.prod(shape)), options)
            loss, acc = _evaluate(
                problem,
                points,
                shape,
                accuracy,
                plan,
                done=done,
                on_chunk=store_chunk if entry is not None else None,
                initial=(state.values["loss"], state.values["accuracy"]),
                progress=progress and (ranks is None or ranks.rank == 0),
            )
            settings = _run_settings(options, plan, dir_settings, problem)
            if entry is not None:
                entry.finish({"settings": settings})
        if acc is not None and np.isnan(acc).all():  # stored as NaN where there is no accuracy
            acc = None
        if state.key is not None:
            settings["cache"] = {"path": state.path, "key": state.key, "points_from_cache": int(done.sum())}
    return loss, acc, settings


def _config(directions: np.ndarray, options: GridOptions, accuracy: bool, dir_settings: dict) -> dict[str, Any]:
    """Every setting of the run that the entry's content key covers (the directions by their bytes' hash)."""
    return {
        "span": [float(options.span[0]), float(options.span[1])],
        "resolution": options.resolution,
        "accuracy": accuracy,
        "batch_points": options.batch_points,
        "chunk": options.chunk,
        "directions_sha256": hashlib.sha256(directions.tobytes()).hexdigest(),
        "directions": dir_settings,
    }
