"""The gathered report sharpness(): every measure with its error bar against the exact Hessian of a quadratic, its
summary and JSON, and the parts that can be skipped."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from landscape.sharpness import Sharpness, sharpness
from tests.sharpness.helpers import exact_hessian, least_squares_problem, make_data


def test_sharpness_gathers_every_measure_with_its_error_bar():
    X, Y = make_data()
    problem = least_squares_problem(X, Y, batch_size=10)
    H = exact_hessian(X)
    lam = float(torch.linalg.eigvalsh(H).max())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # first-order SAM at an exact minimum warns
        s = sharpness(problem, 0.05, steps=10, subspace_dim=3, num_matvecs=30, num_samples=10, seed=0)
    assert isinstance(s, Sharpness) and s.num_params == 8
    assert s.lambda_max.values[0] == pytest.approx(lam, rel=1e-8) and s.lambda_max.residuals[0] < 1e-6
    assert s.trace.value == pytest.approx(float(torch.trace(H)), rel=1e-8)
    assert s.frobenius.value == pytest.approx(float(torch.linalg.norm(H)), rel=0.2) and s.frobenius.stderr > 0
    assert s.sam.value == pytest.approx(0.05**2 * lam / 2, rel=0.05) and s.sam.steps == 10
    assert s.sam_first_order.steps == 0 and math.isinf(s.sam_inf.p) and s.asam.adaptive
    assert s.keskar.subspace_dim is None and s.keskar_subspace.subspace_dim == 3
    assert s.loss == pytest.approx(problem.loss(), rel=1e-15)
    assert s.num_matvecs == s.lambda_max.num_matvecs + s.trace.num_matvecs + s.frobenius.num_matvecs
    assert s.settings["problem"] == problem.describe()
    text = s.summary()
    for part in ("lambda_max", "trace", "Frobenius", "SAM (p = 2", "p = inf", "ASAM", "average-case", "Keskar"):
        assert part in text, part
    d = json.loads(json.dumps(s.to_dict()))
    assert d["sam"]["p"] == 2 and d["sam_inf"]["p"] == "inf" and d["lambda_max"]["value"] == pytest.approx(lam)
    lean = sharpness(problem, 0.05, eigen=False, trace=False, frobenius=False, sam=False, keskar=False, seed=0)
    assert lean.num_matvecs == 0 and lean.lambda_max is None and lean.sam is None and lean.keskar is None
    assert lean.asam is not None and lean.average is not None
    assert "average-case" in lean.summary()


def test_sharpness_can_drop_the_perturbations_it_measured():
    """``perturbations=False`` (the report's setting) keeps every value and drops the four parameter-sized vectors."""
    X, Y = make_data()
    problem = least_squares_problem(X, Y, batch_size=10)
    kw = {"steps": 3, "num_samples": 2, "eigen": False, "trace": False, "frobenius": False, "keskar": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # first-order SAM at an exact minimum warns
        kept = sharpness(problem, 0.05, seed=0, **kw)
        lean = sharpness(problem, 0.05, seed=0, perturbations=False, **kw)
    for name in ("sam_first_order", "sam", "sam_inf", "asam"):
        a, b = getattr(kept, name), getattr(lean, name)
        assert a.perturbation is not None and b.perturbation is None, name
        assert (a.value, a.perturbation_norm) == (b.value, b.perturbation_norm), name
    assert lean.settings["perturbations"] is False and kept.settings["perturbations"] is True
