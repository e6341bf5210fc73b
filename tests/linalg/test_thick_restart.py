"""Thick-restart Lanczos (``top_eigen(max_basis=...)``, or a basis bounded by ``memory_budget``): exact against
dense eigendecompositions with a basis far smaller than the steps taken, memory bounded as counted by a tracking
allocator, and a clear error when not even a restarted basis fits."""

from __future__ import annotations

import weakref

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import landscape as L
from landscape.memory import MemoryBudgetError
from tests.linalg.helpers import assert_same_rng_state, global_rng_state, operator_with_spectrum


def spectrum_with_gaps(n: int, seed: int = 0) -> np.ndarray:
    """Five outliers above a bulk in [-1, 2] (the shape of a trained network's Hessian spectrum), two of them close."""
    rng = np.random.default_rng(seed)
    return np.concatenate([[10.0, 9.0, 8.5, 8.4, 5.0], rng.uniform(-1.0, 2.0, n - 5)])


@pytest.mark.parametrize("k, max_basis", [(1, 6), (3, 8), (5, 12)])
def test_restarted_top_k_equals_eigvalsh_with_a_small_basis(k, max_basis):
    lam = spectrum_with_gaps(400)
    op, H = operator_with_spectrum(lam)
    res = L.top_eigen(op, k=k, tol=1e-10, max_matvecs=400, max_basis=max_basis)
    want = np.sort(lam)[::-1][:k]
    assert res.converged.all()
    np.testing.assert_allclose(res.values, want, rtol=1e-8, atol=0)
    assert res.num_matvecs > max_basis  # more steps than the basis holds: it was restarted
    assert res.settings["basis_vectors"] == max_basis and "thick" in res.settings["restart"]
    # The vectors are eigenvectors: ||H v - lambda v|| small, orthonormal.
    V = res.vectors
    assert torch.allclose(V.T @ V, torch.eye(k, dtype=V.dtype), atol=1e-8)
    assert float((H @ V - V * torch.as_tensor(res.values)).norm()) < 1e-8 * lam.max()


def test_restarted_lanczos_on_a_real_hessian_equals_the_dense_one():
    from landscape.data import digits
    from landscape.models import mlp

    X, y = digits(split="train")
    model = mlp(in_features=64, hidden=(4,), out_features=10, seed=0).double()
    problem = L.Problem(model, torch.nn.CrossEntropyLoss(), (X[:128].double(), y[:128]))
    dense = np.linalg.eigvalsh(L.hessian_dense(problem).numpy())[::-1]
    op = L.hessian(problem)
    res = L.top_eigen(op, k=3, tol=1e-10, max_matvecs=problem.num_params, max_basis=10, seed=1)
    np.testing.assert_allclose(res.values, dense[:3], rtol=1e-8)


def test_smallest_and_largest_magnitude_with_a_small_basis():
    lam = -spectrum_with_gaps(300, seed=2)  # outliers at the bottom
    op, _ = operator_with_spectrum(lam)
    low = L.top_eigen(op, k=2, which="SA", tol=1e-10, max_matvecs=300, max_basis=8)
    np.testing.assert_allclose(low.values, np.sort(lam)[:2], rtol=1e-8)
    big = L.top_eigen(op, k=2, which="LM", tol=1e-10, max_matvecs=300, max_basis=8)
    np.testing.assert_allclose(big.values, np.sort(lam)[:2], rtol=1e-8)


def test_same_seed_same_bits_and_no_global_rng():
    op, _ = operator_with_spectrum(spectrum_with_gaps(200))
    before = global_rng_state()
    a = L.top_eigen(op, k=2, max_basis=7, max_matvecs=200, seed=3)
    b = L.top_eigen(op, k=2, max_basis=7, max_matvecs=200, seed=3)
    assert_same_rng_state(before)
    assert np.array_equal(a.values, b.values) and torch.equal(a.vectors, b.vectors)


class _LiveBytes(TorchDispatchMode):
    """A tracking allocator: the peak bytes of tensor storages created inside and still alive (weakref-counted)."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self.seen: set[int] = set()

    def _release(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self.seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self.seen:
                    self.seen.add(key)
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._release, key, storage.nbytes())
        return out


def test_basis_memory_is_bounded_by_the_budget():
    n = 4000
    op, _ = operator_with_spectrum(spectrum_with_gaps(n))
    vector = n * 8
    budget = 40 * vector  # half for the basis: 20 vectors, far below the 300 steps allowed
    with _LiveBytes() as plain:
        full = L.top_eigen(op, k=2, tol=1e-10, max_matvecs=300, memory_budget=10**9)
    with _LiveBytes() as bounded:
        res = L.top_eigen(op, k=2, tol=1e-10, max_matvecs=300, memory_budget=budget)
    assert full.settings["restart"] == "none"
    assert res.settings["basis_vectors"] == 20 and res.settings["basis_bytes"] == 20 * vector
    assert bounded.peak <= budget, (bounded.peak / vector, "vectors")
    assert plain.peak >= 300 * vector > bounded.peak  # plain Lanczos holds its whole budget of steps
    np.testing.assert_allclose(res.values, full.values, rtol=1e-9)


def test_a_budget_too_small_for_any_basis_names_the_numbers():
    op, _ = operator_with_spectrum(spectrum_with_gaps(100))
    with pytest.raises(MemoryBudgetError, match=r"at least 7 vectors.*allows 2.*memory_budget"):
        L.top_eigen(op, k=3, memory_budget=4 * 100 * 8)
    with pytest.raises(MemoryBudgetError, match="max_basis=4 allows 4"):
        L.top_eigen(op, k=3, max_basis=4)


class _AddsInPlace(L.MatrixOperator):
    """A matrix whose product is added into the caller's vector (as the Hessian's double backward does)."""

    adds_in_place = True

    def _add_product(self, v: torch.Tensor, out: torch.Tensor) -> bool:
        out.addmv_(self.matrix, v)
        return True


@pytest.mark.parametrize("in_place, vectors_held", [(True, 0), (False, 1)])
def test_a_step_holds_no_vector_besides_its_basis_and_the_products_output(in_place, vectors_held, monkeypatch):
    """A step works in the basis row its new vector ends in: besides the product's own output (none where the
    operator adds in place) it allocates nothing of the vectors' length, at the steps before and after a restart.
    (The norm's float64 chunk, a million entries at scale, is shrunk to the size it has next to a long vector.)"""
    from landscape import reductions
    from landscape.linalg.thick_restart import ThickRestartState

    monkeypatch.setattr(reductions, "CHUNK", 256)

    n, m = 3000, 6
    lam = spectrum_with_gaps(n)
    H = operator_with_spectrum(lam)[1]
    op = _AddsInPlace(H) if in_place else L.MatrixOperator(H)
    state = ThickRestartState(op, torch.randn(n, dtype=op.dtype, generator=torch.Generator().manual_seed(0)), m, None)
    peaks = []
    for _ in range(3 * m):
        if state.size == m:
            theta, Y = state.ritz()
            state.restart(theta, Y, np.argsort(theta)[-3:])
        alloc = _LiveBytes()
        alloc.seen.add(state.Q.untyped_storage().data_ptr())  # the basis is there before: its rows are not new
        with alloc:
            state.step()
        peaks.append(alloc.peak)
    vector = n * op.dtype.itemsize
    assert state.restarts == 4
    assert all(vectors_held * vector <= p < (vectors_held + 1) * vector for p in peaks), np.array(peaks) / vector
    theta, _ = state.ritz()
    np.testing.assert_allclose(theta.max(), lam.max(), rtol=1e-6)
