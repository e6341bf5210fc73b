"""Learning rate against batch size (:mod:`landscape.scaling.lr_batch`): the Granziol et al. regimes of
``lambda_max(H_B)``, the weighted fits, the report (table, plot, summary, JSON), the scaling rules and reproducibility.
"""

from __future__ import annotations

import copy
import json

import matplotlib
import numpy as np
import pytest
import torch
from torch import nn

from landscape import Problem
from landscape._checks import seed_int
from landscape.scaling import ScalingReport, batch_sharpness, fit_batch_sharpness, lr_batch_scaling
from tests.scaling.helpers import regression, seeded, tiny_mlp

matplotlib.use("Agg")


def test_lambda_max_grows_as_batch_shrinks_with_excess_like_one_over_b():
    """Rank-one per-example Hessians ``H_i = 2 x_i x_i^T`` with an outlier: ``x_1 = +-3`` (so ``H_B``'s top diagonal
    entry does not fluctuate) and ``x_2..4 ~ N(0, 1)``. Second-order perturbation theory gives
    ``E lambda_max(H_B) - lambda_max(H) ~ sum_j Var((H_B)_{1j}) / (lambda_1 - lambda_j) = 6.75 / B``."""
    g = seeded(0)
    n, d = 4096, 4
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    X[:, 0] = 3.0 * torch.sign(torch.randn(n, generator=g, dtype=torch.float64))
    y = torch.randn(n, 1, generator=g, dtype=torch.float64)
    problem = Problem(nn.Linear(d, 1, bias=False).double(), nn.MSELoss(), (X, y))
    report = lr_batch_scaling(problem, [8, 16, 32, 64, 128], num_batches=32, noise=False)

    lam = report.lambda_mean
    assert np.all(np.diff(lam) < 0), lam  # shrinks as B grows, down to the full-data value
    lam_full = float(torch.linalg.eigvalsh(2 * X.T @ X / n)[-1])
    assert report.lambda_full == pytest.approx(lam_full, rel=1e-8)
    B = report.batch_sizes[:-1]
    slope = np.polyfit(np.log(B), np.log(lam[:-1] - lam_full), 1)[0]
    assert -1.2 < slope < -0.8, slope
    assert report.fit.a == pytest.approx(lam_full, rel=1e-3)
    assert 4.0 < report.fit.b < 12.0
    assert report.fit.chi2_per_dof < 4.0 and report.fit.max_relative_residual < 0.02
    assert report.regime == "outlier"
    np.testing.assert_allclose(report.spectral_lr, 2.0 / lam)
    assert np.all(np.diff(report.predicted_lr) > 0)


def test_isotropic_data_is_recognised_as_bulk_regime():
    """No outlier (``x ~ N(0, I)``): the top of ``H_B`` is the Marchenko-Pastur edge ``~ (1 + sqrt(d/B))^2``."""
    problem, _, _ = regression(4096, 4, noise=1.0, offset=0.0)
    report = lr_batch_scaling(problem, [8, 16, 32, 64, 128, 256], num_batches=16, noise=False)
    assert report.regime == "bulk"
    assert report.fit_bulk.chi2_per_dof < report.fit.chi2_per_dof


def test_weighted_fit_recovers_exact_coefficients():
    n = 1000
    B = np.array([4, 8, 16, 64, n])
    x = (n - B) / (B * (n - 1))
    fit = fit_batch_sharpness(B, 3.0 + 5.0 * x, np.full(5, 0.01), n)
    assert fit.a == pytest.approx(3.0) and fit.b == pytest.approx(5.0)
    assert fit.chi2_per_dof == pytest.approx(0.0, abs=1e-12)
    bulk = fit_batch_sharpness(B, 3.0 + 5.0 * np.sqrt(x), np.full(5, 0.01), n, model="bulk")
    assert bulk.b == pytest.approx(5.0)


# --------------------------------------------------------------------------------------------------- report
def test_report_table_plot_summary_and_dict():
    problem, _, _ = tiny_mlp(n=40)
    report = lr_batch_scaling(problem, [4, 10, 20], num_batches=3, noise_pairs=4)
    assert isinstance(report, ScalingReport)
    assert list(report.batch_sizes) == [4, 10, 20, 40]
    table = report.table()
    assert table.count("\n") == 1 + 4 and "40 (full)" in table and "eps_opt" in table
    assert "noise scale" in report.summary()
    d = report.to_dict()
    json.dumps(d)
    assert d["settings"]["problem"]["mode"] == "eval"
    assert report.anchor_batch_size == 20 and report.anchor_kind == "spectral"
    np.testing.assert_allclose(report.linear_rule(), report.spectral_lr[2] * report.batch_sizes / 20)
    np.testing.assert_allclose(report.worst_batch_lr, 2.0 / np.array([s.values.max() for s in report.sharpness]))
    assert np.all(report.worst_batch_lr <= report.spectral_lr)
    import matplotlib.pyplot as plt

    for kind in ("lr", "sharpness"):
        ax = report.plot(kind=kind)
        assert ax.get_xscale() == "log" and ax.get_legend() is not None
        plt.close(ax.figure)


def test_adam_uses_the_square_root_rule():
    problem, _, _ = tiny_mlp(n=40)
    rel = lr_batch_scaling(problem, [5, 20], optimizer="adam", num_batches=2, noise=False)
    assert rel.anchor_kind == "relative" and rel.noise is None
    np.testing.assert_allclose(rel.predicted_lr, np.sqrt(rel.batch_sizes / 20))
    given = lr_batch_scaling(problem, [5, 20], optimizer="adam", num_batches=2, noise=False, anchor_lr=1e-3)
    np.testing.assert_allclose(given.predicted_lr, 1e-3 * np.sqrt(given.batch_sizes / 20))
    assert "sqrt rule" in given.table()


# ---------------------------------------------------------------------------------------- hygiene
def test_same_seed_is_bit_identical_and_leaves_rng_and_model_untouched():
    problem, _, _ = tiny_mlp(n=30)
    model = problem.model
    model.train()
    before = copy.deepcopy(model.state_dict())
    torch_state = torch.get_rng_state()
    np_state = np.random.get_state()[1].copy()

    a = lr_batch_scaling(problem, [3, 12], num_batches=3, seed=7, noise_pairs=3)
    b = lr_batch_scaling(problem, [3, 12], num_batches=3, seed=7, noise_pairs=3)
    for sa, sb in zip(a.sharpness, b.sharpness, strict=True):
        np.testing.assert_array_equal(sa.values, sb.values)
    assert a.noise.b_simple == b.noise.b_simple and a.noise.b_noise == b.noise.b_noise
    c = batch_sharpness(problem, 3, num_batches=3, seed=8)
    assert not np.array_equal(c.values, a.sharpness[0].values)

    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_state)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert all(p.grad is None for p in model.parameters())


def test_bad_arguments_of_lr_batch_scaling_raise_clear_errors():
    problem, _, _ = tiny_mlp(n=30)
    with pytest.raises(ValueError, match="optimizer"):
        lr_batch_scaling(problem, [4, 8], optimizer="rmsprop")
    with pytest.raises(ValueError, match="below n"):
        lr_batch_scaling(problem, [30])
    with pytest.raises(ValueError, match="batch_sizes"):
        lr_batch_scaling(problem, [4, 40])
    with pytest.raises(ValueError, match="anchor_lr"):
        lr_batch_scaling(problem, [4, 8], anchor_lr=-1.0)


def test_a_generator_seed_is_accepted_and_recorded_as_the_int_it_gives():
    problem, _, _ = tiny_mlp(n=30)
    a = lr_batch_scaling(problem, [3, 12], num_batches=3, seed=seeded(13), noise_pairs=3)
    b = lr_batch_scaling(problem, [3, 12], num_batches=3, seed=seeded(13), noise_pairs=3)
    for sa, sb in zip(a.sharpness, b.sharpness, strict=True):
        np.testing.assert_array_equal(sa.values, sb.values)
        assert sa.seed == a.seed
    assert a.noise.b_simple == b.noise.b_simple and a.noise.b_noise == b.noise.b_noise
    assert type(a.seed) is int and a.seed == b.seed == a.noise.seed == seed_int(seeded(13))
    assert a.to_dict()["seed"] == a.seed
    with pytest.raises(TypeError, match="seed"):
        lr_batch_scaling(problem, [3, 12], seed=None)
