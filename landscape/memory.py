"""How much memory an analysis may use: the budget every estimator honours, and the error when it cannot.

The default budget is 80% of what the machine has available now (``DEFAULT_SHARE``; the memory the process holds
already is not available, so it is not part of the budget either): ``MemAvailable`` of ``/proc/meminfo`` on the
host (the physical memory as a fallback), or the free memory of the GPU an operator lives on
(``torch.cuda.mem_get_info``). Krylov bases take at most half of the budget (:func:`krylov_vectors`); the rest is
left to the products themselves (activations, gradient graphs).

This module sits above the problem (the estimate measures a problem's gradient graphs) and below the operators and
the estimators, which honour the budget. The sizes the estimate predicts are therefore defined here, once, and the
code that allocates them imports them: the Hessian operator's graph cache limit, block width and trial threshold,
and the vectors each estimator holds (the top-k Krylov basis and thick restart's smallest one, the three-term
recurrence, the trace estimators' sketches and probe blocks).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import math
import os
import resource
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from landscape.batch import tensor_leaves
from landscape.double_backward import double_backward_kernels
from landscape.problem import PreparedBatch, Problem

__all__ = [
    "MemoryBudgetError",
    "MemoryEstimate",
    "available_bytes",
    "default_budget",
    "estimate",
    "krylov_vectors",
    "parse_bytes",
    "release_free_memory",
    "require",
    "resident_bytes",
]

#: Share of the available memory the default budget takes.
DEFAULT_SHARE = 0.8
#: Share of the budget a Krylov basis may take.
KRYLOV_SHARE = 0.5
#: Vectors a block of probes costs per column while its product is formed: the probe, the product's per-parameter
#: pieces, and the product block they are gathered into (Frobenius on GPT-2 small with blocks of 10 fitted as if
#: 2 per column peaked at 22.4 GiB in the report, BENCHMARKS.md stop 23). The column loops (models of 1M parameters
#: and more) now write each column into the block as it is made, holding the probe, the block and one column
#: (``operators.problem_operator.loop_columns``); the batched strategies still hold the three, and the fits keep them.
PRODUCT_COPIES = 3
#: A default top-k Krylov basis holds no more than this, or ``2 k + 4`` vectors if more (``top_eigen``).
LEAN_BASIS_BYTES = 2**30
#: Products on vectors of at least this many bytes hand the allocator's free pages back afterwards (below it the
#: call would cost more than it saves). 16 MiB (4M float32 parameters): ResNet-18's 45 MB vectors included, whose
#: report kept 1.6-2.7 GiB of freed heap resident between sections at the former 64 MiB.
TRIM_BYTES = 2**24

#: The Hessian operator's default graph cache (``graph_memory_limit``): every batch's gradient graph is kept for
#: reuse while they fit together.
DEFAULT_GRAPH_MEMORY = 2 * 1024**3
#: Columns a problem operator multiplies at once by default (``max_block``): wider blocks go through in chunks of
#: at most this many, within the same data pass.
DEFAULT_MAX_BLOCK = 16
#: Vectors of at least this many bytes (1M float32 parameters): blocks loop over their columns on the cached graph
#: without timing trials. On GPT-2 small the trials for a block of 4 (batched double backward, forward-over-reverse
#: with and without vmap, all on the whole batch) took 10 minutes and held 13.8 GiB; on ResNet-18 (11.2M) a spectrum
#: of 2 probes at once peaked at 8.37 GiB with them, 6.4x a gradient. The loop holds one column's transients, and
#: batching columns was no faster than the loop on models of this size on CPU (BENCHMARKS.md, stop 20).
TRIALS_MAX_VECTOR_BYTES = 2**22

#: Probes per operator application of the streaming estimators (Hutchinson, diagonal, Frobenius) by default.
DEFAULT_BLOCK_SIZE = 50
#: Vectors the three-term recurrence holds at once (:mod:`landscape.linalg.short_recurrence`): ``q_j`` and the
#: buffer that turns from ``q_{j-1}`` into ``q_{j+1}`` (Paige 1972's two-vector form); the start vector and the
#: Ritz vector on top when the vector is wanted. An operator that adds its product in place (the Hessian's double
#: backward, one process) needs nothing more; any other allocates the product (the estimate's "product" part).
THREE_TERM_VECTORS = 2
THREE_TERM_VECTORS_WITH_RITZ = 4
#: A thick-restart basis holds the ``k`` wanted vectors, at least one more to grow, and the residual vector.
MIN_BASIS_EXTRA = 2


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


@functools.cache
def _malloc_trim() -> Any:
    """glibc's ``malloc_trim``, or ``None`` (another C library, another system)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_free_memory(nbytes: int, device: torch.device | str = "cpu") -> None:
    """Hand the C allocator's free pages back to the system after work on ``nbytes``-byte vectors.

    On CPU, torch allocates through ``malloc``; glibc serves blocks below its (self-raising, up to 32 MB)
    mmap threshold from heaps whose freed holes stay resident. A gradient graph's build frees thousands of such
    blocks (GPT-2 small: per-layer weights of 2-9 MB) between the ones the graph keeps: 0.6 GB of holes stayed
    resident and counted in the peak (stop 18). Called after a build and when an operator goes, not after every
    product: a product's transients are freed whole and reused by the next one, which otherwise faults them in
    again. ``malloc_trim(0)`` returns whole free pages inside the heaps (``madvise``) without moving or freeing
    anything in use, so later allocations still reuse the space; it changes no allocator setting. No-op below
    ``TRIM_BYTES``, on GPUs (torch's caching allocator keeps its own pool) and without glibc.
    """
    if nbytes < TRIM_BYTES or torch.device(device).type != "cpu":
        return
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def graph_limit(problem: Problem, graph_memory_limit: int | None) -> float:
    """Bytes of gradient graphs the Hessian operator keeps between products: ``graph_memory_limit``, or by default
    ``DEFAULT_GRAPH_MEMORY``, and no limit for a problem of one batch (its graph is held during every product, so
    keeping it adds nothing to the peak; rebuilding it costs a forward and a backward pass per product)."""
    if graph_memory_limit is not None:
        return int(graph_memory_limit)
    return math.inf if problem.num_batches == 1 else DEFAULT_GRAPH_MEMORY


def default_budget(device: torch.device | str = "cpu") -> int:
    """``DEFAULT_SHARE`` of :func:`available_bytes`: the budget when ``memory_budget=None``. The estimates are
    within about 10% of what the analyses hold (``tests/test_memory.py``, BENCHMARKS.md), so 20% stays free."""
    return int(available_bytes(device) * DEFAULT_SHARE)


def krylov_vectors(memory_budget: int | None, n: int, dtype: torch.dtype, device: torch.device | str) -> int:
    """How many length-``n`` vectors a Krylov basis may hold within ``KRYLOV_SHARE`` of the budget."""
    if memory_budget is not None and (isinstance(memory_budget, bool) or memory_budget <= 0):
        raise ValueError(f"memory_budget must be a positive number of bytes or None, got {memory_budget!r}")
    budget = default_budget(device) if memory_budget is None else int(memory_budget)
    per_vector = n * torch.empty((), dtype=dtype).element_size()
    return int(budget * KRYLOV_SHARE) // per_vector


def default_block_size(block_size: int | None, num_matvecs: int) -> int:
    """Probes per operator application of the streaming estimators: ``block_size`` or ``min(m, 50)``."""
    return block_size or min(num_matvecs, DEFAULT_BLOCK_SIZE)


def trace_vectors(estimator: str, num_matvecs: int, block_size: int | None, loop: bool = False) -> int:
    """Length-``n`` vectors an estimator holds at once besides its product's output (:func:`estimate`'s "product",
    ``block_width`` vectors): a Hutchinson block and the per-parameter pieces a batched strategy's product is
    gathered from (``2 b``, so ``PRODUCT_COPIES = 3`` per probe in all), or the block alone where the operator can
    only loop over the columns (``loop``: vectors of ``TRIALS_MAX_VECTOR_BYTES`` or more), writing each into its
    row; Hutch++'s sketch, its products and basis, then the deflated probes with theirs (``~ 2 m + m / 3``);
    XTrace's test vectors, their products and basis (``~ 2 m``)."""
    if estimator == "hutchinson":
        return (1 if loop else 2) * default_block_size(block_size, num_matvecs)
    if estimator == "hutch++":
        return 2 * num_matvecs + num_matvecs // 3
    return 2 * num_matvecs


def min_basis(k: int) -> int:
    """The smallest useful thick-restart basis for ``k`` eigenpairs: the ``k`` kept vectors plus room to grow."""
    return k + MIN_BASIS_EXTRA + 1


def kept_after_restart(k: int, m: int) -> int:
    """Ritz vectors kept at a thick restart: the ``k`` wanted and about half of the rest of the basis (Wu & Simon
    keep extra nearby Ritz vectors so that the next cycle does not lose the ground gained towards the wanted end)."""
    return min(m - 2, k + max(1, (m - k) // 2))


def lean_basis(k: int, per_vector: int) -> int:
    """Vectors a top-``k`` Lanczos basis holds by default (before the budget caps it): ``LEAN_BASIS_BYTES`` or
    ``2 k + 4`` vectors, whichever is more, and at least one more than thick restart keeps. At 10^8 parameters a
    vector costs 0.5 GB and a reorthogonalisation pass over the basis as much time as a product, while a
    restarted basis of a few times ``k`` converges in about as many products (Wu & Simon 2000)."""
    return max(2 * k + 4, min_basis(k) + 1, LEAN_BASIS_BYTES // per_vector)


def uses_three_term(k: int, vectors: bool, cap: int, steps: int, guarantee: float | None = None) -> bool:
    """Whether ``top_eigen`` runs the two-vector three-term recurrence: ``k = 1`` and more than one step, and a
    gap-free ``guarantee``, no vector wanted, or no room (``cap`` vectors) for the smallest restarted basis."""
    return k == 1 and steps > 1 and (guarantee is not None or not vectors or cap < min(steps + 1, min_basis(k) + 1))


def block_lanczos_vectors(p: int, steps: int, columns: int, stored: bool) -> int:
    """Length-``P`` vectors the block recurrences of :mod:`landscape.blocks.lanczos` hold: the basis (``p (m + 1)``,
    or two per probe for the three-term recurrence), the products ``H_bb q_b`` gathered per probe (``p``) and one
    pass's input columns (the operator's output counts as the product)."""
    return p * (steps + 1 if stored else 2) + p + columns


def gib(nbytes: float) -> str:
    """``nbytes`` as GiB (MiB below one GiB, KiB below one MiB) for messages."""
    if nbytes >= 2**30:
        return f"{nbytes / 2**30:.2f} GiB"
    return f"{nbytes / 2**20:.1f} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:.1f} KiB"


# ---------------------------------------------------------------------------------------------------- estimate
#: Analyses :func:`estimate` knows, and the vectors of length ``n`` each holds besides the product's own.
ANALYSES = ("gradient", "hvp", "top_eigen", "spectrum", "trace", "block_spectra")


@dataclass(frozen=True)
class MemoryEstimate:
    """What an analysis will hold at its peak, by part, before it runs.

    Attributes
    ----------
    analysis, settings
        What was estimated.
    parts
        Bytes the analysis adds, by part: ``"gradient graph"`` (the saved activations and the gradient kept for
        reuse by the double-backward Hessian products), ``"product"`` (one product's output and its transients),
        ``"Krylov vectors"`` (the estimator's basis, probes and sketches).
    resident
        Bytes the process holds already: the runtime, the weights and the data (resident set on a CPU, allocated
        device memory on a GPU).
    budget
        The memory budget the parts must fit (``memory_budget``, else :func:`default_budget`).
    notes
        How each part was derived.
    """

    analysis: str
    parts: dict[str, int]
    resident: int
    budget: int
    settings: dict[str, Any] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def need(self) -> int:
        """Bytes the analysis adds to what the process holds."""
        return sum(self.parts.values())

    @property
    def total(self) -> int:
        """Expected peak: resident plus need."""
        return self.resident + self.need

    @property
    def fits(self) -> bool:
        return self.need <= self.budget

    def check(self, fix: str) -> None:
        """Raise :class:`MemoryBudgetError` naming the need, the budget and ``fix`` when the parts do not fit."""
        if not self.fits:
            parts = ", ".join(f"{name} {gib(b)}" for name, b in self.parts.items())
            raise MemoryBudgetError(
                f"{self.analysis} needs {gib(self.need)} ({parts}) on top of the {gib(self.resident)} this process "
                f"holds; the memory budget is {gib(self.budget)}. {fix}, or raise memory_budget="
            )

    def table(self) -> str:
        """The estimate as aligned lines (the CLI's ``--dry-run``)."""
        width = max(len(p) for p in (*self.parts, "resident now")) + 2
        rows = [f"memory estimate of {self.analysis}:"]
        rows.append(f"  {'resident now':<{width}}{gib(self.resident):>12}  (runtime, weights, data)")
        for name, b in self.parts.items():
            rows.append(f"  {name:<{width}}{gib(b):>12}  {self.notes.get(name, '')}")
        rows.append(f"  {'expected peak':<{width}}{gib(self.total):>12}")
        verdict = "fits" if self.fits else "does NOT fit"
        rows.append(f"  {'budget':<{width}}{gib(self.budget):>12}  the analysis's {gib(self.need)} {verdict}")
        return "\n".join(rows)


def resident_bytes(device: torch.device | str = "cpu") -> int:
    """Bytes this process holds now: the resident set (``/proc/self/statm``) on a CPU, allocated memory on a GPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _graph_bytes(problem: Problem, batch: PreparedBatch, create_graph: bool) -> int:
    """Bytes a batch's graph saves beyond the weights, buffers and data it uses: the forward's (``create_graph``
    false), or the forward's and the gradient's (``create_graph=True``: what double backward keeps)."""
    params = problem.params_dict(share=True)
    held = {t.untyped_storage().data_ptr() for t in params.values()}
    held |= {b.untyped_storage().data_ptr() for b in problem.model.buffers()}
    held |= {t.untyped_storage().data_ptr() for _, t in tensor_leaves(batch.data)}
    saved: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in held:
            saved[s.data_ptr()] = s.nbytes()
        return t.detach()  # not t itself: that would leak the graph (see operators.hessian._GradientGraph)

    with problem.evaluation(order=2) as forward, torch.enable_grad():
        leaves = {n: p.detach().requires_grad_() for n, p in params.items()}
        kernels = double_backward_kernels(leaf_gradient_values=False)
        mode = kernels if create_graph else contextlib.nullcontext()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), mode:
            loss = problem.batch_loss(forward, leaves, batch)
            if create_graph:  # the gradient is held with its graph (only partly: see double_backward's stand-ins)
                with kernels.stand_ins():
                    grads = torch.autograd.grad(loss, list(leaves.values()), create_graph=True, allow_unused=True)
                saved |= {g.untyped_storage().data_ptr(): g.untyped_storage().nbytes() for g in grads if g is not None}
    return sum(saved.values())


@dataclass(frozen=True)
class GraphSizes:
    """Bytes of the graphs of a problem's products: the largest batch's double-backward graph, every batch's
    together, and the largest batch's forward activations; plus the bytes of one parameter-sized vector."""

    one: int
    every: int
    forward: int
    per_vector: int


def product_memory(problem: Problem) -> GraphSizes:
    """The :class:`GraphSizes` of ``problem``: a batch's graph is ``a + b * size``, fitted to graphs built on the
    first batch's first one and two examples (four tiny passes, nothing kept; the fit is remembered by the
    problem), the first batch taken as the largest."""
    per_vector = problem.num_params * torch.empty((), dtype=problem.dtype).element_size()
    fit = getattr(problem, "_graph_fit", None)
    if fit is None:
        first = next(iter(problem.batches()))
        fit = []
        for create_graph in (True, False):
            one = _graph_bytes(problem, first.head(1), create_graph)
            two = _graph_bytes(problem, first.head(2), create_graph) if first.size > 1 else one
            fit.append((one - max(two - one, 0), max(two - one, 0)))
        fit = problem._graph_fit = (*fit, first.size)
    (a, b), (fa, fb), size = fit
    every = a * max(problem.num_batches, 1) + b * problem.num_local_samples
    return GraphSizes(a + b * size, every, fa + fb * size, per_vector)


def krylov_need(
    analysis: str, n: int, per_vector: int, budget: int, settings: dict[str, Any], loop: bool = False
) -> tuple[int, str]:
    """``(vectors, how)``: the length-``n`` vectors an estimator holds (besides the product's output); ``loop``: the
    operator can only loop over a block's columns (see :func:`trace_vectors`)."""
    cap = int(budget * KRYLOV_SHARE) // per_vector
    if analysis == "gradient":
        return 1, "the gradient"
    if analysis == "hvp":
        width = int(settings.get("width", 1))
        return width, f"{width} input vector(s)"
    if analysis == "top_eigen":
        k = int(settings.get("k", 1))
        vectors = bool(settings.get("vectors", True))
        steps = settings.get("max_matvecs") or min(n, max(20 * k, 100))
        if settings.get("max_basis"):
            cap = int(settings["max_basis"])
        else:
            cap = min(cap, lean_basis(k, per_vector))
        if uses_three_term(k, vectors, cap, steps, settings.get("guarantee")):
            need = THREE_TERM_VECTORS_WITH_RITZ if vectors else THREE_TERM_VECTORS
            return need, "three-term recurrence" + (" and the Ritz vector" if vectors else "")
        basis = min(cap, steps + 1)
        if basis > steps:
            return basis + k + 1, f"full basis of {basis}, {k} Ritz vector(s) and a reorthogonalisation temporary"
        kept = kept_after_restart(k, basis - 1)
        return basis + max(k, 1), f"thick-restart basis of {basis} (keeping {kept}) and the Ritz vectors"
    if analysis == "spectrum":
        p, m = int(settings.get("num_probes", 8)), int(settings.get("num_steps", 40))
        # The block's input is a view of the basis and the reorthogonalisation works in place on the product's
        # output, or (three-term) the product is added into the basis (linalg.lanczos.BatchedLanczos): the basis
        # is all the estimator adds to the product.
        if p * (m + 1) <= cap:
            return p * (m + 1), f"{p} probes x {m + 1} basis vectors"
        g = min(p, cap // 2, int(settings.get("group") or p))
        at_once = f"{g} of {p} probes at a time" if g < p else f"{p} probes"
        return 2 * g, f"three-term recurrence: {at_once} x 2 vectors"
    if analysis == "block_spectra":
        p, m = int(settings.get("num_probes", 4)), int(settings.get("num_steps", 40))
        columns, stored = int(settings.get("columns") or p), bool(settings.get("stored", True))
        how = f"{p} probes x {m + 1} basis vectors" if stored else f"three-term recurrence: {p} probes x 2 vectors"
        return block_lanczos_vectors(p, m, columns, stored), f"{how} (every block's on its own entries), the " + (
            f"product's output per probe and a pass's {columns} input column(s)"
        )
    if analysis == "trace":
        method = settings.get("method", "hutch++")
        method = "hutch++" if method in ("auto", "exact") else method
        m = int(settings.get("num_matvecs", 100))
        return trace_vectors(method, m, settings.get("block_size"), loop), f"{method} with {m} products"
    raise ValueError(f"analysis must be one of {ANALYSES}, got {analysis!r}")


def estimate(
    problem: Problem,
    analysis: str = "hvp",
    *,
    memory_budget: int | None = None,
    graph_memory_limit: int | None = None,
    **settings: Any,
) -> MemoryEstimate:
    """Estimate the peak memory of ``analysis`` on ``problem`` by part, before running it.

    The gradient graph is measured, not guessed: the saved tensors of a ``create_graph`` gradient on one and on two
    examples of the first batch give ``a + b * batch_size`` bytes per batch (tiny passes; the weights, buffers and
    data the graph refers to are already resident and not counted again); a backward pass over it holds about
    twice the forward's activations on top (measured the same way). The Hessian operator keeps every
    batch's graph while they fit ``graph_memory_limit`` together, else one at a time; each graph holds its
    gradient too, measured with it (up to one vector: the parameters' gradients that no stand-in of
    ``double_backward_kernels`` replaces). A product adds its output and about one vector of autograd transients,
    plus the largest parameter; the three-term recurrence's product adds no output where the operator accumulates it in
    place (``in_place_product``: the operator's ``adds_in_place``, else whether the problem is one process's).
    The estimator's own vectors follow its settings (``k``, ``vectors``, ``max_basis``, ``max_matvecs`` for
    ``top_eigen``; ``num_probes``, ``num_steps`` for ``spectrum``; ``method``,
    ``num_matvecs``, ``block_size`` for ``trace``; ``width`` for ``hvp``; ``num_probes``, ``num_steps``, ``columns``,
    ``stored`` for ``block_spectra``).

    Parameters
    ----------
    problem
        The problem to analyse.
    analysis
        One of ``"gradient"``, ``"hvp"``, ``"top_eigen"``, ``"spectrum"``, ``"trace"``, ``"block_spectra"``.
    memory_budget
        Budget to compare with (default :func:`default_budget`).
    graph_memory_limit
        The Hessian operator's graph cache limit (default its default: 2 GiB, none for one batch; see
        :func:`graph_limit`).
    """
    if analysis not in ANALYSES:
        raise ValueError(f"analysis must be one of {ANALYSES}, got {analysis!r}")
    budget = default_budget(problem.device) if memory_budget is None else int(memory_budget)
    limit = graph_limit(problem, graph_memory_limit)
    resident = resident_bytes(problem.device)
    g = product_memory(problem)
    per_vector = g.per_vector
    largest = max(problem.param_numels) * per_vector // problem.num_params
    parts: dict[str, int] = {}
    notes: dict[str, str] = {}
    # Sharded (FSDP2): a Krylov vector holds this rank's entries only; products still see whole vectors.
    space = getattr(problem, "space", None)
    krylov = per_vector if space is None else per_vector * space.local_size // problem.num_params
    loop = per_vector >= TRIALS_MAX_VECTOR_BYTES  # no batched strategy (HessianOperator._clear_choice)
    vectors, how = krylov_need(analysis, problem.num_params, krylov, budget, settings, loop)
    if analysis == "gradient":
        parts["gradient graph"] = g.forward
        notes["gradient graph"] = "the largest batch's activations"
        parts["backward transients"] = g.forward
        notes["backward transients"] = "about the activations again (their gradients)"
    else:
        cached = g.every <= limit
        parts["gradient graph"] = g.every if cached else g.one
        notes["gradient graph"] = (
            f"{problem.num_batches} batch graph(s) kept for reuse"
            if cached
            else "one batch at a time (over the cache limit)"
        ) + " with their gradients"
        width = min(block_width(analysis, settings), DEFAULT_MAX_BLOCK)
        # The three-term recurrences (top-1, the density's probes) and thick restart add each column's product in
        # place into a vector of their own (linalg.short_recurrence, linalg.lanczos, linalg.thick_restart): no
        # output, and one column at a time.
        in_place = settings.get("in_place_product")
        in_place = (problem.dist is None) if in_place is None else bool(in_place)
        adds = in_place and analysis in ("top_eigen", "spectrum") and how.startswith(("three-term", "thick-restart"))
        # A block may go through a batched (vmapped) strategy, holding every column's transients at once, unless
        # the operator rules that out: they would not fit, or the model is large (HessianOperator._clear_choice).
        batched = not adds and width > 1 and not loop and (g.one + per_vector) * width <= budget
        copies = width if batched else 1
        parts["backward transients"] = 2 * g.forward * copies
        notes["backward transients"] = (
            "twice the forward's activations (the gradients a double backward pass holds at once; measured 1.5-2x "
            "on GPT-2 small and ResNet-18)" + (f", for {copies} columns at once (batched)" if batched else "")
        )
        parts["product"] = ((0 if adds else width) + 1) * per_vector + largest
        notes["product"] = (
            "added in place into a Krylov vector, " if adds else f"output of {width} column(s), "
        ) + "autograd transients and the largest parameter"
    parts["Krylov vectors"] = vectors * krylov
    notes["Krylov vectors"] = f"{vectors} x {gib(krylov)}: {how}" + ("" if space is None else " (this rank's shard)")
    return MemoryEstimate(analysis, parts, resident, budget, dict(settings), notes)


def block_width(analysis: str, settings: dict[str, Any]) -> int:
    """Columns of the blocks an analysis multiplies with (before the operator's chunking)."""
    if analysis == "hvp":
        return int(settings.get("width", 1))
    if analysis == "spectrum":
        return int(settings.get("group") or settings.get("num_probes", 8))
    if analysis == "block_spectra":
        return int(settings.get("columns") or settings.get("num_probes", 4))
    if analysis == "trace":
        m = int(settings.get("num_matvecs", 100))
        if settings.get("method") == "hutchinson":
            return default_block_size(settings.get("block_size"), m)
        return max(m // 3, 1)
    return 1


def require(target: Any, analysis: str, memory_budget: int | None, fix: str, **settings: Any) -> None:
    """Check :func:`estimate` before ``analysis`` runs on a :class:`~landscape.problem.Problem` or an operator built
    on one; :class:`MemoryBudgetError` naming the need, the budget and ``fix`` when it does not fit. Operators
    without a problem (matrices, user operators) have no product to estimate: their Krylov vectors are checked
    by the estimators themselves."""
    problem = target if isinstance(target, Problem) else getattr(target, "problem", None)
    if not isinstance(problem, Problem):
        return
    if target is not problem:
        settings.setdefault("in_place_product", bool(getattr(target, "adds_in_place", False)))
    estimate(problem, analysis, memory_budget=memory_budget, **settings).check(fix)


def parse_bytes(text: str) -> int:
    """``"12GiB"``, ``"12G"``, ``"1.5GB"``, ``"500MiB"``, ``"500M"`` or a plain number of bytes -> bytes."""
    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    s = text.strip().upper().replace(" ", "")
    for suffix in ("IB", "B"):
        if s.endswith(suffix) and s[: -len(suffix)][-1:] in "KMGT":
            s = s[: -len(suffix)]
            break
    unit = s[-1] if s and s[-1] in "KMGT" else ""
    try:
        value = float(s[:-1] if unit else s)
    except ValueError:
        raise ValueError(f"not a memory size: {text!r} (e.g. 12GiB, 500MiB or a number of bytes)") from None
    if value <= 0:
        raise ValueError(f"a memory size must be positive, got {text!r}")
    return int(value * units[unit])
