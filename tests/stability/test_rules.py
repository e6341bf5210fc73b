"""Stability criteria against real optimizer runs on quadratics, the exact SGD criterion against the enumerated
second-moment recursion, and the edge-of-stability tracker's records, warm starts and lack of side effects."""

from __future__ import annotations

import copy
import itertools
import json
import math

import matplotlib
import numpy as np
import pytest
import torch
from torch import nn

from landscape.operators import hessian_dense
from landscape.problem import Problem
from landscape.stability import EdgeOfStabilityTracker, stability

matplotlib.use("Agg")

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    """These problems have at most 60 parameters: intra-op threads only add synchronisation (tens of times slower on
    a busy machine), so run single-threaded and restore the setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------------- quadratics
def _linear(d: int, weight: torch.Tensor) -> nn.Linear:
    model = torch.nn.utils.skip_init(nn.Linear, d, 1, bias=False, dtype=F64)
    with torch.no_grad():
        model.weight.copy_(weight.reshape(1, d))
    return model


class Regression:
    """Least squares ``L(w) = mean_i (x_i^T w - y_i)^2``: Hessian ``H = 2 X^T X / n``, minimiser ``w*``."""

    def __init__(self, n: int = 24, scales: tuple[float, ...] = (2.0, 1.2, 0.9, 0.7), seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        d = len(scales)
        self.X = torch.randn(n, d, generator=g, dtype=F64) * torch.tensor(scales, dtype=F64)
        self.y = self.X @ torch.randn(d, 1, generator=g, dtype=F64) + 0.1 * torch.randn(n, 1, generator=g, dtype=F64)
        self.w_star = torch.linalg.lstsq(self.X, self.y).solution.reshape(-1)
        self.H = 2.0 * self.X.T @ self.X / n
        evals, evecs = torch.linalg.eigh(self.H)
        self.lam, self.v1 = float(evals[-1]), evecs[:, -1]
        self.d = d
        self.start = 1e-6 * (self.v1 + 0.5 * torch.randn(d, generator=g, dtype=F64))

    def model(self, offset: torch.Tensor | None = None) -> nn.Linear:
        return _linear(self.d, self.w_star + (self.start if offset is None else offset))

    def problem(self, model: nn.Module | None = None) -> Problem:
        return Problem(self.model() if model is None else model, nn.MSELoss(), (self.X, self.y))

    def loss(self, model: nn.Module) -> torch.Tensor:
        return nn.functional.mse_loss(model(self.X), self.y)

    def diverges(
        self,
        make_optimizer,
        lr: float,
        steps: int = 600,
        sam_rho: float | None = None,
        center: torch.Tensor | None = None,
    ) -> bool:
        """Run the optimizer from ``center + start`` (default ``w*``, the fixed point without weight decay); unstable
        iff the deviation from ``center`` grows between the two halves of the run."""
        center = self.w_star if center is None else center
        model = _linear(self.d, center + self.start)
        w = model.weight
        opt = make_optimizer([w], lr)
        d0 = float(self.start.norm())
        norms = []
        for _ in range(steps):
            opt.zero_grad()
            self.loss(model).backward()
            if sam_rho is not None:
                g = w.grad.detach().clone()
                with torch.no_grad():
                    w.add_(sam_rho * g)
                opt.zero_grad()
                self.loss(model).backward()
                with torch.no_grad():
                    w.sub_(sam_rho * g)
            opt.step()
            dev = float((w.detach().reshape(-1) - center).norm())
            if not math.isfinite(dev) or dev > 1e4 * d0:
                return True
            norms.append(dev)
        half = steps // 2
        return max(norms[-20:]) > max(norms[half - 20 : half])


def _critical_lr(diverges, predicted: float, iters: int = 14) -> float:
    lo, hi = 0.7 * predicted, 1.4 * predicted
    assert not diverges(lo) and diverges(hi), "the bracket around the predicted threshold does not bracket"
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if diverges(mid) else (mid, hi)
    return 0.5 * (lo + hi)


def _sgd(momentum: float = 0.0, nesterov: bool = False, dampening: float = 0.0):
    return lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, dampening=dampening)


@pytest.mark.parametrize(
    "momentum, nesterov, dampening, formula",
    [
        (0.0, False, 0.0, lambda lam, b: 2 / lam),
        (0.9, False, 0.0, lambda lam, b: (2 + 2 * b) / lam),
        (0.5, False, 0.3, lambda lam, b: 2 * (1 + b) / ((1 - 0.3) * lam)),
        (0.9, True, 0.0, lambda lam, b: (2 + 2 * b) / ((1 + 2 * b) * lam)),
    ],
    ids=["gd", "heavy_ball", "heavy_ball_dampened", "nesterov"],
)
def test_sgd_family_threshold_matches_bisection_on_torch_sgd(momentum, nesterov, dampening, formula):
    q = Regression()
    model = q.model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=momentum, nesterov=nesterov, dampening=dampening)
    report = stability(q.problem(model), opt)
    predicted = report.max_stable_lr
    assert predicted == pytest.approx(formula(q.lam, momentum), rel=1e-6)
    found = _critical_lr(lambda lr: q.diverges(_sgd(momentum, nesterov, dampening), lr), predicted)
    assert found == pytest.approx(predicted, rel=1e-3)


@pytest.mark.parametrize(
    "momentum, nesterov, formula",
    [
        (0.0, False, lambda lam, b: 2 / lam),
        (0.9, False, lambda lam, b: (2 + 2 * b) / lam),
        (0.9, True, lambda lam, b: (2 + 2 * b) / ((1 + 2 * b) * lam)),
    ],
    ids=["gd", "heavy_ball", "nesterov"],
)
def test_coupled_weight_decay_shifts_the_sgd_family_thresholds(momentum, nesterov, formula):
    """``w <- w - lr (grad L + wd w)`` iterates ``I - lr (H + wd I)`` around its own fixed point
    ``(H + wd I)^-1 H w*``: every threshold is the one of ``lambda_max(H) + wd``, checked by bisection on torch's SGD
    (dropping the shift would predict the threshold of ``lambda_max(H)`` alone, 25% too large here)."""
    q = Regression()
    wd = 0.25 * q.lam  # the shift moves every threshold by 20%, far beyond the bisection's 1e-3
    model = q.model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=momentum, nesterov=nesterov, weight_decay=wd)
    predicted = stability(q.problem(model), opt).max_stable_lr
    assert predicted == pytest.approx(formula(q.lam + wd, momentum), rel=1e-6)
    center = torch.linalg.solve(q.H + wd * torch.eye(q.d, dtype=F64), q.H @ q.w_star)

    def make(params, lr):
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=wd)

    found = _critical_lr(lambda lr: q.diverges(make, lr, center=center), predicted)
    assert found == pytest.approx(predicted, rel=1e-3)


def _frozen_adam(pre: torch.Tensor, weight_decay: float = 0.0, decoupled: bool = False, momentum0=None):
    """Real torch.optim.Adam/AdamW whose preconditioner stays sqrt(max_exp_avg_sq) + eps: AMSGrad's running maximum
    is set far above any v the run reaches, and the step count is large enough that both bias corrections are 1.
    ``momentum0`` is the first moment to start from (AdamW's fixed point has a nonzero one)."""

    def make(params, lr):
        params = list(params)
        cls = torch.optim.AdamW if decoupled else torch.optim.Adam
        opt = cls(params, lr=lr, betas=(0.9, 0.999), amsgrad=True, weight_decay=weight_decay)
        saved = [p.detach().clone() for p in params]
        for p in params:
            p.grad = torch.zeros_like(p)
        opt.step()
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)
        for p in params:
            state = opt.state[p]
            state["step"].fill_(1e6)
            state["exp_avg"].zero_()
            if momentum0 is not None:
                state["exp_avg"].copy_(momentum0.reshape(p.shape))
            state["exp_avg_sq"].zero_()
            state["max_exp_avg_sq"].copy_((pre - 1e-8).reshape(p.shape) ** 2)
        return opt

    return make


@pytest.mark.parametrize(
    "weight_decay, decoupled", [(0.0, False), (0.5, False), (0.5, True)], ids=["adam", "l2", "adamw"]
)
def test_adam_frozen_preconditioner_threshold_matches_bisection_on_torch_adam(weight_decay, decoupled):
    q = Regression()
    pre = torch.tensor([3.0, 0.5, 1.0, 0.8], dtype=F64)
    model = q.model()
    opt = _frozen_adam(pre, weight_decay, decoupled)([model.weight], 1e-3)
    report = stability(q.problem(model), opt)
    crit = report.criteria[0]
    coupled = 0.0 if decoupled else weight_decay
    scaled = (q.H + coupled * torch.eye(q.d, dtype=F64)) / pre.sqrt()[:, None] / pre.sqrt()[None, :]
    lam_p = float(torch.linalg.eigvalsh(scaled)[-1])
    assert crit.kind == "exact" and crit.value == pytest.approx(lam_p, rel=1e-8)
    two = 2 - 1e-3 * weight_decay if decoupled else 2
    assert crit.threshold == pytest.approx(1.9 * two / (1e-3 * 0.1), rel=1e-12)
    predicted = report.max_stable_lr
    assert predicted == pytest.approx(2 * 1.9 / (0.1 * lam_p + (1.9 * weight_decay if decoupled else 0)), rel=1e-8)
    # The fixed point: H (w - w*) + wd w = 0 (L2), or H (w - w*) + wd P w = 0 (decoupled).
    shift = weight_decay * (torch.diag(pre) if decoupled else torch.eye(q.d, dtype=F64))
    center = torch.linalg.solve(q.H + shift, q.H @ q.w_star)
    m0 = q.H @ (center - q.w_star) if decoupled else None
    make = _frozen_adam(pre, weight_decay, decoupled, m0)
    found = _critical_lr(lambda lr: q.diverges(make, lr, center=center), predicted)
    assert found == pytest.approx(predicted, rel=1e-3)
    if weight_decay == 0:
        by_state = stability(q.problem(model), "adam", 1e-3, adam_state=(pre - 1e-8) ** 2)
        assert by_state.criteria[0].value == pytest.approx(lam_p, rel=1e-8)


def test_unnormalized_sam_threshold_matches_bisection_on_sam_runs():
    q = Regression()
    rho = 0.05
    report = stability(q.problem(), "sam", 0.01, rho=rho, sam="unnormalized")
    predicted = report.max_stable_lr
    assert predicted == pytest.approx(2 / (q.lam * (1 + rho * q.lam)), rel=1e-6)
    # The threshold on lambda for a given lr is the inverse of the same relation.
    crit = report.criteria[0]
    assert crit.threshold == pytest.approx((math.sqrt(1 + 8 * rho / 0.01) - 1) / (2 * rho), rel=1e-12)
    found = _critical_lr(lambda lr: q.diverges(_sgd(), lr, sam_rho=rho), predicted)
    assert found == pytest.approx(predicted, rel=1e-3)


def test_normalized_sam_threshold_is_the_step_that_stops_shrinking_the_top_direction():
    q = Regression()
    rho, c = 0.05, 0.01
    model = q.model(offset=c * q.v1)
    report = stability(q.problem(model), "sam", 0.01, rho=rho)
    gnorm = q.lam * c
    predicted = report.max_stable_lr
    assert predicted == pytest.approx(2 / (q.lam * (1 + rho * q.lam / gnorm)), rel=1e-6)

    def grows(lr: float) -> bool:
        m = q.model(offset=c * q.v1)
        w = m.weight
        opt = torch.optim.SGD([w], lr=lr)
        q.loss(m).backward()
        g = w.grad.detach().clone()
        with torch.no_grad():
            w.add_(rho * g / g.norm())
        opt.zero_grad()
        q.loss(m).backward()
        with torch.no_grad():
            w.sub_(rho * g / g.norm())
        opt.step()
        return float((w.detach().reshape(-1) - q.w_star).norm()) > c

    assert _critical_lr(grows, predicted) == pytest.approx(predicted, rel=1e-3)


# ---------------------------------------------------------------------------------------------------- SGD
def _recursion_growth(q: Regression, lr: float, batch_size: int, steps: int = 3000) -> float:
    """Per-step growth of ||E[d d^T]|| under Sigma <- mean over all B-subsets of (I - lr H_S) Sigma (I - lr H_S)."""
    H_i = [2.0 * torch.outer(x, x).numpy() for x in q.X]
    subsets = list(itertools.combinations(range(len(H_i)), batch_size))
    maps = np.stack([np.eye(q.d) - lr * np.mean([H_i[i] for i in s], axis=0) for s in subsets])
    sigma = np.eye(q.d)
    growth = []
    for _ in range(steps):
        sigma = np.einsum("kab,bc,kdc->ad", maps, sigma, maps) / len(subsets)
        norm = np.linalg.norm(sigma)
        sigma /= norm
        growth.append(norm)
    return float(np.mean(growth[-50:]))


def test_exact_sgd_criterion_matches_the_enumerated_second_moment_recursion():
    q = Regression(n=6, scales=(2.0, 1.0, 0.6))
    B = 2
    report = stability(q.problem(), "sgd", 0.05, batch_size=B)
    crit = report["mean-square SGD (exact)"]
    assert crit.kind == "exact" and report.max_stable_lr_is_exact
    lr_star = crit.max_stable_lr
    assert report.max_stable_lr == pytest.approx(lr_star, rel=1e-12)
    for factor in (0.5, 0.99, 1.01, 1.3):
        lr = factor * lr_star
        at = stability(q.problem(), "sgd", lr, batch_size=B)["mean-square SGD (exact)"]
        growth = _recursion_growth(q, lr, B)
        assert at.details["spectral_radius"] == pytest.approx(growth, rel=1e-8)
        assert at.stable == (growth < 1.0) == (factor < 1)


def test_sgd_critical_lr_is_non_decreasing_in_batch_size_and_reaches_gd():
    q = Regression(n=6, scales=(2.0, 1.0, 0.6))
    lrs = [stability(q.problem(), "sgd", 0.01, batch_size=b).max_stable_lr for b in range(1, 7)]
    assert all(a <= b * (1 + 1e-10) for a, b in zip(lrs, lrs[1:], strict=False))
    assert lrs[-1] == pytest.approx(2 / q.lam, rel=1e-8)
    assert lrs[0] < 0.9 * lrs[-1]


def test_sgd_necessary_conditions_bound_the_exact_threshold():
    q = Regression(n=8, scales=(2.0, 1.0, 0.6, 0.3))
    report = stability(q.problem(), "sgd", 0.05, batch_size=3)
    exact = report["mean-square SGD (exact)"].max_stable_lr
    for c in report.criteria:
        if c.kind == "necessary":
            assert c.max_stable_lr >= exact * (1 - 1e-10), c.name


def _small_mlp(reduction: str = "mean") -> Problem:
    g = torch.Generator().manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=F64))
    X = torch.randn(12, 3, generator=g, dtype=F64)
    y = torch.randn(12, 2, generator=g, dtype=F64)
    return Problem(model, nn.MSELoss(reduction=reduction), (X, y), batch_size=5)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_matrix_free_sgd_statistics_equal_the_dense_ones(reduction):
    problem = _small_mlp(reduction)
    dense = stability(problem, "sgd", 0.01, batch_size=4, exact=True)
    free = stability(problem, "sgd", 0.01, batch_size=4, exact=False, num_probes=problem.num_params)
    assert "mean-square SGD (exact)" in dense.names and "mean-square SGD (exact)" not in free.names
    for c in free.criteria:
        assert c.value == pytest.approx(dense[c.name].value, rel=1e-7, abs=1e-9), c.name
    lam = float(torch.linalg.eigvalsh(hessian_dense(problem))[-1])
    assert dense["mean (gradient descent): lambda_max(H) < 2/lr"].value == pytest.approx(lam, rel=1e-8)


def test_hutchinson_statistics_carry_standard_errors():
    problem = _small_mlp()
    free = stability(problem, "sgd", 0.01, batch_size=4, exact=False, num_probes=4)
    details = free["Frobenius (M&M Prop. 3)"].details
    assert details["probes"] == "4 Rademacher" and details["trace_stderr"] > 0
    dense = stability(problem, "sgd", 0.01, batch_size=4, exact=True)
    assert free["Frobenius (M&M Prop. 3)"].details["trace"] == pytest.approx(
        dense["Frobenius (M&M Prop. 3)"].details["trace"], abs=6 * details["trace_stderr"]
    )


# ---------------------------------------------------------------------------------------------------- reports
def test_report_verdicts_margins_and_max_stable_lr_are_consistent():
    q = Regression(n=8, scales=(2.0, 1.0, 0.6, 0.3))
    for kwargs in (
        {"optimizer": "gd"},
        {"optimizer": "sgd", "batch_size": 3},
        {"optimizer": "nesterov", "momentum": 0.9},
    ):
        for lr in (0.01, 0.3):
            report = stability(q.problem(), lr=lr, **kwargs)
            for c in report.criteria:
                assert c.stable == (c.value < c.threshold) == (c.margin > 0)
                assert c.kind in ("exact", "necessary", "sufficient", "heuristic")
                if math.isfinite(c.max_stable_lr):
                    below = stability(q.problem(), lr=0.999 * c.max_stable_lr, **kwargs)[c.name]
                    above = stability(q.problem(), lr=1.001 * c.max_stable_lr, **kwargs)[c.name]
                    assert below.stable and not above.stable, c.name
            assert report.stable == all(c.stable for c in report.criteria if c.kind in ("exact", "necessary"))
            assert report.max_stable_lr == min(c.max_stable_lr for c in report.binding)
            assert report.stable == (lr < report.max_stable_lr)
            json.dumps(report.to_dict())
            assert ("UNSTABLE" in report.summary()) == (not report.stable)


def test_string_and_torch_optimizer_spellings_agree_and_bad_input_is_refused():
    q = Regression()
    model = q.model()
    torch_opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.8, nesterov=True)
    a = stability(q.problem(model), torch_opt)
    b = stability(q.problem(model), "nesterov", 0.02, momentum=0.8)
    c = stability(q.problem(model), "sgd", 0.02, momentum=0.8, nesterov=True)
    assert a.optimizer == b.optimizer == c.optimizer == "nesterov"
    assert a.max_stable_lr == pytest.approx(b.max_stable_lr, rel=1e-12) == pytest.approx(c.max_stable_lr, rel=1e-12)
    with pytest.raises(ValueError, match="no state"):
        stability(q.problem(model), torch.optim.Adam(model.parameters()))
    with pytest.raises(ValueError, match="does not update"):
        stability(q.problem(model), torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=0.1))
    with pytest.raises(ValueError, match="momentum > 0"):
        stability(q.problem(model), "heavy_ball", 0.1)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        stability(q.problem(model), "rmsprop", 0.1)
    with pytest.raises(ValueError, match="preconditioner"):
        stability(q.problem(model), "adam", 0.1)


def test_adam_preconditioner_is_read_from_the_real_optimizer_state():
    q = Regression()
    model = q.model(offset=0.3 * torch.ones(q.d, dtype=F64))
    opt = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.8, 0.99), eps=1e-6)
    for _ in range(5):
        opt.zero_grad()
        q.loss(model).backward()
        opt.step()
    state = opt.state[model.weight]
    pre = (state["exp_avg_sq"].sqrt() / math.sqrt(1 - 0.99 ** float(state["step"])) + 1e-6).reshape(-1)
    scaled = q.H / pre.sqrt()[:, None] / pre.sqrt()[None, :]
    report = stability(q.problem(model), opt)
    assert report.criteria[0].value == pytest.approx(float(torch.linalg.eigvalsh(scaled)[-1]), rel=1e-8)
    assert report.criteria[0].threshold == pytest.approx(2 * 1.8 / (0.01 * 0.2), rel=1e-12)


def _snapshot(model: nn.Module, opt: torch.optim.Optimizer) -> tuple:
    return (
        copy.deepcopy(model.state_dict()),
        [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        [m.training for m in model.modules()],
        copy.deepcopy(opt.state_dict()),
        torch.get_rng_state(),
    )


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_no_side_effects_on_model_optimizer_mode_grads_or_global_rng():
    problem = _small_mlp()
    model = problem.model
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    loss = problem.loss_fn(model(torch.ones(2, 3, dtype=F64)), torch.zeros(2, 2, dtype=F64))
    loss.backward()
    opt.step()
    before = _snapshot(model, opt)
    stability(problem, opt)
    stability(problem, "sgd", 0.01, batch_size=3)
    stability(problem, "sgd", 0.01, batch_size=3, exact=False, num_probes=4)
    stability(problem, "sam", 0.01, rho=0.05)
    tracker = EdgeOfStabilityTracker(problem, opt, every=1)
    tracker(0)
    tracker(1)
    assert _same(before, _snapshot(model, opt))


# ---------------------------------------------------------------------------------------------------- tracker
def _mlp_problem(seed: int = 0) -> tuple[nn.Module, Problem]:
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=F64))
    X = torch.randn(32, 4, generator=g, dtype=F64)
    y = torch.randn(32, 2, generator=g, dtype=F64)
    return model, Problem(model, nn.MSELoss(), (X, y))


def test_tracker_records_sharpness_and_threshold_and_warm_starts_save_products(tmp_path):
    model, problem = _mlp_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    top2 = EdgeOfStabilityTracker(problem, opt, every=5, k=2, path=tmp_path / "eos.h5", tol=1e-6)
    warm = EdgeOfStabilityTracker(problem, opt, every=5)
    cold = EdgeOfStabilityTracker(problem, opt, every=5, warm_start=False)
    batch = next(iter(problem.batches()))
    for step in range(31):
        if step == 20:
            opt.param_groups[0]["lr"] = 0.02
        assert (top2(step) is None) == (step % 5 != 0)
        warm(step)
        cold(step)
        if step == 30:
            lam = torch.linalg.eigvalsh(hessian_dense(problem)).flip(0)[:2].numpy()
        opt.zero_grad()
        nn.functional.mse_loss(model(batch.inputs), batch.targets).backward()
        opt.step()
    h = top2.history
    assert h["step"].tolist() == list(range(0, 31, 5))
    assert h["sharpness"].shape == (7, 2) and h["converged"].all()
    assert np.allclose(h["sharpness"][-1], lam, rtol=1e-8)
    assert np.allclose(h["threshold"], [2 / 0.05] * 4 + [2 / 0.02] * 3)
    assert np.allclose(h["edge"], h["sharpness"][:, 0] / h["threshold"])
    # Between records the top eigenvector moves little: Lanczos from the previous one needs far fewer products.
    assert np.allclose(warm.history["sharpness"][:, 0], h["sharpness"][:, 0], rtol=1e-4)
    assert warm.history["num_matvecs"][1:].sum() < 0.7 * cold.history["num_matvecs"][1:].sum()
    saved, settings = EdgeOfStabilityTracker.load(tmp_path / "eos.h5")
    assert np.array_equal(saved["sharpness"], h["sharpness"]) and settings["rule"] == "gd"
    ax = top2.plot()
    assert ax.get_xlabel() == "step" and len(ax.get_lines()) == 3


def test_tracker_follows_adam_preconditioned_sharpness():
    model, problem = _mlp_problem(seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    tracker = EdgeOfStabilityTracker(problem, opt, every=2)
    first = tracker(0)
    assert math.isnan(first["preconditioned_sharpness"]) and math.isnan(first["threshold"])
    X, y = next(iter(problem.batches())).inputs, next(iter(problem.batches())).targets
    for step in range(1, 5):
        opt.zero_grad()
        nn.functional.mse_loss(model(X), y).backward()
        opt.step()
        tracker(step)
    last = tracker.history
    report = stability(problem, opt, tol=1e-10)
    assert last["preconditioned_sharpness"][-1] == pytest.approx(report.criteria[0].value, rel=1e-5)
    assert last["threshold"][-1] == pytest.approx(38 / 0.01, rel=1e-12)
    assert last["preconditioned_matvecs"][-1] > 0
