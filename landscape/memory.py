"""How much memory an analysis may use: the budget every estimator honours, and the error when it cannot.

The default budget is half of what the machine has available now: ``MemAvailable`` of ``/proc/meminfo`` on the
host (the physical memory as a fallback), or the free memory of the GPU an operator lives on
(``torch.cuda.mem_get_info``). Krylov bases take at most half of the budget (:func:`krylov_vectors`); the rest is
left to the products themselves (activations, gradient graphs).
"""

from __future__ import annotations

import os

import torch

__all__ = ["MemoryBudgetError", "available_bytes", "default_budget", "krylov_vectors"]

#: Share of the budget a Krylov basis may take.
KRYLOV_SHARE = 0.5


class MemoryBudgetError(MemoryError):
    """An analysis needs more memory than its budget; the message names the need, the budget and the fix."""


def available_bytes(device: torch.device | str = "cpu") -> int:
    """Bytes available for new allocations on ``device`` now."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def default_budget(device: torch.device | str = "cpu") -> int:
    """Half of :func:`available_bytes`: the budget when ``memory_budget=None``."""
    return available_bytes(device) // 2


def krylov_vectors(memory_budget: int | None, n: int, dtype: torch.dtype, device: torch.device | str) -> int:
    """How many length-``n`` vectors a Krylov basis may hold within ``KRYLOV_SHARE`` of the budget."""
    if memory_budget is not None and (isinstance(memory_budget, bool) or memory_budget <= 0):
        raise ValueError(f"memory_budget must be a positive number of bytes or None, got {memory_budget!r}")
    budget = default_budget(device) if memory_budget is None else int(memory_budget)
    per_vector = n * torch.empty((), dtype=dtype).element_size()
    return int(budget * KRYLOV_SHARE) // per_vector


def gib(nbytes: float) -> str:
    """``nbytes`` as GiB (MiB below one GiB) for messages."""
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"
