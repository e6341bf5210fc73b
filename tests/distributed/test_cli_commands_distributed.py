"""Every other analysis command under torchrun (2 CPU ranks, gloo) gives one process's numbers; rank 0 alone prints
and writes.

``eigen``, ``surface``, ``report`` and ``demo`` are covered in ``test_distributed.py`` and
``test_report_distributed.py``; this file runs ``spectrum``, ``trace`` (exact: all-reduced diagonal), ``density``,
``interpolate``, ``sharpness``, ``roughness``, ``stability`` (SGD minibatches) and ``scaling`` with the smallest
settings that still run every stage, on 2 ranks and in one process (both with ``OMP_NUM_THREADS=1``: the built-in
model is trained in float32, whose bits depend on the thread count), and compares every number of ``COMMAND.json``.

Tolerance. Sharded data (the default under torchrun): every loss, gradient and curvature product is the all-reduced
sum of the ranks' partial sums over their own batches (``--batch-size 200``: 200, 200, 112 on each rank, where one
process adds 200 x 5 + 24), so sums are reordered, which changes them by a few float64 eps relative to their terms
(~1e-16). The estimators here (a few Lanczos steps, SAM steps, minibatches drawn by a shared seed as global example
indices) only carry such differences forward, so the numbers agree to ``RTOL = 1e-10``, not bit for bit (measured:
3e-12 relative for Ritz error bounds and residuals, 8e-14 for everything else). Ritz residuals and error bounds are
differences of ``O(||H||)`` vectors whose rounding error is absolute, ~eps ``||H||``, so they also get ``RTOL * SCALE``
as absolute tolerance (``SCALE`` bounds the top eigenvalues of the full-data and minibatch Hessians here, <= 3).
Replicated data (``--replicated-data``): every rank evaluates whole problems in one process's batches (interpolation
points dealt out to the ranks), so the numbers agree to the same tolerance (measured: bit for bit; the timing-tuned
kernels may round differently). Timings and the settings recording the ranks are not compared; the paths of ``--out``
are compared after writing both directories as ``OUT``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.distributed.compare import assert_same_numbers
from tests.distributed.launch import Launch, launch

pytestmark = pytest.mark.slow  # every case starts 1 or 2 Python processes running the command line

RTOL = 1e-10
SCALE = 10.0  # bound on the Hessians' top eigenvalues: absolute tolerance RTOL * SCALE for TOLERANT quantities
# Rank skew (a cache write on rank 0) on a busy machine must not end a run: a real hang still ends it, after
# DIST_TIMEOUT seconds, with a DistributedError.
DIST_TIMEOUT = 60.0
TIMEOUT = 300.0
NOT_COMPARED = {"wall_time", "wall_times", "settings", "created", "distributed", "paths"}

COMMON = ("--data", "synthetic", "--batch-size", "200", "--dtype", "float64", "--json", "--quiet")
# The smallest settings that still run each command's every stage (Lanczos, quadrature, SAM ascent, minibatches).
COMMANDS: dict[str, tuple[str, ...]] = {
    "spectrum": ("--top-k", "2", "--probes", "2", "--steps", "8"),
    "trace": (),  # auto: the exact trace by second-order backpropagation, summed over the ranks' shards
    "density": ("--probes", "2", "--steps", "8"),
    "interpolate": ("--from-init", "--resolution", "5"),
    "sharpness": ("--steps", "2", "--num-samples", "2", "--num-matvecs", "6"),
    "roughness": ("--num-directions", "2", "--points", "5"),
    "stability": ("--optimizer", "sgd", "--sgd-batch-size", "64"),
    "scaling": ("--batch-sizes", "32,64", "--num-batches", "2"),
    "eigen": ("--top-k", "2"),
}
SHARDED = ["spectrum", "eigen", "density"]  # the spectral commands compared with --fsdp (trace: auto is exact in one
# process, where BackPACK applies, and stochastic on the sharded model, which it cannot copy)
REPLICATED = ["sharpness", "interpolate"]


def _run(world_size: int, tmp: Path, out: Path, command: str, *extra: str) -> Launch:
    """``landscape COMMAND ... --out OUT`` on ``world_size`` ranks; asserts every rank exited 0."""
    args = (command, *COMMANDS[command], *COMMON, *extra, "--out", str(out))
    run = launch(world_size, "cli", tmp, *args, timeout=TIMEOUT, dist_timeout=DIST_TIMEOUT)
    assert run.returncodes == (0,) * world_size, "\n".join(run.outputs)
    return run


def _result(out: Path, command: str) -> dict[str, Any]:
    """``out/COMMAND.json`` with ``out`` written as ``OUT`` (figure paths name it)."""
    text = (out / f"{command}.json").read_text()
    return json.loads(text.replace(json.dumps(str(out))[1:-1], "OUT"))


def _printed(log: str) -> str | None:
    """The JSON text a rank printed (from its first line ``{``: stderr shares the log), or ``None``."""
    lines = log.splitlines()
    if "{" not in lines:
        return None
    return "\n".join(lines[lines.index("{") :]).strip()


def _modes(tree: Any) -> set[tuple[str, int]]:
    """``(mode, world_size)`` of every record of the ranks (``settings/.../distributed`` or ``.../replicated``)."""
    found: set[tuple[str, int]] = set()
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key in ("distributed", "replicated") and isinstance(value, dict):
                found.add((key, value["world_size"]))
            found |= _modes(value)
    elif isinstance(tree, list):
        for value in tree:
            found |= _modes(value)
    return found


class SingleRuns(dict[str, Path]):
    """``--out`` of each command in one process, run on first use (the sharded and replicated cases share it)."""

    def __init__(self, tmp: Path):
        super().__init__()
        self.tmp = tmp

    def __missing__(self, command: str) -> Path:
        out = self.tmp / command
        run = _run(1, self.tmp, out, command)
        assert _printed(run.outputs[0]) == (out / f"{command}.json").read_text().strip(), run.outputs[0]
        assert not _modes(_result(out, command))  # one process records no ranks
        self[command] = out
        return out


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> SingleRuns:
    return SingleRuns(tmp_path_factory.mktemp("single"))


CASES = [pytest.param(command, False, id=command) for command in COMMANDS]
CASES += [pytest.param(command, True, id=f"{command}-replicated") for command in REPLICATED]


@pytest.mark.parametrize(("command", "replicated"), CASES)
def test_command_on_two_ranks_equals_one_process(
    tmp_path: Path, single: SingleRuns, command: str, replicated: bool
) -> None:
    out = tmp_path / "ranks"
    run = _run(2, tmp_path, out, command, *(["--replicated-data"] if replicated else []))
    want_out = single[command]
    # Rank 0 alone prints (the JSON it wrote) and writes: the same files as one process (figures, cache and lock).
    assert _printed(run.outputs[0]) == (out / f"{command}.json").read_text().strip(), run.outputs[0]
    assert _printed(run.outputs[1]) is None and '"from_cache"' not in run.outputs[1], run.outputs[1]
    assert {p.name for p in out.iterdir()} == {p.name for p in want_out.iterdir()}
    assert {p.name for p in tmp_path.iterdir()} == {"ranks", "log0.txt", "log1.txt"}
    got, want = _result(out, command), _result(want_out, command)
    # Where the command records the problem's settings, they name this run's mode on 2 ranks.
    assert _modes(got) <= {("replicated" if replicated else "distributed", 2)}, _modes(got)
    assert got["from_cache"] is False and want["from_cache"] is False
    assert_same_numbers(got, want, rtol=RTOL, atol=RTOL * SCALE, ignore=NOT_COMPARED)


@pytest.mark.parametrize("command", SHARDED)
def test_spectral_command_on_an_fsdp_sharded_model_equals_one_process(
    tmp_path: Path, single: SingleRuns, command: str
) -> None:
    """``--fsdp``: the model is sharded over the 2 ranks (FSDP2), every Krylov vector too; exact products give one
    process's numbers."""
    out = tmp_path / "ranks"
    run = _run(2, tmp_path, out, command, "--fsdp")
    assert _printed(run.outputs[1]) is None
    got, want = _result(out, command), _result(single[command], command)
    assert "products" not in got
    assert_same_numbers(got, want, rtol=RTOL, atol=RTOL * SCALE, ignore=NOT_COMPARED)


def test_eigen_with_finite_difference_products_is_within_its_recorded_bound(tmp_path: Path, single: SingleRuns):
    """``--fsdp --products finite-difference``: central differences of FSDP's own (float32) gradients; the result
    says so and records the error bound, within which the eigenvalues agree with one process's exact ones. (The
    built-in model is a ReLU MLP, whose piecewise-linear gradient differences poorly in float32: bound ~0.16,
    eigenvalues off by 2-3%; the smooth models of test_sharded.py reach 1e-3 and better.)"""
    out = tmp_path / "ranks"
    _run(2, tmp_path, out, "eigen", "--fsdp", "--products", "finite-difference")
    got, want = _result(out, "eigen"), _result(single["eigen"], "eigen")
    products = got["products"]
    assert products["engine"] == "finite_difference" and products["compute_dtype"] == "float32"
    bound = products["error_bound"]
    assert 0 < bound < 1
    exact, approx = want["eigenvalues"], got["eigenvalues"]
    scale = max(abs(v) for v in exact)
    for a, b in zip(approx, exact, strict=True):
        assert abs(a - b) <= 2 * (bound + 1e-4) * scale, (approx, exact, bound)
