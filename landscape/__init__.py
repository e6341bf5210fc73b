"""landscape: what the loss surface of a trained PyTorch network looks like.

Layers (a lower one never imports a higher one): problem + data -> operators -> estimators (``linalg``) ->
analyses (``spectrum``, ``roughness``, ``surface``) -> plots (``plot``) -> CLI; results are cached in HDF5
(``cache``).
"""

from landscape import losses
from landscape._version import __version__ as __version__
from landscape.attention import AttentionKernelError
from landscape.blocks import BlockSpectra, block_spectra
from landscape.cache import Cache, CacheError, CacheLockedError
from landscape.checkpoint import CheckpointError, extract_state_dict, load_checkpoint, load_hf, load_model
from landscape.distributed import DistributedError, ShardInfo
from landscape.layerwise import LayerwiseCurvature, layerwise_curvature
from landscape.linalg import (
    ConvergenceWarning,
    EigenResult,
    Estimate,
    LLACriteria,
    SpectralDensity,
    diagonal,
    frobenius_norm,
    lanczos,
    spectral_density,
    top_eigen,
    trace,
)
from landscape.operators import (
    CurvatureOperator,
    MatrixOperator,
    empirical_fisher,
    ggn,
    hessian,
    hessian_dense,
    to_dense,
)
from landscape.operators.exact import (
    ExactDiagonal,
    ExactDiagonalUnavailable,
    ExactSupport,
    exact_diagonal,
    exact_support,
)
from landscape.problem import DataError, NonDeterministicError, Problem
from landscape.roughness import RoughnessIndex, roughness_index
from landscape.scaling import (
    BatchSharpness,
    NoiseScale,
    ScalingReport,
    batch_sharpness,
    gradient_noise_scale,
    lr_batch_scaling,
)
from landscape.sharpness import (
    AverageSharpness,
    KeskarSharpness,
    SAMSharpness,
    Sharpness,
    average_sharpness,
    keskar_sharpness,
    sam_sharpness,
    sharpness,
)
from landscape.spectrum import Spectrum, spectrum
from landscape.stability import Criterion, EdgeOfStabilityTracker, StabilityReport, stability

__all__ = [
    "BlockSpectra",
    "block_spectra",
    "ExactDiagonal",
    "ExactDiagonalUnavailable",
    "ExactSupport",
    "LayerwiseCurvature",
    "exact_diagonal",
    "exact_support",
    "layerwise_curvature",
    "Criterion",
    "EdgeOfStabilityTracker",
    "StabilityReport",
    "stability",
    "BatchSharpness",
    "NoiseScale",
    "ScalingReport",
    "batch_sharpness",
    "gradient_noise_scale",
    "lr_batch_scaling",
    "AverageSharpness",
    "KeskarSharpness",
    "SAMSharpness",
    "Sharpness",
    "average_sharpness",
    "keskar_sharpness",
    "sam_sharpness",
    "sharpness",
    "DistributedError",
    "ShardInfo",
    "Cache",
    "CacheError",
    "CacheLockedError",
    "AttentionKernelError",
    "CheckpointError",
    "ConvergenceWarning",
    "CurvatureOperator",
    "DataError",
    "EigenResult",
    "Estimate",
    "LLACriteria",
    "MatrixOperator",
    "NonDeterministicError",
    "Problem",
    "RoughnessIndex",
    "SpectralDensity",
    "Spectrum",
    "diagonal",
    "empirical_fisher",
    "extract_state_dict",
    "frobenius_norm",
    "ggn",
    "hessian",
    "hessian_dense",
    "lanczos",
    "load_checkpoint",
    "load_hf",
    "losses",
    "load_model",
    "roughness_index",
    "spectral_density",
    "spectrum",
    "to_dense",
    "top_eigen",
    "trace",
]
