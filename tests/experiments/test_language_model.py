"""Smoke test of experiments/language_model.py: a byte-level GPT-2 trained on standard-library source, saved with
save_pretrained, then analysed by the command line (eigen, trace, density, surface, sharpness, report) on a token
file.

The script runs in ``--quick`` mode (a 37,760-parameter model, 20 steps, 16 x 32 tokens) as a subprocess writing
into a temporary folder: it must exit 0, its model directory must load with ``load_hf`` and give the loss the script
printed, the token file must be int64 of shape (16, 32), and every command's JSON must hold finite numbers.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ("eigen", "trace", "density", "surface", "sharpness", "report")


def finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@pytest.mark.slow
def test_quick_run_saves_a_loadable_model_and_token_file_and_every_command_gives_finite_numbers(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    import torch

    import landscape as L
    from landscape import data
    from landscape.checkpoint import load_hf

    proc = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "language_model.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, f"language_model.py failed:\n{proc.stdout}\n{proc.stderr}"
    for name in COMMANDS:
        assert f"landscape {name} --hf gpt2-stdlib --data tokens.pt" in proc.stdout, name

    ids = data.load_tokens(tmp_path / "tokens.pt")
    assert ids.dtype == torch.int64 and tuple(ids.shape) == (16, 32)
    assert 0 <= int(ids.min()) and int(ids.max()) < 256

    model = load_hf(tmp_path / "gpt2-stdlib")
    assert type(model).__name__ == "GPT2LMHeadModel"
    problem = L.Problem(model, L.losses.causal_lm(), data.token_batches(ids, 8))
    printed = float(re.search(r"\.loss\(\) = ([0-9.]+)", proc.stdout).group(1))
    assert problem.loss() == pytest.approx(printed, abs=1e-6)

    results = {name: json.loads((tmp_path / "analysis" / f"{name}.json").read_text()) for name in COMMANDS}
    assert len(results["eigen"]["eigenvalues"]) == 2
    assert all(finite(v) for v in results["eigen"]["eigenvalues"] + results["eigen"]["residuals"])
    assert finite(results["trace"]["value"]) and finite(results["trace"]["stderr"])
    assert all(finite(v) for v in results["density"]["support"]) and finite(results["density"]["trace"])
    surface = results["surface"]["loss"]
    assert len(surface) == 5 and all(len(row) == 5 and all(finite(v) for v in row) for row in surface)
    sharp = results["sharpness"]
    assert all(finite(sharp[k]["value"]) for k in ("lambda_max", "trace", "frobenius", "sam", "asam", "average"))
    report = results["report"]
    assert finite(report["trace"]["value"]) and all(finite(v) for v in report["spectrum"]["eigenvalues"])
    assert (tmp_path / "analysis" / "report.html").is_file()
    for figure in ("density.png", "surface.png"):
        assert (tmp_path / "analysis" / figure).stat().st_size > 1000, figure
