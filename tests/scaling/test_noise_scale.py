"""The gradient noise scale (:mod:`landscape.scaling.noise_scale`) against per-example truths of linear regression
(McCandlish et al. 2018): ``B_simple``, unbiasedness of the two-batch estimators, ``eps_max`` and ``B_noise``."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from torch import nn

from landscape import Problem
from landscape._checks import seed_int
from landscape.scaling import NoiseScale, gradient_noise_scale
from tests.scaling.helpers import exact_noise, regression, seeded, tiny_mlp


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


def test_bad_arguments_of_gradient_noise_scale_raise_clear_errors():
    problem, _, _ = tiny_mlp(n=30)
    with pytest.raises(ValueError, match="smaller than large_batch"):
        gradient_noise_scale(problem, small_batch=10, large_batch=10)
    with pytest.raises(ValueError, match="large_batch"):
        gradient_noise_scale(problem, small_batch=4, large_batch=31)
    with pytest.raises(ValueError, match="small_batch"):
        gradient_noise_scale(problem, small_batch=0)


def test_a_generator_seed_is_accepted_and_recorded_as_the_int_it_gives():
    problem, _, _ = regression(300, 4, noise=1.0, offset=0.5)
    a = gradient_noise_scale(problem, small_batch=5, large_batch=60, num_pairs=6, seed=seeded(12))
    b = gradient_noise_scale(problem, small_batch=5, large_batch=60, num_pairs=6, seed=seeded(12))
    assert a.b_simple == b.b_simple and a.b_noise == b.b_noise and a.trace_sigma == b.trace_sigma
    assert type(a.seed) is int and a.seed == b.seed == seed_int(seeded(12))
    c = gradient_noise_scale(problem, small_batch=5, large_batch=60, num_pairs=6, seed=a.seed)
    assert c.b_simple == a.b_simple and c.b_noise == a.b_noise
    with pytest.raises(TypeError, match="seed"):
        gradient_noise_scale(problem, small_batch=5, seed="0")
