"""The update rules' thresholds against real optimizer runs on quadratics (bisection on torch's SGD, Adam, AdamW and
SAM steps), and their resolution from strings and ``torch.optim`` instances."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from landscape.stability import stability
from tests.stability.helpers import F64, Regression, critical_lr, make_sgd, one_thread  # noqa: F401


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
    found = critical_lr(lambda lr: q.diverges(make_sgd(momentum, nesterov, dampening), lr), predicted)
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

    found = critical_lr(lambda lr: q.diverges(make, lr, center=center), predicted)
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
    found = critical_lr(lambda lr: q.diverges(make, lr, center=center), predicted)
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
    found = critical_lr(lambda lr: q.diverges(make_sgd(), lr, sam_rho=rho), predicted)
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

    assert critical_lr(grows, predicted) == pytest.approx(predicted, rel=1e-3)


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
