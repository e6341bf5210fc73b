"""The surface commands (surface, interpolate), run for real in a subprocess."""

from __future__ import annotations

import json

import numpy as np

from tests.cli.helpers import first_json, runs_fixture, stdout_json, tiny_problem  # noqa: F401 (the fixture runs)


def test_surface_second_run_comes_from_cache(runs):
    root, results = runs
    first, second = (stdout_json(r) for r in results["surface"][:2])
    assert first["points_from_cache"] == 0 and second["points_from_cache"] == second["num_points"] == 25
    assert not first["from_cache"] and second["from_cache"]
    assert second["loss"] == first["loss"]
    assert first["min_loss"] <= first["centre_loss"] <= first["max_loss"]
    assert (root / "surface" / "landscape.h5").exists() and (root / "surface" / "surface.png").stat().st_size > 1000


def test_surface_directions_in_bfloat16_are_the_same_picture_rounded(runs):
    _, results = runs
    exact, narrow = stdout_json(results["surface"][0]), stdout_json(results["surface_bf16"])
    assert exact["directions_dtype"] is None and narrow["directions_dtype"] == "bfloat16"
    assert narrow["points_from_cache"] == 0 and narrow["coords"] == exact["coords"]
    a, b = np.array(exact["loss"]), np.array(narrow["loss"])
    assert not np.array_equal(a, b)  # other directions: each entry rounded to 8 significant bits
    np.testing.assert_allclose(b, a, rtol=1e-2)
    assert b[2][2] == a[2][2]  # the trained point itself, exactly


def test_interpolate_matches_the_python_api(runs, monkeypatch):
    from landscape.checkpoint import load_checkpoint
    from landscape.models import mlp
    from landscape.surface import interpolate

    root, results = runs
    out = first_json(results, "interpolate")
    a, b = (mlp(in_features=64, hidden=(8,), out_features=10) for _ in range(2))
    load_checkpoint(a, root / "a.pt")
    load_checkpoint(b, root / "b.pt")
    ref = interpolate(tiny_problem(root, monkeypatch, 0), a, b, span=(-0.5, 1.5), resolution=9)
    assert out["coords"] == ref.coords[0].tolist() and out["loss"] == ref.loss.tolist()
    assert out["accuracy"] == ref.accuracy.tolist()
    assert out["loss_from"] == ref.loss[2] and out["loss_to"] == ref.loss[6] and out["barrier"] >= 0
    for ext in ("png", "pdf"):
        assert (root / "interpolate" / f"interpolation.{ext}").stat().st_size > 1000
    assert json.loads((root / "interpolate" / "interpolate.json").read_text())["loss"] == out["loss"]


def test_second_checkpoint_that_does_not_fit_lists_the_keys(runs):
    _, results = runs
    r = results["wrong_to"]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "--to other.pt" in r.stderr and "0.weight" in r.stderr and "shape" in r.stderr
