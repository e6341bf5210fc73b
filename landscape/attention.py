"""Attention kernels that curvature products can differentiate through.

``torch.nn.functional.scaled_dot_product_attention`` dispatches to fused kernels (flash attention on CPU and GPU,
memory-efficient attention, cuDNN) whose backward passes torch cannot differentiate again, and which have no
forward-mode derivative: a Hessian-vector product through them fails with "derivative for
aten::_scaled_dot_product_flash_attention_for_cpu_backward is not implemented" (reverse over reverse) or "forward
AD ... not implemented" (forward over reverse). The math kernel computes the same function from matmuls and a
softmax, which torch differentiates to any order. :func:`differentiable` selects it for the duration of a product
(``torch.nn.attention.sdpa_kernel``), so a Hugging Face model with ``attn_implementation="sdpa"`` (the default)
gets exact curvature without any change to the model or its config. Kernels that do not go through
``scaled_dot_product_attention`` (an external flash-attention package) cannot be switched: :func:`explain` turns
torch's error into one that names the fix.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = ["SETTING", "AttentionKernelError", "differentiable", "explain"]

#: What results record about attention in curvature products.
SETTING = "scaled_dot_product_attention on its math kernel for second derivatives (torch.nn.attention.sdpa_kernel)"

# Phrases of torch's errors for a missing second or forward-mode derivative.
_NOT_TWICE = (
    "derivative for",  # "derivative for aten::X_backward is not implemented"
    "forward ad",  # "Trying to use forward AD with X that does not support it"
    "once_differentiable",
    "differentiate twice",
)


class AttentionKernelError(RuntimeError):
    """A kernel in the model (typically fused attention) has no second or forward-mode derivative."""


@contextlib.contextmanager
def differentiable() -> Iterator[None]:
    """Run ``scaled_dot_product_attention`` on its math kernel inside, and explain kernels that cannot be
    differentiated twice (:func:`explain`)."""
    with sdpa_kernel([SDPBackend.MATH]), explain():
        yield


@contextlib.contextmanager
def explain() -> Iterator[None]:
    """Re-raise torch's "not implemented" errors of second or forward-mode derivatives as
    :class:`AttentionKernelError` naming the fix."""
    try:
        yield
    except (RuntimeError, NotImplementedError) as err:
        text = str(err)
        lowered = text.lower()
        if isinstance(err, AttentionKernelError) or not any(marker in lowered for marker in _NOT_TWICE):
            raise
        first = text.strip().splitlines()[0][:300]
        raise AttentionKernelError(
            "a kernel in the model cannot be differentiated twice (or in forward mode), which every curvature "
            f"product needs: {first}. landscape already runs torch's scaled_dot_product_attention on its "
            "double-differentiable math kernel; this kernel is another one (e.g. an external flash-attention "
            'package). Load the model with attn_implementation="eager" (Hugging Face: from_pretrained(..., '
            'attn_implementation="eager") or config._attn_implementation = "eager"), or replace the custom kernel'
        ) from err
