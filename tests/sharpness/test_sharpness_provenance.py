"""What every sharpness measure promises: the same seed is bit-identical and the global RNG untouched, the model is
left as it was, results are frozen and self-describing, and bad arguments raise clear errors."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from landscape import Problem
from landscape.sharpness import (
    AverageSharpness,
    KeskarSharpness,
    SAMSharpness,
    average_sharpness,
    keskar_sharpness,
    sam_sharpness,
    sharpness,
)
from tests.helpers import model_untouched, untidy_mlp
from tests.sharpness.helpers import (
    least_squares_problem,
    make_data,
    random_offset,
)


def test_same_seed_is_bit_identical_and_the_global_rng_untouched():
    problem = least_squares_problem(batch_size=7)
    torch.manual_seed(1234)
    np.random.seed(99)
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    runs = []
    for _ in range(2):
        runs.append(
            (
                sam_sharpness(problem, 0.05, steps=4, seed=3),
                sam_sharpness(problem, 0.05, steps=2, m=10, seed=3),
                average_sharpness(problem, 0.05, num_samples=4, seed=3),
                keskar_sharpness(problem, subspace_dim=2, maxiter=3, seed=3),
            )
        )
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_state)
    (s1, m1, a1, k1), (s2, m2, a2, k2) = runs
    assert s1.value == s2.value and torch.equal(s1.perturbation, s2.perturbation) and s1.seed == 3
    assert np.array_equal(m1.history, m2.history) and np.array_equal(m1.subset_values, m2.subset_values)
    assert np.array_equal(a1.samples, a2.samples) and a1.seed == 3
    assert k1.value == k2.value and torch.equal(k1.perturbation, k2.perturbation)
    assert sam_sharpness(problem, 0.05, steps=4, seed=4).value != s1.value
    assert average_sharpness(problem, 0.05, num_samples=4, seed=4).value != a1.value
    gen = torch.Generator().manual_seed(3)
    assert sam_sharpness(problem, 0.05, steps=4, seed=gen).seed is None


def test_model_is_left_untouched():
    X, Y = make_data()
    model = untidy_mlp()
    with model_untouched(model):
        problem = Problem(model, nn.MSELoss(), (X, Y), batch_size=10)
        results = [
            sam_sharpness(problem, 0.05, steps=3, adaptive=True),
            sam_sharpness(problem, 0.05, steps=2, m=15),
            average_sharpness(problem, 0.05, num_samples=3),
            keskar_sharpness(problem, maxiter=2),
        ]
        assert all(r.settings["problem"]["mode"] == "eval" for r in results)


def test_results_are_frozen_and_self_describing():
    problem = least_squares_problem(offset=random_offset())
    r = sam_sharpness(problem, 0.05, p=math.inf, steps=2, seed=5)
    a = average_sharpness(problem, num_samples=3)
    k = keskar_sharpness(problem, maxiter=2)
    assert isinstance(r, SAMSharpness) and isinstance(a, AverageSharpness) and isinstance(k, KeskarSharpness)
    for res in (r, a, k):
        assert res.settings["problem"] == problem.describe() and res.wall_time > 0 and float(res) == res.value
        json.dumps(res.to_dict())
        with pytest.raises(dataclasses.FrozenInstanceError):
            res.value = 0.0
    assert r.settings["method"] == "projected_ascent" and r.to_dict()["p"] == "inf"
    assert "SAM (p = inf" in r.summary() and "average-case" in a.summary() and "Keskar" in k.summary()
    assert r.num_gradient_evaluations + r.num_loss_evaluations <= 1 + 1 + 2


@pytest.mark.parametrize(
    ("func", "kwargs", "match"),
    [
        (sam_sharpness, {"rho": 0.0}, "rho"),
        (sam_sharpness, {"rho": -0.1}, "rho"),
        (sam_sharpness, {"rho": math.nan}, "rho"),
        (sam_sharpness, {"p": 1}, "p must be 2 or inf"),
        (sam_sharpness, {"p": 3.0}, "p must be 2 or inf"),
        (sam_sharpness, {"p": "two"}, "p must be 2 or inf"),
        (sam_sharpness, {"eta": -0.01, "adaptive": True}, "eta"),
        (sam_sharpness, {"steps": -1}, "steps"),
        (sam_sharpness, {"m": 0}, "m must be"),
        (sam_sharpness, {"m": 7}, "does not divide"),
        (sam_sharpness, {"m": 31}, "exceeds"),
        (average_sharpness, {"rho": 0}, "rho"),
        (average_sharpness, {"num_samples": 1}, "num_samples"),
        (keskar_sharpness, {"eps": 0.0}, "eps"),
        (keskar_sharpness, {"subspace_dim": 0}, "subspace_dim"),
        (keskar_sharpness, {"subspace_dim": 9}, "exceeds"),
        (keskar_sharpness, {"maxiter": 0}, "maxiter"),
        (sharpness, {"rho": -1.0}, "rho"),
    ],
)
def test_bad_arguments_raise_clear_errors(func, kwargs, match):
    problem = least_squares_problem()
    with pytest.raises(ValueError, match=match):
        func(problem, **kwargs)


def test_bad_types_raise_clear_errors():
    problem = least_squares_problem()
    with pytest.raises(TypeError, match="seed"):
        sam_sharpness(problem, seed=1.5)
    with pytest.raises(TypeError, match="Problem"):
        average_sharpness(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="divisor of N"):
        sam_sharpness(problem, m=4)


@pytest.mark.parametrize(
    ("func", "kwargs", "match"),
    [
        (sam_sharpness, {"steps": 2.0}, "steps"),
        (sam_sharpness, {"m": 10.0}, "m must be"),
        (sam_sharpness, {"rho": "0.05"}, "rho"),
        (average_sharpness, {"num_samples": 4.0}, "num_samples"),
        (keskar_sharpness, {"maxiter": 2.0}, "maxiter"),
        (keskar_sharpness, {"subspace_dim": 1.0}, "subspace_dim"),
        (sharpness, {"subspace_dim": True}, "subspace_dim"),
    ],
)
def test_arguments_of_the_wrong_type_raise_type_errors(func, kwargs, match):
    problem = least_squares_problem()
    with pytest.raises(TypeError, match=match):
        func(problem, **kwargs)
