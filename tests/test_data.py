"""Tests for landscape.data: digits split, synthetic data, batching, fingerprints, untouched global RNG."""

from __future__ import annotations

import sys
from collections import Counter

import pytest
import torch

from landscape.data import (
    batches,
    data_fingerprint,
    digits,
    gaussian_mixture,
    synthetic_images,
    synthetic_regression,
)
from tests.helpers import global_rng_untouched

GENERATORS = {
    "digits": lambda seed: digits(seed=seed),
    "gaussian_mixture": lambda seed: gaussian_mixture(256, 8, 3, seed=seed),
    "synthetic_images": lambda seed: synthetic_images(64, 3, 8, 4, seed=seed),
    "synthetic_regression": lambda seed: synthetic_regression(64, 5, seed),
}


def _rows(X: torch.Tensor, y: torch.Tensor) -> Counter:
    return Counter((tuple(x.tolist()), int(t)) for x, t in zip(X, y, strict=True))


@pytest.mark.parametrize("name", GENERATORS)
def test_deterministic_for_a_seed(name):
    (Xa, ya), (Xb, yb), (Xc, _) = (GENERATORS[name](s) for s in (0, 0, 1))
    assert torch.equal(Xa, Xb) and torch.equal(ya, yb)
    assert not torch.equal(Xa, Xc)


@pytest.mark.parametrize("name", GENERATORS)
def test_global_rng_untouched(name):
    with global_rng_untouched():
        GENERATORS[name](7)


@pytest.mark.parametrize("seed", [0, 3])
def test_digits_split_is_a_partition(seed):
    X_all, y_all = digits(split="all", normalize=False, seed=seed)
    X_tr, y_tr = digits(split="train", normalize=False, seed=seed)
    X_te, y_te = digits(split="test", normalize=False, seed=seed)
    assert len(X_all) == 1797
    assert len(X_te) == round(0.2 * 1797) and len(X_tr) + len(X_te) == 1797
    # as multisets of (image, label): train + test == all, so the splits are disjoint and cover everything
    assert _rows(X_tr, y_tr) + _rows(X_te, y_te) == _rows(X_all, y_all)


def test_digits_split_depends_on_seed_and_fraction():
    assert not torch.equal(digits(split="test", seed=0)[0], digits(split="test", seed=1)[0])
    assert len(digits(split="test", test_fraction=0.5)[0]) == round(0.5 * 1797)


def test_digits_values_and_normalisation():
    X, y = digits(split="all", normalize=False)
    assert X.min() == 0.0 and X.max() == 1.0
    assert y.dtype == torch.int64 and set(y.tolist()) == set(range(10))
    X_tr, _ = digits(split="train")
    X_te, _ = digits(split="test")
    assert abs(float(X_tr.mean())) < 1e-5 and abs(float(X_tr.std(unbiased=False)) - 1) < 1e-5
    assert abs(float(X_te.mean())) > 1e-5  # standardised with train statistics, not its own
    assert torch.isfinite(X_te).all()


def test_digits_shapes_and_dtype():
    X, _ = digits(flatten=False, dtype=torch.float64)
    assert X.shape[1:] == (1, 8, 8) and X.dtype == torch.float64
    flat, _ = digits(dtype=torch.float64)
    assert torch.equal(X.reshape(len(X), -1), flat)


def test_digits_invalid_arguments():
    with pytest.raises(ValueError, match="split"):
        digits(split="validation")
    with pytest.raises(ValueError, match="test_fraction"):
        digits(test_fraction=1.0)


def test_digits_without_sklearn_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        digits()


def test_gaussian_mixture_classes_and_separation():
    X, y = gaussian_mixture(4000, 16, 4, separation=5.0, seed=0, dtype=torch.float64)
    assert X.shape == (4000, 16) and X.dtype == torch.float64 and y.dtype == torch.int64
    assert torch.bincount(y).tolist() == [1000] * 4
    means = torch.stack([X[y == c].mean(0) for c in range(4)])
    # class means have norm `separation`, up to the sampling error of 1000 unit-variance samples per class
    torch.testing.assert_close(means.norm(dim=1), torch.full((4,), 5.0, dtype=torch.float64), atol=0.2, rtol=0)
    within = (X - means[y]).var(0).mean()
    assert abs(float(within) - 1.0) < 0.05


def test_gaussian_mixture_separation_controls_difficulty():
    def nearest_mean_accuracy(separation):
        X, y = gaussian_mixture(2000, 8, 4, separation=separation, seed=1)
        means = torch.stack([X[y == c].mean(0) for c in range(4)])
        return float((torch.cdist(X, means).argmin(1) == y).float().mean())

    assert nearest_mean_accuracy(8.0) > 0.99
    assert nearest_mean_accuracy(0.0) < 0.4


def test_synthetic_images_are_learnable():
    X, y = synthetic_images(400, 3, 16, 5, seed=0)
    assert X.shape == (400, 3, 16, 16) and X.dtype == torch.float32
    assert torch.bincount(y).tolist() == [80] * 5
    # nearest class mean fitted on one half classifies the other half far above chance (0.2)
    flat = X.reshape(400, -1)
    means = torch.stack([flat[:200][y[:200] == c].mean(0) for c in range(5)])
    acc = float((torch.cdist(flat[200:], means).argmin(1) == y[200:]).float().mean())
    assert acc > 0.9


def test_synthetic_regression_is_linear_plus_noise():
    X, y = synthetic_regression(2000, 6, 0, noise=0.1, dtype=torch.float64)
    assert X.shape == (2000, 6) and y.shape == (2000, 1)
    w = torch.linalg.lstsq(X, y).solution
    residual = (y - X @ w).std()
    assert abs(float(residual) - 0.1) < 0.01


def test_batches_keep_order_and_short_last_batch():
    X, y = torch.arange(10).float().reshape(10, 1), torch.arange(10)
    out = batches(X, y, 4)
    assert [len(xb) for xb, _ in out] == [4, 4, 2]
    assert torch.equal(torch.cat([xb for xb, _ in out]), X)
    assert torch.equal(torch.cat([yb for _, yb in out]), y)
    assert len(batches(X, y, 10)) == 1 and len(batches(X, y, 100)) == 1


def test_batches_invalid_arguments():
    with pytest.raises(ValueError, match="different numbers of samples"):
        batches(torch.zeros(3, 2), torch.zeros(4), 2)
    with pytest.raises(ValueError, match="batch_size"):
        batches(torch.zeros(3, 2), torch.zeros(3), 0)


def test_fingerprint_depends_on_content_only():
    X, y = gaussian_mixture(100, 4, 2)
    fp = data_fingerprint((X, y))
    assert len(fp) == 64 and int(fp, 16) >= 0
    assert data_fingerprint((X.clone(), y.clone())) == fp
    assert data_fingerprint([X, y]) == fp == data_fingerprint([(X, y)])
    assert data_fingerprint(batches(X, y, 16)) == data_fingerprint(batches(X.clone(), y.clone(), 16))
    # a non-contiguous view holding the same values hashes like its contiguous copy
    Xt = X.t().contiguous().t()
    assert not Xt.is_contiguous() and data_fingerprint((Xt, y)) == fp


def test_fingerprint_detects_every_kind_of_change():
    X, y = gaussian_mixture(100, 4, 2)
    fp = data_fingerprint((X, y))
    X1 = X.clone()
    X1[57, 2] += 1e-6
    variants = {
        "one element": (X1, y),
        "dtype": (X.double(), y),
        "shape": (X.reshape(50, 8), y),
        "order": (X.flip(0), y.flip(0)),
        "labels": (X, 1 - y),
        "batching": batches(X, y, 16),
    }
    prints = {name: data_fingerprint(d) for name, d in variants.items()}
    assert fp not in prints.values()
    assert len(set(prints.values())) == len(prints)
    assert data_fingerprint(batches(X, y, 16)) != data_fingerprint(batches(X, y, 32))


def test_fingerprint_accepts_dataloaders_and_rejects_junk():
    X, y = gaussian_mixture(50, 4, 2)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=8)
    assert data_fingerprint(loader) == data_fingerprint(batches(X, y, 8))
    with pytest.raises(TypeError):
        data_fingerprint(42)
    with pytest.raises(TypeError):
        data_fingerprint([(X, object())])
