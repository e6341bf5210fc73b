"""Convolutions and evaluation-mode batch norms differentiated twice by ``landscape.double_backward``: products
against the dense float64 Hessian and against torch's own double backward, on every option the mode takes."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian

import landscape as L
from landscape.double_backward import double_backward_kernels
from landscape.operators.hessian import HessianOperator


class Convs(nn.Module):
    """conv1d, conv2d (stride, dilation, groups, no bias, circular padding), a transposed conv2d (stride, dilation,
    groups, output padding) and conv3d, and batch norms on 3D, 4D (not affine) and 2D inputs, in one small model."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(2, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm1d(4)
        self.c2 = nn.Conv2d(4, 4, 3, stride=2, padding=2, dilation=2, groups=2, bias=False)
        self.bn2 = nn.BatchNorm2d(4, affine=False)
        self.c3 = nn.Conv2d(4, 3, 3, padding=1, padding_mode="circular")
        self.ct = nn.ConvTranspose2d(3, 3, 3, stride=2, padding=1, output_padding=1, groups=3, dilation=2)
        self.c4 = nn.Conv3d(3, 2, (1, 2, 2), stride=(1, 1, 2))
        self.bn3 = nn.BatchNorm1d(30)
        self.head = nn.Linear(30, 3)

    def forward(self, x):  # x: (n, 2, 16)
        h = torch.tanh(self.bn1(self.c1(x))).view(x.shape[0], 4, 4, 4)
        h = torch.tanh(self.bn2(self.c2(h)))
        h = torch.tanh(self.c3(h))
        h = torch.tanh(self.ct(h)).unsqueeze(2)  # (n, 3, 1, 6, 6)
        return self.head(torch.tanh(self.bn3(self.c4(h).flatten(1))))


def _case() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)  # the module initialisers draw from the global generator: the fixture restores it
    model = Convs().double().eval()
    g = torch.Generator().manual_seed(1)
    for m in (model.bn1, model.bn2, model.bn3):  # running statistics and affine weights away from 0 and 1
        m.running_mean.copy_(torch.randn(m.num_features, generator=g))
        m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        if m.affine:
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))
    return model, torch.randn(5, 2, 16, generator=g, dtype=torch.float64), torch.arange(5) % 3


@pytest.fixture
def case():
    state = torch.random.get_rng_state()
    try:
        yield _case()
    finally:
        torch.random.set_rng_state(state)


def _dense(model, X, y) -> torch.Tensor:
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])

    def loss(w):
        parts, i = {}, 0
        for n, s in zip(names, shapes, strict=True):
            parts[n] = w[i : i + s.numel()].view(s)
            i += s.numel()
        return nn.functional.cross_entropy(functional_call(model, parts, (X,)), y)

    return hessian(loss)(flat)


def test_products_equal_the_dense_hessian(case):
    model, X, y = case
    H = _dense(model, X, y)
    op = _assert_products_equal(L.Problem(model, nn.CrossEntropyLoss(), [(X, y)]), H)
    (graph,) = op._graphs.values()  # every layer's parameters are leaves the stand-ins cover
    assert all(g.stride() == (0,) * g.dim() for g in graph.grads)


def _assert_products_equal(problem: L.Problem, H: torch.Tensor) -> HessianOperator:
    """The Hessian operator's products equal ``H``'s, a column at a time and with ``is_grads_batched``."""
    op = L.hessian(problem, engine="double_backward")
    V = torch.randn(H.shape[0], 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for block in ("loop", "batched"):
        op.block = block
        op.chosen = {}
        assert torch.allclose(op @ V, H @ V, rtol=0, atol=1e-12 * H.abs().max())
        assert op.chosen[3] == {"loop": "double_backward", "batched": "double_backward_batched"}[block]
    # Added in place (add_product_: the leaves' .grad are views of the output; affine and embedding weights add
    # their terms there themselves): the same product on top of what the output held, and no .grad left behind.
    op.block = "loop"
    start = torch.randn(H.shape[0], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    out = start.clone()
    op.add_product_(V[:, 0], out)
    assert torch.allclose(out - start, H @ V[:, 0], rtol=0, atol=1e-12 * H.abs().max())
    (graph,) = op._graphs.values()
    assert all(leaf.grad is None for leaf in graph.leaves.values())
    return op


def _gradient_graph(model, X, y, mode: bool):
    params = list(model.parameters())
    with (
        torch.enable_grad(),
        double_backward_kernels() if mode else contextlib.nullcontext(),
    ):
        loss = nn.functional.cross_entropy(model(X), y)
        grads = torch.autograd.grad(loss, params, create_graph=True)
    return params, grads


def test_same_products_as_torch_and_the_mode_is_used(case):
    model, X, y = case
    params, ours = _gradient_graph(model, X, y, mode=True)
    _, torchs = _gradient_graph(model, X, y, mode=False)
    # Every convolution's and batch norm's gradient comes from the mode's functions (torch's: its own nodes).
    ours_nodes = {type(g.grad_fn).__name__ for g in ours[:-2]}
    assert ours_nodes == {"_ConvolutionGradientBackward", "_ChannelScaleGradientBackward"}
    assert {type(g.grad_fn).__name__ for g in torchs[:-2]} == {
        "ConvolutionBackwardBackward0",
        "NativeBatchNormBackwardBackward0",
    }
    for a, b in zip(ours, torchs, strict=True):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)
    v = [torch.randn(p.shape, generator=torch.Generator().manual_seed(3), dtype=p.dtype) for p in params]
    hv = torch.autograd.grad(ours, params, v, retain_graph=True)
    ref = torch.autograd.grad(torchs, params, v, retain_graph=True)
    for a, b in zip(hv, ref, strict=True):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-13)


def test_torch_path_kept_where_the_mode_does_not_apply(case):
    model, X, _ = case
    same = nn.Conv1d(2, 2, 3, padding="same").double()
    h_torch = model.c1(X)
    y_torch = model.bn1(h_torch)
    with double_backward_kernels():
        assert type(same(X).grad_fn).__name__ == "ConvolutionBackward0"  # string padding
        with torch.no_grad():
            assert same(X).grad_fn is None
        h = model.c1(X)
        y = model.bn1(h)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # casts that autograd must see
            assert type(model.c1(X).grad_fn).__name__ == "ConvolutionBackward0"
            assert type(model.bn1(h).grad_fn).__name__ == "NativeBatchNormBackward0"
        model.bn1.train()  # batch statistics: torch's own
        try:
            assert type(model.bn1(h).grad_fn).__name__ == "NativeBatchNormBackward0"
        finally:
            model.bn1.eval()
    assert type(h.grad_fn).__name__ == "_ConvolutionBackward"
    assert type(y.grad_fn).__name__ == "_BatchNormEvalBackward"
    assert torch.equal(h, h_torch)  # the forward is torch's kernel
    assert torch.equal(y, y_torch)


def test_a_third_derivative_raises(case):
    model, X, y = case
    params, grads = _gradient_graph(model, X, y, mode=True)
    with pytest.raises(RuntimeError, match="third derivative.*without create_graph"):
        torch.autograd.grad(grads[0].sum(), params[0], create_graph=True)


def _products_under_the_mode(loss_fn, params: list[torch.Tensor], V: torch.Tensor) -> tuple[list, torch.Tensor]:
    """The gradients built as the Hessian builds them (``double_backward_kernels(leaf_gradient_values=False)``, the
    loss's own forward inside it, the gradient inside its ``stand_ins()``) and ``H V`` from them."""
    kernels = double_backward_kernels(leaf_gradient_values=False)
    with torch.enable_grad(), kernels:
        loss = loss_fn(params)
        with kernels.stand_ins():
            grads = torch.autograd.grad(loss, params, create_graph=True)
    columns = []
    for v in V.T:
        parts = torch.split(v, [p.numel() for p in params])
        hv = torch.autograd.grad(grads, params, [t.view_as(p) for t, p in zip(parts, params, strict=True)], True)
        columns.append(torch.cat([t.flatten() for t in hv]))
    return list(grads), torch.stack(columns, 1)


def _dense_of(loss_fn, params: list[torch.Tensor]) -> torch.Tensor:
    sizes = [p.numel() for p in params]

    def flat_loss(w):
        return loss_fn([t.view_as(p) for t, p in zip(torch.split(w, sizes), params, strict=True)])

    return hessian(flat_loss)(torch.cat([p.detach().flatten() for p in params]))


def test_leaf_gradients_stand_in_while_the_graph_is_built(case):
    """Without values, the parameter gradients of convolutions, batch norms and linear layers are broadcast zeros
    (no kernel, no memory) and the products through them are still the dense Hessian's."""
    model, X, y = case
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in model.parameters()]

    def loss_fn(ps):
        return nn.functional.cross_entropy(functional_call(model, dict(zip(names, ps, strict=True)), (X,)), y)

    H = _dense_of(loss_fn, params)
    V = torch.randn(H.shape[0], 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    grads, HV = _products_under_the_mode(loss_fn, params, V)
    assert torch.allclose(HV, H @ V, rtol=0, atol=1e-12 * H.abs().max())
    for n, g in zip(names, grads, strict=True):  # convolutions, batch norms and the linear head
        assert g.stride() == (0,) * g.dim() and not g.any(), n


def test_non_leaf_and_shared_weights_get_their_gradients():
    """A weight that is a function of the parameters (weight normalisation) needs its gradient's value in the
    second backward (``H = J^T H_W J + sum_i g_W,i d^2 W_i``): it is computed. A leaf used twice and in a penalty
    gets stand-ins whose sum is still differentiated correctly."""
    g = torch.Generator().manual_seed(5)
    X = torch.randn(3, 2, 6, 6, generator=g, dtype=torch.float64)
    direction = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64)
    scale = torch.rand(3, 1, 1, 1, generator=g, dtype=torch.float64) + 0.5
    shared = torch.randn(2, 2, 3, 3, generator=g, dtype=torch.float64)
    params = [t.clone().requires_grad_() for t in (direction, scale, shared)]

    def loss_fn(ps):
        d, s, w = ps
        h = torch.tanh(nn.functional.conv2d(X, w, padding=1))
        h = torch.tanh(nn.functional.conv2d(h, w, padding=1))  # the leaf w twice
        weight = s * d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1)  # not a leaf
        out = nn.functional.conv2d(h, weight)
        return (out**2).mean() + 0.1 * (w**2).sum()

    H = _dense_of(loss_fn, params)
    V = torch.randn(H.shape[0], 2, generator=g, dtype=torch.float64)
    grads, HV = _products_under_the_mode(loss_fn, params, V)
    assert torch.allclose(HV, H @ V, rtol=0, atol=1e-12 * H.abs().max())
    assert grads[0].stride() != (0,) * 4 and grads[0].abs().sum() > 0  # through the non-leaf weight: a value


def _hessian_by_torchs_double_backward(model, X, y) -> torch.Tensor:
    params = list(model.parameters())
    with torch.enable_grad():
        grads = torch.autograd.grad(nn.functional.cross_entropy(model(X), y), params, create_graph=True)
    flat = torch.cat([g.flatten() for g in grads])
    rows = [torch.autograd.grad(flat[i], params, retain_graph=True) for i in range(flat.numel())]
    return torch.stack([torch.cat([r.flatten() for r in row]) for row in rows])


class TinyLM(nn.Module):
    """An embedding tied to the output layer, a ``torch.addmm`` layer (as transformers' ``Conv1D``), a linear layer
    on 3D input, a low-rank (non-leaf) weight and a layer norm."""

    def __init__(self, vocab: int = 7, d: int = 4):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.proj_w = nn.Parameter(torch.randn(d, 2 * d))
        self.proj_b = nn.Parameter(torch.randn(2 * d))
        self.mix = nn.Linear(2 * d, d)
        self.down, self.up = nn.Parameter(torch.randn(d, 2)), nn.Parameter(torch.randn(2, d))
        self.norm = nn.LayerNorm(d)

    def forward(self, ids):
        h = self.wte(ids)  # (n, t, d)
        z = torch.tanh(torch.addmm(self.proj_b, h.view(-1, h.shape[-1]), self.proj_w)).view(*h.shape[:2], -1)
        h = h + self.mix(z)
        h = h + nn.functional.linear(torch.tanh(h), self.down @ self.up)  # not a leaf: torch's path
        return nn.functional.linear(self.norm(h), self.wte.weight)  # tied


def test_linear_addmm_and_embedding_stand_ins_keep_the_products_exact():
    torch.manual_seed(0)
    model = TinyLM().double().eval()
    ids = torch.randint(0, 7, (3, 5), generator=torch.Generator().manual_seed(1))

    class Flat(nn.Module):
        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, x):
            return self.lm(x).transpose(1, 2)  # (n, vocab, tokens), as cross_entropy takes it

    flat, targets = Flat(model), ids.roll(-1, 1)
    # torch's own double backward, column by column, as the reference: torch.func's Hessian (jacfwd or jacrev of
    # jacrev) of an embedding followed by an affine layer norm is off by O(1) in torch 2.13 (finite differences of
    # the gradient agree with autograd's double backward to 1e-7, not with torch.func).
    H = _hessian_by_torchs_double_backward(flat, ids, targets)
    _assert_products_equal(L.Problem(flat, nn.CrossEntropyLoss(), [(ids, targets)]), H)
    names = [n for n, _ in flat.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in flat.parameters()]
    kernels = double_backward_kernels(leaf_gradient_values=False)
    with torch.enable_grad(), kernels:
        out = functional_call(flat, dict(zip(names, params, strict=True)), (ids,))
        with kernels.stand_ins():
            grads = torch.autograd.grad(nn.functional.cross_entropy(out, targets), params, create_graph=True)
    kinds = {n: type(g.grad_fn).__name__ for n, g in zip(names, grads, strict=True)}
    assert kinds["lm.proj_w"] == kinds["lm.mix.weight"] == "_AffineGradientBackward"
    assert kinds["lm.wte.weight"] == "AddBackward0"  # two stand-ins (embedding, output layer) added by autograd
    assert not grads[names.index("lm.wte.weight")].any()
    assert grads[names.index("lm.down")].abs().sum() > 0  # the low-rank factors' gradients are computed
    with torch.enable_grad(), double_backward_kernels():  # with values: torch's own linear layers
        out = functional_call(flat, dict(zip(names, params, strict=True)), (ids,))
    assert type(out.grad_fn.next_functions[0][0]).__name__ != "_AffineBackward"


def test_products_added_in_place_form_no_weight_sized_gradient_of_the_embedding():
    """Every double-backward product (``add_product_``, ``op @ v``, a block's columns, a block's restricted products)
    adds the tied embedding's rows into its slice of the output (``index_add_``) and the affine weights' terms with
    ``addmm_``: no ``(vocab, width)`` dense embedding gradient (GPT-2 small: a 154 MB zero fill every product, which
    ``torch.autograd.grad`` forms); the products of forward-over-reverse, which knows nothing of this."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls: dict[str, int] = {}

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.calls[func.__name__] = self.calls.get(func.__name__, 0) + 1
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    model = TinyLM().double().eval()
    ids = torch.randint(0, 7, (3, 5), generator=torch.Generator().manual_seed(1))

    class ByName(nn.Module):  # called as a Hugging Face model is: model(input_ids=...)
        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, input_ids):
            return self.lm(input_ids)

    p = L.Problem(ByName(model), L.losses.causal_lm(), [{"input_ids": ids}])
    op = L.hessian(p, engine="double_backward", block="loop")
    v = torch.randn(p.num_params, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    V = torch.stack([v, 2 * v], dim=1)
    expected = L.hessian(p, engine="forward_over_reverse") @ V
    embedding = ["lm.wte.weight"]
    at = p.param_names.index(embedding[0])
    rows = slice(sum(p.param_numels[:at]), sum(p.param_numels[: at + 1]))
    with Count() as block:
        out_block = op @ V
    out = torch.zeros_like(v)
    with Count() as added:
        op.add_product_(v, out)
    with Count() as single:
        again = op @ v
    with Count() as restricted:
        (out_restricted,) = op.block_products([(embedding, V[rows])])
    for calls, columns in ((block.calls, 2), (added.calls, 1), (single.calls, 1), (restricted.calls, 2)):
        assert calls.get("embedding_dense_backward.default", 0) == 0 and calls["index_add_.default"] == columns
    for calls in (block.calls, added.calls, single.calls):
        assert calls["addmm_.default"] >= 3  # proj_w (both passes), mix.weight, the tied output layer
    tol = {"rtol": 1e-12, "atol": 1e-12 * float(expected.abs().max())}
    torch.testing.assert_close(out_block, expected, **tol)
    torch.testing.assert_close(out, expected[:, 0], **tol)
    torch.testing.assert_close(again, out, rtol=0, atol=0)
    # H_bb V_b of the embedding's block: the entries of a dense Hessian's block, column by column.
    dense = torch.stack([L.hessian(p, engine="forward_over_reverse") @ e for e in torch.eye(p.num_params)[rows]], 1)
    torch.testing.assert_close(out_restricted, dense[rows] @ V[rows], **tol)


def test_linear_and_embedding_calls_the_stand_ins_do_not_cover_keep_torchs_path():
    w = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    x = torch.randn(5, 4, dtype=torch.float64)
    ids = torch.tensor([0, 2, 1])
    with double_backward_kernels(leaf_gradient_values=False):
        assert type(nn.functional.linear(x, w, b).grad_fn).__name__ == "_AffineBackward"
        assert type(torch.addmm(b, x, w.T).grad_fn).__name__ == "AddmmBackward0"  # not a leaf: w.T
        assert type(torch.addmm(b, x, w.T.detach().requires_grad_(), beta=0.5).grad_fn).__name__ == "AddmmBackward0"
        assert type(nn.functional.linear(x, w, b[:1]).grad_fn).__name__ == "AddmmBackward0"  # broadcast bias
        assert type(nn.functional.embedding(ids, w).grad_fn).__name__ == "_EmbeddingBackward"
        assert type(nn.functional.embedding(ids, w, padding_idx=0).grad_fn).__name__ == "EmbeddingBackward0"
    with double_backward_kernels():  # with values: never recorded
        assert type(nn.functional.linear(x, w, b).grad_fn).__name__ == "AddmmBackward0"
        assert type(nn.functional.embedding(ids, w).grad_fn).__name__ == "EmbeddingBackward0"


def test_the_chunked_output_layer_stands_in_for_its_weight_gradient():
    """``landscape.lm_head.chunked_token_loss`` seen by the mode through ``__torch_function__``: its weight's and
    bias's gradients stand in while the graph is built, and the products equal torch's double backward of the
    plain cross-entropy."""
    from landscape.lm_head import chunked_token_loss

    g = torch.Generator().manual_seed(6)
    X = torch.randn(6, 3, generator=g, dtype=torch.float64)
    params = [torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_() for s in ((3, 4), (7, 4), (7,))]
    labels = torch.tensor([0, 6, -100, 2, 2, 5])

    def plain(ps):
        P, W, b = ps
        return nn.functional.cross_entropy(torch.tanh(X @ P) @ W.T + b, labels, reduction="sum")

    def chunked(ps):
        P, W, b = ps
        return chunked_token_loss(torch.tanh(X @ P), W, b, labels, -100, 4)

    V = torch.randn(sum(p.numel() for p in params), 2, generator=g, dtype=torch.float64)
    grads, HV = _products_under_the_mode(chunked, params, V)
    assert grads[1].stride() == (0, 0) and grads[2].stride() == (0,) and not grads[1].any()
    assert grads[0].abs().sum() > 0
    kernels = double_backward_kernels(leaf_gradient_values=False)
    with torch.enable_grad(), kernels, kernels.stand_ins():  # no graph built: values
        values = torch.autograd.grad(chunked(params), params)
        values_plain = torch.autograd.grad(plain(params), params)
    for a, b in zip(values, values_plain, strict=True):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)
    with torch.enable_grad():
        ref_grads = torch.autograd.grad(plain(params), params, create_graph=True)
    ref = []
    for v in V.T:
        parts = [t.view_as(p) for t, p in zip(torch.split(v, [p.numel() for p in params]), params, strict=True)]
        ref.append(torch.cat([t.flatten() for t in torch.autograd.grad(ref_grads, params, parts, True)]))
    assert torch.allclose(HV, torch.stack(ref, 1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("trained", ["body", "head", "no_bias", "all"])
def test_the_chunked_output_layer_is_the_dense_hessian_whichever_part_is_trained(trained):
    """The chunked head's products with only some of ``(h, W, b)`` differentiated (a frozen head, a frozen body, no
    bias: cotangents and input gradients missing) equal the dense float64 Hessian of the plain cross-entropy, one
    vector at a time and batched (``is_grads_batched``, where the head's backward runs under vmap)."""
    from landscape.lm_head import chunked_token_loss

    g = torch.Generator().manual_seed(8)
    X = torch.randn(7, 3, generator=g, dtype=torch.float64)
    shapes = {"P": (3, 4), "W": (9, 4), "b": (9,)}
    values = {n: torch.randn(*s, generator=g, dtype=torch.float64) for n, s in shapes.items()}
    labels = torch.tensor([0, 8, -100, 2, 2, 5, 8])
    names = {"body": ["P"], "head": ["W", "b"], "no_bias": ["P", "W"], "all": ["P", "W", "b"]}[trained]
    bias = trained != "no_bias"

    def parts(ps):
        t = {**values, **dict(zip(names, ps, strict=True))}
        return torch.tanh(X @ t["P"]), t["W"], t["b"] if bias else None

    def plain(ps):
        h, W, b = parts(ps)
        return nn.functional.cross_entropy(h @ W.T + (0 if b is None else b), labels, reduction="sum")

    def chunked(ps):
        return chunked_token_loss(*parts(ps), labels, -100, 3)

    params = [values[n].clone().requires_grad_() for n in names]
    H = _dense_of(plain, params)
    V = torch.randn(H.shape[0], 3, generator=g, dtype=torch.float64)
    _, HV = _products_under_the_mode(chunked, params, V)
    assert torch.allclose(HV, H @ V, rtol=1e-12, atol=1e-12)
    kernels = double_backward_kernels(leaf_gradient_values=False)
    with torch.enable_grad(), kernels:
        loss = chunked(params)
        with kernels.stand_ins():
            grads = torch.autograd.grad(loss, params, create_graph=True)
    pieces = torch.split(V.T, [p.numel() for p in params], 1)
    split = [t.reshape(3, *p.shape) for t, p in zip(pieces, params, strict=True)]
    batched = torch.autograd.grad(grads, params, split, is_grads_batched=True)
    assert torch.allclose(torch.cat([t.flatten(1) for t in batched], 1).T, H @ V, rtol=1e-12, atol=1e-12)


def test_a_loss_that_differentiates_itself_keeps_its_gradient_values_and_third_derivatives():
    """A gradient penalty ``L + ||grad L||^2 / 10`` taken inside the loss, under the mode but outside its
    ``stand_ins()``: the penalty's gradient keeps its values, and the products (third derivatives of ``L`` through
    the linear layers and the chunked head) equal torch's own on the plain cross-entropy."""
    from landscape.lm_head import chunked_token_loss

    g = torch.Generator().manual_seed(7)
    X = torch.randn(6, 3, generator=g, dtype=torch.float64)
    params = [torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_() for s in ((4, 3), (7, 4), (7,))]
    labels = torch.tensor([0, 6, -100, 2, 2, 5])

    def penalised(head):
        def loss_fn(ps):
            P, W, b = ps
            loss = head(torch.tanh(nn.functional.linear(X, P)), W, b)
            grads = torch.autograd.grad(loss, ps, create_graph=True)
            return loss + sum((t**2).sum() for t in grads) / 10

        return loss_fn

    def plain(h, W, b):
        return nn.functional.cross_entropy(h @ W.T + b, labels, reduction="sum")

    def chunked(h, W, b):
        return chunked_token_loss(h, W, b, labels, -100, 4)

    V = torch.randn(sum(p.numel() for p in params), 2, generator=g, dtype=torch.float64)
    _, HV = _products_under_the_mode(penalised(chunked), params, V)
    with torch.enable_grad():
        ref_grads = torch.autograd.grad(penalised(plain)(params), params, create_graph=True)
    ref = []
    for v in V.T:
        parts = [t.view_as(p) for t, p in zip(torch.split(v, [p.numel() for p in params]), params, strict=True)]
        ref.append(torch.cat([t.flatten() for t in torch.autograd.grad(ref_grads, params, parts, True)]))
    assert torch.allclose(HV, torch.stack(ref, 1), rtol=1e-11, atol=1e-12)
