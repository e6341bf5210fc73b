"""Every CLI command on a saved Hugging Face model (``--hf DIR``) with a token file (``--data tokens.pt``), run
in-process through click's runner on a tiny GPT-2; and the bad inputs of this path, each one clear line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from landscape.cli import main

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

VOCAB = 16


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny GPT-2 saved with save_pretrained, a token file of 6 x 8 ids and a second checkpoint directory."""
    root = tmp_path_factory.mktemp("hf")
    cfg = transformers.GPT2Config(
        n_layer=1, n_embd=8, n_head=2, vocab_size=VOCAB, n_positions=16, bos_token_id=0, eos_token_id=0
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg)
    model.save_pretrained(root / "model")
    torch.manual_seed(1)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(root / "other")
    ids = torch.randint(0, VOCAB, (6, 8), generator=torch.Generator().manual_seed(2))
    torch.save(ids, root / "tokens.pt")
    np.save(root / "tokens.npy", ids.numpy())
    return root


def invoke(saved, *args: str, data: str = "tokens.pt") -> dict:
    out = saved / "out"
    argv = [*args, "--hf", str(saved / "model"), "--data", str(saved / data), "--batch-size", "4"]
    argv += ["--out", str(out), "--json", "--quiet", "--no-cache"]
    result = CliRunner().invoke(main, argv, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def finite(x) -> bool:
    """Every number finite, but standard errors (NaN where one draw gives none)."""
    if isinstance(x, dict):
        return all(finite(v) for k, v in x.items() if not k.endswith("stderr"))
    if isinstance(x, (list, tuple)):
        return all(finite(v) for v in x)
    return not isinstance(x, float) or math.isfinite(x)


COMMANDS = {
    "eigen": ["--top-k", "2", "--max-matvecs", "30"],
    "trace": ["--method", "hutchinson", "--num-matvecs", "4"],
    "density": ["--probes", "2", "--steps", "6"],
    "spectrum": ["--top-k", "2", "--probes", "2", "--steps", "6"],
    "surface": ["--directions", "1", "--resolution", "3", "--span", "0.2"],
    "interpolate": ["--to", "OTHER", "--resolution", "3"],
    "sharpness": ["--steps", "1", "--num-samples", "2", "--num-matvecs", "4"],
    "roughness": ["--num-directions", "2", "--points", "3"],
    "stability": ["--lr", "0.1"],
    "scaling": ["--batch-sizes", "2,3", "--num-batches", "2"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_runs_on_a_saved_hugging_face_model(saved, command):
    args = [a if a != "OTHER" else str(saved / "other") for a in COMMANDS[command]]
    result = invoke(saved, command, *args)
    assert finite(result), result


def test_eigen_equals_the_python_api_and_npy_tokens_equal_pt(saved):
    from landscape import Problem, hessian, losses, top_eigen
    from landscape.checkpoint import load_hf
    from landscape.data import load_tokens, token_batches

    cli = invoke(saved, "eigen", "--top-k", "1", "--tol", "1e-8", "--max-matvecs", "60")
    also = invoke(saved, "eigen", "--top-k", "1", "--tol", "1e-8", "--max-matvecs", "60", data="tokens.npy")
    problem = Problem(load_hf(saved / "model"), losses.causal_lm(), token_batches(load_tokens(saved / "tokens.pt"), 4))
    api = top_eigen(hessian(problem), k=1, tol=1e-8, max_matvecs=60, seed=0)
    got = [cli["eigenvalues"][0], also["eigenvalues"][0]] if "eigenvalues" in cli else None
    assert got is not None, cli
    assert got[0] == pytest.approx(float(api.values[0]), rel=1e-4)
    # The same tokens from .npy: equal up to float32 rounding (engine="auto" times its candidates, so two runs may
    # pick different, equally exact, engines; fix engine= for bit-identical reruns).
    assert got[1] == pytest.approx(got[0], rel=1e-5)


def test_report_on_a_saved_hugging_face_model(saved):
    from landscape import Problem, block_spectra, losses
    from landscape.checkpoint import load_hf
    from landscape.data import load_tokens, token_batches

    out = saved / "report"
    argv = ["report", "--hf", str(saved / "model"), "--data", str(saved / "tokens.pt"), "--batch-size", "4"]
    argv += ["--out", str(out), "--quiet", "--no-cache", "--resolution", "3", "--probes", "2", "--steps", "6"]
    argv += ["--batch-sizes", "2,3", "--num-batches", "2", "--blocks", "module"]
    result = CliRunner().invoke(main, argv, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    html = (out / "report.html").read_text()
    assert "causal_lm" in html or "CausalLM" in html
    # --blocks: the section, and the same numbers as the Python API with the same settings.
    blocks = json.loads((out / "report.json").read_text())["blocks"]
    problem = Problem(load_hf(saved / "model"), losses.causal_lm(), token_batches(load_tokens(saved / "tokens.pt"), 4))
    api = block_spectra(problem, by="module", k=1, num_probes=2, num_steps=6, seed=0)
    assert "Block spectra" in html and blocks["names"] == list(api.names)
    assert blocks["lambda_max"] == pytest.approx(api.lambda_max.tolist(), rel=1e-4)
    # The printed summary shows the report's one trace (the page's), not the SLQ estimate of the spectrum pass.
    trace = json.loads((out / "report.json").read_text())["trace"]
    assert f"({trace['how']})" in result.output, (trace, result.output)


def test_lm_chunk_fuses_the_head_and_gives_the_same_spectrum(saved, tmp_path):
    """``--lm-chunk 3``: the output layer fused into the causal LM loss (3 tokens at a time); the top eigenvalues,
    trace and the GGN's top eigenvalue equal the plain loss's; a loss without a head to fuse is one clear line."""
    args = ["eigen", "--top-k", "2", "--tol", "1e-8", "--max-matvecs", "60"]
    plain, fused = invoke(saved, *args), invoke(saved, *args, "--lm-chunk", "3")
    assert fused["eigenvalues"] == pytest.approx(plain["eigenvalues"], rel=1e-4)
    ggn = ["eigen", "--operator", "ggn", "--top-k", "1", "--tol", "1e-8", "--max-matvecs", "60"]
    assert invoke(saved, *ggn, "--lm-chunk", "3")["eigenvalues"] == pytest.approx(
        invoke(saved, *ggn)["eigenvalues"], rel=1e-4
    )
    for extra, expected in [
        (["--loss", "model_output"], "--lm-chunk fuses a language model's output layer into causal_lm or masked_lm"),
        (["--lm-chunk", "0"], "--lm-chunk"),
    ]:
        argv = ["eigen", "--hf", str(saved / "model"), "--data", str(saved / "tokens.pt"), "--lm-chunk", "3", *extra]
        result = CliRunner().invoke(main, [*argv, "--out", str(tmp_path / "o"), "--quiet", "--no-cache"])
        assert result.exit_code == 2 and expected in result.output and "Traceback" not in result.output, result.output
    result = CliRunner().invoke(main, ["eigen", "--lm-chunk", "3", "--out", str(tmp_path / "d"), "--quiet"])
    assert result.exit_code == 2 and "--lm-chunk fuses" in result.output, result.output


@pytest.mark.parametrize(
    "setup, expected",
    [
        ("notadir", "--hf .*(does not exist|not found)"),
        ("emptydir", "--hf .*config.json"),
        ("floats", "token ids must be integers"),
        ("1d", r"shape \(N, T\)"),
    ],
)
def test_bad_hugging_face_inputs_are_one_clear_line(saved, tmp_path, setup, expected):
    hf, data = str(saved / "model"), str(saved / "tokens.pt")
    if setup == "notadir":
        hf = str(tmp_path / "missing")
    elif setup == "emptydir":
        (tmp_path / "empty").mkdir()
        hf = str(tmp_path / "empty")
    elif setup == "floats":
        data = str(tmp_path / "floats.pt")
        torch.save(torch.rand(4, 8), data)
    else:
        data = str(tmp_path / "stream.npy")
        np.save(data, np.arange(10))
    result = CliRunner().invoke(main, ["eigen", "--hf", hf, "--data", data, "--out", str(tmp_path / "o"), "--quiet"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    import re

    assert re.search(expected, result.output), result.output


def test_a_data_factory_returning_dict_batches(saved, tmp_path, monkeypatch):
    """``--data module:factory`` may return dict batches (here with padding and explicit labels)."""
    (tmp_path / "lmdata.py").write_text(
        "import torch\n\n"
        "def batches():\n"
        "    ids = torch.randint(0, 16, (4, 8), generator=torch.Generator().manual_seed(0))\n"
        "    mask = torch.ones_like(ids); mask[1, 5:] = 0\n"
        "    labels = ids.masked_fill(mask == 0, -100)\n"
        "    return [{'input_ids': ids, 'attention_mask': mask, 'labels': labels}]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    argv = ["eigen", "--hf", str(saved / "model"), "--data", "lmdata:batches", "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(main, [*argv, "--json", "--quiet", "--no-cache", "--top-k", "1"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    import lmdata

    from landscape import Problem, hessian, losses, top_eigen
    from landscape.checkpoint import load_hf

    problem = Problem(load_hf(saved / "model"), losses.causal_lm(), lmdata.batches())
    assert problem.num_counted == 4 * 7 - 3  # shifted labels, padding excluded
    api = top_eigen(hessian(problem), k=1, seed=0)
    assert out["eigenvalues"][0] == pytest.approx(float(api.values[0]), rel=1e-4)
