"""Directions: reproducible seeding, filter/layer/model normalisation (Li et al. 2018), Hessian axes against a dense
eigendecomposition, trajectory PCA against numpy's SVD, validation, no side effects."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from landscape import Problem
from landscape.surface import directions as dirs
from landscape.surface import surface
from tests.conftest import make_case, reference_hessian, reference_loss_fn, reference_point
from tests.helpers import gaussian_weights
from tests.surface.helpers import assert_same_state, model_state, named_problem, set_params, untidy_model

MAKERS = {
    "random": dirs.random,
    "filter_normalized": dirs.filter_normalized,
    "layer_normalized": dirs.layer_normalized,
    "model_normalized": dirs.model_normalized,
}


@pytest.mark.parametrize("kind", list(MAKERS))
def test_same_seed_same_directions_different_seed_different(kind):
    problem = named_problem("cnn_bn_eval")
    make = MAKERS[kind]
    a, b, c = make(problem, 2, seed=5), make(problem, 2, seed=5), make(problem, 2, seed=6)
    assert a.vectors.shape == (2, problem.num_params)
    assert a.vectors.dtype == torch.float64
    assert torch.equal(a.vectors, b.vectors)
    assert not torch.allclose(a.vectors, c.vectors)
    assert not torch.allclose(a.vectors[0], a.vectors[1])
    assert a.kind == kind and a.seed == 5 and a.num == 2 and len(a) == 2


def test_direction_k_does_not_depend_on_num():
    problem = named_problem("mlp")
    one, three = dirs.random(problem, 1, seed=2), dirs.random(problem, 3, seed=2)
    assert torch.equal(one.vectors[0], three.vectors[0])


@pytest.mark.parametrize("kind", list(MAKERS))
@pytest.mark.parametrize("case", ["mlp", "cnn_bn_train"])
def test_directions_leave_no_trace(kind, case):
    problem = named_problem(case)
    model = untidy_model(problem)
    before = model_state(model)
    MAKERS[kind](problem, 2, seed=0)
    assert_same_state(before, model_state(model))


@pytest.mark.parametrize("ignore", ["biasbn", "copy"])
def test_filter_norms_equal_weight_filter_norms(ignore):
    problem = named_problem("cnn_bn_eval")
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
    problem = named_problem("mlp")
    raw = problem.unflatten(dirs.random(problem, 1, seed=4).vectors[0])
    fn = problem.unflatten(dirs.filter_normalized(problem, 1, seed=4).vectors[0])
    for name, w in problem.params_dict().items():
        if w.dim() > 1:
            ratio = fn[name] / raw[name]
            # one positive factor per row (filter)
            torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-12, atol=0)
            assert bool((ratio > 0).all())


def test_layer_norms_equal_weight_norms():
    problem = named_problem("cnn_bn_eval")
    d = dirs.layer_normalized(problem, 2, seed=0)
    weights = problem.params_dict()
    for row in d.vectors:
        for name, part in problem.unflatten(row).items():
            # the 1e-10 guard in the denominator leaves a relative error of about 1e-10 / ||d||
            torch.testing.assert_close(part.norm(), weights[name].norm(), rtol=1e-9, atol=0)


def test_directions_refer_to_selected_params():
    problem = named_problem("mlp_subset")
    for make in MAKERS.values():
        assert make(problem, 2).vectors.shape == (2, problem.num_params)
    d = dirs.filter_normalized(problem, 1)
    parts = problem.unflatten(d.vectors[0])
    assert list(parts) == problem.param_names
    assert torch.count_nonzero(parts["2.bias"]) == 0


def test_from_vectors_accepts_flat_blocks_and_dicts():
    problem = named_problem("mlp")
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
    problem = named_problem("mlp")
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
    problem = named_problem("mlp")
    with pytest.raises(ValueError, match="num"):
        dirs.random(problem, 0)
    with pytest.raises(ValueError, match="ignore"):
        dirs.filter_normalized(problem, ignore="bn")
    with pytest.raises(TypeError, match="seed"):
        dirs.layer_normalized(problem, seed=1.5)


def test_counts_of_a_wrong_type_are_type_errors_and_a_generator_seeds_like_the_int_it_gives():
    problem = named_problem("mlp")
    for bad in (1.5, "2", True, None):
        with pytest.raises(TypeError, match="num"):
            dirs.random(problem, bad)
    with pytest.raises(TypeError, match="k"):
        dirs.hessian_axes(problem, 2.0)
    assert dirs.random(problem, np.int64(2), seed=np.int64(3)).num == 2
    seed = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(5)).item())
    for make in (dirs.random, dirs.filter_normalized, dirs.layer_normalized, dirs.model_normalized):
        drawn = make(problem, 2, seed=torch.Generator().manual_seed(5))
        assert drawn.seed == seed and type(drawn.seed) is int  # the int drawn from the generator is recorded
        assert torch.equal(drawn.vectors, make(problem, 2, seed=seed).vectors)


def _relu_mlp_problems(c: float):
    g = torch.Generator().manual_seed(11)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    gaussian_weights(model, g)
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


# ---------------------------------------------------------------------------------------------- model_normalized


@pytest.mark.parametrize("case", ["mlp", "mlp_subset", "cnn_bn_eval"])
def test_model_normalized_norm_equals_weights_norm(case):
    problem = named_problem(case)
    d = dirs.model_normalized(problem, 3, seed=2)
    w_norm = problem.params_vector().norm()
    torch.testing.assert_close(d.vectors.norm(dim=1), w_norm.expand(3), rtol=0, atol=1e-10)
    assert d.kind == "model_normalized" and d.settings["normalization"] == "model"
    assert d.settings["weights_norm"] == pytest.approx(float(w_norm), rel=1e-15)


def test_model_normalized_is_the_gaussian_rescaled_as_a_whole():
    problem = named_problem("cnn_bn_eval")
    raw = dirs.random(problem, 2, seed=4).vectors
    d = dirs.model_normalized(problem, 2, seed=4).vectors
    ratio = d / raw
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-12, atol=0)
    assert bool((ratio > 0).all())


def test_model_normalized_entries_are_zero_mean_gaussian():
    g = torch.Generator().manual_seed(0)
    model = nn.Linear(200, 50).double()
    gaussian_weights(model, g)
    problem = Problem(model, nn.MSELoss(), (torch.zeros(2, 200, dtype=torch.float64), torch.zeros(2, 50)))
    d = dirs.model_normalized(problem, 1, seed=9).vectors[0].numpy()
    n = d.size
    sigma = float(problem.params_vector().norm()) / np.sqrt(n)
    z = d / d.std()
    assert abs(d.mean()) < 4 * sigma / np.sqrt(n)
    assert abs(d.std() / sigma - 1) < 1e-3  # ||d|| = ||w|| fixes the scale up to the (tiny) mean
    assert abs(np.mean(z**3)) < 4 * np.sqrt(6 / n)  # skewness of a Gaussian: 0 +- sqrt(6/n)
    assert abs(np.mean(z**4) - 3) < 4 * np.sqrt(24 / n)  # kurtosis: 3 +- sqrt(24/n)
    assert abs(np.mean(np.abs(z)) - np.sqrt(2 / np.pi)) < 0.02


def test_model_normalized_refuses_zero_weights():
    model = nn.Linear(3, 2).double()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    problem = Problem(model, nn.MSELoss(), (torch.zeros(4, 3, dtype=torch.float64), torch.zeros(4, 2)))
    with pytest.raises(ValueError, match="zero"):
        dirs.model_normalized(problem)


# ------------------------------------------------------------------------------------------------- hessian_axes


def _match_up_to_sign(vectors: torch.Tensor, reference: torch.Tensor) -> float:
    """Largest ``min(||v - r||, ||v + r||)`` over matching rows."""
    return max(min(float((v - r).norm()), float((v + r).norm())) for v, r in zip(vectors, reference, strict=True))


@pytest.mark.parametrize("case", ["mlp", "mlp_subset", "mse", "cnn_bn_eval"])
def test_hessian_axes_are_the_top_eigenvectors_of_the_dense_hessian(case):
    c = make_case(case)
    problem = named_problem(case)
    values, vectors = torch.linalg.eigh(reference_hessian(c))
    d = dirs.hessian_axes(problem, 2, tol=1e-10)
    assert d.kind == "hessian_axes" and d.seed == 0
    assert d.vectors.shape == (2, problem.num_params) and d.vectors.dtype == torch.float64
    np.testing.assert_allclose(d.settings["eigenvalues"], values.flip(0)[:2].numpy(), rtol=0, atol=1e-8)
    assert _match_up_to_sign(d.vectors, vectors.flip(1)[:, :2].T) < 1e-6
    torch.testing.assert_close(d.vectors.norm(dim=1), torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-14)
    assert d.settings["converged"] == [True, True]
    assert d.settings["num_matvecs"] > 0
    assert max(d.settings["residuals"]) <= 1e-10 * abs(float(values.abs().max())) * 1.0001
    assert d.settings["operator"] == "hessian" and d.settings["which"] == "largest"


def test_hessian_axes_smallest_are_the_bottom_eigenvectors():
    c = make_case("mlp")
    values, vectors = torch.linalg.eigh(reference_hessian(c))
    d = dirs.hessian_axes(named_problem("mlp"), 2, which="smallest", tol=1e-10)
    np.testing.assert_allclose(d.settings["eigenvalues"], values[:2].numpy(), rtol=0, atol=1e-8)
    assert _match_up_to_sign(d.vectors, vectors[:, :2].T) < 1e-6


def _reference_ggn(case) -> torch.Tensor:
    """``J^T (d^2 loss / d out^2) J`` on all the data, built with torch.func only (eval mode)."""
    model = copy.deepcopy(case.model).eval()
    fixed = {k: v.detach() for k, v in {**dict(model.named_parameters()), **dict(model.named_buffers())}.items()}
    named = dict(model.named_parameters())
    names = case.selected()

    def outputs(flat):
        params, i = {}, 0
        for n in names:
            params[n] = flat[i : i + named[n].numel()].view(named[n].shape)
            i += named[n].numel()
        return torch.func.functional_call(model, {**fixed, **params}, (case.X,))

    w = reference_point(case)
    out = outputs(w)
    jac = torch.func.jacrev(outputs)(w).reshape(out.numel(), -1)
    hess_out = torch.func.hessian(lambda o: case.loss_fn(o.view(out.shape), case.y))(out.reshape(-1))
    return jac.T @ hess_out @ jac


@pytest.mark.parametrize("case", ["mlp", "mse"])
def test_ggn_axes_are_the_top_eigenvectors_of_the_dense_ggn(case):
    c = make_case(case)
    values, vectors = torch.linalg.eigh(_reference_ggn(c))
    d = dirs.hessian_axes(named_problem(case), 2, operator="ggn", tol=1e-10)
    np.testing.assert_allclose(d.settings["eigenvalues"], values.flip(0)[:2].numpy(), rtol=0, atol=1e-8)
    assert _match_up_to_sign(d.vectors, vectors.flip(1)[:, :2].T) < 1e-6
    assert d.settings["operator"] == "ggn"


def test_hessian_axes_sign_convention_and_reproducibility():
    problem = named_problem("mlp")
    a, b = dirs.hessian_axes(problem, 2, seed=3, tol=1e-10), dirs.hessian_axes(problem, 2, seed=3, tol=1e-10)
    # Equal up to rounding only: the operator's automatic engine choice is timing-based.
    torch.testing.assert_close(a.vectors, b.vectors, rtol=0, atol=1e-12)
    for row in a.vectors:
        assert float(row[row.abs().argmax()]) > 0
    # Another start vector converges to the same axes; the sign convention makes them equal, not just parallel.
    c = dirs.hessian_axes(problem, 2, seed=4, tol=1e-10)
    assert c.seed == 4
    torch.testing.assert_close(c.vectors, a.vectors, rtol=0, atol=1e-7)


def test_hessian_axes_follow_the_problem_dtype_and_parameter_order():
    c = make_case("mlp_subset")
    problem32 = Problem(c.model, c.loss_fn, c.batches(), params=c.params, dtype=torch.float32)
    d32 = dirs.hessian_axes(problem32, 2, tol=1e-5)
    d64 = dirs.hessian_axes(named_problem("mlp_subset"), 2, tol=1e-10)
    assert d32.vectors.dtype == torch.float32 and d32.settings["params"] == ["0.weight", "2.weight", "2.bias"]
    assert _match_up_to_sign(d32.vectors.double(), d64.vectors) < 1e-3
    # Moving along axis 0 raises the loss by lambda_0 a^2 / 2 to second order: the parameter order is right.
    f, w = reference_loss_fn(c), reference_point(c)
    a, lam = 1e-3, d64.settings["eigenvalues"][0]
    with torch.no_grad():
        curvature = (f(w + a * d64.vectors[0]) - 2 * f(w) + f(w - a * d64.vectors[0])) / a**2
    assert float(curvature) == pytest.approx(lam, rel=1e-5)


def test_hessian_axes_leave_no_trace():
    problem = named_problem("cnn_bn_train")
    model = untidy_model(problem)
    before = model_state(model)
    dirs.hessian_axes(problem, 1, tol=1e-3)
    dirs.hessian_axes(problem, 1, operator="ggn", tol=1e-3)
    assert_same_state(before, model_state(model))


def test_hessian_axes_bad_arguments_are_named():
    problem = named_problem("mlp")
    with pytest.raises(ValueError, match="operator"):
        dirs.hessian_axes(problem, operator="fisher")
    with pytest.raises(ValueError, match="which"):
        dirs.hessian_axes(problem, which="LA")
    with pytest.raises(ValueError, match="k"):
        dirs.hessian_axes(problem, 0)
    with pytest.raises(ValueError, match="only 53 parameters"):
        dirs.hessian_axes(problem, 54)
    with pytest.raises(TypeError, match="seed"):
        dirs.hessian_axes(problem, seed=None)


# ---------------------------------------------------------------------------------------------------------- pca


def _random_checkpoints(problem: Problem, count: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(count, problem.num_params, generator=g, dtype=torch.float64)
    return problem.params_vector() + noise * torch.linspace(1.0, 0.1, count, dtype=torch.float64)[:, None]


def test_pca_matches_numpy_svd_of_the_deviations():
    problem = named_problem("mlp")
    points = _random_checkpoints(problem, 6, seed=0)
    d = dirs.pca(problem, list(points), num=3)
    m = (points - problem.params_vector()).numpy()
    _, s, vt = np.linalg.svd(m, full_matrices=False)
    assert d.kind == "pca" and d.seed is None and d.vectors.shape == (3, problem.num_params)
    assert _match_up_to_sign(d.vectors, torch.from_numpy(vt[:3])) < 1e-12
    np.testing.assert_allclose(d.settings["singular_values"], s, rtol=1e-12)
    np.testing.assert_allclose(d.settings["explained_variance"], s[:3] ** 2 / np.sum(s**2), rtol=1e-12)
    assert d.settings["num_checkpoints"] == 6 and d.settings["rank"] == 6
    torch.testing.assert_close(d.vectors @ d.vectors.T, torch.eye(3, dtype=torch.float64), rtol=0, atol=1e-14)
    for row in d.vectors:
        assert float(row[row.abs().argmax()]) > 0


def test_pca_explained_variance_of_all_components_sums_to_one():
    problem = named_problem("mlp")
    d = dirs.pca(problem, _random_checkpoints(problem, 4, seed=1), num=4)
    assert sum(d.settings["explained_variance"]) == pytest.approx(1.0, abs=1e-14)
    assert d.settings["explained_variance"] == sorted(d.settings["explained_variance"], reverse=True)


def test_pca_accepts_modules_state_dicts_and_flat_tensors_alike():
    problem = named_problem("mlp_subset")
    points = _random_checkpoints(problem, 5, seed=2)
    modules = [set_params(problem.model, problem, p) for p in points]
    with torch.no_grad():
        modules[0][0].bias.add_(7.0)  # not a selected parameter: must be ignored
    states = [m.state_dict() for m in modules]
    layouts = [{"epoch": t, "model_state_dict": {f"module.{k}": v for k, v in s.items()}} for t, s in enumerate(states)]
    reference = dirs.pca(problem, points)
    for checkpoints in (modules, states, layouts, list(points), points.numpy()):
        assert torch.equal(dirs.pca(problem, checkpoints).vectors, reference.vectors)
    float32 = dirs.pca(problem, [p.float() for p in points])
    assert float32.vectors.dtype == torch.float64
    torch.testing.assert_close(float32.vectors, reference.vectors, rtol=0, atol=1e-5)


def test_pca_refuses_degenerate_trajectories():
    problem = named_problem("mlp")
    w = problem.params_vector()
    points = _random_checkpoints(problem, 3, seed=3)
    with pytest.raises(ValueError, match="at least 3 checkpoints, got 2"):
        dirs.pca(problem, points[:2], num=3)
    with pytest.raises(ValueError, match="span only 0"):
        dirs.pca(problem, [w, w.clone()], num=1)
    with pytest.raises(ValueError, match="span only 1"):
        dirs.pca(problem, [points[0], w + 2 * (points[0] - w), w], num=2)
    assert dirs.pca(problem, [points[0], w, points[1]], num=2).settings["rank"] == 2


def test_pca_refuses_checkpoints_that_do_not_fit():
    problem = named_problem("mlp")
    n = problem.num_params
    good = problem.model.state_dict()
    with pytest.raises(ValueError, match=r"lacks 1 selected parameter.*2\.bias"):
        dirs.pca(problem, [{k: v for k, v in good.items() if k != "2.bias"}], num=1)
    other = nn.Sequential(nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    with pytest.raises(ValueError, match=r"checkpoint 1: '0.weight' has shape \(4, 6\)"):
        dirs.pca(problem, [problem.model, other], num=1)
    with pytest.raises(ValueError, match=f"shape \\({n}\\,\\)"):
        dirs.pca(problem, [torch.zeros(n + 1, dtype=torch.float64)], num=1)
    with pytest.raises(TypeError, match="wrap it in a list"):
        dirs.pca(problem, problem.model, num=1)
    with pytest.raises(TypeError, match="wrap it in a list"):
        dirs.pca(problem, torch.zeros(n), num=1)
    with pytest.raises(TypeError, match="checkpoint 0 is a str"):
        dirs.pca(problem, ["model.pt"], num=1)
    with pytest.raises(ValueError, match="empty"):
        dirs.pca(problem, [], num=1)
    with pytest.raises(ValueError, match="NaN"):
        dirs.pca(problem, [torch.full((n,), float("nan"))], num=1)
    with pytest.raises(ValueError, match="checkpoint 0: no model state dict"):
        dirs.pca(problem, [{"epoch": 3}], num=1)
    with pytest.raises(ValueError, match="num"):
        dirs.pca(problem, [problem.model], num=0)


def test_pca_leaves_no_trace():
    problem = named_problem("cnn_bn_eval")
    checkpoints = [set_params(problem.model, problem, p) for p in _random_checkpoints(problem, 3, seed=4)]
    before = model_state(problem.model)
    before_checkpoints = [model_state(m) for m in checkpoints]
    dirs.pca(problem, checkpoints)
    assert_same_state(before, model_state(problem.model))
    for b, m in zip(before_checkpoints, checkpoints, strict=True):
        assert_same_state(b, model_state(m))


@pytest.mark.parametrize("make", [dirs.random, dirs.filter_normalized, dirs.layer_normalized, dirs.model_normalized])
def test_directions_hold_their_block_and_one_parameter_at_a_time(make):
    """Counted bytes (a tracking allocator): the ``(num, n)`` block plus a few copies of the largest parameter's
    piece, no dicts of whole directions or flat copies beside it (on GPT-2 small each vector is 0.5 GB)."""
    from landscape import reductions
    from tests.linalg.test_thick_restart import _LiveBytes

    problem = named_problem("cnn_bn_eval")
    numel = max(problem.param_numels)
    with _LiveBytes() as alloc:
        d = make(problem, 3, seed=0)
    block = d.vectors.numel() * d.vectors.element_size()
    extra = 4 * numel * 8  # the float64 draw, its cast, the rescaled piece, the norms (less): a parameter's worth
    if make is dirs.model_normalized:  # ||w||, and the directions' norms summed in float64 2^20 entries at a time
        extra += problem.num_params * d.vectors.element_size() + min(d.vectors.numel(), reductions.CHUNK) * 8
    assert alloc.peak <= block + extra, (alloc.peak - block) / (problem.num_params * 4)
