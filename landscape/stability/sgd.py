"""The stability criteria of minibatch SGD: the exact mean-square criterion and the conditions that scale.

SGD with batch size ``B`` out of ``n`` examples, batches drawn uniformly without replacement, independently across
steps; per-example Hessians ``H_i`` with ``H = (1/n) sum H_i`` and ``p = (n - B) / (B (n - 1))``
(:func:`landscape.scaling.finite_population_factor`):

- exact mean-square stability (Mulayoff & Michaeli, "Exact mean square linear stability analysis for SGD", COLT
  2024): ``Sigma_t = E[d_t d_t^T]`` evolves by ``Sigma <- E[(I - lr H_B) Sigma (I - lr H_B)]``, i.e.
  ``Q = I - lr (I (x) H + H (x) I) + lr^2 [(1 - p) H (x) H + p (1/n) sum H_i (x) H_i]``. ``Q`` is a positive,
  self-adjoint map, so its spectral radius is its top eigenvalue and ``rho(Q) < 1`` iff ``lr < 2 / lambda_gen`` with
  the *generalised sharpness* ``lambda_gen = lambda_max(C^+ D)``, ``C = (H (+) H) / 2``, ``D`` the bracket: the
  stable learning rates form an interval, and ``lambda_gen`` (hence the critical lr) is monotone in ``B``. Needs the
  dense ``H_i``: small problems only. ``lambda_gen = lambda_max(H)`` for ``B = n``.
- necessary conditions from the same analysis (Mulayoff & Michaeli, Prop. 3), computable matrix-free:
  ``lr <= 2 lambda_1 / (lambda_1^2 + p (1/n) sum (v_1^T H_i v_1 - lambda_1)^2)`` and
  ``lr <= 2 tr H / ((1 - p) ||H||_F^2 + p (1/n) sum ||H_i||_F^2)``; and ``lambda_max(H) < 2 / lr`` (the mean
  ``E[w_t]`` follows gradient descent).
- Wu & Su, "The implicit regularization of dynamical stability in SGD" (ICML 2023): ``tr H <= 2 / lr`` at ``B = 1``
  for MSE at an interpolating minimum (rank-one ``H_i``); with ``mean ||H_i||_F^2 >= (tr H)^2`` the Frobenius condition
  above gives ``tr H < 2 / (p lr)`` for any ``B``, which is what is reported.
- Wu, Ma, E, "How SGD selects the global minima in over-parameterized learning" (NeurIPS 2018): non-uniformity
  ``s = lambda_max((1/n) sum H_i^2 - H^2)^{1/2} <= 1 / (lr sqrt(p))`` (necessary only in one dimension).
- Dexter, Ocejo, Keerthi, Gupta, Acharya, Khanna, "A precise characterization of SGD stability using loss surface
  geometry" (ICLR 2024): coherence ``sigma = lambda_max(S) / max_i lambda_max(H_i)``, ``S_ij = ||H_i^{1/2} H_j^{1/2}||_F
  = sqrt(tr(H_i H_j))`` (high when the examples' curvature is aligned). Their divergence condition (Bernoulli
  sampling, PSD ``H_i``, interpolation) is compared here in the form ``lambda_max(H) < sigma / (lr sqrt(n/B - 1))``,
  taken from its restatement by Chang & Khanna (2025); it is a heuristic indicator and can disagree with the exact
  criterion on small problems.
- batch sharpness: the mean of ``lambda_max(H_B)`` over sampled minibatches against ``2 / lr`` (gradient descent on
  one batch), :func:`landscape.scaling.batch_sharpness`.

Losses with ``reduction="sum"`` use the minibatch loss ``(n/B) sum_{i in B} l_i`` (an unbiased estimate of the full
loss), so ``H_i = n d^2 l_i / dw^2``. Per-example Hessians are those of each example's loss under the Problem's mode
policy: with BatchNorm in train mode the examples of a batch interact and they are not defined (an error says so).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from landscape import reductions
from landscape.batch import take
from landscape.example_pool import Examples
from landscape.linalg import top_eigen
from landscape.linalg.probes import sample_probes
from landscape.operators import hessian, hessian_dense
from landscape.operators.per_example import CovarianceOperator, PerExample, examples_interact
from landscape.operators.transformed import Transformed
from landscape.problem import Problem
from landscape.scaling import batch_sharpness, finite_population_factor
from landscape.stability.report import Criterion, criterion
from landscape.stability.rules import REF_BATCH, REF_DEXTER, REF_GD, REF_MM, REF_WU_MA_E, REF_WU_SU, Rule

__all__ = [
    "COHERENCE_MAX_ELEMENTS",
    "EXACT_AUTO_MAX_PARAMS",
    "EXACT_MAX_PARAMS",
    "SGDStats",
    "batch_sharpness_criterion",
    "check_per_example",
    "dense_stats",
    "matrix_free_stats",
    "sgd_criteria",
]

# exact="auto" builds the dense per-example Hessians and the (P(P+1)/2)^2 second-moment map up to this many parameters.
EXACT_AUTO_MAX_PARAMS = 40
EXACT_MAX_PARAMS = 120
# The coherence matrix needs every example's products at once (n * P * probes numbers); above this it is skipped.
COHERENCE_MAX_ELEMENTS = 5 * 10**7


def check_per_example(problem: Problem) -> None:
    """``ValueError`` where the Problem's per-example Hessians are not defined (BatchNorm in train mode)."""
    if examples_interact(problem):
        raise ValueError(
            "the SGD criteria need per-example Hessians, which BatchNorm in train mode does not define (examples of "
            "a batch interact): use Problem(mode='eval'), or pass batch_size=None for the full-batch criteria"
        )


@dataclass
class SGDStats:
    """Curvature statistics the SGD criteria are made of (exact from dense ``H_i``, or matrix-free estimates)."""

    lam: float
    var_q: float
    trace: float
    fro2: float
    mean_fro2_i: float
    s2: float
    coherence: float | None
    lam_s: float | None
    max_lam_i: float | None
    exact: bool
    psd: bool | None = None
    generalized: float | None = None
    rho: Callable[[float], float] | None = None
    details: dict[str, Any] = field(default_factory=dict)


def _generalized_sharpness(Hs: np.ndarray, p: float, tol: float) -> tuple[float, Callable[[float], float], dict]:
    """Mulayoff & Michaeli's ``lambda_gen = lambda_max(C^+ D)`` and ``lr -> rho(Q(lr))``, from dense ``H_i``.

    Works on symmetric matrices supported on the joint range of the ``H_i`` (on its complement every step is the
    identity), in the eigenbasis of ``H`` there, where ``C = (H (+) H) / 2`` is diagonal, ``h_a + h_b`` over 2.
    """
    n, P, _ = Hs.shape
    # Singular values of the stacked H_i are sqrt(eig(sum H_i^2)) to absolute accuracy eps * max: zeros stay small.
    _, sv, Vt = np.linalg.svd(Hs.reshape(n * P, P), full_matrices=False)
    top = float(sv.max()) / math.sqrt(n)
    U = Vt[sv > tol * float(sv.max())].T if top > 0 else np.zeros((P, 0))
    r = U.shape[1]
    if r == 0:
        return 0.0, lambda lr: 1.0, {"range_dim": 0}
    G = np.einsum("pa,ipq,qb->iab", U, Hs, U)
    h, V = np.linalg.eigh(G.mean(0))
    G = np.einsum("pa,ipq,qb->iab", V, G, V)
    details = {"range_dim": r, "min_curvature_on_range": float(h.min())}
    if h.min() <= tol * max(abs(h).max(), top):
        # H is singular or indefinite where some H_i act: a drift no learning rate can damp.
        return math.inf, lambda lr: math.inf, details
    # K[(a,b),(c,d)] = sum_i G_i[a,c] G_i[b,d] / n = (Gflat^T Gflat)[(a,c),(b,d)] with axes permuted.
    Gflat = G.reshape(n, r * r)
    K = (Gflat.T @ Gflat / n).reshape(r, r, r, r).transpose(0, 2, 1, 3).reshape(r * r, r * r)
    a, b = np.triu_indices(r)
    i1, i2 = a * r + b, b * r + a
    w = np.where(a == b, 0.5, 1.0 / math.sqrt(2.0))
    Ksym = w[:, None] * (K[np.ix_(i1, i1)] + K[np.ix_(i1, i2)] + K[np.ix_(i2, i1)] + K[np.ix_(i2, i2)]) * w[None, :]
    Dsym = p * Ksym + (1.0 - p) * np.diag(h[a] * h[b])
    Dsym = (Dsym + Dsym.T) / 2
    A = h[a] + h[b]
    Ais = 1.0 / np.sqrt(A)
    lam_gen = 2.0 * float(np.linalg.eigvalsh(Ais[:, None] * Dsym * Ais[None, :]).max())

    def rho(lr: float) -> float:
        return float(np.linalg.eigvalsh(np.diag(1.0 - lr * A) + lr**2 * Dsym).max())

    return lam_gen, rho, details


def dense_stats(problem: Problem, p: float, shift: float) -> tuple[SGDStats, int]:
    """All SGD statistics from the dense per-example Hessians (one ``hessian_dense`` per example)."""
    check_per_example(problem)
    data = Examples(problem).all()
    n = problem.num_samples
    P = problem.num_params
    one = (problem.with_data([take(data, slice(i, i + 1))], distributed=False) for i in range(n))
    # Each single-example problem's loss is its own mean; times count_i / C (mean; N for sum losses) its share.
    Hs = np.stack(
        [problem.example_scale(example.num_counted) * hessian_dense(example).double().cpu().numpy() for example in one]
    )
    Hs = (Hs + Hs.transpose(0, 2, 1)) / 2 + shift * np.eye(P)[None]
    tol = 100.0 * P * float(torch.finfo(problem.dtype).eps)
    H = Hs.mean(0)
    eig_h, vec_h = np.linalg.eigh(H)
    lam, v1 = float(eig_h[-1]), vec_h[:, -1]
    q = np.einsum("a,iab,b->i", v1, Hs, v1)
    eig_i = np.linalg.eigvalsh(Hs)
    scale_i = max(float(np.abs(eig_i).max()), 1e-300)
    tr_ij = np.einsum("iab,jba->ij", Hs, Hs)
    S = np.sqrt(np.clip(tr_ij, 0.0, None))
    lam_s = float(np.linalg.eigvalsh(S).max())
    max_lam_i = float(eig_i[:, -1].max())
    M2 = np.einsum("iab,ibc->ac", Hs, Hs) / n
    s2 = float(np.linalg.eigvalsh(M2 - H @ H).max())
    gen, rho, details = _generalized_sharpness(Hs, p, tol)
    stats = SGDStats(
        lam=lam,
        var_q=float(np.mean((q - lam) ** 2)),
        trace=float(np.trace(H)),
        fro2=float(np.sum(H * H)),
        mean_fro2_i=float(np.mean(np.sum(Hs * Hs, axis=(1, 2)))),
        s2=max(s2, 0.0),
        coherence=lam_s / max_lam_i if max_lam_i > 0 else math.nan,
        lam_s=lam_s,
        max_lam_i=max_lam_i,
        exact=True,
        psd=bool(eig_i.min() >= -tol * scale_i),
        generalized=gen,
        rho=rho,
        details=details,
    )
    return stats, n * P


def matrix_free_stats(
    problem: Problem, shift: float, gen: torch.Generator, tol: float, num_probes: int, progress: bool = False
) -> tuple[SGDStats, int, int]:
    """SGD statistics without dense matrices: Lanczos, one per-example pass along ``v_1``, Hutchinson probes."""
    check_per_example(problem)
    op = hessian(problem, engine="double_backward")
    top = top_eigen(Transformed(op, shift=shift), 1, tol=tol, seed=gen, progress=progress)
    lam, v1 = float(top.values[0]), top.vectors[:, 0]
    pe = PerExample(problem)
    n, P = pe.n, problem.num_params
    q = torch.cat([(pe.apply(v1, rows) @ v1) for rows in pe.chunks(1)]) + shift
    exact_probes = P <= num_probes
    m = P if exact_probes else num_probes
    Z = (
        torch.eye(P, dtype=problem.dtype, device=problem.device)
        if exact_probes
        else sample_probes(P, m, distribution="rademacher", seed=gen, dtype=problem.dtype, device=problem.device)
    )
    keep = n * P * m <= COHERENCE_MAX_ELEMENTS
    Ys = torch.empty(n, m, P, dtype=problem.dtype, device=problem.device) if keep else None
    HZ = torch.zeros(m, P, dtype=problem.dtype, device=problem.device)
    fro_i = torch.zeros(n, m, dtype=torch.float64)
    for rows in pe.chunks(m):
        Yc = pe.apply(Z, rows) + shift * Z.T.unsqueeze(0)
        HZ += Yc.sum(0)
        fro_i[rows] = (Yc * Yc).sum(-1).double().cpu()
        if Ys is not None:
            Ys[rows] = Yc
    HZ /= n
    tr_samples = (HZ * Z.T).sum(-1).double().cpu().numpy()
    fro_samples = (HZ * HZ).sum(-1).double().cpu().numpy()
    fro_i_samples = fro_i.mean(0).numpy()
    cov = CovarianceOperator(pe, shift)
    # Without the vectors, k=1 runs on two vectors of memory (1 GB on GPT-2 small) instead of a Lanczos basis.
    s2 = float(top_eigen(cov, 1, tol=tol, seed=gen, progress=progress, vectors=False).values[0])
    details: dict[str, Any] = {"probes": "unit vectors (exact)" if exact_probes else f"{m} Rademacher"}
    if not exact_probes:
        for key, smp in (("trace", tr_samples), ("fro2", fro_samples), ("mean_fro2_i", fro_i_samples)):
            details[f"{key}_stderr"] = float(np.std(smp, ddof=1) / math.sqrt(m))
    coherence = lam_s = max_lam_i = None
    if Ys is not None:
        flat = Ys.reshape(n, m * P).double()
        gram = (flat @ flat.T / (1 if exact_probes else m)).cpu().numpy()
        lam_s = float(np.linalg.eigvalsh(np.sqrt(np.clip((gram + gram.T) / 2, 0.0, None))).max())
        if exact_probes:
            mats = Ys.double().cpu().numpy()
            max_lam_i = float(np.linalg.eigvalsh((mats + mats.transpose(0, 2, 1)) / 2)[:, -1].max())
        else:
            max_lam_i = _max_per_example_eigenvalue(pe, shift, gen)
            details["max_lam_i"] = "30 power iterations per example (a lower bound)"
        coherence = lam_s / max_lam_i if max_lam_i > 0 else math.nan
    else:
        details["coherence"] = f"skipped: n * P * probes = {n * P * m} > {COHERENCE_MAX_ELEMENTS} numbers"
    stats = SGDStats(
        lam=lam,
        var_q=float(((q.double() - lam) ** 2).mean()),
        trace=float(np.mean(tr_samples)) if not exact_probes else float(np.sum(tr_samples)),
        fro2=float(np.mean(fro_samples)) if not exact_probes else float(np.sum(fro_samples)),
        mean_fro2_i=float(np.mean(fro_i_samples)) if not exact_probes else float(np.sum(fro_i_samples)),
        s2=max(s2, 0.0),
        coherence=coherence,
        lam_s=lam_s,
        max_lam_i=max_lam_i,
        exact=False,
        details=details,
    )
    return stats, int(op.num_matvecs), pe.num_products


def _max_per_example_eigenvalue(pe: PerExample, shift: float, gen: torch.Generator, iters: int = 30) -> float:
    """``max_i lambda_max(H_i)`` by power iteration on every example at once (a lower bound after ``iters``)."""
    problem = pe.problem
    best = 0.0
    for rows in pe.chunks(1):
        c = rows.stop - rows.start
        V = torch.randn(c, problem.num_params, generator=gen, dtype=problem.dtype).to(problem.device)
        V /= reductions.norms(V, 1, keepdim=True)
        ray = torch.zeros(c, dtype=problem.dtype, device=problem.device)
        for _ in range(iters):
            W = pe.apply(V, rows, per_example=True) + shift * V
            ray = (W * V).sum(1)
            V = W / reductions.norms(W, 1, keepdim=True).clamp_min(torch.finfo(problem.dtype).tiny)
        best = max(best, float(ray.max()))
    return best


def sgd_criteria(stats: SGDStats, rule: Rule, lr: float, n: int, B: int) -> list[Criterion]:
    """The criteria of plain SGD with batch size ``B`` of ``n`` at ``lr``, from the statistics ``stats``: the exact
    mean-square one where ``stats`` are exact, then the necessary conditions, then the heuristic ones."""
    p = finite_population_factor(B, n)
    out: list[Criterion] = []
    how = "exact, from dense per-example Hessians" if stats.exact else "matrix-free estimate"
    if stats.generalized is not None:
        psd = bool(stats.psd)
        out.append(
            criterion(
                "mean-square SGD (exact)",
                "exact" if psd else "heuristic",
                stats.generalized,
                2.0 / lr,
                math.inf if stats.generalized <= 0 else 2.0 / stats.generalized,
                REF_MM,
                "generalised sharpness lambda_max(C^+ D) against 2/lr; E|w_t - w*|^2 -> 0 iff it holds (batches drawn "
                "uniformly without replacement, independently across steps)"
                + ("" if psd else "; some H_i are indefinite, outside the theorem's regular-minimum assumption"),
                {"spectral_radius": stats.rho(lr) if stats.rho else math.nan, "p": p, **stats.details},
            )
        )
    gd_threshold = 2.0 / lr
    out.append(
        criterion(
            "mean (gradient descent): lambda_max(H) < 2/lr",
            "necessary",
            stats.lam,
            gd_threshold,
            rule.max_lr(stats.lam),
            f"{REF_MM}, Thm. 1; {REF_GD}",
            "E[w_t] follows gradient descent, and a bounded second moment needs a bounded mean",
        )
    )
    top_dir = (stats.lam**2 + p * stats.var_q) / stats.lam if stats.lam > 0 else math.inf
    out.append(
        criterion(
            "top-direction variance (M&M Prop. 3)",
            "necessary",
            top_dir,
            gd_threshold,
            2.0 / top_dir if top_dir > 0 else math.inf,
            f"{REF_MM}, Prop. 3 (15)",
            f"(lambda_1^2 + p mean_i (v_1^T H_i v_1 - lambda_1)^2) / lambda_1 against 2/lr; {how}",
            {"lambda_max": stats.lam, "var_q": stats.var_q, "p": p},
        )
    )
    fro = ((1.0 - p) * stats.fro2 + p * stats.mean_fro2_i) / stats.trace if stats.trace > 0 else math.inf
    out.append(
        criterion(
            "Frobenius (M&M Prop. 3)",
            "necessary",
            fro,
            gd_threshold,
            2.0 / fro if fro > 0 else math.inf,
            f"{REF_MM}, Prop. 3 (16)",
            f"((1-p) ||H||_F^2 + p mean_i ||H_i||_F^2) / tr H against 2/lr; {how}"
            + ("" if stats.exact else " (Hutchinson: compare the margin with the standard errors in details)"),
            {"trace": stats.trace, "fro2": stats.fro2, "mean_fro2_i": stats.mean_fro2_i, "p": p, **stats.details},
        )
    )
    trace_threshold = math.inf if p == 0 else 2.0 / (p * lr)
    out.append(
        criterion(
            "trace: tr H < 2/(p lr)",
            "heuristic",
            stats.trace,
            trace_threshold,
            math.inf if p == 0 or stats.trace <= 0 else 2.0 / (p * stats.trace),
            f"{REF_WU_SU} (B = 1: tr H <= 2/lr)",
            "necessary for MSE at an interpolating minimum with scalar outputs (rank-one H_i); heuristic otherwise",
        )
    )
    s = math.sqrt(stats.s2)
    out.append(
        criterion(
            "non-uniformity: s < 1/(lr sqrt(p))",
            "heuristic",
            s,
            math.inf if p == 0 else 1.0 / (lr * math.sqrt(p)),
            math.inf if p == 0 or s == 0 else 1.0 / (s * math.sqrt(p)),
            REF_WU_MA_E,
            "s = lambda_max(mean_i H_i^2 - H^2)^(1/2); necessary only in one dimension",
        )
    )
    if stats.coherence is not None:
        ratio = n / B - 1.0
        thr = math.inf if ratio <= 0 else stats.coherence / (lr * math.sqrt(ratio))
        out.append(
            criterion(
                "coherence: lambda_max(H) < sigma/(lr sqrt(n/B - 1))",
                "heuristic",
                stats.lam,
                thr,
                math.inf if ratio <= 0 or stats.lam <= 0 else stats.coherence / (stats.lam * math.sqrt(ratio)),
                REF_DEXTER,
                "sigma = lambda_max(S) / max_i lambda_max(H_i), S_ij = sqrt(tr(H_i H_j)); the form of Dexter et al.'s "
                "divergence condition (Bernoulli sampling, PSD H_i, interpolation) as restated by Chang & Khanna 2025",
                {"sigma": stats.coherence, "lambda_max_S": stats.lam_s, "max_lambda_max_H_i": stats.max_lam_i},
            )
        )
    return out


def batch_sharpness_criterion(problem: Problem, rule: Rule, lr: float, B: int, seed: int) -> tuple[Criterion, int]:
    """The mean top eigenvalue of sampled minibatch Hessians against the rule's threshold, and the products spent."""
    res = batch_sharpness(problem, B, seed=seed)
    value = res.mean + rule.weight_decay
    return (
        criterion(
            "batch sharpness: mean lambda_max(H_B)",
            "heuristic",
            value,
            rule.threshold(lr),
            rule.max_lr(value),
            REF_BATCH,
            f"mean over {res.num_batches} sampled minibatches of the top eigenvalue of the minibatch Hessian against "
            "the full-batch threshold: each batch's own step is stable below it; SGD tends to train where it is near "
            "the threshold",
            {"values": res.values.tolist(), "std": res.std, "stderr": res.stderr},
        ),
        int(res.num_matvecs),
    )
