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


def _softmax_minus_onehot(p: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """``G = m (p - e_y)`` of one chunk from its softmax ``p`` (ignored positions all zero): two passes over the
    ``(chunk, V)`` buffer, no one-hot matrix."""
    return (p * mask[:, None]).scatter_add(1, labels[:, None], -mask[:, None])


def _accumulate(total: Tensor | None, x: Tensor, y: Tensor) -> Tensor:
    """``total + x @ y``, added in place into the ``(V, d)`` total (the first chunk's product starts it): a fresh
    ``(V, d)`` tensor per chunk and the passes to add it cost more than the product itself. The total is the
    first chunk's own product, never an outside or unbatched tensor, so the update is valid under vmap and twice
    differentiable (no saved tensor is overwritten)."""
    return x @ y if total is None else total.addmm_(x, y)


class _Gradient(torch.autograd.Function):
    """``(dh, dW, db)`` of the summed loss, scaled by ``g``; its backward is the Hessian's action."""

    generate_vmap_rule = True

    @staticmethod
    def forward(
        g: Tensor, h: Tensor, W: Tensor, b: Tensor | None, labels: Tensor, mask: Tensor, chunk: int, stand_in: tuple
    ):
        skip_w, skip_b = stand_in
        dh, dW, db = [], None, None
        for s in _chunks(h.shape[0], chunk):
            hc = h[s : s + chunk]
            G = _softmax_minus_onehot(
                torch.softmax(_logits(hc, W, b), dim=1), labels[s : s + chunk], mask[s : s + chunk]
            )
            dh.append((G @ W) * g)  # g scales the (chunk, d) products, not the (chunk, V) buffers
            if not skip_w:
                dW = _accumulate(dW, G.T, hc * g)
            if b is not None and not skip_b:
                db = G.sum(0) * g if db is None else db + G.sum(0) * g  # (V,): out of place is cheap
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
        need_g, need_h, need_W, need_b = ctx.needs_input_grad[:4]
        if a is None and B is None and c is None:
            return None, None, None, None, None, None, None, None
        d_h, d_W, d_b, d_g = [], None, None, None
        chunk = ctx.chunk
        for s in _chunks(h.shape[0], chunk):
            hc, mc, yc = h[s : s + chunk], mask[s : s + chunk], labels[s : s + chunk]
            ac = None if a is None else a[s : s + chunk]
            p = torch.softmax(_logits(hc, W, b), dim=1)
            # S_t = W a_t + B h_t + c: the cotangent pushed to the logits.
            S = None if ac is None else ac @ W.T
            if B is not None:
                S = hc @ B.T if S is None else S.addmm(hc, B.T)
            if c is not None:
                S = c.expand(hc.shape[0], -1) if S is None else S + c
            pS = (p[:, None, :] @ S[:, :, None]).reshape(-1)  # p_t . S_t, no (chunk, V) product buffer
            R = (S - pS[:, None]) * (p * mc[:, None])
            G = _softmax_minus_onehot(p, yc, mc) if (B is not None or ac is not None) else None
            if need_h:
                x = R @ W if B is None else (R @ W).addmm(G, B)
                d_h.append(x * g)
            if need_W:
                d_W = _accumulate(d_W, R.T, hc * g)
                if ac is not None:
                    d_W = d_W.addmm_(G.T, ac * g)
            if need_b and b is not None:
                d_b = R.sum(0) * g if d_b is None else d_b + R.sum(0) * g  # (V,): out of place is cheap
            if need_g:  # G_t . S_t = m_t (p_t . S_t - S_{t, y_t})
                term = ((pS - S.gather(1, yc[:, None]).squeeze(1)) * mc).sum()
                d_g = term if d_g is None else d_g + term
        d_h = torch.cat(d_h) if need_h else None
        return None if d_g is None else d_g.reshape(g.shape), d_h, d_W, d_b, None, None, None, None


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
