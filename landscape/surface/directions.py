"""Directions in parameter space along which a loss surface is drawn.

A direction is a flat vector in the order of the Problem's selected parameters. Random Gaussian directions are
scale-blind: a network whose layers are rescaled without changing its function (ReLU, BatchNorm) gets a different
picture. Filter normalisation (Li, Xu, Taylor, Studer, Goldstein 2018, "Visualizing the Loss Landscape of Neural
Nets") rescales each filter of a Gaussian direction to the norm of the matching filter of the weights,

    d_i <- d_i ||w_i|| / (||d_i|| + 1e-10)        for every slice i along dim 0 of a tensor with dim > 1,

which makes the surface invariant to such rescalings. Every direction is drawn from a local ``torch.Generator``
seeded explicitly: the global RNG is never touched and the same seed gives the same directions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from landscape.problem import Problem

IGNORE = ("biasbn", "copy")
EPS = 1e-10


@dataclass(frozen=True)
class Directions:
    """Flat directions in the Problem's parameter order, with how they were made.

    Attributes
    ----------
    vectors
        Tensor of shape ``(num, num_params)``; row ``k`` is direction ``k`` (axis ``k`` of a surface).
    kind
        ``"random"``, ``"filter_normalized"``, ``"layer_normalized"``, ``"user"`` or ``"interpolation"``.
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


def _check_num_seed(num: int, seed: int) -> None:
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"num must be a positive int (number of directions), got {num!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")


def _gaussian(problem: Problem, num: int, seed: int) -> list[dict[str, Tensor]]:
    """``num`` Gaussian directions as dicts; direction k is the same whatever ``num`` is (drawn in order)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out = []
    for _ in range(num):
        # Drawn in float64 on the CPU so the directions do not depend on the problem's dtype or device.
        out.append(
            {
                name: torch.randn(shape, generator=gen, dtype=torch.float64).to(problem.device, problem.dtype)
                for name, shape in zip(problem.param_names, problem.param_shapes, strict=True)
            }
        )
    return out


def _stack(problem: Problem, dicts: list[dict[str, Tensor]]) -> Tensor:
    return torch.stack([problem.flatten(d) for d in dicts])


def _base_settings(problem: Problem) -> dict[str, Any]:
    return {"params": list(problem.param_names), "num_params": problem.num_params}


def random(problem: Problem, num: int = 2, *, seed: int = 0) -> Directions:
    """Plain Gaussian directions ``d ~ N(0, I)`` (not normalised; scale-dependent pictures).

    Parameters
    ----------
    problem : Problem
        Its selected parameters define the space.
    num : int
        Number of directions (1 for a curve, 2 for a surface).
    seed : int
        Seed of a local generator; the global RNG is untouched.
    """
    _check_num_seed(num, seed)
    vectors = _stack(problem, _gaussian(problem, num, seed))
    return Directions(vectors, "random", seed, {**_base_settings(problem), "normalization": None})


def filter_normalized(problem: Problem, num: int = 2, *, seed: int = 0, ignore: str = "biasbn") -> Directions:
    """Filter-normalised Gaussian directions (Li et al. 2018).

    ``d ~ N(0, I)`` per tensor; for each slice ``i`` along dim 0 of a tensor with dim > 1,
    ``d_i <- d_i ||w_i|| / (||d_i|| + 1e-10)``. Tensors with dim <= 1 (biases, BatchNorm weights) are set to
    zero (``ignore="biasbn"``, the paper's default) or to a copy of ``w`` (``ignore="copy"``).

    Parameters
    ----------
    problem : Problem
    num : int
        Number of directions.
    seed : int
        Seed of a local generator; the same seed gives the same raw Gaussian draws as :func:`random`.
    ignore : {"biasbn", "copy"}
        What to do with tensors of dim <= 1.
    """
    _check_num_seed(num, seed)
    if ignore not in IGNORE:
        raise ValueError(f"ignore must be one of {IGNORE}, got {ignore!r}")
    weights = problem.params_dict()
    dicts = _gaussian(problem, num, seed)
    for d in dicts:
        for name, w in weights.items():
            if w.dim() <= 1:
                d[name] = torch.zeros_like(w) if ignore == "biasbn" else w.clone()
                continue
            w_norms = w.reshape(w.shape[0], -1).norm(dim=1)
            d_norms = d[name].reshape(w.shape[0], -1).norm(dim=1)
            scale = (w_norms / (d_norms + EPS)).reshape(-1, *([1] * (w.dim() - 1)))
            d[name] = d[name] * scale
    settings = {**_base_settings(problem), "normalization": "filter", "ignore": ignore}
    return Directions(_stack(problem, dicts), "filter_normalized", seed, settings)


def layer_normalized(problem: Problem, num: int = 2, *, seed: int = 0) -> Directions:
    """Layer-normalised Gaussian directions: per parameter tensor, ``d <- d ||w|| / (||d|| + 1e-10)``.

    Coarser than filter normalisation (one scale per tensor, biases included); invariant to rescaling a whole layer.

    Parameters
    ----------
    problem : Problem
    num : int
        Number of directions.
    seed : int
        Seed of a local generator.
    """
    _check_num_seed(num, seed)
    weights = problem.params_dict()
    dicts = _gaussian(problem, num, seed)
    for d in dicts:
        for name, w in weights.items():
            d[name] = d[name] * (w.norm() / (d[name].norm() + EPS))
    settings = {**_base_settings(problem), "normalization": "layer"}
    return Directions(_stack(problem, dicts), "layer_normalized", seed, settings)


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
    return Directions(block, "user", None, {**_base_settings(problem), "normalization": None})
