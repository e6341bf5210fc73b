"""Benchmark: top eigenvalues, trace and spectral density of landscape against the peers, with accuracy.

Workloads (see ``/work/shared/PEERS.md``; same construction as ``experiments/bench_hvp.py``):

- W1: ``landscape.models.w1_mlp()`` (118k params) on 2048 samples of a 10-class Gaussian mixture in 784 dimensions
  (``landscape.data.gaussian_mixture``, local generator), 4 batches of 512, trained briefly, eval mode, float32.
- W2: ``landscape.models.w2_cnn()`` (116k params, BatchNorm) on ``landscape.data.synthetic_images``, 4 batches,
  trained briefly, eval mode, float32. The specified size is 512 images 3x32x32; on a shared 2-core CPU one
  float64 HVP of that costs ~15 s, so by default this benchmark uses a REDUCED W2 (same network, 128 images of
  3x8x8, 4 batches of 32) and says so in its output; ``--w2-samples 512 --w2-size 32`` restores the full size.
- SYN: ``landscape.MatrixOperator(Q diag(lambda) Q^T)``, ``lambda_i = i^-2``, n = 1000, float64 (exact answers).

References (float64): top-5 eigenvalues from ``landscape.top_eigen`` on a float64 ``Problem`` with tol 1e-10; the
W1 trace from BackPACK's exact Hessian diagonal (float64 copy of the model); the W2 trace from a long float64
XTrace run whose standard error is the reference's uncertainty; ``tr H^2`` (for the second density moment) from a
deflated Hutchinson estimator (exact on the span of the reference top-5 eigenvectors, Rademacher probes on the
orthogonal complement), with its standard error.

Usage::

    python experiments/bench_spectrum.py --quick            # smoke test
    python experiments/bench_spectrum.py                    # full run (target < 8 min on 2 cores)
    python experiments/bench_spectrum.py --workloads W1,SYN --seeds 10 --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import platform
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

# Run from anywhere: use this checkout's package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from workloads import SEED, Workload, add_w2_options, make_w1, make_w2  # noqa: E402

import landscape  # noqa: E402

TRACE_METHODS = ("hutchinson", "hutch++", "xtrace")
# The equal-budget study also runs the papers' fixed split (adaptive=False) to show what the adaptive rule avoids.
TRACE_VARIANTS = {
    "hutchinson": {"method": "hutchinson"},
    "hutch++": {"method": "hutch++"},
    "xtrace": {"method": "xtrace"},
    "hutch++ fixed": {"method": "hutch++", "adaptive": False},
    "xtrace fixed": {"method": "xtrace", "adaptive": False},
}
# "Never worse" allows float rounding only: a fallen-back estimator computes Hutchinson's estimate from the same probes,
# but in other block widths (so possibly another HVP strategy), which moves a float32 trace by ~1e-6 relative.
SAME_ERROR_ATOL = 1e-5  # in units of relative error
GOAL_TOP5_ERR = 1e-6
GOAL_TOP5_HVPS = 30


# ---------------------------------------------------------------------------------------------------- workloads
def build_w1(cfg: dict) -> Workload:
    return make_w1(cfg["train_steps"])


def build_w2(cfg: dict) -> Workload:
    return make_w2(cfg["train_steps"], samples=cfg["w2_samples"], size=cfg["w2_size"])


def make_syn(cfg: dict) -> Workload:
    n = 1000
    g = torch.Generator().manual_seed(SEED)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    lam = torch.arange(1, n + 1, dtype=torch.float64) ** -2.0
    A = (Q * lam) @ Q.T
    A = 0.5 * (A + A.T)
    desc = f"SYN: MatrixOperator(Q diag(i^-2) Q^T), n = {n}, float64, random orthogonal Q (seed {SEED})"
    return Workload("SYN", desc, matrix=A, exact_eigs=lam.numpy())


# ---------------------------------------------------------------------------------------------------- helpers
def count_calls(obj, attr: str, cost=lambda *args: 1) -> list[int]:
    """Wrap ``obj.attr`` so each call adds ``cost(*args)`` to the returned one-element counter."""
    calls = [0]
    orig = getattr(obj, attr)

    def counted(*args):
        calls[0] += cost(*args)
        return orig(*args)

    setattr(obj, attr, counted)
    return calls


@contextlib.contextmanager
def seeded(seed: int):
    """Peers draw from the global RNG: seed it for them, and restore it afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np_state = np.random.get_state()
        np.random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(np_state)


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


def short_err(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0][:140] if str(err) else ''}"


def print_failures_and_wall_time(tracebacks: list[str], start: float) -> None:
    """The last lines of a benchmark: the peers' tracebacks (if any), then the wall time since ``start``."""
    if tracebacks:
        print("\n## Peer failures (tracebacks)\n")
        for t in tracebacks:
            print(t)
    print(f"\ntotal wall time {time.perf_counter() - start:.0f} s")


def flat_to_list(model: nn.Module, v: Tensor) -> list[Tensor]:
    out, i = [], 0
    for p in model.parameters():
        out.append(v[i : i + p.numel()].view_as(p).to(p.dtype).contiguous())
        i += p.numel()
    return out


@dataclass
class Row:
    """One measurement: workload, section, method, HVPs, seconds, error (and free-form detail)."""

    workload: str
    section: str
    method: str
    hvps: int | str | None = None
    seconds: float | None = None
    error: float | None = None
    detail: str = ""
    failed: str = ""


@dataclass
class Reference:
    top5: np.ndarray
    top5_note: str
    trace: float
    trace_se: float
    trace_note: str
    tr2: float
    tr2_se: float
    tr2_note: str
    num_params: int

    @property
    def m1(self) -> float:
        return self.trace / self.num_params

    @property
    def m2(self) -> float:
        return self.tr2 / self.num_params


class Ctx:
    """Per-workload state: the problems, the operator factory, the reference, and the result rows."""

    def __init__(self, w: Workload, cfg: dict, seeds: int):
        self.w = w
        self.cfg = cfg
        self.seeds = seeds
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self.criterion = nn.CrossEntropyLoss()
        if w.matrix is not None:
            self.problem = None
            self.problem64 = None
            self.P = w.matrix.shape[0]
        else:
            self.problem = landscape.Problem(w.model, self.criterion, w.batches, mode="eval")
            self.problem64 = landscape.Problem(w.model, self.criterion, w.batches, mode="eval", dtype=torch.float64)
            self.P = self.problem.num_params
        self.ref: Reference | None = None

    def op(self, dtype: torch.dtype = torch.float32) -> landscape.CurvatureOperator:
        """A fresh operator (fresh matvec counter; the Hessian's graph cache and engine choice start empty)."""
        if self.w.matrix is not None:
            return landscape.MatrixOperator(self.w.matrix)
        return landscape.hessian(self.problem64 if dtype == torch.float64 else self.problem)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        shown = row.failed or (
            f"HVPs {row.hvps}, {fmt_s(row.seconds)}, err {fmt_e(row.error)}" + (f"; {row.detail}" if row.detail else "")
        )
        print(f"  [{row.workload} {row.section}] {row.method}: {shown}", flush=True)
        return row


def fmt_s(s: float | None) -> str:
    return "-" if s is None else f"{s:.2f} s"


def fmt_e(e: float | None) -> str:
    return "-" if e is None or (isinstance(e, float) and math.isnan(e)) else f"{e:.1e}"


def run_peer(ctx: Ctx, section: str, method: str, fn: Callable[[], Row]) -> None:
    """Run a peer measurement; a failing peer prints its error and the benchmark goes on."""
    try:
        ctx.add(fn())
    except Exception as err:  # noqa: BLE001 - report every peer failure, keep going
        ctx.add(Row(ctx.w.name, section, method, failed=f"FAILED {short_err(err)}"))
        ctx.notes.append(f"{section} / {method} traceback:\n" + traceback.format_exc(limit=4))


def top5_error(values, ref: np.ndarray) -> tuple[float, float]:
    """(max, median) relative error of the top-k values (sorted descending) against the reference."""
    v = np.sort(np.asarray(values, dtype=np.float64))[::-1][: ref.size]
    errs = np.abs(v - ref[: v.size]) / np.abs(ref[: v.size])
    return float(errs.max()), float(np.median(errs))


def eigenthings_operator(ctx: Ctx):
    """hessian-eigenthings' operator for the workload, and the module: the matrix as a ``LambdaOperator``, or the
    full-data Hessian of a copy of the model (in eval mode)."""
    import hessian_eigenthings as he

    if ctx.w.matrix is not None:
        A = ctx.w.matrix
        return he.LambdaOperator(lambda v: A @ v, size=A.shape[0], dtype=A.dtype), he
    model = copy.deepcopy(ctx.w.model).eval()
    return he.HessianOperator(model, ctx.w.batches, he.supervised_loss(ctx.criterion), full_dataset=True), he


# ---------------------------------------------------------------------------------------------------- references
def deflated_moments(op: landscape.CurvatureOperator, V: Tensor, num_probes: int, seed: int, block: int = 50):
    """``tr H`` and ``tr H^2`` with their stderrs: exact on span(V) (V orthonormal eigenvectors), Hutchinson with
    Rademacher probes on the complement: ``tr H = tr(V^T H V) + E z_P^T H z_P``, ``tr H^2 = ||H V||_F^2 +
    E ||H z_P||^2`` with ``z_P = (I - V V^T) z``."""
    HV = op @ V
    exact1 = float((V * HV).sum())
    exact2 = float((HV * HV).sum())
    g = torch.Generator().manual_seed(seed)
    s1, s2 = [], []
    done = 0
    while done < num_probes:
        b = min(block, num_probes - done)
        Z = (torch.randint(0, 2, (op.shape[0], b), generator=g, dtype=torch.float64) * 2 - 1).to(op.dtype)
        Z = Z - V @ (V.T @ Z)
        HZ = op @ Z
        s1.append((Z * HZ).sum(0))
        s2.append((HZ * HZ).sum(0))
        done += b
    a1, a2 = torch.cat(s1).numpy(), torch.cat(s2).numpy()
    n = a1.size
    return (
        exact1 + a1.mean(),
        a1.std(ddof=1) / math.sqrt(n),
        exact2 + a2.mean(),
        a2.std(ddof=1) / math.sqrt(n),
    )


def backpack_trace(w: Workload) -> float:
    """Exact trace of the full-data Hessian from BackPACK's DiagHessian, float64, on a deep copy of the model."""
    from backpack import backpack, extend
    from backpack.extensions import DiagHessian

    model = extend(copy.deepcopy(w.model).double().eval())
    loss_fn = extend(nn.CrossEntropyLoss())
    n = sum(len(y) for _, y in w.batches)
    total = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Full backward hook is firing ... no inputs require gradients"
        for x, y in w.batches:
            model.zero_grad()
            with backpack(DiagHessian()):
                loss_fn(model(x.double()), y).backward()
            total += sum(float(p.diag_h.sum()) for p in model.parameters()) * len(y) / n
    return total


def build_reference(ctx: Ctx) -> None:
    w, cfg = ctx.w, ctx.cfg
    print("\n### float64 references", flush=True)
    if w.matrix is not None:
        lam = w.exact_eigs
        ctx.ref = Reference(
            lam[:5], "exact", float(lam.sum()), 0.0, "exact", float((lam**2).sum()), 0.0, "exact", ctx.P
        )
        print(f"  SYN exact: top-5 {lam[:5]}, trace {lam.sum():.6f}, tr H^2 {(lam**2).sum():.6f}", flush=True)
        return
    op = ctx.op(torch.float64)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", landscape.ConvergenceWarning)
        r = landscape.top_eigen(op, 5, tol=1e-10, max_matvecs=cfg["ref_eig_budget"], seed=12345)
    t_eig = time.perf_counter() - t0
    worst = float(np.max(r.residuals) / abs(r.values[0]))
    top_note = (
        f"landscape.top_eigen float64, tol 1e-10: {r.num_matvecs} HVPs, {t_eig:.1f} s, worst relative Ritz residual "
        f"{worst:.1e}, max error bound {np.max(r.error_bounds):.1e}, converged {bool(r.all_converged)}"
    )
    print(f"  top-5 {r.values}  ({top_note})", flush=True)
    V = r.vectors.detach()
    V, _ = torch.linalg.qr(V)
    t0 = time.perf_counter()
    tr_d, tr_d_se, tr2, tr2_se = deflated_moments(op, V, cfg["ref_defl_probes"], seed=777)
    t_defl = time.perf_counter() - t0
    tr2_note = (
        f"deflated Hutchinson float64 (exact on the top-5 eigenvectors + {cfg['ref_defl_probes']} Rademacher probes "
        f"on the complement, {t_defl:.1f} s)"
    )
    print(
        f"  deflated: tr H = {tr_d:.4f} +- {tr_d_se:.4f}, tr H^2 = {tr2:.4f} +- {tr2_se:.4f} ({tr2_note})", flush=True
    )
    trace, trace_se, trace_note = tr_d, tr_d_se, "deflated Hutchinson (see tr H^2)"
    if w.name == "W1":
        try:
            t0 = time.perf_counter()
            trace = backpack_trace(w)
            trace_se = 0.0
            trace_note = f"BackPACK DiagHessian float64 (exact), {time.perf_counter() - t0:.2f} s"
            print(
                f"  BackPACK exact trace {trace:.6f} (PEERS.md quotes 202.72 for THEIR W1 model; ours is a different "
                f"model/data); deflated estimate differs by {(tr_d - trace) / tr_d_se:+.2f} stderr",
                flush=True,
            )
        except Exception as err:  # noqa: BLE001
            print(f"  BackPACK failed ({short_err(err)}); using the deflated estimate", flush=True)
    else:
        t0 = time.perf_counter()
        est = landscape.trace(op, method="xtrace", num_matvecs=cfg["ref_xtrace"], seed=4242)
        t_x = time.perf_counter() - t0
        # Combine the two independent unbiased float64 estimates by inverse-variance weighting.
        wx, wd = 1 / est.stderr**2, 1 / tr_d_se**2
        trace = (wx * est.value + wd * tr_d) / (wx + wd)
        trace_se = 1 / math.sqrt(wx + wd)
        trace_note = (
            f"float64 XTrace {cfg['ref_xtrace']} matvecs ({est.value:.4f} +- {est.stderr:.4f}, {t_x:.1f} s) combined "
            f"with the deflated Hutchinson estimate by inverse-variance weighting; the two differ by "
            f"{(est.value - tr_d) / math.hypot(est.stderr, tr_d_se):+.2f} combined stderr. (BackPACK: no BatchNorm)"
        )
        print(f"  trace reference {trace:.4f} +- {trace_se:.4f} ({trace_note})", flush=True)
    ctx.ref = Reference(np.asarray(r.values[:5]), top_note, trace, trace_se, trace_note, tr2, tr2_se, tr2_note, ctx.P)


# ---------------------------------------------------------------------------------------------------- top-5
def bench_top(ctx: Ctx) -> None:
    w, ref = ctx.w, ctx.ref
    print("\n### top-1 / top-5 eigenvalues", flush=True)
    sec = "top5"

    def row(method: str, values, top1: float, hvps, seconds: float, note: str, median: str = "median") -> Row:
        """A top-5 row: the largest relative error of ``values`` against the reference's top five, and in the detail
        the error of ``top1`` (the method's largest eigenvalue), the median error and ``note``."""
        emax, emed = top5_error(values, ref.top5)
        detail = f"top-1 err {rel(top1, ref.top5[0]):.1e}, {median} {emed:.1e}{note}"
        return Row(w.name, sec, method, hvps, seconds, emax, detail)

    def ours(tol: float, budget: int | None) -> Row:
        op = ctx.op()
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", landscape.ConvergenceWarning)
            r = landscape.top_eigen(op, 5, method="lanczos", tol=tol, max_matvecs=budget, seed=1)
        dt = time.perf_counter() - t0
        name = f"landscape top_eigen lanczos tol={tol:g}" + (f" max_matvecs={budget}" if budget else "")
        note = f", converged {bool(r.all_converged)}"
        return row(name, r.values, r.values[0], r.num_matvecs, dt, note, median="median top-5 err")

    for tol, budget in ctx.cfg["our_eig_settings"]:
        run_peer(ctx, sec, f"landscape tol={tol}", lambda tol=tol, budget=budget: ours(tol, budget))

    def ours_power() -> Row:
        op = ctx.op()
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", landscape.ConvergenceWarning)
            r = landscape.top_eigen(op, 5, method="power", tol=1e-4, seed=1)
        dt = time.perf_counter() - t0
        return row("landscape top_eigen power tol=1e-4", r.values, r.values[0], r.num_matvecs, dt, "")

    if ctx.cfg.get("power", True):
        run_peer(ctx, sec, "landscape power", ours_power)

    def ours_spectrum(num_probes: int, num_steps: int) -> Row:
        op = ctx.op()
        t0 = time.perf_counter()
        s = landscape.spectrum(op, k=5, num_probes=num_probes, num_steps=num_steps, seed=1)
        dt = time.perf_counter() - t0
        name = f"landscape spectrum() {num_probes} probes x {num_steps} steps"
        return row(name, s.eigenvalues, s.eigenvalues[0], s.num_matvecs, dt, "; also gives trace/density")

    for p_, m_ in ctx.cfg["spectrum_settings"]:
        run_peer(ctx, sec, "landscape spectrum", lambda p_=p_, m_=m_: ours_spectrum(p_, m_))

    if w.matrix is not None:
        return  # the model-based peers need a model

    def pyhessian_top() -> Row:
        from pyhessian import hessian as pyh_hessian

        model = copy.deepcopy(w.model)
        with seeded(1):
            h = pyh_hessian(model, ctx.criterion, dataloader=w.batches, cuda=False)
            calls = count_calls(h, "dataloader_hv_product")
            t0 = time.perf_counter()
            vals, _ = h.eigenvalues(top_n=5)
            dt = time.perf_counter() - t0
        return row(
            "PyHessian eigenvalues(top_n=5) defaults (maxIter=100, tol=1e-3)",
            vals,
            max(vals),
            calls[0],
            dt,
            "; HVPs counted by wrapping dataloader_hv_product (one full-data HVP per call)",
        )

    run_peer(ctx, sec, "PyHessian", pyhessian_top)

    def eigenthings(mode: str) -> Row:
        op, he = eigenthings_operator(ctx)
        calls = count_calls(op, "matvec")
        t0 = time.perf_counter()
        if mode == "lanczos":
            r = he.lanczos(op, k=5, seed=1)
            label = "hessian-eigenthings lanczos(k=5) defaults (max_iter=2k=10, which='LM')"
        else:
            r = he.deflated_power_iteration(op, k=5, seed=1)
            label = "hessian-eigenthings deflated_power_iteration(k=5) defaults (max_iter=100, tol=1e-4)"
        dt = time.perf_counter() - t0
        vals = r.eigenvalues.detach().double().numpy()
        return row(label, vals, vals.max(), calls[0], dt, "; HVPs counted by wrapping matvec")

    run_peer(ctx, sec, "eigenthings lanczos", lambda: eigenthings("lanczos"))
    run_peer(ctx, sec, "eigenthings power", lambda: eigenthings("power_iter"))

    def curvlinops_eigsh() -> Row:
        import curvlinops
        from scipy.sparse.linalg import LinearOperator, eigsh

        model = copy.deepcopy(w.model).eval()
        params = [p for p in model.parameters() if p.requires_grad]
        t0 = time.perf_counter()
        H = curvlinops.HessianLinearOperator(model, ctx.criterion, params, w.batches, check_deterministic=False)
        A = H.to_scipy()
        calls = [0]

        def mv(x):
            calls[0] += 1 if x.ndim == 1 else x.shape[1]
            return A @ x

        L = LinearOperator(A.shape, matvec=mv, dtype=A.dtype)
        v0 = np.random.default_rng(1).standard_normal(A.shape[0]).astype(A.dtype)
        vals = eigsh(L, k=5, which="LA", tol=1e-4, v0=v0, return_eigenvectors=False)
        dt = time.perf_counter() - t0
        return row(
            "curvlinops HessianLinearOperator + scipy eigsh(k=5, which='LA', tol=1e-4)",
            vals,
            vals.max(),
            calls[0],
            dt,
            "; matvecs counted in a wrapping scipy LinearOperator; check_deterministic=False",
        )

    run_peer(ctx, sec, "curvlinops eigsh", curvlinops_eigsh)


# ---------------------------------------------------------------------------------------------------- trace
@dataclass
class TraceStudy:
    workload: str
    method: str
    budget: int
    errors: list[float]
    stderrs: list[float]
    ref_se: float
    seconds: list[float]
    matvecs: list[int]
    deflated: list[bool]

    @property
    def median_rel(self) -> float:
        return float(np.median(np.abs(self.errors)))

    def coverage(self, k: float) -> float:
        hits = [abs(e) <= k * math.hypot(s, self.ref_se) for e, s in zip(self.errors, self.stderrs, strict=True)]
        return float(np.mean(hits))


def bench_trace(ctx: Ctx) -> list[TraceStudy]:
    w, ref = ctx.w, ctx.ref
    print(f"\n### trace at equal HVP budgets ({ctx.seeds} seeds)", flush=True)
    studies: list[TraceStudy] = []
    op = ctx.op()  # one shared operator: the study is about accuracy; time per call is reported separately
    for budget in ctx.cfg["trace_budgets"]:
        for method, kwargs in TRACE_VARIANTS.items():
            errs, ses, secs, mvs, defl = [], [], [], [], []
            for s in range(ctx.seeds):
                before = op.num_matvecs
                t0 = time.perf_counter()
                est = landscape.trace(op, num_matvecs=budget, seed=1000 + s, **kwargs)
                secs.append(time.perf_counter() - t0)
                mvs.append(op.num_matvecs - before)
                errs.append((est.value - ref.trace) / abs(ref.trace))
                ses.append(est.stderr / abs(ref.trace))
                defl.append(bool(est.settings.get("deflated", False)))
            st = TraceStudy(w.name, method, budget, errs, ses, ref.trace_se / abs(ref.trace), secs, mvs, defl)
            studies.append(st)
            print(
                f"  {method:13s} budget {budget:4d} (HVPs {mvs[0]}): median |rel err| {st.median_rel:.2e}, "
                f"coverage 1se {st.coverage(1):.0%} 2se {st.coverage(2):.0%}, deflated {np.mean(defl):.0%}, "
                f"{np.median(secs):.2f} s/call",
                flush=True,
            )
    return studies


def bench_trace_peers(ctx: Ctx) -> None:
    w, ref = ctx.w, ctx.ref
    n = ctx.cfg["peer_probes"]
    sec = "trace"
    print(f"\n### trace, single runs at ~{n} probes (ours and peers)", flush=True)

    def row(method: str, hvps, seconds: float, value: float, detail: str) -> Row:
        """A trace row: its relative error against the reference trace."""
        return Row(w.name, sec, method, hvps, seconds, rel(value, ref.trace), detail)

    def ours(method: str, budget: int) -> Row:
        op = ctx.op()
        t0 = time.perf_counter()
        est = landscape.trace(op, method=method, num_matvecs=budget, seed=1)
        dt = time.perf_counter() - t0
        return row(
            f"landscape trace {method}",
            op.num_matvecs,
            dt,
            est.value,
            f"{est.value:.4f} +- {est.stderr:.4f}",
        )

    for method in TRACE_METHODS:
        run_peer(ctx, sec, f"landscape {method}", lambda method=method: ours(method, n))

    if w.model is not None:

        def pyhessian_trace(tol: float | None) -> Row:
            from pyhessian import hessian as pyh_hessian

            model = copy.deepcopy(w.model)
            with seeded(1):
                h = pyh_hessian(model, ctx.criterion, dataloader=w.batches, cuda=False)
                t0 = time.perf_counter()
                vhv = h.trace(maxIter=n) if tol is None else h.trace(maxIter=n, tol=tol)
                dt = time.perf_counter() - t0
            label = (
                f"PyHessian trace(maxIter={n}) default stopping rule (tol=1e-3)"
                if tol is None
                else (
                    f"PyHessian trace(maxIter={n}, tol=-inf): all probes (tol=0 still stops early when the mean is < 0)"
                )
            )
            return row(
                label,
                len(vhv),
                dt,
                float(np.mean(vhv)),
                f"{np.mean(vhv):.4f} (no error bar); HVPs = len(returned samples)",
            )

        run_peer(ctx, sec, "PyHessian default", lambda: pyhessian_trace(None))
        run_peer(ctx, sec, "PyHessian all", lambda: pyhessian_trace(float("-inf")))

    def eigenthings_trace(method: str) -> Row:
        op, he = eigenthings_operator(ctx)
        calls = count_calls(op, "matvec")
        t0 = time.perf_counter()
        budget = n if method == "hutchinson" else 3 * (n // 3)
        r = he.trace(op, num_matvecs=budget, method=method, seed=1)
        dt = time.perf_counter() - t0
        return row(
            f"hessian-eigenthings trace(method='{method}', num_matvecs={budget})",
            calls[0],
            dt,
            r.estimate,
            f"{r.estimate:.4f} +- {r.stderr:.4f}",
        )

    run_peer(ctx, sec, "eigenthings hutchinson", lambda: eigenthings_trace("hutchinson"))
    run_peer(ctx, sec, "eigenthings hutch++", lambda: eigenthings_trace("hutch++"))

    def curvlinops_trace(name: str) -> Row:
        import curvlinops

        if w.matrix is not None:
            A = w.matrix
            calls = [0]
            label_op = "dense tensor"
            target = A
        else:
            model = copy.deepcopy(w.model).eval()
            params = [p for p in model.parameters() if p.requires_grad]
            target = curvlinops.HessianLinearOperator(
                model, ctx.criterion, params, w.batches, check_deterministic=False
            )
            calls = count_calls(target, "_matmat", lambda X: X[0].shape[-1])
            label_op = "HessianLinearOperator"
        fn = {
            "hutchinson": curvlinops.hutchinson_trace,
            "hutch++": curvlinops.hutchpp_trace,
            "xtrace": curvlinops.xtrace,
        }[name]
        budget = {"hutchinson": n, "hutch++": 3 * (n // 3), "xtrace": 2 * (n // 2)}[name]
        with seeded(1):
            t0 = time.perf_counter()
            val = float(fn(target, budget))
            dt = time.perf_counter() - t0
        hv = calls[0] if w.matrix is None else budget
        return row(
            f"curvlinops {fn.__name__}({label_op}, {budget})",
            hv,
            dt,
            val,
            f"{val:.4f} (no error bar)",
        )

    for name in TRACE_METHODS:
        run_peer(ctx, sec, f"curvlinops {name}", lambda name=name: curvlinops_trace(name))


# ---------------------------------------------------------------------------------------------------- density
def moments_from_quadrature(nodes: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    nodes = np.nan_to_num(np.asarray(nodes, dtype=np.float64))
    weights = np.asarray(weights, dtype=np.float64)
    per = [(weights * nodes**j).sum(axis=1).mean() for j in (1, 2)]
    return float(per[0]), float(per[1])


def density_row(ctx: Ctx, method: str, hvps, dt: float, m1: float, m2: float, extra: str = "") -> Row:
    ref = ctx.ref
    e1, e2 = rel(m1, ref.m1), rel(m2, ref.m2)
    return Row(ctx.w.name, "density", method, hvps, dt, max(e1, e2), f"m1 err {e1:.1e}, m2 err {e2:.1e}{extra}")


def patch_torch_eig():
    """PyHessian's density() calls torch.eig (removed from torch): a replacement for symmetric T via eigh."""

    def eig(T, eigenvectors=False):
        vals, vecs = torch.linalg.eigh(0.5 * (T + T.T))
        return torch.stack([vals, torch.zeros_like(vals)], dim=1), vecs

    return eig


def bench_density(ctx: Ctx) -> None:
    w = ctx.w
    sec = "density"
    print("\n### spectral density (SLQ): moment errors (1/P) tr H and (1/P) tr H^2", flush=True)
    settings = ctx.cfg["density_settings"]

    def ours(nv: int, m: int, via_spectrum: bool) -> Row:
        """Our density, from ``spectral_density`` or from the density that ``spectrum`` returns with its top five."""
        op = ctx.op()
        t0 = time.perf_counter()
        if via_spectrum:
            s = landscape.spectrum(op, k=5, num_probes=nv, num_steps=m, seed=1)
            density, hvps, name = s.density, s.num_matvecs, "spectrum"
        else:
            density = landscape.spectral_density(op, num_probes=nv, num_steps=m, seed=1)
            hvps, name = op.num_matvecs, "spectral_density"
        dt = time.perf_counter() - t0
        mom = density.moments(2)
        method = f"landscape {name}({nv} probes x {m} steps)"
        return density_row(ctx, method, hvps, dt, float(mom.value[0]), float(mom.value[1]))

    for nv, m in settings:
        for via_spectrum in (False, True):
            label = "landscape spectrum" if via_spectrum else "landscape spectral_density"
            run_peer(ctx, sec, label, lambda nv=nv, m=m, v=via_spectrum: ours(nv, m, v))

    def pyhessian_density(nv: int, m: int) -> Row:
        from pyhessian import hessian as pyh_hessian

        model = copy.deepcopy(w.model)
        had = hasattr(torch, "eig")
        saved = getattr(torch, "eig", None)
        torch.eig = patch_torch_eig()
        try:
            with seeded(1):
                h = pyh_hessian(model, ctx.criterion, dataloader=w.batches, cuda=False)
                calls = count_calls(h, "dataloader_hv_product")
                t0 = time.perf_counter()
                nodes, weights = h.density(iter=m, n_v=nv)
                dt = time.perf_counter() - t0
        finally:
            if had:
                torch.eig = saved
            else:
                del torch.eig
        m1, m2 = moments_from_quadrature(np.array(nodes), np.array(weights))
        return density_row(
            ctx, f"PyHessian density(iter={m}, n_v={nv}) [torch.eig patched -> eigh]", calls[0], dt, m1, m2
        )

    def eigenthings_density(nv: int, m: int) -> Row:
        op, he = eigenthings_operator(ctx)
        calls = count_calls(op, "matvec")
        t0 = time.perf_counter()
        r = he.spectral_density(op, num_runs=nv, lanczos_steps=m, seed=1)
        dt = time.perf_counter() - t0
        m1, m2 = moments_from_quadrature(r.raw_eigenvalues.double().numpy(), r.raw_weights.double().numpy())
        return density_row(
            ctx, f"hessian-eigenthings spectral_density(num_runs={nv}, lanczos_steps={m})", calls[0], dt, m1, m2
        )

    def curvlinops_density(nv: int, m: int) -> Row:
        import curvlinops

        if w.matrix is not None:
            return Row(
                w.name, sec, "curvlinops lanczos_approximate_spectrum", failed="skipped: needs a linear operator"
            )
        model = copy.deepcopy(w.model).eval()
        params = [p for p in model.parameters() if p.requires_grad]
        H = curvlinops.HessianLinearOperator(model, ctx.criterion, params, w.batches, check_deterministic=False)
        calls = count_calls(H, "_matmat", lambda X: X[0].shape[-1])
        with seeded(1):
            t0 = time.perf_counter()
            grid, dens = curvlinops.lanczos_approximate_spectrum(H, ncv=m, num_repeats=nv)
            dt = time.perf_counter() - t0
        g, p = grid.double().numpy(), dens.double().numpy()
        mass = np.trapezoid(p, g)
        m1 = np.trapezoid(p * g, g) / mass
        m2 = np.trapezoid(p * g * g, g) / mass
        return density_row(
            ctx,
            f"curvlinops lanczos_approximate_spectrum(ncv={m}, num_repeats={nv})",
            calls[0],
            dt,
            m1,
            m2,
            "; moments by integrating the returned smoothed density (includes boundary "
            "eigsh; kernel width inflates m2)",
        )

    peers = [("PyHessian density", pyhessian_density)] if w.model is not None else []
    peers += [("eigenthings density", eigenthings_density), ("curvlinops density", curvlinops_density)]
    for method, density in peers:
        for nv, m in settings:
            run_peer(ctx, sec, method, lambda density=density, nv=nv, m=m: density(nv, m))


# ---------------------------------------------------------------------------------------------------- report
def print_tables(ctxs: list[Ctx], studies: list[TraceStudy]) -> None:
    print("\n\n## Results\n")
    for c in ctxs:
        r = c.ref
        print(f"- {c.w.name} references: top-5 {np.array2string(r.top5, precision=8)} ({r.top5_note})")
        print(f"  trace {r.trace:.6f} +- {r.trace_se:.2g} ({r.trace_note}); (1/P) tr H = {r.m1:.6e}")
        print(f"  tr H^2 {r.tr2:.6f} +- {r.tr2_se:.2g} ({r.tr2_note}); (1/P) tr H^2 = {r.m2:.6e}")
    titles = {
        "top5": "Top-5 eigenvalues (error = max relative error over the top 5; details give top-1 and median)",
        "trace": "Trace, single runs (error = relative error vs reference)",
        "density": "Spectral density (error = max of the relative errors of (1/P) tr H and (1/P) tr H^2)",
    }
    for sec, title in titles.items():
        print(f"\n### {title}\n")
        print("| workload | method | HVPs | wall time | rel. error | details |")
        print("|---|---|---|---|---|---|")
        for c in ctxs:
            for row in c.rows:
                if row.section != sec:
                    continue
                if row.failed:
                    print(f"| {row.workload} | {row.method} | - | - | - | {row.failed} |")
                else:
                    print(
                        f"| {row.workload} | {row.method} | {row.hvps} | {fmt_s(row.seconds)} | "
                        f"{fmt_e(row.error)} | {row.detail} |"
                    )
    print("\n### Trace at equal HVP budgets: median |relative error| over seeds, coverage of |error| <= k * stderr\n")
    print("Coverage uses the estimator's own stderr combined with the reference's stderr, sqrt(se^2 + se_ref^2)")
    print("(se_ref = 0 for W1 (BackPACK, exact) and SYN (exact)). Goal criterion: k = 2 (a ~95% interval).\n")
    print(
        "| workload | budget | method | seeds | median rel. error | median rel. stderr | cover 1se | cover 2se | "
        "deflated | median time/call |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for s in studies:
        print(
            f"| {s.workload} | {s.budget} | {s.method} | {len(s.errors)} | {s.median_rel:.2e} | "
            f"{np.median(s.stderrs):.2e} | {s.coverage(1):.0%} | {s.coverage(2):.0%} | {np.mean(s.deflated):.0%} | "
            f"{np.median(s.seconds):.3f} s |"
        )


def print_goals(ctxs: list[Ctx], studies: list[TraceStudy]) -> None:
    print("\n## Goals\n")
    for c in ctxs:
        if c.w.name != "W1":
            continue
        cands = [
            r
            for r in c.rows
            if r.section == "top5" and r.method.startswith("landscape top_eigen lanczos") and not r.failed
        ]
        ok = [r for r in cands if r.error is not None and r.error <= GOAL_TOP5_ERR and r.hvps <= GOAL_TOP5_HVPS]
        if not cands:
            continue  # the top-eigenvalue section did not run
        if ok:
            best = min(ok, key=lambda r: r.hvps)
            print(
                f"- PASS: W1 top-5 at <= {GOAL_TOP5_ERR:g} relative error within {GOAL_TOP5_HVPS} HVPs: "
                f"{best.method} used {best.hvps} HVPs, max rel. error {best.error:.1e}"
            )
        else:
            shown = "; ".join(f"{r.method}: {r.hvps} HVPs, {fmt_e(r.error)}" for r in cands)
            print(f"- FAIL: W1 top-5 at <= {GOAL_TOP5_ERR:g} within {GOAL_TOP5_HVPS} HVPs ({shown})")

    def find(wl: str, method: str, budget: int) -> TraceStudy | None:
        return next((s for s in studies if s.workload == wl and s.method == method and s.budget == budget), None)

    h = find("SYN", "hutchinson", 60)
    if h is not None:
        for m in ("hutch++", "xtrace"):
            s = find("SYN", m, 60)
            ratio = h.median_rel / max(s.median_rel, 1e-300)
            verdict = "PASS" if ratio >= 10 else "FAIL"
            print(
                f"- {verdict}: SYN at 60 HVPs, {m} median error {s.median_rel:.2e} vs Hutchinson "
                f"{h.median_rel:.2e}: {ratio:.1f}x smaller (goal >= 10x)"
            )
    for wl in ("W1", "W2"):
        budgets = sorted({s.budget for s in studies if s.workload == wl})
        for m in ("hutch++", "xtrace"):
            worse = []
            for b in budgets:
                s, hh = find(wl, m, b), find(wl, "hutchinson", b)
                if s and hh and s.median_rel > hh.median_rel + SAME_ERROR_ATOL:
                    worse.append(f"{b}: {s.median_rel:.2e} > {hh.median_rel:.2e}")
            if budgets:
                pairs = ", ".join(
                    f"{b}: {find(wl, m, b).median_rel:.6e} vs {find(wl, 'hutchinson', b).median_rel:.6e}"
                    for b in budgets
                )
                verdict = "PASS" if not worse else "FAIL"
                print(f"- {verdict}: {wl} {m} never worse than Hutchinson at equal HVPs (median errors {pairs})")
    for wl in sorted({s.workload for s in studies}):
        for m in TRACE_METHODS:
            ss = [s for s in studies if s.workload == wl and s.method == m]
            n = sum(len(s.errors) for s in ss)
            c2 = sum(s.coverage(2) * len(s.errors) for s in ss) / max(n, 1)
            c1 = sum(s.coverage(1) * len(s.errors) for s in ss) / max(n, 1)
            verdict = "PASS" if c2 >= 0.9 else "FAIL"
            print(
                f"- {verdict}: {wl} {m}: 2-stderr interval covers the true error in {c2:.0%} of {n} runs "
                f"(goal >= 90%; 1-stderr coverage {c1:.0%})"
            )


# ---------------------------------------------------------------------------------------------------- main
def config(quick: bool, args) -> dict:
    if quick:
        base = {
            "train_steps": 10,
            "ref_eig_budget": 120,
            "ref_defl_probes": 20,
            "ref_xtrace": 40,
            "our_eig_settings": [(1e-4, 30)],
            "spectrum_settings": [(2, 10)],
            "trace_budgets": [30, 60],
            "peer_probes": 12,
            "density_settings": [(1, 12)],
            "power": False,
        }
        w2 = {"w2_samples": args.w2_samples or 64, "w2_size": args.w2_size or 8, "train_steps": 3}
        return {"W1": dict(base), "W2": {**base, **w2}, "SYN": {**base, "ref_defl_probes": 0}}
    base = {
        "train_steps": 60,
        "ref_eig_budget": 300,
        "ref_defl_probes": 300,
        "ref_xtrace": 400,
        "our_eig_settings": [(1e-3, 30), (1e-4, 30), (1e-5, 30), (1e-4, None)],
        "spectrum_settings": [(8, 40), (1, 30)],
        "trace_budgets": [30, 60, 120],
        "peer_probes": 100,
        "density_settings": [(1, 100), (10, 80)],
        "power": True,
    }
    # W2 is the expensive workload (convolutions; float64 convolutions are ~3x slower again): smaller parts.
    w2 = {
        "w2_samples": args.w2_samples or 128,
        "w2_size": args.w2_size or 8,
        "train_steps": 12,
        "ref_defl_probes": 100,
        "ref_xtrace": 100,
        "our_eig_settings": [(1e-4, 30), (1e-4, None)],
        "spectrum_settings": [(1, 30)],
        "peer_probes": 50,
        "density_settings": [(1, 100)],
        "power": False,
    }
    return {"W1": dict(base), "W2": {**base, **w2}, "SYN": dict(base)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny budgets and references: a smoke test")
    parser.add_argument("--workloads", default="W1,W2,SYN", help="comma-separated subset of W1,W2,SYN")
    parser.add_argument(
        "--seeds", type=int, default=None, help="seeds per trace setting (default: SYN 20, W1 5, W2 3; quick: 3, 2, 1)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--sections", default="top,trace,peers,density", help="comma-separated subset of top,trace,peers,density"
    )
    add_w2_options(parser)
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cfgs = config(args.quick, args)
    default_seeds = {"SYN": 3, "W1": 2, "W2": 1} if args.quick else {"SYN": 20, "W1": 5, "W2": 3}
    makers = {"W1": build_w1, "W2": build_w2, "SYN": make_syn}
    wanted = [s.strip().upper() for s in args.workloads.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in makers]
    if unknown:
        parser.error(f"unknown workload(s) {unknown}; choose from {sorted(makers)}")

    print("# landscape spectrum benchmark: top eigenvalues, trace, spectral density")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, python {platform.python_version()}, "
        f"{'quick' if args.quick else 'full'} mode. Timings are noisy on a shared machine: compare within one run."
    )
    print(
        "PyHessian's density() calls torch.eig, removed from current torch: this benchmark (only) monkeypatches "
        "torch.eig with torch.linalg.eigh on the symmetric tridiagonal while PyHessian runs."
    )
    try:
        import hessian_eigenthings as he

        if not hasattr(he, "compute_hessian_eigenthings"):
            print(
                f"hessian-eigenthings {he.__version__} has no compute_hessian_eigenthings(...): its lanczos() / "
                "deflated_power_iteration() on HessianOperator(full_dataset=True) are used with their defaults."
            )
    except Exception as err:  # noqa: BLE001
        print(f"hessian-eigenthings unavailable: {short_err(err)}")

    sections = set(args.sections.split(","))
    start = time.perf_counter()
    ctxs: list[Ctx] = []
    studies: list[TraceStudy] = []
    for name in wanted:
        t_w = time.perf_counter()
        cfg = cfgs[name]
        w = makers[name](cfg)
        print(f"\n## {name}\n{w.description}", flush=True)
        ctx = Ctx(w, cfg, args.seeds or default_seeds[name])
        ctxs.append(ctx)
        try:
            build_reference(ctx)
        except Exception:  # noqa: BLE001
            print("reference failed; skipping workload:\n" + traceback.format_exc(limit=4))
            ctxs.pop()
            continue
        if "top" in sections:
            bench_top(ctx)
        if "trace" in sections:
            try:
                studies.extend(bench_trace(ctx))
            except Exception:  # noqa: BLE001
                print("trace study failed:\n" + traceback.format_exc(limit=4))
        if "peers" in sections:
            bench_trace_peers(ctx)
        if "density" in sections:
            bench_density(ctx)
        print(f"\n{name} done in {time.perf_counter() - t_w:.0f} s", flush=True)

    print_tables(ctxs, studies)
    print_goals(ctxs, studies)
    print_failures_and_wall_time([n for c in ctxs for n in c.notes], start)


if __name__ == "__main__":
    main()
