"""Every operator, engine and block strategy against dense float64 references built independently."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, hessian, jacrev
from torch.utils.data import DataLoader, TensorDataset

import landscape as L
from tests.conftest import CASES, Case, _flat_to_dict, make_case, reference_hessian, reference_point

RTOL = 1e-10


def problem_of(case: Case, **kw) -> L.Problem:
    return L.Problem(
        case.model,
        case.loss_fn,
        (case.X, case.y),
        batch_size=case.batch_size,
        mode=case.mode,
        params=case.params,
        **kw,
    )


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def probes(n: int, k: int) -> torch.Tensor:
    return torch.randn(n, k, generator=torch.Generator().manual_seed(7), dtype=torch.float64)


STRATEGIES = [
    "double_backward",
    "double_backward_batched",
    "forward_over_reverse",
    "forward_over_reverse_batched",
]


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_hessian_products_match_dense_reference(name, strategy):
    case = make_case(name)
    if name == "mse" and strategy.startswith("forward_over_reverse"):
        pytest.xfail("torch 2.13: jvp(grad(mse_loss)) raises 'ZeroTensors are immutable'; auto skips the engine")
    H = reference_hessian(case)
    op = L.hessian(problem_of(case))
    op.chosen = {1: strategy.replace("_batched", ""), 4: strategy}
    V = probes(op.shape[0], 4)
    assert rel(op @ V, H @ V) < RTOL
    assert rel(op @ V[:, 0], H @ V[:, 0]) < RTOL
    assert op.num_matvecs == 5


@pytest.mark.parametrize("name", CASES)
def test_auto_engine_matches_and_records_choice(name):
    case = make_case(name)
    H = reference_hessian(case)
    op = L.hessian(problem_of(case))
    V = probes(op.shape[0], 3)
    for _ in range(2):  # first call measures, second uses the choice (and the cached graphs)
        assert rel(op @ V, H @ V) < RTOL
        assert rel(op @ V[:, 1], H @ V[:, 1]) < RTOL
    assert set(op.chosen) == {1, 3}
    assert set(op.timings[3]) | set(op.failures[3]) == set(STRATEGIES)
    # One vector needs no timing: double backward on the cached graph is one backward pass.
    assert op.chosen[1] == "double_backward" and 1 not in op.timings


def test_wide_blocks_are_chunked_within_one_pass():
    case = make_case("mlp")
    H = reference_hessian(case)
    op = L.hessian(problem_of(case), max_block=4)
    V = probes(H.shape[0], 11)
    assert rel(op @ V, H @ V) < RTOL
    assert set(op.chosen) == {4, 3} and op.num_matvecs == 11


def test_graph_cache_limit_gives_same_products():
    case = make_case("mlp")
    H = reference_hessian(case)
    V = probes(H.shape[0], 2)
    for limit in (0, 1, 10**9):
        op = L.hessian(problem_of(case), engine="double_backward", graph_memory_limit=limit)
        for _ in range(3):
            assert rel(op @ V, H @ V) < RTOL
        assert (op.cached_graph_bytes > 0) == (limit == 10**9)


def test_default_graph_cache_keeps_one_batchs_graph_whatever_its_size(monkeypatch):
    """``graph_memory_limit=None``: a problem of one batch keeps its graph above ``DEFAULT_GRAPH_MEMORY`` (each
    product holds it anyway), several batches are held to the limit, an explicit limit is the limit; products
    exact throughout, and the estimate says what the operator does."""
    import landscape.memory as memory

    monkeypatch.setattr(memory, "DEFAULT_GRAPH_MEMORY", 1)
    case = make_case("mlp")
    H = reference_hessian(case)
    V = probes(H.shape[0], 2)
    loader = DataLoader(TensorDataset(case.X, case.y), batch_size=10, shuffle=False)
    whole = L.Problem(case.model, case.loss_fn, [(case.X, case.y)], mode=case.mode, params=case.params)
    for problem, options, kept in [
        (whole, {}, True),
        (whole, {"graph_memory_limit": 1}, False),
        (L.Problem(case.model, case.loss_fn, loader, mode=case.mode, params=case.params), {}, False),
    ]:
        op = L.hessian(problem, engine="double_backward", **options)
        for _ in range(2):
            assert rel(op @ V, H @ V) < RTOL
        assert (op.cached_graph_bytes > 0) == kept
        note = memory.estimate(problem, "hvp", **options).notes["gradient graph"]
        assert note.startswith("1 batch graph(s) kept" if kept else "one batch at a time")


def test_dataloader_with_short_last_batch_is_weighted_exactly():
    case = make_case("mlp")
    H = reference_hessian(case)
    loader = DataLoader(TensorDataset(case.X, case.y), batch_size=10, shuffle=False)
    op = L.hessian(L.Problem(case.model, case.loss_fn, loader))
    V = probes(H.shape[0], 2)
    assert rel(op @ V, H @ V) < RTOL


def test_hessian_dense_and_to_dense_match_reference():
    for name in ("mlp", "cnn_bn_train", "mlp_subset"):
        case = make_case(name)
        H = reference_hessian(case)
        p = problem_of(case)
        assert rel(L.hessian_dense(p), H) < RTOL
        assert rel(L.to_dense(L.hessian(p)), H) < RTOL


def test_dense_refuses_large_problems():
    p = problem_of(make_case("mlp"))
    with pytest.raises(ValueError, match="too large"):
        L.hessian_dense(p, max_params=10)


def test_operator_at_another_point():
    case = make_case("mlp")
    w = reference_point(case) + 0.1
    H = hessian(__import__("tests.conftest", fromlist=["x"]).reference_loss_fn(case))(w)
    op = L.hessian(problem_of(case), at=w)
    V = probes(H.shape[0], 2)
    assert rel(op @ V, H @ V) < RTOL


def _reference_ggn_and_fisher(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    model = case.model.eval()
    state = {k: v.detach() for k, v in {**dict(model.named_parameters()), **dict(model.named_buffers())}.items()}
    w = reference_point(case)

    def outputs(flat):
        return functional_call(model, {**state, **_flat_to_dict(case, flat)}, (case.X,))

    J = jacrev(outputs)(w)  # (N, C, P)
    out = outputs(w).detach()
    Ho = hessian(lambda o: case.loss_fn(o, case.y))(out)  # (N, C, N, C)
    G = torch.einsum("ncp,ncmd,mdq->pq", J, Ho, J)

    def per_sample(flat):
        o = outputs(flat)
        return torch.stack([case.loss_fn(o[i : i + 1], case.y[i : i + 1]) for i in range(len(case.y))])

    Jl = jacrev(per_sample)(w)  # (N, P)
    F = Jl.T @ Jl / len(case.y)
    return G, F


@pytest.mark.parametrize("name", ["mlp", "mse", "cnn_bn_eval", "mlp_subset"])
@pytest.mark.parametrize("batched", [False, True])
def test_ggn_and_empirical_fisher_match_dense_reference(name, batched):
    case = make_case(name)
    G, F = _reference_ggn_and_fisher(case)
    p = problem_of(case)
    V = probes(G.shape[0], 3)
    for op, ref, strat in ((L.ggn(p), G, "ggn"), (L.empirical_fisher(p), F, "fisher")):
        op.chosen = {1: strat, 3: strat + ("_batched" if batched else "")}
        assert rel(op @ V, ref @ V) < RTOL
        assert rel(op @ V[:, 0], ref @ V[:, 0]) < RTOL
    assert torch.linalg.eigvalsh(L.to_dense(L.ggn(p))).min() > -1e-10 * G.norm()


def test_ggn_equals_hessian_for_linear_model_with_mse():
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Linear(4, 2).double()
    X = torch.randn(15, 4, generator=g, dtype=torch.float64)
    y = torch.randn(15, 2, generator=g, dtype=torch.float64)
    p = L.Problem(model, torch.nn.MSELoss(), (X, y), batch_size=4)
    assert rel(L.to_dense(L.ggn(p)), L.hessian_dense(p)) < RTOL


def test_scipy_export_matches():
    case = make_case("mlp")
    H = reference_hessian(case)
    lin = L.hessian(problem_of(case)).to_scipy()
    v = probes(H.shape[0], 1)[:, 0]
    assert rel(torch.from_numpy(lin @ v.numpy()), H @ v) < RTOL
    assert lin.shape == tuple(H.shape)


def test_operator_metadata_and_bad_shapes():
    op = L.hessian(problem_of(make_case("mlp")))
    n = op.shape[0]
    assert op.shape == (n, n) and op.dtype == torch.float64 and op.device == torch.device("cpu")
    with pytest.raises(ValueError, match="cannot multiply"):
        op @ torch.zeros(n + 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="engine must be"):
        L.hessian(problem_of(make_case("mlp")), engine="magic")


def test_operator_shares_the_weights_and_refuses_after_an_in_place_change():
    case = make_case("mlp")
    problem = problem_of(case)
    H = reference_hessian(case)
    op = L.hessian(problem)
    at = L.hessian(problem, at=problem.params_vector())
    weight = next(iter(problem.model.parameters()))
    assert next(iter(op.params.values())).data_ptr() == weight.data_ptr()  # no copy of the weights
    v = probes(op.shape[0], 1)[:, 0]
    assert rel(op @ v, H @ v) < RTOL
    with torch.no_grad():
        weight.mul_(2.0)  # e.g. an optimizer step
    with pytest.raises(RuntimeError, match=r"changed in place since this HessianOperator was built.*at=problem"):
        op @ v
    assert rel(at @ v, H @ v) < RTOL  # an operator given its point keeps its own copy
