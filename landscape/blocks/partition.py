"""Which entries of the flat parameter vector belong to which diagonal block ``H_bb``.

A block is a set of parameter tensors (one module's, one tensor, or those matching a glob), so it occupies one or
more contiguous ranges (segments) of the flat vector in the problem's parameter order. Segments are what the block
Lanczos recurrences work on: every inner product and norm of a block is a sum over its segments, so no index vector
of the full length is ever built.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from landscape.layerwise import parameter_groups

BlockSpec = str | Mapping[str, Sequence[str] | str]


@dataclass(frozen=True)
class BlockPartition:
    """A partition of the parameters into named blocks.

    Attributes
    ----------
    names
        Block names, in order of first appearance in the parameter order.
    members
        The parameter names of each block.
    sizes
        Parameters (entries of the flat vector) per block.
    segments
        ``(start, stop, block)`` ranges of the flat vector, adjacent ranges of one block merged.
    by
        The grouping asked for (``"module"``, ``"parameter"`` or the mapping of globs).
    """

    names: tuple[str, ...]
    members: tuple[tuple[str, ...], ...]
    sizes: tuple[int, ...]
    segments: tuple[tuple[int, int, int], ...]
    by: Any

    @classmethod
    def of(cls, param_names: Sequence[str], param_numels: Sequence[int], by: BlockSpec) -> BlockPartition:
        """Partition parameters ``param_names`` (with ``param_numels`` entries each, in flat-vector order)."""
        groups = parameter_groups(param_names, by)
        index = {n: b for b, (_, members) in enumerate(groups) for n in members}
        segments: list[list[int]] = []
        start = 0
        for name, numel in zip(param_names, param_numels, strict=True):
            b = index[name]
            if segments and segments[-1][2] == b and segments[-1][1] == start:
                segments[-1][1] = start + numel
            else:
                segments.append([start, start + numel, b])
            start += numel
        numels = dict(zip(param_names, param_numels, strict=True))
        return cls(
            names=tuple(g for g, _ in groups),
            members=tuple(tuple(m) for _, m in groups),
            sizes=tuple(sum(numels[n] for n in m) for _, m in groups),
            segments=tuple((s, e, b) for s, e, b in segments),
            by=by if isinstance(by, str) else {g: p if isinstance(p, str) else list(p) for g, p in by.items()},
        )

    @property
    def num_blocks(self) -> int:
        return len(self.names)

    @property
    def num_params(self) -> int:
        return sum(self.sizes)

    def of_block(self, b: int) -> list[tuple[int, int]]:
        """The ``(start, stop)`` segments of block ``b``."""
        return [(s, e) for s, e, g in self.segments if g == b]
