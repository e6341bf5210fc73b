"""Shared machinery of the curvature operators built on a :class:`~landscape.problem.Problem`."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable

import torch
from torch import Tensor

from landscape import memory
from landscape.memory import DEFAULT_MAX_BLOCK
from landscape.operators.base import CurvatureOperator
from landscape.problem import ParamDict, PreparedBatch, Problem, changed_in_place, check_finite, versions

BlockDict = dict[str, Tensor]
#: One batch's product of a ``k``-column block: a dict of ``(k, *shape)`` tensors (the batched strategies), or the
#: ``(k, n)`` rows of the flattened columns (the column loops, which write each column's product into its row).
BatchProduct = BlockDict | Tensor


def dict_to_block(problem: Problem, tensors: BatchProduct | None, k: int, like: Tensor) -> Tensor:
    """Dict of ``(k, *shape)`` tensors (missing or ``None`` = zero; ``None`` for no batch at all: a rank with no
    data) or ``(k, n)`` rows -> ``(n, k)`` block.

    The dict is emptied as its tensors are copied over, and the block is allocated uninitialised (its pages are
    touched only as they are filled), so the two copies never coexist whole: one vector less at the peak of every
    product (0.5 GB on GPT-2 small)."""
    if isinstance(tensors, Tensor):
        return tensors.T
    tensors = {} if tensors is None else tensors
    out = like.new_empty(k, problem.num_params)
    offset = 0
    for name, numel in zip(problem.param_names, problem.param_numels, strict=True):
        t = tensors.pop(name, None)
        piece = out[:, offset : offset + numel]
        piece.zero_() if t is None else piece.copy_(t.reshape(k, numel))
        del t
        offset += numel
    return out.T


def accumulate(problem: Problem, total: BatchProduct | None, part: BatchProduct) -> BatchProduct:
    """``total + part``, in place where it can be (the parts are fresh tensors the operator owns)."""
    if total is None:
        return part
    if isinstance(total, Tensor) or isinstance(part, Tensor):
        total = total if isinstance(total, Tensor) else dict_to_block(problem, total, part.shape[0], part).T
        part = part if isinstance(part, Tensor) else dict_to_block(problem, part, total.shape[0], total).T
        return total.add_(part)
    for name, t in part.items():
        if t is None:
            continue
        if name in total:
            total[name].add_(t)
        else:
            total[name] = t
    return total


SWITCH_MARGIN = 1.25
MEASURE_ROUNDS = 2
MEASURE_SAMPLES = 128
MEASURE_COLUMNS = 16
SCRATCH = -1  # batch index of the measurement slice: its one-off state (a gradient graph) is never cached


class ProblemOperator(CurvatureOperator):
    """A curvature operator of a problem's full-data loss at a fixed point ``w``: ``at``, copied, or the model's
    current parameters, shared with the model (no copy; changing them in place afterwards is an error).

    Subclasses provide named strategies ``_product_<name>(forward, batch_index, batch, V)`` returning one batch's
    contribution as a dict of ``(k, *shape)`` tensors; with ``engine="auto"`` the fastest strategy for each block
    width is measured (see :meth:`_measure`) on the first batch of the first product of that width and used from
    then on, unless it is clear without timing (:meth:`_clear_choice`). ``block`` restricts how a block of vectors
    is multiplied: ``"loop"`` (column by column) or ``"batched"`` (one vmapped/batched call); blocks wider than
    ``max_block`` are cut into chunks of at most that many columns, all within the same data pass. Results agree
    between strategies to rounding; for bit-identical re-runs fix ``engine`` and ``block`` (the choice is recorded
    in :meth:`describe`).
    """

    #: Strategies that loop over a block's columns and can add them into the rows of the earlier batches (their
    #: ``_product_<name>`` takes ``into=``).
    accumulating: frozenset[str] = frozenset()

    def __init__(
        self,
        problem: Problem,
        *,
        at: Tensor | None = None,
        engine: str = "auto",
        block: str = "auto",
        max_block: int = DEFAULT_MAX_BLOCK,
    ):
        space = problem.space
        super().__init__(problem.num_params if space is None else space.local_size, problem.dtype, problem.device)
        if space is not None:  # FSDP2-sharded: vectors are this rank's shards (landscape.sharding)
            self.space = space
        self.problem = problem
        # The model's own tensors when no point is given (no copy of the weights); an in-place change of them is
        # caught before the next product (see _check_point).
        self.params = problem.params_dict(at, share=at is None)
        self._versions = versions(self.params)
        strategies = self._strategies()
        engines = sorted({name for name, _ in strategies})
        if engine != "auto" and engine not in engines:
            raise ValueError(f"engine must be 'auto' or one of {engines}, got {engine!r}")
        if block not in ("auto", "loop", "batched"):
            raise ValueError(f"block must be 'auto', 'loop' or 'batched', got {block!r}")
        if max_block < 1:
            raise ValueError(f"max_block must be >= 1, got {max_block}")
        self.engine = engine
        self.block = block
        self.max_block = int(max_block)
        self.chosen: dict[int, str] = {}
        self.timings: dict[int, dict[str, float]] = {}
        self.failures: dict[int, dict[str, str]] = {}

    def _strategies(self) -> list[tuple[str, str]]:
        """``(engine, strategy_name)`` pairs; ``strategy_name`` is a method ``_product_<name>``."""
        raise NotImplementedError

    def _candidates(self, k: int) -> list[str]:
        """Strategies to try for width ``k``, preferred first: loops lead, so a batched strategy is chosen only when
        it is clearly (``SWITCH_MARGIN``) faster on the measurement slice. Its cost can grow faster with the batch
        size than the slice shows (vmap over convolutions on CPU: equal on a 128-sample slice of W2, 2x slower on
        the full 512-sample batch), so a tie must not go to it."""
        names = [s for e, s in self._strategies() if self.engine in ("auto", e)]
        single = [s for s in names if not s.endswith("_batched")]
        batched = [s for s in names if s.endswith("_batched")]
        if k == 1 or self.block == "loop":
            return single
        return batched if self.block == "batched" else single + batched

    def _run(
        self, name: str, forward: Callable, i: int, batch: PreparedBatch, V: Tensor, into: Tensor | None = None
    ) -> BatchProduct:
        """One batch's contribution: a dict of ``(k, *shape)`` tensors or ``(k, n)`` rows. The column loops
        (:attr:`accumulating`) add theirs into ``into`` (the earlier batches' rows) and return it."""
        fn = getattr(self, f"_product_{name}")
        if into is not None and name in self.accumulating:
            return fn(forward, i, batch, V, into=into)
        return fn(forward, i, batch, V)

    def _check_point(self) -> None:
        changed = changed_in_place(self.params, self._versions)
        if changed:
            raise RuntimeError(
                f"the model's parameters were changed in place since this {type(self).__name__} was built "
                f"({', '.join(changed[:3])}{', ...' if len(changed) > 3 else ''}): it shares them with the model "
                "instead of copying them, so it no longer multiplies at the point it was built at. Build a new "
                "operator at the new point, or pass at=problem.params_vector() to give the operator its own copy."
            )

    def _matmat(self, V: Tensor) -> Tensor:
        if self.problem.space is not None:
            # Sharded: the product of the whole vector (gathered from the ranks' shards), of which this rank keeps
            # its entries. Each rank multiplies with its data shard; the all-reduce below sums the ranks' parts.
            return self.problem.space.local(self._full_matmat(self.problem.space.gather(V)))
        return self._full_matmat(V)

    def _full_matmat(self, V: Tensor) -> Tensor:
        self._check_point()
        # Wide blocks go through in chunks of at most max_block columns (bounded memory for vmapped strategies),
        # all within one pass over the data.
        chunks = list(torch.split(V, self.max_block, dim=1))
        totals: list[BatchProduct | None] = [None for _ in chunks]
        batches = self._batches({C.shape[1] for C in chunks})
        with self.problem.evaluation() if batches is not None else contextlib.nullcontext() as forward:
            for i, batch in batches if batches is not None else self._cached_batches():
                for c, C in enumerate(chunks):
                    w = C.shape[1]
                    if w not in self.chosen:
                        self._choose(w, forward, i, batch, C)
                    total = totals[c]
                    part = self._run(
                        self.chosen[w], forward, i, batch, C, into=total if isinstance(total, Tensor) else None
                    )
                    totals[c] = total if part is total else accumulate(self.problem, total, part)
                    del total, part
        blocks = [dict_to_block(self.problem, t, C.shape[1], V) for C, t in zip(chunks, totals, strict=True)]
        out = blocks[0] if len(blocks) == 1 else torch.cat(blocks, 1)
        if self.problem.dist is not None:
            # Data-parallel: this rank's product is its shard's share of the full-data one (batch weights over the
            # global sample count); one all-reduce per block gives every rank the same full product. The check
            # below comes after it, so a non-finite product stops every rank alike.
            out = self.problem.dist.all_reduce_(out.contiguous(), "all_reduce of a curvature-vector product")
        # A sum is non-finite iff some entry is (barring overflow), and costs less than an elementwise check.
        check_finite(out.sum(), "curvature-vector product", -1)
        return out

    def _release(self) -> None:
        """Freed heap pages back to the system (large models on CPU; see memory.release_free_memory): after a
        gradient graph's build, whose transients leave holes between the tensors the graph keeps, and when the
        operator goes. Not after each product: its transients are freed whole and the next product reuses them;
        handing them back made every product fault its pages in again (GPT-2 small at 4 x 256 tokens: 10.4 ->
        8.7 s a product, peak unchanged; top-1 at 4 x 64: 90.0 -> 85.1 s)."""
        memory.release_free_memory(self.shape[0] * torch.empty((), dtype=self.dtype).element_size(), self.device)

    def _batches(self, widths: set[int]):
        """``(index, batch)`` pairs to multiply with, or ``None`` when everything needed is cached (then neither
        the data nor the model is touched and :meth:`_cached_batches` gives the indices)."""
        return enumerate(self.problem.batches())

    def _cached_batches(self):
        raise NotImplementedError

    def _clear_choice(
        self, k: int, candidates: list[str], forward: Callable, i: int, batch: PreparedBatch
    ) -> str | None:
        """The strategy for width ``k`` when it is known without timing (``None``: measure): the only candidate."""
        return candidates[0] if len(candidates) == 1 else None

    def _choose(self, k: int, forward: Callable, i: int, batch: PreparedBatch, V: Tensor) -> None:
        """Set ``self.chosen[k]``: the clear choice when there is one, else the fastest measured candidate."""
        candidates = self._candidates(k)
        clear = self._clear_choice(k, candidates, forward, i, batch)
        if clear is not None:
            self.chosen[k] = clear
        else:
            self._measure(k, candidates, forward, batch, V)

    def _measure(self, k: int, candidates: list[str], forward: Callable, batch: PreparedBatch, V: Tensor) -> None:
        """Time the candidates and remember the fastest for width ``k``.

        Every candidate is first warmed up, untimed, on two samples (a failing one is dropped here). Timing runs
        on a slice of the batch (``MEASURE_SAMPLES`` samples, or an eighth of a larger batch) and on
        at most ``MEASURE_COLUMNS`` columns, extrapolated to the full width (a loop over columns on one column):
        the one-off cost stays a small fraction of a product even for wide blocks on big batches. Two interleaved
        rounds keep each candidate's fastest time, since one timing on a busy machine can be off by several times;
        only close calls (within 1.5x of the best after the first round) are timed again.
        """
        m = min(batch.size, max(MEASURE_SAMPLES, batch.size // 8))
        sub = batch.head(m)
        times: dict[str, float] = {}
        failures: dict[str, str] = {}
        # An untimed warm-up on two samples first: a strategy's first call pays one-off costs (torch.func's
        # dispatch set-up, allocator growth) that would otherwise count against it.
        tiny = batch.head(min(2, m))
        for name in candidates:
            self._prepare_batch(forward, SCRATCH, tiny)
            try:
                self._run(name, forward, SCRATCH, tiny, V[:, : min(k, 2)])
            except RuntimeError as err:  # a transform torch cannot apply to this model/loss
                failures[name] = str(err).splitlines()[0]
        for round_ in range(MEASURE_ROUNDS):
            best = min(times.values(), default=math.inf)
            for name in candidates:
                if name in failures or (round_ > 0 and (name not in times or times[name] > 1.5 * best)):
                    continue
                width = min(k, 1 if not name.endswith("_batched") else MEASURE_COLUMNS)
                self._prepare_batch(forward, SCRATCH, sub)
                t0 = time.perf_counter()
                self._run(name, forward, SCRATCH, sub, V[:, :width])
                times[name] = min(times.get(name, math.inf), (time.perf_counter() - t0) * k / width)
        if not times:
            raise RuntimeError(f"no engine could multiply with this operator: {failures}")
        self.timings[k] = times
        self.failures[k] = failures
        # Prefer the first candidate unless another is clearly faster: keeps the choice (and so the last bits of
        # every result) stable from run to run when the candidates are close.
        best = min(times, key=times.get)
        first = next(c for c in candidates if c in times)
        self.chosen[k] = best if times[best] * SWITCH_MARGIN < times[first] else first

    def _prepare_batch(self, forward: Callable, i: int, batch: PreparedBatch) -> None:
        """One-off work per batch that is not part of a product's steady-state cost (e.g. a cached graph).

        ``i == SCRATCH`` marks the measurement slice, whose state must replace the previous slice's, not be cached.
        """

    def adopt_choice(self, width: int) -> None:
        """Use the strategy chosen for blocks of ``width`` columns for every narrower block not yet chosen (no
        further measurements): for callers whose blocks shrink step by step (recurrences that end one by one), each
        new width would otherwise be measured again. A batched strategy is not used for one column."""
        name = self.chosen.get(width)
        if name is None:
            return
        for w in range(1 if not name.endswith("_batched") else 2, width):
            self.chosen.setdefault(w, name)

    def describe(self) -> dict:
        return {
            "operator": type(self).__name__,
            "engine": self.engine,
            "block": self.block,
            "chosen": dict(self.chosen),
            **self.problem.describe(),
        }


def vector_product_loop(
    fn: Callable[[ParamDict], dict], problem: Problem, V: Tensor, into: Tensor | None = None
) -> Tensor:
    """Apply a per-vector product ``fn(v_dict) -> dict`` to each column of ``V``; ``(k, n)`` rows (see
    :func:`loop_columns`)."""
    return loop_columns(problem, lambda j: fn(problem.unflatten(V[:, j])), V, into)


def loop_columns(problem: Problem, column: Callable[[int], dict], V: Tensor, into: Tensor | None = None) -> Tensor:
    """``column(j)`` (a per-parameter dict; missing or ``None`` entries are zero) for each column ``j`` of ``V``,
    flattened into row ``j`` of a ``(k, n)`` block as soon as it is made and then dropped: the loop holds the block
    and one column's product, where stacking the columns held every column and their stack besides (two blocks of
    vectors: 5 GB for 5 probes on GPT-2 small). With ``into`` (the earlier batches' rows) each column is added into
    its row there, so further batches hold no second block; otherwise the block is allocated uninitialised once the
    first column is made (after that column's transients are gone) and every entry is written."""
    k = V.shape[1]
    out = into
    for j in range(k):
        col = column(j)
        if out is None:
            out = V.new_empty(k, problem.num_params)
        offset = 0
        for name, numel in zip(problem.param_names, problem.param_numels, strict=True):
            t = col.pop(name, None)
            row = out[j, offset : offset + numel]
            if t is not None:
                row.add_(t.reshape(numel)) if into is not None else row.copy_(t.reshape(numel))
            elif into is None:
                row.zero_()
            offset += numel
        del col
    return out
