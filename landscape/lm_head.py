"""A language model's output layer and cross-entropy fused and chunked over tokens, twice differentiable.

For hidden states ``h`` ``(N, d)``, the head ``W`` ``(V, d)`` (and bias ``b``), labels ``y`` and a mask ``m`` of the
counted positions, the summed token loss is

    F(h, W, b) = sum_t m_t [logsumexp(z_t) - z_{t, y_t}],    z_t = W h_t + b.

Autograd through ``F.cross_entropy(h @ W.T + b, y)`` holds several ``(N, V)`` buffers (the logits, the softmax, the
gradient of the logits, and in a double backward their products with a tangent): at ``V = 50257`` and 4 x 1024
tokens, 0.8 GB each in float32. Here no ``(N, V)`` tensor ever exists: every pass recomputes the logits ``chunk``
tokens at a time.

- Gradient: with ``G_t = m_t (p_t - e_{y_t})``, ``p_t = softmax(z_t)``: ``dh = g G W``, ``dW = g G^T h``,
  ``db = g sum_t G_t`` (``g`` the incoming scalar).
- Its derivative (what a Hessian-vector product by double backward needs): for cotangents ``(a, B, c)`` of
  ``(dh, dW, db)`` let ``S_t = W a_t + B h_t + c`` and ``R_t = m_t p_t o (S_t - p_t . S_t)`` (the softmax Jacobian
  ``diag(p) - p p^T`` applied to ``S_t``). Then ``d/dh = g (R W + G B)``, ``d/dW = g (R^T h + G^T a)``,
  ``d/db = g sum_t R_t`` and ``d/dg = sum_t G_t . S_t``.

While a Hessian's gradient graph is built (``landscape.double_backward_kernels(leaf_gradient_values=False)``),
``dW`` and ``db`` of leaf weights are broadcast zeros that stand in for them: the products never read their values,
and the build skips a ``(V, d)`` matrix product per chunk.

Both levels are :class:`torch.autograd.Function` with ``generate_vmap_rule`` (so batched double backward works);
forward-mode (``jvp``) is not defined, so the Hessian engine ``forward_over_reverse`` fails on it and ``"auto"``
keeps double backward. The values equal the unfused loss and its derivatives to rounding (tested in float64).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.overrides import handle_torch_function, has_torch_function


def _chunks(n: int, chunk: int) -> range:
    return range(0, n, chunk)


def _logits(h: Tensor, W: Tensor, b: Tensor | None) -> Tensor:
    z = h @ W.T
    return z if b is None else z + b


def _softmax_minus_onehot(z: Tensor, labels: Tensor, mask: Tensor, p: Tensor | None = None) -> Tensor:
    """``G = m (softmax(z) - e_y)`` of one chunk (ignored positions all zero); ``p``: the softmax, if at hand."""
    p = torch.softmax(z, dim=1) if p is None else p
    return (p - torch.nn.functional.one_hot(labels, z.shape[1]).to(p.dtype)) * mask[:, None]


class _Gradient(torch.autograd.Function):
    """``(dh, dW, db)`` of the summed loss, scaled by ``g``; its backward is the Hessian's action."""

    generate_vmap_rule = True

    @staticmethod
    def forward(
        g: Tensor, h: Tensor, W: Tensor, b: Tensor | None, labels: Tensor, mask: Tensor, chunk: int, stand_in: tuple
    ):
        # Out of place throughout: under vmap (batched double backward) an in-place update of an unbatched
        # accumulator by a batched term is an error.
        skip_w, skip_b = stand_in
        dh, dW = [], None if skip_w else torch.zeros_like(W)
        db = None if b is None or skip_b else torch.zeros_like(b)
        for s in _chunks(h.shape[0], chunk):
            hc = h[s : s + chunk]
            G = _softmax_minus_onehot(_logits(hc, W, b), labels[s : s + chunk], mask[s : s + chunk]) * g
            dh.append(G @ W)
            if dW is not None:
                dW = dW + G.T @ hc
            if db is not None:
                db = db + G.sum(0)
        # Stand-ins (see _Loss.backward): broadcast zeros, no kernel run and no memory held.
        dW = W.new_zeros(()).expand(W.shape) if skip_w else dW
        db = b.new_zeros(()).expand(b.shape) if b is not None and skip_b else db
        return torch.cat(dh), dW, db

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Any) -> None:
        g, h, W, b, labels, mask, chunk, _ = inputs
        ctx.save_for_backward(g, h, W, b, labels, mask)
        ctx.chunk = chunk

    @staticmethod
    def backward(ctx: Any, a: Tensor | None, B: Tensor | None, c: Tensor | None):
        g, h, W, b, labels, mask = ctx.saved_tensors
        a = torch.zeros_like(h) if a is None else a
        B = torch.zeros_like(W) if B is None else B
        d_h, d_W, d_b, d_g = [], torch.zeros_like(W), None if b is None else torch.zeros_like(b), torch.zeros_like(g)
        chunk = ctx.chunk
        for s in _chunks(h.shape[0], chunk):
            hc, ac, mc = h[s : s + chunk], a[s : s + chunk], mask[s : s + chunk]
            z = _logits(hc, W, b)
            p = torch.softmax(z, dim=1)
            G = _softmax_minus_onehot(z, labels[s : s + chunk], mc, p)
            S = ac @ W.T + hc @ B.T
            if c is not None:
                S = S + c
            R = p * (S - (p * S).sum(1, keepdim=True)) * mc[:, None]
            d_h.append(g * (R @ W + G @ B))
            d_W = d_W + g * (R.T @ hc + G.T @ ac)
            if d_b is not None:
                d_b = d_b + g * R.sum(0)
            d_g = d_g + (G * S).sum()
        return d_g, torch.cat(d_h), d_W, d_b, None, None, None, None


class _Loss(torch.autograd.Function):
    """The summed masked token loss; its backward is :class:`_Gradient` (differentiable once more)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(
        h: Tensor, W: Tensor, b: Tensor | None, labels: Tensor, mask: Tensor, chunk: int, stand_in: Callable | None
    ) -> Tensor:
        total = h.new_zeros(())
        for s in _chunks(h.shape[0], chunk):
            z = _logits(h[s : s + chunk], W, b)
            picked = z.gather(1, labels[s : s + chunk, None]).squeeze(1)
            total = total + ((torch.logsumexp(z, dim=1) - picked) * mask[s : s + chunk]).sum()
        return total

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Any) -> None:
        h, W, b, labels, mask, chunk, stand_in = inputs
        ctx.save_for_backward(h, W, b, labels, mask)
        ctx.chunk = chunk
        ctx.stand_in = stand_in

    @staticmethod
    def backward(ctx: Any, g: Tensor):
        h, W, b, labels, mask = ctx.saved_tensors
        # Asked when the gradient is taken: only a gradient graph built for Hessian products gets stand-ins.
        stand_in = (False, False) if ctx.stand_in is None else ctx.stand_in()
        dh, dW, db = _Gradient.apply(g, h, W, b, labels, mask, ctx.chunk, stand_in)
        return dh, dW, db, None, None, None, None


def chunked_token_loss(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    labels: Tensor,
    ignore_index: int,
    chunk: int,
    *,
    leaf_stand_ins: Callable[[], tuple[bool, bool]] | None = None,
) -> Tensor:
    """``sum_t [logsumexp(W h_t + b) - (W h_t + b)_{y_t}]`` over the positions whose label is not ``ignore_index``,
    computed ``chunk`` tokens at a time (see the module docstring); ``hidden`` ``(..., d)``, ``labels`` ``(...)``.

    ``leaf_stand_ins``: called when the gradient is taken, whether the gradients of ``weight`` and ``bias`` are
    broadcast zeros there (their kernels not run; the graph, whose products never read them, is whole). Set by
    ``landscape.double_backward_kernels(leaf_gradient_values=False)``, which sees this function through the
    ``__torch_function__`` protocol."""
    if has_torch_function((hidden, weight)):
        return handle_torch_function(
            chunked_token_loss,
            (hidden, weight),
            hidden,
            weight,
            bias,
            labels,
            ignore_index,
            chunk,
            leaf_stand_ins=leaf_stand_ins,
        )
    if chunk < 1:
        raise ValueError(f"chunk must be a positive number of tokens, got {chunk!r}")
    h = hidden.reshape(-1, hidden.shape[-1])
    y = labels.reshape(-1)
    mask = (y != ignore_index).to(h.dtype)
    labels = y.clamp_min(0) * (y != ignore_index)
    return _Loss.apply(h, weight, bias, labels, mask, int(chunk), leaf_stand_ins)
