"""One rank of a distributed test (started by ``launch.py`` with torchrun's environment variables).

``python worker.py SCENARIO OUT [ARGS]``: scenarios ``analyses`` (every compared quantity), ``surface`` (a cached
surface; ``ARGS = cache kill_rank kill_after``: rank ``kill_rank`` SIGKILLs itself at its ``kill_after``-th loss
evaluation), ``raise`` (rank 1 raises in its loss part way through Lanczos), ``hang`` (rank 1 stops answering) and
``cli`` (``ARGS`` are the command line, run as ``torchrun -m landscape`` would), ``replicated`` (as
``surface``, with every rank holding all the data: grid points dealt out to the ranks), ``minibatch`` (the minibatch
and per-example analyses), ``language_model`` (a tiny GPT-2 on token batches), ``sharded`` (``ARGS = mlp|gpt2``:
the model FSDP2-sharded over the ranks, issue 21's estimators against the unsharded model in the same process),
``sharded_bf16`` (a bf16 mixed-precision policy), ``sharded_raise`` (``ARGS = raise|kill``: rank 1 raises or is
killed part way through a sharded Lanczos run).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from landscape import distributed  # noqa: E402
from tests.distributed import _case  # noqa: E402


class Sabotaged(nn.CrossEntropyLoss):
    """Cross-entropy that misbehaves at its ``after``-th call: ``"kill"`` (SIGKILL), ``"raise"`` or ``"hang"``."""

    def __init__(self, how: str, after: int):
        super().__init__()
        self.how = how
        self.after = after
        self.calls = 0

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.after:
            if self.how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if self.how == "raise":
                raise ValueError("injected failure on this rank")
            if self.how == "hang":
                time.sleep(120)
        return super().forward(outputs, targets)


def _state(net: nn.Module) -> dict:
    """What an analysis must leave as it found it: parameters (whole), their placements, ``.grad``, FSDP's hooks,
    the modules' modes."""
    return {
        "params": {n: p.full_tensor().clone() for n, p in net.named_parameters()},
        "placements": {n: tuple(p.placements) for n, p in net.named_parameters()},
        "grads": {n: None if p.grad is None else p.grad.full_tensor().clone() for n, p in net.named_parameters()},
        "hooks": [(len(m._forward_pre_hooks), len(m._forward_hooks)) for m in net.modules()],
        "training": [m.training for m in net.modules()],
    }


def sharded(kind: str, rank: int, world: int) -> dict:
    """``sharded`` scenario: issue 21's estimators on an FSDP2-sharded model, and on the unsharded model in this
    process (the reference); the model's state before and after."""
    reference = _case.sharded_analyses(_case.sharded_problem(kind, rank, world, sharded=False))
    p = _case.sharded_problem(kind, rank, world)
    net = p.model
    net.train()  # a mode the analysis (eval) must restore
    # A gradient in .grad (FSDP's own backward, reduce-scattered), which the analysis must not touch.
    batch = next(iter(p._data))
    loss = net(batch[0]).sum() if kind == "mlp" else net(**batch).logits.sum()
    loss.backward()
    before = _state(net)
    result = _case.sharded_analyses(p)
    fd = {"float64": _case.finite_difference_analyses(p)}
    after = _state(net)
    fd["float32"] = _case.finite_difference_analyses(_case.sharded_problem(kind, rank, world, dtype=torch.float32))
    return {
        "reference": reference,
        "sharded": result,
        "before": before,
        "after": after,
        "finite_difference": fd,
        "describe": p.describe(),
        "num_params": p.num_params,
        "local_size": p.space.local_size,
    }


def main() -> None:
    scenario, out = sys.argv[1], Path(sys.argv[2])
    if scenario != "cli":  # the command line initialises the group itself
        distributed.init()
    rank, world = distributed.get_rank(), distributed.get_world_size()
    data = _case.shard(rank, world)
    if scenario == "analyses":
        p = _case.problem(data)
        results = _case.analyses(p)
        results["describe"] = p.describe()
        results["fingerprint"] = p.sample_fingerprint()
        results["batch_fingerprint"] = p.data_fingerprint()
        results["bytes_all_reduced"] = p.dist.bytes_all_reduced
        from landscape.spectrum import spectrum

        # Rank 0 alone owns the cache; the second call is answered from it on every rank.
        cache = out / "spectrum.h5" if rank == 0 else None
        first = spectrum(p, k=2, num_probes=2, num_steps=6, seed=0, cache=cache)
        second = spectrum(p, k=2, num_probes=2, num_steps=6, seed=0, cache=cache)
        results["cached_spectrum"] = (first.eigenvalues, second.eigenvalues, first.wall_time, second.wall_time)
        results["cache_path"] = str(out / "spectrum.h5")
        from landscape.cache import key_for

        results["keys"] = {flag: key_for(p, "spectrum", {"k": 2}, order_free=flag) for flag in (True, False)}
        torch.save(results, out / f"rank{rank}.pt")
    elif scenario == "language_model":
        p = _case.lm_problem(_case.lm_batches(rank, world))
        torch.save(_case.lm_analyses(p), out / f"rank{rank}.pt")
    elif scenario == "minibatch":
        p = _case.problem(data)
        torch.save(_case.minibatch_analyses(p), out / f"rank{rank}.pt")
    elif scenario == "surface":
        from landscape.surface import directions, surface

        cache, kill_rank, kill_after = sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
        loss_fn = Sabotaged("kill", kill_after) if rank == kill_rank else nn.CrossEntropyLoss()
        p = _case.problem(data, loss_fn)
        dirs = directions.filter_normalized(p, num=2, seed=0)
        surf = surface(p, dirs, span=(-1.0, 1.0), resolution=7, chunk=4, cache=cache)
        torch.save({"loss": surf.loss, "settings": surf.settings}, out / f"rank{rank}.pt")
    elif scenario == "replicated":
        from landscape.surface import directions, surface

        cache, kill_rank, kill_after = sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
        loss_fn = Sabotaged("kill", kill_after if rank == kill_rank else 0)
        p = _case.problem(_case.data(), loss_fn, distributed="replicated")  # every rank holds all the data
        assert p.dist is None and p.replicas is not None
        dirs = directions.filter_normalized(p, num=2, seed=0)
        surf = surface(p, dirs, span=(-1.0, 1.0), resolution=7, chunk=4, cache=cache if rank == 0 else None)
        result = {"loss": surf.loss, "accuracy": surf.accuracy, "settings": surf.settings, "calls": loss_fn.calls}
        torch.save(result, out / f"rank{rank}.pt")
    elif scenario in ("raise", "hang"):
        from landscape.linalg import top_eigen
        from landscape.operators import hessian

        loss_fn = Sabotaged(scenario, 12) if rank == 1 else nn.CrossEntropyLoss()
        p = _case.problem(data, loss_fn)
        top_eigen(hessian(p, engine="double_backward", block="loop", graph_memory_limit=0), k=2, seed=0)
    elif scenario == "sharded":
        torch.save(sharded(sys.argv[3], rank, world), out / f"rank{rank}.pt")
    elif scenario == "sharded_bf16":
        torch.save(_case.mixed_precision_analyses(rank, world), out / f"rank{rank}.pt")
    elif scenario == "sharded_raise":
        from landscape.linalg import top_eigen
        from landscape.operators import hessian
        from landscape.problem import Problem

        net = _case.fully_sharded(_case.model(), "mlp")
        how = sys.argv[3] if len(sys.argv) > 3 else "raise"
        loss_fn = Sabotaged(how, 12) if rank == 1 else nn.CrossEntropyLoss()
        p = Problem(net, loss_fn, data, batch_size=_case.BATCH_SIZE)
        top_eigen(hessian(p, engine="double_backward", block="loop", graph_memory_limit=0), k=2, seed=0)
    elif scenario == "cli":
        from landscape import cli

        sys.argv = ["landscape", *sys.argv[3:]]
        cli.run()
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")


if __name__ == "__main__":
    main()
