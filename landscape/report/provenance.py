"""Where a report's numbers came from: model and data hashes, seeds, library versions, settings, wall times.

The model hash is the cache's content key (:func:`landscape.cache.content_key`) of the full ``state_dict``
(parameters and buffers, with dtypes and shapes) and the model's ``repr``; the data hash is
:meth:`Problem.data_fingerprint`. Two reports with the same hashes were computed on the same weights and data.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import platform
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from landscape._json import field_dict
from landscape._version import __version__
from landscape.cache import content_key
from landscape.problem import Problem

MODE_POLICIES = {
    "eval": "eval mode: BatchNorm normalises with its running statistics, dropout is off",
    "train": "train mode: BatchNorm normalises with batch statistics, dropout is active",
}
_VERSIONED = ("torch", "numpy", "scipy", "plotly", "h5py")


@dataclass(frozen=True)
class Provenance:
    """What a report was computed on and with.

    Attributes
    ----------
    model_hash
        sha256 over the model's ``state_dict`` (bytes, dtypes, shapes) and its ``repr``; ``None`` without a model.
    data_fingerprint
        :meth:`Problem.data_fingerprint` of the data as given; ``None`` without a Problem.
    model
        Class name of the model, or a user-supplied description (``--model`` spec).
    num_params, num_samples
        Parameters analysed and examples in the data.
    mode, mode_policy
        The Problem's BatchNorm/dropout policy and what it means.
    batchnorm_layers, dropout_layers
        Number of BatchNorm and dropout modules in the model (whether the policy matters at all).
    dtype, device
        Evaluation dtype and device.
    seeds
        Name -> seed of every stochastic step.
    versions
        Python, landscape, torch, numpy, scipy, plotly, h5py.
    settings
        Every option of the run (JSON-able).
    wall_times
        Step name -> seconds.
    created
        UTC time stamp (ISO 8601).
    """

    model_hash: str | None
    data_fingerprint: str | None
    model: str
    num_params: int | None
    num_samples: int | None
    mode: str | None
    mode_policy: str
    batchnorm_layers: int | None
    dropout_layers: int | None
    dtype: str | None
    device: str | None
    seeds: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    wall_times: dict[str, float] = field(default_factory=dict)
    created: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (the dicts copied)."""
        return {name: dict(v) if isinstance(v, dict) else v for name, v in field_dict(self).items()}


def library_versions() -> dict[str, str]:
    """Versions of Python, landscape and the numerical libraries a result depends on."""
    versions = {"python": platform.python_version(), "landscape": __version__}
    for name in _VERSIONED:
        try:
            # The module's own version string (torch's names its build, e.g. "+cpu"); metadata if it has none.
            versions[name] = str(
                getattr(importlib.import_module(name), "__version__", None) or importlib.metadata.version(name)
            )
        except (ImportError, importlib.metadata.PackageNotFoundError):
            versions[name] = "not installed"
    return versions


def model_hash(model: nn.Module) -> str:
    """Content hash of a model's weights and buffers (and ``repr``): the cache's key function, no data, no config."""
    state = {name: t for name, t in model.state_dict().items()}
    return content_key(params=state, data_fingerprint="", config={"model": repr(model)})


def _count(model: nn.Module, kinds: tuple[type, ...]) -> int:
    return sum(isinstance(m, kinds) for m in model.modules())


def collect_provenance(
    problem: Problem | None = None,
    *,
    model: str | None = None,
    seeds: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
    wall_times: dict[str, float] | None = None,
) -> Provenance:
    """The :class:`Provenance` of results computed on ``problem``.

    Parameters
    ----------
    problem : Problem, optional
        Hashed (weights, buffers, data) and described (mode policy, dtype, device, sizes); without it only versions,
        seeds, settings and wall times are recorded.
    model : str, optional
        How the model was specified (default: its class name).
    seeds, settings, wall_times : dict, optional
        Recorded as given.
    """
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    common = {
        "seeds": dict(seeds or {}),
        "versions": library_versions(),
        "settings": dict(settings or {}),
        "wall_times": {k: float(v) for k, v in (wall_times or {}).items()},
        "created": created,
    }
    if problem is None:
        return Provenance(
            None, None, model or "not recorded", None, None, None, "not recorded", None, None, None, None, **common
        )
    net = problem.model
    norms = (nn.modules.batchnorm._BatchNorm,)
    dropouts = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
    return Provenance(
        model_hash=model_hash(net),
        data_fingerprint=problem.data_fingerprint(),
        model=model or type(net).__name__,
        num_params=int(problem.num_params),
        num_samples=int(problem.num_samples),
        mode=problem.mode,
        mode_policy=MODE_POLICIES.get(problem.mode, problem.mode),
        batchnorm_layers=_count(net, norms),
        dropout_layers=_count(net, dropouts),
        dtype=str(problem.dtype).replace("torch.", ""),
        device=str(problem.device),
        **common,
    )
