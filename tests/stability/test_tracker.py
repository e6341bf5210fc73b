"""The edge-of-stability tracker's records, thresholds, warm starts, saved history and figure, for SGD and Adam."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pytest
import torch
from torch import nn

from landscape.operators import hessian_dense
from landscape.plot.stability import edge_of_stability_plot
from landscape.stability import EdgeOfStabilityTracker, stability
from tests.stability.helpers import mlp_problem, one_thread  # noqa: F401

matplotlib.use("Agg")


def test_tracker_records_sharpness_and_threshold_and_warm_starts_save_products(tmp_path):
    model, problem = mlp_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    top2 = EdgeOfStabilityTracker(problem, opt, every=5, k=2, path=tmp_path / "eos.h5", tol=1e-6)
    warm = EdgeOfStabilityTracker(problem, opt, every=5)
    cold = EdgeOfStabilityTracker(problem, opt, every=5, warm_start=False)
    batch = next(iter(problem.batches()))
    for step in range(31):
        if step == 20:
            opt.param_groups[0]["lr"] = 0.02
        assert (top2(step) is None) == (step % 5 != 0)
        warm(step)
        cold(step)
        if step == 30:
            lam = torch.linalg.eigvalsh(hessian_dense(problem)).flip(0)[:2].numpy()
        opt.zero_grad()
        nn.functional.mse_loss(model(batch.inputs), batch.targets).backward()
        opt.step()
    h = top2.history
    assert h["step"].tolist() == list(range(0, 31, 5))
    assert h["sharpness"].shape == (7, 2) and h["converged"].all()
    assert np.allclose(h["sharpness"][-1], lam, rtol=1e-8)
    assert np.allclose(h["threshold"], [2 / 0.05] * 4 + [2 / 0.02] * 3)
    assert np.allclose(h["edge"], h["sharpness"][:, 0] / h["threshold"])
    # Between records the top eigenvector moves little: Lanczos from the previous one needs far fewer products.
    assert np.allclose(warm.history["sharpness"][:, 0], h["sharpness"][:, 0], rtol=1e-4)
    assert warm.history["num_matvecs"][1:].sum() < 0.7 * cold.history["num_matvecs"][1:].sum()
    saved, settings = EdgeOfStabilityTracker.load(tmp_path / "eos.h5")
    assert np.array_equal(saved["sharpness"], h["sharpness"]) and settings["rule"] == "gd"
    ax = top2.plot()
    assert ax.get_xlabel() == "step" and len(ax.get_lines()) == 3


def test_tracker_follows_adam_preconditioned_sharpness():
    model, problem = mlp_problem(seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    tracker = EdgeOfStabilityTracker(problem, opt, every=2)
    first = tracker(0)
    assert math.isnan(first["preconditioned_sharpness"]) and math.isnan(first["threshold"])
    X, y = next(iter(problem.batches())).inputs, next(iter(problem.batches())).targets
    for step in range(1, 5):
        opt.zero_grad()
        nn.functional.mse_loss(model(X), y).backward()
        opt.step()
        tracker(step)
    last = tracker.history
    report = stability(problem, opt, tol=1e-10)
    assert last["preconditioned_sharpness"][-1] == pytest.approx(report.criteria[0].value, rel=1e-5)
    assert last["threshold"][-1] == pytest.approx(38 / 0.01, rel=1e-12)
    assert last["preconditioned_matvecs"][-1] > 0


def test_tracker_checks_its_arguments_and_its_saved_history_draws_the_same_figure(tmp_path):
    _, problem = mlp_problem()
    with pytest.raises(TypeError, match="every"):
        EdgeOfStabilityTracker(problem, "gd", lr=0.05, every=1.5)
    with pytest.raises(ValueError, match="every"):
        EdgeOfStabilityTracker(problem, "gd", lr=0.05, every=0)
    with pytest.raises(ValueError, match="k must be"):
        EdgeOfStabilityTracker(problem, "gd", lr=0.05, k=problem.num_params + 1)
    seed = torch.Generator().manual_seed(3)
    path = tmp_path / "eos.h5"
    tracker = EdgeOfStabilityTracker(problem, "heavy_ball", lr=0.05, momentum=0.9, every=1, k=2, path=path, seed=seed)
    assert isinstance(tracker.settings["seed"], int)
    tracker(0)
    tracker(1)
    history, settings = EdgeOfStabilityTracker.load(path)
    drawn = tracker.plot().get_lines()
    again = edge_of_stability_plot(history, settings["rule"]).get_lines()
    assert [line.get_label() for line in drawn] == [line.get_label() for line in again]
    assert [line.get_label() for line in drawn] == ["λ_max(H)", "λ_2(H)", "(2+2β)/lr"]
    assert all(np.array_equal(a.get_xydata(), b.get_xydata()) for a, b in zip(drawn, again, strict=True))
