"""Hessian-vector products of the full-data loss.

``H v = sum_b w_b d^2 L_b / dw^2 v`` by one of two exact engines (Pearlmutter 1994):

- ``double_backward``: reverse-over-reverse, ``H v = d/dw <grad L(w), v>``. The gradient graph of each batch is
  built once and reused for every later product while it fits into ``graph_memory_limit`` bytes (measured from the
  tensors the graph saves), so a product then costs one backward pass over that graph. By default a problem of one
  batch keeps its graph whatever its size: every product holds it anyway, so keeping it between products adds
  nothing to the peak. Blocks of vectors either
  loop over the columns on the same graph or go through one batched backward (``is_grads_batched``).
- ``forward_over_reverse``: ``torch.func.jvp(torch.func.grad(L), (w,), (v,))``; blocks through ``torch.func.vmap``.

``engine="auto"`` uses double backward for single vectors (one backward pass over the cached graph), and for blocks
measures the candidates on the first batch and keeps the fastest: vmap over a block pays on MLPs and loses on
convolutions/BatchNorm on CPU, and the graph cache wins whenever it fits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.func import grad, jvp, vmap

from landscape import memory
from landscape.double_backward import double_backward_kernels
from landscape.memory import TRIALS_MAX_VECTOR_BYTES, graph_limit
from landscape.operators.problem_operator import (
    MEASURE_COLUMNS,
    SCRATCH,
    BlockDict,
    ProblemOperator,
    vector_product_loop,
)
from landscape.problem import PreparedBatch, Problem, check_finite, warn_unused


class _GradientGraph:
    """Leaves, the gradient with its graph (``create_graph=True``), and the bytes the graph holds."""

    def __init__(self, problem: Problem, forward: Callable, params: dict, batch: PreparedBatch, measure: bool):
        self.leaves = {n: p.detach().requires_grad_() for n, p in params.items()}
        storages: dict[int, int] = {}

        def pack(t: Tensor) -> Tensor:
            s = t.untyped_storage()
            storages[s.data_ptr()] = s.nbytes()
            # Detached: a hook that hands back the tensor itself makes a node that saves its own output hold it
            # strongly, a reference cycle through C++ that nothing collects (0.5 GB leaked per graph on GPT-2).
            return t.detach()

        hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t) if measure else contextlib.nullcontext()
        kernels = self.kernels = double_backward_kernels(leaf_gradient_values=False)
        with torch.enable_grad(), hooks, kernels:
            loss = problem.batch_loss(forward, self.leaves, batch)
            with kernels.stand_ins():
                grads = torch.autograd.grad(loss, list(self.leaves.values()), create_graph=True, allow_unused=True)
        self.used = [n for n, g in zip(self.leaves, grads, strict=True) if g is not None and g.requires_grad]
        self.unused = [n for n in self.leaves if n not in self.used]
        self.grads = [g for g, n in zip(grads, self.leaves, strict=True) if n in self.used]
        self.nbytes = sum(storages.values())

    def product_batched(self, vectors: dict[str, Tensor], retain: bool) -> dict[str, Tensor]:
        """``H v`` on this batch (its weight included) of every column of ``vectors`` (``(k, *shape)`` tensors) in
        one batched backward (``is_grads_batched``)."""
        if not self.used:
            return {}
        outs = torch.autograd.grad(
            self.grads,
            [self.leaves[n] for n in self.used],
            grad_outputs=[vectors[n] for n in self.used],
            retain_graph=retain,
            allow_unused=True,
            is_grads_batched=True,
        )
        return dict(zip(self.used, outs, strict=True))

    def add_product(
        self, vectors: dict[str, Tensor], into: dict[str, Tensor], retain: bool, names: list[str] | None = None
    ) -> None:
        """``into += H v`` on this batch (its weight included), in place. With ``names``, ``H_bb v_b``, the product
        of those parameters' diagonal block: only their gradients are differentiated, and only with respect to them.

        The leaves' ``.grad`` are set to ``into``'s views and autograd adds each parameter's product into its slice;
        inside the mode's ``adding_into_grads()`` the affine and embedding layers add their weights' terms there
        themselves (no weight-sized gradient of their own)."""
        used = self.used if names is None else [n for n in self.used if n in set(names)]
        if not used:
            return
        grads = self.grads if names is None else [g for n, g in zip(self.used, self.grads, strict=True) if n in used]
        leaves = [self.leaves[n] for n in used]
        for n, leaf in zip(used, leaves, strict=True):
            leaf.grad = into[n]
        try:
            with self.kernels.adding_into_grads():
                torch.autograd.backward(
                    grads, grad_tensors=[vectors[n] for n in used], retain_graph=retain, inputs=leaves
                )
        finally:
            for leaf in leaves:
                leaf.grad = None


class HessianOperator(ProblemOperator):
    """The Hessian of a problem's full-data loss at a point, as a :class:`CurvatureOperator`.

    Parameters
    ----------
    problem : Problem
    graph_memory_limit : int or None
        Bytes of gradient graphs kept between products (double-backward engine). ``0`` rebuilds every time.
        ``None`` (default): ``DEFAULT_GRAPH_MEMORY`` (2 GiB), and the graph of a problem of one batch is kept
        whatever its size (each product holds it anyway: GPT-2 small at 4 x 256 tokens, 2.5 GiB, was rebuilt for
        every product, half of each product's time).
    **options
        The keywords of :class:`ProblemOperator`: ``at`` (flat point; default the model's current parameters),
        ``engine`` (``"auto"``, ``"double_backward"`` or ``"forward_over_reverse"``), ``block`` (``"auto"``,
        ``"loop"`` or ``"batched"``: how blocks of vectors are multiplied) and ``max_block``.
    """

    accumulating = frozenset({"double_backward", "forward_over_reverse"})

    def __init__(self, problem: Problem, *, graph_memory_limit: int | None = None, **options: Any):
        super().__init__(problem, **options)
        self.graph_memory_limit = graph_memory_limit
        self._graphs: dict[int, _GradientGraph] = {}
        self._graph_bytes = 0
        self._cache_closed = graph_memory_limit is not None and graph_memory_limit <= 0
        self._warned_unused = False
        self._num_batches: int | None = None
        self._scratch: _GradientGraph | None = None

    def _strategies(self) -> list[tuple[str, str]]:
        return [
            ("double_backward", "double_backward"),
            ("double_backward", "double_backward_batched"),
            ("forward_over_reverse", "forward_over_reverse"),
            ("forward_over_reverse", "forward_over_reverse_batched"),
        ]

    @property
    def cached_graph_bytes(self) -> int:
        return self._graph_bytes

    def __del__(self) -> None:
        # The cached graphs are thousands of blocks below glibc's mmap threshold: freed with the operator, their
        # holes would stay resident and be carried into every analysis after it (a report's sections, BENCHMARKS.md
        # stop 23). Dropped here first, then handed back (memory.release_free_memory; a no-op on small models).
        graphs = getattr(self, "_graphs", None)
        if graphs:
            graphs.clear()
            self._scratch = None
            try:
                self._release()
            except Exception:  # noqa: BLE001 - at interpreter exit what it needs may be gone; nothing to hand back
                pass

    # -------------------------------------------------------------- double backward
    def _graph(self, forward: Callable, i: int, batch: PreparedBatch) -> tuple[_GradientGraph, bool]:
        """The batch's gradient graph and whether it is kept (then its backward must retain it)."""
        g = self._graphs.get(i)
        if g is not None:
            return g, True
        if i == SCRATCH:
            return self._scratch, True
        g = _GradientGraph(self.problem, forward, self.params, batch, measure=not self._cache_closed)
        self._release()  # the build's transients, freed between the tensors the graph keeps
        if not self._warned_unused:
            warn_unused(g.unused)
            self._warned_unused = True
        limit = graph_limit(self.problem, self.graph_memory_limit)
        if not self._cache_closed and self._graph_bytes + g.nbytes <= limit:
            self._graphs[i] = g
            self._graph_bytes += g.nbytes
            return g, True
        self._cache_closed = True
        return g, False

    def _clear_choice(
        self, k: int, candidates: list[str], forward: Callable, i: int, batch: PreparedBatch
    ) -> str | None:
        """Double backward without timing when it is known to win or the others cannot fit.

        One vector: a product on the batch's gradient graph is one backward pass over it, which no other strategy
        undercuts (forward-over-reverse repeats the forward and backward every time; measured 1.9x vs 4.2x a
        gradient on a GPT-2). Vectors of ``TRIALS_MAX_VECTOR_BYTES`` or more: the column loop, untimed (the trials
        alone cost more than they could save, and more memory than the estimate allows). A block: the batched
        strategies hold ``k`` copies of the batch's activations; when
        ``MEASURE_COLUMNS`` copies of its gradient graph do not fit into half of the machine's memory (or the graph
        is too big to be kept), the column loop on the graph is the only choice that fits, and timing the others
        would itself run out of memory.
        """
        if "double_backward" not in candidates:
            return super()._clear_choice(k, candidates, forward, i, batch)
        if k == 1 or self.only_loops:
            return "double_backward"
        g, kept = self._graph(forward, i, batch)
        if not kept or g.nbytes * min(k, MEASURE_COLUMNS) > memory.default_budget(self.problem.device):
            return "double_backward"
        return super()._clear_choice(k, candidates, forward, i, batch)

    def _measure(self, k: int, candidates: list[str], forward: Callable, batch: PreparedBatch, V: Tensor) -> None:
        try:
            super()._measure(k, candidates, forward, batch, V)
        finally:
            self._scratch = None  # the measurement slice's graph is not needed again

    def _prepare_batch(self, forward: Callable, i: int, batch: PreparedBatch) -> None:
        if i == SCRATCH:
            self._scratch = _GradientGraph(self.problem, forward, self.params, batch, measure=False)
        else:
            self._graph(forward, i, batch)

    def _product_double_backward(
        self, forward: Callable, i: int, batch: PreparedBatch, V: Tensor, into: Tensor | None = None
    ) -> Tensor:
        g, kept = self._graph(forward, i, batch)
        k = V.shape[1]
        # Each column's product added in place into its row of the (k, n) block (see _GradientGraph.add_product).
        # A strided column is copied into one contiguous vector first: the kernels take its pieces as they come, and
        # strided ones cost GPT-2 small 4.2 s a column instead of 2.5 s.
        out = V.new_zeros(k, self.problem.num_params) if into is None else into
        column = None if k == 1 or V.stride(0) == 1 else V.new_empty(V.shape[0])
        for j in range(k):
            v = V[:, j] if column is None else column.copy_(V[:, j])
            g.add_product(self.problem.unflatten(v), self.problem.unflatten(out[j]), retain=kept or j < k - 1)
        return out

    def _product_double_backward_batched(self, forward: Callable, i: int, batch: PreparedBatch, V: Tensor) -> BlockDict:
        g, kept = self._graph(forward, i, batch)
        return g.product_batched(self.problem.unflatten(V), retain=kept)

    @property
    def only_loops(self) -> bool:
        """Whether every block is multiplied column by column (each column added into its row, no per-parameter
        pieces besides the block): ``block="loop"``, or vectors of ``TRIALS_MAX_VECTOR_BYTES`` or more, for which
        :meth:`_clear_choice` takes the loop untimed."""
        vector_bytes = self.shape[0] * torch.empty((), dtype=self.dtype).element_size()
        return self.engine != "forward_over_reverse" and (
            self.block == "loop" or vector_bytes >= TRIALS_MAX_VECTOR_BYTES
        )

    @property
    def adds_in_place(self) -> bool:
        return self.problem.dist is None and self.engine != "forward_over_reverse" and self.block != "batched"

    def _add_product(self, v: Tensor, out: Tensor) -> bool:
        """``out += H v`` by double backward with the parameters' ``.grad`` set to views of ``out``: autograd adds
        each parameter's product into its slice in place, so no product-sized vector is allocated (one vector less
        at the peak of a Lanczos step: 0.5 GB on GPT-2 small). Single process, double-backward engine only."""
        if not self.adds_in_place:
            return False
        self._check_point()
        self.chosen.setdefault(1, "double_backward")
        if self.chosen[1] != "double_backward" or out.dtype != self.dtype or out.device != self.device:
            return False
        vectors, into = self.problem.unflatten(v), self.problem.unflatten(out)
        batches = self._batches({1})
        with self.problem.evaluation() if batches is not None else contextlib.nullcontext() as forward:
            for i, batch in batches if batches is not None else self._cached_batches():
                g, kept = self._graph(forward, i, batch)
                g.add_product(vectors, into, retain=kept)
        check_finite(out.sum(), "curvature-vector product", -1)
        return True

    def block_products(self, blocks: list[tuple[list[str], Tensor]]) -> list[Tensor] | None:
        """``H_bb V_b`` for every ``(parameter names, V_b)`` (``V_b`` of shape ``(n_b, c)``, its rows the flattened
        parameters in the problem's order) in one data pass: on each batch's gradient graph, double backward
        restricted to each block's gradients and parameters, so a column costs a backward pass through the part of
        the graph that links the block to itself, not a full Hessian product (Zhang et al. 2024's per-block
        products, all blocks on one graph). ``None`` when the engine is forward-over-reverse. Each column counts as
        one product in :attr:`num_matvecs`.
        """
        if self.engine == "forward_over_reverse":
            return None
        self._check_point()
        numels = dict(zip(self.problem.param_names, self.problem.param_numels, strict=True))
        shapes = dict(zip(self.problem.param_names, self.problem.param_shapes, strict=True))

        def split(row: Tensor, names: list[str]) -> dict[str, Tensor]:
            pieces = torch.split(row, [numels[n] for n in names])
            return {n: t.view(shapes[n]) for n, t in zip(names, pieces, strict=True)}

        # Each column's product added in place into its row of a (c, n_b) block (see _GradientGraph.add_product).
        rows = [V.new_zeros(V.shape[1], V.shape[0]) for _, V in blocks]
        cached = self._num_batches is not None and len(self._graphs) == self._num_batches
        with contextlib.nullcontext() if cached else self.problem.evaluation() as forward:
            for i, batch in self._cached_batches() if cached else self._counting_batches():
                g, _ = self._graph(forward, i, batch)
                for (names, V), out in zip(blocks, rows, strict=True):
                    for j in range(V.shape[1]):
                        g.add_product(split(V[:, j], names), split(out[j], names), retain=True, names=names)
                del g
        if self.problem.dist is not None:
            rows = [self.problem.dist.all_reduce_(o, "all_reduce of block products") for o in rows]
        check_finite(sum(o.sum() for o in rows), "block curvature-vector product", -1)
        self.num_matvecs += sum(V.shape[1] for _, V in blocks)
        return [o.T for o in rows]

    # -------------------------------------------------------------- forward over reverse
    def _hvp_fn(self, forward: Callable, batch: PreparedBatch) -> Callable:
        params = self.params

        def loss(p: dict) -> Tensor:
            return self.problem.batch_loss(forward, p, batch)

        def hvp(v: dict) -> dict:
            return jvp(grad(loss), (params,), (v,))[1]

        return hvp

    def _product_forward_over_reverse(
        self, forward: Callable, i: int, batch: PreparedBatch, V: Tensor, into: Tensor | None = None
    ) -> Tensor:
        return vector_product_loop(self._hvp_fn(forward, batch), self.problem, V, into)

    def _product_forward_over_reverse_batched(
        self, forward: Callable, i: int, batch: PreparedBatch, V: Tensor
    ) -> BlockDict:
        return vmap(self._hvp_fn(forward, batch), randomness="same")(self.problem.unflatten(V))

    # -------------------------------------------------------------- data passes
    def _batches(self, widths: set[int]):
        if (
            self._num_batches is not None
            and len(self._graphs) == self._num_batches
            and all(self.chosen.get(w, "").startswith("double_backward") for w in widths)
        ):
            return None
        return self._counting_batches()

    def _cached_batches(self):
        return ((i, None) for i in range(self._num_batches))

    def _counting_batches(self):
        n = 0
        for i, b in enumerate(self.problem.batches()):
            n += 1
            yield i, b
        self._num_batches = n
