"""Convolutions whose gradient is differentiated on the backward kernels.

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
backward kernel on ResNet-18's shapes, and 12% of a product on the whole network.

:func:`double_backward_kernels` is a ``TorchFunctionMode`` under which ``conv1d/2d/3d`` record the two autograd
functions below instead; the operators build their gradient graphs under it (``operators.hessian``) and the memory
estimate measures the same graph (``memory``). Products are equal to torch's to float rounding (tested against the
dense float64 Hessian). Convolutions with string padding (``"same"``), tensor subclasses (DTensor) or grad mode
off keep torch's path. A third derivative through a convolution recorded under the mode raises.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

_aten = torch.ops.aten
_CONVOLUTIONS = {torch.conv1d: 1, torch.conv2d: 2, torch.conv3d: 3}


def _expand(value: Any, dims: int) -> list[int]:
    return [int(v) for v in value] if isinstance(value, (tuple, list)) else [int(value)] * dims


def _conv_arguments(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
) -> tuple[Tensor, Tensor, Tensor | None, Any, Any, Any, int]:
    return input, weight, bias, stride, padding, dilation, groups


class _ConvolutionGradient(torch.autograd.Function):
    """``(g_x, g_W, g_b) = convolution_backward(g_y, x, W)`` with the backward above (no third derivative)."""

    @staticmethod
    def forward(gy: Tensor, x: Tensor, w: Tensor, config: tuple, mask: tuple[bool, bool, bool]) -> tuple:
        stride, padding, dilation, groups, bias_sizes = config
        zeros = [0] * len(stride)
        return _aten.convolution_backward(
            gy, x, w, bias_sizes, stride, padding, dilation, False, zeros, groups, list(mask)
        )

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Any) -> None:
        gy, x, w, config, _ = inputs
        ctx.save_for_backward(gy, x, w)
        ctx.config = config
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx: Any, a: Tensor | None, B: Tensor | None, c: Tensor | None) -> tuple:
        if torch.is_grad_enabled():
            # torch's once_differentiable would not do: it checks the cotangents only, and a third derivative that
            # depends on the saved tensors alone would come back silently short.
            raise RuntimeError(
                "a third derivative through a convolution recorded under landscape.double_backward_kernels() is not "
                "supported: differentiate the Hessian-vector product without create_graph=True, or build the "
                "gradient graph outside that mode"
            )
        gy, x, w = ctx.saved_tensors
        stride, padding, dilation, groups, _ = ctx.config
        zeros = [0] * len(stride)
        need_gy, need_x, need_w = ctx.needs_input_grad[:3]
        bar_gy = bar_x = bar_w = None
        if need_gy:
            if a is not None:
                bar_gy = _aten.convolution(a, w, None, stride, padding, dilation, False, zeros, groups)
            if B is not None:
                term = _aten.convolution(x, B, None, stride, padding, dilation, False, zeros, groups)
                bar_gy = term if bar_gy is None else bar_gy.add_(term)
            if c is not None:  # g_b = sum of g_y over all but the channel axis
                c = c.view(1, -1, *([1] * (gy.dim() - 2)))
                bar_gy = c.expand_as(gy).clone() if bar_gy is None else bar_gy.add_(c)
        mask_x, mask_w = need_x and B is not None, need_w and a is not None
        if mask_x or mask_w:
            # One call: its input gradient uses only the weight (B), its weight gradient only the input (a).
            bar_x, bar_w, _ = _aten.convolution_backward(
                gy,
                a if mask_w else x,
                B if mask_x else w,
                None,
                stride,
                padding,
                dilation,
                False,
                zeros,
                groups,
                [mask_x, mask_w, False],
            )
        return bar_gy, bar_x if mask_x else None, bar_w if mask_w else None, None, None


class _Convolution(torch.autograd.Function):
    """``y = conv(x, W) + b`` whose gradient is :class:`_ConvolutionGradient` (differentiable once more)."""

    @staticmethod
    def forward(x: Tensor, w: Tensor, b: Tensor | None, config: tuple) -> Tensor:
        stride, padding, dilation, groups, _ = config
        return _aten.convolution(x, w, b, stride, padding, dilation, False, [0] * len(stride), groups)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        x, w, _, config = inputs
        ctx.save_for_backward(x, w)
        ctx.config = config

    @staticmethod
    def backward(ctx: Any, gy: Tensor) -> tuple:
        x, w = ctx.saved_tensors
        mask = tuple(bool(m) for m in ctx.needs_input_grad[:3])
        gx, gw, gb = _ConvolutionGradient.apply(gy, x, w, ctx.config, mask)
        return gx, gw, gb, None


class double_backward_kernels(TorchFunctionMode):  # noqa: N801 - used as a context manager, like torch's modes
    """Within it, ``torch.conv1d/2d/3d`` (hence ``nn.Conv*d``) with grad mode on record :class:`_Convolution`, whose
    gradient's backward runs on the backward kernel (module docstring)."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        dims = _CONVOLUTIONS.get(func)
        if dims is not None and torch.is_grad_enabled():
            x, w, b, stride, padding, dilation, groups = _conv_arguments(*args, **kwargs)
            plain = all(t is None or type(t) in (Tensor, torch.nn.Parameter) for t in (x, w, b))
            if plain and not isinstance(padding, str) and x.dim() == dims + 2:
                config = (
                    _expand(stride, dims),
                    _expand(padding, dims),
                    _expand(dilation, dims),
                    int(groups),
                    None if b is None else [b.shape[0]],
                )
                return _Convolution.apply(x, w, b, config)
        return func(*args, **kwargs)
