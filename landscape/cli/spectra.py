"""The commands of the spectrum: ``spectrum`` (top eigenvalues, trace, Frobenius norm and density from one Krylov
pass), ``eigen`` (top-k eigenvalues with Ritz residuals and error bounds), ``trace`` and ``density`` (stochastic Lanczos
quadrature), of the Hessian or the GGN.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from landscape.cli.app import (
    common_options,
    main,
    memory_budget,
    operator_option,
    plus_minus,
    products_engine,
    show_progress,
)
from landscape.cli.output import answer, answer_and_emit, emit, marked, opened_store
from landscape.cli.setup import setup_problem


def _operator(problem, operator: str):
    """The curvature operator of ``--operator``: the Hessian or the generalised Gauss-Newton matrix."""
    from landscape.operators import ggn, hessian

    engine = products_engine()
    if engine is not None:
        if operator == "ggn":
            raise click.UsageError("--products finite-difference differences gradients: the Hessian only")
        return hessian(problem, engine=engine)
    return ggn(problem) if operator == "ggn" else hessian(problem)


def _config(**config) -> dict:
    """A command's cache key settings, with ``--products`` when it is not the default (older keys stay valid)."""
    engine = products_engine()
    return config if engine is None else {**config, "products": engine}


def _begin(kw: dict, quiet: bool, out: str, analysis: str, **settings) -> tuple[float, object, Path, int | None]:
    """How every spectral command begins: its start time, the Problem of the shared options, the ``--out`` folder and
    the memory budget of ``analysis`` with ``settings`` (under ``--dry-run``: the estimate printed, then exit)."""
    t0 = time.perf_counter()
    problem = setup_problem(kw, quiet)
    return t0, problem, Path(out), memory_budget(problem, analysis, **settings)


def _estimate(estimator, problem, operator: str, kw: dict, quiet: bool, budget: int | None, **settings):
    """``estimator`` (a :mod:`landscape.linalg` function) on the ``--operator`` of ``problem``, with the command's
    settings and, as every spectral command runs it, the ``--seed``, a progress bar unless ``--quiet`` and the
    memory budget. Returns the estimate and what the JSON result records of the products: ``{"products": ...}``
    with ``--products finite-difference`` (the step and error bound), else ``{}``."""
    op = _operator(problem, operator)
    res = estimator(op, **settings, seed=kw["seed"], progress=show_progress(quiet), memory_budget=budget)
    return res, ({"products": op.settings} if products_engine() is not None else {})


@main.command()
@common_options
@click.option("--top-k", type=int, default=5, show_default=True, help="Number of top eigenvalues.")
@click.option("--probes", type=int, default=8, show_default=True, help="SLQ probes.")
@click.option("--steps", type=int, default=40, show_default=True, help="Lanczos steps per probe.")
@click.option("--subsets", type=int, default=None, help="Also measure the spread over this many data subsets.")
@operator_option
def spectrum(top_k, probes, steps, subsets, operator, out, no_cache, as_json, quiet, **kw):
    """Top eigenvalues, trace, Frobenius norm and spectral density from one Krylov pass."""
    from landscape.plot.cli_figures import spectrum_figure
    from landscape.spectrum import spectrum as run_spectrum

    t0, problem, out, budget = _begin(kw, quiet, out, "spectrum", num_probes=probes, num_steps=steps)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "k": top_k,
        "probes": probes,
        "steps": steps,
        "subsets": subsets,
        "operator": operator,
        "seed": kw["seed"],
    }
    config = _config(**config)
    with opened_store(out, no_cache) as store:

        def run():
            return run_spectrum(
                problem,
                k=top_k,
                num_probes=probes,
                num_steps=steps,
                subsets=subsets,
                operator=operator,
                engine=products_engine() or "auto",
                seed=kw["seed"],
                cache=store,
                progress=show_progress(quiet),
                memory_budget=budget,
            )

        result, hit = marked(store, problem, "spectrum", config, run)
        plot = spectrum_figure(result, out)
        summary = result.summary() + f"\ndensity plot: {plot}"
        emit(result.to_dict(), summary, as_json, out, "spectrum", hit, t0, store)


@main.command()
@common_options
@click.option("--top-k", type=int, default=3, show_default=True, help="Number of top eigenvalues.")
@click.option("--tol", type=float, default=1e-4, show_default=True, help="Relative residual tolerance.")
@click.option("--max-matvecs", type=int, default=None, help="Budget of operator products.")
@click.option(
    "--guarantee",
    type=float,
    default=None,
    help="With --top-k 1: run until the eigenvalue is within this fraction of the spectrum's spread with "
    "probability 0.99, whatever the gaps (Kuczynski & Wozniakowski 1992).",
)
@click.option(
    "--guarantee-scale",
    type=click.Choice(["spread", "eigenvalue"]),
    default="spread",
    show_default=True,
    help="What --guarantee is a fraction of: the spread lambda_max - lambda_min, or the eigenvalue itself.",
)
@operator_option
def eigen(top_k, tol, max_matvecs, guarantee, guarantee_scale, operator, out, no_cache, as_json, quiet, **kw):
    """Top-k eigenvalues of the Hessian (or GGN) with Ritz residuals and error bounds (Lanczos)."""
    from landscape.linalg import top_eigen

    t0, problem, out, budget = _begin(
        kw,
        quiet,
        out,
        "top_eigen",
        k=top_k,
        max_matvecs=max_matvecs,
        guarantee=guarantee,
        guarantee_scale=guarantee_scale,
        # Only the Hessian's double backward adds its product into the recurrence's buffer.
        in_place_product=operator == "hessian" and products_engine() is None,
    )

    def compute() -> tuple[dict, str]:
        res, products = _estimate(
            top_eigen,
            problem,
            operator,
            kw,
            quiet,
            budget,
            k=top_k,
            tol=tol,
            max_matvecs=max_matvecs,
            guarantee=guarantee,
            guarantee_scale=guarantee_scale,
        )
        num_params = int(problem.num_params)
        result = {
            "operator": operator,
            "num_params": num_params,
            "eigenvalues": res.values.tolist(),
            "residuals": res.residuals.tolist(),
            "error_bounds": res.error_bounds.tolist(),
            "converged": [bool(c) for c in res.converged],
            "num_matvecs": res.num_matvecs,
            "num_steps": res.num_steps,
            "method": res.method,
            "which": res.which,
            "tol": res.tol,
            "seed": res.seed,
            "wall_time": res.wall_time,
            "random_start": res.settings.get("random_start"),
            **products,
        }
        lines = [
            f"top {top_k} {operator} eigenvalues of {num_params:,} parameters ({res.method}, "
            f"{res.num_matvecs} products, {res.wall_time:.2f} s, seed {res.seed}):"
        ]
        for i, (v, r, b, c) in enumerate(
            zip(res.values, res.residuals, res.error_bounds, res.converged, strict=True), 1
        ):
            lines.append(f"  lambda_{i} = {plus_minus(v, b)}  (Ritz residual {r:.2g}{'' if c else ', NOT converged'})")
        lines.append("(+- is the Ritz error bound min(r, r^2 / gap))")
        bound = result["random_start"]
        if bound:
            lines.append(
                f"with probability {bound['confidence']:g} over the random start, lambda_1 is within "
                f"{bound['error_vs_spread']:.2g} x (lambda_max - lambda_min) of the largest eigenvalue "
                f"({bound['steps']} steps; Kuczynski & Wozniakowski 1992); with both ends bounded, within "
                f"{bound['error_vs_eigenvalue']:.2g} of it relative"
            )
        return result, "\n".join(lines)

    config = _config(k=top_k, tol=tol, max_matvecs=max_matvecs, operator=operator, seed=kw["seed"])
    if guarantee is not None:  # absent from older keys: their cached answers stay valid
        config["guarantee"] = guarantee
        if guarantee_scale != "spread":
            config["guarantee_scale"] = guarantee_scale
    answer_and_emit(problem, "eigen", config, compute, out=out, no_cache=no_cache, as_json=as_json, t0=t0)


@main.command(name="trace")
@common_options
@click.option(
    "--method",
    type=click.Choice(["auto", "hutch++", "hutchinson", "xtrace", "exact"]),
    default="auto",
    show_default=True,
)
@click.option("--num-matvecs", type=int, default=60, show_default=True, help="Budget of operator products.")
@operator_option
def trace_cmd(method, num_matvecs, operator, out, no_cache, as_json, quiet, **kw):
    """Trace of the Hessian (or GGN): exact where supported, else a stochastic estimate with its standard error."""
    from landscape.linalg import trace

    t0, problem, out, budget = _begin(kw, quiet, out, "trace", method=method, num_matvecs=num_matvecs)

    def compute() -> tuple[dict, str]:
        est, products = _estimate(trace, problem, operator, kw, quiet, budget, method=method, num_matvecs=num_matvecs)
        result = {
            "operator": operator,
            "value": float(est.value),
            "stderr": float(est.stderr),
            "method": est.method,
            "requested": method,
            "note": est.settings.get("note", ""),
            "num_matvecs": est.num_matvecs,
            "seed": est.seed,
            "wall_time": est.wall_time,
            **products,
        }
        summary = (
            f"trace of the {operator}: {plus_minus(float(est.value), float(est.stderr))}"
            f" ({'exact' if est.method == 'exact' else 'standard error'})\n"
            f"method: {est.method} (requested {method}), {est.num_matvecs} products, {est.wall_time:.2f} s"
            + ("" if est.seed is None else f", seed {est.seed}")
        )
        if result["note"]:
            summary += f"\nnote: {result['note']}"
        return result, summary

    config = _config(method=method, num_matvecs=num_matvecs, operator=operator, seed=kw["seed"])
    answer_and_emit(problem, "trace", config, compute, out=out, no_cache=no_cache, as_json=as_json, t0=t0)


@main.command()
@common_options
@click.option("--probes", type=int, default=4, show_default=True, help="SLQ probes.")
@click.option("--steps", type=int, default=30, show_default=True, help="Lanczos steps per probe.")
@operator_option
def density(probes, steps, operator, out, no_cache, as_json, quiet, **kw):
    """Spectral density by stochastic Lanczos quadrature; writes density.png."""
    from landscape.linalg import spectral_density
    from landscape.plot.cli_figures import density_figure

    t0, problem, out, budget = _begin(kw, quiet, out, "spectrum", num_probes=probes, num_steps=steps)

    def compute() -> tuple[dict, str]:
        dens, products = _estimate(
            spectral_density, problem, operator, kw, quiet, budget, num_probes=probes, num_steps=steps
        )
        tr = dens.trace()
        result = {
            "operator": operator,
            "num_params": dens.num_params,
            "support": [dens.lambda_min, dens.lambda_max],
            "trace": float(tr.value),
            "trace_stderr": float(tr.stderr),
            "sigma": dens.sigma,
            "num_probes": probes,
            "num_steps": steps,
            "steps": dens.steps.tolist(),
            "nodes": dens.nodes.tolist(),
            "weights": dens.weights.tolist(),
            "num_matvecs": dens.num_matvecs,
            "seed": dens.seed,
            "wall_time": dens.wall_time,
            **products,
        }
        summary = (
            f"{operator} spectral density of {dens.num_params:,} parameters: support "
            f"[{dens.lambda_min:.4g}, {dens.lambda_max:.4g}], {probes} probes x {steps} steps, sigma {dens.sigma:.3g}\n"
            f"trace from the quadrature: {plus_minus(float(tr.value), float(tr.stderr))} (probe stderr)\n"
            f"{dens.num_matvecs} products, {dens.wall_time:.2f} s, seed {dens.seed}"
        )
        return result, summary

    config = _config(probes=probes, steps=steps, operator=operator, seed=kw["seed"])
    out.mkdir(parents=True, exist_ok=True)
    with opened_store(out, no_cache) as store:
        result, summary, hit = answer(store, problem, "density", config, compute)
        plot = density_figure(result, out)
        result = {**result, "plot": str(plot)}
        emit(result, summary + f"\ndensity plot: {plot}", as_json, out, "density", hit, t0, store)
