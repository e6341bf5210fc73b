"""The commands of the whole picture: ``report`` (every analysis in one self-contained HTML page) and ``demo`` (a small
model trained on the shipped digits data, then its report, with no arguments).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
from torch import nn

from landscape.cli.app import CACHE_FILE, UserError, common_options, int_list, main
from landscape.cli.setup import fresh_model, second_model, setup_problem


def _report_start(problem, from_path: str | None, from_init: bool, kw: dict[str, Any]) -> nn.Module | None:
    """The start of the report's interpolation: ``--from``, a fresh ``--model`` factory() with ``--from-init``, the
    built-in model's initialisation, or ``None``. Under torchrun every rank gets rank 0's bits, as for the model."""
    from landscape import distributed

    builtin = kw["model_spec"] is None and kw["checkpoint"] is None and kw["hf_dir"] is None
    start = None
    if from_path is not None:
        start = second_model(from_path, problem.model, kw["unsafe_load"], "--from", not kw["non_strict"])
    elif builtin or (from_init and (kw["hf_dir"] is not None or kw["model_spec"] is not None)):
        start, _ = fresh_model(problem.model, kw)
    if start is not None and problem.ranks is not None:
        distributed.broadcast_module(start)
    return start


@main.command(name="report")
@common_options
@click.option(
    "--optimizer",
    "optimizers",
    multiple=True,
    default=("sgd", "adam:0.001", "sam"),
    show_default=True,
    help="An optimizer setting to check, NAME or NAME:LR (repeatable); NAME in gd, sgd, heavy_ball, nesterov, adam, "
    "adamw, sam.",
)
@click.option("--lr", type=float, default=0.05, show_default=True, help="Learning rate of --optimizer without :LR.")
@click.option(
    "--sgd-batch-size",
    type=int,
    default=64,
    show_default=True,
    help="Minibatch size of the SGD check (and of the minibatches estimating Adam's second moment).",
)
@click.option("--momentum", type=float, default=0.0, show_default=True, help="SGD momentum of the stability check.")
@click.option("--rho", type=float, default=0.05, show_default=True, help="SAM radius (stability and sharpness).")
@click.option(
    "--batch-sizes",
    default="16,64,256",
    show_default=True,
    callback=int_list,
    help="Batch sizes of the scaling analysis (comma-separated; n is always added).",
)
@click.option("--num-batches", type=int, default=4, show_default=True, help="Minibatches per batch size.")
@click.option("--top-k", type=int, default=5, show_default=True, help="Number of top eigenvalues.")
@click.option("--probes", type=int, default=8, show_default=True, help="SLQ probes.")
@click.option("--steps", type=int, default=40, show_default=True, help="Lanczos steps per probe.")
@click.option("--span", type=float, default=1.0, show_default=True, help="The surface covers [-span, span]^2.")
@click.option("--resolution", type=click.IntRange(2, None), default=21, show_default=True, help="Surface points/axis.")
@click.option(
    "--from",
    "from_path",
    default=None,
    type=click.Path(),
    help="Also the interpolation from this checkpoint (TorchScript file, --hf directory) to the model.",
)
@click.option(
    "--from-init",
    is_flag=True,
    help="Also the interpolation from a fresh --model factory() (always done for the built-in model).",
)
@click.option(
    "--blocks",
    "blocks_by",
    type=click.Choice(["module", "parameter"]),
    default=None,
    help="Also the block spectra (a section: every module's or parameter tensor's Hessian spectrum, top eigenvalue "
    "per block, with --probes and --steps).",
)
@click.option("--title", default="Loss landscape report", show_default=True, help="Title of the page.")
def report_cmd(
    optimizers,
    lr,
    sgd_batch_size,
    momentum,
    rho,
    batch_sizes,
    num_batches,
    top_k,
    probes,
    steps,
    span,
    resolution,
    from_path,
    from_init,
    blocks_by,
    title,
    out,
    no_cache,
    as_json,
    quiet,
    **kw,
):
    """Every analysis in one self-contained HTML page (--out/report.html, numbers in report.json).

    Spectrum, 2D surface (and an interpolation), sharpness, roughness, the stability of each --optimizer setting and
    the batch-size scaling; every result is cached in --out/landscape.h5, so a second run is fast.
    """
    from landscape import distributed
    from landscape.report import OptimizerSetting, analyse, collect_provenance, write_report

    t0 = time.perf_counter()
    if from_path is not None and from_init:
        raise UserError("give either --from FILE or --from-init, not both")
    try:
        settings = [
            OptimizerSetting.parse(o, lr=lr, batch_size=sgd_batch_size, momentum=momentum, rho=rho) for o in optimizers
        ]
    except ValueError as err:
        raise UserError(f"--optimizer: {err}") from err
    problem = setup_problem(kw, quiet)
    start = _report_start(problem, from_path, from_init, kw)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    blocks = None if blocks_by is None else {"by": blocks_by, "k": 1, "num_probes": probes, "num_steps": steps}
    results = analyse(
        problem,
        optimizers=settings,
        batch_sizes=batch_sizes,
        num_batches=num_batches,
        top_k=top_k,
        num_probes=probes,
        num_steps=steps,
        span=span,
        resolution=resolution,
        interpolate_from=start,
        blocks=blocks,
        rho=rho,
        seed=kw["seed"],
        cache=None if no_cache else out / CACHE_FILE,
        log=None if quiet else lambda msg: click.echo(msg, err=True),
    )
    if distributed.get_rank() > 0:  # under torchrun rank 0 alone writes the report (the others computed with it)
        return
    options = {
        "model": kw["model_spec"] or kw["hf_dir"] or "built-in MLP trained on the data",
        "checkpoint": kw["checkpoint"],
        "hugging_face": kw["hf_dir"],
        "data": kw["data_spec"],
        "batch_size": kw["batch_size"],
        "loss": kw["loss"] or type(problem.loss_fn).__name__,
        "params": list(kw["params"]) or "all trainable",
        "optimizers": [vars(s) for s in settings],
        "scaling_batch_sizes": list(batch_sizes),
        "num_batches": num_batches,
        "spectrum": {"top_k": top_k, "num_probes": probes, "num_steps": steps},
        "blocks": blocks,
        "surface": {"directions": "filter_normalized", "span": span, "resolution": resolution},
        "interpolation_from": from_path or ("initialisation" if start is not None else None),
        "rho": rho,
        "cache": None if no_cache else {"path": str(out / CACHE_FILE), **results.cache},
    }
    provenance = collect_provenance(
        problem,
        model=options["model"],
        seeds={"all estimators, directions and batches": kw["seed"]},
        settings=options,
        wall_times=results.wall_times,
    )
    path = write_report(out, results, provenance, title=title)
    if as_json:
        click.echo((out / "report.json").read_text())
        return
    lines = [f"report: {path}  (numbers: {out / 'report.json'})"]
    if results.spectrum is not None:
        from landscape.report.html import best_trace

        # The report's one trace (exact when computed, else the estimate with the smaller error), as its pages show.
        tr = best_trace(results.spectrum, results.sharpness)
        shown = f", trace {tr.shown()} ({tr.how})" if tr is not None else ""
        lines.append(f"lambda_max {results.spectrum.lambda_max:.6g}{shown}")
    for rep in results.stability:
        lines.append(
            f"{rep.optimizer} at lr {rep.lr:g}: {'STABLE' if rep.stable else 'UNSTABLE'} "
            f"(max stable lr {rep.max_stable_lr:.4g})"
        )
    if not no_cache:
        info = results.cache
        lines.append(
            f"cache {out / CACHE_FILE}: spectrum {'reused' if info.get('spectrum_from_cache') else 'computed'}, "
            f"{info.get('surface_points_from_cache', 0)} of {info.get('surface_points', 0)} surface points reused"
        )
    lines.append(f"({time.perf_counter() - t0:.1f} s in all)")
    click.echo("\n".join(lines))


@main.command(name="demo")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default="landscape-out",
    show_default=True,
    help="Directory for report.html, report.json and the cache landscape.h5.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--replicated-data",
    is_flag=True,
    help="Under torchrun: every rank holds all the training data; loss surfaces deal their grid points out to the "
    "ranks (default: the data are sharded and every product is all-reduced).",
)
@click.option("--quiet", is_flag=True, help="No progress lines.")
def demo_cmd(out, seed, replicated_data, quiet):
    """Train a small MLP on scikit-learn's digits for a few seconds and write the full HTML report (offline).

    Under torchrun rank 0 trains the model, every rank analyses it with rank 0's bits, and rank 0 alone writes.
    """
    from landscape.report import run_demo

    t0 = time.perf_counter()
    path = run_demo(out, seed=seed, quiet=quiet, replicated=replicated_data)
    if path is not None:  # rank 0 (or one process)
        click.echo(f"report: {path} ({time.perf_counter() - t0:.1f} s); open it in a browser (works offline)")
