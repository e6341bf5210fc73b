"""Shared tiny problems with exact float64 references built independently of landscape with torch.func."""

from __future__ import annotations

import copy
import importlib
import os
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torch.func import functional_call


@dataclass
class Case:
    name: str
    model: nn.Module
    loss_fn: nn.Module
    X: torch.Tensor
    y: torch.Tensor
    batch_size: int
    mode: str = "eval"
    params: list[str] | None = None

    def batches(self):
        return list(zip(torch.split(self.X, self.batch_size), torch.split(self.y, self.batch_size), strict=True))

    def selected(self) -> list[str]:
        if self.params is None:
            return [n for n, p in self.model.named_parameters() if p.requires_grad]
        import fnmatch

        return [n for n, _ in self.model.named_parameters() if any(fnmatch.fnmatchcase(n, p) for p in self.params)]


# CI installs the optional backends (BackPACK, transformers, safetensors) and sets LANDSCAPE_REQUIRE_OPTIONAL=1: there
# a test that would skip because one of them does not import fails instead, so a broken install cannot hide behind
# skips. Elsewhere importorskip skips as usual.
if os.environ.get("LANDSCAPE_REQUIRE_OPTIONAL") == "1":
    _importorskip = pytest.importorskip

    def _import_or_fail(modname: str, minversion: str | None = None, reason: str | None = None, **kw):
        try:
            importlib.import_module(modname)
        except ImportError as err:
            pytest.fail(
                f"LANDSCAPE_REQUIRE_OPTIONAL=1 but the optional module {modname!r} does not import ({err}): "
                "the CI install of this backend failed",
                pytrace=False,
            )
        return _importorskip(modname, minversion=minversion, reason=reason, **kw)

    pytest.importorskip = _import_or_fail


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _init(model: nn.Module, seed: int) -> nn.Module:
    g = _gen(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g, dtype=b.dtype) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(1.0 + torch.rand(b.shape, generator=g, dtype=b.dtype))
    return model


def make_case(name: str) -> Case:
    g = _gen(123)
    if name in ("mlp", "mlp_subset", "mlp_frozen"):
        model = _init(nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double(), 1)
        X = torch.randn(27, 6, generator=g, dtype=torch.float64)
        y = torch.randint(0, 3, (27,), generator=g)
        params = ["2.*", "0.weight"] if name == "mlp_subset" else None
        if name == "mlp_frozen":
            model[0].bias.requires_grad_(False)
        return Case(name, model, nn.CrossEntropyLoss(), X, y, 10, params=params)
    if name == "mse":
        model = _init(nn.Sequential(nn.Linear(4, 6), nn.Softplus(), nn.Linear(6, 2)).double(), 2)
        X = torch.randn(19, 4, generator=g, dtype=torch.float64)
        y = torch.randn(19, 2, generator=g, dtype=torch.float64)
        return Case(name, model, nn.MSELoss(), X, y, 8)
    if name in ("cnn_bn_eval", "cnn_bn_train"):
        model = _init(
            nn.Sequential(
                nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 3 * 3, 3)
            ).double(),
            3,
        )
        X = torch.randn(21, 1, 5, 5, generator=g, dtype=torch.float64)
        y = torch.randint(0, 3, (21,), generator=g)
        return Case(name, model, nn.CrossEntropyLoss(), X, y, 8, mode="eval" if name.endswith("eval") else "train")
    raise KeyError(name)


CASES = ["mlp", "mlp_subset", "mlp_frozen", "mse", "cnn_bn_eval", "cnn_bn_train"]


def _flat_to_dict(case: Case, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    named = dict(case.model.named_parameters())
    out, i = {}, 0
    for n in case.selected():
        k = named[n].numel()
        out[n] = flat[i : i + k].view(named[n].shape)
        i += k
    return out


def reference_loss_fn(case: Case):
    """Full-data mean loss as a function of the flat selected parameters, written without landscape.

    Eval mode: one call on all the data (the mean over N samples, which the size-weighted batch mean must equal).
    Train mode: BatchNorm uses each batch's statistics, so the loss is the size-weighted sum over batches,
    evaluated on a copy of the model whose BatchNorm keeps no running statistics.
    """
    model = copy.deepcopy(case.model)
    if case.mode == "eval":
        model.eval()
        state = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        state = {k: v.detach() for k, v in state.items()}

        def f(flat):
            return case.loss_fn(functional_call(model, {**state, **_flat_to_dict(case, flat)}, (case.X,)), case.y)

        return f
    model.train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.track_running_stats = False
            m.running_mean = None
            m.running_var = None
    state = {k: v.detach() for k, v in model.named_parameters()}
    n = len(case.y)

    def f(flat):
        total = 0.0
        for xb, yb in case.batches():
            out = functional_call(model, {**state, **_flat_to_dict(case, flat)}, (xb,))
            total = total + len(yb) / n * case.loss_fn(out, yb)
        return total

    return f


def reference_point(case: Case) -> torch.Tensor:
    named = dict(case.model.named_parameters())
    return torch.cat([named[n].detach().reshape(-1) for n in case.selected()])


def reference_hessian(case: Case) -> torch.Tensor:
    """Dense float64 Hessian by ``torch.func.hessian``; in train mode by ``torch.autograd.functional.hessian``.

    ``torch.func``'s vmap-based Hessians of BatchNorm in training mode are wrong in torch 2.13 (8% off a
    finite-difference check, see tests/operators/test_operators.py), so that case uses plain double backward.
    """
    f, w = reference_loss_fn(case), reference_point(case)
    if case.mode == "train":
        return torch.autograd.functional.hessian(f, w)
    return torch.func.hessian(f)(w)


@pytest.fixture(params=CASES)
def case(request) -> Case:
    return make_case(request.param)
