"""Tests for landscape.training: accuracy reached, determinism, untouched RNG and train/eval modes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from landscape.data import digits, gaussian_mixture, synthetic_regression
from landscape.models import mlp
from landscape.training import TrainLog, accuracy, train


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_mlp_learns_digits_in_200_steps():
    X, y = digits(split="train")
    X_te, y_te = digits(split="test")
    model = mlp(64, (32,), 10, seed=0)
    log = train(model, X, y, steps=200, lr=0.1, batch_size=64, seed=0)
    assert accuracy(model, X_te, y_te) > 0.9
    assert log.final_loss < 0.2 < log.losses[0]


def test_log_records_the_run_and_is_frozen():
    X, y = gaussian_mixture(200, 8, 3)
    log = train(mlp(8, (16,), 3), X, y, steps=25, lr=0.05, batch_size=32, seed=4)
    assert isinstance(log, TrainLog)
    assert log.steps == len(log.losses) == 25
    assert (log.seed, log.optimizer, log.lr, log.batch_size) == (4, "sgd", 0.05, 32)
    assert all(np.isfinite(log.losses)) and log.wall_time > 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        log.final_loss = 0.0


def test_same_seed_same_run_other_seed_other_run():
    X, y = gaussian_mixture(300, 8, 3)
    runs = []
    for seed in (0, 0, 1):
        model = mlp(8, (16,), 3, seed=0)
        runs.append((train(model, X, y, steps=30, seed=seed), _params(model)))
    (log_a, p_a), (log_b, p_b), (log_c, _) = runs
    assert log_a.losses == log_b.losses and log_a.final_loss == log_b.final_loss
    assert all(torch.equal(a, b) for a, b in zip(p_a, p_b, strict=True))
    assert log_a.losses != log_c.losses


def test_dropout_is_deterministic_and_global_rng_untouched():
    X, y = gaussian_mixture(200, 8, 2)

    def build():
        torch_state = torch.get_rng_state()
        model = nn.Sequential(mlp(8, (16,), 16, seed=0), nn.Dropout(0.5), nn.Linear(16, 2))
        torch.set_rng_state(torch_state)  # the plain nn.Linear above drew from the global RNG
        return model

    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    logs = [train(build(), X, y, steps=20, seed=2).losses for _ in range(2)]
    assert logs[0] == logs[1]
    accuracy(build(), X, y)
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]


@pytest.mark.parametrize("start", ["train", "eval", "mixed"])
def test_train_and_accuracy_restore_every_module_mode(start):
    X, y = gaussian_mixture(64, 8, 2)
    model = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    model.train(start != "eval")
    if start == "mixed":
        model[1].eval()  # e.g. frozen batch-norm statistics
    modes = [m.training for m in model.modules()]
    seen = []
    model.register_forward_pre_hook(lambda mod, args: seen.append(mod.training))
    train(model, X, y, steps=3, batch_size=16)
    assert seen[:3] == [True] * 3 and seen[-1] is False  # trained in train mode, final loss in eval mode
    assert [m.training for m in model.modules()] == modes
    seen.clear()
    accuracy(model, X, y)
    assert seen == [False]
    assert [m.training for m in model.modules()] == modes


def test_adam_and_custom_loss_fit_a_regression():
    X, y = synthetic_regression(512, 6, 0, noise=0.1)
    model = nn.Linear(6, 1)
    log = train(model, X, y, loss_fn=nn.functional.mse_loss, optimizer="adam", lr=0.05, steps=300, batch_size=64)
    assert log.optimizer == "adam"
    assert log.final_loss < 0.02  # noise variance is 0.01


def test_zero_steps_change_nothing():
    X, y = gaussian_mixture(64, 8, 2)
    model = mlp(8, (4,), 2)
    before = _params(model)
    log = train(model, X, y, steps=0)
    assert log.losses == () and all(torch.equal(a, b) for a, b in zip(before, _params(model), strict=True))


def test_full_batch_when_data_is_smaller_than_a_batch():
    X, y = gaussian_mixture(10, 4, 2)
    model, reference = mlp(4, (4,), 2, seed=3), mlp(4, (4,), 2, seed=3)
    log = train(model, X, y, steps=5, batch_size=64, lr=0.1, momentum=0.9)
    assert log.steps == 5
    # Every step is a step on all 10 samples: plain full-batch heavy-ball SGD gives the same losses and weights.
    opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(reference(X), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    np.testing.assert_allclose(log.losses, losses, rtol=1e-5)
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_diverging_loss_is_reported():
    X, y = gaussian_mixture(64, 8, 2)
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        train(mlp(8, (4,), 2), X, y, steps=3, loss_fn=lambda out, t: out.sum() * float("nan"))


def test_invalid_arguments_are_named():
    X, y = gaussian_mixture(64, 8, 2)
    model = mlp(8, (4,), 2)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        train(model, X, y, optimizer="lbfgs")
    with pytest.raises(ValueError, match="batch_size"):
        train(model, X, y, batch_size=0)
    with pytest.raises(ValueError, match="different numbers of samples"):
        train(model, X, y[:10])


def test_accuracy_matches_argmax_and_is_batch_size_independent():
    X, y = gaussian_mixture(300, 8, 3)
    model = mlp(8, (16,), 3, seed=1)
    with torch.no_grad():
        expected = float((model(X).argmax(1) == y).float().mean())
    assert accuracy(model, X, y) == pytest.approx(expected)
    assert accuracy(model, X, y, batch_size=7) == pytest.approx(expected)
    # a model that outputs the one-hot label is always right
    assert accuracy(nn.Identity(), nn.functional.one_hot(y, 3).float(), y) == 1.0
