"""Convolutions and evaluation-mode batch norms whose gradients are differentiated on fewer, faster kernels.

A Hessian-vector product by double backward (Pearlmutter 1994) differentiates the gradient graph: for a convolution
``y = conv(x, W)`` the gradient's node computes ``g_x = conv_input_grad(g_y, W)`` and ``g_W = conv_weight_grad(x,
g_y)``, and the product backpropagates cotangents ``(a, B)`` of ``(g_x, g_W)`` through it:

.. math::

    \\bar g_y = \\mathrm{conv}(a, W) + \\mathrm{conv}(x, B), \\qquad
    \\bar x = \\mathrm{conv\\_input\\_grad}(g_y, B), \\qquad
    \\bar W = \\mathrm{conv\\_weight\\_grad}(a, g_y).

The last two are one call of the backward kernel (``convolution_backward(g_y, a, B)`` with the input and weight
outputs: its input gradient uses only the weight ``B``, its weight gradient only the input ``a``). torch's own
double backward of a convolution (``_convolution_double_backward``) forms ``\\bar W`` as a convolution with the batch
and channel axes swapped and ``\\bar x`` as a transposed convolution: on CPU (torch 2.13, oneDNN) that costs 2x the
backward kernel on ResNet-18's shapes, 12% of a product on the whole network. Batch norm with running
statistics is a per-channel affine map; torch differentiates its gradient with the formula for batch statistics
(:class:`_ChannelScaleGradient` has the six-pass one).

:func:`double_backward_kernels` is a ``TorchFunctionMode`` under which ``conv1d/2d/3d``, ``conv_transpose1d/2d/3d``
(the same identities: the map is bilinear in ``(x, W)``) and evaluation-mode ``batch_norm`` record the autograd
functions below instead (their forward and gradient are torch's kernels); the operators build their gradient graphs
under it (``operators.hessian``) and the memory estimate measures the same graph (``memory``). ResNet-18, one
product: 5.0-5.35 s -> 4.3-4.4 s on this machine (BENCHMARKS.md, stop 34). Products are equal to torch's to float
rounding (tested against the dense float64 Hessian). String padding (``"same"``), batch statistics, tensor
subclasses (DTensor), autocast or grad mode off keep torch's path. A third derivative through a convolution or batch
norm recorded under the mode raises.

With ``leaf_gradient_values=False``, inside the mode's ``stand_ins()`` (how the operators take the gradient whose
graph their products differentiate), the gradient's graph is built without the parameters' gradients: a product
differentiates ``g . v``, whose backward never reads ``g``, and a leaf's gradient feeds nothing else in the graph
(its contributions are only added). Each layer's gradient node then
returns a broadcast zero for a leaf weight's (and bias's) gradient while the graph is built, with no kernel run
and no memory held, and still differentiates as the gradient would; the weight-gradient kernels run in the second
backward pass, where they compute the product. Linear layers (``F.linear``, ``torch.addmm``) and embeddings are
recorded for this alone (their second backward is the one torch's makes, differentiable again). A gradient a loss
takes of itself in its forward (outside ``stand_ins()``) keeps its values. ResNet-18's build: 0.71x torch's; GPT-2
small's graph: 0.5 GB less; a first product about 1.5x a later one on both, medians 1.48x and 1.47x
(BENCHMARKS.md, stop 35).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from landscape.lm_head import chunked_token_loss

_aten = torch.ops.aten
# function -> (spatial dimensions, transposed)
_CONVOLUTIONS = {torch.conv1d: (1, False), torch.conv2d: (2, False), torch.conv3d: (3, False)}
_CONVOLUTIONS |= {
    torch.conv_transpose1d: (1, True),
    torch.conv_transpose2d: (2, True),
    torch.conv_transpose3d: (3, True),
}


def _refuse_third_derivative() -> None:
    """The second backward passes run without a graph. torch's ``once_differentiable`` would not do: it checks the
    cotangents only, and a third derivative that depends on the saved tensors alone would come back silently short."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            "a third derivative through a convolution or batch norm recorded under "
            "landscape.double_backward_kernels() is not supported: differentiate the Hessian-vector product without "
            "create_graph=True, or build the gradient graph outside that mode"
        )


@dataclass(frozen=True)
class _ConvolutionConfig:
    """The non-tensor arguments of ``aten.convolution`` / ``aten.convolution_backward``."""

    stride: list[int]
    padding: list[int]
    dilation: list[int]
    transposed: bool
    output_padding: list[int]
    groups: int
    bias_sizes: list[int] | None

    @property
    def args(self) -> tuple:
        """``(stride, padding, dilation, transposed, output_padding, groups)``, as both aten functions take them."""
        return self.stride, self.padding, self.dilation, self.transposed, self.output_padding, self.groups

    @classmethod
    def of(
        cls, func: Any, args: tuple, kwargs: dict
    ) -> tuple[Tensor, Tensor, Tensor | None, _ConvolutionConfig | None]:
        """The tensors and configuration of a call of ``torch.conv*d`` or ``torch.conv_transpose*d``; the
        configuration is None where the mode leaves the call to torch (string padding)."""
        dims, transposed = _CONVOLUTIONS[func]
        if transposed:
            x, w, b, stride, padding, output_padding, groups, dilation = _conv_transpose_arguments(*args, **kwargs)
        else:
            x, w, b, stride, padding, dilation, groups = _conv_arguments(*args, **kwargs)
            output_padding = 0
        if isinstance(padding, str) or x.dim() != dims + 2:
            return x, w, b, None

        def expand(value: Any) -> list[int]:
            return [int(v) for v in value] if isinstance(value, (tuple, list)) else [int(value)] * dims

        bias_sizes = None if b is None else [b.shape[0]]
        config = cls(
            expand(stride),
            expand(padding),
            expand(dilation),
            transposed,
            expand(output_padding),
            int(groups),
            bias_sizes,
        )
        return x, w, b, config


def _conv_arguments(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
) -> tuple:
    return input, weight, bias, stride, padding, dilation, groups


def _conv_transpose_arguments(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: Any = 1,
    padding: Any = 0,
    output_padding: Any = 0,
    groups: int = 1,
    dilation: Any = 1,
) -> tuple:
    return input, weight, bias, stride, padding, output_padding, groups, dilation


class _LayerGradient(torch.autograd.Function):
    """A layer's gradient ``(g_x, g_param, g_bias)`` from ``(g_y, x, param, extra, mask)``, recorded so that the
    subclass's ``backward`` (the second backward pass) can differentiate it. ``mask`` has one of ``"compute"``,
    ``"stand_in"`` or ``"none"`` for each output (see :func:`_computed`)."""

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Any) -> None:
        """Keeps only what the second backward can read (the layer is bilinear in ``(x, param)``): ``param`` where
        ``g_x`` is an output (its cotangent ``a`` meets it in ``bar g_y``), ``x`` where ``g_param`` is, and ``g_y``
        where ``a`` can reach ``param`` or ``g_param``'s cotangent can reach ``x`` (a network's first layer keeps
        neither ``g_y`` nor its weight)."""
        gy, x, param, extra, mask = inputs
        a_comes, b_comes = mask[0] != "none", mask[1] != "none"
        keep_gy = (ctx.needs_input_grad[1] and b_comes) or (ctx.needs_input_grad[2] and a_comes)
        ctx.save_for_backward(gy if keep_gy else None, x if b_comes else None, param if a_comes else None)
        ctx.extra = extra
        ctx.shape, ctx.dtype = gy.shape, gy.dtype
        ctx.set_materialize_grads(False)


_Mask = tuple[str, str, str]


@dataclass(frozen=True)
class _StandIn:
    """Which of a layer's parameters (weight, bias) are leaves that may get a stand-in gradient, and the mode that
    says when: :meth:`now` is what the layer's backward does at the time it runs."""

    mode: double_backward_kernels
    leaves: tuple[bool, bool]

    def now(self) -> tuple[bool, bool]:
        """The leaves, inside the mode's :meth:`~double_backward_kernels.stand_ins` with grad mode on (a gradient
        graph being built for Hessian products); else none. Outside it a gradient keeps its values: a loss that
        differentiates itself (a gradient penalty) and the second backward pass, which runs the forward nodes'
        backward again without a graph (there the parameters' gradients are the product itself)."""
        return self.leaves if self.mode.standing_in and torch.is_grad_enabled() else (False, False)


def _mask(needs: tuple, stand_in: _StandIn) -> _Mask:
    """What the gradient node does for ``(g_x, g_param, g_bias)``: ``"compute"`` it, give a ``"stand_in"`` (the
    parameter is a leaf whose gradient's value nobody reads: see :meth:`_StandIn.now`) or ``"none"`` (not needed)."""
    return tuple(
        "none" if not need else "stand_in" if stand else "compute"
        for need, stand in zip(needs, (False, *stand_in.now()), strict=True)
    )


def _computed(mask: _Mask, outputs: tuple, shapes: tuple, like: Tensor) -> tuple:
    """``outputs`` with each ``"stand_in"`` replaced by a broadcast zero of its shape: a tensor autograd records as
    this node's output, so the gradient's graph (what a Hessian-vector product differentiates) is whole, but no
    kernel ran and no memory holds it. A leaf's gradient feeds nothing else in the graph (its contributions are
    only added), so its value is never read by the second backward pass."""
    return tuple(
        like.new_zeros(()).expand(shape) if m == "stand_in" else out
        for m, out, shape in zip(mask, outputs, shapes, strict=True)
    )


class _ConvolutionGradient(_LayerGradient):
    """``(g_x, g_W, g_b) = convolution_backward(g_y, x, W)`` with the backward above (no third derivative)."""

    @staticmethod
    def forward(gy: Tensor, x: Tensor, w: Tensor, config: _ConvolutionConfig, mask: _Mask) -> tuple:
        outs = _aten.convolution_backward(gy, x, w, config.bias_sizes, *config.args, [m == "compute" for m in mask])
        return _computed(mask, outs, (x.shape, w.shape, config.bias_sizes), w)

    @staticmethod
    def backward(ctx: Any, a: Tensor | None, B: Tensor | None, c: Tensor | None) -> tuple:
        _refuse_third_derivative()
        gy, x, w = ctx.saved_tensors
        args = ctx.extra.args
        need_gy, need_x, need_w = ctx.needs_input_grad[:3]
        bar_gy = bar_x = bar_w = None
        if need_gy:
            if a is not None:
                bar_gy = _aten.convolution(a, w, None, *args)
            if B is not None:
                term = _aten.convolution(x, B, None, *args)
                bar_gy = term if bar_gy is None else bar_gy.add_(term)
            if c is not None:  # g_b = sum of g_y over all but the channel axis
                c = _channels(c, len(ctx.shape))
                bar_gy = c.expand(ctx.shape).clone() if bar_gy is None else bar_gy.add_(c)
        mask_x, mask_w = need_x and B is not None, need_w and a is not None
        if mask_x or mask_w:
            # One call: its input gradient uses only the weight (B), its weight gradient only the input (a).
            bar_x, bar_w, _ = _aten.convolution_backward(
                gy, a if mask_w else x, B if mask_x else w, None, *args, [mask_x, mask_w, False]
            )
        return bar_gy, bar_x if mask_x else None, bar_w if mask_w else None, None, None


class _BilinearLayer(torch.autograd.Function):
    """``y = f(x, W) + b`` with ``f`` bilinear, from ``(x, W, b, extra, stand_in)``; the subclass's ``backward``
    hands ``(g_y, x, W, extra)`` to its gradient function (:func:`_bilinear_backward`)."""

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        x, w, _, extra, stand_in = inputs
        ctx.save_for_backward(x, w)
        ctx.extra = extra
        ctx.stand_in = stand_in
        # The leaf weight itself (saved tensors unpack as other tensor objects), for :func:`_grad_target`.
        ctx.leaf = w if stand_in.leaves[0] else None


def _bilinear_backward(ctx: Any, gy: Tensor, gradient: type[_LayerGradient], extra: Any = None) -> tuple:
    x, w = ctx.saved_tensors
    extra = ctx.extra if extra is None else extra
    gx, gw, gb = gradient.apply(gy, x, w, extra, _mask(ctx.needs_input_grad[:3], ctx.stand_in))
    return gx, gw, gb, None, None


def _grad_target(leaf: Tensor | None, mode: double_backward_kernels | None) -> Tensor | None:
    """``leaf.grad`` where a weight's part of a product may be added into it in place: inside the mode's
    :meth:`~double_backward_kernels.adding_into_grads` (the operator's ``add_product_``, which sets each leaf's
    ``.grad`` to its slice of the output and has autograd accumulate there), in a pass without a graph. Then a
    layer adds its weight's term with ``addmm_`` / ``index_add_`` and hands autograd nothing for it: no weight-sized
    temporary, no separate accumulation (GPT-2 small's tied embedding: a 154 MB zero fill and a 154 MB product every
    pass). ``None`` everywhere else, so ``torch.autograd.grad`` and any other use get the usual gradients."""
    if leaf is None or mode is None or not mode.adding or torch.is_grad_enabled():
        return None
    return leaf.grad


class _Convolution(_BilinearLayer):
    """``y = conv(x, W) + b`` (or the transposed convolution) whose gradient is :class:`_ConvolutionGradient`
    (differentiable once more)."""

    @staticmethod
    def forward(x: Tensor, w: Tensor, b: Tensor | None, config: _ConvolutionConfig, stand_in: _StandIn) -> Tensor:
        return _aten.convolution(x, w, b, *config.args)

    @staticmethod
    def backward(ctx: Any, gy: Tensor) -> tuple:
        return _bilinear_backward(ctx, gy, _ConvolutionGradient)


def _batch_norm_arguments(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> tuple:
    return input, running_mean, running_var, weight, bias, training, eps


class _ChannelScaleGradient(_LayerGradient):
    r"""The gradient of evaluation-mode batch normalisation ``y = (x - mu) r gamma + beta`` (``r = (var + eps)^-1/2``,
    constants per channel): ``g_x = g_y r gamma``, ``g_gamma = sum g_y (x - mu) r``, ``g_beta = sum g_y`` (sums over
    all but the channel axis), with the backward

    .. math::

        \bar g_y = a r \gamma + c_\gamma (x - \mu) r + c_\beta, \qquad \bar x = c_\gamma r g_y, \qquad
        \bar\gamma = r \sum a g_y

    for the cotangents ``(a, c_gamma, c_beta)``: six passes over the activation where torch's double backward of
    ``native_batch_norm_backward`` (written for batch statistics) takes fourteen."""

    @staticmethod
    def forward(gy: Tensor, x: Tensor, gamma: Tensor | None, stats: tuple, mask: _Mask) -> tuple:
        mean, var, eps, _ = stats  # torch's fused kernel for the gradient itself
        compute = [m == "compute" for m in mask]
        outs = _aten.native_batch_norm_backward(gy, x, gamma, mean, var, None, None, False, eps, compute)
        return _computed(mask, outs, (x.shape, mean.shape, mean.shape), gy if gamma is None else gamma)

    @staticmethod
    def backward(ctx: Any, a: Tensor | None, c_gamma: Tensor | None, c_beta: Tensor | None) -> tuple:
        _refuse_third_derivative()
        gy, x, gamma = ctx.saved_tensors
        mu, _, _, r = (t.to(ctx.dtype) if isinstance(t, Tensor) else t for t in ctx.extra)  # float32 stats, bf16 x
        need_gy, need_x, need_gamma = ctx.needs_input_grad[:3]
        dims = len(ctx.shape)
        bar_gy = bar_x = bar_gamma = None
        k = None if c_gamma is None else c_gamma * r
        if need_gy:
            if a is not None:
                bar_gy = a * _channels(r if gamma is None else gamma * r, dims)
            if k is not None:
                term = (x - _channels(mu, dims)) * _channels(k, dims)  # not in place: k is batched under vmap
                bar_gy = term if bar_gy is None else bar_gy.add_(term)
            if c_beta is not None:
                c_beta = _channels(c_beta, dims)
                bar_gy = c_beta.expand(ctx.shape).clone() if bar_gy is None else bar_gy.add_(c_beta)
        if need_x and k is not None:
            bar_x = gy * _channels(k, dims)
        if need_gamma and a is not None:
            bar_gamma = ((a * gy).sum([d for d in range(dims) if d != 1]) * r).to(gamma.dtype)
        return bar_gy, bar_x, bar_gamma, None, None


class _BatchNormEval(torch.autograd.Function):
    """Evaluation-mode batch normalisation (torch's kernel) whose gradient is :class:`_ChannelScaleGradient`."""

    @staticmethod
    def forward(
        x: Tensor,
        gamma: Tensor | None,
        beta: Tensor | None,
        mean: Tensor,
        var: Tensor,
        eps: float,
        stand_in: _StandIn,
    ) -> Tensor:
        return torch.batch_norm(x, gamma, beta, mean, var, False, 0.0, eps, torch.backends.cudnn.enabled)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        x, gamma, _, mean, var, eps, stand_in = inputs
        ctx.save_for_backward(x, gamma)
        ctx.stats = (mean, var, eps, torch.rsqrt(var + eps))
        ctx.stand_in = stand_in

    @staticmethod
    def backward(ctx: Any, gy: Tensor) -> tuple:
        x, gamma = ctx.saved_tensors
        mask = _mask(ctx.needs_input_grad[:3], ctx.stand_in)
        gx, g_gamma, g_beta = _ChannelScaleGradient.apply(gy, x, gamma, ctx.stats, mask)
        return gx, g_gamma, g_beta, None, None, None, None


class _AffineGradient(_LayerGradient):
    r"""The gradient of ``y = x M + b`` (``x`` ``(n, in)``; ``M = W^T`` for ``F.linear``'s ``W`` ``(out, in)``,
    ``M = W`` for ``torch.addmm``'s): ``g_x = g_y M^T``, ``g_M = x^T g_y``, ``g_b = sum_n g_y``, with the backward

    .. math::

        \bar g_y = a M + x B_M + c, \qquad \bar x = g_y B_M^T, \qquad \bar M = a^T g_y

    for the cotangents ``(a, B, c)`` (``B_M`` is ``B`` in ``M``'s layout): the four products torch's own double
    backward of ``mm`` makes, differentiable again (a loss that differentiates itself keeps its third derivatives).
    What this class adds is the stand-in: ``g_W`` of a leaf weight is not computed while the gradient's graph is
    built (a third of the layer's backward)."""

    @staticmethod
    def forward(gy: Tensor, x: Tensor, w: Tensor, extra: _AffineExtra, mask: _Mask) -> tuple:
        linear = extra.linear
        m = w.t() if linear else w
        gx = gy @ m.t() if mask[0] == "compute" else None
        gw = _weight_term(gy, x, extra) if mask[1] == "compute" else None
        gb = gy.sum(0) if mask[2] == "compute" else None
        return _computed(mask, (gx, gw, gb), (x.shape, w.shape, gy.shape[1:]), w)

    @staticmethod
    def backward(ctx: Any, a: Tensor | None, B: Tensor | None, c: Tensor | None) -> tuple:
        gy, x, w = ctx.saved_tensors
        linear = ctx.extra.linear
        m = None if w is None else w.t() if linear else w  # kept where a cotangent a can come
        b_m = None if B is None else B.t() if linear else B
        need_gy, need_x, need_w = ctx.needs_input_grad[:3]
        bar_gy = bar_x = bar_w = None
        if need_gy:
            if a is not None:
                bar_gy = a @ m
            if b_m is not None:
                bar_gy = x @ b_m if bar_gy is None else bar_gy.addmm_(x, b_m)
            if c is not None:
                bar_gy = c.expand(ctx.shape).clone() if bar_gy is None else bar_gy.add_(c)
        if need_x and b_m is not None:
            bar_x = gy @ b_m.t()
        if need_w and a is not None:
            bar_w = _weight_term(gy, a, ctx.extra)
        return bar_gy, bar_x, bar_w, None, None


@dataclass(frozen=True)
class _AffineExtra:
    """What an affine layer's gradient node keeps besides tensors: the layout (``linear``: ``W`` is ``(out, in)``)
    and, for :func:`_grad_target`, the leaf weight and the mode."""

    linear: bool
    leaf: Tensor | None
    mode: double_backward_kernels | None


def _weight_term(gy: Tensor, x: Tensor, extra: _AffineExtra) -> Tensor | None:
    """``g_y^T x`` (``linear``: ``W`` is ``(out, in)``) or ``x^T g_y``: the weight's gradient in the first backward,
    its product term in the second (``x`` then the cotangent ``a``). Added in place into the leaf's ``.grad`` where
    :func:`_grad_target` gives it (then ``None``: autograd gets nothing to add)."""
    target = _grad_target(extra.leaf, extra.mode)
    if target is None:
        return gy.t() @ x if extra.linear else x.t() @ gy
    if extra.linear:
        target.addmm_(gy.t(), x)
    else:
        target.addmm_(x.t(), gy)
    return None


class _Affine(_BilinearLayer):
    """``y = x W^T + b`` (``linear``) or ``x W + b`` (``addmm``) on a 2D ``x``, whose gradient is
    :class:`_AffineGradient`."""

    @staticmethod
    def forward(x: Tensor, w: Tensor, b: Tensor | None, linear: bool, stand_in: _StandIn) -> Tensor:
        m = w.t() if linear else w
        return x @ m if b is None else torch.addmm(b, x, m)

    @staticmethod
    def backward(ctx: Any, gy: Tensor) -> tuple:
        return _bilinear_backward(ctx, gy, _AffineGradient, _AffineExtra(ctx.extra, ctx.leaf, ctx.stand_in.mode))


def _linear_arguments(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> tuple:
    return input, weight, bias


def _addmm_arguments(input: Tensor, mat1: Tensor, mat2: Tensor, *, beta: Any = 1, alpha: Any = 1, out: Any = None):
    return input, mat1, mat2, beta == 1 and alpha == 1 and out is None


class _EmbeddingGradient(torch.autograd.Function):
    r"""``g_W = embedding_dense_backward(g_y, ids)`` (rows of ``g_y`` added at their ids); linear in ``g_y``, so its
    backward is the gather ``\bar g_y = B[ids]``."""

    @staticmethod
    def forward(gy: Tensor, ids: Tensor, w: Tensor, mask: str) -> Tensor:
        if mask == "stand_in":
            return w.new_zeros(()).expand(w.shape)
        return _aten.embedding_dense_backward(gy, ids, w.shape[0], -1, False)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        ctx.save_for_backward(inputs[1])

    @staticmethod
    def backward(ctx: Any, B: Tensor) -> tuple:
        (ids,) = ctx.saved_tensors
        return torch.embedding(B, ids), None, None, None


class _Embedding(torch.autograd.Function):
    """``y = W[ids]`` whose gradient is :class:`_EmbeddingGradient`."""

    @staticmethod
    def forward(ids: Tensor, w: Tensor, stand_in: _StandIn) -> Tensor:
        return torch.embedding(w, ids)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        ids, w, stand_in = inputs
        ctx.save_for_backward(ids)
        ctx.weight = w  # for its shape and dtype only: the gradient does not depend on its value
        ctx.stand_in = stand_in

    @staticmethod
    def backward(ctx: Any, gy: Tensor) -> tuple:
        (ids,) = ctx.saved_tensors
        target = _grad_target(ctx.weight, ctx.stand_in.mode) if ctx.needs_input_grad[1] else None
        if target is not None:  # the rows added where they go: no (vocab, width) zero fill and sum
            target.index_add_(0, ids.reshape(-1), gy.reshape(-1, gy.shape[-1]))
            return None, None, None
        mask = _mask((False, ctx.needs_input_grad[1], False), ctx.stand_in)[1]
        return None, _EmbeddingGradient.apply(gy, ids, ctx.weight.detach(), mask), None


def _embedding_arguments(
    input: Tensor,
    weight: Tensor,
    padding_idx: int | None = None,
    max_norm: float | None = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
    sparse: bool = False,
) -> tuple:
    return input, weight, padding_idx is None and max_norm is None and not scale_grad_by_freq and not sparse


def _token_loss_arguments(hidden: Tensor, weight: Tensor, bias: Tensor | None, *_: Any, **__: Any) -> tuple:
    return weight, bias


def _channels(t: Tensor, dims: int) -> Tensor:
    """A per-channel vector shaped to broadcast over ``(n, channels, *spatial)`` (``dims`` axes)."""
    return t.view(1, -1, *([1] * (dims - 2)))


def _plain(*tensors: Tensor | None) -> bool:
    return all(t is None or type(t) in (Tensor, torch.nn.Parameter) for t in tensors)


def _own_dtype(x: Tensor) -> bool:
    """Not under autocast: its casts would happen inside the function, out of autograd's sight, and the saved inputs
    would not match the gradient's dtype (torch records the casts as nodes of their own)."""
    return not torch.is_autocast_enabled(x.device.type)


class double_backward_kernels(TorchFunctionMode):  # noqa: N801 - used as a context manager, like torch's modes
    """Within it, with grad mode on, ``torch.conv1d/2d/3d`` and ``conv_transpose1d/2d/3d`` (hence ``nn.Conv*d`` and
    ``nn.ConvTranspose*d``) record :class:`_Convolution` and evaluation-mode ``batch_norm`` (``nn.BatchNorm*d`` in
    eval) records :class:`_BatchNormEval`, whose gradients' backward passes are the cheaper ones of the module
    docstring.

    Parameters
    ----------
    leaf_gradient_values : bool
        ``False`` where only the gradient's graph is wanted, not its value (a Hessian-vector product differentiates
        ``g . v``, whose backward never reads ``g``): the layers' gradients with respect to leaf tensors (the
        parameters) taken inside :meth:`stand_ins` are then broadcast zeros that stand in for them in the graph,
        and their kernels do not run.
        ``F.linear``, ``torch.addmm`` (transformers' ``Conv1D``) and ``F.embedding`` with a leaf weight are then
        recorded too (:class:`_Affine`, :class:`_Embedding`). Gradients with respect to non-leaf weights (a
        parametrization, a low-rank product) are computed: the second backward reads them.
    """

    def __init__(self, leaf_gradient_values: bool = True):
        super().__init__()
        self.leaf_gradient_values = leaf_gradient_values
        self.standing_in = False
        self.adding = False

    @contextlib.contextmanager
    def stand_ins(self) -> Iterator[None]:
        """Around the one ``torch.autograd.grad(loss, params, create_graph=True)`` whose graph the products
        differentiate: only the gradients computed inside it stand in (with ``leaf_gradient_values=False``); one a
        loss takes of itself in its forward keeps its values."""
        self.standing_in = not self.leaf_gradient_values
        try:
            yield
        finally:
            self.standing_in = False

    @contextlib.contextmanager
    def adding_into_grads(self) -> Iterator[None]:
        """Around a backward pass (without a graph) over a gradient graph built under this mode that accumulates
        into the leaves' ``.grad`` (``torch.autograd.backward(..., inputs=leaves)``): affine layers and embeddings
        with a leaf weight whose ``.grad`` is set add their weight's term into it in place (:func:`_grad_target`)."""
        self.adding = True
        try:
            yield
        finally:
            self.adding = False

    def _stand_in(self, weight: Tensor | None, bias: Tensor | None = None) -> _StandIn:
        """Which of ``weight``, ``bias`` may get a stand-in gradient: leaves, when values are not wanted."""
        leaves = tuple(not self.leaf_gradient_values and p is not None and p.is_leaf for p in (weight, bias))
        return _StandIn(self, leaves)

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if not torch.is_grad_enabled():
            return func(*args, **kwargs)
        if func in _CONVOLUTIONS:
            x, w, b, config = _ConvolutionConfig.of(func, args, kwargs)
            if config is not None and _plain(x, w, b) and _own_dtype(x):
                return _Convolution.apply(x, w, b, config, self._stand_in(w, b))
        elif func is torch.nn.functional.batch_norm:
            x, mean, var, gamma, beta, training, eps = _batch_norm_arguments(*args, **kwargs)
            usable = not training and mean is not None and var is not None and x.dim() >= 2
            if usable and _plain(x, gamma, beta) and _own_dtype(x):
                stand_in = self._stand_in(gamma, beta)
                return _BatchNormEval.apply(x, gamma, beta, mean.detach(), var.detach(), float(eps), stand_in)
        elif self.leaf_gradient_values:
            pass  # torch's own double backward of the layers below is as fast: they are recorded only for stand-ins
        elif func is torch.nn.functional.linear or func is torch.addmm:
            linear = func is not torch.addmm
            if linear:
                x, w, b = _linear_arguments(*args, **kwargs)
                plain_call = x.dim() >= 1
            else:
                b, x, w, plain_call = _addmm_arguments(*args, **kwargs)
                plain_call = plain_call and x.dim() == 2
            plain_call = plain_call and w.dim() == 2 and (b is None or b.shape == (w.shape[0 if linear else 1],))
            stand_in = self._stand_in(w, b)
            if plain_call and stand_in.leaves[0] and _plain(x, w, b) and _own_dtype(x):
                flat = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])
                y = _Affine.apply(flat, w, b, linear, stand_in)
                return y if x.dim() == 2 else y.view(*x.shape[:-1], y.shape[-1])
        elif func is chunked_token_loss:  # the fused, chunked output layer and cross-entropy of landscape.lm_head
            weight, bias = _token_loss_arguments(*args, **kwargs)
            return func(*args, **{**kwargs, "leaf_stand_ins": self._stand_in(weight, bias).now})
        elif func is torch.nn.functional.embedding:
            ids, w, plain_call = _embedding_arguments(*args, **kwargs)
            stand_in = self._stand_in(w)
            if plain_call and stand_in.leaves[0] and _plain(ids, w) and not ids.is_floating_point():
                return _Embedding.apply(ids, w, stand_in)
        return func(*args, **kwargs)
