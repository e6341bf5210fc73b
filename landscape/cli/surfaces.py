"""The commands of loss surfaces: ``surface`` (the loss on a grid along 1 or 2 filter-normalised random directions,
resumable from the cache) and ``interpolate`` (loss and accuracy on the line between two models).
"""

from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np
import torch

from landscape.cli.app import UserError, common_options, main, show_progress
from landscape.cli.output import answer, emit, marked, opened_store, state_sha
from landscape.cli.setup import fresh_model, second_model, setup_problem


@main.command(name="surface")
@common_options
@click.option("--directions", "num_directions", type=click.IntRange(1, 2), default=2, show_default=True)
@click.option("--directions-seed", type=int, default=None, help="Seed of the directions (default --seed).")
@click.option("--span", type=float, default=1.0, show_default=True, help="Coordinates cover [-span, span].")
@click.option("--resolution", type=click.IntRange(2, None), default=11, show_default=True)
@click.option(
    "--directions-dtype",
    type=click.Choice(["bfloat16", "float16"]),
    default=None,
    help="Store the directions in this dtype (half their memory on a float32 model; default the model's dtype).",
)
def surface_cmd(
    num_directions, directions_seed, span, resolution, directions_dtype, out, no_cache, as_json, quiet, **kw
):
    """Loss along 1 or 2 filter-normalised random directions; cached in --out/landscape.h5, plotted to surface.png."""
    from landscape.plot.cli_figures import surface_figure
    from landscape.surface import filter_normalized, surface

    t0 = time.perf_counter()
    problem = setup_problem(kw, quiet)
    seed = kw["seed"] if directions_seed is None else directions_seed
    dtype = None if directions_dtype is None else getattr(torch, directions_dtype)
    dirs = filter_normalized(problem, num=num_directions, seed=seed, dtype=dtype)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = {"directions": num_directions, "directions_seed": seed, "span": span, "resolution": resolution}
    if directions_dtype is not None:  # the default's key stays what it was
        config["directions_dtype"] = directions_dtype
    with opened_store(out, no_cache) as store:
        grid = {"span": (-span, span), "resolution": resolution, "cache": store, "progress": show_progress(quiet)}
        surf, _ = marked(store, problem, "surface", config, lambda: surface(problem, dirs, **grid))
        plot = surface_figure(surf, out)
        centre = tuple(int(np.argmin(np.abs(c))) for c in surf.coords)
        from_cache = int(surf.settings.get("cache", {}).get("points_from_cache", 0))
        result = {
            "directions": num_directions,
            "directions_seed": seed,
            "directions_dtype": directions_dtype,
            "span": [-span, span],
            "resolution": resolution,
            "coords": [c.tolist() for c in surf.coords],
            "loss": surf.loss.tolist(),
            "accuracy": None if surf.accuracy is None else surf.accuracy.tolist(),
            "min_loss": float(np.nanmin(surf.loss)),
            "max_loss": float(np.nanmax(surf.loss)),
            "centre_loss": float(surf.loss[centre]),
            "num_points": int(surf.loss.size),
            "points_from_cache": from_cache,
            "cache": None if store is None else str(store.path),
            "wall_time": surf.wall_time,
            "plot": str(plot),
        }
        accuracy = ""
        if surf.accuracy is not None:
            accuracy = f"accuracy: centre {100 * float(surf.accuracy[centre]):.1f}%, " + (
                f"min {100 * float(np.nanmin(surf.accuracy)):.1f}%\n"
            )
        summary = (
            f"loss surface, {num_directions} filter-normalised direction(s) (seed {seed}), {resolution} points per "
            f"direction on [{-span:g}, {span:g}], mode {problem.mode}\n"
            f"loss: min {result['min_loss']:.6g}, max {result['max_loss']:.6g}, centre {result['centre_loss']:.6g} "
            "(exact full-data loss: no sampling error)\n"
            f"{accuracy}"
            f"{from_cache} of {surf.loss.size} points from the cache, {surf.wall_time:.2f} s\n"
            f"plot: {plot}"
        )
        emit(result, summary, as_json, out, "surface", from_cache == surf.loss.size, t0, store)


@main.command(name="interpolate")
@common_options
@click.option(
    "--from",
    "from_path",
    default=None,
    type=click.Path(),
    help="Start point a = 0 (a checkpoint for the --model architecture, TorchScript, or a --hf directory); "
    "default: the model.",
)
@click.option("--from-init", is_flag=True, help="Start at a fresh --model factory() (built-in: its initialisation).")
@click.option(
    "--to",
    "to_path",
    default=None,
    type=click.Path(),
    help="End point a = 1 (a checkpoint, TorchScript file or --hf directory); default: the model.",
)
@click.option("--span", nargs=2, type=float, default=(-0.5, 1.5), show_default=True, help="Range of a: LOW HIGH.")
@click.option("--resolution", type=click.IntRange(2, None), default=41, show_default=True, help="Number of points.")
def interpolate_cmd(from_path, from_init, to_path, span, resolution, out, no_cache, as_json, quiet, **kw):
    """Loss and accuracy on the line (1 - a) w_from + a w_to between two models (BatchNorm statistics too)."""
    from landscape.plot.cli_figures import interpolation_figure
    from landscape.surface import interpolate

    t0 = time.perf_counter()
    if from_path is not None and from_init:
        raise UserError("give either --from FILE or --from-init, not both")
    if to_path is None and from_path is None and not from_init:
        raise UserError("interpolate needs a second model: --to other.pt (or --from a.pt, or --from-init)")
    if not span[0] < span[1]:
        raise UserError(f"--span {span[0]:g} {span[1]:g}: LOW must be below HIGH")
    problem = setup_problem(kw, quiet)
    model = problem.model
    model_label = kw["checkpoint"] or kw["model_spec"] or kw["hf_dir"] or "the trained built-in MLP"
    if from_init:
        start, from_label = fresh_model(model, kw)
    elif from_path is not None:
        start = second_model(from_path, model, kw["unsafe_load"], "--from", not kw["non_strict"])
        from_label = from_path
    else:
        start, from_label = model, model_label
    if to_path is not None:
        end, to_label = second_model(to_path, model, kw["unsafe_load"], "--to", not kw["non_strict"]), to_path
    else:
        end, to_label = model, model_label
    out = Path(out)

    def compute() -> tuple[dict, str]:
        line = interpolate(problem, start, end, span=tuple(span), resolution=resolution, progress=show_progress(quiet))
        a = line.coords[0]
        loss = line.loss
        i0, i1 = int(np.argmin(np.abs(a))), int(np.argmin(np.abs(a - 1.0)))
        inside = (a >= 0.0) & (a <= 1.0)
        peak = int(np.flatnonzero(inside)[np.nanargmax(loss[inside])])
        barrier = float(loss[peak] - max(loss[i0], loss[i1]))
        buffers = line.directions.settings.get("buffers_interpolated", [])
        result = {
            "from": from_label,
            "to": to_label,
            "span": [float(span[0]), float(span[1])],
            "resolution": resolution,
            "coords": a.tolist(),
            "loss": loss.tolist(),
            "accuracy": None if line.accuracy is None else line.accuracy.tolist(),
            "loss_from": float(loss[i0]),
            "loss_to": float(loss[i1]),
            "max_loss_between": float(loss[peak]),
            "argmax_between": float(a[peak]),
            "barrier": barrier,
            "buffers_interpolated": buffers,
            "mode": problem.mode,
            "wall_time": line.wall_time,
        }

        def acc(i: int) -> str:
            return "" if line.accuracy is None else f", accuracy {100 * float(line.accuracy[i]):.1f}%"

        summary = (
            f"linear interpolation (1 - a) w_from + a w_to, {resolution} points on [{span[0]:g}, {span[1]:g}], "
            f"{problem.num_params:,} parameters and {len(buffers)} buffers (BatchNorm statistics) interpolated\n"
            f"  from (a = {a[i0]:.3g}, {from_label}): loss {loss[i0]:.6g}{acc(i0)}\n"
            f"  to   (a = {a[i1]:.3g}, {to_label}): loss {loss[i1]:.6g}{acc(i1)}\n"
            f"  highest loss between them: {loss[peak]:.6g} at a = {a[peak]:.3g} (barrier {barrier:.4g} above the "
            "higher end)\n"
            f"exact full-data loss (no sampling error), mode {problem.mode}, {line.wall_time:.2f} s"
        )
        if a[i0] != 0.0 or a[i1] != 1.0:
            summary += (
                "\nnote: a = 0 or a = 1 is not a grid point; the defaults (span -0.5 1.5, 41 points) contain both"
            )
        return result, summary

    config = {
        "from": state_sha(start),
        "to": state_sha(end),
        "span": [float(span[0]), float(span[1])],
        "resolution": resolution,
    }
    out.mkdir(parents=True, exist_ok=True)
    with opened_store(out, no_cache) as store:
        result, summary, hit = answer(store, problem, "interpolate", config, compute)
        plot = interpolation_figure(result, out)
        result = {**result, "plot": str(plot)}
        summary += f"\nplot: {plot}"
        emit(result, summary, as_json, out, "interpolate", hit, t0, store)
