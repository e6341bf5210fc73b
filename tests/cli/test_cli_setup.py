"""The shared options of every command, run for real in a subprocess: the model from a factory and a checkpoint,
the data, and their errors, each one clear line."""

from __future__ import annotations

import json

import pytest
import torch

from landscape.models import mlp
from tests.cli.helpers import run, runs_fixture, stdout_json  # noqa: F401 (the fixture runs)


@pytest.mark.slow
def test_json_output_with_model_factory_and_checkpoint(tmp_path):
    model = mlp(in_features=64, hidden=(8,), out_features=10, seed=3)
    ckpt = tmp_path / "w.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    (tmp_path / "mymodels.py").write_text(
        "from landscape.models import mlp\n\n"
        "def small():\n    return mlp(in_features=64, hidden=(8,), out_features=10)\n"
    )
    r = run(
        "spectrum",
        "--model",
        "mymodels:small",
        "--checkpoint",
        str(ckpt),
        "--json",
        "--top-k",
        "2",
        "--probes",
        "2",
        "--steps",
        "10",
        "--out",
        str(tmp_path / "o"),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out["eigenvalues"]) == 2 and out["settings"]["mode"] == "eval"


def test_bad_inputs_give_one_clear_line(tmp_path):
    r = run("spectrum", "--model", "nosuchmodule:factory", "--out", str(tmp_path))
    assert r.returncode == 2 and "cannot import module 'nosuchmodule'" in r.stderr
    assert "Traceback" not in r.stderr
    (tmp_path / "mymodels.py").write_text("import torch\n\ndef small():\n    return torch.nn.Linear(64, 10)\n")
    torch.save({"weight": torch.zeros(3, 3)}, tmp_path / "bad.pt")
    r = run("spectrum", "--model", "mymodels:small", "--checkpoint", str(tmp_path / "bad.pt"), cwd=tmp_path)
    assert r.returncode == 2 and "missing" in r.stderr.lower() and "bias" in r.stderr
    assert "Traceback" not in r.stderr


def test_data_that_does_not_fit_the_model_names_both_shapes(runs):
    _, results = runs
    r = results["wrong_data"]
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "the data do not fit the model" in r.stderr and "(512, 64)" in r.stderr and "(N, 10)" in r.stderr


def test_checkpoint_with_wrong_keys_names_both_ways_to_load_it_and_non_strict_loads_it(runs, monkeypatch):
    _, results = runs
    r = results["wrong_keys"]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "head." in r.stderr and "missing keys" in r.stderr and "unexpected keys" in r.stderr
    assert "strict=False" in r.stderr and "--non-strict" in r.stderr
    from landscape import hessian, trace
    from landscape.cli import build_problem

    root, _ = runs
    monkeypatch.syspath_prepend(str(root))
    kw = dict(unsafe_load=False, data_spec="digits", batch_size=512, loss="cross_entropy", params=(), mode="eval")
    checkpoint = str(root / "renamed.pt")
    problem = build_problem(
        "mymodels:small", checkpoint=checkpoint, dtype=None, seed=0, quiet=True, non_strict=True, **kw
    )
    state = torch.load(checkpoint)
    matching = {k: v for k, v in problem.model.state_dict().items() if k in state}
    assert len(matching) == len(state) - 1 and all(torch.equal(v, state[k]) for k, v in matching.items())
    loaded = stdout_json(results["non_strict"])
    ref = trace(hessian(problem), method="hutchinson", num_matvecs=4, seed=0)
    assert loaded["value"] == pytest.approx(float(ref.value), rel=1e-6)
