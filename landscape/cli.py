"""The ``landscape`` command line (click).

With no model, commands run on a built-in default: a small MLP trained for a few seconds on scikit-learn's
shipped digits data, so ``landscape spectrum`` works on a fresh machine with no arguments.

Every analysis command builds the Problem from the shared options, checks that the data fit the model, answers
from ``--out/landscape.h5`` when the same model, data and settings were analysed before (content keys, never file
names), shows progress bars on stderr when it is a terminal (never with ``--quiet``), writes ``COMMAND.json`` and
its figures into ``--out`` and prints a one-screen summary with error bars (``--json``: the JSON instead). Errors a
user can act on are one line on stderr with exit code 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import importlib
import io
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
from torch import nn

from landscape.memory import parse_bytes

DTYPES = {"float32": torch.float32, "float64": torch.float64}
LOSSES = {"cross_entropy": nn.CrossEntropyLoss, "mse": nn.MSELoss}
# Loss adapters for dict batches (language models): landscape.losses.
ADAPTERS = ("causal_lm", "masked_lm", "model_output")
TOKEN_SUFFIXES = (".pt", ".npy")
CACHE_FILE = "landscape.h5"
# Commands with a memory estimate (--dry-run), and where the context keeps --max-memory / --dry-run.
ESTIMATED = ("eigen", "spectrum", "trace", "density")
MEMORY = "landscape.memory"


class UserError(click.ClickException):
    """An error the user can act on: one clear line, exit code 2."""

    exit_code = 2


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


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


def _call_factory(spec: str, what: str) -> Any:
    factory = _import_factory(spec, what)
    try:
        return factory()
    except Exception as err:
        raise UserError(f"--{what} {spec!r}: calling it failed ({type(err).__name__}: {_first_line(err)})") from err


def _builtin_data(name: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from landscape import data

    if name == "digits":
        return data.digits(split="train", seed=seed)
    if name == "synthetic":
        return data.gaussian_mixture(n=1024, dim=64, num_classes=10, seed=seed)
    raise UserError(f"--data {name!r}: use 'digits', 'synthetic' or 'package.module:factory'")


def _load_data(spec: str, seed: int, batch_size: int = 512, sharded: bool = False) -> Any:
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
        return _call_factory(spec, "data")
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


def _loss_for(loss: str | None, data: Any, model: nn.Module) -> Any:
    """The loss of ``--loss``; by default cross-entropy for (X, y) data and, for other batches (dicts), the adapter
    the model's head calls for: masked LM for ``*ForMaskedLM``, else the causal LM loss."""
    from landscape import losses

    if loss is None:
        head = type(model).__name__
        if _is_pairs(data) or not (head.endswith(("LMHeadModel", "ForCausalLM", "ForMaskedLM"))):
            loss = "cross_entropy"
        else:
            loss = "masked_lm" if head.endswith("ForMaskedLM") else "causal_lm"
    if loss in LOSSES:
        return LOSSES[loss]()
    return getattr(losses, loss)()


def _load_hf(path: str, dtype: str | None) -> nn.Module:
    from landscape.checkpoint import CheckpointError, load_hf

    try:
        with _quiet_transformers():
            return load_hf(path, dtype=DTYPES[dtype] if dtype else None)
    except (CheckpointError, FileNotFoundError, ImportError) as err:
        raise UserError(f"--hf {path}: {_first_line(err)}") from err


def _builtin_architecture(X: torch.Tensor, y: torch.Tensor, seed: int) -> nn.Module:
    from landscape.models import mlp

    return mlp(in_features=X.shape[1], hidden=(32,), out_features=int(y.max()) + 1, seed=seed)


def _default_model(X: torch.Tensor, y: torch.Tensor, seed: int, quiet: bool) -> nn.Module:
    from landscape.training import train

    model = _builtin_architecture(X, y, seed)
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
        model = _call_factory(model_spec, "model")
        if not isinstance(model, nn.Module):
            raise UserError(f"--model {model_spec!r} returned a {type(model).__name__}, not a torch.nn.Module")
        if checkpoint is not None:
            load_checkpoint(model, checkpoint, weights_only=not unsafe_load, strict=not non_strict)
        return model
    except (CheckpointError, FileNotFoundError) as err:
        raise UserError(str(err)) from err


def _progress(quiet: bool) -> bool:
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
                raise UserError(_first_line(err).replace(os.getcwd() + os.sep, "")) from err
            raise UserError(f"{type(err).__name__}: {_first_line(err)}") from err

    return wrapper


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
):
    """The Problem of the shared options (model, checkpoint, data, loss, params, mode, dtype, replicated data)."""
    from landscape import distributed
    from landscape.problem import Problem

    sharded = distributed.get_world_size() > 1 and not replicated_data
    data = _load_data(data_spec, seed, batch_size, sharded=sharded)
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
    return Problem(
        model,
        _loss_for(loss, data, model),
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
            f"({_first_line(err)}){_first_layer(problem.model) if pairs else ''}"
        ) from err
    try:
        objective.from_outputs(outputs, first.data)
    except Exception as err:
        targets = tuple(first.targets.shape) if pairs and isinstance(first.targets, torch.Tensor) else "?"
        shown = f"targets of shape {targets}" if pairs else f"the batch {shape}"
        name = type(problem.loss_fn).__name__
        raise UserError(
            f"the data do not fit the model and loss: outputs of shape {tuple(outputs.shape)} and {shown} "
            f"make {name} fail ({_first_line(err)}); check --loss and --data"
        ) from err


# ---------------------------------------------------------------------------------------------------- result cache
def _state_sha(model: nn.Module) -> str:
    from landscape.cache import content_key

    return content_key(params=dict(model.state_dict()), data_fingerprint="", config={}, version="")


def _identity(problem) -> dict[str, str]:
    """Short fingerprints saying whose result an entry is: architecture, weights (with buffers) and data."""
    return {
        "architecture": hashlib.sha256(repr(problem.model).encode()).hexdigest()[:16],
        "parameters": _state_sha(problem.model)[:16],
        "data": problem.data_fingerprint()[:16],
    }


@contextlib.contextmanager
def _opened_store(out: Path, no_cache: bool) -> Iterator[Any]:
    """The result cache ``out/landscape.h5`` (held, with its write lock, for the whole command), or ``None``."""
    if no_cache:
        yield None
        return
    from landscape.cache import Cache

    with Cache(out / CACHE_FILE) as store:
        yield store


# Commands whose result depends on the data only through the full-data loss (spectrum: without --subsets).
ORDER_FREE_COMMANDS = frozenset({"spectrum", "eigen", "trace", "density", "interpolate", "sharpness", "roughness"})


def _mismatches(store: Any, kind: str, key: str, identity: dict[str, str], config: dict[str, Any]) -> list[str]:
    """One phrase per other stored ``kind`` result: its key and why it does not answer this run."""
    phrases = []
    labels = {"architecture": "another architecture", "parameters": "other weights", "data": "other data"}
    for other, attrs in store.attributes(kind).items():
        if other == key:
            continue
        theirs, stored = attrs.get("identity", {}), attrs.get("config", {})
        why = [label for what, label in labels.items() if theirs.get(what) != identity[what]]
        if not why:
            changed = sorted(k for k in set(stored) | set(config) if stored.get(k) != config.get(k))
            why = [
                "other settings (" + ", ".join(f"{k} {stored.get(k)!r} vs {config.get(k)!r}" for k in changed[:4]) + ")"
                if changed
                else "another loss, mode, dtype or parameter selection"
            ]
        phrases.append(f"{other[:12]} created {attrs.get('created', '?')}: {', '.join(why)}")
    return phrases


def _answer(
    store: Any, problem: Any, name: str, config: dict[str, Any], compute: Callable[[], tuple[dict, str]]
) -> tuple[dict[str, Any], str, bool]:
    """``(result, summary, from_cache)``: the stored answer of this exact run, or ``compute()`` stored for next time.

    The entry (kind ``cli-<name>``) holds the JSON result and the summary; its attributes say whose result it is
    (:func:`_identity`) and the settings, so that a stored result that does not match this run is explained on stderr
    instead of silently ignored.
    """
    from landscape.store import Codec, remember

    kind = f"cli-{name}"
    identity = _identity(problem) if store is not None else {}

    def notice(store: Any, key: str) -> None:
        phrases = _mismatches(store, kind, key, identity, config)
        if phrases:
            click.echo(
                f"note: {os.path.relpath(store.path)} holds {len(phrases)} earlier {name} result(s) that "
                f"do not match this run ({'; '.join(phrases[:3])}{'; ...' if len(phrases) > 3 else ''}): they are "
                "kept, and this result is computed and stored beside them",
                err=True,
            )

    def encode(answer: tuple[dict, str]) -> tuple[dict, dict]:
        text = json.dumps({"result": answer[0], "summary": answer[1]}, default=_jsonable)
        return {"payload": np.frombuffer(text.encode(), dtype=np.uint8)}, {}

    def decode(arrays: dict, attrs: dict) -> tuple[dict, str]:
        payload = json.loads(arrays["payload"].tobytes().decode())
        return payload["result"], payload["summary"]

    # Results of the full-data loss alone are shared by any sharding and batching (landscape.cache.key_for).
    (result, summary), hit = remember(
        store,
        problem,
        kind,
        config,
        compute,
        codec=Codec(encode, decode),
        order_free=name in ORDER_FREE_COMMANDS and not config.get("subsets"),
        attrs={"identity": identity, "config": config},
        on_miss=notice,
    )
    return result, summary, hit


def _marked(store: Any, problem: Any, name: str, config: dict[str, Any], run: Callable[[], Any]) -> tuple[Any, bool]:
    """``(run(), from_cache)`` for a command whose result the analysis caches itself (spectrum, surface): a marker
    entry under the command's key records that this run was done, so that a later run with other settings is told
    what ``--out`` holds (:func:`_answer`), and a repeated run says it came from the cache."""
    done = []

    def compute() -> tuple[dict, str]:
        done.append(run())
        return {name: True}, ""

    _, _, hit = _answer(store, problem, name, config, compute)
    return (done[0] if done else run()), hit  # a hit: the analysis's own cache entry answers run()


def _answer_and_emit(
    problem: Any,
    name: str,
    config: dict[str, Any],
    compute: Callable[[], tuple[dict, str]],
    *,
    out: Path,
    no_cache: bool,
    as_json: bool,
    t0: float,
) -> None:
    """The body of a command without figures: :func:`_answer` from ``out/landscape.h5``, then :func:`_emit`."""
    out.mkdir(parents=True, exist_ok=True)
    with _opened_store(out, no_cache) as store:
        result, summary, hit = _answer(store, problem, name, config, compute)
        _emit(result, summary, as_json, out, name, hit, t0, store)


def _emit(
    result: dict, summary: str, as_json: bool, out: Path, name: str, from_cache: bool, t0: float, store: Any
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    result = {**result, "from_cache": from_cache}
    (out / f"{name}.json").write_text(json.dumps(result, indent=2, default=_jsonable))
    if as_json:
        click.echo(json.dumps(result, indent=2, default=_jsonable))
        return
    elapsed = time.perf_counter() - t0
    if from_cache:
        summary += (
            f"\nanswered from the cache {out / CACHE_FILE} in {elapsed:.1f} s (pass --no-cache, or delete the file, to "
            "recompute)"
        )
    else:
        summary += f"\nresults: {out / (name + '.json')}" + (f", cache {out / CACHE_FILE}" if store is not None else "")
        summary += f" ({elapsed:.1f} s in all)"
    click.echo(summary)


def _jsonable(x: Any) -> Any:
    if isinstance(x, (np.generic,)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, torch.Tensor):
        return x.tolist()
    return str(x)


def _operator_option(fn: Callable) -> Callable:
    return click.option("--operator", type=click.Choice(["hessian", "ggn"]), default="hessian", show_default=True)(fn)


@click.group()
@click.version_option(package_name="landscape")
def main() -> None:
    """landscape: Hessian spectra, traces, densities and loss surfaces of PyTorch models."""


def _setup(kw: dict, quiet: bool):
    """The Problem from the shared options (model, data, loss, params, mode, dtype), checked on the first batch."""
    problem = build_problem(quiet=quiet, **kw)
    check_data_fits(problem)
    return problem


def _memory_budget(problem, analysis: str, **settings: Any) -> int | None:
    """``--max-memory`` in bytes; under ``--dry-run`` print the estimate of ``analysis`` and exit instead."""
    from landscape.memory import estimate

    budget, dry_run = click.get_current_context().meta[MEMORY]
    if dry_run:
        click.echo(estimate(problem, analysis, memory_budget=budget, **settings).table())
        raise click.exceptions.Exit(0)
    return budget


def _operator(problem, operator: str):
    from landscape.operators import ggn, hessian

    return ggn(problem) if operator == "ggn" else hessian(problem)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _pm(value: float, stderr: float) -> str:
    return f"{value:.6g} +- {stderr:.2g}"


@main.command()
@common_options
@click.option("--top-k", type=int, default=5, show_default=True, help="Number of top eigenvalues.")
@click.option("--probes", type=int, default=8, show_default=True, help="SLQ probes.")
@click.option("--steps", type=int, default=40, show_default=True, help="Lanczos steps per probe.")
@click.option("--subsets", type=int, default=None, help="Also measure the spread over this many data subsets.")
@_operator_option
def spectrum(top_k, probes, steps, subsets, operator, out, no_cache, as_json, quiet, **kw):
    """Top eigenvalues, trace, Frobenius norm and spectral density from one Krylov pass."""
    from landscape.spectrum import spectrum as run_spectrum

    t0 = time.perf_counter()
    plt = _pyplot()
    problem = _setup(kw, quiet)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "k": top_k,
        "probes": probes,
        "steps": steps,
        "subsets": subsets,
        "operator": operator,
        "seed": kw["seed"],
    }
    budget = _memory_budget(problem, "spectrum", num_probes=probes, num_steps=steps)
    with _opened_store(out, no_cache) as store:

        def run():
            return run_spectrum(
                problem,
                k=top_k,
                num_probes=probes,
                num_steps=steps,
                subsets=subsets,
                operator=operator,
                seed=kw["seed"],
                cache=store,
                progress=_progress(quiet),
                memory_budget=budget,
            )

        result, hit = _marked(store, problem, "spectrum", config, run)
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
        summary = result.summary() + f"\ndensity plot: {out / 'density.png'}"
        _emit(result.to_dict(), summary, as_json, out, "spectrum", hit, t0, store)


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
@_operator_option
def eigen(top_k, tol, max_matvecs, guarantee, operator, out, no_cache, as_json, quiet, **kw):
    """Top-k eigenvalues of the Hessian (or GGN) with Ritz residuals and error bounds (Lanczos)."""
    from landscape.linalg import top_eigen

    t0 = time.perf_counter()
    problem = _setup(kw, quiet)
    out = Path(out)
    budget = _memory_budget(problem, "top_eigen", k=top_k, max_matvecs=max_matvecs, guarantee=guarantee)

    def compute() -> tuple[dict, str]:
        op = _operator(problem, operator)
        res = top_eigen(
            op,
            k=top_k,
            tol=tol,
            max_matvecs=max_matvecs,
            seed=kw["seed"],
            progress=_progress(quiet),
            memory_budget=budget,
            guarantee=guarantee,
        )
        result = {
            "operator": operator,
            "num_params": int(op.shape[0]),
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
        }
        lines = [
            f"top {top_k} {operator} eigenvalues of {int(op.shape[0]):,} parameters ({res.method}, "
            f"{res.num_matvecs} products, {res.wall_time:.2f} s, seed {res.seed}):"
        ]
        for i, (v, r, b, c) in enumerate(
            zip(res.values, res.residuals, res.error_bounds, res.converged, strict=True), 1
        ):
            lines.append(f"  lambda_{i} = {_pm(v, b)}  (Ritz residual {r:.2g}{'' if c else ', NOT converged'})")
        lines.append("(+- is the Ritz error bound min(r, r^2 / gap))")
        bound = result["random_start"]
        if bound:
            lines.append(
                f"with probability {bound['confidence']:g} over the random start, lambda_1 is within "
                f"{bound['error_vs_spread']:.2g} x (lambda_max - lambda_min) of the largest eigenvalue "
                f"({bound['steps']} steps; Kuczynski & Wozniakowski 1992)"
            )
        return result, "\n".join(lines)

    config = {"k": top_k, "tol": tol, "max_matvecs": max_matvecs, "operator": operator, "seed": kw["seed"]}
    if guarantee is not None:  # absent from older keys: their cached answers stay valid
        config["guarantee"] = guarantee
    _answer_and_emit(problem, "eigen", config, compute, out=out, no_cache=no_cache, as_json=as_json, t0=t0)


@main.command(name="trace")
@common_options
@click.option(
    "--method",
    type=click.Choice(["auto", "hutch++", "hutchinson", "xtrace", "exact"]),
    default="auto",
    show_default=True,
)
@click.option("--num-matvecs", type=int, default=60, show_default=True, help="Budget of operator products.")
@_operator_option
def trace_cmd(method, num_matvecs, operator, out, no_cache, as_json, quiet, **kw):
    """Trace of the Hessian (or GGN): exact where supported, else a stochastic estimate with its standard error."""
    from landscape.linalg import trace

    t0 = time.perf_counter()
    problem = _setup(kw, quiet)
    out = Path(out)
    budget = _memory_budget(problem, "trace", method=method, num_matvecs=num_matvecs)

    def compute() -> tuple[dict, str]:
        est = trace(
            _operator(problem, operator),
            method=method,
            num_matvecs=num_matvecs,
            seed=kw["seed"],
            progress=_progress(quiet),
            memory_budget=budget,
        )
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
        }
        summary = (
            f"trace of the {operator}: {_pm(float(est.value), float(est.stderr))}"
            f" ({'exact' if est.method == 'exact' else 'standard error'})\n"
            f"method: {est.method} (requested {method}), {est.num_matvecs} products, {est.wall_time:.2f} s"
            + ("" if est.seed is None else f", seed {est.seed}")
        )
        if result["note"]:
            summary += f"\nnote: {result['note']}"
        return result, summary

    config = {"method": method, "num_matvecs": num_matvecs, "operator": operator, "seed": kw["seed"]}
    _answer_and_emit(problem, "trace", config, compute, out=out, no_cache=no_cache, as_json=as_json, t0=t0)


def _density_plot(result: dict, path: Path) -> None:
    from landscape.linalg.slq import SpectralDensity

    plt = _pyplot()
    dens = SpectralDensity(
        nodes=np.asarray(result["nodes"], dtype=np.float64),
        weights=np.asarray(result["weights"], dtype=np.float64),
        num_params=int(result["num_params"]),
        sigma=float(result["sigma"]),
        steps=np.asarray(result["steps"], dtype=np.int64),
        num_matvecs=int(result["num_matvecs"]),
        seed=result["seed"],
        wall_time=float(result["wall_time"]),
    )
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    dens.plot(ax=axes[0])
    dens.plot(ax=axes[1], log=True)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


@main.command()
@common_options
@click.option("--probes", type=int, default=4, show_default=True, help="SLQ probes.")
@click.option("--steps", type=int, default=30, show_default=True, help="Lanczos steps per probe.")
@_operator_option
def density(probes, steps, operator, out, no_cache, as_json, quiet, **kw):
    """Spectral density by stochastic Lanczos quadrature; writes density.png."""
    from landscape.linalg import spectral_density

    t0 = time.perf_counter()
    problem = _setup(kw, quiet)
    out = Path(out)
    budget = _memory_budget(problem, "spectrum", num_probes=probes, num_steps=steps)

    def compute() -> tuple[dict, str]:
        dens = spectral_density(
            _operator(problem, operator),
            num_probes=probes,
            num_steps=steps,
            seed=kw["seed"],
            progress=_progress(quiet),
            memory_budget=budget,
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
        }
        summary = (
            f"{operator} spectral density of {dens.num_params:,} parameters: support "
            f"[{dens.lambda_min:.4g}, {dens.lambda_max:.4g}], {probes} probes x {steps} steps, sigma {dens.sigma:.3g}\n"
            f"trace from the quadrature: {_pm(float(tr.value), float(tr.stderr))} (probe stderr)\n"
            f"{dens.num_matvecs} products, {dens.wall_time:.2f} s, seed {dens.seed}"
        )
        return result, summary

    config = {"probes": probes, "steps": steps, "operator": operator, "seed": kw["seed"]}
    out.mkdir(parents=True, exist_ok=True)
    with _opened_store(out, no_cache) as store:
        result, summary, hit = _answer(store, problem, "density", config, compute)
        _density_plot(result, out / "density.png")
        result = {**result, "plot": str(out / "density.png")}
        _emit(result, summary + f"\ndensity plot: {out / 'density.png'}", as_json, out, "density", hit, t0, store)


@main.command(name="surface")
@common_options
@click.option("--directions", "num_directions", type=click.IntRange(1, 2), default=2, show_default=True)
@click.option("--directions-seed", type=int, default=None, help="Seed of the directions (default --seed).")
@click.option("--span", type=float, default=1.0, show_default=True, help="Coordinates cover [-span, span].")
@click.option("--resolution", type=click.IntRange(2, None), default=11, show_default=True)
def surface_cmd(num_directions, directions_seed, span, resolution, out, no_cache, as_json, quiet, **kw):
    """Loss along 1 or 2 filter-normalised random directions; cached in --out/landscape.h5, plotted to surface.png."""
    from landscape.surface import filter_normalized, surface

    t0 = time.perf_counter()
    plt = _pyplot()
    problem = _setup(kw, quiet)
    seed = kw["seed"] if directions_seed is None else directions_seed
    dirs = filter_normalized(problem, num=num_directions, seed=seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = {"directions": num_directions, "directions_seed": seed, "span": span, "resolution": resolution}
    with _opened_store(out, no_cache) as store:
        grid = {"span": (-span, span), "resolution": resolution, "cache": store, "progress": _progress(quiet)}
        surf, _ = _marked(store, problem, "surface", config, lambda: surface(problem, dirs, **grid))
        fig, ax = plt.subplots(figsize=(5, 4))
        surf.plot("line" if num_directions == 1 else "contour", ax)
        fig.tight_layout()
        for ext in ("png", "pdf"):
            fig.savefig(out / f"surface.{ext}", dpi=150)
        plt.close(fig)
        centre = tuple(int(np.argmin(np.abs(c))) for c in surf.coords)
        from_cache = int(surf.settings.get("cache", {}).get("points_from_cache", 0))
        result = {
            "directions": num_directions,
            "directions_seed": seed,
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
            "plot": str(out / "surface.png"),
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
            f"plot: {out / 'surface.png'}"
        )
        _emit(result, summary, as_json, out, "surface", from_cache == surf.loss.size, t0, store)


def _fresh_hf(model: nn.Module, seed: int) -> nn.Module:
    """A freshly initialised model of a Hugging Face model's class and config (the global RNG left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = type(model)(model.config)
    return fresh.to(next(model.parameters()).dtype).eval()


def _second_model(path: str, reference: nn.Module, unsafe_load: bool, option: str, strict: bool = True) -> nn.Module:
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


def _interpolation_plot(result: dict, out: Path) -> None:
    plt = _pyplot()
    a = np.asarray(result["coords"])
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(a, result["loss"], color="C0", marker=".", label="loss")
    ax.set_xlabel("a in (1 - a) w_from + a w_to")
    ax.set_ylabel("loss", color="C0")
    for x, label in ((0.0, "from"), (1.0, "to")):
        ax.axvline(x, color="0.6", lw=0.8, ls="--")
        ax.annotate(label, (x, 1.0), xycoords=("data", "axes fraction"), ha="center", va="bottom", fontsize=8)
    if result["accuracy"] is not None:
        acc = np.asarray([np.nan if v is None else v for v in result["accuracy"]], dtype=float)
        twin = ax.twinx()
        twin.plot(a, 100 * acc, color="C1", ls=":", label="accuracy")
        twin.set_ylabel("accuracy (%)", color="C1")
    fig.tight_layout()
    for ext in ("png", "pdf"):
        fig.savefig(out / f"interpolation.{ext}", dpi=150)
    plt.close(fig)


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
    from landscape.surface import interpolate

    t0 = time.perf_counter()
    if from_path is not None and from_init:
        raise UserError("give either --from FILE or --from-init, not both")
    if to_path is None and from_path is None and not from_init:
        raise UserError("interpolate needs a second model: --to other.pt (or --from a.pt, or --from-init)")
    if not span[0] < span[1]:
        raise UserError(f"--span {span[0]:g} {span[1]:g}: LOW must be below HIGH")
    problem = _setup(kw, quiet)
    model = problem.model
    model_label = kw["checkpoint"] or kw["model_spec"] or kw["hf_dir"] or "the trained built-in MLP"
    if from_init and kw["hf_dir"] is not None:
        start, from_label = _fresh_hf(model, kw["seed"]), f"fresh {type(model).__name__}(config)"
    elif from_init:
        if kw["model_spec"] is None:
            X, y = _load_data(kw["data_spec"], kw["seed"])
            start = _builtin_architecture(X.flatten(1), y, kw["seed"])
        else:
            start = _call_factory(kw["model_spec"], "model")
        from_label = "initialisation" if kw["model_spec"] is None else f"fresh {kw['model_spec']}()"
    elif from_path is not None:
        start = _second_model(from_path, model, kw["unsafe_load"], "--from", not kw["non_strict"])
        from_label = from_path
    else:
        start, from_label = model, model_label
    if to_path is not None:
        end, to_label = _second_model(to_path, model, kw["unsafe_load"], "--to", not kw["non_strict"]), to_path
    else:
        end, to_label = model, model_label
    out = Path(out)

    def compute() -> tuple[dict, str]:
        line = interpolate(problem, start, end, span=tuple(span), resolution=resolution, progress=_progress(quiet))
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
        "from": _state_sha(start),
        "to": _state_sha(end),
        "span": [float(span[0]), float(span[1])],
        "resolution": resolution,
    }
    out.mkdir(parents=True, exist_ok=True)
    with _opened_store(out, no_cache) as store:
        result, summary, hit = _answer(store, problem, "interpolate", config, compute)
        _interpolation_plot(result, out)
        result = {**result, "plot": str(out / "interpolation.png")}
        summary += f"\nplot: {out / 'interpolation.png'}"
        _emit(result, summary, as_json, out, "interpolate", hit, t0, store)


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

    t0 = time.perf_counter()
    problem = _setup(kw, quiet)
    out = Path(out)

    def compute() -> tuple[dict, str]:
        res = sharpness(
            problem,
            rho,
            seed=kw["seed"],
            steps=steps,
            num_samples=num_samples,
            num_matvecs=num_matvecs,
            keskar=keskar,
            progress=_progress(quiet),
        )
        return res.to_dict(), res.summary()

    config = {
        "rho": rho,
        "steps": steps,
        "num_samples": num_samples,
        "num_matvecs": num_matvecs,
        "keskar": keskar,
        "seed": kw["seed"],
    }
    _answer_and_emit(problem, "sharpness", config, compute, out=out, no_cache=no_cache, as_json=as_json, t0=t0)


@main.command(name="roughness")
@common_options
@click.option("--num-directions", type=int, default=10, show_default=True)
@click.option("--span", type=float, default=0.1, show_default=True)
@click.option("--points", type=int, default=11, show_default=True)
def roughness_cmd(num_directions, span, points, out, no_cache, as_json, quiet, **kw):
    """Roughness index along random filter-normalised directions (with its standard error)."""
    from landscape.roughness import roughness_index

    t0 = time.perf_counter()
    problem = _setup(kw, quiet)
    out = Path(out)

    def compute() -> tuple[dict, str]:
        res = roughness_index(problem, num_directions, span, points, seed=kw["seed"], progress=_progress(quiet))
        return res.to_dict(), res.summary()

    config = {"num_directions": num_directions, "span": span, "points": points, "seed": kw["seed"]}
    _answer_and_emit(problem, "roughness", config, compute, out=out, no_cache=no_cache, as_json=as_json, t0=t0)


@main.command(name="stability")
@common_options
@click.option("--optimizer", default="gd", show_default=True, help="gd, sgd, heavy_ball, nesterov, adam, adamw, sam.")
@click.option("--lr", type=float, default=0.05, show_default=True)
@click.option("--sgd-batch-size", type=int, default=None, help="Minibatch size for SGD (default: full batch).")
@click.option("--momentum", type=float, default=0.0, show_default=True)
def stability_cmd(optimizer, lr, sgd_batch_size, momentum, out, no_cache, as_json, quiet, **kw):
    """Linear-stability criteria of an optimizer at a learning rate (exit code 0 whatever the verdict)."""
    from landscape.stability import OPTIMIZERS, stability

    t0 = time.perf_counter()
    if optimizer not in OPTIMIZERS:
        raise UserError(f"--optimizer {optimizer!r}: use one of {', '.join(OPTIMIZERS)}")
    problem = _setup(kw, quiet)
    out = Path(out)

    def compute() -> tuple[dict, str]:
        res = stability(
            problem,
            optimizer,
            lr,
            batch_size=sgd_batch_size,
            momentum=momentum,
            seed=kw["seed"],
            progress=_progress(quiet),
        )
        return res.to_dict(), res.summary()

    config = {
        "optimizer": optimizer,
        "lr": lr,
        "sgd_batch_size": sgd_batch_size,
        "momentum": momentum,
        "seed": kw["seed"],
    }
    _answer_and_emit(problem, "stability", config, compute, out=out, no_cache=no_cache, as_json=as_json, t0=t0)


def _int_list(ctx, param, value: str) -> list[int]:
    try:
        sizes = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--{param.name.replace('_', '-')} {value!r}: expected comma-separated integers") from None
    if not sizes:
        raise UserError(f"--{param.name.replace('_', '-')}: give at least one batch size")
    return sizes


@main.command(name="scaling")
@common_options
@click.option("--batch-sizes", default="32,128", show_default=True, callback=_int_list, help="Comma-separated.")
@click.option("--num-batches", type=int, default=4, show_default=True, help="Minibatches per batch size.")
@click.option("--scaling-optimizer", type=click.Choice(["sgd", "adam"]), default="sgd", show_default=True)
def scaling_cmd(batch_sizes, num_batches, scaling_optimizer, out, no_cache, as_json, quiet, **kw):
    """How the minibatch Hessian's top eigenvalue and the maximal stable learning rate change with batch size."""
    from landscape.scaling import lr_batch_scaling

    t0 = time.perf_counter()
    problem = _setup(kw, quiet)
    out = Path(out)

    def compute() -> tuple[dict, str]:
        res = lr_batch_scaling(
            problem,
            batch_sizes,
            optimizer=scaling_optimizer,
            num_batches=num_batches,
            seed=kw["seed"],
            progress=_progress(quiet),
        )
        return res.to_dict(), res.summary()

    config = {
        "batch_sizes": list(batch_sizes),
        "num_batches": num_batches,
        "optimizer": scaling_optimizer,
        "seed": kw["seed"],
    }
    _answer_and_emit(problem, "scaling", config, compute, out=out, no_cache=no_cache, as_json=as_json, t0=t0)


def _report_start(problem, from_path: str | None, from_init: bool, kw: dict[str, Any]) -> nn.Module | None:
    """The start of the report's interpolation: ``--from``, a fresh ``--model`` factory() with ``--from-init``, the
    built-in model's initialisation, or ``None``. Under torchrun every rank gets rank 0's bits, as for the model."""
    from landscape import distributed

    start = None
    if from_path is not None:
        start = _second_model(from_path, problem.model, kw["unsafe_load"], "--from", not kw["non_strict"])
    elif from_init and kw["hf_dir"] is not None:
        start = _fresh_hf(problem.model, kw["seed"])
    elif kw["model_spec"] is None and kw["checkpoint"] is None and kw["hf_dir"] is None:
        X, y = _load_data(kw["data_spec"], kw["seed"])
        start = _builtin_architecture(X.flatten(1), y, kw["seed"])
    elif from_init and kw["model_spec"] is not None:
        start = _call_factory(kw["model_spec"], "model")
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
    callback=_int_list,
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
    problem = _setup(kw, quiet)
    start = _report_start(problem, from_path, from_init, kw)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
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


def run() -> None:
    from landscape import distributed

    distributed.init()  # under torchrun with WORLD_SIZE > 1: the process group from its environment
    main(prog_name="landscape")


if __name__ == "__main__":
    sys.exit(run())
