"""Benchmark: the exact trace (second-order backpropagation, ``landscape.trace(method="auto")``) against Hutchinson,
Hutch++ and XTrace estimates, ours and the peers', on W1 and W2: time and relative error in one run.

Workloads (``experiments/workloads.py``; see ``/work/shared/PEERS.md``):

- W1: MLP 784-128-128-10 (ReLU, 118k parameters) on 2048 samples, 4 batches, trained briefly, eval mode, float32.
  Every layer and the loss are supported, so ``auto`` is exact (BackPACK ``DiagHessian`` on a private copy).
  Reference: the exact trace in float64, cross-checked against BackPACK used directly (``extend`` on a deep copy).
- W2: residual CNN with BatchNorm (121k parameters), eval mode, float32. By default a REDUCED W2 (128 images of
  3x8x8 instead of 512 of 3x32x32, same network; ``--w2-samples 512 --w2-size 32`` restores it), as in
  ``bench_spectrum.py``. The Hessian diagonal is not exact through BatchNorm or residual sums, so ``auto`` falls back
  to Hutch++ and says why; the reference is a long float64 Hutchinson run whose standard error is printed (errors
  below ~2 of it are not resolved). The GGN diagonal *is* exact on W2 (``DiagGGNExact``, with BackPACK's converter
  turning the residual ``+`` into modules): exact GGN trace against the estimators on the GGN operator, with the
  float32 exact value as reference (float64 is refused: BackPACK 1.7 backpropagates average pooling only in the
  default dtype).

Estimators run at ``--probes`` matrix-vector products (default 100) over ``--seeds`` seeds (median error, median
time); peers run once with their global RNG seeded (PyHessian ``trace(maxIter=m, tol=-inf)``, curvlinops
``hutchinson_trace`` / ``hutchpp_trace`` / ``xtrace``, hessian-eigenthings ``trace`` Hutchinson / Hutch++).

Usage::

    python experiments/bench_trace.py --quick        # smoke test (< 1 min)
    python experiments/bench_trace.py                # full run
    python experiments/bench_trace.py --workloads W1 --seeds 10 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_spectrum import count_calls, print_failures_and_wall_time, seeded, short_err  # noqa: E402
from workloads import Workload, add_w2_options, make_w1, make_w2  # noqa: E402

import landscape  # noqa: E402

ESTIMATORS = ("hutchinson", "hutch++", "xtrace")


@dataclass
class Row:
    workload: str
    curvature: str
    method: str
    hvps: int | str
    seconds: float | None
    error: float | None
    detail: str = ""


@dataclass
class Reference:
    value: float
    stderr: float
    note: str


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def fmt_e(e: float | None) -> str:
    if e is None or math.isnan(e):
        return "-"
    return "0 (exact)" if e == 0 else f"{e:.1e}"


class Bench:
    def __init__(self, w: Workload, cfg: dict):
        self.w = w
        self.cfg = cfg
        self.criterion = nn.CrossEntropyLoss()
        self.problem = landscape.Problem(w.model, self.criterion, w.batches)
        self.problem64 = landscape.Problem(w.model, self.criterion, w.batches, dtype=torch.float64)
        self.rows: list[Row] = []
        self.failures: list[str] = []

    def add(self, row: Row) -> None:
        self.rows.append(row)
        secs = "-" if row.seconds is None else f"{row.seconds:.3f} s"
        print(
            f"  [{row.workload} {row.curvature}] {row.method}: HVPs {row.hvps}, {secs}, err {fmt_e(row.error)}"
            + (f"; {row.detail}" if row.detail else ""),
            flush=True,
        )

    def op(self, curvature: str, dtype: torch.dtype = torch.float32) -> landscape.CurvatureOperator:
        problem = self.problem64 if dtype == torch.float64 else self.problem
        return landscape.hessian(problem) if curvature == "hessian" else landscape.ggn(problem)

    def peer(self, curvature: str, label: str, fn: Callable[[], tuple[float, int, float, str]], ref: Reference) -> None:
        """Run one peer measurement ``fn() -> (value, hvps, seconds, detail)``; failures are reported, not fatal."""
        try:
            value, hvps, dt, detail = fn()
            self.add(Row(self.w.name, curvature, label, hvps, dt, rel(value, ref.value), detail))
        except Exception as err:  # noqa: BLE001 - a failing peer must not stop the benchmark
            print(f"  [{self.w.name} {curvature}] {label}: FAILED {short_err(err)}", flush=True)
            self.failures.append(f"{self.w.name} {label}:\n{traceback.format_exc(limit=4)}")

    # ------------------------------------------------------------------------------------------ exact and ours
    def auto(self, curvature: str, ref: Reference | None) -> Reference | None:
        """Time ``landscape.trace(op)`` (method "auto") on a fresh float32 operator; print what ran and why. With no
        reference yet, an exact result becomes the reference (returned); an estimate then has no error to report."""
        times, est = [], None
        for _ in range(self.cfg["repeats"]):
            op = self.op(curvature)
            t0 = time.perf_counter()
            est = landscape.trace(op, num_matvecs=self.cfg["probes"], seed=0)
            times.append(time.perf_counter() - t0)
        print(f"  auto on the {curvature}: {est.settings['note']}", flush=True)
        if ref is None and est.method == "exact":
            ref = Reference(est.value, 0.0, f"exact float32 ({est.settings['extension']})")
        ran = f"exact ({est.settings['extension']})" if est.method == "exact" else est.method
        self.add(
            Row(
                self.w.name,
                curvature,
                f"landscape trace(method='auto') -> {ran}, float32",
                est.num_matvecs,
                min(times),
                None if ref is None else rel(est.value, ref.value),
                f"{est.value:.6f}; min of {len(times)} runs",
            )
        )
        return ref

    def ours(self, curvature: str, ref: Reference) -> None:
        """Each estimator on a fresh operator per call (what ``landscape.trace(landscape.hessian(problem), ...)``
        costs a user, engine choice and graph building included), over the seeds."""
        m = self.cfg["probes"]
        for method in ESTIMATORS:
            errs, secs, hvps = [], [], 0
            for s in range(self.cfg["seeds"]):
                op = self.op(curvature)
                t0 = time.perf_counter()
                est = landscape.trace(op, method=method, num_matvecs=m, seed=100 + s)
                secs.append(time.perf_counter() - t0)
                errs.append(rel(est.value, ref.value))
                hvps = est.num_matvecs
            self.add(
                Row(
                    self.w.name,
                    curvature,
                    f"landscape trace(method='{method}', num_matvecs={m})",
                    hvps,
                    statistics.median(secs),
                    statistics.median(errs),
                    f"median of {len(errs)} seeds (max err {max(errs):.1e}); last {est.value:.4f} +- {est.stderr:.4f}",
                )
            )

    # ------------------------------------------------------------------------------------------ peers
    def backpack_direct(self, ref: Reference) -> None:
        """BackPACK's DiagHessian used directly (``extend`` on a deep copy), as its documentation shows."""

        def run() -> tuple[float, int, float, str]:
            from backpack import backpack, extend
            from backpack.extensions import DiagHessian

            model = extend(copy.deepcopy(self.w.model).eval())
            loss_fn = extend(nn.CrossEntropyLoss())
            n = sum(len(y) for _, y in self.w.batches)
            t0 = time.perf_counter()
            total = 0.0
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for x, y in self.w.batches:
                    model.zero_grad()
                    with backpack(DiagHessian()):
                        loss_fn(model(x), y).backward()
                    total += sum(float(p.diag_h.sum()) for p in model.parameters()) * len(y) / n
            return total, 0, time.perf_counter() - t0, f"{total:.6f} (user's model would be extended in place)"

        self.peer("hessian", "BackPACK DiagHessian used directly, float32", run, ref)

    def peers(self, curvature: str, ref: Reference) -> None:
        m = self.cfg["peer_probes"]
        w = self.w
        if curvature == "hessian":

            def pyhessian() -> tuple[float, int, float, str]:
                from pyhessian import hessian as pyh_hessian

                model = copy.deepcopy(w.model)
                with seeded(1):
                    h = pyh_hessian(model, self.criterion, dataloader=w.batches, cuda=False)
                    t0 = time.perf_counter()
                    vhv = h.trace(maxIter=m, tol=float("-inf"))
                    dt = time.perf_counter() - t0
                value = sum(vhv) / len(vhv)
                return value, len(vhv), dt, f"{value:.4f} (no error bar)"

            self.peer(curvature, f"PyHessian trace(maxIter={m}, tol=-inf)", pyhessian, ref)

            def eigenthings(method: str) -> Callable[[], tuple[float, int, float, str]]:
                def run() -> tuple[float, int, float, str]:
                    import hessian_eigenthings as he

                    op = he.HessianOperator(
                        copy.deepcopy(w.model).eval(), w.batches, he.supervised_loss(self.criterion), full_dataset=True
                    )
                    calls = count_calls(op, "matvec")
                    budget = m if method == "hutchinson" else 3 * (m // 3)
                    t0 = time.perf_counter()
                    r = he.trace(op, num_matvecs=budget, method=method, seed=1)
                    return r.estimate, calls[0], time.perf_counter() - t0, f"{r.estimate:.4f} +- {r.stderr:.4f}"

                return run

            for method in ("hutchinson", "hutch++"):
                self.peer(curvature, f"hessian-eigenthings trace(method='{method}')", eigenthings(method), ref)

        def curvlinops_run(name: str) -> Callable[[], tuple[float, int, float, str]]:
            def run() -> tuple[float, int, float, str]:
                import curvlinops

                model = copy.deepcopy(w.model).eval()
                params = [p for p in model.parameters() if p.requires_grad]
                cls = curvlinops.HessianLinearOperator if curvature == "hessian" else curvlinops.GGNLinearOperator
                target = cls(model, self.criterion, params, w.batches, check_deterministic=False)
                calls = count_calls(target, "_matmat", lambda X: X[0].shape[-1])
                fn = {"hutchinson": curvlinops.hutchinson_trace, "hutch++": curvlinops.hutchpp_trace}.get(
                    name, curvlinops.xtrace
                )
                budget = {"hutchinson": m, "hutch++": 3 * (m // 3), "xtrace": 2 * (m // 2)}[name]
                with seeded(1):
                    t0 = time.perf_counter()
                    value = float(fn(target, budget))
                    dt = time.perf_counter() - t0
                return value, calls[0], dt, f"{value:.4f} (no error bar)"

            return run

        for name in ESTIMATORS:
            kind = "HessianLinearOperator" if curvature == "hessian" else "GGNLinearOperator"
            self.peer(curvature, f"curvlinops {name} ({kind})", curvlinops_run(name), ref)


# ---------------------------------------------------------------------------------------------- references
def reference_exact64(b: Bench) -> Reference:
    est = landscape.trace(b.problem64, method="exact")
    note = f"landscape exact float64 ({est.settings['extension']}, {est.wall_time:.2f} s)"
    return Reference(est.value, 0.0, note)


def reference_hutchinson64(b: Bench, curvature: str) -> Reference:
    n = b.cfg["ref_probes"]
    t0 = time.perf_counter()
    est = landscape.trace(b.op(curvature, torch.float64), method="hutchinson", num_matvecs=n, seed=4242)
    note = (
        f"float64 Hutchinson, {n} Rademacher probes, {time.perf_counter() - t0:.1f} s: {est.value:.4f} +- "
        f"{est.stderr:.4f} (relative stderr {est.stderr / abs(est.value):.1e})"
    )
    return Reference(est.value, est.stderr, note)


def run_w1(b: Bench) -> None:
    print("\n### Hessian", flush=True)
    ref = reference_exact64(b)
    print(f"  reference: {ref.value:.6f} ({ref.note})", flush=True)
    b.auto("hessian", ref)
    b.backpack_direct(ref)
    b.ours("hessian", ref)
    if b.cfg["peers"]:
        b.peers("hessian", ref)


def run_w2(b: Bench) -> None:
    print("\n### Hessian (no exact diagonal: BatchNorm, residual sums)", flush=True)
    ref = reference_hutchinson64(b, "hessian")
    print(f"  reference: {ref.note}", flush=True)
    b.auto("hessian", ref)
    b.ours("hessian", ref)
    if b.cfg["peers"]:
        b.peers("hessian", ref)
    print("\n### GGN (exact through BackPACK's converter)", flush=True)
    ref = b.auto("ggn", None)
    if ref is None:
        print("  no exact GGN trace: skipped", flush=True)
        return
    print(f"  reference: {ref.value:.6f} ({ref.note})", flush=True)
    b.ours("ggn", ref)
    if b.cfg["peers"]:
        b.peers("ggn", ref)


def print_table(benches: list[Bench]) -> None:
    print("\n## Results (relative error against the reference of each section; time per call)\n")
    print("| workload | curvature | method | HVPs | time (s) | rel. error | detail |")
    print("|---|---|---|---|---|---|---|")
    for b in benches:
        for r in b.rows:
            secs = "-" if r.seconds is None else f"{r.seconds:.3f}"
            print(f"| {r.workload} | {r.curvature} | {r.method} | {r.hvps} | {secs} | {fmt_e(r.error)} | {r.detail} |")
    print("\n## Ratios (same run)\n")
    for b in benches:
        for curvature in ("hessian", "ggn"):
            rows = [r for r in b.rows if r.curvature == curvature]
            exact = next((r for r in rows if "exact" in r.method and r.method.startswith("landscape")), None)
            if exact is None or exact.seconds is None:
                continue
            for r in rows:
                if r is exact or r.seconds is None or not r.error:
                    continue
                print(
                    f"- {b.w.name} {curvature}: {r.method} takes {r.seconds / exact.seconds:.1f}x the exact trace's "
                    f"time and is off by {r.error:.1e}"
                )


def config(quick: bool, args: argparse.Namespace) -> dict:
    if quick:
        cfg = {"train_steps": 20, "probes": 20, "peer_probes": 20, "seeds": 1, "repeats": 1, "ref_probes": 60}
        w2 = {"w2_samples": 32, "w2_size": 8}
    else:
        cfg = {"train_steps": 200, "probes": 100, "peer_probes": 100, "seeds": 5, "repeats": 3, "ref_probes": 1000}
        w2 = {"w2_samples": 128, "w2_size": 8}
    cfg["peers"] = not args.no_peers
    if args.seeds:
        cfg["seeds"] = args.seeds
    if args.probes:
        cfg["probes"] = cfg["peer_probes"] = args.probes
    if args.w2_samples:
        w2["w2_samples"] = args.w2_samples
    if args.w2_size:
        w2["w2_size"] = args.w2_size
    return {**cfg, **w2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny budgets and a tiny W2: a smoke test (< 1 min)")
    parser.add_argument("--workloads", default="W1,W2", help="comma-separated subset of W1,W2")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per estimator (default 5; quick 1)")
    parser.add_argument("--probes", type=int, default=None, help="matvecs per estimate (default 100; quick 20)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--no-peers", action="store_true", help="skip the peer libraries")
    add_w2_options(parser)
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cfg = config(args.quick, args)
    wanted = [s.strip().upper() for s in args.workloads.split(",") if s.strip()]
    if any(s not in ("W1", "W2") for s in wanted):
        parser.error(f"unknown workload in {wanted}; choose from W1, W2")
    print("# landscape trace benchmark: exact (second-order backpropagation) vs stochastic estimators")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, python {platform.python_version()}, "
        f"{'quick' if args.quick else 'full'} mode; {cfg['probes']} matvecs per estimate, {cfg['seeds']} seed(s). "
        "Timings are noisy on a shared machine: compare within one run."
    )
    start = time.perf_counter()
    benches = []
    for name in wanted:
        t0 = time.perf_counter()
        if name == "W1":
            w = make_w1(cfg["train_steps"])
        else:
            w = make_w2(cfg["train_steps"], samples=cfg["w2_samples"], size=cfg["w2_size"])
        print(f"\n## {name}\n{w.description}", flush=True)
        b = Bench(w, cfg)
        (run_w1 if name == "W1" else run_w2)(b)
        benches.append(b)
        print(f"\n{name} done in {time.perf_counter() - t0:.0f} s", flush=True)
    print_table(benches)
    print_failures_and_wall_time([f for b in benches for f in b.failures], start)


if __name__ == "__main__":
    main()
