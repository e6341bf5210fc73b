"""The click group ``main`` of the ``landscape`` command line and what its commands share: the common options (model,
data, loss, output, memory budget) with their error handling, and small helpers of option values and summaries.

The commands register themselves on :func:`main` in the modules of :mod:`landscape.cli`, which imports them all.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import sys
import tempfile
import traceback
from collections.abc import Callable
from typing import Any

import click
import torch
from torch import nn

from landscape.memory import parse_bytes

DTYPES = {"float32": torch.float32, "float64": torch.float64}
LOSSES = {"cross_entropy": nn.CrossEntropyLoss, "mse": nn.MSELoss}
# Loss adapters for dict batches (language models): landscape.losses.
ADAPTERS = ("causal_lm", "masked_lm", "model_output")
CACHE_FILE = "landscape.h5"
# Commands with a memory estimate (--dry-run), and where the context keeps --max-memory / --dry-run.
ESTIMATED = ("eigen", "spectrum", "trace", "density", "blocks")
# The commands that run on an FSDP2-sharded model (--fsdp) and the context key of --products.
SHARDED = ("eigen", "spectrum", "trace", "density")
PRODUCTS = "landscape.products"
MEMORY = "landscape.memory"


class UserError(click.ClickException):
    """An error the user can act on: one clear line, exit code 2."""

    exit_code = 2


def first_line(err: BaseException) -> str:
    """The first line of an error's message (its type's name when the message is empty)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def show_progress(quiet: bool) -> bool:
    """Progress bars only for a person watching: stderr is a terminal and ``--quiet`` was not given."""
    return not quiet and sys.stderr.isatty()


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
        click.option(
            "--hf",
            "hf_dir",
            default=None,
            type=click.Path(),
            help="A local Hugging Face save_pretrained directory (config.json + weights); never the network. "
            "Needs the optional extra: pip install -e '.[hf]'.",
        ),
        click.option("--unsafe-load", is_flag=True, help="torch.load with weights_only=False (trusted files only)."),
        click.option(
            "--non-strict",
            is_flag=True,
            help="Load only the checkpoint keys that match the model (load_state_dict(strict=False)); missing ones "
            "keep their initial values. Shapes must still match.",
        ),
        click.option(
            "--data",
            "data_spec",
            default="digits",
            show_default=True,
            help="'digits', 'synthetic', a token file (tokens.pt / tokens.npy: integer ids of shape (N, T)) or "
            "package.module:factory returning (X, y), a DataLoader or a list of batches (dicts of tensors too).",
        ),
        click.option(
            "--batch-size", type=int, default=512, show_default=True, help="Batch size for (X, y) data and token files."
        ),
        click.option(
            "--loss",
            type=click.Choice(sorted(LOSSES) + list(ADAPTERS)),
            default=None,
            help="cross_entropy (default for (X, y) data), mse, or for dict batches a loss adapter: causal_lm "
            "(default for a language model's tokens), masked_lm, model_output (the model's own .loss).",
        ),
        click.option(
            "--lm-chunk",
            type=click.IntRange(min=1),
            default=None,
            help="With causal_lm / masked_lm: fuse the model's output layer into the loss, N tokens at a time, so "
            "the loss, its gradient and the Hessian's products hold no (tokens, vocab) logits (long sequences, large "
            "vocabularies; the GGN, per-example losses and accuracy still use the logits).",
        ),
        click.option("--params", multiple=True, help="Parameter names or globs to analyse (repeatable)."),
        click.option(
            "--mode",
            type=click.Choice(["eval", "train"]),
            default="eval",
            show_default=True,
            help="BatchNorm/dropout policy.",
        ),
        click.option("--dtype", type=click.Choice(sorted(DTYPES)), default=None, help="Evaluation dtype."),
        click.option(
            "--replicated-data",
            is_flag=True,
            help="Under torchrun: every rank holds all the data; loss surfaces deal their grid points out to the "
            "ranks (default: the data are sharded and every product is all-reduced).",
        ),
        click.option(
            "--fsdp",
            is_flag=True,
            help="Under torchrun: shard the model over the ranks with FSDP2 (each transformer block, or each module "
            "with parameters, then the root); the spectral commands (spectrum, eigen, trace, density) then hold "
            "1/ranks of every Krylov vector per rank.",
        ),
        click.option(
            "--products",
            type=click.Choice(["exact", "finite-difference"]),
            default="exact",
            show_default=True,
            help="With --fsdp: exact curvature products (every rank gathers the whole weights) or central differences "
            "of FSDP's own gradients (the memory of training; an error bound is recorded).",
        ),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option(
            "--out",
            type=click.Path(file_okay=False),
            default="landscape-out",
            show_default=True,
            help="Directory for results, figures and the result cache landscape.h5.",
        ),
        click.option("--no-cache", is_flag=True, help=f"Neither read nor write --out/{CACHE_FILE}."),
        click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of a summary."),
        click.option("--quiet", is_flag=True, help="No progress bars or training messages."),
        click.option("--debug", is_flag=True, help="Show full tracebacks."),
        click.option(
            "--max-memory",
            default=None,
            help="Memory budget, e.g. 12GiB or 500MiB (default: 80% of the memory available now). An analysis that "
            "would need more stops before it starts, naming the need and the setting that fixes it.",
        ),
        click.option(
            "--dry-run",
            is_flag=True,
            help=f"Print the analysis's memory estimate by part and exit without running it ({', '.join(ESTIMATED)}).",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)

    @functools.wraps(fn)
    def wrapper(**kwargs):
        from landscape import distributed
        from landscape.cache import CacheError

        debug = kwargs.pop("debug")
        ctx = click.get_current_context()
        max_memory, dry_run = kwargs.pop("max_memory"), kwargs.pop("dry_run")
        products = kwargs.pop("products")
        if kwargs["fsdp"] and ctx.info_name not in SHARDED:
            raise UserError(f"--fsdp: {ctx.info_name!r} does not run on sharded models; {', '.join(SHARDED)} do")
        if products != "exact" and not kwargs["fsdp"]:
            raise UserError("--products finite-difference needs --fsdp (FSDP's own gradients are differenced)")
        ctx.meta[PRODUCTS] = products
        if dry_run and ctx.info_name not in ESTIMATED:
            raise UserError(f"--dry-run: no memory estimate for {ctx.info_name!r}; {', '.join(ESTIMATED)} have one")
        try:
            budget = None if max_memory is None else parse_bytes(max_memory)
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="--max-memory") from None
        ctx.meta[MEMORY] = (budget, dry_run)
        try:
            if distributed.get_rank() > 0:
                # Under torchrun only rank 0 prints and writes (and owns the cache); the others compute alongside
                # it, following its cache decisions, into a scratch directory.
                with tempfile.TemporaryDirectory() as scratch, contextlib.redirect_stdout(io.StringIO()):
                    return fn(**{**kwargs, "out": scratch, "no_cache": True, "quiet": True, "as_json": False})
            return fn(**kwargs)
        except click.ClickException as err:
            if debug and err.__cause__ is not None:
                traceback.print_exception(err.__cause__)
            raise
        except click.exceptions.Exit:
            raise
        except Exception as err:  # one clear line for the user; the traceback under --debug
            if debug:
                raise
            if isinstance(err, CacheError):  # paths relative to the working directory, as the user typed them
                raise UserError(first_line(err).replace(os.getcwd() + os.sep, "")) from err
            raise UserError(f"{type(err).__name__}: {first_line(err)}") from err

    return wrapper


def operator_option(fn: Callable) -> Callable:
    """The ``--operator hessian|ggn`` option of the spectrum commands."""
    return click.option("--operator", type=click.Choice(["hessian", "ggn"]), default="hessian", show_default=True)(fn)


def int_list(ctx, param, value: str) -> list[int]:
    """The batch sizes of a comma-separated option (a click callback), at least one."""
    try:
        sizes = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--{param.name.replace('_', '-')} {value!r}: expected comma-separated integers") from None
    if not sizes:
        raise UserError(f"--{param.name.replace('_', '-')}: give at least one batch size")
    return sizes


def memory_budget(problem, analysis: str, **settings: Any) -> int | None:
    """``--max-memory`` in bytes; under ``--dry-run`` print the estimate of ``analysis`` and exit instead."""
    from landscape.memory import estimate

    budget, dry_run = click.get_current_context().meta[MEMORY]
    if dry_run:
        click.echo(estimate(problem, analysis, memory_budget=budget, **settings).table())
        raise click.exceptions.Exit(0)
    return budget


def products_engine() -> str | None:
    """The operator engine of ``--products``: ``"finite_difference"``, or ``None`` for the default (exact)."""
    return "finite_difference" if click.get_current_context().meta.get(PRODUCTS) == "finite-difference" else None


def plus_minus(value: float, stderr: float) -> str:
    """``value +- stderr`` as the summaries print it."""
    return f"{value:.6g} +- {stderr:.2g}"


@click.group()
@click.version_option(package_name="landscape")
def main() -> None:
    """landscape: Hessian spectra, traces, densities and loss surfaces of PyTorch models."""


def run() -> None:
    """The console script ``landscape`` (and ``python -m landscape``), also under ``torchrun``."""
    from landscape import distributed

    distributed.init()  # under torchrun with WORLD_SIZE > 1: the process group from its environment
    main(prog_name="landscape")
