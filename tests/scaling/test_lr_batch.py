"""Batch-size scaling: minibatch sharpness, the gradient noise scale and the lr/batch-size report.

References are built without landscape: per-example gradients of linear least squares in closed form
(``g_i = 2 (x_i^T w - y_i) x_i``, ``H = (2/n) X^T X``) and dense Hessians from ``torch.func.hessian``.
"""

from __future__ import annotations

import copy
import json
import math
import warnings

import matplotlib
import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from landscape import Problem
from landscape.scaling import (
    BatchSharpness,
    NoiseScale,
    ScalingReport,
    batch_sharpness,
    finite_population_factor,
    fit_batch_sharpness,
    gradient_noise_scale,
    lr_batch_scaling,
)

matplotlib.use("Agg")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def regression(n: int, d: int, *, noise: float, offset: float, seed: int = 0, reduction: str = "mean", batch=None):
    """``y = X w* + noise * eps``, ``X ~ N(0, I)``; a linear model at ``w = w* + offset * u`` (``u`` a random unit)."""
    g = _gen(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    w_star = torch.randn(d, 1, generator=g, dtype=torch.float64)
    y = X @ w_star + noise * torch.randn(n, 1, generator=g, dtype=torch.float64)
    u = torch.randn(d, 1, generator=g, dtype=torch.float64)
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_((w_star + offset * u / u.norm()).T)
    return Problem(model, nn.MSELoss(reduction=reduction), (X, y), batch_size=batch), X, y


def exact_noise(problem: Problem, X: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """``|G|^2``, ``tr(Sigma)``, ``tr(H Sigma)``, ``G^T H G`` from all per-example gradients of the mean MSE."""
    w = problem.model.weight.detach().T
    g = 2.0 * (X @ w - y) * X  # (n, d) per-example gradients of (x^T w - y)^2
    n = len(X)
    G = g.mean(0)
    D = g - G
    H = 2.0 * X.T @ X / n
    sigma = D.T @ D / n
    return {
        "g2": float(G @ G),
        "tr_sigma": float(torch.trace(sigma)),
        "tr_h_sigma": float(torch.trace(H @ sigma)),
        "ghg": float(G @ H @ G),
    }


def tiny_mlp(seed: int = 1, n: int = 24, reduction: str = "mean", batch: int | None = 10):
    g = _gen(seed)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.7 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    X = torch.randn(n, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    return Problem(model, nn.CrossEntropyLoss(reduction=reduction), (X, y), batch_size=batch), X, y


def dense_hessian(model: nn.Module, loss_fn, X, y) -> torch.Tensor:
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    w0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def f(w):
        parts, i = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            k = math.prod(shape)
            parts[name] = w[i : i + k].view(shape)
            i += k
        return loss_fn(functional_call(model, parts, (X,)), y)

    return torch.func.hessian(f)(w0)


# ------------------------------------------------------------------------------------------- batch sharpness
def test_full_batch_equals_lambda_max_of_the_full_hessian():
    problem, X, y = tiny_mlp()
    res = batch_sharpness(problem, len(X), tol=1e-8)
    H = dense_hessian(problem.model, nn.CrossEntropyLoss(), X, y)
    assert isinstance(res, BatchSharpness)
    assert res.values.shape == (1,) and res.exact
    assert res.mean == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=1e-7)
    assert res.std == 0.0 and res.stderr == 0.0


def test_each_minibatch_value_is_lambda_max_of_that_minibatch():
    """Replays the documented sampling (randperm from a generator seeded with ``seed``) against dense Hessians."""
    problem, X, y = tiny_mlp(n=30)
    res = batch_sharpness(problem, 7, num_batches=3, seed=5, tol=1e-9)
    gen = _gen(5)
    draws = [torch.randperm(30, generator=gen)[:7] for _ in range(3)]
    for value, idx in zip(res.values, draws, strict=True):
        H = dense_hessian(problem.model, nn.CrossEntropyLoss(), X[idx], y[idx])
        assert value == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=1e-6)
    assert res.mean == pytest.approx(res.values.mean())
    assert res.std == pytest.approx(res.values.std(ddof=1))
    assert res.stderr == pytest.approx(res.values.std(ddof=1) / math.sqrt(3))
    assert res.batch_size == 7 and res.num_batches == 3 and res.num_matvecs > 0 and res.seed == 5
    assert res.max == res.values.max() == res.quantile(1.0)
    assert res.quantile(0.5) == pytest.approx(np.median(res.values))


def test_sum_reduction_is_rescaled_to_estimate_the_full_loss():
    mean, X, _ = tiny_mlp(reduction="mean")
    summed, _, _ = tiny_mlp(reduction="sum")
    n = len(X)
    a = batch_sharpness(mean, 6, num_batches=3, seed=2, tol=1e-9)
    b = batch_sharpness(summed, 6, num_batches=3, seed=2, tol=1e-9)
    np.testing.assert_allclose(b.values, n * a.values, rtol=1e-7)


def test_data_batching_does_not_change_the_minibatches():
    one, _, _ = tiny_mlp(batch=None)
    many, _, _ = tiny_mlp(batch=5)
    a = batch_sharpness(one, 8, num_batches=2, seed=3)
    b = batch_sharpness(many, 8, num_batches=2, seed=3)
    np.testing.assert_array_equal(a.values, b.values)


def test_lambda_max_grows_as_batch_shrinks_with_excess_like_one_over_b():
    """Rank-one per-example Hessians ``H_i = 2 x_i x_i^T`` with an outlier: ``x_1 = +-3`` (so ``H_B``'s top diagonal
    entry does not fluctuate) and ``x_2..4 ~ N(0, 1)``. Second-order perturbation theory gives
    ``E lambda_max(H_B) - lambda_max(H) ~ sum_j Var((H_B)_{1j}) / (lambda_1 - lambda_j) = 6.75 / B``."""
    g = _gen(0)
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


# --------------------------------------------------------------------------------------- gradient noise scale
def test_b_simple_matches_the_per_example_truth_on_linear_regression():
    problem, X, y = regression(2000, 10, noise=1.0, offset=0.7)
    truth = exact_noise(problem, X, y)
    b_true = truth["tr_sigma"] / truth["g2"]
    # Closed form for x ~ N(0, I): tr(Sigma) / |G|^2 ~ d + 1 + noise^2 d / |w - w*|^2 (finite-sample exact value used).
    assert b_true == pytest.approx(11 + 10 / 0.49, rel=0.15)
    res = gradient_noise_scale(problem, small_batch=8, large_batch=128, num_pairs=400, seed=0)
    assert isinstance(res, NoiseScale)
    assert res.b_simple == pytest.approx(b_true, rel=0.10)
    assert abs(res.b_simple - b_true) < 3 * res.b_simple_stderr
    assert res.grad_norm_sq == pytest.approx(truth["g2"], rel=1e-10)


def test_two_batch_estimators_are_unbiased_over_seeds():
    """Batches are a large part of the data here, so the finite-population factor ``(n - B) / (B (n - 1))`` matters
    (``1/B`` would be 25% off for the small batch)."""
    problem, X, y = regression(200, 6, noise=1.0, offset=0.5)
    truth = exact_noise(problem, X, y)
    runs = [gradient_noise_scale(problem, small_batch=50, large_batch=150, num_pairs=25, seed=s) for s in range(24)]
    for attr, key in (("trace_sigma", "tr_sigma"), ("grad_norm_sq_estimate", "g2"), ("trace_h_sigma", "tr_h_sigma")):
        vals = np.array([getattr(r, attr) for r in runs])
        se = vals.std(ddof=1) / math.sqrt(vals.size)
        assert abs(vals.mean() - truth[key]) < 3.5 * se, (attr, vals.mean(), truth[key], se)


def test_eps_max_and_b_noise_match_closed_forms_on_a_quadratic():
    problem, X, y = regression(1500, 8, noise=1.0, offset=0.6)
    truth = exact_noise(problem, X, y)
    res = gradient_noise_scale(problem, small_batch=16, num_pairs=300, seed=1)
    assert res.large_batch == 1500
    assert res.gradient_curvature == pytest.approx(truth["ghg"], rel=1e-10)
    assert res.eps_max == pytest.approx(truth["g2"] / truth["ghg"], rel=1e-10)
    # With the full batch as the large one, |G|^2 is exact and only tr(Sigma) is estimated.
    assert res.grad_norm_sq_estimate == pytest.approx(truth["g2"], rel=1e-10)
    b_noise = truth["tr_h_sigma"] / truth["ghg"]
    assert res.b_noise == pytest.approx(b_noise, rel=0.10)
    assert abs(res.b_noise - b_noise) < 3 * res.b_noise_stderr
    assert res.critical_batch_size == res.b_noise
    for B in (1, 16, 200, 1500):
        x = (1500 - B) / (B * 1499)
        assert res.eps_opt(B) == pytest.approx(res.eps_max / (1 + res.b_noise * x), rel=1e-12)
    assert res.eps_opt(1500) == pytest.approx(res.eps_max)
    assert res.eps_opt(16) < res.eps_opt(200) < res.eps_max


def test_noise_scale_is_invariant_to_the_loss_reduction():
    mean, _, _ = regression(300, 4, noise=1.0, offset=0.5)
    summed, _, _ = regression(300, 4, noise=1.0, offset=0.5, reduction="sum")
    a = gradient_noise_scale(mean, small_batch=5, large_batch=60, num_pairs=6, seed=4)
    b = gradient_noise_scale(summed, small_batch=5, large_batch=60, num_pairs=6, seed=4)
    assert b.b_simple == pytest.approx(a.b_simple, rel=1e-9)
    assert b.b_noise == pytest.approx(a.b_noise, rel=1e-9)
    assert b.eps_max == pytest.approx(a.eps_max / 300, rel=1e-9)


def test_noise_scale_memory_does_not_grow_with_the_pairs():
    """Counted bytes: each pair's deviation is multiplied as it is drawn, so 40 pairs hold what 4 do (33 stored
    deviations and their products would be 33 GB on GPT-2 small)."""
    from tests.linalg.test_thick_restart import _LiveBytes

    problem, _, _ = regression(300, 4, noise=1.0, offset=0.5)
    peaks = []
    for pairs in (4, 40):
        with _LiveBytes() as alloc:
            gradient_noise_scale(problem, small_batch=5, large_batch=60, num_pairs=pairs, seed=4)
        peaks.append(alloc.peak)
    assert peaks[1] <= peaks[0] + 8 * problem.num_params * 8, peaks  # a few vectors of slack, not 36


def test_finite_population_factor():
    assert finite_population_factor(1, 10) == 1.0
    assert finite_population_factor(10, 10) == 0.0
    assert finite_population_factor(4, 1001) == pytest.approx(997 / (4 * 1000))


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


@pytest.mark.parametrize("bad", [0, -1, 31])
def test_batch_size_outside_the_data_is_rejected(bad):
    problem, _, _ = tiny_mlp(n=30)
    with pytest.raises(ValueError, match="batch_size"):
        batch_sharpness(problem, bad)


def test_bad_arguments_raise_clear_errors():
    problem, _, _ = tiny_mlp(n=30)
    with pytest.raises(TypeError, match="batch_size"):
        batch_sharpness(problem, 2.5)
    with pytest.raises(TypeError, match="batch_size"):
        batch_sharpness(problem, True)
    with pytest.raises(ValueError, match="num_batches"):
        batch_sharpness(problem, 4, num_batches=0)
    with pytest.raises(ValueError, match="tol"):
        batch_sharpness(problem, 4, tol=0)
    with pytest.raises(TypeError, match="Problem"):
        batch_sharpness(problem.model, 4)
    with pytest.raises(ValueError, match="smaller than large_batch"):
        gradient_noise_scale(problem, small_batch=10, large_batch=10)
    with pytest.raises(ValueError, match="large_batch"):
        gradient_noise_scale(problem, small_batch=4, large_batch=31)
    with pytest.raises(ValueError, match="small_batch"):
        gradient_noise_scale(problem, small_batch=0)
    with pytest.raises(ValueError, match="optimizer"):
        lr_batch_scaling(problem, [4, 8], optimizer="rmsprop")
    with pytest.raises(ValueError, match="below n"):
        lr_batch_scaling(problem, [30])
    with pytest.raises(ValueError, match="batch_sizes"):
        lr_batch_scaling(problem, [4, 40])
    with pytest.raises(ValueError, match="anchor_lr"):
        lr_batch_scaling(problem, [4, 8], anchor_lr=-1.0)


def test_non_convex_gradient_direction_warns_and_gives_nan():
    """A concave quadratic ``L(w) = -mean((x^T w - y)^2)``: ``G^T H G < 0``."""
    problem, _, _ = regression(100, 3, noise=1.0, offset=0.5)

    class Negated(nn.Module):
        reduction = "mean"

        def forward(self, out, target):
            return -nn.functional.mse_loss(out, target)

    neg = Problem(problem.model, Negated(), problem._data[0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = gradient_noise_scale(neg, small_batch=4, num_pairs=3)
    assert any("not convex" in str(w.message) for w in caught)
    assert math.isnan(res.eps_max) and math.isnan(res.b_noise)
    assert res.b_simple > 0
