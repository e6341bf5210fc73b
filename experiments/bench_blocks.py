"""Benchmark: ``block_spectra`` (every diagonal block at once) against a loop over blocks, one method per process.

Zhang et al. 2024 ("Why Transformers Need Adam: A Hessian Perspective") estimate each diagonal block's spectrum
separately: for block ``b``, stochastic Lanczos quadrature on ``H_bb`` alone. Here that is ``landscape.spectrum`` of
a ``Problem`` built with ``params=[block b's parameter names]`` (whose Hessian is exactly ``H_bb``), block after
block: ``loop_rebuilt`` as their code runs it, one forward and backward pass per block per batch for every product
(no gradient graph kept between products), and ``loop`` with landscape's graph cache (each block's graph built once
and reused by all its products, so the model runs once per block in all). :func:`landscape.block_spectra` advances
every block's recurrences together, one batched data pass per Lanczos step for all blocks (``blocks``:
``dense_max=0``, every block through Lanczos as in the loop; ``blocks_default``: the default
``dense_max = num_steps``, blocks that small built densely and diagonalised).

Both sides: blocks ``by="module"``, the same ``num_probes`` Rademacher probes and ``num_steps`` Lanczos steps per
block, top ``k=3``, the same engine and block strategy (``--engine``, ``--block``; default ``double_backward`` and
``auto``), seed 0; ``block_spectra`` with ``full=False`` and ``traces="slq"`` so that it computes what the loop
does (per block: top eigenvalues, SLQ trace, Frobenius norm, density) and nothing more.

Workloads (``experiments/workloads.py``): W1 (MLP 784-128-128-10, 118k parameters, 2048 samples, 3 blocks), W2
(small BatchNorm ResNet, 121k parameters, reduced by default to 128 images 3x8x8 like ``bench_spectrum.py``;
``--w2-samples 512 --w2-size 32`` is the specified size) and LM: the GPT-2 of ``experiments/language_model.py``
(4 layers, width 160, byte vocabulary, 1.3M parameters, sdpa attention, untrained: the cost does not depend on the
weights) on ``--lm-seqs`` sequences of 64 bytes of the standard library's source in one batch, causal LM loss.

Each method runs in a fresh ``python`` process (``--one WORKLOAD METHOD``), so its peak RSS (``resource.getrusage``)
is its own. Reported per run: wall time of the analysis (the workload's construction and training excluded),
operator calls (each one pass over the data; counted on the operator), model forward calls (a forward hook: the
double-backward engine keeps each batch's graph, so later products need no forward), products (columns) and peak
RSS; and for the block methods the largest relative difference of the blocks' top eigenvalues from the loop's.

Usage::

    python experiments/bench_blocks.py                       # W1, W2, LM (about 5 minutes on 2 cores)
    python experiments/bench_blocks.py --workloads W1 --num-probes 4 --num-steps 40
    python experiments/bench_blocks.py --smoke --out /tmp/bench_blocks.jsonl   # seconds: W2 tiny, 1 probe, 3 steps
    python experiments/bench_blocks.py --one W1 blocks       # one method here, a JSON line
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

# Run from anywhere: this checkout's package and the sibling modules.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from workloads import SEED, add_w2_options, make_w1, make_w2  # noqa: E402

import landscape  # noqa: E402
from landscape.blocks import BlockPartition  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "bench_blocks.jsonl"
WORKLOADS = ("W1", "W2", "LM")
METHODS = ("loop", "loop_rebuilt", "blocks", "blocks_default", "blocks_refined")
K = 3


# ---------------------------------------------------------------------------------------------------- workloads
def lm_workload(seqs: int) -> tuple[torch.nn.Module, object, list, str]:
    import language_model as lm
    import transformers

    transformers.logging.set_verbosity_error()
    cfg = lm.FULL
    model = lm.build_model(cfg, SEED).eval()
    ids = lm.read_bytes(lm.EVAL_FILES)[: seqs * cfg.seq_len].reshape(seqs, cfg.seq_len)
    n = sum(p.numel() for p in model.parameters())
    desc = (
        f"LM: GPT-2 {cfg.n_layer} layers x {cfg.n_embd} ({n:,} params, {model.config._attn_implementation} "
        f"attention, untrained), 1 batch of {seqs} x {cfg.seq_len} bytes, causal LM loss"
    )
    return model, landscape.losses.causal_lm(), landscape.data.token_batches(ids, seqs), desc


def workload(name: str, args: argparse.Namespace) -> tuple[torch.nn.Module, object, list, str]:
    """``(model, loss, batches, description)``; ``Problem(model, loss, batches, params=...)`` is the loss on a block."""
    if name == "LM":
        return lm_workload(args.lm_seqs)
    if name == "W1":
        w = make_w1(args.train_steps["W1"])
    else:
        w = make_w2(args.train_steps["W2"], samples=args.w2_samples, size=args.w2_size)
    return w.model, torch.nn.CrossEntropyLoss(), w.batches, w.description


# ---------------------------------------------------------------------------------------------------- counting
class Counts:
    """Operator calls (data passes) and model forward calls, counted while a method runs."""

    def __init__(self, model: torch.nn.Module):
        self.calls = 0
        self.forwards = 0
        self.products = 0
        model.register_forward_hook(self._forward)

    def _forward(self, *args) -> None:
        self.forwards += 1

    def operator(self, problem: landscape.Problem, args: argparse.Namespace, **options):
        """The Hessian of ``problem`` with its ``_matmat`` counted (one call = one pass over the data)."""
        op = landscape.hessian(problem, engine=args.engine, block=args.block, **options)
        inner = op._matmat

        def counted(V: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            self.products += V.shape[1]
            return inner(V)

        op._matmat = counted
        return op


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30


def run_one(name: str, method: str, args: argparse.Namespace) -> dict:
    torch.manual_seed(SEED)
    model, loss, batches, desc = workload(name, args)
    problem = landscape.Problem(model, loss, batches)
    part = BlockPartition.of(problem.param_names, problem.param_numels, "module")
    counts = Counts(model)
    kw = {"k": K, "num_probes": args.num_probes, "num_steps": args.num_steps, "seed": SEED}
    base = {"workload": name, "method": method, "description": desc, "blocks": part.num_blocks}
    if method == "blocks_default" and min(part.sizes) > args.num_steps:
        return base | {"same_as": "blocks", "note": f"no block of <= num_steps={args.num_steps} parameters"}
    t0 = time.perf_counter()
    if method in ("loop", "loop_rebuilt"):
        tops, chosen = [], set()
        # loop_rebuilt: as Zhang et al.'s code runs, every product rebuilds the batch's forward and backward (no
        # gradient graph kept between products: graph_memory_limit=0); loop: the graph kept, as landscape would.
        options = {"graph_memory_limit": 0} if method == "loop_rebuilt" else {}
        for members in part.members:
            # Zhang et al.'s way: SLQ of H_bb alone, the Hessian of the loss in block b's parameters only.
            op = counts.operator(landscape.Problem(model, loss, batches, params=list(members)), args, **options)
            tops.append(float(landscape.spectrum(op, **kw).lambda_max))
            chosen |= set(op.chosen.values())
        extra = {"strategies": sorted(chosen)}
    else:
        dense_max = None if method == "blocks_default" else 0
        refine = args.refine if method == "blocks_refined" else 0
        r = landscape.block_spectra(
            counts.operator(problem, args),
            by="module",
            full=False,
            traces="slq",
            dense_max=dense_max,
            refine=refine,
            **kw,
        )
        tops = [float(x) for x in r.lambda_max]
        # Restricted block products (HessianOperator.block_products) bypass _matmat: take the result's own counts.
        counts.calls, counts.products = r.passes, r.num_matvecs
        extra = {
            "passes_reported": r.passes,
            "products_kind": r.settings["products"],
            "dense_blocks": len(r.settings["dense_blocks"]),
            "columns": r.settings["columns"],
            "strategies": sorted(set(r.settings.get("engine", {}).values())),
            "heterogeneity_mean": r.heterogeneity.mean,
            "basis_bytes": r.settings["basis_bytes"],
            "unconverged": [n for n in r.names if not r.spectra[n].eigen_converged.all()],
            "max_relative_residual": max(
                float(r.spectra[n].eigen_residuals.max() / abs(r.spectra[n].eigenvalues).max()) for n in r.names
            ),
        }
        if refine:
            extra["refine"] = r.settings["refine"]
    seconds = time.perf_counter() - t0
    return base | {
        "params": problem.num_params,
        "num_probes": args.num_probes,
        "num_steps": args.num_steps,
        "engine": args.engine,
        "block": args.block,
        "threads": torch.get_num_threads(),
        "seconds": seconds,
        "operator_calls": counts.calls,
        "forward_calls": counts.forwards,
        "products": counts.products,
        "lambda_max": tops,
        **extra,
        "peak_gib": peak_rss_gib(),
    }


# ---------------------------------------------------------------------------------------------------- driver
def table(rows: list[dict]) -> str:
    lines = [
        "| workload | blocks B | params | method | wall s | / loop | operator calls (data passes) | forward calls "
        "| products | peak RSS GiB | max rel. diff. of lambda_max vs loop |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(r["workload"] for r in rows):
        mine = [r for r in rows if r["workload"] == name]
        loop = next((r for r in mine if r["method"] == "loop" and "seconds" in r), None)
        for r in mine:
            if "error" in r or "same_as" in r:
                what = f"failed: {r['error']}" if "error" in r else f"= {r['same_as']} ({r['note']})"
                lines.append(f"| {name} | {r.get('blocks', '')} | | {r['method']} | {what} | | | | | | |")
                continue
            ratio = r["seconds"] / loop["seconds"] if loop else math.nan
            diff = ""
            if loop and r is not loop:
                diff = (
                    f"{max(abs(a - b) / abs(b) for a, b in zip(r['lambda_max'], loop['lambda_max'], strict=True)):.1e}"
                )
            lines.append(
                f"| {name} | {r['blocks']} | {r['params']:,} | {r['method']} | {r['seconds']:.1f} | {ratio:.2f} "
                f"| {r['operator_calls']} | {r['forward_calls']} | {r['products']} | {r['peak_gib']:.2f} | {diff} |"
            )
    return "\n".join(lines)


def verdicts(rows: list[dict]) -> list[str]:
    out = []
    for name in dict.fromkeys(r["workload"] for r in rows):
        by = {r["method"]: r for r in rows if r["workload"] == name and "seconds" in r}
        for loop in ("loop", "loop_rebuilt"):
            if loop in by and "blocks" in by:
                ratio = by["blocks"]["seconds"] / by[loop]["seconds"]
                out.append(
                    f"- {name}: block_spectra (dense_max=0) / {loop} = {ratio:.2f} (goal <= 0.5) -> "
                    f"{'MET' if ratio <= 0.5 else 'NOT MET'}"
                )
    return out


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--num-probes", type=int, default=2, help="Rademacher probes per block (default 2)")
    ap.add_argument("--num-steps", type=int, default=20, help="Lanczos steps per block (default 20)")
    ap.add_argument("--engine", default="double_backward", help="product engine of both sides")
    ap.add_argument("--block", default="auto", help="block strategy of both sides (loop, batched, auto)")
    ap.add_argument("--lm-seqs", type=int, default=4, help="LM: sequences of 64 bytes in the one batch (default 4)")
    ap.add_argument("--refine", type=int, default=200, help="blocks_refined: restarted steps at most (default 200)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    ap.add_argument("--smoke", action="store_true", help="seconds: W2 of 64 images 3x8x8, 1 probe, 3 steps")
    add_w2_options(ap)
    ap.add_argument("--one", nargs=2, metavar=("WORKLOAD", "METHOD"), help="run one method here, print JSON")
    ap.add_argument("--out", type=Path, default=RESULTS, help="rows are appended here")
    args = ap.parse_args(argv)
    if args.smoke:
        args.num_probes, args.num_steps = 1, 3
        args.w2_samples, args.w2_size = args.w2_samples or 64, args.w2_size or 8
        args.train_steps = {"W1": 10, "W2": 3}
    else:
        args.w2_samples, args.w2_size = args.w2_samples or 128, args.w2_size or 8
        args.train_steps = {"W1": 60, "W2": 12}
    return args


def forwarded(args: argparse.Namespace) -> list[str]:
    """The options a child process needs to rebuild the same workload and settings."""
    out = ["--num-probes", str(args.num_probes), "--num-steps", str(args.num_steps), "--engine", args.engine]
    out += ["--block", args.block, "--lm-seqs", str(args.lm_seqs), "--threads", str(args.threads)]
    out += ["--refine", str(args.refine)]
    out += ["--w2-samples", str(args.w2_samples), "--w2-size", str(args.w2_size)]
    return out + (["--smoke"] if args.smoke else [])


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(run_one(*args.one, args)), flush=True)
        return
    print(
        f"# block_spectra vs a loop over blocks: {platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, {args.threads} thread(s), {time.strftime('%Y-%m-%d %H:%M')}; by module, "
        f"{args.num_probes} probes x {args.num_steps} steps per block, k={K}, engine {args.engine}, block {args.block}",
        flush=True,
    )
    rows = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.workloads:
        for method in args.methods:
            t0 = time.perf_counter()
            cmd = [sys.executable, __file__, "--one", name, method, *forwarded(args)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                tail = proc.stderr.strip().splitlines()[-1:]
                row = {"workload": name, "method": method, "error": f"process exited {proc.returncode}: {tail}"}
            row["process_s"] = time.perf_counter() - t0
            rows.append(row)
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{name} {method}: {row.get('seconds', math.nan):.1f} s", flush=True)
    for desc in dict.fromkeys(r["description"] for r in rows if "description" in r):
        print(f"- {desc}")
    print()
    print(table(rows))
    print("\n".join(["", *verdicts(rows)]))


if __name__ == "__main__":
    main()
