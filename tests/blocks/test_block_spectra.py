"""Block spectra against the dense float64 blocks: top-k eigenvalues (Lanczos and dense paths), traces (exact and
within their error bars), densities, the batched passes (model calls counted), memory, seeds and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import landscape as L
from landscape.blocks import BlockSpectra, block_spectra
from landscape.linalg.probes import sample_probes
from landscape.memory import MemoryBudgetError, estimate
from tests.conftest import make_case, reference_hessian
from tests.helpers import global_rng_untouched, model_untouched
from tests.operators.test_operators import problem_of


def block_indices(problem: L.Problem, result: BlockSpectra) -> list[np.ndarray]:
    """Each block's entries of the flat parameter vector, in the result's block order."""
    offsets, start = {}, 0
    for n, k in zip(problem.param_names, problem.param_numels, strict=True):
        offsets[n] = np.arange(start, start + k)
        start += k
    return [np.concatenate([offsets[n] for n in m]) for m in result.members]


def dense_blocks(H: np.ndarray, problem: L.Problem, result: BlockSpectra) -> list[np.ndarray]:
    """The diagonal blocks of a dense matrix in the result's block order."""
    return [H[np.ix_(idx, idx)] for idx in block_indices(problem, result)]


def check_top_k(result: BlockSpectra, blocks: list[np.ndarray], k: int) -> None:
    for name, Hb in zip(result.names, blocks, strict=True):
        expected = np.linalg.eigvalsh(Hb)[::-1][:k]
        np.testing.assert_allclose(result.spectra[name].eigenvalues, expected, rtol=0, atol=1e-8, err_msg=name)


@pytest.mark.parametrize(
    ("name", "by"),
    [
        ("mlp", "parameter"),
        ("cnn_bn_eval", "parameter"),
        ("cnn_bn_eval", "module"),
        ("mlp", {"weights": "*.weight", "first bias": "0.bias"}),  # "weights" in two segments; "(other)" the rest
    ],
)
def test_lanczos_top_k_equal_the_dense_blocks(name, by):
    """Every block through Lanczos (dense_max=0) with as many steps as the largest block: exact to rounding."""
    case = make_case(name)
    problem = problem_of(case)
    H = reference_hessian(case).numpy()
    r = block_spectra(problem, by=by, k=2, num_probes=2, num_steps=60, dense_max=0, full=False, seed=3)
    blocks = dense_blocks(H, problem, r)
    assert 3 <= len(r.names) <= 20 and r.settings["dense_blocks"] == []
    check_top_k(r, blocks, 2)
    # The probes' block parts z_b: the Gauss rule of each recurrence gives z_b^T H_bb z_b and z_b^T H_bb^2 z_b
    # exactly (per-probe trace and squared-Frobenius samples).
    Z = sample_probes(problem.num_params, 2, distribution="rademacher", seed=3, dtype=torch.float64).numpy()
    for name_, Hb, idx in zip(r.names, blocks, block_indices(problem, r), strict=True):
        s = r.spectra[name_]
        assert s.num_params == Hb.shape[0] and np.all(s.eigen_converged)
        zb = Z[idx]
        np.testing.assert_allclose(s.trace.samples, np.einsum("il,ij,jl->l", zb, Hb, zb), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(s.frobenius.samples, np.sum((Hb @ zb) ** 2, axis=0), rtol=1e-10, atol=1e-12)
    # One pass per step for all blocks and probes together (a recurrence ends at |b| steps or earlier, at an
    # invariant subspace).
    assert r.passes == max(int(r.spectra[n].density.steps.max()) for n in r.names) <= max(r.sizes)


def test_dense_path_sees_repeated_eigenvalues_and_is_exact():
    """MSE's output bias block is a multiple of the identity: one Lanczos vector spans its Krylov space, so only the
    dense path gets both (equal) eigenvalues; traces and Frobenius norms are then exact."""
    case = make_case("mse")
    problem = problem_of(case)
    H = reference_hessian(case).numpy()
    r = block_spectra(problem, by="parameter", k=2, num_probes=2, num_steps=40, full=False)
    blocks = dense_blocks(H, problem, r)
    check_top_k(r, blocks, 2)
    assert r.trace_methods == ("exact (dense block)",) * 4 and np.all(r.trace_stderrs == 0)
    np.testing.assert_allclose(r.traces, [np.trace(b) for b in blocks], rtol=1e-10)
    np.testing.assert_allclose(r.frobenius, [np.linalg.norm(b) for b in blocks], rtol=1e-10)
    assert r.spectra["2.bias"].eigenvalues[0] == pytest.approx(r.spectra["2.bias"].eigenvalues[1], rel=1e-12)
    # Every dense block in one pass: 44 columns.
    assert r.passes == 1 and r.num_matvecs == problem.num_params


def test_exact_traces_from_backpack_and_slq_traces_within_their_error():
    pytest.importorskip("backpack")
    case = make_case("mlp")
    problem = problem_of(case)
    H = reference_hessian(case).numpy()
    exact = block_spectra(problem, by="parameter", k=1, num_probes=2, num_steps=8, dense_max=0, full=False)
    blocks = dense_blocks(H, problem, exact)
    assert exact.trace_methods == ("exact (diagonal)",) * 4
    np.testing.assert_allclose(exact.traces, [np.trace(b) for b in blocks], rtol=1e-10, atol=1e-14)
    slq = block_spectra(
        problem, by="parameter", k=1, num_probes=30, num_steps=8, dense_max=0, traces="slq", full=False, seed=1
    )
    assert slq.trace_methods == ("slq",) * 4 and np.all(slq.trace_stderrs > 0)
    assert np.all(np.abs(slq.traces - [np.trace(b) for b in blocks]) <= 4 * slq.trace_stderrs)
    with pytest.raises(L.ExactDiagonalUnavailable):
        block_spectra(problem_of(make_case("mse")), k=1, traces="exact", full=False)


@pytest.mark.parametrize("operator", ["ggn", "fisher"])
def test_ggn_and_fisher_blocks(operator):
    case = make_case("mlp")
    problem = problem_of(case)
    op = {"ggn": L.ggn, "fisher": L.empirical_fisher}[operator](problem)
    M = L.to_dense(op).numpy()
    r = block_spectra(problem, operator=operator, by="parameter", k=2, num_steps=60, dense_max=0, full=False)
    assert r.curvature == operator
    check_top_k(r, dense_blocks(M, problem, r), 2)


def test_densities_integrate_to_one_and_heterogeneity_is_a_distance_matrix():
    case = make_case("cnn_bn_eval")
    r = block_spectra(problem_of(case), by="module", k=1, num_probes=3, num_steps=10, dense_max=0, seed=0)
    for name in r.names:
        d = r.spectra[name].density
        grid = np.linspace(d.lambda_min - 12 * d.sigma, d.lambda_max + 12 * d.sigma, 20001)
        assert np.trapezoid(d.density(grid), grid) == pytest.approx(1.0, abs=1e-6)
    h = r.heterogeneity
    D = np.asarray(h)
    assert D.shape == (len(r.names),) * 2 and np.allclose(D, D.T) and np.all(np.diag(D) == 0)
    assert np.all((D >= 0) & (D <= 1))
    np.testing.assert_allclose(np.trapezoid(h.densities, h.grid, axis=1), 1.0, atol=1e-3)
    pair = h.most_different
    assert pair[2] == h.max == D.max() and h.mean == pytest.approx(D[np.triu_indices(len(r.names), 1)].mean())


def test_full_comparison_against_the_dense_matrix():
    case = make_case("mlp")
    problem = problem_of(case)
    H = reference_hessian(case).numpy()
    r = block_spectra(problem, by="module", k=1, num_probes=3, num_steps=53, seed=2)
    blocks = dense_blocks(H, problem, r)
    f = r.full
    assert f.lambda_max_full == pytest.approx(np.linalg.eigvalsh(H)[-1], abs=1e-8)
    assert f.lambda_max_blocks == pytest.approx(max(np.linalg.eigvalsh(b)[-1] for b in blocks), abs=1e-8)
    assert f.lambda_max_relative_error == pytest.approx(
        abs(f.lambda_max_blocks - f.lambda_max_full) / abs(f.lambda_max_full)
    )
    # ||H||_F from 3 probes: within 4 standard errors; the blocks' part is exact here (dense blocks).
    assert abs(f.frobenius_full.value - np.linalg.norm(H)) <= 4 * f.frobenius_full.stderr
    assert f.frobenius_blocks == pytest.approx(np.sqrt(sum(np.linalg.norm(b) ** 2 for b in blocks)), rel=1e-10)
    assert 0 < f.num_matvecs <= 3 * 53  # fewer when a recurrence ends at an invariant subspace
    assert "block-diagonal vs full" in r.summary()


class _Counter:
    def __init__(self, model: nn.Module):
        self.calls = 0
        self.handle = model.register_forward_hook(self)

    def __call__(self, *args):
        self.calls += 1


def test_one_batched_pass_per_step_not_one_per_block():
    """The model runs about as often as for one spectrum of the same steps, and a loop over blocks B times that."""
    case = make_case("mlp")
    problem = problem_of(case)
    kw = {"engine": "forward_over_reverse", "block": "batched"}
    counter = _Counter(case.model)
    r = block_spectra(problem, by="parameter", k=1, num_probes=2, num_steps=6, dense_max=0, full=False, **kw)
    blocks_calls = counter.calls
    counter.calls = 0
    L.spectrum(problem, k=1, num_probes=2, num_steps=6, **kw)
    one_spectrum = counter.calls
    counter.calls = 0
    for members in r.members:  # Zhang et al.'s way: a spectrum of each block's own Hessian, one after another
        alone = L.Problem(case.model, case.loss_fn, (case.X, case.y), batch_size=case.batch_size, params=list(members))
        L.spectrum(alone, k=1, num_probes=2, num_steps=6, **kw)
    loop = counter.calls
    counter.handle.remove()
    assert r.passes == 6 and one_spectrum > 0
    assert blocks_calls <= 1.25 * one_spectrum
    assert loop >= 0.9 * len(r.names) * one_spectrum


def test_memory_budget_three_term_recurrence_and_error():
    case = make_case("mlp")
    problem = problem_of(case)
    kw = {"by": "parameter", "k": 1, "num_probes": 2, "num_steps": 30, "dense_max": 0, "full": False}
    p, m = 2, 30
    three_term = estimate(problem, "block_spectra", num_probes=p, num_steps=m, columns=1, stored=False).need
    stored = estimate(problem, "block_spectra", num_probes=p, num_steps=m, columns=1, stored=True).need
    assert three_term < stored
    r = block_spectra(problem, memory_budget=three_term + 8, **kw)
    assert r.settings["reorthogonalisation"].startswith("local")
    ref = block_spectra(problem, **kw)
    assert ref.settings["reorthogonalisation"].startswith("full")
    np.testing.assert_allclose(r.lambda_max, ref.lambda_max, rtol=1e-6)
    with pytest.raises(MemoryBudgetError, match=r"block_spectra needs .* the memory budget is"):
        block_spectra(problem, memory_budget=three_term // 2, **kw)


def test_same_seed_same_result_and_nothing_touched():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Dropout(0.5), nn.Linear(4, 2)).double().train()
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(12, 3, generator=g, dtype=torch.float64), torch.randint(0, 2, (12,), generator=g)
    problem = L.Problem(model, nn.CrossEntropyLoss(), (X, y), batch_size=5, mode="eval")
    # engine and block fixed: "auto" times the strategies, and another choice may differ in the last bits.
    kw = {"k": 1, "num_probes": 2, "num_steps": 5, "dense_max": 0, "engine": "double_backward", "block": "loop"}
    with model_untouched(model), global_rng_untouched():
        a = block_spectra(problem, seed=7, **kw)
        b = block_spectra(problem, seed=7, **kw)
        c = block_spectra(problem, seed=torch.Generator().manual_seed(7), **kw)
    for name in a.names:
        assert np.array_equal(a.spectra[name].density.nodes, b.spectra[name].density.nodes)
        assert np.array_equal(a.spectra[name].density.nodes, c.spectra[name].density.nodes)
    assert a.seed == 7 and a.settings["mode"] == "eval"
    out = json.loads(json.dumps(a.to_dict()))
    assert out["names"] == list(a.names) and out["heterogeneity"]["definition"].startswith("Jensen-Shannon distance")


def test_bad_input_names_the_fix():
    problem = problem_of(make_case("mlp"))
    with pytest.raises(ValueError, match=r"group 'attn' \('\*attn\*'\) matches none"):
        block_spectra(problem, by={"attn": "*attn*"})
    with pytest.raises(ValueError, match=r"by=\{\} names no group"):
        block_spectra(problem, by={})
    with pytest.raises(ValueError, match=r"k=5 eigenvalues per block, but block\(s\) '2.bias' \(3 param.*k <= 3"):
        block_spectra(problem, by="parameter", k=5)
    with pytest.raises(ValueError, match="traces must be one of"):
        block_spectra(problem, traces="maybe")
    with pytest.raises(ValueError, match="operator must be one of"):
        block_spectra(problem, operator="hessian2")
    with pytest.raises(TypeError, match="needs a Problem or an operator built from one"):
        block_spectra(L.MatrixOperator(torch.eye(3, dtype=torch.float64)))
    with pytest.raises(TypeError, match="num_steps must be an int"):
        block_spectra(problem, num_steps=4.0)


def test_restricted_block_products_equal_masked_full_columns():
    """The Hessian's products restricted to each block (double backward on the block's own gradients) against full
    Hessian columns of which the block's rows are kept (forward-over-reverse): the same recurrences."""
    case = make_case("cnn_bn_eval")
    problem = problem_of(case)
    kw = {"by": "parameter", "k": 2, "num_probes": 2, "num_steps": 12, "dense_max": 2, "full": False, "seed": 1}
    restricted = block_spectra(problem, engine="double_backward", **kw)
    full = block_spectra(problem, engine="forward_over_reverse", **kw)
    assert restricted.settings["products"].startswith("restricted") and full.settings["products"].startswith("full")
    assert restricted.settings["dense_blocks"] == ["0.bias", "1.weight", "1.bias"]
    for name in restricted.names:
        a, b = restricted.spectra[name], full.spectra[name]
        np.testing.assert_allclose(a.eigenvalues, b.eigenvalues, rtol=1e-9, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(a.density.nodes, b.density.nodes, rtol=1e-7, atol=1e-10, err_msg=name)
    # One pass for the dense blocks, one per step for the others: the model runs once per batch per pass at most.
    counter = _Counter(case.model)
    again = block_spectra(problem, engine="double_backward", **kw)
    counter.handle.remove()
    assert again.passes == 1 + 12 and counter.calls <= 3 * again.passes + 10
