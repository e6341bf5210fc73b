"""The console script, run for real in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from landscape.models import mlp


def run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "landscape.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.mark.slow
def test_spectrum_default_job_prints_summary_and_writes_plot(tmp_path):
    r = run("spectrum", "--out", str(tmp_path), "--probes", "4", "--steps", "20")
    assert r.returncode == 0, r.stderr
    assert "top eigenvalues" in r.stdout and "trace" in r.stdout and "density" in r.stdout
    assert (tmp_path / "density.png").stat().st_size > 1000
    assert (tmp_path / "density.pdf").exists()
    data = json.loads((tmp_path / "spectrum.json").read_text())
    assert len(data["eigenvalues"]) == 5 and data["eigenvalues"][0] >= data["eigenvalues"][-1]


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
