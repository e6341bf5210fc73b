"""The Jensen-Shannon distance between block densities: a metric with the textbook values, and the heterogeneity
matrix built from it on a common grid."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

from landscape.blocks import heterogeneity, js_distance
from landscape.linalg.slq import SpectralDensity


def test_known_pairs_by_hand():
    # m = (3/4, 1/4): KL(p||m) = 1/2 log2(2/3) + 1/2 log2(2), KL(q||m) = log2(4/3); JS = their mean.
    kl_p = 0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)
    kl_q = math.log2(1 / 0.75)
    assert js_distance(np.array([0.5, 0.5]), np.array([1.0, 0.0])) == pytest.approx(math.sqrt((kl_p + kl_q) / 2))
    assert js_distance(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(1.0)  # disjoint supports
    assert js_distance(np.array([2.0, 6.0]), np.array([1.0, 3.0])) == 0.0  # normalised first: identical


def test_a_metric_that_agrees_with_scipy():
    rng = np.random.default_rng(0)
    p, q, r = rng.random((3, 50)) ** 3
    assert js_distance(p, p) == 0.0
    assert js_distance(p, q) == js_distance(q, p)
    assert js_distance(p, r) <= js_distance(p, q) + js_distance(q, r)
    assert js_distance(p, q) == pytest.approx(jensenshannon(p, q, base=2), rel=1e-12)


def test_bad_weights():
    with pytest.raises(ValueError, match="nonnegative weights with a positive sum"):
        js_distance(np.array([1.0, -1.0]), np.array([1.0, 1.0]))
    with pytest.raises(ValueError, match="one length"):
        js_distance(np.ones(3), np.ones(4))


def _point_density(values, weights, steps=10):
    values, weights = np.atleast_2d(values), np.atleast_2d(weights)
    return SpectralDensity(
        nodes=values,
        weights=weights,
        num_params=values.shape[1],
        sigma=0.1,
        steps=np.array([values.shape[1]]),
        num_matvecs=0,
        seed=None,
        wall_time=0.0,
        settings={"num_steps": steps},
    )


def test_matrix_on_a_common_grid():
    same = _point_density([1.0, 2.0], [0.5, 0.5])
    far = _point_density([50.0, 60.0], [0.5, 0.5])
    h = heterogeneity(["a", "b", "c"], [same, same, far], sigma="resolution")
    D = np.asarray(h)
    assert D[0, 1] == 0.0 and np.allclose(D, D.T) and np.all(np.diag(D) == 0)
    assert 0.9999 < D[0, 2] < 1.0  # the supports lie 8 common widths apart: all but disjoint
    assert h.most_different == ("a", "c", D[0, 2]) and h.max == D[0, 2] and h.mean == pytest.approx(2 * D[0, 2] / 3)
    assert h.sigma == pytest.approx((60.0 - 1.0) / 10)  # the Lanczos resolution of the widest support
    np.testing.assert_allclose(np.trapezoid(h.densities, h.grid, axis=1), 1.0, atol=1e-4)
    d = h.to_dict()
    assert d["definition"].startswith("Jensen-Shannon distance") and d["grid"]["points"] == 1000
    # Zhang et al.'s width by default: sqrt(1e-5), on a grid of spacing sigma / 2; the supports are then disjoint.
    z = heterogeneity(["a", "b", "c"], [same, same, far])
    assert z.sigma == pytest.approx(1e-5**0.5) and z.grid[1] - z.grid[0] <= z.sigma / 2
    assert np.asarray(z)[0, 1] == 0.0 and np.asarray(z)[0, 2] == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="sigma must be a width > 0"):
        heterogeneity(["a"], [same], sigma="wide")
