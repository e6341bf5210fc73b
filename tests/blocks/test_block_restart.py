"""Thick-restarted top eigenpairs of the blocks (``block_spectra(refine=...)``) against the dense float64 blocks, with
a basis far smaller than the steps taken."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import landscape as L
from landscape.blocks import block_spectra
from landscape.blocks.partition import BlockPartition
from landscape.blocks.restart import BlockThickRestart
from landscape.linalg._common import draw
from landscape.memory import MemoryBudgetError, estimate
from tests.blocks.test_block_spectra import check_top_k, dense_blocks
from tests.conftest import make_case, reference_hessian
from tests.helpers import global_rng_untouched, model_untouched
from tests.operators.test_operators import problem_of

K, STEPS, BASIS = 3, 6, 8


@pytest.mark.parametrize(
    ("name", "by", "operator"),
    [("mlp", "parameter", "hessian"), ("cnn_bn_eval", "module", "hessian"), ("mlp", "module", "ggn")],
)
def test_refined_top_k_equal_the_dense_blocks(name, by, operator):
    """Six density steps leave the large blocks' top-3 off by up to 0.15; the restarted recurrences (basis of 8
    vectors, restarted several times) bring every block to eigvalsh of its dense block within 1e-8. The Hessian
    runs the restricted block products, the GGN full columns."""
    case = make_case(name)
    problem = problem_of(case)
    M = (reference_hessian(case) if operator == "hessian" else L.to_dense(L.ggn(problem))).numpy()
    options = {"by": by, "k": K, "num_probes": 1, "num_steps": STEPS, "dense_max": 0, "full": False, "seed": 3}
    plain = block_spectra(problem, operator=operator, tol=1e-10, **options)
    with model_untouched(problem.model), global_rng_untouched():
        r = block_spectra(problem, operator=operator, tol=1e-10, refine=400, max_basis=BASIS, **options)
    blocks = dense_blocks(M, problem, r)
    check_top_k(r, blocks, K)
    refined = r.settings["refine"]
    # The blocks the density steps left unconverged are the ones refined, and all of them converged.
    assert refined["blocks"] == [n for n in plain.names if not plain.spectra[n].eigen_converged.all()] != []
    assert sorted(refined["converged"]) == sorted(refined["blocks"]) and refined["max_basis"] == BASIS
    worst = max(
        np.abs(plain.spectra[n].eigenvalues - np.linalg.eigvalsh(Hb)[::-1][:K]).max()
        for n, Hb in zip(r.names, blocks, strict=True)
    )
    assert worst > 1e-4  # the plain run was genuinely off
    restarts = 0
    for n in r.names:
        s, before = r.spectra[n], plain.spectra[n]
        assert s.eigen_converged.all()
        if n in refined["blocks"]:
            record = s.settings["refined"]
            restarts = max(restarts, record["restarts"])
            assert s.num_matvecs == before.num_matvecs + record["matvecs"]
            assert np.all(s.eigen_residuals <= 1e-10 * np.abs(s.eigenvalues).max())
            # The density, trace and Frobenius norm stay the density recurrences' (to rounding: the two runs' auto
            # engines may multiply the GGN's columns in different blocks).
            np.testing.assert_allclose(s.trace.samples, before.trace.samples, rtol=1e-12)
            np.testing.assert_allclose(s.density.nodes, before.density.nodes, rtol=1e-12, atol=1e-14)
        else:
            assert "refined" not in s.settings
            np.testing.assert_allclose(s.eigenvalues, before.eigenvalues, rtol=1e-12, atol=1e-14)
    assert restarts >= 2  # the basis was restarted, more steps than it holds
    assert r.passes == plain.passes + refined["passes"] and refined["passes"] == refined["steps"] > BASIS


def test_refined_blocks_are_reproducible_and_the_default_does_not_refine():
    problem = problem_of(make_case("mlp"))
    options = {"by": "parameter", "k": 2, "num_probes": 1, "num_steps": 4, "full": False, "dense_max": 0}
    a = block_spectra(problem, refine=50, seed=5, **options)
    b = block_spectra(problem, refine=50, seed=5, **options)
    for n in a.names:
        np.testing.assert_array_equal(a.spectra[n].eigenvalues, b.spectra[n].eigenvalues)
        np.testing.assert_array_equal(a.spectra[n].eigen_residuals, b.spectra[n].eigen_residuals)
    assert block_spectra(problem, seed=5, **options).settings["refine"] is None


def test_the_restarted_basis_holds_max_basis_plus_one_vectors():
    """The basis is ``(m + 1)`` flat vectors however many steps run (counted bytes, not timed)."""
    problem = problem_of(make_case("mlp"))
    op = L.hessian(problem)
    part = BlockPartition.of(problem.param_names, problem.param_numels, "parameter")
    v0 = draw(op, 1, "rademacher", torch.Generator().manual_seed(0))
    state = BlockThickRestart(op, part, v0, 6, (0, 2), k=2, tol=1e-12, restricted=True, sizes=part.sizes)
    results = state.run(60)
    assert state.Q.numel() == 7 * problem.num_params and state.restarts >= 5
    assert sorted(results) == [0, 2] and all(r.converged.all() for r in results.values())


def test_refine_bad_input():
    problem = problem_of(make_case("mlp"))
    options = {"by": "parameter", "k": 2, "num_probes": 1, "num_steps": 4, "full": False, "dense_max": 0}
    with pytest.raises(ValueError, match="max_basis must be an int >= 5"):
        block_spectra(problem, refine=10, max_basis=4, **options)
    with pytest.raises(ValueError, match="refine"):
        block_spectra(problem, refine=-1, **options)


def test_the_budget_lowers_the_basis_or_refuses_with_the_numbers():
    """Budgets counted in vectors of the model above what the rest of a pass needs (the estimate's parts are byte
    counts): room for 9.5 vectors lowers the default basis of 2k+4 = 8 to 6 (m + 3 vectors held); room for 7.5 fits
    the density recurrences (7) but not the smallest restarted basis (5 + 3): MemoryBudgetError naming need and
    budget; an explicit max_basis that does not fit is refused, not lowered."""
    problem = problem_of(make_case("mlp"))
    est = estimate(problem, "block_spectra", num_probes=1, num_steps=4, columns=1, stored=True)
    rest, vector = est.need - est.parts["Krylov vectors"], problem.num_params * 8
    options = {"by": "parameter", "k": 2, "num_probes": 1, "num_steps": 4, "full": False, "dense_max": 0}
    r = block_spectra(problem, refine=30, memory_budget=int(rest + 9.5 * vector), traces="slq", **options)
    assert r.settings["refine"]["max_basis"] == 6 and r.settings["reorthogonalisation"] == "full (CGS2)"
    with pytest.raises(MemoryBudgetError, match=r"basis of 5 vectors needs .* the memory budget is .*refine=0"):
        block_spectra(problem, refine=30, memory_budget=int(rest + 7.5 * vector), traces="slq", **options)
    with pytest.raises(MemoryBudgetError, match="basis of 8 vectors"):
        block_spectra(problem, refine=30, max_basis=8, memory_budget=int(rest + 9.5 * vector), traces="slq", **options)


def test_nothing_to_refine_is_said_and_changes_nothing():
    problem = problem_of(make_case("mlp"))
    options = {"by": "parameter", "k": 2, "num_probes": 1, "num_steps": 40, "full": False, "seed": 1}
    r = block_spectra(problem, refine=30, **options)
    assert r.settings["refine"]["blocks"] == [] and r.passes == block_spectra(problem, **options).passes
    assert "refined" not in r.summary() and "NOT converged" not in r.summary()
