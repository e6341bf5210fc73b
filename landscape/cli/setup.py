"""The Problem of the command line's shared options: the model (a factory, a checkpoint, TorchScript, a Hugging Face
directory or the built-in MLP trained on the data), the data (built-in, a token file or a factory), the loss, and a
check on the first batch that the data fit the model, each failure one line the user can act on.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import torch
from torch import nn

from landscape.cli.app import DTYPES, LOSSES, UserError, first_line

TOKEN_SUFFIXES = (".pt", ".npy")


def _import_factory(spec: str, what: str) -> Callable:
    if ":" not in spec:
        raise UserError(f"--{what} {spec!r} must look like 'package.module:factory'")
    module_name, attr = spec.split(":", 1)
    # As `python -m` does: modules in the working directory are importable from the console script too.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UserError(f"--{what} {spec!r}: cannot import module {module_name!r} ({err})") from err
    try:
        factory = getattr(module, attr)
    except AttributeError as err:
        raise UserError(f"--{what} {spec!r}: module {module_name!r} has no attribute {attr!r}") from err
    if not callable(factory):
        raise UserError(f"--{what} {spec!r}: {attr!r} is a {type(factory).__name__}, not a callable factory")
    return factory


def call_factory(spec: str, what: str) -> Any:
    """What the factory ``package.module:name`` of option ``--what`` returns; every failure a :class:`UserError`."""
    factory = _import_factory(spec, what)
    try:
        return factory()
    except Exception as err:
        raise UserError(f"--{what} {spec!r}: calling it failed ({type(err).__name__}: {first_line(err)})") from err


def _builtin_data(name: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from landscape import data

    if name == "digits":
        return data.digits(split="train", seed=seed)
    if name == "synthetic":
        return data.gaussian_mixture(n=1024, dim=64, num_classes=10, seed=seed)
    raise UserError(f"--data {name!r}: use 'digits', 'synthetic' or 'package.module:factory'")


def load_data(spec: str, seed: int, batch_size: int = 512, sharded: bool = False) -> Any:
    """The data of ``--data``; ``sharded``: under torchrun, this rank's contiguous block of a token file's
    sequences (tensor data are sharded by the caller)."""
    if spec.endswith(TOKEN_SUFFIXES):
        from landscape import distributed
        from landscape.data import load_tokens, token_batches

        try:
            ids = load_tokens(spec)
            return token_batches(distributed.shard(ids) if sharded else ids, batch_size)
        except (ValueError, FileNotFoundError) as err:
            raise UserError(f"--data {spec}: {err}") from err
    if ":" in spec:
        return call_factory(spec, "data")
    return _builtin_data(spec, seed)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' "Loading weights" progress bar off for the duration (its setting restored after): the CLI
    has its own progress output."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _is_pairs(data: Any) -> bool:
    return isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data)


def _loss_for(loss: str | None, data: Any, model: nn.Module, lm_chunk: int | None = None) -> Any:
    """The loss of ``--loss``; by default cross-entropy for (X, y) data and, for other batches (dicts), the adapter
    the model's head calls for: masked LM for ``*ForMaskedLM``, else the causal LM loss. ``--lm-chunk``: the token
    losses with the model's output layer (``get_output_embeddings()``) fused in, that many tokens at a time."""
    from landscape import losses

    if loss is None:
        head = type(model).__name__
        if _is_pairs(data) or not (head.endswith(("LMHeadModel", "ForCausalLM", "ForMaskedLM"))):
            loss = "cross_entropy"
        else:
            loss = "masked_lm" if head.endswith("ForMaskedLM") else "causal_lm"
    if lm_chunk is not None:
        if loss not in ("causal_lm", "masked_lm"):
            raise UserError(f"--lm-chunk fuses a language model's output layer into causal_lm or masked_lm, not {loss}")
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if not isinstance(head, nn.Linear):
            raise UserError(
                "--lm-chunk needs a model whose output layer is an nn.Linear from model.get_output_embeddings() (a "
                f"Hugging Face language model); {type(model).__name__} has {type(head).__name__}"
            )
        return getattr(losses, loss)(chunk=lm_chunk, head=head)
    if loss in LOSSES:
        return LOSSES[loss]()
    return getattr(losses, loss)()


def _load_hf(path: str, dtype: str | None) -> nn.Module:
    from landscape.checkpoint import CheckpointError, load_hf

    try:
        with _quiet_transformers():
            return load_hf(path, dtype=DTYPES[dtype] if dtype else None)
    except (CheckpointError, FileNotFoundError, ImportError) as err:
        raise UserError(f"--hf {path}: {first_line(err)}") from err


def builtin_architecture(X: torch.Tensor, y: torch.Tensor, seed: int) -> nn.Module:
    """The built-in MLP for data ``(X, y)``, freshly initialised with ``seed``."""
    from landscape.models import mlp

    return mlp(in_features=X.shape[1], hidden=(32,), out_features=int(y.max()) + 1, seed=seed)


def _default_model(X: torch.Tensor, y: torch.Tensor, seed: int, quiet: bool) -> nn.Module:
    from landscape.training import train

    model = builtin_architecture(X, y, seed)
    log = train(model, X, y, steps=300, lr=0.05, batch_size=64, seed=seed)
    if not quiet:
        click.echo(
            f"trained the built-in MLP on the data for {log.steps} steps ({log.wall_time:.1f} s), "
            f"loss {log.final_loss:.4f}",
            err=True,
        )
    return model


def _load_model(
    model_spec: str | None,
    checkpoint: str | None,
    data: Any,
    seed: int,
    quiet: bool,
    unsafe_load: bool,
    non_strict: bool = False,
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
        model = call_factory(model_spec, "model")
        if not isinstance(model, nn.Module):
            raise UserError(f"--model {model_spec!r} returned a {type(model).__name__}, not a torch.nn.Module")
        if checkpoint is not None:
            load_checkpoint(model, checkpoint, weights_only=not unsafe_load, strict=not non_strict)
        return model
    except (CheckpointError, FileNotFoundError) as err:
        raise UserError(str(err)) from err


def build_problem(
    model_spec,
    checkpoint,
    unsafe_load,
    data_spec,
    batch_size,
    loss,
    params,
    mode,
    dtype,
    seed,
    quiet,
    replicated_data=False,
    non_strict=False,
    hf_dir=None,
    fsdp=False,
    lm_chunk=None,
):
    """The Problem of the shared options (model, checkpoint, data, loss, params, mode, dtype, replicated data,
    ``--fsdp``: the model sharded over the ranks with :func:`landscape.sharding.shard_model`)."""
    from landscape import distributed
    from landscape.problem import Problem

    sharded = distributed.get_world_size() > 1 and not replicated_data
    data = load_data(data_spec, seed, batch_size, sharded=sharded)
    if hf_dir is not None:
        if model_spec is not None or checkpoint is not None:
            raise UserError("--hf loads model and weights from the directory: drop --model and --checkpoint")
        model = _load_hf(hf_dir, dtype)
    else:
        model = _load_model(model_spec, checkpoint, data, seed, quiet, unsafe_load, non_strict)
    if isinstance(data, tuple) and len(data) == 2 and model_spec is None:
        data = (data[0].flatten(1), data[1])
    mode_of_ranks = None
    if distributed.get_world_size() > 1:
        # Under torchrun: one model (rank 0's bits) and a contiguous shard of tensor data per rank; a loader
        # factory must shard itself (DistributedSampler with shuffle=False). With --replicated-data every rank
        # keeps all the data and surfaces split their grid points instead.
        distributed.broadcast_module(model)
        if replicated_data:
            mode_of_ranks = "replicated"
        elif isinstance(data, tuple) and len(data) == 2:
            data = distributed.shard(data)
    if fsdp:
        from landscape.sharding import shard_model

        if distributed.get_world_size() < 2 or replicated_data:
            raise UserError(
                "--fsdp shards the model over the ranks of torchrun: run under torchrun with 2 or more processes "
                "(torchrun --nproc-per-node 2 -m landscape ...), without --replicated-data"
            )
        if lm_chunk is not None:
            raise UserError("--lm-chunk does not run with --fsdp (the fused head reads the whole output layer)")
        model = shard_model(model)
    return Problem(
        model,
        _loss_for(loss, data, model, lm_chunk),
        data,
        params=list(params) or None,
        mode=mode,
        dtype=DTYPES[dtype] if dtype else None,
        batch_size=batch_size if isinstance(data, tuple) else None,
        distributed=mode_of_ranks,
    )


def _first_layer(model: nn.Module) -> str:
    """What the first layer with a fixed input width expects, for error messages ('' if none is found)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            return f"; its first layer {name!r} is a Linear layer expecting inputs of shape (N, {module.in_features})"
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            dims = ", ..." * (module.weight.ndim - 2)
            return (
                f"; its first layer {name!r} is a {type(module).__name__} expecting inputs of shape "
                f"(N, {module.in_channels}{dims})"
            )
    return ""


def check_data_fits(problem) -> None:
    """One forward pass and loss on the first batch, so that data the model cannot take fail with one clear line.

    Raises
    ------
    UserError
        The forward pass or the loss fails: the message gives the batch's shapes and what the model expects.
    """
    from landscape.batch import describe
    from landscape.losses import Criterion

    first = next(iter(problem.batches()), None)
    if first is None:
        raise UserError("--data yields no batches: the data are empty")
    objective = problem.objective
    pairs = isinstance(objective, Criterion)
    shape = tuple(first.inputs.shape) if pairs and isinstance(first.inputs, torch.Tensor) else describe(first.data)
    what = f"inputs of shape {shape}" if pairs else f"the batch {shape}"
    try:
        with torch.no_grad(), problem.evaluation(order=0) as forward:
            outputs = objective.outputs(problem.model_fn(forward, problem.params_dict(share=True)), first.data)
    except Exception as err:
        raise UserError(
            f"the data do not fit the model: the first batch has {what} and the forward pass fails "
            f"({first_line(err)}){_first_layer(problem.model) if pairs else ''}"
        ) from err
    try:
        objective.from_outputs(outputs, first.data)
    except Exception as err:
        targets = tuple(first.targets.shape) if pairs and isinstance(first.targets, torch.Tensor) else "?"
        shown = f"targets of shape {targets}" if pairs else f"the batch {shape}"
        name = type(problem.loss_fn).__name__
        raise UserError(
            f"the data do not fit the model and loss: outputs of shape {tuple(outputs.shape)} and {shown} "
            f"make {name} fail ({first_line(err)}); check --loss and --data"
        ) from err


def setup_problem(kw: dict, quiet: bool):
    """The Problem from the shared options (model, data, loss, params, mode, dtype), checked on the first batch."""
    problem = build_problem(quiet=quiet, **kw)
    check_data_fits(problem)
    return problem


def fresh_hf(model: nn.Module, seed: int) -> nn.Module:
    """A freshly initialised model of a Hugging Face model's class and config (the global RNG left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = type(model)(model.config)
    return fresh.to(next(model.parameters()).dtype).eval()


def fresh_model(model: nn.Module, kw: dict) -> tuple[nn.Module, str]:
    """A freshly initialised model of the shared options' architecture (the ``--from-init`` start) and its name: the
    ``--hf`` class from its config, a new ``--model`` factory(), or the built-in MLP's initialisation for the data."""
    if kw["hf_dir"] is not None:
        return fresh_hf(model, kw["seed"]), f"fresh {type(model).__name__}(config)"
    if kw["model_spec"] is None:
        X, y = load_data(kw["data_spec"], kw["seed"])
        return builtin_architecture(X.flatten(1), y, kw["seed"]), "initialisation"
    return call_factory(kw["model_spec"], "model"), f"fresh {kw['model_spec']}()"


def second_model(path: str, reference: nn.Module, unsafe_load: bool, option: str, strict: bool = True) -> nn.Module:
    """The model of ``--from``/``--to``: a Hugging Face directory or TorchScript file as it is, else a checkpoint
    loaded into a copy of the reference architecture (whose missing/unexpected keys are listed if it does not fit)."""
    from landscape.checkpoint import CheckpointError, is_torchscript, load_checkpoint, load_model

    if Path(path).is_dir():
        return _load_hf(path, None).to(next(reference.parameters()).dtype)
    try:
        if is_torchscript(path):
            return load_model(path)
        model = copy.deepcopy(reference)
        load_checkpoint(model, path, weights_only=not unsafe_load, strict=strict)
        return model
    except (CheckpointError, FileNotFoundError) as err:
        raise UserError(f"{option} {path}: {err}") from err
