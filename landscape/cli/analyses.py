"""The commands of the analyses beyond the spectrum: ``sharpness`` (lambda_max, trace, Frobenius norm, SAM/ASAM, average
and Keskar sharpness), ``roughness`` (the roughness index), ``stability`` (an optimizer's linear-stability criteria at a
learning rate) and ``scaling`` (curvature and the maximal stable learning rate against the batch size).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click

from landscape.cli.app import UserError, common_options, int_list, main, show_progress
from landscape.cli.output import answer_and_emit
from landscape.cli.setup import setup_problem


def _run(
    name: str,
    analysis: Callable[..., Any],
    settings: dict[str, Any],
    *,
    kw: dict[str, Any],
    out: str,
    no_cache: bool,
    as_json: bool,
    quiet: bool,
    renamed: Mapping[str, str] | None = None,
) -> None:
    """The body of a command whose analysis returns a result with ``to_dict()`` and ``summary()``.

    ``analysis(problem, **settings)`` (with progress bars for a person watching) is answered from the cache
    ``--out/landscape.h5`` under the config ``settings``: the call and the cache key are the same dict, so they cannot
    drift apart. ``renamed`` maps a setting stored under another name to the analysis's keyword.
    """
    t0 = time.perf_counter()
    problem = setup_problem(kw, quiet)
    keywords = {(renamed or {}).get(key, key): value for key, value in settings.items()}

    def compute() -> tuple[dict, str]:
        res = analysis(problem, **keywords, progress=show_progress(quiet))
        return res.to_dict(), res.summary()

    answer_and_emit(problem, name, settings, compute, out=Path(out), no_cache=no_cache, as_json=as_json, t0=t0)


@main.command(name="sharpness")
@common_options
@click.option("--rho", type=float, default=0.05, show_default=True, help="SAM radius and average-case noise scale.")
@click.option("--steps", type=int, default=5, show_default=True, help="SAM ascent steps.")
@click.option("--num-samples", type=int, default=10, show_default=True, help="Average-sharpness draws.")
@click.option("--num-matvecs", type=int, default=40, show_default=True, help="Trace/Frobenius budget (each).")
@click.option("--keskar", is_flag=True, help="Also Keskar sharpness (slow: L-BFGS-B).")
def sharpness_cmd(rho, steps, num_samples, num_matvecs, keskar, out, no_cache, as_json, quiet, **kw):
    """lambda_max, trace, Frobenius norm, SAM/ASAM and average sharpness (Keskar with --keskar)."""
    from landscape.sharpness import sharpness

    settings = {
        "rho": rho,
        "steps": steps,
        "num_samples": num_samples,
        "num_matvecs": num_matvecs,
        "keskar": keskar,
        "seed": kw["seed"],
    }
    _run("sharpness", sharpness, settings, kw=kw, out=out, no_cache=no_cache, as_json=as_json, quiet=quiet)


@main.command(name="roughness")
@common_options
@click.option("--num-directions", type=int, default=10, show_default=True)
@click.option("--span", type=float, default=0.1, show_default=True)
@click.option("--points", type=int, default=11, show_default=True)
def roughness_cmd(num_directions, span, points, out, no_cache, as_json, quiet, **kw):
    """Roughness index along random filter-normalised directions (with its standard error)."""
    from landscape.roughness import roughness_index

    settings = {"num_directions": num_directions, "span": span, "points": points, "seed": kw["seed"]}
    _run("roughness", roughness_index, settings, kw=kw, out=out, no_cache=no_cache, as_json=as_json, quiet=quiet)


@main.command(name="stability")
@common_options
@click.option("--optimizer", default="gd", show_default=True, help="gd, sgd, heavy_ball, nesterov, adam, adamw, sam.")
@click.option("--lr", type=float, default=0.05, show_default=True)
@click.option("--sgd-batch-size", type=int, default=None, help="Minibatch size for SGD (default: full batch).")
@click.option("--momentum", type=float, default=0.0, show_default=True)
def stability_cmd(optimizer, lr, sgd_batch_size, momentum, out, no_cache, as_json, quiet, **kw):
    """Linear-stability criteria of an optimizer at a learning rate (exit code 0 whatever the verdict)."""
    from landscape.stability import OPTIMIZERS, stability

    if optimizer not in OPTIMIZERS:
        raise UserError(f"--optimizer {optimizer!r}: use one of {', '.join(OPTIMIZERS)}")
    settings = {
        "optimizer": optimizer,
        "lr": lr,
        "sgd_batch_size": sgd_batch_size,
        "momentum": momentum,
        "seed": kw["seed"],
    }
    _run(
        "stability",
        stability,
        settings,
        kw=kw,
        out=out,
        no_cache=no_cache,
        as_json=as_json,
        quiet=quiet,
        renamed={"sgd_batch_size": "batch_size"},  # the cache key's name of the option, kept from before
    )


@main.command(name="scaling")
@common_options
@click.option("--batch-sizes", default="32,128", show_default=True, callback=int_list, help="Comma-separated.")
@click.option("--num-batches", type=int, default=4, show_default=True, help="Minibatches per batch size.")
@click.option("--scaling-optimizer", type=click.Choice(["sgd", "adam"]), default="sgd", show_default=True)
def scaling_cmd(batch_sizes, num_batches, scaling_optimizer, out, no_cache, as_json, quiet, **kw):
    """How the minibatch Hessian's top eigenvalue and the maximal stable learning rate change with batch size."""
    from landscape.scaling import lr_batch_scaling

    settings = {
        "batch_sizes": list(batch_sizes),
        "num_batches": num_batches,
        "optimizer": scaling_optimizer,
        "seed": kw["seed"],
    }
    _run("scaling", lr_batch_scaling, settings, kw=kw, out=out, no_cache=no_cache, as_json=as_json, quiet=quiet)
