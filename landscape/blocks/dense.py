"""Small diagonal blocks built whole and diagonalised: the exact path of :func:`landscape.blocks.block_spectra`.

A block of at most ``dense_max`` parameters costs ``|b|`` products either way (Lanczos would need all ``|b|`` steps),
so it is built column by column, ``H_bb e_i`` for every entry in one pass, and diagonalised: its eigenvalues keep
their multiplicities (a multiple of the identity has two equal top eigenvalues, which single-vector Lanczos cannot
see), and its trace, Frobenius norm and density are exact.
"""

from __future__ import annotations

import numpy as np
import torch

from landscape.blocks.partition import BlockPartition
from landscape.linalg.results import Estimate
from landscape.linalg.slq import SpectralDensity
from landscape.operators.problem_operator import ProblemOperator
from landscape.spectrum import Spectrum


def dense_blocks(
    op: ProblemOperator, part: BlockPartition, which: tuple[int, ...], width: int, restricted: bool
) -> tuple[dict[int, np.ndarray], int]:
    """``H_bb`` of the blocks ``which`` as float64 matrices, and the number of passes: ``H_bb e_i`` for every entry
    ``i`` of them, by restricted block products in one pass, else full columns ``H e_i`` (``width`` per pass) of
    which block ``b``'s rows are kept."""
    if restricted:
        eye = [(list(part.members[b]), torch.eye(part.sizes[b], dtype=op.dtype, device=op.device)) for b in which]
        outs = op.block_products(eye)
        return {b: out.double().cpu().numpy() for b, out in zip(which, outs, strict=True)}, 1
    entries = [(b, s + i) for b in which for s, e in part.of_block(b) for i in range(e - s)]
    out = {b: np.zeros((part.sizes[b], part.sizes[b])) for b in which}
    filled = dict.fromkeys(which, 0)
    passes = 0
    for first in range(0, len(entries), width):
        chunk = entries[first : first + width]
        X = torch.zeros(op.shape[0], len(chunk), dtype=op.dtype, device=op.device)
        for c, (_, i) in enumerate(chunk):
            X[i, c] = 1.0
        Y = op @ X
        del X
        passes += 1
        op.adopt_choice(len(chunk))
        for c, (b, _) in enumerate(chunk):
            out[b][:, filled[b]] = torch.cat([Y[s:e, c] for s, e in part.of_block(b)]).double().cpu().numpy()
            filled[b] += 1
    return out, passes


def dense_spectrum(H: np.ndarray, *, k: int, num_steps: int, wall: float) -> Spectrum:
    """A small block's exact :class:`Spectrum` from its matrix (symmetrised; the asymmetry, rounding of the
    products, is recorded in ``settings``)."""
    n = H.shape[0]
    sym = 0.5 * (H + H.T)
    ev = np.linalg.eigvalsh(sym)
    norm = float(np.linalg.norm(sym))
    lo, hi = float(ev[0]), float(ev[-1])
    density = SpectralDensity(
        nodes=ev[None, :].copy(),
        weights=np.full((1, n), 1.0 / n),
        num_params=n,
        sigma=(hi - lo) / num_steps if hi > lo else 1e-3 * max(abs(hi), 1.0),
        steps=np.array([n]),
        num_matvecs=n,
        seed=None,
        wall_time=wall,
        method="exact",
        settings={"num_steps": num_steps, "num_probes": 1, "sigma_derived": True},
    )

    def exact(value: float) -> Estimate:
        return Estimate(value=value, stderr=0.0, num_matvecs=n, seed=None, method="exact", wall_time=wall)

    top = ev[::-1][:k].copy()
    return Spectrum(
        eigenvalues=top,
        eigen_residuals=np.zeros(k),
        eigen_error_bounds=np.zeros(k),
        eigen_converged=np.ones(k, dtype=bool),
        eigenvectors=None,
        trace=exact(float(ev.sum())),
        frobenius=exact(norm),
        density=density,
        lla=density.lla_criteria(),
        subsets=None,
        num_params=n,
        num_matvecs=n,
        seed=None,
        wall_time=wall,
        settings={
            "method": "exact: the dense block from its column products",
            "asymmetry": float(np.linalg.norm(H - H.T)) / norm if norm > 0 else 0.0,
            "k": k,
        },
    )
