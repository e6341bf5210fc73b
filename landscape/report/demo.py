"""``landscape demo``: train a small MLP on scikit-learn's shipped digits data and write the full HTML report.

Everything runs on the CPU in seconds and offline: the data ship with scikit-learn, training is seeded, the
spectrum and surface are cached in ``out_dir/landscape.h5`` (a second run reads them back).
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path

import torch
from torch import nn

from landscape import distributed
from landscape.data import digits
from landscape.models import mlp
from landscape.problem import Problem
from landscape.report.analyses import OptimizerSetting, analyse, stderr_log, write_report
from landscape.report.provenance import collect_provenance
from landscape.training import accuracy, train

HIDDEN = (32,)
TRAIN = {"steps": 300, "lr": 0.05, "batch_size": 64, "momentum": 0.9, "optimizer": "sgd"}
SETTINGS = (
    OptimizerSetting("sgd", 0.05, batch_size=64),
    OptimizerSetting("adam", 1e-3, batch_size=64),
    OptimizerSetting("sam", 0.05, rho=0.05),
)
BATCH_SIZES = (16, 64, 256)
SURFACE = {"span": 1.0, "resolution": 31}


def run_demo(
    out_dir: str | os.PathLike[str] = "landscape-out", *, seed: int = 0, quiet: bool = False, replicated: bool = False
) -> Path | None:
    """Train the demo model and write ``out_dir/report.html`` and ``out_dir/report.json``.

    An MLP ``64 -> 32 -> 10`` is trained for 300 SGD steps on the digits training split (1438 images); then the
    spectrum (8 probes x 40 Lanczos steps), a 31 x 31 filter-normalised surface, the interpolation from the initial
    to the trained weights, every sharpness measure but Keskar's, the roughness index, the stability of SGD (batch
    64), Adam and SAM, and the batch-size scaling over B = 16, 64, 256 and n. Runs with one intra-op thread.

    Under ``torchrun`` (an initialised process group of several ranks) rank 0 trains the model and hands its bits
    to the others, the analyses run data-parallel on contiguous shards of the training split (``replicated``: every
    rank holds all of it, and the surfaces deal their points out to the ranks), and rank 0 alone writes the report
    and the cache.

    Parameters
    ----------
    out_dir : path-like
        Output folder (created); the cache is ``out_dir/landscape.h5``.
    seed : int
        Seed of the data split, initialisation, batch order and every estimator.
    quiet : bool
        No progress lines on stderr.
    replicated : bool
        Under ``torchrun``: every rank holds the whole data set instead of a shard (ignored in one process).

    Returns
    -------
    Path or None
        The report's path (``None`` on the ranks other than 0, which write nothing).
    """
    # The model is tiny: one intra-op thread is as fast as several, and on a busy machine (CI, shared cores) it
    # avoids OpenMP threads waiting on each other, which made the demo tens of times slower. Restored on exit.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(Path(out_dir), seed, quiet, replicated)
    finally:
        torch.set_num_threads(threads)


def _demo_problem(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], replicated: bool) -> Problem:
    """The demo's Problem: one process, or under torchrun a shard of ``data`` per rank (``replicated``: all of it)."""
    several = distributed.get_world_size() > 1
    if several and not replicated:
        data = distributed.shard(data)
    mode = "replicated" if several and replicated else None  # None: data-parallel exactly when under torchrun
    return Problem(model, nn.CrossEntropyLoss(), data, batch_size=512, distributed=mode)


def _run(out: Path, seed: int, quiet: bool, replicated: bool) -> Path | None:
    rank = distributed.get_rank()
    log = stderr_log(quiet or rank > 0)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    X, y = digits(split="train", seed=seed)
    X_test, y_test = digits(split="test", seed=seed)
    model = mlp(in_features=X.shape[1], hidden=HIDDEN, out_features=10, seed=seed)
    initial = copy.deepcopy(model)
    trained = train(model, X, y, seed=seed, **TRAIN) if rank == 0 else None
    for net in (model, initial):  # under torchrun: rank 0's bits on every rank (a no-op in one process)
        distributed.broadcast_module(net)
    if log:
        log(f"training: {trained.steps} steps, loss {trained.final_loss:.4f}, {trained.wall_time:.2f} s")
    problem = _demo_problem(model, (X, y), replicated)
    results = analyse(
        problem,
        optimizers=SETTINGS,
        batch_sizes=BATCH_SIZES,
        interpolate_from=initial,
        seed=seed,
        cache=out / "landscape.h5" if rank == 0 else None,
        log=log,
        **SURFACE,
    )
    if rank > 0:  # under torchrun rank 0 alone writes (the others computed with it)
        return None
    settings = {
        "data": f"sklearn digits, train split ({len(y)} images), seed {seed}",
        "model": f"mlp(64 -> {' -> '.join(map(str, HIDDEN))} -> 10, relu)",
        "training": dict(TRAIN),
        "train_accuracy": accuracy(model, X, y),
        "test_accuracy": accuracy(model, X_test, y_test),
        "spectrum": {"top_k": 5, "num_probes": 8, "num_steps": 40, "operator": "hessian"},
        "surface": {"directions": "filter_normalized", **SURFACE},
        "interpolation": "initial weights (alpha = 0) to trained weights (alpha = 1)",
        "stability": [vars(s) for s in SETTINGS],
        "scaling": {"batch_sizes": list(BATCH_SIZES), "num_batches": 4, "optimizer": "sgd"},
        "cache": {"path": str(out / "landscape.h5"), **results.cache},
    }
    provenance = collect_provenance(
        problem,
        model=settings["model"],
        seeds={"data split": seed, "initialisation": seed, "batch order": seed, "estimators": seed},
        settings=settings,
        wall_times={"training": trained.wall_time, **results.wall_times},
    )
    path = write_report(out, results, provenance, title="landscape demo: a small MLP on digits")
    if log:
        log(f"report: {path} ({time.perf_counter() - start:.1f} s in all)")
    return path
