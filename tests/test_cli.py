"""The console script, run for real in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
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


# --- the analysis subcommands -------------------------------------------------------------------------------------
# The runs are independent processes, so they start together (interpreter start-up dominates each one).

TINY = (
    "from landscape.models import mlp\n\n\ndef small():\n    return mlp(in_features=64, hidden=(8,), out_features=10)\n"
)


NOT_TINY = (
    "from landscape.models import mlp\n\n\ndef wide():\n    return mlp(in_features=10, hidden=(8,), out_features=10)\n"
)
PROGRESS_MARKS = ("%|", "it/s", "s/it", "step/s", "point/s")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from concurrent.futures import ThreadPoolExecutor

    from landscape.models import mlp

    root = tmp_path_factory.mktemp("cli")
    (root / "mymodels.py").write_text(TINY + "\n\n" + NOT_TINY)
    torch.save(mlp(in_features=64, hidden=(8,), out_features=10, seed=1).state_dict(), root / "a.pt")
    torch.save(mlp(in_features=64, hidden=(8,), out_features=10, seed=2).state_dict(), root / "b.pt")
    torch.save(mlp(in_features=64, hidden=(4,), out_features=10, seed=2).state_dict(), root / "other.pt")
    # The right shapes under a wrong name (a head renamed, as after refactoring a model): keys, not shapes, differ.
    state = mlp(in_features=64, hidden=(8,), out_features=10, seed=1).state_dict()
    last = list(state)[-1]
    state[f"head.{last}"] = state.pop(last)
    torch.save(state, root / "renamed.pt")
    tiny = ("--model", "mymodels:small", "--quiet", "--json")

    def job(name, *args, out=True):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one process per core
        cmd = [sys.executable, "-m", "landscape.cli", *args, *(("--out", str(root / name)) if out else ())]
        return subprocess.run(cmd, capture_output=True, text=True, cwd=root, timeout=300, env=env)

    def twice(name, *args):
        """The same command twice into one --out: the second run must answer from the cache."""
        return job(name, *args), job(name, *args)

    def surface_runs():
        args = ("surface", "--quiet", "--json", "--resolution", "5", "--span", "0.5")
        first, second = twice("surface", *args)
        # Same --out, another model: a notice names the stored entries, nothing is overwritten.
        other = job("surface", "surface", "--json", "--resolution", "5", "--span", "0.5", "--model", "mymodels:small")
        return first, second, other, job("surface", *args)

    def corrupt_cache():
        (root / "corrupt").mkdir()
        (root / "corrupt" / "landscape.h5").write_bytes(b"not an HDF5 file")
        args = ("trace", "--model", "mymodels:small", "--num-matvecs", "4")
        return job("corrupt", *args), job("corrupt", *args, "--debug")

    hutchinson = ("--method", "hutchinson", "--num-matvecs", "4")
    interpolation = ("--resolution", "9", "--span", "-0.5", "1.5", "--from", "a.pt", "--to", "b.pt")
    jobs = {
        # Not --quiet: stderr is a pipe, not a terminal, so there must be no progress bar anyway.
        "eigen": lambda: twice("eigen", "eigen", "--model", "mymodels:small", "--json", "--top-k", "2", "--seed", "3"),
        "trace": lambda: twice("trace", "trace", *tiny, "--method", "hutchinson", "--num-matvecs", "20", "--seed", "5"),
        "density": lambda: twice(
            "density", "density", "--json", "--probes", "2", "--steps", "10", "--model", "mymodels:small", "--seed", "2"
        ),
        "surface": surface_runs,
        "interpolate": lambda: twice("interpolate", "interpolate", *tiny, *interpolation),
        "sharpness": lambda: twice(
            "sharpness", "sharpness", *tiny, "--steps", "2", "--num-samples", "4", "--num-matvecs", "10"
        ),
        "roughness": lambda: twice("roughness", "roughness", *tiny, "--num-directions", "4", "--points", "5"),
        "stability": lambda: twice(
            "stability", "stability", *tiny, "--optimizer", "sgd", "--lr", "5", "--momentum", "0.5"
        ),
        "scaling": lambda: twice("scaling", "scaling", *tiny, "--batch-sizes", "16,64", "--num-batches", "2"),
        "spectrum": lambda: twice("spectrum", "spectrum", *tiny, "--top-k", "2", "--probes", "2", "--steps", "8"),
        "bad_optimizer": lambda: job("bad", "stability", "--optimizer", "nope"),
        "wrong_data": lambda: job("wrong", "trace", "--model", "mymodels:wide", "--quiet"),
        "wrong_to": lambda: job("wrong_to", "interpolate", "--model", "mymodels:small", "--to", "other.pt"),
        "wrong_keys": lambda: job("wrong_keys", "trace", *tiny, "--checkpoint", "renamed.pt", *hutchinson),
        "non_strict": lambda: job(
            "non_strict", "trace", *tiny, "--checkpoint", "renamed.pt", *hutchinson, "--non-strict"
        ),
        "corrupt": corrupt_cache,
    }
    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        futures = {name: pool.submit(fn) for name, fn in jobs.items()}
        results = {name: f.result() for name, f in futures.items()}
    return root, results


def _json(r: subprocess.CompletedProcess) -> dict:
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _tiny_problem(root, monkeypatch, seed):
    from landscape.cli import build_problem

    monkeypatch.syspath_prepend(str(root))
    kw = dict(checkpoint=None, unsafe_load=False, data_spec="digits", batch_size=512, loss="cross_entropy")
    return build_problem("mymodels:small", params=(), mode="eval", dtype=None, seed=seed, quiet=True, **kw)


def _first(results, name) -> dict:
    return _json(results[name][0])


def test_eigen_matches_the_python_api(runs, monkeypatch):
    from landscape import hessian, top_eigen

    root, results = runs
    out = _first(results, "eigen")
    ref = top_eigen(hessian(_tiny_problem(root, monkeypatch, 3)), k=2, seed=3)
    assert out["eigenvalues"] == pytest.approx(ref.values.tolist(), rel=1e-6)
    assert out["residuals"] == pytest.approx(ref.residuals.tolist(), rel=1e-3, abs=1e-9)
    assert len(out["error_bounds"]) == 2 and out["eigenvalues"][0] >= out["eigenvalues"][1]


def test_trace_matches_the_python_api(runs, monkeypatch):
    from landscape import hessian, trace

    root, results = runs
    out = _first(results, "trace")
    ref = trace(hessian(_tiny_problem(root, monkeypatch, 5)), method="hutchinson", num_matvecs=20, seed=5)
    assert out["method"] == ref.method == "hutchinson" and out["num_matvecs"] == ref.num_matvecs
    assert out["value"] == pytest.approx(float(ref.value), rel=1e-6)
    assert out["stderr"] == pytest.approx(float(ref.stderr), rel=1e-6)


def test_density_writes_plot(runs):
    root, results = runs
    out = _first(results, "density")
    assert out["support"][0] <= out["support"][1] and out["trace_stderr"] >= 0
    assert (root / "density" / "density.png").stat().st_size > 1000


def test_surface_second_run_comes_from_cache(runs):
    root, results = runs
    first, second = (_json(r) for r in results["surface"][:2])
    assert first["points_from_cache"] == 0 and second["points_from_cache"] == second["num_points"] == 25
    assert not first["from_cache"] and second["from_cache"]
    assert second["loss"] == first["loss"]
    assert first["min_loss"] <= first["centre_loss"] <= first["max_loss"]
    assert (root / "surface" / "landscape.h5").exists() and (root / "surface" / "surface.png").stat().st_size > 1000


def test_interpolate_matches_the_python_api(runs, monkeypatch):
    from landscape.checkpoint import load_checkpoint
    from landscape.models import mlp
    from landscape.surface import interpolate

    root, results = runs
    out = _first(results, "interpolate")
    a, b = (mlp(in_features=64, hidden=(8,), out_features=10) for _ in range(2))
    load_checkpoint(a, root / "a.pt")
    load_checkpoint(b, root / "b.pt")
    ref = interpolate(_tiny_problem(root, monkeypatch, 0), a, b, span=(-0.5, 1.5), resolution=9)
    assert out["coords"] == ref.coords[0].tolist() and out["loss"] == ref.loss.tolist()
    assert out["accuracy"] == ref.accuracy.tolist()
    assert out["loss_from"] == ref.loss[2] and out["loss_to"] == ref.loss[6] and out["barrier"] >= 0
    for ext in ("png", "pdf"):
        assert (root / "interpolate" / f"interpolation.{ext}").stat().st_size > 1000
    assert json.loads((root / "interpolate" / "interpolate.json").read_text())["loss"] == out["loss"]


def test_sharpness_roughness_stability_scaling(runs):
    root, results = runs
    sharp = _first(results, "sharpness")
    assert "keskar" not in sharp and sharp["sam"]["value"] > 0 and sharp["lambda_max"]
    rough = _first(results, "roughness")
    assert rough["value"] >= 0 and len(rough["total_variations"]) == 4
    unstable = _first(results, "stability")  # lr = 5 is unstable for this model; the exit code is still 0
    assert unstable["optimizer"] in ("sgd", "heavy_ball") and unstable["stable"] is False and unstable["criteria"]
    scaling = _first(results, "scaling")
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
    dens = spectral_density(hessian(_tiny_problem(root, monkeypatch, 2)), num_probes=2, num_steps=10, seed=2)
    out = _first(results, "density")
    scale = float(np.abs(dens.nodes).max())  # float32 products: nodes near zero agree to rounding of the largest
    np.testing.assert_allclose(out["nodes"], dens.nodes, rtol=1e-6, atol=1e-6 * scale)
    np.testing.assert_allclose(out["weights"], dens.weights, rtol=1e-6, atol=1e-9)
    assert out["trace"] == pytest.approx(float(dens.trace().value), rel=1e-6)
    problem = _tiny_problem(root, monkeypatch, 0)  # the other jobs ran with the default --seed 0
    ref = sharpness(problem, 0.05, seed=0, steps=2, num_samples=4, num_matvecs=10, keskar=False).to_dict()
    out = _first(results, "sharpness")
    for part in ("sam", "asam", "average", "sam_inf", "trace", "frobenius", "lambda_max"):
        assert out[part]["value"] == pytest.approx(ref[part]["value"], rel=1e-6), part
    ref = roughness_index(problem, 4, 0.1, 5, seed=0).to_dict()
    out = _first(results, "roughness")
    assert out["value"] == pytest.approx(ref["value"], rel=1e-9)
    assert out["total_variations"] == pytest.approx(ref["total_variations"], rel=1e-9)
    ref = stability(problem, "sgd", 5.0, momentum=0.5, seed=0).to_dict()
    out = _first(results, "stability")
    assert out["max_stable_lr"] == pytest.approx(ref["max_stable_lr"], rel=1e-6)
    assert [c["value"] for c in out["criteria"]] == pytest.approx([c["value"] for c in ref["criteria"]], rel=1e-6)
    ref = lr_batch_scaling(problem, [16, 64], optimizer="sgd", num_batches=2, seed=0).to_dict()
    out = _first(results, "scaling")
    assert out["batch_sizes"] == ref["batch_sizes"]
    assert out["lambda_mean"] == pytest.approx(ref["lambda_mean"], rel=1e-6)


CACHED = ("eigen", "trace", "density", "interpolate", "sharpness", "roughness", "stability", "scaling", "spectrum")


@pytest.mark.parametrize("name", CACHED)
def test_second_run_answers_from_the_cache(runs, name):
    root, results = runs
    first, second = (_json(r) for r in results[name][:2])
    assert first.pop("from_cache") is False and second.pop("from_cache") is True
    # The same numbers, wall times included: nothing was recomputed.
    assert json.dumps(second, sort_keys=True) == json.dumps(first, sort_keys=True)
    assert (root / name / "landscape.h5").exists()


def test_no_progress_bars_when_stderr_is_not_a_terminal(runs):
    _, results = runs
    eigen = results["eigen"][0]  # run without --quiet
    assert eigen.returncode == 0 and not any(mark in eigen.stderr for mark in PROGRESS_MARKS), eigen.stderr
    for name in CACHED:
        for r in results[name]:
            assert not any(mark in r.stderr for mark in PROGRESS_MARKS), (name, r.stderr)


def test_analysis_commands_reject_bad_input_in_one_line(runs):
    _, results = runs
    r = results["bad_optimizer"]
    assert r.returncode == 2 and "--optimizer 'nope'" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_data_that_does_not_fit_the_model_names_both_shapes(runs):
    _, results = runs
    r = results["wrong_data"]
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "the data do not fit the model" in r.stderr and "(512, 64)" in r.stderr and "(N, 10)" in r.stderr


def test_second_checkpoint_that_does_not_fit_lists_the_keys(runs):
    _, results = runs
    r = results["wrong_to"]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "--to other.pt" in r.stderr and "0.weight" in r.stderr and "shape" in r.stderr


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
    loaded = _json(results["non_strict"])
    ref = trace(hessian(problem), method="hutchinson", num_matvecs=4, seed=0)
    assert loaded["value"] == pytest.approx(float(ref.value), rel=1e-6)


def test_corrupt_cache_is_one_line_and_exit_2_with_traceback_only_under_debug(runs):
    root, results = runs
    plain, debug = results["corrupt"]
    assert plain.returncode == 2 and len(plain.stderr.strip().splitlines()) == 1, plain.stderr
    assert "landscape.h5" in plain.stderr and "not an HDF5 file" in plain.stderr and "Traceback" not in plain.stderr
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    assert (root / "corrupt" / "landscape.h5").read_bytes() == b"not an HDF5 file"  # never overwritten


def test_cache_of_another_model_is_reported_and_kept(runs):
    _, results = runs
    first, _, other, again = results["surface"]
    assert other.returncode == 0, other.stderr
    notice = [line for line in other.stderr.splitlines() if line.startswith("note:")]
    assert len(notice) == 1 and "1 earlier surface result" in notice[0], other.stderr
    assert "another architecture" in notice[0] and "other weights" in notice[0] and "kept" in notice[0]
    assert not _json(other)["from_cache"]
    rerun = _json(again)  # the first model's entry is still there: answered from the cache
    assert rerun["from_cache"] and rerun["loss"] == _json(first)["loss"]
