"""Benchmark: full-data Hessian-vector products of landscape's engines against the peers, in gradients.

Workloads (see ``/work/shared/PEERS.md``):

- W1: ``landscape.models.w1_mlp()`` (MLP 784-128-128-10, 118k params) on 2048 samples of a 10-class Gaussian
  mixture in 784 dimensions (``landscape.data.gaussian_mixture``), 4 batches of 512.
- W2: ``landscape.models.w2_cnn()`` (ResNet-style CNN with BatchNorm, 116k params) on 512 images 3x32x32
  (``landscape.data.synthetic_images``), 4 batches of 128.

- LM: the GPT-2 of ``experiments/language_model.py`` (4 layers, width 160, 1.3M parameters, byte vocabulary) on
  4 batches of 8 x 64 bytes of the standard library's source, causal LM loss (``landscape.losses.causal_lm``), once
  with ``attn_implementation="eager"`` and once with the default ``"sdpa"`` (whose products landscape runs on the
  math kernel). Untrained (``--hf DIR`` analyses a saved model instead): the cost ratio does not depend on the
  weights. Only landscape's engines; the gradient baseline is a plain torch loop over the same batches.

W1 and W2 are trained briefly (``landscape.training.train``) and analysed in eval mode, float32, mean
cross-entropy. Every time is the median of several steady-state repeats after a warm-up call (the first product
builds/caches graphs) and is reported per HVP vector divided by the time of one full-data gradient computed by a
plain torch loop (``loss.backward()`` over the same batches) measured in the same run.

Every peer's product is checked against landscape's ``double_backward`` product on the same vector (relative
difference printed), so each is known to compute the same full-data Hessian. All batches are equal-sized, so
hessian-eigenthings' equal-weight batch average is exact here.

Usage::

    python experiments/bench_hvp.py                 # full run (a few minutes on 2 cores)
    python experiments/bench_hvp.py --quick         # smoke test
    python experiments/bench_hvp.py --workloads W1 --repeats 7
    python experiments/bench_hvp.py --workloads LM   # the example GPT-2, eager vs sdpa attention
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import torch
from torch import Tensor, nn

# Run from anywhere: use this checkout's package (a stale editable install can map `landscape` to a namespace).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from workloads import SEED, Workload, make_w1, make_w2  # noqa: E402

import landscape  # noqa: E402

STRATEGIES = (
    "double_backward",
    "double_backward_batched",
    "forward_over_reverse",
    "forward_over_reverse_batched",
)
WIDTHS = (1, 4, 16)


# ---------------------------------------------------------------------------------------------------- workloads
# ---------------------------------------------------------------------------------------------------- timing
@dataclass
class Timing:
    median: float  # seconds per call
    ratio: float = float("nan")  # median over repeats of (call time / time of the gradient run next to it)
    samples: list[float] = field(default_factory=list)
    note: str = ""


def time_call(
    fn: Callable[[], object],
    grad_fn: Callable[[], object] | None,
    repeats: int,
    budget: float,
    slow_call: float,
) -> Timing:
    """Warm up once, then the median of up to ``repeats`` calls (fewer once ``budget`` seconds are spent).

    Each call is paired with a gradient run (``grad_fn``) right before it and the ratio is taken per pair, so load
    from other processes on a shared machine shifts numerator and denominator alike. A call slower than
    ``slow_call`` seconds builds nothing worth amortising (torch.func paths), so its warm-up is the only sample.
    """
    t0 = time.perf_counter()
    fn()
    warm = time.perf_counter() - t0
    samples: list[float] = []
    ratios: list[float] = []

    def grad_time() -> float:
        if grad_fn is None:
            return float("nan")
        t0 = time.perf_counter()
        grad_fn()
        return time.perf_counter() - t0

    if warm > slow_call:
        g = grad_time()
        return Timing(warm, warm / g, [warm], "slow: warm-up call used as the only sample")
    start = time.perf_counter()
    for _ in range(repeats):
        g = grad_time()
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
        ratios.append(samples[-1] / g)
        if time.perf_counter() - start > budget:
            break
    return Timing(statistics.median(samples), statistics.median(ratios), samples)


def rel_diff(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def flat_to_list(problem: landscape.Problem, v: Tensor) -> list[Tensor]:
    d = problem.unflatten(v)
    return [d[n].contiguous() for n in problem.param_names]


def list_to_flat(tensors) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


# ---------------------------------------------------------------------------------------------------- results
@dataclass
class Row:
    method: str
    k: int
    seconds: float | None = None  # per call of k vectors
    ratio: float | None = None  # per call of k vectors, in gradients (paired with neighbouring gradient runs)
    error: str = ""
    check: float | None = None  # relative difference of the product to the reference
    kind: str = "ours"  # "ours", "auto" or "peer"
    note: str = ""

    def per_vector(self) -> float | None:
        return None if self.seconds is None else self.seconds / self.k

    def ratio_per_vector(self) -> float | None:
        return None if self.ratio is None else self.ratio / self.k

    def set_timing(self, t: Timing) -> None:
        self.seconds, self.ratio = t.median, t.ratio
        if t.note:
            self.note = f"{self.note}; {t.note}" if self.note else t.note


@dataclass
class WorkloadResult:
    name: str
    grad_plain: Timing
    grad_landscape: Timing
    rows: list[Row] = field(default_factory=list)
    info: list[str] = field(default_factory=list)

    def find(self, method: str, k: int) -> Row | None:
        for r in self.rows:
            if r.method == method and r.k == k:
                return r
        return None


# ---------------------------------------------------------------------------------------------------- benchmark
def plain_grad_fn(model: nn.Module, batches, criterion) -> Callable[[], None]:
    n = sum(len(y) for _, y in batches)

    def run() -> None:
        model.zero_grad(set_to_none=True)
        for x, y in batches:
            loss = criterion(model(x), y) * (len(y) / n)
            loss.backward()

    return run


def bench_workload(w: Workload, args) -> WorkloadResult:
    criterion = nn.CrossEntropyLoss()
    repeats, budget, slow = args.repeats, args.budget, args.slow_call
    print(f"\n## {w.name}\n{w.description}", flush=True)

    problem = landscape.Problem(w.model, criterion, w.batches, mode="eval")
    n = problem.num_params

    # ---- baselines: one full-data gradient
    plain_model = copy.deepcopy(w.model).eval()
    grad_fn = plain_grad_fn(plain_model, w.batches, criterion)
    grad_plain = time_call(grad_fn, None, max(repeats, 5), budget, 1e9)
    grad_land = time_call(problem.loss_and_grad, grad_fn, max(repeats, 5), budget, 1e9)
    args.timer = lambda fn: time_call(fn, grad_fn, repeats, budget, slow)
    g_plain = list_to_flat(p.grad for p in plain_model.parameters())
    _, g_land = problem.loss_and_grad()
    res = WorkloadResult(w.name, grad_plain, grad_land)
    print(
        f"gradient: plain torch loop {grad_plain.median * 1e3:.1f} ms, landscape Problem.loss_and_grad "
        f"{grad_land.median * 1e3:.1f} ms ({grad_land.ratio:.2f}x); "
        f"gradients agree to {rel_diff(g_land, g_plain):.1e}",
        flush=True,
    )

    gen = torch.Generator().manual_seed(SEED + 1)
    V = {k: torch.randn(n, k, generator=gen) for k in WIDTHS}
    for k in WIDTHS:
        V[k] /= V[k].norm(dim=0, keepdim=True)

    # ---- reference: double backward, one vector at a time (exact, float32)
    ref_op = landscape.hessian(problem, engine="double_backward")
    ref_op.chosen = {k: "double_backward" for k in WIDTHS}
    ref = {k: (ref_op @ V[k]).clone() for k in WIDTHS}
    del ref_op

    # ---- our strategies, forced
    for name in STRATEGIES:
        engine = "forward_over_reverse" if name.startswith("forward") else "double_backward"
        op = landscape.hessian(problem, engine=engine)
        op.chosen = {k: name for k in WIDTHS}
        last: float | None = None  # seconds per vector at the previous width
        for k in WIDTHS:
            row = Row(f"landscape {name}", k)
            if last is not None and last * k > args.max_call:
                row.error = f"skipped: predicted {last * k:.0f} s per call > --max-call {args.max_call:.0f} s"
                res.rows.append(row)
                print(f"  {fmt_progress(row)}", flush=True)
                continue
            try:
                out = op @ V[k]
                row.check = rel_diff(out, ref[k])
                row.set_timing(args.timer(lambda op=op, k=k: op @ V[k]))
                last = row.per_vector()
            except Exception as err:  # noqa: BLE001 - report, keep going
                row.error = f"{type(err).__name__}: {str(err).splitlines()[0][:100]}"
            res.rows.append(row)
            print(f"  {fmt_progress(row)}", flush=True)
        if name.startswith("double_backward"):
            res.info.append(f"{name}: cached gradient graphs hold {op.cached_graph_bytes / 2**20:.1f} MiB")
        del op

    # ---- auto, on the workload's batches and on the whole data as one batch (like PyHessian's data=(X, y) mode)
    one_batch = landscape.Problem(w.model, criterion, (w.X, w.y), mode="eval")
    for label, prob, kind in (("landscape auto", problem, "auto"), ("landscape auto, one batch", one_batch, "auto1")):
        op = landscape.hessian(prob, engine="auto")
        for k in WIDTHS:
            row = Row(label, k, kind=kind)
            try:
                t0 = time.perf_counter()
                out = op @ V[k]
                first = time.perf_counter() - t0
                row.check = rel_diff(out, ref[k])
                row.note = f"-> {op.chosen.get(k)}; first call (measures candidates) {first:.2f} s"
                row.set_timing(args.timer(lambda op=op, k=k: op @ V[k]))
            except Exception as err:  # noqa: BLE001
                row.error = f"{type(err).__name__}: {str(err).splitlines()[0][:100]}"
            res.rows.append(row)
            print(f"  {fmt_progress(row)}", flush=True)
        res.info.append(f"{label} chosen: {dict(op.chosen)}")
        for k, times in op.timings.items():
            shown = ", ".join(f"{s}={t * 1e3:.1f} ms" for s, t in times.items())
            res.info.append(f"{label} timings (first batch; loops timed on one column, times k), k={k}: {shown}")
        if any(op.failures.values()):
            res.info.append(f"{label} failures: {dict(op.failures)}")
        del op

    # ---- peers
    for fn in (peer_pyhessian_loader, peer_pyhessian_single, peer_eigenthings, peer_curvlinops):
        try:
            rows, info = fn(w, problem, criterion, V, ref, args)
        except Exception as err:  # noqa: BLE001
            rows = [Row(fn.__doc__.splitlines()[0], 1, error=f"{type(err).__name__}: {err}"[:160], kind="peer")]
            info = [traceback.format_exc(limit=3)]
        for row in rows:
            print(f"  {fmt_progress(row)}", flush=True)
        res.rows.extend(rows)
        res.info.extend(info)

    # ---- gradient again at the end: the machine's speed may drift during the run
    grad_end = time_call(grad_fn, None, max(repeats, 5), budget, 1e9)
    both = grad_plain.samples + grad_end.samples
    res.info.append(
        f"plain gradient at start {grad_plain.median * 1e3:.1f} ms, at end {grad_end.median * 1e3:.1f} ms "
        "(ms columns are absolute; the x-grad ratios pair every timed call with a gradient run next to it)"
    )
    res.grad_plain = Timing(statistics.median(both), 1.0, both)
    return res


def fmt_progress(row: Row) -> str:
    if row.error:
        return f"{row.method} k={row.k}: FAILED {row.error}"
    check = "" if row.check is None else f", rel. diff to reference {row.check:.1e}"
    note = f" [{row.note}]" if row.note else ""
    return (
        f"{row.method} k={row.k}: {row.per_vector() * 1e3:.1f} ms/vector = {row.ratio_per_vector():.2f}x a gradient"
        f"{check}{note}"
    )


# ---------------------------------------------------------------------------------------------------- peers
def peer_pyhessian_loader(w: Workload, problem, criterion, V, ref, args):
    """PyHessian dataloader_hv_product"""
    from pyhessian import hessian as pyh_hessian

    model = copy.deepcopy(w.model)
    h = pyh_hessian(model, criterion, dataloader=w.batches, cuda=False)
    v = flat_to_list(problem, V[1][:, 0])
    _, hv = h.dataloader_hv_product(v)
    row = Row("PyHessian dataloader_hv_product", 1, kind="peer", check=rel_diff(list_to_flat(hv), ref[1][:, 0]))
    row.set_timing(args.timer(lambda: h.dataloader_hv_product(v)))
    return [row], []


def peer_pyhessian_single(w: Workload, problem, criterion, V, ref, args):
    """PyHessian single batch (data=(X, y), graph reused)"""
    from pyhessian import hessian as pyh_hessian
    from pyhessian.utils import hessian_vector_product

    model = copy.deepcopy(w.model)
    X, y = w.X, w.y
    t0 = time.perf_counter()
    h = pyh_hessian(model, criterion, data=(X, y), cuda=False)
    setup = time.perf_counter() - t0
    v = flat_to_list(problem, V[1][:, 0])
    hv = hessian_vector_product(h.gradsH, h.params, v)
    row = Row(
        "PyHessian single batch (all samples, graph reused)",
        1,
        kind="peer",
        check=rel_diff(list_to_flat(hv), ref[1][:, 0]),
        note=f"one batch of {len(y)}; setup (gradient with graph) {setup:.2f} s",
    )
    row.set_timing(args.timer(lambda: hessian_vector_product(h.gradsH, h.params, v)))
    for p in model.parameters():  # PyHessian leaves a graph in .grad
        p.grad = None
    return [row], []


def peer_eigenthings(w: Workload, problem, criterion, V, ref, args):
    """hessian-eigenthings HVP operator (full_dataset=True)"""
    import hessian_eigenthings as he

    model = copy.deepcopy(w.model).eval()
    info = []
    if hasattr(he, "HVPOperator"):  # hessian-eigenthings <= 0.x API
        op = he.HVPOperator(model, w.batches, criterion, use_gpu=False, full_dataset=True)
        matvec = op.apply
        api = "HVPOperator(full_dataset=True, use_gpu=False)"
    else:  # 1.0.0a5: HessianOperator(model, dataloader, loss_fn(model, batch)); CPU is the model's device
        op = he.HessianOperator(model, w.batches, he.supervised_loss(criterion), full_dataset=True)
        matvec = op.matvec
        api = "HessianOperator(full_dataset=True, method='autograd')"
    info.append(f"hessian-eigenthings {he.__version__}: {api} (no HVPOperator/use_gpu in this version)")
    v = V[1][:, 0].contiguous()
    out = matvec(v)
    row = Row("hessian-eigenthings autograd", 1, kind="peer", check=rel_diff(out, ref[1][:, 0]))
    row.set_timing(args.timer(lambda: matvec(v)))
    return [row], info


def peer_curvlinops(w: Workload, problem, criterion, V, ref, args):
    """curvlinops HessianLinearOperator"""
    import curvlinops

    model = copy.deepcopy(w.model).eval()
    params = [p for p in model.parameters() if p.requires_grad]
    info = []
    t0 = time.perf_counter()
    curvlinops.HessianLinearOperator(model, criterion, params, w.batches, check_deterministic=True)
    checked = time.perf_counter() - t0
    op = curvlinops.HessianLinearOperator(model, criterion, params, w.batches, check_deterministic=False)
    t0 = time.perf_counter()
    curvlinops.HessianLinearOperator(model, criterion, params, w.batches, check_deterministic=False)
    unchecked = time.perf_counter() - t0
    info.append(
        f"curvlinops {version('curvlinops-for-pytorch')}: constructor with check_deterministic=True {checked:.2f} s vs "
        f"False {unchecked:.3f} s (benchmark uses False)"
    )
    rows = []
    for k in (1, 16):
        x = V[1][:, 0].contiguous() if k == 1 else V[k]
        r = ref[1][:, 0] if k == 1 else ref[k]
        row = Row(f"curvlinops HessianLinearOperator ({k} per call)", k, kind="peer")
        if rows and rows[0].seconds is not None and rows[0].seconds * k > args.max_call:
            row.error = f"skipped: predicted {rows[0].seconds * k:.0f} s per call > --max-call {args.max_call:.0f} s"
            rows.append(row)
            continue
        try:
            row.check = rel_diff(op @ x, r)
            row.set_timing(args.timer(lambda x=x: op @ x))
        except Exception as err:  # noqa: BLE001
            row.error = f"{type(err).__name__}: {str(err).splitlines()[0][:100]}"
        rows.append(row)
    return rows, info


# ---------------------------------------------------------------------------------------------------- report
def print_report(results: list[WorkloadResult]) -> None:
    names = [r.name for r in results]
    print("\n## Time per HVP vector / time of one full-data gradient (plain torch loss.backward loop)\n")
    head = "| method | k |" + "".join(f" {n} (x grad) | {n} ms/vector |" for n in names)
    print(head)
    print("|" + "---|" * (2 + 2 * len(names)))
    grad_row = "| gradient: plain torch loop (denominator) | - |"
    land_row = "| gradient: landscape Problem.loss_and_grad | - |"
    for r in results:
        g = r.grad_plain.median
        grad_row += f" 1.00x | {g * 1e3:.1f} ms |"
        land_row += f" {r.grad_landscape.ratio:.2f}x | {r.grad_landscape.median * 1e3:.1f} ms |"
    print(grad_row)
    print(land_row)
    keys: list[tuple[str, int]] = []
    for r in results:
        for row in r.rows:
            if (row.method, row.k) not in keys:
                keys.append((row.method, row.k))
    for method, k in keys:
        line = f"| {method} | {k} |"
        for r in results:
            row = r.find(method, k)
            if row is None:
                line += " - | - |"
            elif row.error:
                line += f" {'skipped' if row.error.startswith('skipped') else 'failed'} | - |"
            else:
                pv = row.per_vector()
                line += f" {row.ratio_per_vector():.2f}x | {pv * 1e3:.1f} |"
        print(line)

    print("\n## Correctness: relative difference of each product to landscape double_backward (float32)\n")
    print("| method | k |" + "".join(f" {n} |" for n in names))
    print("|" + "---|" * (2 + len(names)))
    for method, k in keys:
        line = f"| {method} | {k} |"
        for r in results:
            row = r.find(method, k)
            line += " - |" if row is None or row.check is None else f" {row.check:.1e} |"
        print(line)

    print("\n## Notes")
    for r in results:
        for row in r.rows:
            if row.error:
                print(f"- {r.name} {row.method} k={row.k}: FAILED {row.error}")
            elif row.note:
                print(f"- {r.name} {row.method} k={row.k}: {row.note}")
        for line in r.info:
            print(f"- {r.name} {line.rstrip()}")

    print("\n## Goals")
    single = "PyHessian single batch (all samples, graph reused)"
    for r in results:
        peers = [row for row in r.rows if row.kind == "peer" and not row.error and row.seconds is not None]
        for k in WIDTHS:
            # Like for like: the workload's batches against peers on the same batches, and the whole data as one
            # batch against PyHessian's one-batch mode. A peer without blocks multiplies a block of k vectors one
            # by one: its per-vector cost is its k=1 cost.
            for label, cands in (
                ("landscape auto", [p for p in peers if p.method != single and p.k in (1, k)]),
                ("landscape auto, one batch", [p for p in peers if p.method == single]),
            ):
                auto = r.find(label, k)
                if auto is None or auto.error or not cands:
                    print(f"- {r.name} k={k}: {label} or its peers not measured")
                    continue
                best = min(cands, key=lambda p: p.ratio_per_vector())
                a, b = auto.ratio_per_vector(), best.ratio_per_vector()
                verdict = "MET" if a <= b else "NOT MET"
                print(
                    f"- {r.name} k={k}: {label} {a:.2f}x vs fastest peer {best.method} (k={best.k}) "
                    f"{b:.2f}x -> {verdict} (ours/peer = {a / b:.2f})"
                )
    w1 = next((r for r in results if r.name == "W1"), None)
    if w1 is not None:
        auto = w1.find("landscape auto", 16)
        if auto is not None and not auto.error:
            ratio = auto.ratio_per_vector()
            print(
                f"- W1 k=16: auto {ratio:.2f}x a gradient per vector (goal <= 1.25x) -> "
                f"{'MET' if ratio <= 1.25 else 'NOT MET'}"
            )


def bench_language_model(args) -> WorkloadResult:
    """The example GPT-2, eager and sdpa attention: gradient and HVP times of each engine, in gradients."""
    import language_model as lm
    import transformers

    from landscape import losses

    transformers.logging.set_verbosity_error()
    cfg = lm.QUICK if args.quick else lm.FULL
    stream = lm.read_bytes(lm.EVAL_FILES)
    n_seq, batch = (8, 4) if args.quick else (32, 8)
    ids = stream[: n_seq * cfg.seq_len].reshape(n_seq, cfg.seq_len)
    batches = landscape.data.token_batches(ids, batch)
    models = {}
    for attn in ("eager", "sdpa"):
        model = lm.build_model(cfg, SEED) if args.hf is None else landscape.checkpoint.load_hf(args.hf)
        model.config._attn_implementation = attn
        models[attn] = model.eval()
    n = sum(p.numel() for p in models["sdpa"].parameters())
    result = WorkloadResult(
        f"LM: GPT-2 {cfg.n_layer} layers x {cfg.n_embd}, {n:,} params, {len(batches)} batches of {batch} x "
        f"{cfg.seq_len} tokens",
        Timing(float("nan")),
        Timing(float("nan")),
    )
    repeats, budget, slow = args.repeats, args.budget, args.slow_call
    reference = None
    for attn, model in models.items():
        counted = sum(b["input_ids"][:, 1:].numel() for b in batches)

        def grad_run(model=model, counted=counted) -> None:
            model.zero_grad(set_to_none=True)
            for b in batches:
                logits = model(input_ids=b["input_ids"]).logits[:, :-1]
                target = b["input_ids"][:, 1:]
                loss = nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum"
                )
                (loss / counted).backward()

        g = time_call(grad_run, None, repeats, budget, slow)
        result.info.append(f"{attn}: plain torch gradient {g.median * 1e3:.1f} ms")
        if attn == "sdpa":
            result.grad_plain = g
        problem = landscape.Problem(model, losses.causal_lm(), batches)
        v = torch.randn(problem.num_params, generator=torch.Generator().manual_seed(SEED))
        for engine in ("double_backward", "forward_over_reverse"):
            row = Row(f"{engine} ({attn})", 1)
            try:
                op = landscape.hessian(problem, engine=engine)
                t0 = time.perf_counter()
                out = op @ v
                first = time.perf_counter() - t0
                row.set_timing(time_call(lambda op=op, v=v: op @ v, grad_run, repeats, budget, slow))
                row.note = f"first product {first / row.seconds:.2f}x a later one"
                reference = out if reference is None else reference
                row.check = rel_diff(out, reference)
            except Exception as err:  # noqa: BLE001 - a failing engine is a result, not a crash
                row.error = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
            result.rows.append(row)
            print(fmt_progress(row), flush=True)
        model.zero_grad(set_to_none=True)
    return result


def print_language_model(result: WorkloadResult) -> None:
    print(f"\n## {result.name}")
    for line in result.info:
        print(f"- {line}")
    print("\n| engine (attention) | ms per HVP | HVP / gradient (paired) | vs the first engine's product | note |")
    print("|---|---|---|---|---|")
    for r in result.rows:
        if r.error:
            print(f"| {r.method} | failed | | | {r.error} |")
            continue
        print(f"| {r.method} | {r.seconds * 1e3:.1f} | {r.ratio:.2f} | {r.check:.1e} | {r.note} |")


def load() -> str:
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repeats and short training: a smoke test")
    parser.add_argument("--workloads", default="W1,W2", help="comma-separated subset of W1,W2,LM")
    parser.add_argument("--hf", default=None, help="LM: a saved GPT-2 directory (default: the example, untrained)")
    parser.add_argument(
        "--max-call", type=float, default=None, help="skip a product predicted to take longer (s; default 20, quick 5)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (default 7, quick 2)")
    args = parser.parse_args()
    if args.repeats is None:
        args.repeats = 2 if args.quick else 7
    args.budget = 1.0 if args.quick else 4.0  # seconds of timed repeats per measurement at most
    args.slow_call = 2.0 if args.quick else 6.0  # calls slower than this are timed once (their warm-up)
    if args.max_call is None:
        args.max_call = 5.0 if args.quick else 20.0
    steps = {"W1": 10 if args.quick else 60, "W2": 3 if args.quick else 12}

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    # Known, harmless here: PyHessian's backward(create_graph=True) cycle warning; Problem.loss_and_grad's float(loss).
    warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True to a scalar")
    print("# landscape HVP benchmark")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, python {platform.python_version()}, "
        f"float32, {'quick' if args.quick else 'full'} mode, repeats={args.repeats}; load average {load()} "
        f"on {os.cpu_count()} CPUs"
    )
    makers = {"W1": make_w1, "W2": make_w2}
    wanted = [s.strip().upper() for s in args.workloads.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in makers and s != "LM"]
    if unknown:
        parser.error(f"unknown workload(s) {unknown}; choose from {sorted(makers)}")
    start = time.perf_counter()
    results = []
    language_model = None
    for name in wanted:
        if name == "LM":
            language_model = bench_language_model(args)
        else:
            results.append(bench_workload(makers[name](steps[name]), args))
    if results:
        print_report(results)
    if language_model is not None:
        print_language_model(language_model)
    print(f"\ntotal wall time {time.perf_counter() - start:.0f} s; load average {load()}")


if __name__ == "__main__":
    main()
