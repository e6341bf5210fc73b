"""Loss adapters: how a batch and a model make the loss, and what the loss averages over.

A :class:`Loss` sees the (functional) model and the whole batch and returns the batch's mean loss and its weight,
the number of things it averages over (examples, or counted tokens for a language model). A :class:`~landscape.
problem.Problem` weights each batch by it, so the full-data loss is the exact mean over everything counted,

    L(w) = sum_b c_b l_b(w) / sum_b c_b = (sum of every counted token's loss) / (all counted tokens),

not a mean of batch means: batches of different lengths and padding are weighted by their counted tokens.

Each adapter splits into ``outputs(model, batch)`` (the tensor the loss is a function of, e.g. the logits) and
``from_outputs(outputs, batch)``, so the generalised Gauss-Newton ``J^T H_out J`` (Schraudolph 2002) is defined
where the loss allows; ``example_sums`` gives every example's summed loss for per-example quantities (empirical
Fisher, SGD noise), and ``correct`` the correct predictions among the counted positions (accuracy, or token
accuracy for language models).

- :func:`supervised`: ``criterion(model(**inputs), targets)`` on mapping batches (``.logits`` of model outputs).
- :func:`causal_lm`: next-token cross-entropy, labels shifted by one (``labels``, else ``input_ids`` with padding
  excluded through ``attention_mask``), positions labelled ``ignore_index`` excluded.
- :func:`masked_lm`: the same without the shift (labels are required: ``ignore_index`` marks unmasked tokens).
- :func:`model_output`: the model's own ``.loss``, weighted by its counted labels.
- :func:`criterion`: a ``criterion(outputs, targets)`` on ``(inputs, targets)`` batches; what a
  :class:`~landscape.problem.Problem` makes of a plain loss function.

Any callable ``loss(model, batch) -> (mean_loss, weight)`` works too (:class:`Custom` wraps it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import vmap

from landscape.batch import num_examples
from landscape.lm_head import chunked_token_loss

__all__ = [
    "Custom",
    "Loss",
    "LossError",
    "causal_lm",
    "criterion",
    "masked_lm",
    "model_output",
    "resolve",
    "supervised",
]

Model = Callable[..., Any]


class LossError(ValueError):
    """The loss cannot be computed from this batch or model output as configured."""


def _logits(out: Any, what: str) -> Tensor:
    """The tensor a loss is computed from: ``out`` itself, ``out.logits`` / ``out["logits"]``, or ``out[0]``."""
    if isinstance(out, Tensor):
        return out
    logits = getattr(out, "logits", None)
    if logits is None and isinstance(out, Mapping):
        logits = out.get("logits")
    if isinstance(logits, Tensor):
        return logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    keys = list(out.keys()) if isinstance(out, Mapping) else [k for k in vars(out) if not k.startswith("_")]
    raise LossError(
        f"{what} needs the model's logits, but the model returned a {type(out).__name__} without `.logits` "
        f"(it has: {keys}); return a tensor or an object with `.logits`, or use losses.model_output(key=...)"
    )


def _need_mapping(batch: Any, who: str) -> Mapping:
    if not isinstance(batch, Mapping):
        raise LossError(
            f"{who} takes mapping batches (dicts such as {{'input_ids': ..., 'labels': ...}}), got a "
            f"{type(batch).__name__}; for (inputs, targets) pairs pass the criterion itself as the loss"
        )
    return batch


class Loss:
    """The loss adapter protocol (see the module docstring); subclasses implement the four methods below."""

    name = "loss"
    #: "mean": the adapter returns a mean over ``count(batch)`` things; "sum": a sum (criteria with
    #: ``reduction="sum"``), then the full-data loss is the plain sum over batches.
    reduction = "mean"
    #: Whether ``from_outputs`` is a function of ``outputs`` (the GGN is defined).
    separable = True

    def count(self, batch: Any) -> int | None:
        """What the batch's loss averages over (examples, counted tokens); ``None``: known only by evaluating."""
        raise NotImplementedError

    def outputs(self, model: Model, batch: Any) -> Tensor:
        """The model output the loss is a function of (for a language model, the logits)."""
        raise NotImplementedError

    def from_outputs(self, outputs: Tensor, batch: Any) -> Tensor:
        """The batch's mean loss (over ``count(batch)``) from ``outputs``."""
        raise NotImplementedError

    def example_sums(self, outputs: Tensor, batch: Any) -> Tensor:
        """``(n,)``: each example's summed loss over its counted positions (the batch's loss is their sum over
        ``count(batch)``)."""
        raise LossError(f"{self.name} gives no per-example losses; use losses.causal_lm/masked_lm/supervised")

    def correct(self, outputs: Tensor, batch: Any) -> Tensor | None:
        """Correct argmax predictions among the counted positions, or ``None`` when that is not defined."""
        return None

    def mean(self, model: Model, batch: Any) -> Tensor:
        """The batch's mean loss (what :meth:`__call__` returns first, without counting)."""
        return self.from_outputs(self.outputs(model, batch), batch)

    def __call__(self, model: Model, batch: Any) -> tuple[Tensor, int | None]:
        return self.mean(model, batch), self.count(batch)

    def describe(self) -> dict[str, Any]:
        """Settings recorded with results (and keyed in the cache)."""
        options = {k: v for k, v in vars(self).items() if isinstance(v, (bool, int, float, str, tuple, type(None)))}
        return {"adapter": self.name, **options}


def criterion_reduction(fn: Callable) -> str:
    reduction = getattr(fn, "reduction", "mean")
    if reduction not in ("mean", "sum"):
        raise ValueError(
            f"loss_fn has reduction={reduction!r}; landscape needs a scalar loss per batch: "
            "use reduction='mean' (default) or 'sum'"
        )
    return reduction


def _classification_correct(logits: Tensor, labels: Tensor) -> Tensor | None:
    if labels.is_floating_point() or labels.dtype == torch.bool or labels.ndim != 1:
        return None
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
        return None
    return torch.count_nonzero(logits.argmax(dim=-1) == labels)


class Criterion(Loss):
    """``fn(model(inputs), targets)`` on ``(inputs, targets)`` batches; weight = the batch's examples."""

    name = "criterion"

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor]):
        self.fn = fn
        self.reduction = criterion_reduction(fn)

    def count(self, batch: Any) -> int:
        return num_examples(batch[1])

    def outputs(self, model: Model, batch: Any) -> Tensor:
        return model(batch[0])

    def from_outputs(self, outputs: Tensor, batch: Any) -> Tensor:
        return self.fn(outputs, batch[1])

    def example_sums(self, outputs: Tensor, batch: Any) -> Tensor:
        fn = self.fn
        return vmap(lambda o, t: fn(o[None], t[None]))(outputs, batch[1])

    def correct(self, outputs: Tensor, batch: Any) -> Tensor | None:
        return _classification_correct(outputs, batch[1])

    def describe(self) -> dict[str, Any]:
        return {"adapter": self.name, "criterion": getattr(self.fn, "__name__", type(self.fn).__name__)}


def criterion(fn: Callable[[Tensor, Tensor], Tensor]) -> Criterion:
    """A criterion ``fn(outputs, targets)`` (mean or sum reduction) on ``(inputs, targets)`` batches."""
    return Criterion(fn)


class Supervised(Loss):
    """``criterion(model(**inputs), batch[targets])`` on mapping batches; weight = the batch's examples."""

    name = "supervised"

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor], inputs: str | Sequence[str] | None, targets: str):
        self.fn = fn
        self.inputs = (inputs,) if isinstance(inputs, str) else None if inputs is None else tuple(inputs)
        self.targets = targets
        self.reduction = criterion_reduction(fn)

    def _targets(self, batch: Any) -> Tensor:
        batch = _need_mapping(batch, "losses.supervised")
        if self.targets not in batch:
            raise LossError(f"the batch has no {self.targets!r} (it has {list(batch)}): pass targets=<key>")
        return batch[self.targets]

    def count(self, batch: Any) -> int:
        return num_examples(self._targets(batch))

    def outputs(self, model: Model, batch: Any) -> Tensor:
        batch = _need_mapping(batch, "losses.supervised")
        keys = self.inputs if self.inputs is not None else [k for k in batch if k != self.targets]
        missing = [k for k in keys if k not in batch]
        if missing:
            raise LossError(f"the batch has no {missing} (it has {list(batch)}): pass inputs=<key or keys>")
        return _logits(model(**{k: batch[k] for k in keys}), "losses.supervised")

    def from_outputs(self, outputs: Tensor, batch: Any) -> Tensor:
        return self.fn(outputs, self._targets(batch))

    def example_sums(self, outputs: Tensor, batch: Any) -> Tensor:
        fn = self.fn
        return vmap(lambda o, t: fn(o[None], t[None]))(outputs, self._targets(batch))

    def correct(self, outputs: Tensor, batch: Any) -> Tensor | None:
        return _classification_correct(outputs, self._targets(batch))

    def describe(self) -> dict[str, Any]:
        return {
            "adapter": self.name,
            "criterion": getattr(self.fn, "__name__", type(self.fn).__name__),
            "inputs": self.inputs,
            "targets": self.targets,
        }


def supervised(
    criterion: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
    *,
    inputs: str | Sequence[str] | None = "pixel_values",
    targets: str = "labels",
) -> Supervised:
    """``criterion(model(**{k: batch[k] for k in inputs}), batch[targets])`` for mapping batches.

    Parameters
    ----------
    criterion : callable
        ``criterion(outputs, targets)`` with mean (default) or sum reduction; default cross-entropy.
    inputs : str, sequence of str or None
        The keys passed to the model as keyword arguments (``"pixel_values"`` for a ViT, ``("input_ids",
        "attention_mask")`` for a sequence classifier); ``None``: every key but ``targets``.
    targets : str
        The key of the targets. Model outputs with ``.logits`` (Hugging Face) are reduced to them.
    """
    return Supervised(criterion, inputs, targets)


class TokenLoss(Loss):
    """Cross-entropy over the tokens whose label is not ``ignore_index``; weight = the counted tokens.

    With ``chunk`` and ``head`` (the model's output layer, an ``nn.Linear`` such as ``model.lm_head``), the loss
    skips the head's ``(tokens, vocab)`` logits: a pre-hook on ``head`` takes its input (the final hidden states)
    and weights during the model call and hands the head an empty slice, and :func:`landscape.lm_head.
    chunked_token_loss` computes the loss and its first two derivatives ``chunk`` tokens at a time. The logits of
    :meth:`outputs` (GGN, per-example losses, accuracy) are unchanged.
    """

    shift = False

    def __init__(
        self, ignore_index: int = -100, labels: str = "labels", chunk: int | None = None, head: nn.Module | None = None
    ):
        self.ignore_index = int(ignore_index)
        self.labels = labels
        if chunk is not None:
            if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
                raise ValueError(f"chunk must be a positive number of tokens or None, got {chunk!r}")
            if not isinstance(head, nn.Module) or not isinstance(getattr(head, "weight", None), Tensor):
                raise ValueError(
                    f"chunk={chunk} needs head=, the model's output layer with a .weight of shape (vocab, hidden) "
                    "(for a Hugging Face model: model.get_output_embeddings(), e.g. model.lm_head)"
                )
        self.chunk = chunk
        self.head = head

    def describe(self) -> dict[str, Any]:
        # The chunked loss is the same function (equal to rounding): only a chosen chunk is recorded, so the
        # unchunked loss keeps its cache keys.
        out = super().describe()
        if self.chunk is None:
            out.pop("chunk", None)
        return out

    def mean(self, model: Model, batch: Any) -> Tensor:
        if self.chunk is None:
            return super().mean(model, batch)
        batch = _need_mapping(batch, f"losses.{self.name}")
        seen: dict[str, Any] = {}

        def take(module: nn.Module, args: tuple) -> tuple:
            seen.update(hidden=args[0], weight=module.weight, bias=module.bias)
            return (args[0][..., :0, :], *args[1:])

        handle = self.head.register_forward_pre_hook(take)
        try:
            model(**{k: v for k, v in batch.items() if k != self.labels})
        finally:
            handle.remove()
        if "hidden" not in seen:
            raise LossError(
                f"losses.{self.name}(chunk={self.chunk}): the head given was not called by the model; pass the "
                "model's own output layer (model.get_output_embeddings())"
            )
        hidden, labels = seen["hidden"], self._labels(batch)
        if self.shift:  # the last position predicts nothing: no head product for it
            hidden, labels = hidden[..., :-1, :], labels[..., :-1]
        total = chunked_token_loss(hidden, seen["weight"], seen["bias"], labels, self.ignore_index, self.chunk)
        return total / self.count(batch)

    def _labels(self, batch: Any) -> Tensor:
        """The target of every position of the logits: with the shift, token ``t+1``'s label at position ``t`` and
        ``ignore_index`` at the last position (it predicts nothing), so the logits are used whole. Slicing them
        instead (``logits[..., :-1, :]``) copies a ``(tokens, vocab)`` buffer in the forward and zero-fills and
        copies one in every backward through it: ~0.13 s of a 2.4 s Hessian product on GPT-2 small at 4 x 64."""
        batch = _need_mapping(batch, f"losses.{self.name}")
        labels = batch.get(self.labels)
        if labels is None:
            if not self.shift or "input_ids" not in batch:
                need = f"{self.labels!r}" if not self.shift else f"{self.labels!r} or 'input_ids'"
                raise LossError(f"losses.{self.name} needs {need} in every batch; the batch has {list(batch)}")
            labels = batch["input_ids"]
            mask = batch.get("attention_mask")
            if mask is not None:  # padding is never a target
                labels = labels.masked_fill(mask == 0, self.ignore_index)
        if self.shift:
            labels = torch.cat([labels[..., 1:], torch.full_like(labels[..., :1], self.ignore_index)], dim=-1)
        return labels

    def count(self, batch: Any) -> int:
        return int(torch.count_nonzero(self._labels(batch) != self.ignore_index))

    def outputs(self, model: Model, batch: Any) -> Tensor:
        batch = _need_mapping(batch, f"losses.{self.name}")
        # The labels stay out of the call: a Hugging Face model would also compute its own loss (in float32).
        return _logits(model(**{k: v for k, v in batch.items() if k != self.labels}), f"losses.{self.name}")

    def _token_losses(self, outputs: Tensor, batch: Any) -> Tensor:
        labels = self._labels(batch)
        if outputs.shape[:-1] != labels.shape:
            raise LossError(
                f"losses.{self.name}: logits of shape {tuple(outputs.shape)} do not match labels of shape "
                f"{tuple(labels.shape)} (after the shift: {self.shift})"
            )
        flat = F.cross_entropy(
            outputs.reshape(-1, outputs.shape[-1]), labels.reshape(-1), ignore_index=self.ignore_index, reduction="none"
        )
        return flat.reshape(labels.shape)

    def from_outputs(self, outputs: Tensor, batch: Any) -> Tensor:
        # A sum over counted tokens divided by their number: ignored positions contribute exact zeros.
        return self._token_losses(outputs, batch).sum() / self.count(batch)

    def example_sums(self, outputs: Tensor, batch: Any) -> Tensor:
        return self._token_losses(outputs, batch).reshape(outputs.shape[0], -1).sum(dim=1)

    def correct(self, outputs: Tensor, batch: Any) -> Tensor:
        labels = self._labels(batch)
        return torch.count_nonzero((outputs.argmax(dim=-1) == labels) & (labels != self.ignore_index))


class CausalLM(TokenLoss):
    name = "causal_lm"
    shift = True


class MaskedLM(TokenLoss):
    name = "masked_lm"
    shift = False


def causal_lm(
    ignore_index: int = -100, *, labels: str = "labels", chunk: int | None = None, head: nn.Module | None = None
) -> CausalLM:
    """Next-token cross-entropy of a causal language model, ``model(**batch).logits`` shifted by one.

    The mean over the counted positions ``t`` (label of token ``t+1`` not ``ignore_index``),

        l_b = (1 / c_b) sum_t -log softmax(z_t)[y_{t+1}],        c_b = #counted positions,

    with labels from ``batch[labels]``, else ``input_ids`` with padding (``attention_mask == 0``) excluded; the
    weight is ``c_b``, so the full-data loss is the exact token mean. The labels are not passed to the model.

    ``chunk=`` (tokens) with ``head=model.lm_head`` fuses the output layer into the loss, so neither the loss, its
    gradient nor a Hessian-vector product (double backward) holds a ``(tokens, vocab)`` buffer: the logits are
    recomputed ``chunk`` tokens at a time (:mod:`landscape.lm_head`). Only the Hessian engine ``double_backward``
    goes through it (``engine="auto"`` finds that by itself).
    """
    return CausalLM(ignore_index, labels, chunk, head)


def masked_lm(
    ignore_index: int = -100, *, labels: str = "labels", chunk: int | None = None, head: nn.Module | None = None
) -> MaskedLM:
    """Cross-entropy of a masked language model at the positions whose label is not ``ignore_index`` (no shift);
    the weight is the number of such positions. ``chunk=`` with ``head=``: the output layer fused into the loss, as
    in :func:`causal_lm`."""
    return MaskedLM(ignore_index, labels, chunk, head)


class ModelOutput(Loss):
    """The model's own loss ``model(**batch)[key]``; weight = its counted labels (else the examples)."""

    name = "model_output"
    separable = False

    def __init__(self, key: str = "loss", ignore_index: int = -100, shift_labels: bool = False):
        self.key = key
        self.ignore_index = int(ignore_index)
        self.shift_labels = bool(shift_labels)

    def count(self, batch: Any) -> int:
        batch = _need_mapping(batch, "losses.model_output")
        labels = batch.get("labels")
        if labels is None:
            return num_examples(batch)
        if self.shift_labels:
            labels = labels[..., 1:]
        return int(torch.count_nonzero(labels != self.ignore_index))

    def outputs(self, model: Model, batch: Any) -> Tensor:
        out = model(**_need_mapping(batch, "losses.model_output"))
        value = out.get(self.key) if isinstance(out, Mapping) else getattr(out, self.key, None)
        if not isinstance(value, Tensor):
            raise LossError(
                f"losses.model_output(key={self.key!r}): the model output ({type(out).__name__}) has no "
                f"{self.key!r} tensor. Hugging Face models return `.loss` only when the batch has 'labels'; or use "
                "losses.causal_lm() / masked_lm() / supervised(), which compute the loss from the logits"
            )
        return value

    def from_outputs(self, outputs: Tensor, batch: Any) -> Tensor:
        return outputs


def model_output(key: str = "loss", *, ignore_index: int = -100, shift_labels: bool = False) -> ModelOutput:
    """The model's own loss ``model(**batch)[key]`` (a Hugging Face model's ``.loss`` when the batch has
    ``labels``), weighted by the labels it counts: those not ``ignore_index`` (from the second position on with
    ``shift_labels``, as a causal language model shifts them), else the batch's examples.

    The loss is a black box here: no GGN, no per-example losses, no token accuracy. Hugging Face computes its loss
    in float32 whatever the model's dtype, so float64 analyses of it are only float32-accurate; :func:`causal_lm`
    and :func:`masked_lm` compute it from the logits in the problem's dtype.
    """
    return ModelOutput(key, ignore_index, shift_labels)


class Custom(Loss):
    """A user's ``fn(model, batch) -> (mean_loss, weight)``; the weight is known only by evaluating it."""

    name = "custom"
    separable = False

    def __init__(self, fn: Callable[[Model, Any], tuple[Tensor, Any]]):
        self.fn = fn

    def count(self, batch: Any) -> None:
        return None

    def __call__(self, model: Model, batch: Any) -> tuple[Tensor, int | None]:
        result = self.fn(model, batch)
        if not (isinstance(result, tuple) and len(result) == 2):
            raise LossError(
                f"the loss {getattr(self.fn, '__name__', self.fn)!r} returned {type(result).__name__}, not "
                "(mean_loss, weight). With dict batches, a loss is an adapter: losses.causal_lm(), "
                "losses.masked_lm(), losses.supervised(criterion, inputs=..., targets=...) or a callable "
                "(model, batch) -> (mean_loss, weight)"
            )
        mean, weight = result
        return mean, int(weight) if not isinstance(weight, float) else weight

    def mean(self, model: Model, batch: Any) -> Tensor:
        return self(model, batch)[0]

    def outputs(self, model: Model, batch: Any) -> Tensor:
        raise LossError(
            "this analysis needs the loss as a function of the model's outputs (the GGN, per-example losses): a "
            "custom loss callable does not separate them; use losses.causal_lm/masked_lm/supervised"
        )

    def describe(self) -> dict[str, Any]:
        return {"adapter": self.name, "fn": getattr(self.fn, "__qualname__", type(self.fn).__name__)}


def _is_criterion(fn: object) -> bool:
    return isinstance(fn, nn.modules.loss._Loss) or getattr(fn, "__module__", "") == "torch.nn.functional"


def _is_pair(batch: Any) -> bool:
    return isinstance(batch, (tuple, list)) and len(batch) == 2 and all(isinstance(t, Tensor) for t in batch)


def resolve(loss_fn: object, first_batch: Any) -> Loss:
    """The adapter for ``loss_fn`` given the data's first batch.

    A :class:`Loss` is used as it is. A torch criterion (``nn.CrossEntropyLoss()``, ``F.cross_entropy``) needs
    ``(inputs, targets)`` batches. Any other callable is a criterion on pair batches and an adapter
    ``(model, batch) -> (mean_loss, weight)`` otherwise.
    """
    if isinstance(loss_fn, Loss):
        return loss_fn
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable or a landscape.losses adapter, got {type(loss_fn).__name__}")
    if _is_pair(first_batch):
        return Criterion(loss_fn)
    if _is_criterion(loss_fn):
        name = getattr(loss_fn, "__name__", type(loss_fn).__name__)
        raise LossError(
            f"the batches are {type(first_batch).__name__}s, not (inputs, targets) pairs, so the criterion {name} "
            "cannot be applied to them: pass a loss adapter, e.g. losses.causal_lm() for a language model, "
            "losses.masked_lm(), losses.supervised(criterion, inputs='pixel_values', targets='labels') or "
            "losses.model_output()"
        )
    return Custom(loss_fn)
