"""Benchmark: Hessian-vector products of an FSDP2-sharded GPT-2-shaped model on 1 to 4 CPU ranks (gloo).

The model (``GPT2Config(n_layer=4, n_embd=128, n_head=4, vocab_size=512)``, 0.9M parameters, float32) is built from
one seed in every process and wrapped with ``fully_shard`` per transformer block and at the root; the data, 16
sequences of 32 tokens, are split over the ranks. Every configuration runs in fresh processes (``ranks`` of them,
started as torchrun would, ``OMP_NUM_THREADS = 1`` each so the configurations differ in ranks only) and measures,
per rank:

- ``gradient``: one full-data gradient through the sharded model's own forward and backward (FSDP's hooks), the
  baseline of the ratios;
- ``exact``: :func:`landscape.operators.hessian` (double backward of the whole gathered parameters): the first
  product (gathers the weights, builds the graph) and the median of 3 later ones;
- ``finite_difference``: central differences of FSDP's own gradients (:mod:`landscape.operators.finite_difference`):
  the first product (four gradients: the step is calibrated) and the median of 3 later ones (two gradients);
- bytes moved per product: the all-reduce payload landscape issues (counted by
  :class:`landscape.distributed.DataParallel`) and FSDP's own collectives per gradient (all-gather of the
  parameters in forward and again in backward, reduce-scatter of the gradient: ``3 n s`` per gradient, not
  counted by torch, computed);
- ``basis_bytes``: the Lanczos basis of 20 steps this rank holds (its allocated tensor), and peak RSS.

The 2 cores of the machine are shared by the ranks: times per product grow with ranks here; what transfers to a
GPU cluster are the bytes (basis 1/ranks, collectives per product) — see docs/scaling.md.

Usage::

    python experiments/bench_sharded.py                 # 1, 2, 3, 4 ranks
    python experiments/bench_sharded.py --ranks 1 2     # a subset
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.bench_distributed import _free_port  # noqa: E402

RESULTS = Path(__file__).with_name("results") / "bench_sharded.jsonl"
SEQUENCES, TOKENS, STEPS = 16, 32, 20


def _model():
    import transformers

    cfg = transformers.GPT2Config(
        n_layer=4, n_embd=128, n_head=4, vocab_size=512, n_positions=64, bos_token_id=0, eos_token_id=0
    )
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def worker(out: Path) -> None:
    """One rank: shard the model, take this rank's sequences, time gradient and products, count bytes."""
    from torch.distributed.fsdp import fully_shard

    from landscape import distributed, losses
    from landscape.linalg import lanczos
    from landscape.operators import hessian
    from landscape.problem import Problem

    distributed.init()
    rank, world = distributed.get_rank(), distributed.get_world_size()
    net = _model()
    for block in net.transformer.h:
        fully_shard(block)
    fully_shard(net)
    ids = torch.randint(0, 512, (SEQUENCES, TOKENS), generator=torch.Generator().manual_seed(1))
    mine = distributed.shard(ids, rank, world)
    batches = [{"input_ids": mine[i : i + 4]} for i in range(0, len(mine), 4)]
    p = Problem(net, losses.causal_lm(), batches)
    space = p.space
    ranks = space.ranks
    n, s = p.num_params, 4

    fd = hessian(p, engine="finite_difference")
    gradient = _timed(lambda: fd._gradient(torch.zeros(space.local_size), 0.0))
    v = space.local(torch.randn(n, generator=torch.Generator().manual_seed(2)))

    exact = hessian(p, engine="double_backward", block="loop")
    before = ranks.bytes_all_reduced
    exact_first = _timed(lambda: exact @ v)
    exact_bytes = ranks.bytes_all_reduced - before
    exact_later = statistics.median(_timed(lambda: exact @ v) for _ in range(3))
    exact = None  # its graph freed before the finite differences

    fd_first = _timed(lambda: fd @ v)
    fd_later = statistics.median(_timed(lambda: fd @ v) for _ in range(3))
    before = ranks.bytes_all_reduced
    fd @ v
    fd_bytes = ranks.bytes_all_reduced - before

    dec = lanczos(hessian(p, engine="finite_difference"), STEPS, num_probes=1, seed=0, keep_basis=False)
    row = {
        "rank": rank,
        "world_size": world,
        "num_params": n,
        "local_size": space.local_size,
        "gradient_s": gradient,
        "exact_first_s": exact_first,
        "exact_later_s": exact_later,
        "fd_first_s": fd_first,
        "fd_later_s": fd_later,
        "exact_bytes_landscape": exact_bytes,
        "fd_bytes_landscape": fd_bytes,
        "fd_bytes_fsdp_per_gradient": 3 * n * s * (world - 1) // world if world > 1 else 0,
        "fd_error_bound": fd.error_bound,
        "basis_bytes": dec.settings["basis_bytes"],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    (out / f"rank{rank}.json").write_text(json.dumps(row))


def run_config(ranks: int, timeout: float) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        port = _free_port()
        procs = []
        for rank in range(ranks):
            env = {
                **os.environ,
                "OMP_NUM_THREADS": "1",
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "WORLD_SIZE": str(ranks),
                "LOCAL_WORLD_SIZE": str(ranks),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
            }
            if ranks == 1:  # distributed.init() starts no group for one rank: FSDP needs one all the same
                env["LANDSCAPE_BENCH_SINGLE"] = "1"
            procs.append(subprocess.Popen([sys.executable, __file__, "--worker", str(out)], env=env))
        for proc in procs:
            if proc.wait(timeout=timeout) != 0:
                raise RuntimeError(f"a rank of the {ranks}-rank run failed (exit code {proc.returncode})")
        return [json.loads((out / f"rank{r}.json").read_text()) for r in range(ranks)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        if os.environ.get("LANDSCAPE_BENCH_SINGLE"):
            torch.distributed.init_process_group("gloo")
        worker(args.worker)
        return
    print(
        "| ranks | params / rank | gradient (s) | exact first / later (s) | later / gradient | FD first / later (s) | "
        "FD later / gradient | MB all-reduced per product (exact / FD) | FSDP MB per gradient | FD error bound | "
        "basis MB per rank (20 steps) | peak RSS MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    RESULTS.parent.mkdir(exist_ok=True)
    for ranks in args.ranks:
        rows = run_config(ranks, args.timeout)
        slow = {k: max(r[k] for r in rows) for k in rows[0] if k.endswith("_s") or k.endswith("mib")}
        first = rows[0]
        mb = 1e6
        print(
            f"| {ranks} | {max(r['local_size'] for r in rows):,} | {slow['gradient_s']:.2f} | "
            f"{slow['exact_first_s']:.2f} / {slow['exact_later_s']:.2f} | "
            f"{slow['exact_later_s'] / slow['gradient_s']:.2f} | {slow['fd_first_s']:.2f} / {slow['fd_later_s']:.2f} | "
            f"{slow['fd_later_s'] / slow['gradient_s']:.2f} | {first['exact_bytes_landscape'] / mb:.2f} / "
            f"{first['fd_bytes_landscape'] / mb:.3f} | {first['fd_bytes_fsdp_per_gradient'] / mb:.2f} | "
            f"{max(r['fd_error_bound'] for r in rows):.1e} | {max(r['basis_bytes'] for r in rows) / mb:.2f} | "
            f"{slow['peak_rss_mib']:.0f} |",
            flush=True,
        )
        with RESULTS.open("a") as f:
            f.write(json.dumps({"ranks": ranks, "rows": rows, "time": time.time()}) + "\n")


if __name__ == "__main__":
    main()
