"""spectrum(): one Krylov pass against the dense float64 Hessian of tiny models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import landscape as L
from landscape.spectrum import spectrum
from tests.conftest import make_case, reference_hessian
from tests.operators.test_operators import problem_of


@pytest.mark.parametrize("name", ["mlp", "cnn_bn_eval", "cnn_bn_train"])
def test_spectrum_matches_dense_reference(name):
    case = make_case(name)
    H = reference_hessian(case)
    P = H.shape[0]
    exact = torch.linalg.eigvalsh(H).flip(0).numpy()
    probes = 6 if name == "mlp" else 3  # float64 convolutions are slow on CPU
    s = spectrum(problem_of(case), k=3, num_probes=probes, num_steps=P, eigenvectors=True, seed=1)
    # With m = P steps the Krylov space is the whole space: Ritz values are the eigenvalues.
    np.testing.assert_allclose(s.eigenvalues, exact[:3], rtol=1e-8)
    assert s.eigen_converged.all()
    # Ritz vectors: the reported residuals are the true ones (to rounding).
    R = H @ s.eigenvectors - s.eigenvectors * torch.as_tensor(s.eigenvalues)
    assert np.all(R.norm(dim=0).numpy() <= s.eigen_residuals + 1e-10 * abs(exact[0]))
    # Trace and Frobenius: unbiased estimates, the truth within 4 standard errors.
    assert abs(s.trace.value - float(torch.trace(H))) <= 4 * s.trace.stderr
    assert abs(s.frobenius.value - float(H.norm())) <= 4 * s.frobenius.stderr
    assert s.density.nodes.shape[0] == probes and s.density.nodes.shape[1] <= P
    lam_min = float(exact[-1])
    assert s.lla.re == pytest.approx(abs(lam_min / exact[0]), rel=1e-6)
    assert s.settings["mode"] == case.mode


def test_top_eigenvalues_of_a_larger_model_converge_in_few_steps():
    torch.manual_seed(0)  # only to build data; the analysis itself never touches the global RNG
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 30), torch.nn.Tanh(), torch.nn.Linear(30, 4)).double()
    X = torch.randn(200, 10, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (200,), generator=g)
    p = L.Problem(model, torch.nn.CrossEntropyLoss(), (X, y), batch_size=64)
    H = L.hessian_dense(p)
    exact = torch.linalg.eigvalsh(H).flip(0).numpy()
    s = spectrum(p, k=3, num_probes=2, num_steps=60, seed=0)
    assert s.eigen_converged.all()
    err = np.abs(s.eigenvalues - exact[:3])
    assert np.all(err <= s.eigen_error_bounds + 1e-12 * abs(exact[0]))
    np.testing.assert_allclose(s.eigenvalues, exact[:3], rtol=1e-8)
    assert s.num_matvecs == 120


def test_subsets_give_data_spread_and_same_seed_same_result():
    case = make_case("mlp")
    p = problem_of(case)
    a = spectrum(p, k=2, num_probes=3, num_steps=20, subsets=3, seed=4, engine="double_backward", block="loop")
    b = spectrum(p, k=2, num_probes=3, num_steps=20, subsets=3, seed=4, engine="double_backward", block="loop")
    auto = spectrum(p, k=2, num_probes=3, num_steps=20, subsets=3, seed=4)
    np.testing.assert_allclose(auto.eigenvalues, a.eigenvalues, rtol=1e-12)
    assert a.subsets.traces.shape == (3,) and a.subsets.sizes.sum() == 27
    assert math.isfinite(a.subsets.trace_stderr) and a.subsets.trace_stderr > 0
    assert np.array_equal(a.eigenvalues, b.eigenvalues) and a.trace.value == b.trace.value
    assert np.array_equal(a.subsets.traces, b.subsets.traces)
    c = spectrum(p, k=2, num_probes=3, num_steps=20, seed=5)
    assert c.trace.value != a.trace.value
    assert "trace" in a.summary() and a.to_dict()["subsets"]["traces"] == a.subsets.traces.tolist()


def test_spectrum_of_an_operator_and_bad_arguments():
    lam = torch.linspace(-1, 3, 40, dtype=torch.float64)
    Q, _ = torch.linalg.qr(torch.randn(40, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    op = L.MatrixOperator(Q @ torch.diag(lam) @ Q.T)
    s = spectrum(op, k=2, num_probes=4, num_steps=40)
    np.testing.assert_allclose(s.eigenvalues, [3.0, lam[-2].item()], rtol=1e-10)
    assert s.lla.re == pytest.approx(1 / 3, rel=1e-8)
    with pytest.raises(ValueError, match="subsets"):
        spectrum(op, subsets=2)
    with pytest.raises(ValueError, match="k must be"):
        spectrum(op, k=50, num_steps=40)


def test_each_subset_is_the_spectrum_of_its_own_data():
    """``subsets=3`` on three batches: subset ``j`` is batch ``j`` alone (batch ``b`` goes to part ``b mod k``). With
    ``num_steps = P`` its SLQ top eigenvalue is that batch's exact one, and its trace is within five Hutchinson
    standard deviations (``sqrt(2 / probes) ||H_j||_F`` for Gaussian probes) of that batch's exact trace: computing
    every subset on the whole data fails both."""
    import dataclasses

    case = make_case("mlp")  # 27 examples in batches of 10, 10, 7
    p = problem_of(case)
    P, probes = p.num_params, 6
    s = spectrum(p, k=1, num_probes=probes, num_steps=P, subsets=3, seed=2)
    whole = torch.linalg.eigvalsh(reference_hessian(case))[-1]
    for j, lo in enumerate(range(0, 27, 10)):
        part = dataclasses.replace(case, X=case.X[lo : lo + 10], y=case.y[lo : lo + 10])
        H = reference_hessian(part)
        lam = float(torch.linalg.eigvalsh(H)[-1])
        assert abs(lam - whole) > 1e-3 * abs(whole)  # the subsets differ from the whole
        assert s.subsets.lambda_max[j] == pytest.approx(lam, rel=1e-8)
        assert abs(s.subsets.traces[j] - float(torch.trace(H))) <= 5 * math.sqrt(2 / probes) * float(H.norm())
        assert s.subsets.sizes[j] == part.y.numel()


def test_spectrum_of_the_ggn_is_the_ggn_s():
    """``operator="ggn"``: the top eigenvalues are the dense GGN's, not the Hessian's (they differ here)."""
    from tests.operators.test_operators import _reference_ggn_and_fisher

    case = make_case("mlp")
    G, _ = _reference_ggn_and_fisher(case)
    H = reference_hessian(case)
    P = G.shape[0]
    s = spectrum(problem_of(case), k=2, num_probes=2, num_steps=P, operator="ggn", seed=0)
    exact = torch.linalg.eigvalsh(G).flip(0)[:2].numpy()
    assert not np.allclose(exact, torch.linalg.eigvalsh(H).flip(0)[:2].numpy(), rtol=1e-3)
    np.testing.assert_allclose(s.eigenvalues, exact, rtol=1e-8)
    assert abs(s.trace.value - float(torch.trace(G))) <= 5 * s.trace.stderr + 1e-10
    assert s.settings["operator"] == "ggn"


def test_each_top_eigenvalue_is_the_largest_over_the_probes():
    """The ``i``-th top eigenvalue is the largest ``i``-th Ritz value of any probe (each is a lower bound of
    ``lambda_i`` by interlacing), with that probe's residual and Ritz vector: after a few steps the probes resolve
    different parts of a clustered top, and one probe's values alone fall short where another's do not."""
    from landscape.linalg.lanczos import lanczos
    from landscape.spectrum import _top_ritz

    g = torch.Generator().manual_seed(3)
    lam = torch.cat(
        [torch.tensor([10.0, 9.8, 9.5, 9.3, 9.0], dtype=torch.float64), torch.rand(195, generator=g).double() * 5]
    )
    Q, _ = torch.linalg.qr(torch.randn(200, 200, generator=g, dtype=torch.float64))
    H = Q @ torch.diag(lam) @ Q.T
    op = L.MatrixOperator(H)
    k, steps = 3, 8
    dec = lanczos(op, steps, num_probes=6, seed=0, distribution="gaussian")
    per_probe = np.stack([np.sort(np.linalg.eigvalsh(_tridiagonal(*dec.tridiagonal(p))))[::-1][:k] for p in range(6)])
    values, residuals, bounds, converged, vectors = _top_ritz(dec, k, 1e-4, torch.finfo(torch.float64).eps)
    # Each value is one probe's, the largest or within its residual of the largest (then the better converged).
    assert all(np.any(np.isclose(per_probe[:, i], values[i], rtol=1e-12, atol=0)) for i in range(k))
    assert np.all(values >= per_probe.max(axis=0) - residuals)
    exact = np.sort(lam.numpy())[::-1][:k]
    assert np.all(values <= exact + 1e-10)  # lower bounds
    assert len(set(per_probe.argmax(axis=0).tolist())) > 1  # no one probe holds the best of every index here
    one_probe = per_probe[np.argmin(_worst_residuals(dec, k))]  # the rule before: one whole probe
    assert np.any(values > one_probe + 1e-6) and np.all(values >= one_probe)
    # The residuals and vectors are those of the probes the values come from.
    R = H @ vectors - vectors * torch.as_tensor(values)
    np.testing.assert_allclose(R.norm(dim=0).numpy(), residuals, rtol=1e-6, atol=1e-12)
    # An eigenvalue lies within each residual of its Ritz value (Parlett 1998, theorem 4.5.1).
    assert all(np.min(np.abs(lam.numpy() - v)) <= r + 1e-10 for v, r in zip(values, residuals, strict=True))
    s = spectrum(op, k=k, num_probes=6, num_steps=steps, seed=0)  # the same rule through the public call
    assert np.all(s.eigenvalues <= exact + 1e-10) and s.eigenvalues.shape == (k,)


def _tridiagonal(alphas, betas):
    return np.diag(alphas) + np.diag(betas[: alphas.size - 1], 1) + np.diag(betas[: alphas.size - 1], -1)


def _worst_residuals(dec, k):
    """Each probe's largest residual among its top-``k`` Ritz pairs (the rule that picked one whole probe before)."""
    out = []
    for p in range(dec.num_probes):
        theta, _ = dec.ritz(p)
        res = dec.ritz_residuals(p)
        out.append(res[np.argsort(theta)[::-1][:k]].max())
    return np.array(out)


def test_values_no_residual_tells_apart_go_to_the_best_converged():
    """Two probes converged to one eigenvalue differ by rounding: the smaller residual decides, not the rounding (a
    sharded run and one process then pick the same probe); a gap wider than the residuals goes to the larger value."""
    from landscape.spectrum import _largest

    assert _largest(np.array([1.6047608400915214, 1.6047608400915219]), np.array([2.1e-9, 2.8e-9])) == 0
    assert _largest(np.array([1.6047608400915219, 1.6047608400915214]), np.array([2.8e-9, 2.1e-9])) == 1
    # 0.4 apart, more than the smaller residual (0.1): told apart, the larger value
    assert _largest(np.array([483.0, 483.4, 470.0]), np.array([0.1, 0.5, 0.01])) == 1
