"""What is analysed: a model, a loss, the data, the parameters of interest and the BatchNorm/dropout policy.

The full-data loss is the exact size-weighted mean over batches,

    L(w) = sum_b (n_b / N) L_b(w)        (``reduction="mean"`` losses)
    L(w) = sum_b L_b(w)                  (``reduction="sum"`` losses),

so a short last batch is weighted correctly. Every evaluation is functional (``torch.func.functional_call``): the
user's model keeps its parameters, buffers (BatchNorm running statistics), ``.grad`` fields and train/eval mode.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import Tensor, nn
from torch.func import functional_call

from landscape import attention, losses, reductions
from landscape.batch import BatchFormatError, num_examples
from landscape.batch import to as to_device
from landscape.cache import content_key
from landscape.data import batch_digest, data_fingerprint, fingerprint_of_batches
from landscape.distributed import DataParallel, ShardInfo, combine_digests, resolve, resolve_replicas, shard_digest
from landscape.losses import Loss
from landscape.problem.batches import DataError, PreparedBatch, normalise_data
from landscape.problem.guards import (
    NonDeterministicError,
    ParamDict,
    check_finite,
)
from landscape.sharding import ShardedSpace, full_tensor, plain_forward, space_for

MODES = ("eval", "train")


class Problem:
    """A loss ``L(w)`` over a data set, restricted to a block of parameters.

    Parameters
    ----------
    model : nn.Module
        The network. It is never modified: parameters, buffers, ``.grad`` and modes are left as found.
    loss_fn : callable or landscape.losses.Loss
        A criterion ``loss_fn(outputs, targets) -> scalar`` with mean (default) or sum reduction over the batch,
        for ``(inputs, targets)`` batches; or a loss adapter (:mod:`landscape.losses`: ``causal_lm()``,
        ``masked_lm()``, ``supervised(...)``, ``model_output()``, any ``(model, batch) -> (mean, weight)``) that
        sees the whole batch. Batches are weighted by what their loss averages over (examples, counted tokens).
    data : DataLoader, re-iterable of batches, or a pair of tensors ``(X, y)``
        A batch is a tensor pair, a tuple/list or mapping of tensors (dict, ``UserDict``, ``BatchEncoding``) or a
        nesting of these (:mod:`landscape.batch`). A tensor pair is split into batches of ``batch_size`` (one
        batch when ``batch_size`` is None).
    params : None, sequence of str
        ``None``: every parameter with ``requires_grad``. Otherwise parameter names or glob patterns
        (``"layer3.*"``, ``"*.weight"``); the analysis runs on that block of the Hessian.
    mode : {"eval", "train"}
        ``"eval"``: BatchNorm uses running statistics, dropout is off. ``"train"``: batch statistics, running
        statistics are *not* updated, dropout masks are drawn from a forked RNG so the global RNG is untouched.
    device, dtype : optional
        Where and in which floating dtype to evaluate (e.g. ``torch.float64`` for references). Default: the
        model's own.
    batch_size : int, optional
        Only for a tensor pair.
    distributed : None, "auto", bool
        Data-parallel over ``torch.distributed`` (:mod:`landscape.distributed`): each rank passes its own shard of
        the data (uneven shards allowed); losses, gradients and curvature products are summed over ranks with the
        batch weights taken over the *global* sample count, so every rank gets the full-data result. ``None`` or
        ``"auto"`` (default): when a process group is initialised; ``True``: required; ``False``: never.
        ``"replicated"``: every rank holds the *whole* data set; products and losses are computed locally, and a
        loss surface deals its grid points out to the ranks (each point evaluated on one rank, bit-identical to
        one process), gathered once per chunk.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        data: object,
        *,
        params: Sequence[str] | str | None = None,
        mode: str = "eval",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        batch_size: int | None = None,
        distributed: bool | str | None = None,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.model = model
        self.loss_fn = loss_fn
        self.mode = mode
        self.reduction = loss_fn.reduction if isinstance(loss_fn, Loss) else losses.criterion_reduction(loss_fn)
        self._objective: Loss | None = loss_fn if isinstance(loss_fn, Loss) else None
        self.param_names = self._select_params(params)

        first = next(iter(dict(model.named_parameters()).values()))
        self.device = torch.device(device) if device is not None else first.device
        self.dtype = dtype if dtype is not None else first.dtype
        if not self.dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype, got {self.dtype}")

        named = dict(model.named_parameters())
        self.param_shapes = [tuple(named[n].shape) for n in self.param_names]
        self.param_numels = [named[n].numel() for n in self.param_names]
        self.num_params = sum(self.param_numels)

        self.dist: DataParallel | None = resolve(distributed)
        self.replicas: DataParallel | None = resolve_replicas(distributed)
        # Data-parallel, one rank's shard may be empty (a data subset none of whose batches it holds).
        self._data = normalise_data(data, batch_size, allow_empty=self.dist is not None)
        self._num_samples: int | None = None
        self._num_counted: int | None = None  # what the losses average over, summed over the local batches
        self._total_count: int | None = None  # ... over every rank's batches
        self._counts: list[int] = []  # per local batch, from the first pass (a custom adapter counts by evaluating)
        self._num_batches = 0  # non-empty batches held here, counted with the samples
        self._shard: ShardInfo | None = None
        self._data_fingerprint: str | None = None
        self._sample_fingerprint: str | None = None
        # A stateless twin for train mode: BatchNorm without running statistics computes exactly the train-mode
        # function but never writes to buffers, which torch.func transforms (jvp, vmap) could not do anyway.
        self._train_twin: nn.Module | None = None
        # FSDP2-sharded parameters (DTensors): operators and estimators work on this rank's shards of flat vectors;
        # the Problem's own flat vectors (params_vector, loss_and_grad, at=) stay global.
        self.space: ShardedSpace | None = space_for(model, self.param_names, self.dist)
        if self.dist is not None:
            self._shard = self._gather_shard()
        # Sharded: what a cache key hashes, gathered here on every rank (a key is computed on rank 0 alone).
        self._sharded_state = None if self.space is None else self._digests()

    # ------------------------------------------------------------------ parameters
    def _select_params(self, params: Sequence[str] | str | None) -> list[str]:
        named = list(self.model.named_parameters())
        if not named:
            raise ValueError("the model has no parameters: nothing to analyse")
        all_names = [n for n, _ in named]
        if params is None:
            chosen = [n for n, p in named if p.requires_grad]
            if not chosen:
                raise ValueError(
                    "the model has no trainable parameters (all have requires_grad=False): "
                    "pass params=[names or globs] to analyse frozen ones explicitly"
                )
            return chosen
        patterns = [params] if isinstance(params, str) else list(params)
        if not patterns:
            raise ValueError("params is empty: pass None for all trainable parameters, or names/globs")
        chosen_set: set[str] = set()
        for pat in patterns:
            hits = [n for n in all_names if fnmatch.fnmatchcase(n, pat)]
            if not hits:
                shown = ", ".join(all_names[:20]) + (" ..." if len(all_names) > 20 else "")
                raise ValueError(f"params pattern {pat!r} matches no parameter; the model has: {shown}")
            chosen_set.update(hits)
        return [n for n in all_names if n in chosen_set]

    def flatten(self, tensors: Sequence[Tensor] | ParamDict) -> Tensor:
        """Concatenate per-parameter tensors (list in ``param_names`` order, or a dict) into one flat vector."""
        if isinstance(tensors, dict):
            tensors = [tensors[n] for n in self.param_names]
        return torch.cat([t.reshape(-1) for t in tensors])

    def unflatten(self, vector: Tensor) -> ParamDict:
        """Split a flat vector ``(num_params,)`` (or a block ``(num_params, k)``) into a dict of tensors.

        For a block, each tensor gets a trailing ``k`` dimension moved to the front: ``(k, *shape)``.
        """
        if vector.shape[0] != self.num_params:
            raise ValueError(f"vector has {vector.shape[0]} entries, the problem has {self.num_params} parameters")
        pieces = torch.split(vector, self.param_numels, dim=0)
        if vector.ndim == 1:
            return {n: p.view(s) for n, p, s in zip(self.param_names, pieces, self.param_shapes, strict=True)}
        k = vector.shape[1]
        return {n: p.T.reshape(k, *s) for n, p, s in zip(self.param_names, pieces, self.param_shapes, strict=True)}

    def params_dict(self, at: Tensor | None = None, *, share: bool = False) -> ParamDict:
        """Detached copies of the selected parameters (or of the flat point ``at``) on the problem's device/dtype.

        ``share=True``: the model's own tensors (or views of ``at``), detached, wherever device and dtype already
        match (no copy: one set of weights less, 0.5 GB on GPT-2 small), for callers that only read them. The model's
        tensors share the parameters' version counters, so the caller can detect an in-place change (see
        :func:`changed_in_place`).
        """
        if at is not None:
            at = at.detach().to(device=self.device, dtype=self.dtype)
            views = self.unflatten(at)
            return views if share else {n: t.clone() for n, t in views.items()}
        named = dict(self.model.named_parameters())
        out = {n: full_tensor(named[n]).to(device=self.device, dtype=self.dtype) for n in self.param_names}
        if self.space is not None:  # gathered from the shards: already this Problem's own copies
            return out
        return out if share else {n: t.clone() for n, t in out.items()}

    def params_vector(self) -> Tensor:
        """The current selected parameters as one flat vector (a copy)."""
        return self.flatten(self.params_dict(share=True))

    def _fixed_state(self) -> ParamDict:
        """Unselected parameters and all buffers, on the problem's device/dtype, detached."""
        selected = set(self.param_names)
        state: ParamDict = {}
        for n, p in self.model.named_parameters():
            if n not in selected:
                state[n] = full_tensor(p).to(device=self.device, dtype=self.dtype)
        for n, b in self.model.named_buffers():
            b = b.detach().to(device=self.device)
            state[n] = b.to(self.dtype) if b.is_floating_point() else b
        return state

    def key_state(self) -> ParamDict:
        """The tensors a cache key hashes (:func:`landscape.cache.key_for`): the selected parameters and the rest of
        the model's state (unselected parameters, buffers), on the problem's device and dtype. Sharded: per tensor
        the sha256 of the whole tensor's bytes (gathered one at a time at construction, when every rank takes part),
        so a key needs no collective and does not depend on the number of ranks."""
        if self._sharded_state is not None:
            return self._sharded_state
        return {**self._fixed_state(), **self.params_dict(share=True)}

    def _digests(self) -> ParamDict:
        out: ParamDict = {}
        for name, t in [*self.model.named_parameters(), *self.model.named_buffers()]:
            whole = full_tensor(t).to(device=self.device)  # floating tensors in the problem's dtype, as unsharded
            whole = whole.to(self.dtype) if whole.is_floating_point() else whole
            digest = content_key(params={name: whole}, data_fingerprint="", config={}, version="")
            out[name] = torch.frombuffer(bytearray(bytes.fromhex(digest)), dtype=torch.uint8)
        return out

    # ------------------------------------------------------------------ data
    def _prepare(self, batch: object, index: int) -> Any:
        if isinstance(batch, Tensor):
            raise DataError(
                f"batch {index} is a single tensor; landscape expects (inputs, targets) pairs, or mappings of "
                "tensors with a loss adapter (landscape.losses)"
            )
        return to_device(batch, self.device, self.dtype)

    @property
    def objective(self) -> Loss:
        """The loss adapter (:mod:`landscape.losses`) the loss function makes for these batches."""
        if self._objective is None:
            first = next(iter(self._data), None)
            if first is None:  # an empty shard: nothing is evaluated here
                return losses.Criterion(self.loss_fn)
            self._objective = losses.resolve(self.loss_fn, first)
        return self._objective

    def _count(self, batch: Any, index: int) -> int:
        """What batch ``index``'s loss averages over; a batch with nothing counted is an error."""
        count = self.objective.count(batch)
        if count is None:  # a custom adapter: its weight is known by evaluating it
            with torch.no_grad(), self.evaluation(order=0) as forward:
                data = self._prepare(batch, index)
                _, count = self.objective(self.model_fn(forward, self.params_dict(share=True)), data)
        if not count > 0:
            raise DataError(
                f"batch {index} has nothing to average the loss over (its weight is {count}: every label is "
                f"ignored or padding?). Drop the batch, or check its labels / attention_mask and ignore_index"
            )
        return count

    @property
    def num_samples(self) -> int:
        """Samples in the whole data set (summed over ranks when data-parallel)."""
        shard = self.shard
        return self.num_local_samples if shard is None else shard.num_samples

    @property
    def ranks(self) -> DataParallel | None:
        """The process group this Problem's work runs over: data-parallel (``dist``: every rank evaluates its shard,
        products summed) or replicated data (``replicas``: every rank holds all the data, surfaces split their
        points); ``None`` in one process. Every rank of it must make the same collectives."""
        return self.dist if self.dist is not None else self.replicas

    @property
    def shard(self) -> ShardInfo | None:
        """This rank's place in a data-parallel Problem (``None`` when not distributed)."""
        return self._shard

    def _gather_shard(self) -> ShardInfo:
        # At construction, where every rank is sure to be: a lazy collective first reached on one rank only (say
        # by data_fingerprint() on rank 0, which alone opens a cache) would hang. One gather brings the shard sizes
        # and the per-shard digests of the data fingerprint.
        local = (
            self.num_local_samples,
            self._num_batches,
            shard_digest(self._data),
            [batch_digest(batch) for batch in self._data],
            self._num_counted,
        )
        gathered = self.dist.all_gather_object(local, "gather of shard sizes and data fingerprints")
        if not any(part[0] for part in gathered):
            raise DataError("every rank's shard of the data is empty: check the DataLoader/dataset is not empty")
        self._sample_fingerprint = combine_digests(part[2] for part in gathered)
        self._data_fingerprint = fingerprint_of_batches([d for part in gathered for d in part[3]])
        self._total_count = sum(part[4] for part in gathered)
        sizes, batch_counts = tuple(part[0] for part in gathered), tuple(part[1] for part in gathered)
        return ShardInfo(self.dist.rank, self.dist.world_size, self.dist.backend, sizes, batch_counts)

    @property
    def num_local_samples(self) -> int:
        """Samples in the data this process holds (its shard when data-parallel)."""
        if self._num_samples is None:
            n = nonempty = counted = 0
            counts = []
            for i, batch in enumerate(self._data):
                if isinstance(batch, Tensor):
                    self._prepare(batch, i)  # raises the error that says what a batch must be
                try:
                    size = num_examples(batch, i)
                except BatchFormatError as err:
                    raise DataError(str(err)) from None
                n += size
                nonempty += size > 0
                counts.append(self._count(batch, i) if size > 0 else 0)
                counted += counts[-1]
            if n == 0 and self.dist is None:
                raise DataError("data yielded no samples: check the DataLoader/dataset is not empty")
            self._num_samples, self._num_batches, self._num_counted = n, nonempty, counted
            self._counts = counts
        return self._num_samples

    @property
    def num_batches(self) -> int:
        """Non-empty batches this process holds."""
        _ = self.num_local_samples
        return self._num_batches

    @property
    def num_counted(self) -> int:
        """What the full-data loss averages over: samples, or counted tokens for a token-weighted loss (summed over
        ranks when data-parallel)."""
        _ = self.num_local_samples  # counts what the losses average over
        return self._num_counted if self._total_count is None else self._total_count

    def data_fingerprint(self) -> str:
        """Content hash of the data as given, batch by batch and in order (:func:`landscape.data.data_fingerprint`).

        Data-parallel, the batches are the ranks' in rank order (hashed by each rank, gathered at construction): the
        fingerprint of one process holding those batches. Whatever depends on the batching or on the order of the
        examples (train-mode BatchNorm, data subsets, minibatches drawn by index) is keyed by it. Computed on first
        use and remembered: data mutated in place afterwards are not noticed.
        """
        if self._data_fingerprint is None:
            self._data_fingerprint = data_fingerprint(self._data)
        return self._data_fingerprint

    def sample_fingerprint(self) -> str:
        """Content hash of the *set* of examples, independent of their order, batching and sharding.

        The sum of per-example sha256 (mod 2**256, an additive multiset hash; :func:`landscape.distributed.
        shard_digest`). Full-data results in eval mode depend on nothing else (up to rounding), so they are keyed by
        it (:func:`landscape.cache.key_for` with ``order_free=True``): a surface computed in one process is read, or
        resumed, by a data-parallel run with any number of ranks, and the other way round.
        """
        if self._sample_fingerprint is None:
            self._sample_fingerprint = combine_digests([shard_digest(self._data)])
        return self._sample_fingerprint

    @property
    def in_memory(self) -> bool:
        """Whether the data are tensors held by the Problem (``(X, y)`` or a list of batches), not a loader."""
        return isinstance(self._data, (list, tuple))

    def batches(self) -> Iterator[PreparedBatch]:
        """Yield every batch on the problem's device/dtype with its weight in the full-data loss."""
        total = self.num_counted
        local = self.num_local_samples
        seen = 0
        for i, batch in enumerate(self._data):
            data = self._prepare(batch, i)
            size = num_examples(data, i)
            if size == 0:
                continue
            seen += size
            count = self._counts[i] if i < len(self._counts) else self._count(batch, i)
            weight = count / total if self.reduction == "mean" else 1.0
            yield PreparedBatch(data, weight, size, count)
        if seen != local:
            raise DataError(
                f"the data changed size between passes ({local} then {seen} samples): use a loader with "
                "drop_last=False and a fixed dataset"
            )

    def subsets(self, k: int) -> list[Problem]:
        """Split the data into ``k`` disjoint, nearly equal parts (by whole batches) as separate problems.

        Batch ``b`` of the whole data set goes to part ``b mod k``. Data-parallel, the whole data set is the ranks'
        batches in rank order, each rank keeps its own batches of every part, and every part is a data-parallel
        problem: the same parts as one process holding all the batches (a rank may hold none of a part).
        """
        batches = [b.data for b in self.batches()]
        shard = self.shard
        first, total = 0, len(batches)
        if shard is not None:
            first, total = sum(shard.batch_counts[: shard.rank]), shard.num_batches
        if k < 1 or k > total:
            raise ValueError(f"cannot split {total} batches into {k} subsets; use 1 <= k <= #batches")
        parts: list[list[Any]] = [[] for _ in range(k)]
        for i, batch in enumerate(batches):
            parts[(first + i) % k].append(batch)
        return [self.with_data(part) for part in parts]

    def with_data(
        self, data: object, *, batch_size: int | None = None, distributed: bool | str | None = None
    ) -> Problem:
        """The same model, loss, parameters and policy on other data.

        ``distributed``: by default as this problem (data-parallel stays data-parallel: ``data`` is this rank's
        share); ``False`` for data that this process holds whole, computed on without communicating.
        """
        if distributed is None:
            distributed = "replicated" if self.replicas is not None else self.dist is not None
        problem = Problem(
            self.model,
            self.loss_fn,
            data,
            params=self.param_names,
            mode=self.mode,
            device=self.device,
            dtype=self.dtype,
            batch_size=batch_size,
            distributed=distributed,
        )
        problem._objective = self._objective  # the same adapter, also for data whose first batch is elsewhere
        return problem

    # ------------------------------------------------------------------ evaluation
    def _module_for_mode(self) -> nn.Module:
        if self.mode == "eval":
            return self.model
        if self._train_twin is None:
            twin = copy.deepcopy(self.model)
            torch.func.replace_all_batch_norm_modules_(twin)
            twin.train()
            self._train_twin = twin
        return self._train_twin

    @contextlib.contextmanager
    def evaluation(self, order: int = 2) -> Iterator[Callable[..., Any]]:
        """Context giving ``forward(params, *args, **kwargs) -> outputs`` under the problem's mode policy.

        The user's model modes are restored on exit and, in train mode, the global RNG state too (dropout masks
        come from a forked generator), so calling it never leaves a trace.

        ``order``: the highest derivative taken inside. For ``order >= 2`` (curvature products) every call of
        ``scaled_dot_product_attention`` runs on its math kernel (:func:`landscape.attention.differentiable`),
        which torch can differentiate twice and in forward mode, whatever kernel the model would pick; forward
        passes and gradients (``order`` 0 or 1) keep the fast kernels. The model and its config are not changed.
        """
        module = self._module_for_mode()
        saved_modes = [(m, m.training) for m in self.model.modules()]
        fixed = self._fixed_state()
        rng = torch.random.fork_rng(devices=[]) if self.mode == "train" else contextlib.nullcontext()
        kernel = attention.differentiable() if order >= 2 else contextlib.nullcontext()
        unhooked = plain_forward(self.model) if self.space is not None else contextlib.nullcontext()
        try:
            with rng, kernel, unhooked:
                if module is self.model:
                    self.model.eval()

                def forward(params: ParamDict, *args: Any, **kwargs: Any) -> Any:
                    return functional_call(module, {**fixed, **params}, args, kwargs or None, strict=False)

                within_module = _Within(module)

                def within(params: ParamDict, body: Callable[[nn.Module], Any]) -> Any:
                    # One re-parametrisation held for the whole of ``body(module)``: every call of ``module`` in it
                    # sees ``params``, including values written into those tensors in place. A loss surface
                    # evaluates thousands of points whose forward passes may take a few milliseconds.
                    state = {f"inner.{k}": v for k, v in {**fixed, **params}.items()}
                    return functional_call(within_module, state, (body,), strict=False)

                forward.within = within
                yield forward
        finally:
            for m, training in saved_modes:
                m.training = training

    def model_fn(self, forward: Callable[..., Any], params: ParamDict) -> Callable[..., Any]:
        """``forward`` at ``params`` as a plain model call ``model(*args, **kwargs)``, for a loss adapter."""
        return functools.partial(forward, params)

    def batch_loss(self, forward: Callable, params: ParamDict, batch: PreparedBatch) -> Tensor:
        """Weighted contribution ``w_b L_b(params)`` of one batch to the full-data loss."""
        return batch.weight * self.objective.mean(self.model_fn(forward, params), batch.data)

    def example_scale(self, count: float | None = None) -> float:
        """Factor ``a`` making per-example losses average to the full-data loss, ``L = (1/N) sum_i a s_i``.

        With ``s_i`` example ``i``'s *summed* loss (over its counted tokens), ``a = N / C`` for mean losses (``C``
        everything counted: examples, or tokens) and ``N`` for sum-reduced criteria. Given ``count`` (``c_i``),
        the factor for example ``i``'s *mean* loss instead: ``N c_i / C`` (``N`` for sum losses).
        """
        n = self.num_samples
        if self.reduction == "sum":
            return float(n)
        return n * (1.0 if count is None else count) / self.num_counted

    def example_loss(self, forward: Callable[..., Any]) -> Callable[[ParamDict, Any], Tensor]:
        """``loss_i(params, example) = a s_i(params)`` for one example without its batch dimension (a ``vmap``
        slice of a batch; see :meth:`example_scale`): the per-example losses whose mean is the full-data loss."""
        objective = self.objective
        scale = self.example_scale()

        def loss_i(params: ParamDict, example: Any) -> Tensor:
            one = pytree.tree_map(lambda t: t.unsqueeze(0) if isinstance(t, Tensor) else t, example)
            outputs = objective.outputs(self.model_fn(forward, params), one)
            return scale * objective.example_sums(outputs, one)[0]

        return loss_i

    def loss(self, at: Tensor | None = None) -> float:
        """Full-data loss at the current parameters (or at the flat point ``at``)."""
        params = self.params_dict(at, share=True)
        total = torch.zeros((), dtype=self.dtype, device=self.device)
        with torch.no_grad(), self.evaluation(order=0) as forward:
            for i, b in enumerate(self.batches()):
                total = total + check_finite(self.batch_loss(forward, params, b), "loss", i)
        if self.dist is not None:
            self.dist.all_reduce_(total, "all_reduce of the loss")
        return float(total)

    def loss_and_grad(self, at: Tensor | None = None) -> tuple[float, Tensor]:
        """Full-data loss and its gradient (flat, selected parameters), without touching ``.grad``."""
        with self.evaluation(order=1) as forward:
            return self._loss_and_grad(forward, self.params_dict(at, share=True))

    def _loss_and_grad(self, forward: Callable, params: ParamDict) -> tuple[float, Tensor]:
        leaves = [p.detach().requires_grad_() for p in params.values()]
        params = dict(zip(params, leaves, strict=True))
        total = 0.0
        grad = torch.zeros(self.num_params, dtype=self.dtype, device=self.device)
        pieces = list(self.unflatten(grad).values())  # views: each batch's gradient is added in place, no flat copy
        with torch.enable_grad():
            for i, b in enumerate(self.batches()):
                loss = check_finite(self.batch_loss(forward, params, b), "loss", i)
                gs = list(torch.autograd.grad(loss, leaves, allow_unused=True))
                total += float(loss.detach())
                del loss
                for j, piece in enumerate(pieces):
                    if gs[j] is not None:
                        piece.add_(gs[j])
                        gs[j] = None  # freed as it is added
        if self.dist is not None:
            # One all-reduce for both: the loss rides along as the last entry.
            both = grad.new_empty(self.num_params + 1, dtype=torch.float64)
            both[:-1] = grad
            both[-1] = total
            self.dist.all_reduce_(both, "all_reduce of loss and gradient")
            return float(both[-1]), both[:-1].to(self.dtype)
        return total, grad

    def check_deterministic(self, *, rtol: float | None = None) -> None:
        """Evaluate loss and gradient twice and raise :class:`NonDeterministicError` if they differ.

        Catches shuffling loaders, random augmentation and dropout in train mode (both evaluations draw from one
        forked RNG stream, so dropout masks differ between them), any of which would make every curvature estimate
        meaningless. Costs two gradients.
        """
        if rtol is None:
            rtol = 1e-5 if self.dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-10
        params = self.params_dict(share=True)
        with self.evaluation(order=1) as forward:
            l1, g1 = self._loss_and_grad(forward, params)
            l2, g2 = self._loss_and_grad(forward, params)
        dl = abs(l1 - l2) / max(abs(l1), 1e-30)
        dg = reductions.norm(g1 - g2) / max(reductions.norm(g1), 1e-30)
        if dl > rtol or dg > rtol:
            raise NonDeterministicError(
                f"two evaluations differ (loss rel. diff {dl:.2e}, gradient rel. diff {dg:.2e} > {rtol:.0e}): "
                "the data or model is random. Use a loader with shuffle=False and no random augmentation, and "
                "mode='eval' (or remove dropout) before analysing curvature"
            )

    def describe(self) -> dict:
        """Settings recorded in every result (the BatchNorm/dropout policy among them)."""
        return {
            "mode": self.mode,
            "num_params": self.num_params,
            "num_samples": self.num_samples,
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
            "params": list(self.param_names),
            "loss": getattr(self.loss_fn, "__name__", type(self.loss_fn).__name__),
            "reduction": self.reduction,
            **self._loss_settings(),
            **({} if self.shard is None else {"distributed": self.shard.to_dict()}),
            **({} if self.space is None else {"sharded": self.space.describe()}),
            **(
                {}
                if self.replicas is None
                else {"replicated": {"rank": self.replicas.rank, "world_size": self.replicas.world_size}}
            ),
        }

    def _loss_settings(self) -> dict:
        """What a loss adapter, a Hugging Face load (:func:`landscape.checkpoint.load_hf`) and attention add."""
        settings: dict[str, Any] = {}
        loaded = getattr(self.model, "landscape_load_info", None)
        if loaded is not None:  # the saved dtype of bf16/fp16 weights analysed in another one, among others
            settings["loaded"] = {k: str(v).replace("torch.", "") for k, v in vars(loaded).items()}
        objective = self.objective
        if isinstance(objective, losses.Criterion):
            return settings
        accuracy = "token accuracy" if isinstance(objective, losses.TokenLoss) else "accuracy"
        return {
            **settings,
            "loss_adapter": objective.describe(),
            "num_counted": self.num_counted,
            "accuracy": f"{accuracy} (correct argmax predictions / {self.num_counted} counted)",
            "attention": attention.SETTING,
        }

    def __repr__(self) -> str:
        return (
            f"Problem({type(self.model).__name__}, params={self.num_params}, mode={self.mode!r}, "
            f"dtype={self.dtype}, device={self.device})"
        )


class _Within(nn.Module):
    """Calls ``body(inner)`` (a container only: the wrapped module is not changed). Under ``functional_call`` the
    inner module stays re-parametrised for the whole body."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, body: Callable[[nn.Module], Any]) -> Any:
        return body(self.inner)


def check_problem(problem: object) -> Problem:
    """``problem`` itself, or ``TypeError`` when it is not a :class:`Problem`."""
    if not isinstance(problem, Problem):
        raise TypeError(f"problem must be a landscape.Problem, got {type(problem).__name__}")
    return problem
