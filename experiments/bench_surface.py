"""Benchmark: cost of a 2D filter-normalised loss surface, per grid point, against one full-data forward pass.

For W1 and W2 (``experiments/workloads.py``) a ``resolution x resolution`` surface (default 21 x 21) is computed by

- ``landscape.surface.surface`` with ``batch_points`` = 1 (default), 4, 16 and ``"auto"``, and with
  ``accuracy=False`` ("loss-only": the same work as the forward pass it is compared to);
- the ``loss-landscapes`` package (``random_plane(..., normalization="filter", deepcopy_model=True)``) with a metric
  that evaluates the same full-data loss (size-weighted over the 4 batches, under ``torch.no_grad``).

Each method runs in ``--processes`` fresh subprocesses (default 5 on W1, 1 on W2; the methods take turns, process by
process, so a slow spell of a shared machine falls on all of them) that load the trained weights (no backward pass
ever runs there) and run the method ``--repeats`` times (default 9 on W1, 3 on W2), each run followed by
back-to-back full-data forward passes for about as long (mean time; a run's baseline is the mean of the timings
just before and after it). The figure is the median of the per-run ratios time per grid point / forward time
pooled over the processes, so neither a load spike nor one process's memory layout (which moves single-process
medians by a few percent) decides it; every process's median is printed.
Methods that record the accuracy as well (every ``landscape`` one but "loss-only") are also timed against forward
passes that compute it the way a user would (``(out.argmax(-1) == y).sum()`` per batch): "same-work forward".

Peak memory comes from the first, cold run of every process of a method (at least ``--memory-runs``, default 5 on
W1, 1 on W2: memory-only processes make up the rest; the median is reported): the kernel's peak-RSS mark
(``VmHWM``) is reset to the current RSS before the forward passes and again before the method
(``/proc/self/clear_refs``), so each growth above its own starting RSS is measured on its own; the ratio is method
growth / forward growth, and it is the figure the goal is checked on. Part of that growth is not memory the method
allocates but library *code* paged in the first time a kernel runs (file-backed, shared and reclaimable; about 90%
of a W1 forward's 3 MB): the growth of ``RssFile`` over the run is reported too, and "peak memory without code" is
the peak-RSS growth minus it (the anonymous memory: tensors, heap, allocator slack).
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


def full_loss(model: nn.Module, batches, loss_fn, accuracy: bool = False) -> float:
    """The full-data loss by plain forward passes; ``accuracy``: also the fraction of ``argmax == target``, written
    as a user would (the same work as a surface point that records both)."""
    n = sum(len(y) for _, y in batches)
    total = hits = 0
    with torch.no_grad():
        for x, y in batches:
            out = model(x)
            total = total + len(y) / n * loss_fn(out, y)
            if accuracy:
                hits += int((out.argmax(dim=-1) == y).sum())
    return float(total)


def worker(name: str, method: str, cfg: dict, state: str, repeats: int, memory_only: bool = False) -> dict:
    w = build(name, cfg, trained=False)
    w.model.load_state_dict(torch.load(state, weights_only=True))
    w.model.eval()
    loss_fn = nn.CrossEntropyLoss()
    res = cfg["resolution"]
    problem = landscape.Problem(w.model, loss_fn, w.batches, mode="eval")
    directions = filter_normalized(problem, 2, seed=0)
    _ = problem.num_samples
    code = _status_mb("RssFile")
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

    def forward_time(seconds: float, accuracy: bool = False) -> float:
        """Mean time of back-to-back forward passes over about as long as the method ran (at most 30 s, at least 21
        passes): the same exposure to pauses of a shared machine as the method's own total, which a median would
        hide from the baseline only."""
        t1 = time.perf_counter()
        full_loss(w.model, w.batches, loss_fn, accuracy)
        count = max(21, round(min(seconds, 30.0) / (time.perf_counter() - t1)))
        t1 = time.perf_counter()
        for _ in range(count):
            full_loss(w.model, w.batches, loss_fn, accuracy)
        return (time.perf_counter() - t1) / count

    # Cold run: the memory figure (growth of the peak RSS above the start) and the first timing.
    t0 = time.perf_counter()
    detail = run()
    elapsed = [time.perf_counter() - t0]
    peak = peak_mb() - base
    code = _status_mb("RssFile") - code  # library code paged in by the run (file-backed), part of the peak RSS
    points = 5 if method == "forward" else res * res
    if memory_only:
        return {"peak_mb": peak, "code_mb": code, "detail": detail}
    # A method that records the accuracy too is also timed against forward passes that do (the same work).
    with_accuracy = method.startswith("landscape") and method != "landscape loss-only"
    forwards, same = [forward_time(elapsed[0])], [forward_time(elapsed[0], with_accuracy)]
    # Further runs, each followed by its own forward timings. A warm run's baseline is the mean of the forward timings
    # just before and just after it (a slow drift of a shared machine's speed cancels); the ratio is the median of
    # the per-run ratios, which keeps a load spike from deciding the figure.
    for _ in range(1, repeats if method != "forward" else 1):
        t0 = time.perf_counter()
        run()
        elapsed.append(time.perf_counter() - t0)
        forwards.append(forward_time(elapsed[-1]))
        same.append(forward_time(elapsed[-1], with_accuracy))

    def bracketed(times: list[float]) -> list[float]:
        return [times[0]] + [(a + b) / 2 for a, b in zip(times[:-1], times[1:], strict=True)]

    return {
        "forward_s": statistics.median(forwards),
        "method_s": statistics.median(elapsed),
        "ratios": [e / points / f for e, f in zip(elapsed, bracketed(forwards), strict=True)],
        "same_work_ratios": [e / points / f for e, f in zip(elapsed, bracketed(same), strict=True)],
        "points": points,
        "peak_mb": peak,
        "code_mb": code,
        "loss": full_loss(w.model, w.batches, loss_fn),
        "detail": detail,
    }


def config(args) -> dict:
    if args.quick:
        return {"train_steps": 10, "resolution": 7, "w2_samples": 128, "w2_size": 16}
    return {"train_steps": 60, "resolution": args.resolution, "w2_samples": 512, "w2_size": 32}


def _run_worker(args, cfg: dict, name: str, method: str, state: str, repeats: int, memory_only: bool) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, method, state, "--repeats", str(repeats)]
    cmd += ["--quick"] if args.quick else ["--resolution", str(cfg["resolution"])]
    if memory_only:
        cmd.append("--memory-only")
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{method} on {name} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _summary(runs: list[dict]) -> dict:
    """Pool the timing processes' per-run ratios (median) and the memory processes' cold-run figures (median)."""
    timed = [r for r in runs if "ratios" in r]
    r = dict(timed[0])
    r["ratios"] = [x for t in timed for x in t["ratios"]]
    r["ratio"] = statistics.median(r["ratios"])
    r["same_work_ratio"] = statistics.median([x for t in timed for x in t["same_work_ratios"]])
    r["process_ratios"] = [statistics.median(t["ratios"]) for t in timed]
    r["forward_s"] = statistics.median(t["forward_s"] for t in timed)
    r["method_s"] = statistics.median(t["method_s"] for t in timed)
    r["peaks"] = [m["peak_mb"] for m in runs]
    r["peak_mb"] = statistics.median(r["peaks"])
    r["code_mb"] = statistics.median(m["code_mb"] for m in runs)
    r["anon_mb"] = statistics.median(m["peak_mb"] - m["code_mb"] for m in runs)
    return r


def _measure_all(args, cfg: dict, name: str, methods: list[str], state: str) -> dict[str, dict]:
    """Every method (and the forward baseline) in ``--processes`` fresh timing processes, taking turns process by
    process, then memory-only processes up to ``--memory-runs`` per method."""
    repeats = args.repeats or (9 if name == "W1" else 3)
    processes = args.processes or (5 if name == "W1" else 1)
    memory_runs = args.memory_runs or (5 if name == "W1" else 1)
    runs: dict[str, list[dict]] = {m: [] for m in ["forward", *methods]}
    for k in range(processes):
        for method in runs:
            runs[method].append(_run_worker(args, cfg, name, method, state, repeats, memory_only=False))
            print(f"    process {k + 1}/{processes}: {method} done", file=sys.stderr, flush=True)
    for _ in range(max(0, memory_runs - processes)):
        for method in runs:
            runs[method].append(_run_worker(args, cfg, name, method, state, 1, memory_only=True))
    return {m: _summary(r) for m, r in runs.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--resolution", type=int, default=21)
    ap.add_argument("--workloads", default="W1,W2")
    ap.add_argument(
        "--repeats", type=int, default=0, help="surfaces per method and process (default: 9 on W1, 3 on W2)"
    )
    ap.add_argument(
        "--processes", type=int, default=0, help="fresh timing processes per method (default: 5 on W1, 1 on W2)"
    )
    ap.add_argument(
        "--memory-runs", type=int, default=0, help="fresh processes per method for peak memory (default: 5 W1, 1 W2)"
    )
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--worker", nargs=3, metavar=("WORKLOAD", "METHOD", "STATE"), help=argparse.SUPPRESS)
    ap.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    cfg = config(args)
    if args.worker:
        name, method, state = args.worker
        print(json.dumps(worker(name, method, cfg, state, args.repeats, memory_only=args.memory_only)))
        return

    print("# landscape surface benchmark: time per grid point / one full-data forward pass, peak memory")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, python {platform.python_version()}, "
        f"{'quick' if args.quick else 'full'} mode, {cfg['resolution']}x{cfg['resolution']} grid, one subprocess "
        "per method for the timings (ratios measured within one process) and fresh ones for peak memory.\n"
    )
    rows = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.workloads.split(","):
            w = build(name, cfg, trained=True)
            state = str(Path(tmp) / f"{name}.pt")
            torch.save(w.model.state_dict(), state)
            print(f"## {w.description}", flush=True)
            methods = args.methods.split(",")
            measured = _measure_all(args, cfg, name, methods, state)
            fwd = measured["forward"]
            param_mb = sum(p.numel() * p.element_size() for p in w.model.parameters()) / 2**20
            print(
                f"  forward pass: peak memory +{fwd['peak_mb']:.2f} MB above the start (runs "
                f"{', '.join(f'{x:.2f}' for x in fwd['peaks'])}), of which code paged in {fwd['code_mb']:.2f} MB, "
                f"without code +{fwd['anon_mb']:.2f} MB; one parameter set {param_mb:.2f} MB (a method that leaves "
                "the model untouched holds one more)",
                flush=True,
            )
            for method in methods:
                r = measured[method]
                r["mem_ratio"] = r["peak_mb"] / fwd["peak_mb"]
                r["anon_ratio"] = r["anon_mb"] / fwd["anon_mb"] if fwd["anon_mb"] > 0 else float("nan")
                r["forward"] = fwd
                rows.append((name, method, r))
                print(
                    f"  {method:16s} {r['ratio']:.3f}x a forward per point, {r['same_work_ratio']:.3f}x one doing the "
                    f"same work (process medians {', '.join(f'{x:.3f}' for x in r['process_ratios'])}; runs: "
                    f"{', '.join(f'{x:.3f}' for x in r['ratios'])}; {r['method_s']:.1f} s for {r['points']} "
                    f"points, forward {1e3 * r['forward_s']:.1f} ms); peak memory +{r['peak_mb']:.2f} MB, "
                    f"{r['mem_ratio']:.2f}x the forward's (runs {', '.join(f'{x:.2f}' for x in r['peaks'])}), "
                    f"without code +{r['anon_mb']:.2f} MB, {r['anon_ratio']:.2f}x; {r['detail']}",
                    flush=True,
                )

    print("\n## Results\n")
    print(
        "| workload | method | time per grid point / forward | / same-work forward | forward | peak memory / "
        "forward's | without code | details |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, method, r in rows:
        f = r["forward"]
        print(
            f"| {name} | {method} | {r['ratio']:.3f}x | {r['same_work_ratio']:.3f}x | {1e3 * r['forward_s']:.1f} ms | "
            f"{r['mem_ratio']:.2f}x (+{r['peak_mb']:.2f} MB vs +{f['peak_mb']:.2f} MB) | {r['anon_ratio']:.2f}x "
            f"(+{r['anon_mb']:.2f} MB vs +{f['anon_mb']:.2f} MB) | {r['detail']} |"
        )
    print("\n## Goals\n")
    for name in args.workloads.split(","):
        ours = next((r for n, m, r in rows if n == name and m == "landscape"), None)
        if ours is None:
            continue
        ok_t = ours["ratio"] <= GOAL_TIME
        ok_m = ours["mem_ratio"] <= GOAL_MEMORY  # the cold peak-RSS growth, library code paged in included
        print(
            f"- {'PASS' if ok_t else 'FAIL'}: {name} default (batch_points=1) {ours['ratio']:.3f}x a forward per grid "
            f"point (goal <= {GOAL_TIME}x); {ours['same_work_ratio']:.3f}x a forward that records the accuracy too"
        )
        print(
            f"- {'PASS' if ok_m else 'FAIL'}: {name} default peak memory {ours['mem_ratio']:.2f}x a forward pass's, "
            f"library code paged in included (without it {ours['anon_ratio']:.2f}x; goal <= {GOAL_MEMORY}x)"
        )
        for n, m, r in rows:
            if n == name and m != "landscape":
                print(
                    f"  - {m}: {r['ratio']:.3f}x per point ({ours['ratio'] / r['ratio']:.2f}x the default's speed); "
                    f"peak memory {r['mem_ratio']:.2f}x, without code {r['anon_ratio']:.2f}x"
                )
    print(f"\ntotal wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
