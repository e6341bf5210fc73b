"""Minibatch sharpness (:mod:`landscape.scaling.minibatch`): ``lambda_max`` of random minibatch Hessians against dense
references, the loss rescaling, the finite-population factor and argument checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from landscape._checks import seed_int
from landscape.scaling import BatchSharpness, batch_sharpness, finite_population_factor
from tests.scaling.helpers import dense_hessian, seeded, tiny_mlp


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
    gen = seeded(5)
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


def test_finite_population_factor():
    assert finite_population_factor(1, 10) == 1.0
    assert finite_population_factor(10, 10) == 0.0
    assert finite_population_factor(4, 1001) == pytest.approx(997 / (4 * 1000))


@pytest.mark.parametrize("bad", [0, -1, 31])
def test_batch_size_outside_the_data_is_rejected(bad):
    problem, _, _ = tiny_mlp(n=30)
    with pytest.raises(ValueError, match="batch_size"):
        batch_sharpness(problem, bad)


def test_bad_arguments_of_batch_sharpness_raise_clear_errors():
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


def test_a_generator_seed_is_accepted_and_recorded_as_the_int_it_gives():
    problem, _, _ = tiny_mlp(n=30)
    a = batch_sharpness(problem, 6, num_batches=3, seed=seeded(11))
    b = batch_sharpness(problem, 6, num_batches=3, seed=seeded(11))
    np.testing.assert_array_equal(a.values, b.values)
    assert type(a.seed) is int and a.seed == b.seed == seed_int(seeded(11))
    np.testing.assert_array_equal(batch_sharpness(problem, 6, num_batches=3, seed=a.seed).values, a.values)
    with pytest.raises(TypeError, match="seed"):
        batch_sharpness(problem, 6, seed=1.5)
