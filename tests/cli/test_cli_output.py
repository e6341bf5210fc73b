"""What the commands write and print, run for real in a subprocess: answers from the cache, its notices and
its errors."""

from __future__ import annotations

import json

import pytest

from tests.cli.helpers import CACHED, runs_fixture, stdout_json  # noqa: F401 (the fixture runs)


@pytest.mark.parametrize("name", CACHED)
def test_second_run_answers_from_the_cache(runs, name):
    root, results = runs
    first, second = (stdout_json(r) for r in results[name][:2])
    assert first.pop("from_cache") is False and second.pop("from_cache") is True
    # The same numbers, wall times included: nothing was recomputed.
    assert json.dumps(second, sort_keys=True) == json.dumps(first, sort_keys=True)
    assert (root / name / "landscape.h5").exists()


def test_cache_of_another_model_is_reported_and_kept(runs):
    _, results = runs
    first, _, other, again = results["surface"]
    assert other.returncode == 0, other.stderr
    notice = [line for line in other.stderr.splitlines() if line.startswith("note:")]
    assert len(notice) == 1 and "1 earlier surface result" in notice[0], other.stderr
    assert "another architecture" in notice[0] and "other weights" in notice[0] and "kept" in notice[0]
    assert not stdout_json(other)["from_cache"]
    rerun = stdout_json(again)  # the first model's entry is still there: answered from the cache
    assert rerun["from_cache"] and rerun["loss"] == stdout_json(first)["loss"]


def test_corrupt_cache_is_one_line_and_exit_2_with_traceback_only_under_debug(runs):
    root, results = runs
    plain, debug = results["corrupt"]
    assert plain.returncode == 2 and len(plain.stderr.strip().splitlines()) == 1, plain.stderr
    assert "landscape.h5" in plain.stderr and "not an HDF5 file" in plain.stderr and "Traceback" not in plain.stderr
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    assert (root / "corrupt" / "landscape.h5").read_bytes() == b"not an HDF5 file"  # never overwritten
