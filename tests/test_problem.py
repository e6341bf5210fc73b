"""Problem: exact data weighting, parameter selection, mode policy, no side effects, clear errors on bad input."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import landscape as L
from tests.conftest import make_case, reference_loss_fn, reference_point


def snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "modes": [m.training for m in model.modules()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "rng": (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()),
    }


def assert_untouched(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    for k, v in before["state"].items():
        assert torch.equal(v, after["state"][k]), f"{k} changed"
    assert before["modes"] == after["modes"]
    assert before["requires_grad"] == after["requires_grad"]
    for a, b in zip(before["grads"], after["grads"], strict=True):
        assert (a is None and b is None) or torch.equal(a, b)
    assert torch.equal(before["rng"][0], after["rng"][0])
    assert np.array_equal(before["rng"][1], after["rng"][1])
    assert before["rng"][2] == after["rng"][2]


@pytest.mark.parametrize("name", ["mlp", "cnn_bn_eval", "cnn_bn_train"])
def test_loss_is_exact_size_weighted_mean(name):
    case = make_case(name)
    p = L.Problem(case.model, case.loss_fn, (case.X, case.y), batch_size=case.batch_size, mode=case.mode)
    ref = float(reference_loss_fn(case)(reference_point(case)))
    assert p.loss() == pytest.approx(ref, rel=1e-12)
    loss, g = p.loss_and_grad()
    assert loss == pytest.approx(ref, rel=1e-12)
    w = reference_point(case).requires_grad_()
    g_ref = torch.autograd.grad(reference_loss_fn(case)(w), w)[0]
    assert torch.allclose(g, g_ref, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("engine", ["double_backward", "forward_over_reverse", "auto"])
def test_no_side_effects_on_model_grads_modes_buffers_rng(mode, engine):
    case = make_case("cnn_bn_eval")
    model = case.model
    model.train()
    model[1].eval()  # a mixed mode must come back exactly as it was
    next(model.parameters()).grad = torch.ones_like(next(model.parameters()))
    before = snapshot(model)
    p = L.Problem(model, case.loss_fn, (case.X, case.y), batch_size=8, mode=mode)
    p.loss()
    p.loss_and_grad()
    p.check_deterministic()
    op = L.hessian(p, engine=engine)
    v = torch.ones(p.num_params, dtype=torch.float64)
    first = op @ v
    second = op @ torch.stack([v, v], 1)
    L.ggn(p) @ v
    L.empirical_fisher(p) @ v
    assert_untouched(model, before)
    # Calling twice gives the same answer (PyHessian doubles its eigenvalue on a second object without zero_grad).
    again = L.hessian(p, engine=engine) @ v
    assert torch.allclose(first, again, rtol=1e-12) and torch.allclose(second[:, 1], first, rtol=1e-12)


def test_uneven_loader_batches_equal_one_big_batch():
    case = make_case("mlp")
    loader = DataLoader(TensorDataset(case.X, case.y), batch_size=10)  # 10, 10, 7
    a = L.Problem(case.model, case.loss_fn, loader)
    b = L.Problem(case.model, case.loss_fn, (case.X, case.y))
    assert a.num_samples == 27
    assert a.loss() == pytest.approx(b.loss(), rel=1e-13)
    v = torch.linspace(-1, 1, a.num_params, dtype=torch.float64)
    assert torch.allclose(L.hessian(a) @ v, L.hessian(b) @ v, rtol=1e-11, atol=1e-14)


def test_sum_reduction_is_supported():
    case = make_case("mlp")
    mean = L.Problem(case.model, nn.CrossEntropyLoss(), (case.X, case.y), batch_size=10)
    total = L.Problem(case.model, nn.CrossEntropyLoss(reduction="sum"), (case.X, case.y), batch_size=10)
    assert total.loss() == pytest.approx(27 * mean.loss(), rel=1e-12)
    with pytest.raises(ValueError, match="reduction"):
        L.Problem(case.model, nn.CrossEntropyLoss(reduction="none"), (case.X, case.y))


def test_param_selection_by_names_and_globs():
    case = make_case("mlp")
    p = L.Problem(case.model, case.loss_fn, (case.X, case.y), params=["*.bias"])
    assert p.param_names == ["0.bias", "2.bias"] and p.num_params == 8
    p = L.Problem(case.model, case.loss_fn, (case.X, case.y), params="2.*")
    assert p.param_names == ["2.weight", "2.bias"]
    v = torch.arange(p.num_params, dtype=torch.float64)
    assert torch.equal(p.flatten(p.unflatten(v)), v)
    with pytest.raises(ValueError, match="matches no parameter.*0.weight"):
        L.Problem(case.model, case.loss_fn, (case.X, case.y), params=["layer9.*"])


def test_unused_and_frozen_parameters_never_crash():
    case = make_case("mlp")
    model = nn.ModuleDict({"net": case.model, "unused": nn.Linear(2, 2).double()})

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x):
            return self.inner["net"](x)

    w = Wrapper()
    w.inner["net"][0].bias.requires_grad_(False)
    p = L.Problem(w, case.loss_fn, (case.X, case.y), batch_size=10)
    assert "inner.net.0.bias" not in p.param_names
    with pytest.warns(UserWarning, match="do not affect the loss"):
        Hv = L.hessian(p, engine="double_backward") @ torch.ones(p.num_params, dtype=torch.float64)
    unused = p.unflatten(Hv)
    assert torch.count_nonzero(unused["inner.unused.weight"]) == 0
    Hv2 = L.hessian(p, engine="forward_over_reverse") @ torch.ones(p.num_params, dtype=torch.float64)
    assert torch.allclose(Hv, Hv2, rtol=1e-11, atol=1e-14)


def test_no_trainable_parameters_is_a_clear_error():
    case = make_case("mlp")
    for q in case.model.parameters():
        q.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters.*params="):
        L.Problem(case.model, case.loss_fn, (case.X, case.y))


def test_empty_data_and_bad_data_are_clear_errors():
    case = make_case("mlp")
    with pytest.raises(L.DataError, match="empty"):
        L.Problem(case.model, case.loss_fn, (case.X[:0], case.y[:0]))
    with pytest.raises(L.DataError, match="no samples"):
        L.Problem(case.model, case.loss_fn, []).loss()
    with pytest.raises(L.DataError, match="one-shot iterator"):
        L.Problem(case.model, case.loss_fn, iter([(case.X, case.y)]))
    with pytest.raises(L.DataError, match="single tensor.*\\(inputs, targets\\)"):
        L.Problem(case.model, case.loss_fn, [case.X]).loss()


def test_nan_loss_is_a_clear_error():
    case = make_case("mlp")
    X = case.X.clone()
    X[3, 0] = float("nan")
    p = L.Problem(case.model, case.loss_fn, (X, case.y), batch_size=10)
    with pytest.raises(FloatingPointError, match="not finite.*batch 0"):
        p.loss()
    with pytest.raises(FloatingPointError, match="not finite"):
        L.hessian(p) @ torch.ones(p.num_params, dtype=torch.float64)


def test_check_deterministic_catches_shuffling_and_dropout():
    case = make_case("mlp")
    p = L.Problem(case.model, case.loss_fn, (case.X, case.y), batch_size=10)
    p.check_deterministic()
    # Shuffling leaves a full-data mean unchanged, except where batch composition matters (BatchNorm in train mode).
    g = torch.Generator().manual_seed(0)
    shuffled = DataLoader(TensorDataset(case.X, case.y), batch_size=10, shuffle=True, generator=g)
    L.Problem(case.model, case.loss_fn, shuffled).check_deterministic()
    bn = make_case("cnn_bn_train")
    shuffled = DataLoader(TensorDataset(bn.X, bn.y), batch_size=8, shuffle=True, generator=g)
    with pytest.raises(L.NonDeterministicError, match="shuffle=False"):
        L.Problem(bn.model, bn.loss_fn, shuffled, mode="train").check_deterministic()

    class Augmented:
        def __init__(self):
            self.g = torch.Generator().manual_seed(1)

        def __iter__(self):
            yield case.X + 0.01 * torch.randn(case.X.shape, generator=self.g, dtype=case.X.dtype), case.y

    with pytest.raises(L.NonDeterministicError, match="augmentation"):
        L.Problem(case.model, case.loss_fn, Augmented()).check_deterministic()
    dropout = nn.Sequential(case.model, nn.Dropout(0.5))
    L.Problem(dropout, case.loss_fn, (case.X, case.y), mode="eval").check_deterministic()
    with pytest.raises(L.NonDeterministicError):
        L.Problem(dropout, case.loss_fn, (case.X, case.y), mode="train").check_deterministic()


def test_float64_analysis_of_a_float32_model_leaves_it_float32():
    case = make_case("mlp")
    model32 = case.model.float()
    p = L.Problem(model32, case.loss_fn, (case.X.float(), case.y), dtype=torch.float64)
    Hv = L.hessian(p) @ torch.ones(p.num_params, dtype=torch.float64)
    assert Hv.dtype == torch.float64
    assert all(q.dtype == torch.float32 for q in model32.parameters())


def test_describe_records_mode_policy():
    case = make_case("cnn_bn_train")
    p = L.Problem(case.model, case.loss_fn, (case.X, case.y), mode="train")
    d = p.describe()
    assert d["mode"] == "train" and d["num_samples"] == 21 and d["dtype"] == "float64"
    with pytest.raises(ValueError, match="mode must be"):
        L.Problem(case.model, case.loss_fn, (case.X, case.y), mode="inference")
