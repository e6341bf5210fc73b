"""Interpolation between two models against each model's own loss and independently interpolated states."""

from __future__ import annotations

import copy

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from torch import nn

from landscape import Problem
from landscape.surface import interpolate
from tests.conftest import make_case
from tests.surface.helpers import case_problem

# Selected before any figure exists (pyplot picks its backend lazily): no display needed.
matplotlib.use("Agg")


def _perturbed(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        for n, b in other.named_buffers():
            if n.endswith("running_mean"):
                b.add_(0.5)
            elif n.endswith("running_var"):
                b.mul_(3.0)
    return other


@pytest.mark.parametrize("name", ["mlp", "cnn_bn_eval", "cnn_bn_train"])
def test_interpolation_endpoints_are_each_models_loss(name):
    case = make_case(name)
    pa = case_problem(case)
    model_b = _perturbed(case.model, 1)
    pb = Problem(model_b, case.loss_fn, case.batches(), mode=case.mode)
    resolution = 41 if name == "mlp" else 5  # the default grid on the cheap case, 0 and 1 on the grid in both
    s = interpolate(pa, case.model, model_b, resolution=resolution)
    assert s.loss.shape == (resolution,)
    i0, i1 = (resolution - 1) // 4, 3 * (resolution - 1) // 4
    assert s.coords[0][i0] == 0.0 and s.coords[0][i1] == 1.0
    assert s.loss[i0] == pa.loss()
    assert s.loss[i1] == pb.loss()
    assert s.directions.kind == "interpolation"
    torch.testing.assert_close(s.directions.vectors[0], pb.params_vector() - pa.params_vector())


def test_interpolation_mixes_batchnorm_running_statistics():
    case = make_case("cnn_bn_eval")
    pa = case_problem(case)
    model_b = _perturbed(case.model, 2)
    s = interpolate(pa, case.model, model_b, span=(0.0, 1.0), resolution=3)
    # parameters of b with the running statistics of a would give another loss at a = 1
    assert abs(s.loss[-1] - pa.loss(at=Problem(model_b, case.loss_fn, case.batches()).params_vector())) > 1e-3
    sd_a, sd_b = case.model.state_dict(), model_b.state_dict()
    for k, a in enumerate(s.coords[0]):
        mid = copy.deepcopy(case.model).eval()
        mid.load_state_dict(
            {n: (1 - a) * sd_a[n] + a * sd_b[n] if sd_a[n].is_floating_point() else sd_a[n] for n in sd_a}
        )
        with torch.no_grad():
            ref = float(case.loss_fn(mid(case.X), case.y))
        assert abs(s.loss[k] - ref) < 1e-12


def test_batched_interpolation_agrees_and_keeps_exact_end_points():
    case = make_case("cnn_bn_eval")
    pa = case_problem(case)
    model_b = _perturbed(case.model, 3)
    one = interpolate(pa, case.model, model_b, span=(-0.5, 1.5), resolution=9)
    many = interpolate(pa, case.model, model_b, span=(-0.5, 1.5), resolution=9, batch_points=4)
    np.testing.assert_allclose(many.loss, one.loss, rtol=1e-10)
    assert one.loss[2] == pa.loss()


def test_interpolation_between_two_other_models():
    case = make_case("cnn_bn_eval")
    problem = case_problem(case)
    a, b = _perturbed(case.model, 4), _perturbed(case.model, 5)
    s = interpolate(problem, a, b, span=(0.0, 1.0), resolution=3)
    assert s.loss[0] == Problem(a, case.loss_fn, case.batches()).loss()
    assert s.loss[-1] == Problem(b, case.loss_fn, case.batches()).loss()


def test_diverging_points_are_kept_as_gaps_with_a_warning():
    case = make_case("cnn_bn_eval")
    problem = case_problem(case)
    b = _perturbed(case.model, 6)
    with torch.no_grad():
        for n, buf in b.named_buffers():
            if n.endswith("running_var"):
                buf.mul_(50.0)  # extrapolating to a = -0.5 makes 1.5 v_a - 0.5 v_b negative: BatchNorm gives NaN
    with pytest.warns(RuntimeWarning, match="non-finite loss"):
        s = interpolate(problem, case.model, b, span=(-0.5, 1.0), resolution=7)
    assert np.isnan(s.loss[0]) and np.all(np.isfinite(s.loss[2:]))
    assert np.isnan(s.accuracy[0]) and np.all(np.isfinite(s.accuracy[2:]))
    assert s.loss[2] == problem.loss()
    plt.close(s.plot(log_levels=True).figure)  # the gap does not stop the plot
