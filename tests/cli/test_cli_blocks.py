"""The ``blocks`` command, run in-process (click's runner; the other commands' subprocess runs cover the console
script): its JSON against the Python API on the same problem (with ``--by``, ``--params NAME=GLOB`` and ``--k``
honoured), the figures, the cache, ``--dry-run`` and its errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from landscape.cli import main
from landscape.models import mlp
from tests.cli.helpers import TINY, tiny_problem

TINY_RUN = ("--model", "mymodels:small", "--quiet", "--num-probes", "2", "--num-steps", "8")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``(root, {job: click Result or a pair})``: the command's runs on the tiny model of :mod:`tests.cli.helpers`."""
    root = tmp_path_factory.mktemp("cli_blocks")
    (root / "mymodels.py").write_text(TINY)
    torch.save(mlp(in_features=64, hidden=(8,), out_features=10, seed=1).state_dict(), root / "a.pt")

    def job(name, *args):
        return CliRunner().invoke(main, ["blocks", *TINY_RUN, *args, "--out", str(root / name)])

    by = ("--by", "parameter", "--k", "2", "--seed", "1", "--no-full", "--json")
    groups = ("--params", "weights=*weight", "--params", "biases=0.bias,2.bias", "--k", "3", "--traces", "slq")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.syspath_prepend(str(root))
        results = {
            "by": (job("by", *by), job("by", *by)),  # the second from the cache
            "groups": job("groups", *groups, "--json"),
            "summary": job("summary", "--k", "1", "--checkpoint", "a.pt"),
            "dry_run": job("dry_run", "--dry-run"),
            "both": job("both", "--by", "module", "--params", "w=*weight"),
            "bad_glob": job("bad_glob", "--params", "w="),
            "refine": job(
                "refine", "--by", "parameter", "--k", "2", "--seed", "1", "--no-full", "--refine", "40", "--json"
            ),
        }
    return root, results


def stdout_json(r) -> dict:
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_by_parameter_and_k_match_the_python_api(runs, monkeypatch):
    from landscape import block_spectra

    root, results = runs
    out = stdout_json(results["by"][0])
    problem = tiny_problem(root, monkeypatch, 1)
    ref = block_spectra(problem, by="parameter", k=2, num_probes=2, num_steps=8, full=False, seed=1)
    assert out["names"] == list(ref.names) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert out["sizes"] == ref.sizes.tolist() and out["settings"]["k"] == 2 and out["full"] is None
    for name in ref.names:
        assert out["blocks"][name]["eigenvalues"] == pytest.approx(ref.spectra[name].eigenvalues.tolist(), rel=1e-6)
    assert out["traces"] == pytest.approx(ref.traces.tolist(), rel=1e-6)
    np.testing.assert_allclose(out["heterogeneity"]["distances"], ref.heterogeneity.distances, atol=1e-6)
    assert json.loads((root / "by" / "blocks.json").read_text())["names"] == out["names"]
    for kind in ("ridge", "bars", "heatmap"):
        assert (root / "by" / f"blocks_{kind}.png").stat().st_size > 1000
        assert (root / "by" / f"blocks_{kind}.pdf").exists()
        assert out["figures"][kind].endswith(f"blocks_{kind}.png")


def test_refine_matches_the_python_api(runs, monkeypatch):
    """``--refine`` reaches block_spectra: the restarted eigenvalues equal the API's, not the density steps'."""
    from landscape import block_spectra

    root, results = runs
    out = stdout_json(results["refine"])
    problem = tiny_problem(root, monkeypatch, 1)
    options = {"by": "parameter", "k": 2, "num_probes": 2, "num_steps": 8, "full": False, "seed": 1}
    ref = block_spectra(problem, refine=40, **options)
    plain = block_spectra(problem, **options)
    assert out["settings"]["refine"] == ref.settings["refine"] and ref.settings["refine"]["blocks"]
    for name in ref.names:
        assert out["blocks"][name]["eigenvalues"] == pytest.approx(ref.spectra[name].eigenvalues.tolist(), rel=1e-6)
    changed = ref.settings["refine"]["blocks"][0]
    assert not np.allclose(ref.spectra[changed].eigenvalues, plain.spectra[changed].eigenvalues, rtol=1e-8, atol=0)


def test_a_repeated_run_is_answered_from_the_cache(runs):
    _, results = runs
    first, second = (stdout_json(r) for r in results["by"])
    assert not first["from_cache"] and second["from_cache"]
    assert {k: v for k, v in first.items() if k != "from_cache"} == {
        k: v for k, v in second.items() if k != "from_cache"
    }


def test_params_name_globs_make_the_blocks(runs, monkeypatch):
    from landscape import block_spectra

    root, results = runs
    out = stdout_json(results["groups"])
    spec = {"weights": ["*weight"], "biases": ["0.bias", "2.bias"]}
    ref = block_spectra(tiny_problem(root, monkeypatch, 0), by=spec, k=3, num_probes=2, num_steps=8, traces="slq")
    assert out["names"] == ["weights", "biases"] == list(ref.names)
    assert out["members"] == [["0.weight", "2.weight"], ["0.bias", "2.bias"]]
    assert out["settings"]["by"] == spec and out["trace_methods"] == ["slq", "slq"]
    for name in ref.names:
        assert len(out["blocks"][name]["eigenvalues"]) == 3
        assert out["blocks"][name]["eigenvalues"] == pytest.approx(ref.spectra[name].eigenvalues.tolist(), rel=1e-6)
    assert out["full"]["lambda_max_full"] == pytest.approx(ref.full.lambda_max_full, rel=1e-6)


def test_summary_names_the_blocks_and_the_figures(runs):
    root, results = runs
    r = results["summary"]
    assert r.exit_code == 0, r.output
    assert "block spectra of 610 parameters in 2 blocks" in r.stdout  # modules: the two Linear layers
    assert "heterogeneity (Jensen-Shannon distance)" in r.stdout and "block-diagonal vs full" in r.stdout
    assert "figures:" in r.stdout and (root / "summary" / "blocks_heatmap.png").exists()


def test_dry_run_prints_the_estimate_and_exits(runs):
    root, results = runs
    r = results["dry_run"]
    assert r.exit_code == 0, r.output
    assert "memory estimate of block_spectra" in r.stdout and "Krylov vectors" in r.stdout
    assert "2 probes x 9 basis vectors" in r.stdout and "4 input column(s)" in r.stdout  # 2 probes x 2 modules
    assert not (root / "dry_run" / "blocks.json").exists()


def test_by_and_block_globs_together_are_refused(runs):
    _, results = runs
    r = results["both"]
    assert r.exit_code == 2 and "give one of them" in r.output
    r = results["bad_glob"]
    assert r.exit_code == 2 and "NAME=GLOB" in r.output
