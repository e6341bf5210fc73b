"""Block spectra: every diagonal block's Hessian spectrum in batched passes, and how different the blocks are."""

from __future__ import annotations

from landscape.blocks.heterogeneity import Heterogeneity, heterogeneity, js_distance
from landscape.blocks.partition import BlockPartition
from landscape.blocks.spectra import BlockSpectra, FullComparison, block_spectra

__all__ = [
    "BlockPartition",
    "BlockSpectra",
    "FullComparison",
    "Heterogeneity",
    "block_spectra",
    "heterogeneity",
    "js_distance",
]
