"""Directions in parameter space along which a loss surface is drawn.

A direction is a flat vector in the order of the Problem's selected parameters. Random Gaussian directions are
scale-blind: a network whose layers are rescaled without changing its function (ReLU, BatchNorm) gets a different
picture. Filter normalisation (Li, Xu, Taylor, Studer, Goldstein 2018, "Visualizing the Loss Landscape of Neural
Nets") rescales each filter of a Gaussian direction to the norm of the matching filter of the weights,

    d_i <- d_i ||w_i|| / (||d_i|| + 1e-10)        for every slice i along dim 0 of a tensor with dim > 1,

which makes the surface invariant to such rescalings. Every direction is drawn from a local ``torch.Generator``
seeded explicitly: the global RNG is never touched and the same seed gives the same directions.

Two kinds of directions are not random. Hessian axes (the top eigenvectors of the loss Hessian or GGN, as in
LLA) show the sharpest directions of the landscape and are the recommended picture when BatchNorm makes
filter-normalised ones misleading. Trajectory PCA (Li et al. 2018, Sec. 7) takes the top right singular vectors of
the matrix of deviations ``w_t - w`` of training checkpoints from the final point, so that an optimisation path,
which lies almost entirely in a very low-dimensional subspace, can be drawn on the surface.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from landscape import reductions
from landscape._checks import Seed, check_int, seed_int
from landscape.checkpoint import CheckpointError, extract_state_dict
from landscape.linalg import top_eigen
from landscape.operators import ggn, hessian
from landscape.problem import Problem

IGNORE = ("biasbn", "copy")
EPS = 1e-10
OPERATORS = ("hessian", "ggn")
# Names of ``hessian_axes(which=...)`` and the matching ``top_eigen(which=...)``.
WHICH = {"largest": "LA", "smallest": "SA", "magnitude": "LM"}
SIGN_CONVENTION = "largest-magnitude entry positive"

Checkpoint = nn.Module | Mapping[str, Tensor] | Tensor


@dataclass(frozen=True)
class Directions:
    """Flat directions in the Problem's parameter order, with how they were made.

    Attributes
    ----------
    vectors
        Tensor of shape ``(num, num_params)``; row ``k`` is direction ``k`` (axis ``k`` of a surface).
    kind
        ``"random"``, ``"filter_normalized"``, ``"layer_normalized"``, ``"model_normalized"``, ``"hessian_axes"``,
        ``"pca"``, ``"user"`` or ``"interpolation"``.
    seed
        The int seed they were drawn with, or ``None`` when not random.
    settings
        The remaining options (normalisation, parameter names, ...).
    """

    vectors: Tensor
    kind: str
    seed: int | None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def num(self) -> int:
        """Number of directions (dimension of the surface)."""
        return int(self.vectors.shape[0])

    def __len__(self) -> int:
        return self.num


def _gaussian(
    problem: Problem,
    num: int,
    seed: int,
    rescale: Callable[[Tensor, Tensor], None] | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """``(num, num_params)`` Gaussian directions, each parameter's piece rescaled in place by ``rescale(w, d)``.

    Drawn in float64 on the CPU (so they do not depend on the problem's dtype or device), direction by direction
    and parameter by parameter from one local generator: direction ``k`` is the same whatever ``num`` is. Every
    draw goes into one float64 buffer of the largest parameter's size, reused, and is cast straight into its slice
    of the one output block, where ``rescale`` works in place: the block and that buffer are all that is allocated
    (a fresh draw, cast and rescaled copy per parameter left ~25-60 MB of freed heap in the process on ResNet-18,
    which a loss surface then paid in peak RSS; the dict-then-flatten-then-stack before that held up to seven
    vectors at once, 3.5 GB on GPT-2 small). The weights are the model's own (no copy). Stored in another
    ``dtype`` than the problem's, each piece is made in the problem's dtype in one more reused buffer, then rounded
    into the block.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    weights = problem.params_dict(share=True)
    storage = problem.dtype if dtype is None else dtype
    out = torch.empty(num, problem.num_params, dtype=storage, device=problem.device)
    largest = max(problem.param_numels)
    draw = torch.empty(largest, dtype=torch.float64)
    work = None if storage == problem.dtype else torch.empty(largest, dtype=problem.dtype, device=problem.device)
    for row in out:
        offset = 0
        for name, shape, numel in zip(problem.param_names, problem.param_shapes, problem.param_numels, strict=True):
            d = torch.randn(shape, generator=gen, dtype=torch.float64, out=draw[:numel].view(shape))
            stored = row[offset : offset + numel].view(shape)
            piece = stored if work is None else work[:numel].view(shape)
            piece.copy_(d)
            if rescale is not None:
                rescale(weights[name], piece)
            if work is not None:
                stored.copy_(piece)
            offset += numel
    return out


def _storage(problem: Problem, dtype: torch.dtype | None) -> dict[str, Any]:
    """``dtype`` checked as the storage dtype of drawn directions: the settings it adds (none for the default)."""
    if dtype is None or dtype == problem.dtype:
        return {}
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype (e.g. torch.bfloat16) or None, got {dtype!r}")
    return {"dtype": str(dtype).removeprefix("torch.")}


def _base_settings(problem: Problem, **options: Any) -> dict[str, Any]:
    """The settings every :class:`Directions` records (the parameters' names and count), then ``options``."""
    return {"params": list(problem.param_names), "num_params": problem.num_params, **options}


def _checked(num: int, seed: Seed) -> tuple[int, int]:
    """``num`` checked as a number of directions, and ``seed`` as the int of the local generator (:func:`seed_int`)."""
    return check_int("num", num, 1, "number of directions"), seed_int(seed)


def _drawn(
    problem: Problem,
    num: int,
    seed: int,
    kind: str,
    rescale: Callable[[Tensor, Tensor], None] | None = None,
    dtype: torch.dtype | None = None,
    **options: Any,
) -> Directions:
    """:func:`_gaussian` directions of ``kind`` stored in ``dtype``, with the base settings and ``options``."""
    stored = _storage(problem, dtype)
    vectors = _gaussian(problem, num, seed, rescale, dtype)
    return Directions(vectors, kind, seed, _base_settings(problem, **options, **stored))


_DTYPE_DOC = """dtype : torch.dtype, optional
        Storage dtype of the vectors (default the problem's). ``torch.bfloat16`` (or ``torch.float16``) halves
        their memory on a float32 problem: every entry is made in the problem's dtype, then rounded to 8 (11)
        significant bits, so the direction is another random direction normalised to within that rounding; a
        surface adds it to the weights in the problem's dtype without a wider copy (a 2D surface of ResNet-18
        then holds 45 MB of directions instead of 90 MB)."""


def _documents_dtype(fn: Callable[..., Directions]) -> Callable[..., Directions]:
    """Append the shared ``dtype`` parameter to the docstring of a drawing constructor (its last parameter)."""
    if fn.__doc__ is not None:  # None under python -OO
        fn.__doc__ = f"{fn.__doc__.rstrip()}\n    {_DTYPE_DOC}\n    "
    return fn


@_documents_dtype
def random(problem: Problem, num: int = 2, *, seed: Seed = 0, dtype: torch.dtype | None = None) -> Directions:
    """Plain Gaussian directions ``d ~ N(0, I)`` (not normalised; scale-dependent pictures).

    Parameters
    ----------
    problem : Problem
        Its selected parameters define the space.
    num : int
        Number of directions (1 for a curve, 2 for a surface).
    seed : int or torch.Generator
        Seed of a local generator (a Generator gives one int drawn from it); the global RNG is untouched.
    """
    num, seed = _checked(num, seed)
    return _drawn(problem, num, seed, "random", dtype=dtype, normalization=None)


@_documents_dtype
def filter_normalized(
    problem: Problem, num: int = 2, *, seed: Seed = 0, ignore: str = "biasbn", dtype: torch.dtype | None = None
) -> Directions:
    """Filter-normalised Gaussian directions (Li et al. 2018).

    ``d ~ N(0, I)`` per tensor; for each slice ``i`` along dim 0 of a tensor with dim > 1,
    ``d_i <- d_i ||w_i|| / (||d_i|| + 1e-10)``. Tensors with dim <= 1 (biases, BatchNorm weights) are set to
    zero (``ignore="biasbn"``, the paper's default) or to a copy of ``w`` (``ignore="copy"``).

    Parameters
    ----------
    problem : Problem
    num : int
        Number of directions.
    seed : int or torch.Generator
        Seed of a local generator; the same seed gives the same raw Gaussian draws as :func:`random`.
    ignore : {"biasbn", "copy"}
        What to do with tensors of dim <= 1.
    """
    num, seed = _checked(num, seed)
    if ignore not in IGNORE:
        raise ValueError(f"ignore must be one of {IGNORE}, got {ignore!r}")

    def per_filter(w: Tensor, d: Tensor) -> None:
        if w.dim() <= 1:
            d.zero_() if ignore == "biasbn" else d.copy_(w)
            return
        w_norms = w.reshape(w.shape[0], -1).norm(dim=1)
        d_norms = d.reshape(w.shape[0], -1).norm(dim=1)
        d.mul_((w_norms / (d_norms + EPS)).reshape(-1, *([1] * (w.dim() - 1))))

    return _drawn(problem, num, seed, "filter_normalized", per_filter, dtype, normalization="filter", ignore=ignore)


@_documents_dtype
def layer_normalized(problem: Problem, num: int = 2, *, seed: Seed = 0, dtype: torch.dtype | None = None) -> Directions:
    """Layer-normalised Gaussian directions: per parameter tensor, ``d <- d ||w|| / (||d|| + 1e-10)``.

    Coarser than filter normalisation (one scale per tensor, biases included); invariant to rescaling a whole layer.

    Parameters
    ----------
    problem : Problem
        Its selected parameters define the space; the norm of each tensor scales that tensor's piece.
    num : int
        Number of directions.
    seed : int or torch.Generator
        Seed of a local generator; the same seed gives the same raw Gaussian draws as :func:`random`.
    """
    num, seed = _checked(num, seed)

    def per_layer(w: Tensor, d: Tensor) -> None:
        d.mul_(reductions.norm(w) / (reductions.norm(d) + EPS))

    return _drawn(problem, num, seed, "layer_normalized", per_layer, dtype, normalization="layer")


@_documents_dtype
def model_normalized(problem: Problem, num: int = 2, *, seed: Seed = 0, dtype: torch.dtype | None = None) -> Directions:
    """Gaussian directions rescaled as a whole to the norm of the selected weights: ``d <- d ||w|| / ||d||``.

    The coarsest normalisation (one scale for the whole model): a step of size 1 along ``d`` moves the weights by
    ``||w||``, so spans are relative to the model's size, but the picture is not invariant to rescaling single
    layers (use :func:`filter_normalized` for that). Direction ``k`` is direction ``k`` of :func:`random` with the
    same seed, times a positive factor.

    Parameters
    ----------
    problem : Problem
        Its selected parameters define the space; their norm ``||w||`` (nonzero) is the length of every direction.
    num : int
        Number of directions.
    seed : int or torch.Generator
        Seed of a local generator.
    """
    num, seed = _checked(num, seed)
    w_norm = reductions.norm(problem.params_vector())
    if not w_norm > 0:
        raise ValueError(
            "the selected weights are all zero, so model-normalised directions would be zero: use random() "
            "or from_vectors() instead"
        )
    directions = _drawn(problem, num, seed, "model_normalized", dtype=dtype, normalization="model", weights_norm=w_norm)
    norms = reductions.sum_of_squares(directions.vectors, 1).sqrt_()
    directions.vectors.mul_((w_norm / norms).to(problem.dtype).unsqueeze(1))  # the scale in the problem's precision
    return directions


def from_vectors(problem: Problem, vectors: Tensor | Sequence[Tensor] | Sequence[dict[str, Tensor]]) -> Directions:
    """User-given directions, checked against the Problem's parameters.

    Parameters
    ----------
    problem : Problem
    vectors : Tensor or sequence
        A flat ``(num_params,)`` vector, a ``(num, num_params)`` block, a sequence of flat vectors, or a sequence of
        dicts ``{name: tensor}`` with one entry of the right shape per selected parameter.
    """
    if isinstance(vectors, Tensor):
        block = vectors.unsqueeze(0) if vectors.ndim == 1 else vectors
        if block.ndim != 2:
            raise ValueError(f"vectors must be (num_params,) or (num, num_params), got shape {tuple(vectors.shape)}")
    else:
        rows = list(vectors)
        if not rows:
            raise ValueError("vectors is empty: give at least one direction")
        flat = []
        for k, v in enumerate(rows):
            if isinstance(v, dict):
                missing = [n for n in problem.param_names if n not in v]
                extra = [n for n in v if n not in problem.param_names]
                if missing or extra:
                    raise ValueError(f"direction {k}: missing parameters {missing[:5]}, unknown parameters {extra[:5]}")
                for n, s in zip(problem.param_names, problem.param_shapes, strict=True):
                    if tuple(v[n].shape) != s:
                        raise ValueError(f"direction {k}: {n!r} has shape {tuple(v[n].shape)}, the parameter has {s}")
                v = problem.flatten({n: v[n].to(device=problem.device, dtype=problem.dtype) for n in v})
            elif not isinstance(v, Tensor) or v.ndim != 1:
                raise ValueError(f"direction {k} must be a flat tensor or a dict of tensors, got {type(v).__name__}")
            flat.append(v.to(device=problem.device, dtype=problem.dtype))
        sizes = {v.shape[0] for v in flat}
        if len(sizes) != 1:
            raise ValueError(f"directions have different lengths {sorted(sizes)}; the problem has {problem.num_params}")
        block = torch.stack(flat)
    if block.shape[0] < 1:
        raise ValueError("vectors has no rows: give at least one direction")
    if block.shape[1] != problem.num_params:
        raise ValueError(
            f"directions have {block.shape[1]} entries, the problem has {problem.num_params} selected parameters"
        )
    block = block.detach().to(device=problem.device, dtype=problem.dtype).clone()
    if not bool(torch.isfinite(block).all()):
        raise ValueError("vectors contain NaN or inf")
    return Directions(block, "user", None, _base_settings(problem, normalization=None))


def _orient(vectors: Tensor) -> Tensor:
    """Flip the sign of each row so that its entry of largest magnitude (the first one on ties) is positive.

    Eigenvectors and singular vectors are defined up to sign; this makes the directions reproducible.
    """
    idx = vectors.abs().argmax(dim=1, keepdim=True)
    signs = torch.sign(vectors.gather(1, idx))
    return vectors * torch.where(signs == 0, torch.ones_like(signs), signs)


def hessian_axes(
    problem: Problem,
    k: int = 2,
    *,
    operator: str = "hessian",
    seed: Seed = 0,
    tol: float = 1e-6,
    which: str = "largest",
    max_matvecs: int | None = None,
) -> Directions:
    """Top-``k`` eigenvectors of the loss Hessian (or GGN) as unit directions.

    ``H v_i = lambda_i v_i``, ``||v_i|| = 1``, found by Lanczos with full reorthogonalisation
    (:func:`landscape.top_eigen`); direction ``i`` belongs to the ``i``-th most extreme eigenvalue. Along these
    axes the surface is ``L(w + a v_i) ~ L(w) + a g.v_i + lambda_i a^2 / 2`` near ``w``: the sharpest (or
    flattest, with ``which="smallest"``) picture of the landscape. Unlike Gaussian directions they do not depend
    on the scale of individual filters, which makes them the recommended axes when BatchNorm makes
    filter-normalised pictures misleading (LLA). Being unit vectors, the span is in absolute parameter units
    (a span of ``c / sqrt(lambda_1)`` raises a quadratic model by ``c^2 / 2``). Each vector's sign is fixed so that
    its entry of largest magnitude is positive.

    Parameters
    ----------
    problem : Problem
    k : int
        Number of directions (eigenpairs).
    operator : {"hessian", "ggn"}
        Curvature matrix: the exact Hessian or the generalised Gauss-Newton matrix.
    seed : int or torch.Generator
        Seed of the Lanczos start vector.
    tol : float
        Relative Ritz residual tolerance of :func:`landscape.top_eigen`: ``||H v - lambda v|| <= tol * ||H||``.
    which : {"largest", "smallest", "magnitude"}
        Largest algebraic, smallest algebraic (most negative) or largest-magnitude eigenvalues.
    max_matvecs : int, optional
        Budget of Hessian-vector products (default that of :func:`landscape.top_eigen`).

    Returns
    -------
    Directions
        ``settings`` records ``eigenvalues``, Ritz ``residuals``, ``error_bounds``, ``converged`` and
        ``num_matvecs`` besides the options.
    """
    k = check_int("k", k, 1, "number of directions")
    seed = seed_int(seed)
    if operator not in OPERATORS:
        raise ValueError(f"operator must be one of {OPERATORS}, got {operator!r}")
    if which not in WHICH:
        raise ValueError(f"which must be one of {tuple(WHICH)}, got {which!r}")
    if k > problem.num_params:
        raise ValueError(f"k={k} eigenvectors requested, but the problem has only {problem.num_params} parameters")
    op = hessian(problem) if operator == "hessian" else ggn(problem)
    result = top_eigen(op, k, which=WHICH[which], tol=tol, max_matvecs=max_matvecs, seed=seed)
    # The operator works in the problem's parameter order; normalise in float64 before casting to its dtype.
    vectors = result.vectors.T.to(device=problem.device, dtype=torch.float64)
    vectors = _orient(vectors / vectors.norm(dim=1, keepdim=True)).to(problem.dtype)
    settings = {
        **_base_settings(problem),
        "normalization": "unit",
        "operator": operator,
        "which": which,
        "tol": float(tol),
        "max_matvecs": max_matvecs,
        "method": result.method,
        "eigenvalues": [float(v) for v in result.values],
        "residuals": [float(r) for r in result.residuals],
        "error_bounds": [float(b) for b in result.error_bounds],
        "converged": [bool(c) for c in result.converged],
        "num_matvecs": int(result.num_matvecs),
        "sign": SIGN_CONVENTION,
    }
    return Directions(vectors, "hessian_axes", seed, settings)


def _checkpoint_state(item: nn.Module | Mapping, index: int, names: list[str]) -> Mapping:
    if isinstance(item, nn.Module):
        return item.state_dict()
    if all(n in item for n in names):
        return item
    # A training-script layout ({"model_state_dict": ...}, "module." prefixes): look inside it.
    try:
        return extract_state_dict(item)
    except CheckpointError as err:
        raise ValueError(f"checkpoint {index}: {err}") from None


def flat_checkpoints(problem: Problem, checkpoints: Sequence[Checkpoint] | Tensor) -> Tensor:
    """The selected parameters of each checkpoint as rows of a ``(T, num_params)`` float64 tensor.

    Parameters
    ----------
    problem : Problem
        Its selected parameter names, shapes and order define the rows.
    checkpoints : sequence, or a ``(T, num_params)`` tensor or array
        Each item is an ``nn.Module`` of the same architecture, a state dict ``{name: tensor}`` (also inside a
        training-script layout, see :func:`landscape.extract_state_dict`; only the selected names are read) or a
        flat tensor of length ``num_params`` in the Problem's order. Nothing is modified.

    Raises
    ------
    ValueError
        Empty input, a missing parameter, a wrong shape or length, or NaN/inf, naming the checkpoint.
    TypeError
        A single checkpoint instead of a sequence, or an item of an unsupported type.
    """
    if isinstance(checkpoints, (nn.Module, Mapping)) or (
        isinstance(checkpoints, (Tensor, np.ndarray)) and checkpoints.ndim != 2
    ):
        raise TypeError(
            f"checkpoints must be a sequence of checkpoints (modules, state dicts or flat tensors) or a "
            f"(T, num_params) tensor, got a single {type(checkpoints).__name__}"
            + (f" of shape {tuple(checkpoints.shape)}" if isinstance(checkpoints, (Tensor, np.ndarray)) else "")
            + ": wrap it in a list"
        )
    items = list(checkpoints)
    if not items:
        raise ValueError("checkpoints is empty: give at least one checkpoint")
    names = problem.param_names
    rows = []
    for t, item in enumerate(items):
        if isinstance(item, np.ndarray):
            item = torch.from_numpy(item)
        if isinstance(item, Tensor):
            if item.ndim != 1 or item.shape[0] != problem.num_params:
                raise ValueError(
                    f"checkpoint {t} is a tensor of shape {tuple(item.shape)}; a flat checkpoint must have shape "
                    f"({problem.num_params},), the number of selected parameters"
                )
            flat = item.detach()
        elif isinstance(item, (nn.Module, Mapping)):
            state = _checkpoint_state(item, t, names)
            missing = [n for n in names if n not in state]
            if missing:
                raise ValueError(
                    f"checkpoint {t} lacks {len(missing)} selected parameter(s): {missing[:5]}; it has "
                    f"{list(state)[:5]}{' ...' if len(state) > 5 else ''}"
                )
            parts = []
            for n, shape in zip(names, problem.param_shapes, strict=True):
                value = state[n]
                if not isinstance(value, Tensor):
                    raise TypeError(f"checkpoint {t}: {n!r} is a {type(value).__name__}, not a tensor")
                if tuple(value.shape) != shape:
                    raise ValueError(
                        f"checkpoint {t}: {n!r} has shape {tuple(value.shape)}, the parameter has {shape} "
                        "(a different architecture?)"
                    )
                parts.append(value.detach().reshape(-1).to(device=problem.device, dtype=torch.float64))
            flat = torch.cat(parts)
        else:
            raise TypeError(
                f"checkpoint {t} is a {type(item).__name__}; expected an nn.Module, a state dict or a flat tensor"
            )
        flat = flat.to(device=problem.device, dtype=torch.float64)
        if not bool(torch.isfinite(flat).all()):
            raise ValueError(f"checkpoint {t} contains NaN or inf in the selected parameters")
        rows.append(flat)
    return torch.stack(rows)


def pca_from_points(problem: Problem, points: Tensor, num: int) -> Directions:
    """:func:`pca` on checkpoints already flattened by :func:`flat_checkpoints` (``(T, num_params)`` float64)."""
    num = check_int("num", num, 1, "number of directions")
    deviations = points - problem.params_vector().to(torch.float64)
    count, n = deviations.shape
    if count < num:
        raise ValueError(f"pca with num={num} needs at least {num} checkpoints, got {count}")
    _, s, vh = torch.linalg.svd(deviations, full_matrices=False)
    # Numerical rank as in numpy.linalg.matrix_rank: singular values below this are rounding, not a direction.
    threshold = float(s[0]) * max(count, n) * torch.finfo(torch.float64).eps
    rank = int((s > threshold).sum()) if float(s[0]) > 0 else 0
    if rank < num:
        raise ValueError(
            f"pca with num={num} needs {num} linearly independent deviations w_t - w from the current parameters, "
            f"but the {count} checkpoints span only {rank} dimension(s) (identical checkpoints, or checkpoints "
            "equal to the current parameters?): give more distinct checkpoints or lower num"
        )
    total = float((s**2).sum())
    vectors = _orient(vh[:num]).to(device=problem.device, dtype=problem.dtype)
    settings = {
        **_base_settings(problem),
        "normalization": "unit",
        "num_checkpoints": count,
        "rank": rank,
        "singular_values": [float(v) for v in s],
        "explained_variance": [float(v) ** 2 / total for v in s[:num]],
        "centered": False,
        "sign": SIGN_CONVENTION,
    }
    return Directions(vectors, "pca", None, settings)


def pca(problem: Problem, checkpoints: Sequence[Checkpoint] | Tensor, *, num: int = 2) -> Directions:
    """Principal directions of an optimisation trajectory around its final point (Li et al. 2018, Sec. 7).

    With ``w`` the Problem's current parameters (the final point) and ``w_t`` the checkpoints, the rows of
    ``M = [w_1 - w; ...; w_T - w]`` are decomposed as ``M = U diag(s) V^T`` (float64 SVD); the directions are
    the top-``num`` right singular vectors ``v_1, ..., v_num`` (unit norm, orthonormal; sign fixed so the entry of
    largest magnitude is positive). ``M`` is not mean-centred: the picture is centred at the final point, so the
    axes capture the deviations from it. Component ``i`` explains the fraction ``s_i^2 / sum_j s_j^2`` of the
    total squared deviation ``||M||_F^2``, the number to put in the axis labels.

    Parameters
    ----------
    problem : Problem
        ``w`` and the parameter space.
    checkpoints : sequence, or a ``(T, num_params)`` tensor
        ``nn.Module`` s of the same architecture, state dicts or flat tensors (see :func:`flat_checkpoints`).
        A checkpoint equal to ``w`` is allowed and contributes nothing.
    num : int
        Number of components (directions).

    Returns
    -------
    Directions
        ``settings`` holds ``explained_variance`` (``num`` floats), all ``singular_values``, ``num_checkpoints``
        and the numerical ``rank`` of ``M``.

    Raises
    ------
    ValueError
        Fewer than ``num`` linearly independent deviations, or checkpoints that do not fit the Problem.
    """
    return pca_from_points(problem, flat_checkpoints(problem, checkpoints), num)
