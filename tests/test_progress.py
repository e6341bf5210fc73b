"""Progress bars: written only when enabled, never changing a result."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from landscape.progress import NoProgress, progress


def test_enabled_bar_writes_to_the_given_stream_with_an_eta():
    stream = io.StringIO()
    with progress(10, "points", True, file=stream, unit="point") as bar:
        for _ in range(10):
            bar.update(1)
    text = stream.getvalue()
    assert "points" in text and "/10" in text and "point/s" in text and "<" in text  # elapsed<remaining (ETA)
    stream = io.StringIO()
    assert list(progress(range(3), "wrapped", True, file=stream)) == [0, 1, 2]
    assert "wrapped" in stream.getvalue() and "/3" in stream.getvalue()


def test_disabled_bar_writes_nothing(capsys):
    stream = io.StringIO()
    bar = progress(5, "silent", False, file=stream)
    assert isinstance(bar, NoProgress)
    bar.update(3)
    bar.set_postfix_str("x")
    bar.close()
    assert list(progress([1, 2], "silent", False, file=stream)) == [1, 2]
    assert list(progress(None, "silent", False)) == []
    assert stream.getvalue() == ""
    captured = capsys.readouterr()
    assert captured.out == captured.err == ""


@pytest.fixture(scope="module")
def problem():
    from landscape import Problem
    from landscape.models import mlp

    gen = torch.Generator().manual_seed(0)
    X = torch.randn(96, 6, generator=gen)
    y = torch.randint(0, 3, (96,), generator=gen)
    model = mlp(in_features=6, hidden=(5,), out_features=3, seed=1)
    return Problem(model, torch.nn.CrossEntropyLoss(), (X, y), batch_size=40)


def _same(a, b) -> None:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        assert np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)
    else:
        assert a == b or (a != a and b != b)


def _analyses(problem, on: bool) -> dict:
    from landscape import hessian, roughness_index, spectral_density, top_eigen, trace
    from landscape.models import mlp
    from landscape.scaling import lr_batch_scaling
    from landscape.sharpness import sharpness
    from landscape.spectrum import spectrum
    from landscape.stability import stability
    from landscape.surface import filter_normalized, interpolate, surface

    H = hessian(problem, engine="double_backward", block="loop")
    start = mlp(in_features=6, hidden=(5,), out_features=3, seed=9)
    runs = {
        "eigen": top_eigen(H, k=2, seed=1, progress=on).values,
        "trace": trace(H, method="hutchinson", num_matvecs=12, seed=2, progress=on).value,
        "hutch++": trace(H, method="hutch++", num_matvecs=12, seed=2, progress=on).value,
        "density": spectral_density(H, num_probes=2, num_steps=6, seed=3, progress=on).nodes,
        "spectrum": spectrum(
            problem, k=2, num_probes=2, num_steps=6, engine="double_backward", block="loop", seed=4, progress=on
        ).density.weights,
        "surface": surface(problem, filter_normalized(problem, 2, seed=5), resolution=5, chunk=7, progress=on).loss,
        "interpolate": interpolate(problem, start, problem.model, resolution=6, progress=on).loss,
        "roughness": roughness_index(problem, 3, points=5, seed=6, progress=on).total_variations,
        "sharpness": sharpness(
            problem, steps=2, num_samples=3, num_matvecs=6, keskar=False, seed=7, progress=on
        ).sam.value,
        "scaling": lr_batch_scaling(problem, [16, 32], num_batches=2, noise=False, seed=8, progress=on).lambda_mean,
        "stability": stability(problem, "sgd", 0.1, batch_size=16, seed=9, progress=on).criteria[0].value,
    }
    return {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in runs.items()}


def test_results_are_bit_identical_with_and_without_progress(problem, capsys):
    capsys.readouterr()
    silent = _analyses(problem, False)
    assert capsys.readouterr().err == ""  # the library is silent by default
    shown = _analyses(problem, True)
    err = capsys.readouterr().err
    assert "Lanczos" in err and "grid points" in err and "roughness directions" in err and "batch sizes" in err
    for name, value in shown.items():
        _same(value, silent[name])
