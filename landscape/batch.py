"""What a batch is: any nesting of tensors in tuples, lists and mappings, handled by one tree map.

A batch may be an ``(inputs, targets)`` pair, a tuple/list of tensors, a mapping (``dict``,
``collections.UserDict``, Hugging Face ``BatchEncoding``) or a nesting of these. Mappings that are not plain dicts
become dicts first (:func:`as_tree`), so torch's own pytree utilities (``torch.utils._pytree``) see only the
containers they know; every other operation here is one ``tree_map`` over the tensor leaves. The examples of a batch
run along the leading dimension of its tensors (0-dimensional tensors and non-tensor leaves are carried along).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import Tensor

__all__ = ["as_tree", "concat", "describe", "num_examples", "pad_sequences", "take", "tensor_leaves", "to"]


class BatchFormatError(ValueError):
    """A batch whose tensors disagree on the number of examples, or that holds no tensor."""


def as_tree(batch: Any) -> Any:
    """``batch`` with every mapping turned into a plain ``dict`` (recursively), tuples and lists kept."""
    if isinstance(batch, Mapping):
        return {k: as_tree(v) for k, v in batch.items()}
    if isinstance(batch, tuple) and not hasattr(batch, "_fields"):
        return tuple(as_tree(v) for v in batch)
    if isinstance(batch, list):
        return [as_tree(v) for v in batch]
    return batch


def _map(fn: Callable[[Tensor], Any], batch: Any) -> Any:
    return pytree.tree_map(lambda x: fn(x) if isinstance(x, Tensor) else x, batch)


def to(batch: Any, device: torch.device, dtype: torch.dtype | None = None) -> Any:
    """Every tensor moved to ``device``, floating tensors also cast to ``dtype`` when given (integer ids and masks
    keep theirs)."""
    return _map(lambda t: t.to(device=device, dtype=dtype if t.is_floating_point() else None), as_tree(batch))


def tensor_leaves(batch: Any) -> list[tuple[str, Tensor]]:
    """``(path, tensor)`` of every tensor in a batch tree, in pytree order (paths like ``['input_ids']``)."""
    flat, _ = pytree.tree_flatten_with_path(batch)
    return [(pytree.keystr(path) or "batch", x) for path, x in flat if isinstance(x, Tensor)]


def num_examples(batch: Any, index: int | None = None) -> int:
    """Examples in ``batch``: the common leading dimension of its tensors of dimension >= 1."""
    where = "" if index is None else f" {index}"
    sized = [(name, t.shape[0]) for name, t in tensor_leaves(as_tree(batch)) if t.ndim > 0]
    if not sized:
        raise BatchFormatError(
            f"batch{where} ({type(batch).__name__}) holds no tensor with a batch dimension: a batch must be "
            "tensors (or tuples/lists/dicts of tensors) whose first dimension runs over the examples"
        )
    sizes = {n for _, n in sized}
    if len(sizes) > 1:
        shown = ", ".join(f"{name} has {n}" for name, n in sized[:6])
        raise BatchFormatError(
            f"batch{where}'s tensors disagree on the number of examples (their first dimension): {shown}. "
            "Every tensor of a batch must hold the same examples along dimension 0"
        )
    return sized[0][1]


def take(batch: Any, index: Tensor | slice | int) -> Any:
    """The examples ``index`` of ``batch`` (every tensor of dimension >= 1 indexed along dimension 0)."""
    return _map(lambda t: t[index] if t.ndim > 0 else t, batch)


def concat(batches: Sequence[Any]) -> Any:
    """One batch holding the examples of ``batches`` in order (they must share structure and trailing shapes)."""
    flats = [pytree.tree_flatten(as_tree(b)) for b in batches]
    spec = flats[0][1]
    for i, (_, other) in enumerate(flats[1:], 1):
        if other != spec:
            raise BatchFormatError(f"batch {i} has another structure than batch 0: {other} vs {spec}")
    leaves = []
    for column in zip(*(leaves for leaves, _ in flats), strict=True):
        first = column[0]
        if isinstance(first, Tensor) and first.ndim > 0:
            leaves.append(torch.cat(column))
        else:
            leaves.append(first)
    return pytree.tree_unflatten(leaves, spec)


def pad_sequences(batches: Sequence[Any], ignore_index: int = -100) -> list[Any]:
    """Token batches (mappings with ``input_ids``) of different lengths right-padded to the longest, so that
    :func:`concat` can join them; other batches are returned as they are.

    Padding is what a tokenizer's right padding does: ``attention_mask`` 0 (one of ones is added to batches
    without it), ``labels`` ``ignore_index``, every other ``(n, T, ...)`` tensor 0. Padded positions are neither
    attended to nor counted by the token losses, and a causal model's outputs at the real positions do not
    depend on them.
    """
    trees = [as_tree(b) for b in batches]
    if not all(isinstance(t, dict) and isinstance(t.get("input_ids"), Tensor) for t in trees):
        return list(batches)
    lengths = [t["input_ids"].shape[1] for t in trees]
    longest = max(lengths)
    if min(lengths) == longest:
        return list(batches)
    out = []
    for tree, length in zip(trees, lengths, strict=True):
        tree = dict(tree)
        if "attention_mask" not in tree:
            tree["attention_mask"] = torch.ones_like(tree["input_ids"])
        extra = longest - length
        for key, t in tree.items():
            if isinstance(t, Tensor) and t.ndim >= 2 and t.shape[1] == length and extra:
                value = ignore_index if key == "labels" else 0
                pad = t.new_full((t.shape[0], extra, *t.shape[2:]), value)
                tree[key] = torch.cat([t, pad], dim=1)
        out.append(tree)
    return out


def describe(batch: Any) -> str:
    """A short description of a batch's structure and shapes, for error messages."""
    tree = as_tree(batch)
    if isinstance(tree, Tensor):
        return f"tensor{tuple(tree.shape)}"
    parts = [f"{name}: {t.dtype}{tuple(t.shape)}".replace("torch.", "") for name, t in tensor_leaves(tree)[:8]]
    return f"{type(batch).__name__}(" + ", ".join(parts) + ")"
