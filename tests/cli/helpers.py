"""What the command-line tests share: running ``python -m landscape.cli`` in a subprocess, the tiny model factories,
every analysis command's runs (started together, once per session, by the fixture ``runs``) and the tiny problem
the Python API is compared on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

from landscape.models import mlp


def run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """``python -m landscape.cli ARGS`` in a subprocess, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "landscape.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


TINY = (
    "from landscape.models import mlp\n\n\ndef small():\n    return mlp(in_features=64, hidden=(8,), out_features=10)\n"
)


NOT_TINY = (
    "from landscape.models import mlp\n\n\ndef wide():\n    return mlp(in_features=10, hidden=(8,), out_features=10)\n"
)
PROGRESS_MARKS = ("%|", "it/s", "s/it", "step/s", "point/s")
CACHED = ("eigen", "trace", "density", "interpolate", "sharpness", "roughness", "stability", "scaling", "spectrum")


def start_runs(root: Path) -> dict[str, Any]:
    """Every analysis command's runs in ``root`` (a model file, checkpoints and one ``--out`` per job), started
    together: the runs are independent processes, and interpreter start-up dominates each one. Returns ``{job:
    result}``, a result being one ``CompletedProcess`` or a tuple of them."""
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
        "surface_bf16": lambda: job(
            "surface_bf16",
            "surface",
            "--quiet",
            "--json",
            "--resolution",
            "5",
            "--span",
            "0.5",
            "--directions-dtype",
            "bfloat16",
        ),
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
    return results


_STARTED: dict[str, tuple[Path, dict[str, Any]]] = {}


@pytest.fixture(scope="module", name="runs")
def runs_fixture(tmp_path_factory):
    """``(root, results)`` of :func:`start_runs`: started by the first test module that asks, then shared by the
    others (a module-scoped fixture imported into several modules would start them once per module)."""
    if "cli" not in _STARTED:
        root = tmp_path_factory.mktemp("cli")
        _STARTED["cli"] = root, start_runs(root)
    return _STARTED["cli"]


def stdout_json(r: subprocess.CompletedProcess) -> dict:
    """The JSON a successful run printed."""
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def tiny_problem(root, monkeypatch, seed):
    """The Problem of ``--model mymodels:small`` on the digits, built as the command line builds it."""
    from landscape.cli import build_problem

    monkeypatch.syspath_prepend(str(root))
    kw = dict(checkpoint=None, unsafe_load=False, data_spec="digits", batch_size=512, loss="cross_entropy")
    return build_problem("mymodels:small", params=(), mode="eval", dtype=None, seed=seed, quiet=True, **kw)


def first_json(results, name) -> dict:
    """The JSON of job ``name``'s first run."""
    return stdout_json(results[name][0])
