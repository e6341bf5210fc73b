"""The ``landscape`` command line (click).

With no model, commands run on a built-in default: a small MLP trained for a few seconds on scikit-learn's
shipped digits data, so ``landscape spectrum`` works on a fresh machine with no arguments.
"""

from __future__ import annotations

import functools
import importlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
from torch import nn

DTYPES = {"float32": torch.float32, "float64": torch.float64}
LOSSES = {"cross_entropy": nn.CrossEntropyLoss, "mse": nn.MSELoss}


class UserError(click.ClickException):
    """An error the user can act on: one clear line, exit code 2."""

    exit_code = 2


def _import_factory(spec: str, what: str) -> Callable:
    if ":" not in spec:
        raise UserError(f"--{what} {spec!r} must look like 'package.module:factory'")
    module_name, attr = spec.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UserError(f"--{what} {spec!r}: cannot import module {module_name!r} ({err})") from err
    try:
        return getattr(module, attr)
    except AttributeError as err:
        raise UserError(f"--{what} {spec!r}: module {module_name!r} has no attribute {attr!r}") from err


def _builtin_data(name: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from landscape import data

    if name == "digits":
        return data.digits(split="train", seed=seed)
    if name == "synthetic":
        return data.gaussian_mixture(n=1024, dim=64, num_classes=10, seed=seed)
    raise UserError(f"--data {name!r}: use 'digits', 'synthetic' or 'package.module:factory'")


def _load_data(spec: str, seed: int) -> Any:
    if ":" in spec:
        return _import_factory(spec, "data")()
    return _builtin_data(spec, seed)


def _default_model(X: torch.Tensor, y: torch.Tensor, seed: int, quiet: bool) -> nn.Module:
    from landscape.models import mlp
    from landscape.training import train

    model = mlp(in_features=X.shape[1], hidden=(32,), out_features=int(y.max()) + 1, seed=seed)
    log = train(model, X, y, steps=300, lr=0.05, batch_size=64, seed=seed)
    if not quiet:
        click.echo(
            f"trained the built-in MLP on the data for {log.steps} steps ({log.wall_time:.1f} s), "
            f"loss {log.final_loss:.4f}",
            err=True,
        )
    return model


def _load_model(
    model_spec: str | None, checkpoint: str | None, data: Any, seed: int, quiet: bool, unsafe_load: bool
) -> nn.Module:
    from landscape.checkpoint import CheckpointError, is_torchscript, load_checkpoint, load_model

    try:
        if model_spec is None:
            if checkpoint is not None and is_torchscript(checkpoint):
                return load_model(checkpoint)
            if checkpoint is not None:
                raise UserError("--checkpoint needs --model package.module:factory (or a TorchScript file)")
            if not (isinstance(data, tuple) and len(data) == 2):
                raise UserError("the built-in model needs tensor data (X, y): pass --model for other data")
            return _default_model(data[0].flatten(1), data[1], seed, quiet)
        model = _import_factory(model_spec, "model")()
        if not isinstance(model, nn.Module):
            raise UserError(f"--model {model_spec!r} returned a {type(model).__name__}, not a torch.nn.Module")
        if checkpoint is not None:
            load_checkpoint(model, checkpoint, weights_only=not unsafe_load)
        return model
    except (CheckpointError, FileNotFoundError) as err:
        raise UserError(str(err)) from err


def common_options(fn: Callable) -> Callable:
    """Options shared by every analysis command."""
    options = [
        click.option(
            "--model",
            "model_spec",
            default=None,
            help="package.module:factory returning an nn.Module "
            "(default: a small MLP trained for a few seconds on the data).",
        ),
        click.option(
            "--checkpoint",
            default=None,
            type=click.Path(dir_okay=False),
            help="Weights to load into --model (state dict layouts, DDP prefixes) or a TorchScript file.",
        ),
        click.option("--unsafe-load", is_flag=True, help="torch.load with weights_only=False (trusted files only)."),
        click.option(
            "--data",
            "data_spec",
            default="digits",
            show_default=True,
            help="'digits', 'synthetic' or package.module:factory returning (X, y) or a DataLoader.",
        ),
        click.option("--batch-size", type=int, default=512, show_default=True, help="Batch size for (X, y) data."),
        click.option("--loss", type=click.Choice(sorted(LOSSES)), default="cross_entropy", show_default=True),
        click.option("--params", multiple=True, help="Parameter names or globs to analyse (repeatable)."),
        click.option(
            "--mode",
            type=click.Choice(["eval", "train"]),
            default="eval",
            show_default=True,
            help="BatchNorm/dropout policy.",
        ),
        click.option("--dtype", type=click.Choice(sorted(DTYPES)), default=None, help="Evaluation dtype."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option(
            "--out",
            type=click.Path(file_okay=False),
            default="landscape-out",
            show_default=True,
            help="Directory for results and figures.",
        ),
        click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of a summary."),
        click.option("--quiet", is_flag=True, help="No progress output."),
        click.option("--debug", is_flag=True, help="Show full tracebacks."),
    ]
    for option in reversed(options):
        fn = option(fn)

    @functools.wraps(fn)
    def wrapper(**kwargs):
        debug = kwargs.pop("debug")
        try:
            return fn(**kwargs)
        except (click.ClickException, click.exceptions.Exit):
            raise
        except Exception as err:  # one clear line for the user; the traceback under --debug
            if debug:
                raise
            raise UserError(f"{type(err).__name__}: {err}") from err

    return wrapper


def build_problem(model_spec, checkpoint, unsafe_load, data_spec, batch_size, loss, params, mode, dtype, seed, quiet):
    from landscape.problem import Problem

    data = _load_data(data_spec, seed)
    model = _load_model(model_spec, checkpoint, data, seed, quiet, unsafe_load)
    if isinstance(data, tuple) and len(data) == 2 and model_spec is None:
        data = (data[0].flatten(1), data[1])
    return Problem(
        model,
        LOSSES[loss](),
        data,
        params=list(params) or None,
        mode=mode,
        dtype=DTYPES[dtype] if dtype else None,
        batch_size=batch_size if isinstance(data, tuple) else None,
    )


def _emit(result: dict, summary: str, as_json: bool, out: Path, name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2, default=_jsonable))
    if as_json:
        click.echo(json.dumps(result, indent=2, default=_jsonable))
    else:
        click.echo(summary)


def _jsonable(x: Any) -> Any:
    if isinstance(x, (np.generic,)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


@click.group()
@click.version_option(package_name="landscape")
def main() -> None:
    """landscape: Hessian spectra, traces, densities and loss surfaces of PyTorch models."""


@main.command()
@common_options
@click.option("--top-k", type=int, default=5, show_default=True, help="Number of top eigenvalues.")
@click.option("--probes", type=int, default=8, show_default=True, help="SLQ probes.")
@click.option("--steps", type=int, default=40, show_default=True, help="Lanczos steps per probe.")
@click.option("--subsets", type=int, default=None, help="Also measure the spread over this many data subsets.")
@click.option("--operator", type=click.Choice(["hessian", "ggn"]), default="hessian", show_default=True)
def spectrum(top_k, probes, steps, subsets, operator, out, as_json, quiet, **kw):
    """Top eigenvalues, trace, Frobenius norm and spectral density from one Krylov pass."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from landscape.spectrum import spectrum as run_spectrum

    t0 = time.perf_counter()
    problem = build_problem(quiet=quiet, **kw)
    result = run_spectrum(
        problem, k=top_k, num_probes=probes, num_steps=steps, subsets=subsets, operator=operator, seed=kw["seed"]
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    result.density.plot(ax=axes[0])
    result.density.plot(ax=axes[1], log=True)
    for v in result.eigenvalues:
        axes[1].axvline(v, color="C3", lw=0.6, ls="--")
    axes[1].set_title("log scale, top eigenvalues dashed")
    fig.tight_layout()
    for ext in ("png", "pdf"):
        fig.savefig(out / f"density.{ext}", dpi=150)
    plt.close(fig)
    summary = result.summary() + f"\ndensity plot: {out / 'density.png'} (total {time.perf_counter() - t0:.1f} s)"
    _emit(result.to_dict(), summary, as_json, out, "spectrum")


def run() -> None:
    main(prog_name="landscape")


if __name__ == "__main__":
    sys.exit(run())
