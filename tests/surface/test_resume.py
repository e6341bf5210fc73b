"""A surface through the HDF5 cache: resumes after SIGKILL bit-identically, detects changes, refuses bad files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from landscape import Problem
from landscape.cache import Cache, CacheError
from landscape.data import gaussian_mixture
from landscape.models import mlp
from landscape.surface import filter_normalized, resume, surface

ROOT = Path(__file__).resolve().parents[2]
RESOLUTION, CHUNK = 9, 10  # 81 points in 9 chunks


def make_problem(shift: float = 0.0) -> Problem:
    X, y = gaussian_mixture(n=90, dim=5, num_classes=3, seed=1, dtype=torch.float64)
    model = mlp(5, [8], 3, activation="tanh", seed=2).double()
    if shift:
        with torch.no_grad():
            next(model.parameters()).add_(shift)
    return Problem(model, nn.CrossEntropyLoss(), (X, y), batch_size=32)


def run_surface(problem: Problem, cache, **kw):
    return surface(
        problem, filter_normalized(problem, 2, seed=3), resolution=RESOLUTION, chunk=CHUNK, cache=cache, **kw
    )


CRASHING = """
import os, signal, sys
from landscape.cache import GridEntry
from tests.surface.test_resume import make_problem, run_surface

writes = 0
original = GridEntry.write

def write_then_die(self, *args, **kwargs):
    global writes
    original(self, *args, **kwargs)
    writes += 1
    if writes == 3:
        os.kill(os.getpid(), signal.SIGKILL)

GridEntry.write = write_then_die
run_surface(make_problem(), sys.argv[1])
"""


def test_killed_run_resumes_and_ends_bit_identical(tmp_path):
    path = str(tmp_path / "run.h5")
    proc = subprocess.run([sys.executable, "-c", CRASHING, path], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    problem = make_problem()
    resumed = run_surface(problem, path)
    assert resumed.settings["cache"]["points_from_cache"] == 3 * CHUNK  # the three committed chunks, no more
    fresh = run_surface(problem, None)
    np.testing.assert_array_equal(resumed.loss, fresh.loss)
    np.testing.assert_array_equal(resumed.accuracy, fresh.accuracy)
    again = run_surface(problem, path)  # complete: read back, nothing evaluated
    assert again.settings["cache"]["points_from_cache"] == RESOLUTION**2
    assert again.settings["batch_points"] == 1 and again.settings["problem"] == problem.describe()
    np.testing.assert_array_equal(again.loss, fresh.loss)
    assert again.loss[RESOLUTION // 2, RESOLUTION // 2] == problem.loss()


def test_changed_model_or_settings_are_not_served_stale(tmp_path):
    path = str(tmp_path / "run.h5")
    base = run_surface(make_problem(), path)
    moved = run_surface(make_problem(shift=1e-3), path)
    assert moved.settings["cache"]["points_from_cache"] == 0
    assert moved.settings["cache"]["key"] != base.settings["cache"]["key"]
    assert not np.array_equal(moved.loss, base.loss)
    other_span = surface(
        make_problem(),
        filter_normalized(make_problem(), 2, seed=3),
        span=(-0.5, 0.5),
        resolution=RESOLUTION,
        cache=path,
    )
    assert other_span.settings["cache"]["points_from_cache"] == 0
    other_dirs = surface(
        make_problem(), filter_normalized(make_problem(), 2, seed=4), resolution=RESOLUTION, cache=path
    )
    assert other_dirs.settings["cache"]["points_from_cache"] == 0


@pytest.mark.parametrize("content", [b"not an hdf5 file at all", b""])
def test_corrupt_cache_file_is_refused_and_left_untouched(tmp_path, content):
    path = tmp_path / "run.h5"
    path.write_bytes(content)
    with pytest.raises(CacheError, match="untouched"):
        run_surface(make_problem(), str(path))
    assert path.read_bytes() == content
    assert sorted(os.listdir(tmp_path)) == ["run.h5"]


def test_a_finished_surface_is_read_back_from_an_open_cache_without_any_evaluation(tmp_path, monkeypatch):
    problem = make_problem()
    with Cache(tmp_path / "run.h5") as store:
        first = run_surface(problem, store)
        assert first.settings["cache"]["points_from_cache"] == 0

        def evaluated(*args, **kwargs):
            raise AssertionError("a finished surface was planned or evaluated again")

        monkeypatch.setattr(resume, "_plan", evaluated)
        monkeypatch.setattr(resume, "_evaluate", evaluated)
        again = run_surface(problem, store)  # the open cache is used, and left open
        assert again.settings["cache"]["points_from_cache"] == RESOLUTION**2
        assert again.settings["cache"]["key"] == first.settings["cache"]["key"]
        np.testing.assert_array_equal(again.loss, first.loss)
        np.testing.assert_array_equal(again.accuracy, first.accuracy)
        assert store.grid(first.settings["cache"]["key"]).complete
