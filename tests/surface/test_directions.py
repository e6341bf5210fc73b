"""Directions: reproducible seeding, filter/layer normalisation (Li et al. 2018), validation, no side effects."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from landscape import Problem
from landscape.surface import directions as dirs
from landscape.surface import surface
from tests.conftest import make_case


def _problem(name: str) -> Problem:
    case = make_case(name)
    return Problem(case.model, case.loss_fn, case.batches(), params=case.params, mode=case.mode)


def _state(model: nn.Module):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [m.training for m in model.modules()],
        [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        torch.get_rng_state(),
        np.random.get_state()[1].copy(),
    )


def _assert_same_state(before, after) -> None:
    sd0, modes0, grads0, trng0, nrng0 = before
    sd1, modes1, grads1, trng1, nrng1 = after
    assert sd0.keys() == sd1.keys()
    assert all(torch.equal(sd0[k], sd1[k]) for k in sd0)
    assert modes0 == modes1
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(grads0, grads1, strict=True))
    assert torch.equal(trng0, trng1)
    assert np.array_equal(nrng0, nrng1)


MAKERS = {
    "random": dirs.random,
    "filter_normalized": dirs.filter_normalized,
    "layer_normalized": dirs.layer_normalized,
}


@pytest.mark.parametrize("kind", list(MAKERS))
def test_same_seed_same_directions_different_seed_different(kind):
    problem = _problem("cnn_bn_eval")
    make = MAKERS[kind]
    a, b, c = make(problem, 2, seed=5), make(problem, 2, seed=5), make(problem, 2, seed=6)
    assert a.vectors.shape == (2, problem.num_params)
    assert a.vectors.dtype == torch.float64
    assert torch.equal(a.vectors, b.vectors)
    assert not torch.allclose(a.vectors, c.vectors)
    assert not torch.allclose(a.vectors[0], a.vectors[1])
    assert a.kind == kind and a.seed == 5 and a.num == 2 and len(a) == 2


def test_direction_k_does_not_depend_on_num():
    problem = _problem("mlp")
    one, three = dirs.random(problem, 1, seed=2), dirs.random(problem, 3, seed=2)
    assert torch.equal(one.vectors[0], three.vectors[0])


@pytest.mark.parametrize("kind", list(MAKERS))
@pytest.mark.parametrize("case", ["mlp", "cnn_bn_train"])
def test_directions_leave_no_trace(kind, case):
    problem = _problem(case)
    model = problem.model
    model.train()
    model[0].eval()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.25)
    before = _state(model)
    MAKERS[kind](problem, 2, seed=0)
    _assert_same_state(before, _state(model))


@pytest.mark.parametrize("ignore", ["biasbn", "copy"])
def test_filter_norms_equal_weight_filter_norms(ignore):
    problem = _problem("cnn_bn_eval")
    d = dirs.filter_normalized(problem, 2, seed=1, ignore=ignore)
    weights = problem.params_dict()
    for row in d.vectors:
        parts = problem.unflatten(row)
        for name, w in weights.items():
            if w.dim() > 1:
                w_norms = w.reshape(w.shape[0], -1).norm(dim=1)
                d_norms = parts[name].reshape(w.shape[0], -1).norm(dim=1)
                torch.testing.assert_close(d_norms, w_norms, rtol=0, atol=1e-10)
            elif ignore == "biasbn":
                assert torch.count_nonzero(parts[name]) == 0, name
            else:
                assert torch.equal(parts[name], w), name
    assert {n for n, w in weights.items() if w.dim() <= 1} >= {"1.weight", "1.bias", "0.bias", "4.bias"}


def test_filter_normalized_is_the_gaussian_rescaled_per_filter():
    problem = _problem("mlp")
    raw = problem.unflatten(dirs.random(problem, 1, seed=4).vectors[0])
    fn = problem.unflatten(dirs.filter_normalized(problem, 1, seed=4).vectors[0])
    for name, w in problem.params_dict().items():
        if w.dim() > 1:
            ratio = fn[name] / raw[name]
            # one positive factor per row (filter)
            torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-12, atol=0)
            assert bool((ratio > 0).all())


def test_layer_norms_equal_weight_norms():
    problem = _problem("cnn_bn_eval")
    d = dirs.layer_normalized(problem, 2, seed=0)
    weights = problem.params_dict()
    for row in d.vectors:
        for name, part in problem.unflatten(row).items():
            # the 1e-10 guard in the denominator leaves a relative error of about 1e-10 / ||d||
            torch.testing.assert_close(part.norm(), weights[name].norm(), rtol=1e-9, atol=0)


def test_directions_refer_to_selected_params():
    problem = _problem("mlp_subset")
    for make in MAKERS.values():
        assert make(problem, 2).vectors.shape == (2, problem.num_params)
    d = dirs.filter_normalized(problem, 1)
    parts = problem.unflatten(d.vectors[0])
    assert list(parts) == problem.param_names
    assert torch.count_nonzero(parts["2.bias"]) == 0


def test_from_vectors_accepts_flat_blocks_and_dicts():
    problem = _problem("mlp")
    n = problem.num_params
    v = torch.randn(2, n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a = dirs.from_vectors(problem, v)
    b = dirs.from_vectors(problem, [v[0], v[1]])
    c = dirs.from_vectors(problem, [problem.unflatten(v[0]), problem.unflatten(v[1])])
    d = dirs.from_vectors(problem, v[0].float())
    for x in (a, b, c):
        assert torch.equal(x.vectors, v)
        assert x.kind == "user" and x.seed is None
    assert d.vectors.shape == (1, n) and d.vectors.dtype == torch.float64
    v[0, 0] = 1e6
    assert a.vectors[0, 0] != 1e6  # a copy, not a view of the caller's tensor


def test_from_vectors_rejects_wrong_shapes():
    problem = _problem("mlp")
    n = problem.num_params
    with pytest.raises(ValueError, match=f"problem has {n}"):
        dirs.from_vectors(problem, torch.zeros(2, n + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="shape"):
        dirs.from_vectors(problem, torch.zeros(2, 3, n))
    bad = problem.unflatten(torch.zeros(n, dtype=torch.float64))
    bad["0.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="0.weight"):
        dirs.from_vectors(problem, [bad])
    with pytest.raises(ValueError, match="missing"):
        dirs.from_vectors(problem, [{"0.weight": torch.zeros(5, 6)}])
    with pytest.raises(ValueError, match="empty"):
        dirs.from_vectors(problem, [])
    with pytest.raises(ValueError, match="NaN"):
        dirs.from_vectors(problem, torch.full((n,), float("nan")))


def test_bad_arguments_are_named():
    problem = _problem("mlp")
    with pytest.raises(ValueError, match="num"):
        dirs.random(problem, 0)
    with pytest.raises(ValueError, match="ignore"):
        dirs.filter_normalized(problem, ignore="bn")
    with pytest.raises(TypeError, match="seed"):
        dirs.layer_normalized(problem, seed=1.5)


def _relu_mlp_problems(c: float):
    g = torch.Generator().manual_seed(11)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    scaled = copy.deepcopy(model)
    with torch.no_grad():
        scaled[0].weight.mul_(c)
        scaled[0].bias.mul_(c)
        scaled[2].weight.div_(c)
    X = torch.randn(30, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (30,), generator=g)
    loss = nn.CrossEntropyLoss()
    return model, scaled, X, Problem(model, loss, (X, y), batch_size=16), Problem(scaled, loss, (X, y), batch_size=16)


@pytest.mark.parametrize("ignore", ["biasbn", "copy"])
def test_filter_normalized_surface_is_invariant_to_relu_rescaling(ignore):
    """Li et al.: rescaling layer 1 by c and layer 2 by 1/c changes neither f nor the filter-normalised surface."""
    model, scaled, X, p1, p2 = _relu_mlp_problems(3.0)
    with torch.no_grad():
        torch.testing.assert_close(scaled(X), model(X), rtol=1e-12, atol=1e-12)
    assert abs(p1.loss() - p2.loss()) < 1e-12

    s1 = surface(p1, dirs.filter_normalized(p1, 1, seed=3, ignore=ignore), resolution=7)
    s2 = surface(p2, dirs.filter_normalized(p2, 1, seed=3, ignore=ignore), resolution=7)
    np.testing.assert_allclose(s2.loss, s1.loss, rtol=1e-8, atol=1e-10)
    assert np.ptp(s1.loss) > 1e-2  # the surface is not trivially flat

    r1 = surface(p1, dirs.random(p1, 1, seed=3), resolution=7)
    r2 = surface(p2, dirs.random(p2, 1, seed=3), resolution=7)
    assert np.max(np.abs(r1.loss - r2.loss)) > 1e-2
