"""The spectrum commands (spectrum, eigen, trace, density), run for real in a subprocess."""

from __future__ import annotations

import json

import pytest

from tests.cli.helpers import first_json, run, runs_fixture, tiny_problem  # noqa: F401 (the fixture runs)


@pytest.mark.slow
def test_spectrum_default_job_prints_summary_and_writes_plot(tmp_path):
    r = run("spectrum", "--out", str(tmp_path), "--probes", "4", "--steps", "20")
    assert r.returncode == 0, r.stderr
    assert "top eigenvalues" in r.stdout and "trace" in r.stdout and "density" in r.stdout
    assert (tmp_path / "density.png").stat().st_size > 1000
    assert (tmp_path / "density.pdf").exists()
    data = json.loads((tmp_path / "spectrum.json").read_text())
    assert len(data["eigenvalues"]) == 5 and data["eigenvalues"][0] >= data["eigenvalues"][-1]


def test_eigen_matches_the_python_api(runs, monkeypatch):
    from landscape import hessian, top_eigen

    root, results = runs
    out = first_json(results, "eigen")
    ref = top_eigen(hessian(tiny_problem(root, monkeypatch, 3)), k=2, seed=3)
    assert out["eigenvalues"] == pytest.approx(ref.values.tolist(), rel=1e-6)
    assert out["residuals"] == pytest.approx(ref.residuals.tolist(), rel=1e-3, abs=1e-9)
    assert len(out["error_bounds"]) == 2 and out["eigenvalues"][0] >= out["eigenvalues"][1]


def test_trace_matches_the_python_api(runs, monkeypatch):
    from landscape import hessian, trace

    root, results = runs
    out = first_json(results, "trace")
    ref = trace(hessian(tiny_problem(root, monkeypatch, 5)), method="hutchinson", num_matvecs=20, seed=5)
    assert out["method"] == ref.method == "hutchinson" and out["num_matvecs"] == ref.num_matvecs
    assert out["value"] == pytest.approx(float(ref.value), rel=1e-6)
    assert out["stderr"] == pytest.approx(float(ref.stderr), rel=1e-6)


def test_density_writes_plot(runs):
    root, results = runs
    out = first_json(results, "density")
    assert out["support"][0] <= out["support"][1] and out["trace_stderr"] >= 0
    assert (root / "density" / "density.png").stat().st_size > 1000
