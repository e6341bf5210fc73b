"""Exact diagonals of the Hessian and of the GGN by second-order backpropagation, where the architecture allows it.

For a network ``z_l = f_l(z_{l-1}, theta_l)`` the Hessian of a loss ``L`` with respect to the outputs of each layer
follows from the one above it (Hessian backpropagation; Dangel, Harmeling, Hennig 2020, "Modular block-diagonal
curvature approximations for feedforward architectures", AISTATS):

    d^2 L / dz_{l-1}^2 = J_l^T (d^2 L / dz_l^2) J_l + sum_k (d^2 z_{l,k} / dz_{l-1}^2) dL/dz_{l,k},

with ``J_l = dz_l / dz_{l-1}``, and ``d^2 L / dtheta_l^2 = J_theta^T (d^2 L / dz_l^2) J_theta`` for layers linear in
their parameters (Linear, convolutions). Keeping every ``d^2 L / dz^2`` as a sum of signed outer products
``sum_j s_j s_j^T`` (a symmetric factorisation of the loss Hessian w.r.t. the network outputs, plus one term per
nonlinear activation's second derivative), the diagonal is read off exactly as
``diag(d^2 L / dtheta^2) = sum_j sign_j (J_theta^T s_j)^2``: one backward pass whose width is the number of classes,
not the number of parameters. Dropping the activation terms gives the diagonal of the generalised Gauss-Newton
matrix ``G = J^T (d^2 L / df^2) J`` (Dangel, Kunstner, Hennig 2020, "BackPACK: Packing more into backprop", ICLR).

This module uses BackPACK's ``DiagHessian`` and ``DiagGGNExact`` extensions (``backpack-for-pytorch``, the optional
extra ``exact``). Install it with ``pip install --no-deps backpack-for-pytorch einops unfoldNd``: without
``--no-deps`` its torchvision requirement pulls in another torch build.

What is supported (checked before anything runs, then any error BackPACK raises is reported the same way):

- the loss: ``nn.CrossEntropyLoss`` (no class weights, integer targets, any label smoothing), ``nn.MSELoss`` (outputs
  ``(N, D)``), ``nn.BCEWithLogitsLoss`` (no weights, outputs ``(N, 1)``), or their functional forms
  ``F.cross_entropy`` / ``F.mse_loss`` / ``F.binary_cross_entropy_with_logits``; reduction ``"mean"`` or ``"sum"``.
- the model: its forward, traced by ``torch.fx`` (after BackPACK's converter turns ``torch.flatten``, ``x + y`` and
  ``c * x`` into modules), must consist of module calls only, each module called once. The Hessian diagonal needs a
  chain of ``Linear``, ``Conv1d/2d/3d``, ``ConvTranspose1d/2d/3d``, ``MaxPool1d/2d/3d``, ``AvgPool1d/2d/3d``,
  ``AdaptiveAvgPool1d/2d/3d``, ``ZeroPad2d``, ``Flatten``, ``Dropout`` (eval mode, or ``p = 0``), ``ReLU``,
  ``LeakyReLU``, ``ELU``, ``SELU``, ``Sigmoid``, ``Tanh``, ``LogSigmoid`` and ``Identity``; no BatchNorm, no
  branches. The GGN diagonal also allows ``BatchNorm1d/2d/3d`` in eval mode, ``Embedding`` and residual branches
  joined by ``+`` (``SumModule``).
- average pooling only in torch's default dtype (BackPACK 1.7 builds its Jacobian there; float64 problems with
  average pooling fall back).

BackPACK's ``extend`` registers hooks that break later ``torch.func`` transforms of a module, so it only ever sees
a private deep copy of the model (and of the loss) at the operator's point (one extra copy of the parameters in
memory); its hooks are removed afterwards. The user's model, its ``.grad`` fields, modes and hooks are never
touched.
"""

from __future__ import annotations

import contextlib
import copy
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from landscape.operators.base import CurvatureOperator
from landscape.operators.ggn import GGNOperator
from landscape.operators.hessian import HessianOperator
from landscape.problem import Problem, check_finite

INSTALL_HINT = "pip install --no-deps backpack-for-pytorch einops unfoldNd"

_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.SELU, nn.Sigmoid, nn.Tanh, nn.LogSigmoid)
_POOLS = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
)
_AVERAGE_POOLS = _POOLS[3:]
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

#: Module classes (exact types) through which the Hessian diagonal is exact.
HESSIAN_MODULES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    *_CONVS,
    *_POOLS,
    nn.ZeroPad2d,
    nn.Flatten,
    nn.Dropout,
    *_ACTIVATIONS,
)
#: Module classes through which the GGN diagonal is exact (BackPACK's own ``SumModule``/``ScaleModule`` are added
#: when it is installed: they are what its converter makes of ``x + y`` and ``c * x``).
GGN_MODULES: tuple[type[nn.Module], ...] = (*HESSIAN_MODULES, *_BATCHNORMS, nn.Embedding)
#: Losses with an exact second-order backpropagation.
LOSSES: tuple[type[nn.Module], ...] = (nn.CrossEntropyLoss, nn.MSELoss, nn.BCEWithLogitsLoss)

_FUNCTIONAL_LOSSES: dict[Callable, type[nn.Module]] = {
    nn.functional.cross_entropy: nn.CrossEntropyLoss,
    nn.functional.mse_loss: nn.MSELoss,
    nn.functional.binary_cross_entropy_with_logits: nn.BCEWithLogitsLoss,
}

# Messages BackPACK (or torch, about BackPACK's hooks) emits on supported inputs: noise for our purposes.
_QUIET = (
    "Full backward hook is firing when gradients are computed with respect to module outputs",
    "Encountered node that may break second-order extensions",
)


class ExactDiagonalUnavailable(ValueError):
    """The exact diagonal cannot be computed for this operator; ``reason`` says why in one sentence."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ExactDiagonal:
    """The exact diagonal of a curvature operator and how it was obtained.

    Attributes
    ----------
    value
        ``(n,)`` float64 tensor on the operator's device, in the order of ``problem.param_names``.
    curvature
        ``"hessian"`` or ``"ggn"``.
    extension
        The BackPACK extension that ran (``"DiagHessian"`` or ``"DiagGGNExact"``).
    backend
        ``"backpack-for-pytorch <version>"``.
    num_batches
        Backward passes (one per batch of the data).
    wall_time
        Seconds, including the private copy and the trace of the model.
    """

    value: Tensor
    curvature: str
    extension: str
    backend: str
    num_batches: int
    wall_time: float


@dataclass(frozen=True)
class ExactSupport:
    """Whether :func:`exact_diagonal` applies to an operator; ``reason`` says why (not) in one sentence."""

    supported: bool
    reason: str
    curvature: str | None = None

    def __bool__(self) -> bool:
        return self.supported


def _backpack():
    try:
        import backpack
    except ImportError:
        raise ExactDiagonalUnavailable(
            f"backpack-for-pytorch is not installed (optional extra 'exact': {INSTALL_HINT})"
        ) from None
    return backpack


def _curvature(op: CurvatureOperator) -> str:
    if isinstance(op, HessianOperator):
        return "hessian"
    if isinstance(op, GGNOperator):
        return "ggn"
    raise ExactDiagonalUnavailable(
        f"exact diagonals exist for hessian(problem) and ggn(problem) operators, not for {type(op).__name__}"
    )


def _loss_module(loss_fn: Callable) -> nn.Module:
    """A fresh copy of the loss as one of :data:`LOSSES` with its settings checked."""
    if loss_fn in _FUNCTIONAL_LOSSES:
        return _FUNCTIONAL_LOSSES[loss_fn]()
    if type(loss_fn) not in LOSSES:
        name = getattr(loss_fn, "__name__", type(loss_fn).__name__)
        raise ExactDiagonalUnavailable(
            f"the loss {name} has no exact second-order backpropagation (supported: "
            + ", ".join(c.__name__ for c in LOSSES)
            + ")"
        )
    if getattr(loss_fn, "weight", None) is not None or getattr(loss_fn, "pos_weight", None) is not None:
        raise ExactDiagonalUnavailable(f"{type(loss_fn).__name__} with class weights is not supported")
    return copy.deepcopy(loss_fn)


def _simplify(model: nn.Module) -> None:
    """Equivalent rewrites on the private copy: ``Identity`` -> empty ``Sequential`` (no module call for BackPACK to
    handle), in-place activations -> out-of-place (in-place outputs and backward hooks do not mix)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Identity:
                setattr(parent, name, nn.Sequential())
    for m in model.modules():
        if getattr(m, "inplace", False) is True:
            m.inplace = False


def _user_name(target: str) -> str:
    """The module's name in the user's model (the private copy is wrapped in a container named ``"0"``)."""
    if target == "0":
        return "<the model itself>"
    return target[2:] if target.startswith("0.") else target


def _check_module(m: nn.Module, name: str, allowed: tuple[type, ...], problem: Problem, curvature: str) -> None:
    kind = type(m)
    if kind not in allowed:
        if kind in _BATCHNORMS:
            raise ExactDiagonalUnavailable(
                f"module {name!r} is BatchNorm: its exact Hessian diagonal is not available (the GGN's is, in "
                "eval mode)"
            )
        if kind.__name__ == "SumModule":
            raise ExactDiagonalUnavailable(
                "the forward adds branches (x + y): the exact Hessian diagonal needs a chain of layers (the GGN's is "
                "available)"
            )
        if kind.__name__ == "ScaleModule":
            raise ExactDiagonalUnavailable(f"the forward scales by a constant ({name}): not supported for the Hessian")
        raise ExactDiagonalUnavailable(
            f"module {name!r} ({kind.__name__}) has no exact {curvature} diagonal backpropagation"
        )
    if kind in _BATCHNORMS:
        if problem.mode == "train":
            raise ExactDiagonalUnavailable(
                f"module {name!r} is BatchNorm in train mode: batch statistics couple the samples"
            )
        if not (m.affine and m.track_running_stats):
            raise ExactDiagonalUnavailable(f"module {name!r}: BatchNorm needs affine=True and track_running_stats=True")
    if kind is nn.Dropout and problem.mode == "train" and m.p > 0:
        raise ExactDiagonalUnavailable(f"module {name!r} is Dropout(p={m.p}) in train mode: the loss is random")
    if kind in _CONVS and (m.padding_mode != "zeros" or isinstance(m.padding, str)):
        raise ExactDiagonalUnavailable(
            f"module {name!r}: only numeric zero padding is supported (padding={m.padding!r}, "
            f"padding_mode={m.padding_mode!r})"
        )
    if kind in _AVERAGE_POOLS and problem.dtype != torch.get_default_dtype():
        raise ExactDiagonalUnavailable(
            f"module {name!r} is average pooling in {problem.dtype}: BackPACK 1.7 backpropagates through it only in "
            f"torch's default dtype ({torch.get_default_dtype()})"
        )
    if kind is nn.Embedding and (m.padding_idx is not None or m.max_norm is not None or m.sparse):
        raise ExactDiagonalUnavailable(f"module {name!r}: Embedding needs padding_idx=None, max_norm=None, dense")


@dataclass
class _Prepared:
    """The private, converted copy of the model and the loss, ready for BackPACK."""

    module: nn.Module
    loss: nn.Module
    params: dict[str, nn.Parameter]
    curvature: str


def _prepare(op: CurvatureOperator) -> _Prepared:
    """Check everything that can be checked without running BackPACK; build the private copy on the way."""
    curvature = _curvature(op)
    _backpack()
    problem: Problem = op.problem
    if problem.space is not None:
        raise ExactDiagonalUnavailable(
            "the model is FSDP2-sharded: BackPACK needs a plain copy of it on one device (the stochastic estimators "
            "run on the shards)"
        )
    loss = _loss_module(problem.loss_fn)
    try:
        model = copy.deepcopy(problem.model)
    except Exception as err:  # noqa: BLE001 - any failure means: no private copy, no exact path
        raise ExactDiagonalUnavailable(f"the model cannot be deep-copied ({type(err).__name__}: {err})") from None
    model = model.to(device=problem.device, dtype=problem.dtype)
    _simplify(model)
    named = dict(model.named_parameters())
    by_id = {id(p): n for n, p in named.items()}
    allowed: tuple[type, ...] = HESSIAN_MODULES
    if curvature == "ggn":
        from backpack.custom_module.branching import SumModule
        from backpack.custom_module.scale_module import ScaleModule

        allowed = (*GGN_MODULES, SumModule, ScaleModule)
    from backpack.custom_module.graph_utils import convert_module_to_backpack

    # Wrapping in a container makes a bare leaf model (e.g. nn.Linear) one module call in the trace.
    root = nn.Sequential(model)
    try:
        with _quiet():
            module = convert_module_to_backpack(root, False)
    except Exception as err:  # noqa: BLE001 - torch.fx raises many types on untraceable code
        raise ExactDiagonalUnavailable(
            "the model's forward cannot be traced by torch.fx and converted for BackPACK "
            f"({type(err).__name__}: {str(err).splitlines()[0][:200]})"
        ) from None
    graph = module.graph
    called: set[str] = set()
    for node in graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        if node.op != "call_module":
            raise ExactDiagonalUnavailable(
                f"the forward applies {node.op} {getattr(node.target, '__name__', node.target)!s} outside a module; "
                "only module calls can be backpropagated exactly"
            )
        if node.target in called:
            raise ExactDiagonalUnavailable(
                f"module {_user_name(node.target)!r} is called more than once (shared weights)"
            )
        called.add(node.target)
        sub = module.get_submodule(node.target)
        _check_module(sub, _user_name(node.target), allowed, problem, curvature)
        if curvature == "hessian" and len(node.users) > 1:
            raise ExactDiagonalUnavailable(
                f"the output of {_user_name(node.target)!r} feeds {len(node.users)} branches; the exact Hessian "
                "diagonal needs a chain of layers"
            )
    if sum(node.op == "placeholder" for node in graph.nodes) != 1:
        raise ExactDiagonalUnavailable("the model's forward must take exactly one input")
    for p in module.parameters():
        if id(p) not in by_id:
            raise ExactDiagonalUnavailable("the converted model holds parameters the model does not (shared weights)")
    for p in named.values():
        p.requires_grad_(False)
        p.grad = None
    params = {n: named[n] for n in problem.param_names}
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(op.params[n])
            p.requires_grad_(True)
    module.train(problem.mode == "train")
    return _Prepared(module, loss, params, curvature)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("backpack-for-pytorch")
    except PackageNotFoundError:
        return "(version unknown)"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        for message in _QUIET:
            warnings.filterwarnings("ignore", message=message)
        yield


@contextlib.contextmanager
def _extended(prep: _Prepared) -> Iterator[None]:
    """BackPACK's hooks on the private copy for the duration of the block, removed afterwards."""
    from backpack import extend
    from backpack.context import CTX

    before = {id(h) for h in CTX.hook_handles}
    try:
        extend(prep.module)
        extend(prep.loss)
        yield
    finally:
        ours = [h for h in CTX.hook_handles if id(h) not in before]
        for h in ours:
            h.remove()
        mine = {id(h) for h in ours}
        CTX.hook_handles[:] = [h for h in CTX.hook_handles if id(h) not in mine]


def _check_targets(loss: nn.Module, targets: Tensor) -> None:
    if isinstance(loss, nn.CrossEntropyLoss):
        if targets.is_floating_point():
            raise ExactDiagonalUnavailable("cross-entropy with probability targets is not supported (class indices)")
        if bool((targets == loss.ignore_index).any()):
            raise ExactDiagonalUnavailable(f"targets contain ignore_index={loss.ignore_index}")


def exact_support(op: CurvatureOperator) -> ExactSupport:
    """Whether :func:`exact_diagonal` applies to ``op`` (static checks only: a private copy is built and traced,
    nothing is backpropagated), and why (not)."""
    try:
        prep = _prepare(op)
    except ExactDiagonalUnavailable as err:
        return ExactSupport(False, err.reason)
    ext = "DiagHessian" if prep.curvature == "hessian" else "DiagGGNExact"
    return ExactSupport(True, f"every layer and the loss are supported by BackPACK {ext}", prep.curvature)


def exact_diagonal(op: CurvatureOperator) -> ExactDiagonal:
    """The exact diagonal of a Hessian or GGN operator built from a Problem, by second-order backpropagation.

    ``diag(H) = sum_b w_b diag(d^2 L_b / dw^2)`` over the problem's batches with their weights ``w_b`` (size over
    total for mean losses), each batch's diagonal from one BackPACK backward pass (see the module docstring for the
    formula and what is supported) on a private copy of the model at the operator's point ``op.params``.

    Parameters
    ----------
    op
        :class:`~landscape.operators.hessian.HessianOperator` (``DiagHessian``) or
        :class:`~landscape.operators.ggn.GGNOperator` (``DiagGGNExact``). Its matvec counter is not touched.

    Returns
    -------
    ExactDiagonal

    Raises
    ------
    ExactDiagonalUnavailable
        When BackPACK is not installed, the operator, a layer or the loss is not supported, or BackPACK itself
        refuses; ``.reason`` says which.
    """
    start = time.perf_counter()
    prep = _prepare(op)
    from backpack import backpack
    from backpack.extensions import DiagGGNExact, DiagHessian

    extension = DiagHessian if prep.curvature == "hessian" else DiagGGNExact
    field = "diag_h" if prep.curvature == "hessian" else "diag_ggn_exact"
    problem: Problem = op.problem
    totals = {n: torch.zeros(p.shape, dtype=torch.float64, device=problem.device) for n, p in prep.params.items()}
    num_batches = 0
    with _extended(prep), _quiet(), torch.enable_grad():
        for i, batch in enumerate(problem.batches()):
            _check_targets(prep.loss, batch.targets)
            try:
                with backpack(extension()):
                    loss = check_finite(prep.loss(prep.module(batch.inputs), batch.targets), "loss", i)
                    loss.backward()
            except (NotImplementedError, AssertionError, ValueError, RuntimeError) as err:
                first = str(err).splitlines()[0][:200] if str(err) else ""
                raise ExactDiagonalUnavailable(
                    f"BackPACK {extension.__name__} failed: {type(err).__name__}: {first}"
                ) from None
            for n, p in prep.params.items():
                value = getattr(p, field, None)
                if value is not None:
                    totals[n] += batch.weight * value.detach().double()
                    delattr(p, field)
                p.grad = None
            num_batches += 1
    flat = torch.cat([totals[n].reshape(-1) for n in problem.param_names])
    if problem.dist is not None:  # data-parallel: each rank summed its shard's weighted share
        problem.dist.all_reduce_(flat, "all_reduce of an exact diagonal")
    check_finite(flat.sum(), "exact diagonal", -1)
    return ExactDiagonal(
        value=flat,
        curvature=prep.curvature,
        extension=extension.__name__,
        backend=f"backpack-for-pytorch {_version()}",
        num_batches=num_batches,
        wall_time=time.perf_counter() - start,
    )
