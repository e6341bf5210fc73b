"""Trajectory projection: planted planes recovered exactly, exact residuals, non-orthogonal bases, no side effects."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from landscape.surface import directions as dirs
from landscape.surface.trajectory import Trajectory, project, trajectory
from tests.surface.helpers import assert_same_state, model_state, named_problem, set_params, untidy_model


def _orthonormal(n: int, k: int, seed: int) -> torch.Tensor:
    """``k`` orthonormal rows of length ``n``."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    return q.T.contiguous()


def _coefficients(count: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(count, k, generator=g, dtype=torch.float64)


def test_planted_plane_is_recovered_exactly():
    problem = named_problem("mlp")
    w = problem.params_vector()
    uv = _orthonormal(problem.num_params, 2, seed=0)
    ab = _coefficients(7, 2, seed=1) * torch.tensor([3.0, 1.0], dtype=torch.float64)
    checkpoints = list(w + ab @ uv)

    d, tr = trajectory(problem, checkpoints)

    assert d.kind == "pca" and tr.directions == "pca" and isinstance(tr, Trajectory)
    s = np.linalg.svd(ab.numpy(), compute_uv=False)  # [u v] is orthonormal: M and (a_t, b_t) share singular values
    np.testing.assert_allclose(d.settings["explained_variance"], s**2 / np.sum(s**2), rtol=1e-12)
    assert sum(d.settings["explained_variance"]) == pytest.approx(1.0, abs=1e-14)
    assert tr.explained_variance == tuple(d.settings["explained_variance"])
    assert max(d.settings["singular_values"][2:]) < 1e-13 * s[0]
    # The same plane: equal orthogonal projectors.
    torch.testing.assert_close(d.vectors.T @ d.vectors, uv.T @ uv, rtol=0, atol=1e-13)
    # Coordinates are (a_t, b_t) rotated/reflected within the plane by the orthogonal R = [u; v] D^T.
    rotation = uv @ d.vectors.T
    torch.testing.assert_close(rotation.T @ rotation, torch.eye(2, dtype=torch.float64), rtol=0, atol=1e-13)
    np.testing.assert_allclose(tr.coords, (ab @ rotation).numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(tr.coords @ tr.coords.T, (ab @ ab.T).numpy(), rtol=0, atol=1e-11)
    assert tr.coords.shape == (7, 2) and len(tr) == 7
    assert np.max(tr.residuals) < 1e-13
    np.testing.assert_allclose(tr.distances, ab.norm(dim=1).numpy(), rtol=1e-13)
    assert tr.labels == tuple(str(t) for t in range(7))


def test_off_plane_component_gives_exact_residuals():
    """Coefficients with orthogonal columns of norms 5, 3, 1: the SVD is known in closed form."""
    problem = named_problem("mlp_subset")
    w = problem.params_vector()
    uvz = _orthonormal(problem.num_params, 3, seed=2)
    columns, _ = torch.linalg.qr(_coefficients(9, 3, seed=3))
    coeffs = columns * torch.tensor([5.0, 3.0, 1.0], dtype=torch.float64)
    points = w + coeffs @ uvz

    d, tr = trajectory(problem, points, num=2)

    np.testing.assert_allclose(d.settings["singular_values"][:3], [5.0, 3.0, 1.0], rtol=1e-13)
    np.testing.assert_allclose(d.settings["explained_variance"], [25 / 35, 9 / 35], rtol=1e-13)
    signs = torch.sign((d.vectors * uvz[:2]).sum(dim=1))
    torch.testing.assert_close(d.vectors, signs[:, None] * uvz[:2], rtol=0, atol=1e-13)
    np.testing.assert_allclose(tr.coords, (coeffs[:, :2] * signs).numpy(), rtol=0, atol=1e-13)
    np.testing.assert_allclose(tr.residuals, coeffs[:, 2].abs().numpy(), rtol=0, atol=1e-13)
    # What the plane leaves out is exactly the unexplained variance.
    total = 35.0
    assert np.sum(tr.residuals**2) == pytest.approx((1 - sum(d.settings["explained_variance"])) * total, rel=1e-12)


def test_projection_onto_non_orthogonal_directions_recovers_coefficients():
    problem = named_problem("cnn_bn_eval")
    w = problem.params_vector()
    g1, g2, z = _orthonormal(problem.num_params, 3, seed=4)
    basis = torch.stack([g1, g1 + 0.3 * g2])  # cosine 0.96 between the two directions
    d = dirs.from_vectors(problem, basis)
    alpha_beta = _coefficients(5, 2, seed=5)
    off = torch.tensor([0.0, 0.5, -2.0, 0.0, 1.5], dtype=torch.float64)
    checkpoints = w + alpha_beta @ basis + off[:, None] * z

    tr = project(problem, d, checkpoints, labels=[0, 10, 20, 30, 40])

    np.testing.assert_allclose(tr.coords, alpha_beta.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(tr.residuals, off.abs().numpy(), rtol=0, atol=1e-12)
    assert tr.labels == ("0", "10", "20", "30", "40")
    assert tr.explained_variance is None and tr.directions == "user"
    # Plain dot products (right only for orthonormal directions) would be far off here.
    assert np.max(np.abs(((checkpoints - w) @ basis.T).numpy() - alpha_beta.numpy())) > 0.1


def test_projection_onto_filter_normalized_directions_is_exact():
    problem = named_problem("cnn_bn_eval")
    d = dirs.filter_normalized(problem, 2, seed=6)
    alpha_beta = _coefficients(4, 2, seed=7)
    tr = project(problem, d, problem.params_vector() + alpha_beta @ d.vectors)
    np.testing.assert_allclose(tr.coords, alpha_beta.numpy(), rtol=0, atol=1e-12)
    assert np.max(tr.residuals) < 1e-12


def test_module_checkpoints_and_pca_plus_project_agree_with_trajectory():
    problem = named_problem("mlp")
    w = problem.params_vector()
    points = w + _coefficients(4, problem.num_params, seed=8) * 0.1
    modules = [set_params(problem.model, problem, p) for p in points]
    d, tr = trajectory(problem, modules, labels=["a", "b", "c", "d"])
    d2 = dirs.pca(problem, points)
    tr2 = project(problem, d2, [m.state_dict() for m in modules], labels=["a", "b", "c", "d"])
    assert torch.equal(d.vectors, d2.vectors)
    np.testing.assert_array_equal(tr.coords, tr2.coords)
    np.testing.assert_array_equal(tr.residuals, tr2.residuals)
    assert (tr.labels, tr.explained_variance, tr.directions) == (tr2.labels, tr2.explained_variance, "pca")


def test_trajectory_is_frozen_and_its_arrays_read_only():
    problem = named_problem("mlp")
    _, tr = trajectory(problem, problem.params_vector() + _coefficients(3, problem.num_params, seed=9))
    with pytest.raises(dataclasses.FrozenInstanceError):
        tr.labels = ("x",)
    for array in (tr.coords, tr.residuals, tr.distances):
        with pytest.raises(ValueError, match="read-only"):
            array[0] = 1.0


def test_project_bad_inputs_are_named():
    problem = named_problem("mlp")
    n = problem.num_params
    w = problem.params_vector()
    points = w + _coefficients(3, n, seed=10)
    d = dirs.random(problem, 2, seed=0)
    with pytest.raises(ValueError, match="labels has 2 entries but there are 3 checkpoints"):
        project(problem, d, points, labels=["a", "b"])
    with pytest.raises(TypeError, match="labels"):
        project(problem, d, points, labels="abc")
    with pytest.raises(ValueError, match="linearly dependent"):
        project(problem, dirs.from_vectors(problem, torch.stack([d.vectors[0], -2 * d.vectors[0]])), points)
    with pytest.raises(ValueError, match="linearly dependent"):
        project(problem, dirs.from_vectors(problem, torch.zeros(1, n, dtype=torch.float64)), points)
    other = named_problem("mlp_subset")
    with pytest.raises(ValueError, match=f"problem has {n} selected parameters"):
        project(problem, dirs.random(other, 2), points)
    with pytest.raises(TypeError, match="Directions"):
        project(problem, d.vectors, points)
    with pytest.raises(ValueError, match="lacks"):
        project(problem, d, [{"0.weight": torch.zeros(5, 6, dtype=torch.float64)}])
    with pytest.raises(ValueError, match="span only 1"):
        trajectory(problem, [points[0], w])


def test_trajectory_leaves_no_trace():
    problem = named_problem("cnn_bn_train")
    model = untidy_model(problem)
    checkpoints = [set_params(model, problem, w) for w in problem.params_vector() + _coefficients(3, 81, seed=11)]
    originals = [copy.deepcopy(m) for m in checkpoints]
    before = model_state(model)
    before_checkpoints = [model_state(m) for m in checkpoints]
    d, _ = trajectory(problem, checkpoints)
    project(problem, d, checkpoints)
    assert_same_state(before, model_state(model))
    for b, m, original in zip(before_checkpoints, checkpoints, originals, strict=True):
        assert_same_state(b, model_state(m))
        assert [x.requires_grad for x in m.parameters()] == [x.requires_grad for x in original.parameters()]


def test_checkpoint_of_a_different_architecture_is_refused():
    problem = named_problem("mlp")
    wider = nn.Sequential(nn.Linear(6, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    with pytest.raises(ValueError, match=r"checkpoint 0: '0.weight' has shape \(7, 6\)"):
        trajectory(problem, [wider, problem.model], num=1)
