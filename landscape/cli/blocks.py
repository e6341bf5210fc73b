"""The command ``blocks``: the spectrum of every diagonal block of the Hessian (or GGN, empirical Fisher) in batched
passes (:func:`landscape.block_spectra`): top eigenvalues, traces, Frobenius norms and densities per block, how
different the blocks' densities are (Jensen-Shannon distances) and how far the block-diagonal picture is from the
full matrix; ``blocks.json`` and three figures (ridge, bars, heatmap) in ``--out``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from landscape._json import strict_json
from landscape.cli.app import UserError, common_options, main, memory_budget, show_progress
from landscape.cli.output import emit, marked, opened_store
from landscape.cli.setup import setup_problem

FIGURES = ("ridge", "bars", "heatmap")


def _choice(flag: str, choices: tuple[str, ...], text: str) -> Any:
    """A click option of ``choices``, the first the default."""
    return click.option(flag, type=click.Choice(choices), default=choices[0], show_default=True, help=text)


def split_params(values: tuple[str, ...]) -> tuple[tuple[str, ...], dict[str, list[str]]]:
    """``--params`` values as ``(parameter selection, {block name: globs})``: ``NAME=GLOB[,GLOB]`` defines a block,
    anything else keeps its meaning of the other commands (the parameters analysed)."""
    plain: list[str] = []
    blocks: dict[str, list[str]] = {}
    for value in values:
        if "=" not in value:
            plain.append(value)
            continue
        name, _, globs = value.partition("=")
        name, patterns = name.strip(), [g.strip() for g in globs.split(",") if g.strip()]
        if not name or not patterns:
            raise UserError(f"--params {value!r}: a block is NAME=GLOB[,GLOB...], e.g. --params attn='*attn*'")
        if name in blocks:
            raise UserError(f"--params: block {name!r} is given twice; list its globs once, comma-separated")
        blocks[name] = patterns
    return tuple(plain), blocks


def _save(fig: Any, out: Path, name: str) -> Path:
    """``out/<name>.png`` and ``.pdf`` (tight bounding box, no creation date), the figure closed; the PNG's path."""
    from landscape.plot.cli_figures import DPI, pyplot
    from landscape.plot.static import save

    for ext in ("png", "pdf"):
        save(fig, out / f"{name}.{ext}", dpi=DPI)
    pyplot().close(fig)
    return out / f"{name}.png"


def block_figures(result: Any, out: Path) -> dict[str, str]:
    """``out/blocks_{ridge,bars,heatmap}.{png,pdf}``; ``{kind: png path}``."""
    from landscape.plot.cli_figures import pyplot

    pyplot()  # the Agg backend: files only
    return {kind: str(_save(result.plot(kind), out, f"blocks_{kind}")) for kind in FIGURES}


@main.command(name="blocks")
@common_options
@click.option(
    "--by",
    type=click.Choice(["module", "parameter"]),
    default=None,
    help="One block per module owning parameters (the default) or per parameter tensor; or give blocks by name "
    "with --params NAME=GLOB[,GLOB] (repeatable; unmatched parameters form '(other)').",
)
@click.option("--k", "k", type=int, default=5, show_default=True, help="Top eigenvalues per block.")
@click.option("--num-probes", type=int, default=4, show_default=True, help="Rademacher probes per block.")
@click.option("--num-steps", type=int, default=40, show_default=True, help="Lanczos steps per block.")
@_choice(
    "--operator",
    ("hessian", "ggn", "fisher"),
    "The curvature matrix: the Hessian, the generalised Gauss-Newton matrix or the empirical Fisher.",
)
@click.option("--no-full", is_flag=True, help="Skip the comparison of the block-diagonal picture with the full matrix.")
@_choice(
    "--traces",
    ("auto", "exact", "slq"),
    "Block traces: exact from BackPACK's diagonal where it applies (auto), exact or an error (exact), or SLQ.",
)
@click.option(
    "--refine",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Thick-restart steps (one data pass each) for the blocks whose top eigenvalues did not converge in "
    "--num-steps steps, on a basis of 2k+4 vectors.",
)
def blocks_cmd(by, k, num_probes, num_steps, operator, no_full, traces, refine, out, no_cache, as_json, quiet, **kw):
    """Spectra of the diagonal blocks (modules, tensors or --params NAME=GLOB groups) in batched passes: top
    eigenvalues, traces, densities and their Jensen-Shannon heterogeneity; writes blocks.json and three figures."""
    from landscape.blocks import block_spectra
    from landscape.blocks.partition import BlockPartition
    from landscape.store import remember

    t0 = time.perf_counter()
    plain, groups = split_params(tuple(kw["params"]))
    if groups and by is not None:
        raise UserError(f"--by {by} and --params NAME=GLOB both say how to split the parameters: give one of them")
    spec: Any = groups or by or "module"
    problem = setup_problem({**kw, "params": plain}, quiet)
    try:
        num_blocks = BlockPartition.of(problem.param_names, problem.param_numels, spec).num_blocks
    except ValueError as err:
        raise UserError(f"--params: {err}") from err
    # The widest pass: every (probe, block) pair at once, as block_spectra tries first.
    budget = memory_budget(
        problem,
        "block_spectra",
        num_probes=num_probes,
        num_steps=num_steps,
        columns=num_probes * num_blocks,
        stored=True,
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # block_spectra's settings by the command's names, and with the seed the cache key of this run.
    settings = dict(by=spec, k=k, num_probes=num_probes, num_steps=num_steps, operator=operator, traces=traces)
    if refine:  # only then: the cache keys of runs without it stay what they were
        settings["refine"] = refine
    settings["full"] = not no_full
    config = {**settings, "seed": kw["seed"]}
    with opened_store(out, no_cache) as store:

        def compute():
            return block_spectra(
                problem, **settings, seed=kw["seed"], progress=show_progress(quiet), memory_budget=budget
            )

        def run():  # the result itself under "block_spectra" (the figures are drawn from it)
            return remember(store, problem, "block_spectra", config, compute)[0]

        result, hit = marked(store, problem, "blocks", config, run)  # the command's marker beside it
        figures = block_figures(result, out)
        summary = result.summary() + "\nfigures: " + ", ".join(figures.values())
        emit(strict_json({**result.to_dict(), "figures": figures}), summary, as_json, out, "blocks", hit, t0, store)
