"""Benchmark: cost of a 2D filter-normalised loss surface, per grid point, against one full-data forward pass.

For W1 and W2 (``experiments/workloads.py``) a ``resolution x resolution`` surface (default 21 x 21) is computed by

- ``landscape.surface.surface`` with ``batch_points`` = 1 (default), 4, 16 and ``"auto"``, and with
  ``accuracy=False`` ("loss-only": the same work as the forward pass it is compared to);
- the ``loss-landscapes`` package (``random_plane(..., normalization="filter", deepcopy_model=True)``) with a metric
  that evaluates the same full-data loss (size-weighted over the 4 batches, under ``torch.no_grad``).

Each method runs in a fresh subprocess that loads the trained weights (no backward pass ever runs there) and runs
the method ``--repeats`` times (default 11 on W1, 3 on W2), each run followed by back-to-back full-data forward
passes for about as long (mean time); the figure is the median of the per-run ratios time per grid point / forward
time, so a load spike on a shared machine does not decide it. Peak memory (first run, cold): the kernel's peak-RSS
mark (``VmHWM``) is reset to the current RSS before the forward passes and again before the method
(``/proc/self/clear_refs``), so each growth above its own starting RSS is measured on its own; the ratio is method
growth / forward growth (activations, parameter copies, outputs).

Usage::

    python experiments/bench_surface.py                  # W1 and W2 at 21 x 21
    python experiments/bench_surface.py --quick          # 7 x 7 and a reduced W2: smoke test
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from workloads import make_w1, make_w2  # noqa: E402

import landscape  # noqa: E402
from landscape.surface import filter_normalized, surface  # noqa: E402

METHODS = ("landscape", "landscape loss-only", "landscape bp=4", "landscape bp=16", "landscape auto", "loss-landscapes")
GOAL_TIME = 1.05
GOAL_MEMORY = 1.2


def build(name: str, cfg: dict, trained: bool):
    if name == "W1":
        return make_w1(cfg["train_steps"], trained=trained)
    return make_w2(cfg["train_steps"], samples=cfg["w2_samples"], size=cfg["w2_size"], trained=trained)


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return float(line.split()[1]) / 1024.0  # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> float:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0) and return that RSS in MB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_mb("VmRSS")


def peak_mb() -> float:
    return _status_mb("VmHWM")


def full_loss(model: nn.Module, batches, loss_fn) -> float:
    n = sum(len(y) for _, y in batches)
    with torch.no_grad():
        return float(sum(len(y) / n * loss_fn(model(x), y) for x, y in batches))


def worker(name: str, method: str, cfg: dict, state: str, repeats: int) -> dict:
    w = build(name, cfg, trained=False)
    w.model.load_state_dict(torch.load(state, weights_only=True))
    w.model.eval()
    loss_fn = nn.CrossEntropyLoss()
    res = cfg["resolution"]
    problem = landscape.Problem(w.model, loss_fn, w.batches, mode="eval")
    directions = filter_normalized(problem, 2, seed=0)
    _ = problem.num_samples
    base = reset_peak()  # nothing has run a forward pass yet in this process: both measurements start cold

    def run() -> str:
        if method == "forward":
            for _ in range(5):
                full_loss(w.model, w.batches, loss_fn)
            return "5 full-data forward passes (the memory baseline)"
        if method.startswith("landscape"):
            bp = {"landscape bp=4": 4, "landscape bp=16": 16, "landscape auto": "auto"}.get(method, 1)
            acc = method != "landscape loss-only"  # loss only: the same work as the forward pass it is compared to
            s = surface(problem, directions, span=(-1.0, 1.0), resolution=res, batch_points=bp, accuracy=acc)
            return f"batch_points {s.settings['batch_points']}; centre loss {s.loss[res // 2, res // 2]:.6f}"
        import loss_landscapes
        from loss_landscapes.metrics import Metric

        class FullLoss(Metric):
            def __call__(self, model_wrapper) -> float:
                n = sum(len(y) for _, y in w.batches)
                with torch.no_grad():
                    return float(sum(len(y) / n * loss_fn(model_wrapper.forward(x), y) for x, y in w.batches))

        grid = loss_landscapes.random_plane(
            w.model, FullLoss(), distance=1.0, steps=res, normalization="filter", deepcopy_model=True
        )
        return f"grid {grid.shape}; centre value {grid[res // 2, res // 2]:.6f} (not the model's loss)"

    def forward_time(seconds: float) -> float:
        """Mean time of back-to-back forward passes over about as long as the method ran (at most 10 s, at least 21
        passes): the same exposure to pauses of a shared machine as the method's own total, which a median would
        hide from the baseline only."""
        t1 = time.perf_counter()
        full_loss(w.model, w.batches, loss_fn)
        count = max(21, round(min(seconds, 10.0) / (time.perf_counter() - t1)))
        t1 = time.perf_counter()
        for _ in range(count):
            full_loss(w.model, w.batches, loss_fn)
        return (time.perf_counter() - t1) / count

    # Cold run: the memory figure (growth of the peak RSS above the start) and the first timing.
    t0 = time.perf_counter()
    detail = run()
    elapsed = [time.perf_counter() - t0]
    peak = peak_mb() - base
    points = 5 if method == "forward" else res * res
    forwards = [forward_time(elapsed[0])]
    # Further runs, each followed by its own forward timing: the ratio is the median of the per-run ratios, which
    # keeps a load spike on a shared machine from deciding the figure.
    for _ in range(1, repeats if method != "forward" else 1):
        t0 = time.perf_counter()
        run()
        elapsed.append(time.perf_counter() - t0)
        forwards.append(forward_time(elapsed[-1]))
    ratios = [e / points / f for e, f in zip(elapsed, forwards, strict=True)]
    return {
        "forward_s": statistics.median(forwards),
        "method_s": statistics.median(elapsed),
        "ratio": statistics.median(ratios),
        "ratios": ratios,
        "points": points,
        "peak_mb": peak,
        "loss": full_loss(w.model, w.batches, loss_fn),
        "detail": detail,
    }


def config(args) -> dict:
    if args.quick:
        return {"train_steps": 10, "resolution": 7, "w2_samples": 128, "w2_size": 16}
    return {"train_steps": 60, "resolution": args.resolution, "w2_samples": 512, "w2_size": 32}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--resolution", type=int, default=21)
    ap.add_argument("--workloads", default="W1,W2")
    ap.add_argument(
        "--repeats", type=int, default=0, help="surfaces per method (default: 11 on W1, 3 on W2); median ratio"
    )
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--worker", nargs=3, metavar=("WORKLOAD", "METHOD", "STATE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    cfg = config(args)
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], cfg, args.worker[2], args.repeats)))
        return

    print("# landscape surface benchmark: time per grid point / one full-data forward pass, peak memory")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, python {platform.python_version()}, "
        f"{'quick' if args.quick else 'full'} mode, {cfg['resolution']}x{cfg['resolution']} grid, one subprocess "
        "per method. Timings are noisy on a shared machine: the ratios are measured within one process.\n"
    )
    rows = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.workloads.split(","):
            w = build(name, cfg, trained=True)
            state = str(Path(tmp) / f"{name}.pt")
            torch.save(w.model.state_dict(), state)
            print(f"## {w.description}", flush=True)
            forward_peak = None
            for method in ["forward", *args.methods.split(",")]:
                repeats = args.repeats or (11 if name == "W1" else 3)
                cmd = [sys.executable, __file__, "--worker", name, method, state, "--repeats", str(repeats)]
                if args.quick:
                    cmd.append("--quick")
                else:
                    cmd += ["--resolution", str(cfg["resolution"])]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode != 0:
                    print(f"  {method}: FAILED\n{out.stderr[-2000:]}", flush=True)
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                if method == "forward":
                    forward_peak = r["peak_mb"]
                    param_mb = sum(p.numel() * p.element_size() for p in w.model.parameters()) / 2**20
                    print(
                        f"  forward pass: peak memory +{forward_peak:.1f} MB above the start; one parameter set "
                        f"{param_mb:.2f} MB (any method that leaves the model untouched holds one more: floor "
                        f"{(forward_peak + param_mb) / forward_peak:.2f}x)",
                        flush=True,
                    )
                    continue
                r["mem_ratio"] = r["peak_mb"] / forward_peak if forward_peak else float("nan")
                r["forward_peak"] = forward_peak or float("nan")
                rows.append((name, method, r))
                print(
                    f"  {method:16s} {r['ratio']:.3f}x a forward per point (runs: "
                    f"{', '.join(f'{x:.3f}' for x in r['ratios'])}; {r['method_s']:.1f} s for {r['points']} "
                    f"points, forward {1e3 * r['forward_s']:.1f} ms); peak memory +{r['peak_mb']:.1f} MB "
                    f"({r['mem_ratio']:.2f}x the forward's); {r['detail']}",
                    flush=True,
                )

    print("\n## Results\n")
    print("| workload | method | time per grid point / forward | forward | peak memory / forward's | details |")
    print("|---|---|---|---|---|---|")
    for name, method, r in rows:
        print(
            f"| {name} | {method} | {r['ratio']:.3f}x | {1e3 * r['forward_s']:.1f} ms | {r['mem_ratio']:.2f}x "
            f"(+{r['peak_mb']:.1f} MB vs +{r['forward_peak']:.1f} MB) | {r['detail']} |"
        )
    print("\n## Goals\n")
    for name in args.workloads.split(","):
        ours = next((r for n, m, r in rows if n == name and m == "landscape"), None)
        if ours is None:
            continue
        ok_t = ours["ratio"] <= GOAL_TIME
        ok_m = ours["mem_ratio"] <= GOAL_MEMORY
        print(
            f"- {'PASS' if ok_t else 'FAIL'}: {name} default (batch_points=1) {ours['ratio']:.3f}x a forward per grid "
            f"point (goal <= {GOAL_TIME}x)"
        )
        print(
            f"- {'PASS' if ok_m else 'FAIL'}: {name} default peak memory {ours['mem_ratio']:.2f}x a forward pass's "
            f"(goal <= {GOAL_MEMORY}x)"
        )
        lean = next((r for n, m, r in rows if n == name and m == "landscape loss-only"), None)
        if lean is not None:
            print(
                f"  - loss only (the forward's own work): {lean['ratio']:.3f}x per point, peak memory "
                f"{lean['mem_ratio']:.2f}x"
            )
        for n, m, r in rows:
            if n == name and m not in ("landscape", "landscape loss-only"):
                print(f"  - {m}: {r['ratio']:.3f}x per point ({ours['ratio'] / r['ratio']:.2f}x the default's speed)")
    print(f"\ntotal wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
