"""Lanczos recurrences of every diagonal block ``H_bb`` at once, in the memory of one recurrence per probe.

For ``p`` probes and ``B`` blocks there are ``p B`` independent recurrences ``H_bb Q_b = Q_b T_b + ...`` (Lanczos
1950; Paige 1972), one per (probe, block). Since the blocks partition the parameters, probe ``l``'s current vectors
of all blocks fit into one flat vector ``q_l``: block ``b``'s Lanczos vector lives on ``b``'s segments, normalised
there. A stored basis of ``m + 1`` such vectors per probe therefore costs what one spectrum's costs
(``p (m + 1) P`` numbers), not ``B`` times that.

One step multiplies every active (probe, block) pair at once: the columns ``[0, ..., q_{l,b}, ..., 0]`` go through
the operator as one block of vectors (one data pass; in chunks of ``columns`` when memory is short), and block
``b``'s part of ``H [0, ..., q_{l,b}, ..., 0]`` is ``H_bb q_{l,b}`` (Zhang et al. 2024, "Why Transformers Need
Adam: A Hessian Perspective"; ``../shared/REFERENCE.md`` section 13). Every inner product, norm and Gram-Schmidt
coefficient is then taken per block (a sum over the block's segments): classical Gram-Schmidt twice against the
probe's stored basis ("twice is enough", Giraud et al. 2005), or against the last two vectors when the basis does
not fit the memory budget (the three-term recurrence; the densities keep their accuracy, Greenbaum 1989).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from landscape import reductions
from landscape.blocks.partition import BlockPartition
from landscape.operators.base import CurvatureOperator


@dataclass(frozen=True)
class BlockTridiagonals:
    """The tridiagonals of all ``(block, probe)`` recurrences.

    Attributes
    ----------
    alphas, betas
        ``(B, p, m)`` float64, as :class:`~landscape.linalg.lanczos.LanczosDecomposition` has per block: row
        ``[b, l]`` is block ``b``'s recurrence from probe ``l``; ``betas[b, l, steps[b, l] - 1]`` is its residual
        coupling (zero when it stopped at an invariant subspace or used the whole block).
    steps
        ``(B, p)`` steps taken (at most ``min(m, |b|)``).
    start_norms
        ``(B, p)`` norms of the probes' block parts.
    matvecs
        ``(B,)`` products with each block (columns multiplied).
    passes
        Block products (calls of the operator), each one pass over the data.
    stored
        Whether the full basis was kept (full reorthogonalisation) or only the last two vectors.
    """

    alphas: np.ndarray
    betas: np.ndarray
    steps: np.ndarray
    start_norms: np.ndarray
    matvecs: np.ndarray
    passes: int
    stored: bool


class BlockLanczos:
    """State of the ``p B`` recurrences; :meth:`step` advances all of them by one step."""

    def __init__(
        self,
        op: CurvatureOperator,
        partition: BlockPartition,
        Z: Tensor,
        max_steps: int,
        *,
        store_basis: bool = True,
        columns: int | None = None,
        skip: tuple[int, ...] = (),
        restricted: bool = False,
        sizes: tuple[int, ...] | None = None,
    ):
        """``Z`` (P, p): the probes; ``skip``: blocks not to run (their rows stay zero); ``restricted``: multiply
        through ``op.block_products`` (each block's products restricted to its parameters) instead of full columns;
        ``sizes``: the blocks' global sizes when the operator is sharded (``partition`` then lays out this rank's
        local vector, and every per-block sum is summed over the ranks through ``op.space``)."""
        if partition.num_params != op.shape[0]:
            raise ValueError(f"the partition covers {partition.num_params} parameters, the operator {op.shape[0]}")
        self.op = op
        self.part = partition
        self.segs = [partition.of_block(b) for b in range(partition.num_blocks)]
        self.space = op.space
        self.sizes = np.array(partition.sizes if sizes is None else sizes)
        p, B = Z.shape[1], partition.num_blocks
        self.p, self.B = p, B
        self.max_steps = max_steps
        self.store_basis = store_basis
        self.columns = columns or p * B
        self.restricted = restricted
        self.Q = torch.zeros(p, max_steps + 1 if store_basis else 2, op.shape[0], dtype=op.dtype, device=op.device)
        q0 = self.Q[:, 0]
        q0.copy_(Z.T.to(device=op.device, dtype=op.dtype))
        for b in skip:
            for s, e in self.segs[b]:
                q0[:, s:e] = 0.0
        norms = self._norms(q0)
        norms[:, list(skip)] = 1.0
        if not bool(np.all(norms > 0)):
            raise ValueError("a probe is zero on some block: block Lanczos needs a nonzero start on every block")
        self.start_norms = norms.T.copy()
        self._scale(q0, 1.0 / norms)
        self.alphas = np.zeros((B, p, max_steps))
        self.betas = np.zeros((B, p, max_steps))
        self.steps = np.zeros((B, p), dtype=np.int64)
        self.active = np.ones((B, p), dtype=bool)
        self.active[list(skip)] = False
        self.anorm = np.zeros((B, p))
        self.matvecs = np.zeros(B, dtype=np.int64)
        self.passes = 0
        self.eps = torch.finfo(op.dtype).eps
        self.j = 0

    # Per-block reductions: sums over each block's segments, so nothing of length P is indexed.

    def _norms(self, W: Tensor) -> np.ndarray:
        """``(p, B)`` norms of each row's block parts."""
        sq = torch.zeros(W.shape[0], self.B, dtype=torch.float64, device=W.device)
        for b, segs in enumerate(self.segs):
            for s, e in segs:
                sq[:, b] += reductions.sum_of_squares(W[:, s:e], 1)  # no float64 copy of a block
        return self.space.reduce_(sq).sqrt().cpu().numpy()

    def _scale(self, W: Tensor, factors: np.ndarray) -> None:
        """``W[l, b's segments] *= factors[l, b]`` in place."""
        f = torch.as_tensor(factors, dtype=W.dtype, device=W.device)
        for b, segs in enumerate(self.segs):
            for s, e in segs:
                W[:, s:e].mul_(f[:, b : b + 1])

    def _orthogonalise(self, W: Tensor, basis: Tensor) -> Tensor:
        """CGS2 of each row of ``W`` (p, P) against its probe's ``basis`` (p, u, P), block by block; returns the
        summed coefficients ``(p, u, B)`` (the current vector's coefficient is alpha)."""
        total = torch.zeros(W.shape[0], basis.shape[1], self.B, dtype=W.dtype, device=W.device)
        for _ in range(2):
            c = torch.zeros_like(total)
            for b, segs in enumerate(self.segs):
                for s, e in segs:
                    c[:, :, b] += torch.bmm(basis[:, :, s:e], W[:, s:e].unsqueeze(2)).squeeze(2)
            c = self.space.reduce_(c)
            for b, segs in enumerate(self.segs):
                for s, e in segs:
                    W[:, s:e] -= torch.bmm(c[:, :, b].unsqueeze(1), basis[:, :, s:e]).squeeze(1)
            total += c
        return total

    def _restricted_products(self, q: Tensor) -> Tensor:
        """``W[i, b] = H_bb q[i, b]`` by the operator's restricted block products, every active pair in one pass."""
        blocks, index = [], []
        for b, segs in enumerate(self.segs):
            probes = [i for i in range(self.p) if self.active[b, i]]
            if probes:
                V = torch.cat([q[probes, s:e] for s, e in segs], dim=1).T  # (|b|, c), rows in parameter order
                blocks.append((list(self.part.members[b]), V))
                index.append((b, probes))
        W = torch.zeros_like(q)
        outs = self.op.block_products(blocks)
        self.passes += 1
        for (b, probes), out in zip(index, outs, strict=True):
            self.matvecs[b] += len(probes)
            offset = 0
            for s, e in self.segs[b]:
                W[probes, s:e] = out[offset : offset + e - s].T.to(W.dtype)
                offset += e - s
        return W

    def _products(self, q: Tensor) -> Tensor:
        """``W[i, b] = H_bb q[i, b]`` for every active pair (zero elsewhere), ``columns`` pairs per data pass."""
        if self.restricted:
            return self._restricted_products(q)
        pairs = [(b, i) for b in range(self.B) for i in range(self.p) if self.active[b, i]]
        W = torch.zeros_like(q)
        for first in range(0, len(pairs), self.columns):
            chunk = pairs[first : first + self.columns]
            X = torch.zeros(q.shape[1], len(chunk), dtype=q.dtype, device=q.device)
            for c, (b, i) in enumerate(chunk):
                for s, e in self.segs[b]:
                    X[s:e, c] = q[i, s:e]
            Y = self.op @ X
            del X
            self.passes += 1
            if hasattr(self.op, "adopt_choice"):
                # Recurrences end one by one and passes narrow: keep the first pass's strategy, measured once.
                self.op.adopt_choice(len(chunk))
            for c, (b, i) in enumerate(chunk):
                self.matvecs[b] += 1
                for s, e in self.segs[b]:
                    W[i, s:e] = Y[s:e, c]
            del Y
        return W

    @property
    def done(self) -> bool:
        return self.j >= self.max_steps or not self.active.any()

    def _slot(self, j: int) -> int:
        return j if self.store_basis else j % 2

    def step(self) -> None:
        j = self.j
        W = self._products(self.Q[:, self._slot(j)])
        basis = self.Q[:, : j + 1] if self.store_basis else self.Q
        coeffs = self._orthogonalise(W, basis)
        alpha = coeffs[:, self._slot(j)].double().cpu().numpy().T  # (B, p)
        beta = self._norms(W).T  # (B, p)
        prev = self.betas[:, :, j - 1] if j > 0 else np.zeros_like(beta)
        self.anorm = np.maximum.reduce([self.anorm, np.abs(alpha), prev, beta])
        # As in BatchedLanczos: a residual at rounding level (eps sqrt(|b|) ||H_bb||) means an invariant subspace;
        # a block's recurrence also ends once it has taken |b| steps.
        sizes = self.sizes[:, None]
        tiny = beta <= 10.0 * np.sqrt(sizes) * self.eps * self.anorm
        full = np.broadcast_to(j + 1 >= sizes, beta.shape)
        ends = self.active & (tiny | full)
        keep = self.active & ~ends
        scale = np.where(keep, 1.0 / np.where(beta > 0, beta, 1.0), 0.0)
        self._scale(W, scale.T)
        self.Q[:, self._slot(j + 1)] = W
        act = self.active
        self.alphas[:, :, j][act] = alpha[act]
        self.betas[:, :, j][act] = np.where(full, 0.0, beta)[act]
        self.steps[act] = j + 1
        self.active = keep
        self.j += 1

    def result(self) -> BlockTridiagonals:
        """The recurrences' tridiagonals and counts (the state's arrays, not copies)."""
        names = ("alphas", "betas", "steps", "start_norms", "matvecs", "passes")
        return BlockTridiagonals(**{n: getattr(self, n) for n in names}, stored=self.store_basis)


def column_chunks(widest: int) -> list[int]:
    """Candidate pass widths, widest first, halving down to one column."""
    widths = [max(int(widest), 1)]
    while widths[-1] > 1:
        widths.append(max(1, widths[-1] // 2))
    return widths
