"""The analysis commands (sharpness, roughness, stability, scaling), run for real in a subprocess."""

from __future__ import annotations

import numpy as np
import pytest

from tests.cli.helpers import first_json, runs_fixture, tiny_problem  # noqa: F401 (the fixture runs)


def test_sharpness_roughness_stability_scaling(runs):
    root, results = runs
    sharp = first_json(results, "sharpness")
    assert "keskar" not in sharp and sharp["sam"]["value"] > 0 and sharp["lambda_max"]
    rough = first_json(results, "roughness")
    assert rough["value"] >= 0 and len(rough["total_variations"]) == 4
    unstable = first_json(results, "stability")  # lr = 5 is unstable for this model; the exit code is still 0
    assert unstable["optimizer"] in ("sgd", "heavy_ball") and unstable["stable"] is False and unstable["criteria"]
    scaling = first_json(results, "scaling")
    assert scaling["batch_sizes"][:2] == [16, 64] and len(scaling["lambda_mean"]) == len(scaling["batch_sizes"])
    assert (root / "scaling" / "scaling.json").exists()


def test_density_sharpness_roughness_stability_scaling_match_the_python_api(runs, monkeypatch):
    """Each command's JSON against the Python API on the same problem and settings: a flag the command silently
    dropped (or a default it changed) shows up as a different number."""
    from landscape import hessian
    from landscape.linalg import spectral_density
    from landscape.roughness import roughness_index
    from landscape.scaling import lr_batch_scaling
    from landscape.sharpness import sharpness
    from landscape.stability import stability

    root, results = runs
    dens = spectral_density(hessian(tiny_problem(root, monkeypatch, 2)), num_probes=2, num_steps=10, seed=2)
    out = first_json(results, "density")
    scale = float(np.abs(dens.nodes).max())  # float32 products: nodes near zero agree to rounding of the largest
    np.testing.assert_allclose(out["nodes"], dens.nodes, rtol=1e-6, atol=1e-6 * scale)
    np.testing.assert_allclose(out["weights"], dens.weights, rtol=1e-6, atol=1e-9)
    assert out["trace"] == pytest.approx(float(dens.trace().value), rel=1e-6)
    problem = tiny_problem(root, monkeypatch, 0)  # the other jobs ran with the default --seed 0
    ref = sharpness(problem, 0.05, seed=0, steps=2, num_samples=4, num_matvecs=10, keskar=False).to_dict()
    out = first_json(results, "sharpness")
    for part in ("sam", "asam", "average", "sam_inf", "trace", "frobenius", "lambda_max"):
        assert out[part]["value"] == pytest.approx(ref[part]["value"], rel=1e-6), part
    ref = roughness_index(problem, 4, 0.1, 5, seed=0).to_dict()
    out = first_json(results, "roughness")
    assert out["value"] == pytest.approx(ref["value"], rel=1e-9)
    assert out["total_variations"] == pytest.approx(ref["total_variations"], rel=1e-9)
    ref = stability(problem, "sgd", 5.0, momentum=0.5, seed=0).to_dict()
    out = first_json(results, "stability")
    assert out["max_stable_lr"] == pytest.approx(ref["max_stable_lr"], rel=1e-6)
    assert [c["value"] for c in out["criteria"]] == pytest.approx([c["value"] for c in ref["criteria"]], rel=1e-6)
    ref = lr_batch_scaling(problem, [16, 64], optimizer="sgd", num_batches=2, seed=0).to_dict()
    out = first_json(results, "scaling")
    assert out["batch_sizes"] == ref["batch_sizes"]
    assert out["lambda_mean"] == pytest.approx(ref["lambda_mean"], rel=1e-6)


def test_analysis_commands_reject_bad_input_in_one_line(runs):
    _, results = runs
    r = results["bad_optimizer"]
    assert r.returncode == 2 and "--optimizer 'nope'" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
