"""``landscape report`` and ``landscape demo`` under torchrun (2 CPU ranks, gloo) give one process's numbers.

Sharded data (the default): every loss, gradient and curvature product is the all-reduced sum of the ranks' partial
sums over their own batches, where one process adds the batches of the whole data set in order. Reordering a sum
of ``b`` terms changes it by at most ~``b`` eps relative to the terms (float64: ~1e-15 here), and the estimators
(8 Lanczos steps, a few SAM steps, 5 x 5 surfaces) only carry such differences forward, so the numbers agree to
``RTOL = 1e-10``, not bit for bit (measured: 1e-13 at worst). Ritz residuals and error bounds are differences of
``O(||H||)`` vectors: their rounding error is absolute, ~eps ``||H||``, so they are compared with ``RTOL lambda_max``
as absolute tolerance (a residual of 2e-9 differs by 4e-18, 2e-9 relative). Replicated data (``--replicated-data``):
every rank evaluates whole problems alone as one process does, and surfaces evaluate each point on one rank: the
same bits as one process when the timing-tuned kernels agree (see :func:`test_replicated_report_equals_one_process`).
Rank 0 alone writes the page, the JSON and the cache, and prints; every rank exits 0.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from landscape import data as datasets
from tests.distributed.compare import assert_same_numbers
from tests.distributed.launch import Launch, launch

pytestmark = pytest.mark.slow  # every test starts 1 or 2 Python processes running the command line

RTOL = 1e-10
# Rank skew (a cache write on rank 0) on a busy machine must not end a run: a real hang still ends it, after
# DIST_TIMEOUT seconds, with a DistributedError.
DIST_TIMEOUT = 60.0
TIMEOUT = 300.0
FILES = {"report.html", "report.json", "landscape.h5", "landscape.h5.lock"}  # what rank 0 writes into --out
NUM_FIGURES = 6  # density (linear, log), 3D surface, contour, interpolation, batch-size scaling

# Sections of report.json computed on the full data set (exact products, losses and gradients).
FULL_DATA = ["spectrum", "surface", "interpolation", "sharpness", "roughness", "stability/sam"]
# Sections drawing minibatches (or per-example quantities) by a shared seed: equal to one process only when the
# ranks draw the same global examples (landscape.example_pool); sgd: the SGD noise criteria, adam: its preconditioner
# from minibatch gradients, scaling: batch sharpness and the gradient noise scale.
MINIBATCH = ["stability/sgd", "stability/adam", "scaling"]
NOT_COMPARED = {"wall_time", "wall_times", "settings", "created"}  # timings, and settings recording the ranks


def small_data() -> tuple[torch.Tensor, torch.Tensor]:
    """``--data`` of the tests: 203 samples, so the shards are uneven (102 and 101) with short last batches."""
    return datasets.gaussian_mixture(n=203, dim=8, num_classes=3, seed=0)


REPORT = (
    "report", "--data", "tests.distributed.test_report_distributed:small_data", "--batch-size", "64",
    "--dtype", "float64", "--resolution", "5", "--probes", "2", "--steps", "8", "--top-k", "2",
    "--batch-sizes", "16,64", "--num-batches", "2", "--optimizer", "sgd:0.1", "--optimizer", "sam",
    "--optimizer", "adam:0.001", "--sgd-batch-size", "16", "--quiet",
)  # fmt: skip


def _run(world_size: int, tmp: Path, out: Path, *args: str) -> Launch:
    """``landscape ARGS --out OUT`` on ``world_size`` ranks; asserts every rank exited 0 and only rank 0 printed."""
    run = launch(world_size, "cli", tmp, *args, "--out", str(out), timeout=TIMEOUT, dist_timeout=DIST_TIMEOUT)
    assert run.returncodes == (0,) * world_size, "\n".join(run.outputs)
    assert "report:" in run.outputs[0], run.outputs[0]
    assert all("report:" not in text for text in run.outputs[1:]), run.outputs[1:]
    return run


def _report(out: Path) -> dict[str, Any]:
    return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """``--out`` of the report in one process, on 2 ranks with sharded data and on 2 ranks with replicated data."""
    tmp = tmp_path_factory.mktemp("report")
    outs = {name: tmp / name for name in ("single", "sharded", "replicated")}
    _run(1, tmp, outs["single"], *REPORT)
    _run(2, tmp, outs["sharded"], *REPORT)
    _run(2, tmp, outs["replicated"], *REPORT, "--replicated-data")
    return outs


def _section(report: dict[str, Any], name: str) -> Any:
    """A part of report.json: a top-level key, or ``stability/OPTIMIZER`` for that optimizer's verdict."""
    key, _, optimizer = name.partition("/")
    if not optimizer:
        return report[key]
    (entry,) = [r for r in report[key] if r["optimizer"] == optimizer]
    return entry


def _lambda_max(report: dict[str, Any]) -> float:
    return abs(report["spectrum"]["eigenvalues"][0])


def _assert_section_agrees(got: dict[str, Any], want: dict[str, Any], name: str) -> None:
    """Section ``name`` of two reports: every number within ``RTOL`` (residuals: ``RTOL lambda_max`` absolute)."""
    atol = RTOL * _lambda_max(want)
    assert_same_numbers(_section(got, name), _section(want, name), rtol=RTOL, atol=atol, ignore=NOT_COMPARED)


def test_report_on_two_ranks_writes_only_on_rank_0(runs):
    for mode in ("sharded", "replicated"):
        assert {p.name for p in runs[mode].iterdir()} == FILES
        assert (runs[mode] / "report.html").read_text().count('class="plotly-graph-div"') == NUM_FIGURES
    problem = _report(runs["sharded"])["spectrum"]["settings"]
    assert problem["distributed"]["world_size"] == 2 and problem["distributed"]["shard_sizes"] == [102, 101]
    assert _report(runs["replicated"])["spectrum"]["settings"]["replicated"]["world_size"] == 2


@pytest.mark.parametrize("name", FULL_DATA)
def test_sharded_report_equals_one_process_on_full_data_numbers(runs, name):
    want = _report(runs["single"])
    got = _report(runs["sharded"])
    _assert_section_agrees(got, want, name)


@pytest.mark.parametrize("name", MINIBATCH)
def test_sharded_report_equals_one_process_on_minibatch_numbers(runs, name):
    want = _report(runs["single"])
    got = _report(runs["sharded"])
    _assert_section_agrees(got, want, name)


def test_sharded_report_records_the_same_model_and_sample_count(runs):
    want, got = _report(runs["single"])["provenance"], _report(runs["sharded"])["provenance"]
    assert got["model_hash"] == want["model_hash"]
    assert got["num_samples"] == want["num_samples"] == 203


@pytest.mark.parametrize("name", FULL_DATA + MINIBATCH)
def test_replicated_report_equals_one_process(runs, name):
    want = _report(runs["single"])
    got = _report(runs["replicated"])
    # Every rank computes on the whole data, in one process's batches and order: the same bits as one process when
    # the same kernels run (measured: all equal). But the kernels are tuned by timing (engine="auto" and block="auto"
    # pick double backward one vector at a time or batched, surfaces pick how many points to stack), and the
    # batched kernels round differently (2e-16), so even two single-process runs may differ in the last bits.
    _assert_section_agrees(got, want, name)
    assert got["provenance"]["data_fingerprint"] == want["provenance"]["data_fingerprint"]
    assert got["provenance"]["model_hash"] == want["provenance"]["model_hash"]


@pytest.mark.parametrize("mode", ["sharded", "replicated"])
def test_a_second_run_is_answered_from_the_cache_on_every_rank(runs, tmp_path, mode):
    # Rank 0 alone reads the cache: every rank must follow its answers, or one rank's collectives would wait for
    # the others' until the timeout.
    out = tmp_path / "again"
    shutil.copytree(runs[mode], out)
    _run(2, tmp_path, out, *REPORT, *(["--replicated-data"] if mode == "replicated" else []))
    again, first = _report(out), _report(runs[mode])
    assert all(again["cache"]["from_cache"].values()), again["cache"]
    assert again["cache"]["spectrum_from_cache"] and again["cache"]["surface_points_from_cache"] == 25
    for name in FULL_DATA + MINIBATCH:
        assert_same_numbers(_section(again, name), _section(first, name), rtol=0.0, atol=0.0, ignore=NOT_COMPARED)


def test_full_data_results_of_one_process_are_reused_by_two_ranks(runs, tmp_path):
    """Results of the full-data loss alone are keyed by the set of examples: a data-parallel run reads them from a
    cache written by one process. Minibatch draws depend on the order of the examples and are recomputed."""
    out = tmp_path / "from-single"
    shutil.copytree(runs["single"], out)
    _run(2, tmp_path, out, *REPORT)
    again, first = _report(out), _report(runs["single"])
    reused = again["cache"]["from_cache"]
    assert again["cache"]["spectrum_from_cache"] and again["cache"]["surface_points_from_cache"] == 25
    assert reused["interpolation"] and reused["sharpness"] and reused["roughness"], reused
    assert not reused["scaling"], reused
    for name in FULL_DATA[:-1]:  # stability is recomputed: the SAM verdict is stored with the other optimizers'
        assert_same_numbers(_section(again, name), _section(first, name), rtol=0.0, atol=0.0, ignore=NOT_COMPARED)


def test_demo_on_two_ranks_writes_one_report(tmp_path):
    out = tmp_path / "demo"
    _run(2, tmp_path, out, "demo", "--quiet")
    assert {p.name for p in out.iterdir()} == FILES
    assert (out / "report.html").read_text().count('class="plotly-graph-div"') == NUM_FIGURES
    numbers = _report(out)
    assert numbers["spectrum"]["settings"]["distributed"]["world_size"] == 2
    assert numbers["provenance"]["settings"]["test_accuracy"] > 0.8
    assert [r["optimizer"] for r in numbers["stability"]] == ["sgd", "adam", "sam"]
