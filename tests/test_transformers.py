"""Hugging Face models with dict batches: curvature products, token-weighted losses and accuracy against float64
references built independently of landscape (plain loops over sequences and tokens, ``torch.func`` on a loss written
out by hand, the math attention kernel), and the bad inputs a new user hits first."""

from __future__ import annotations

import copy
from collections import UserDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jvp, vjp
from torch.nn.attention import SDPBackend, sdpa_kernel

import landscape as L
from landscape import losses
from landscape.attention import AttentionKernelError
from landscape.surface import random as random_directions
from landscape.surface import surface

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

VOCAB = 16
RTOL = 1e-9


def gpt2(attn: str = "sdpa") -> nn.Module:
    cfg = transformers.GPT2Config(
        n_layer=1, n_embd=8, n_head=2, vocab_size=VOCAB, n_positions=16, bos_token_id=0, eos_token_id=0
    )
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def gpt2_causal_lm(attn: str = "sdpa") -> tuple[nn.Module, list[dict], L.Problem]:
    """:func:`gpt2`, :func:`token_batches` and the float64 causal-LM problem of the two."""
    model = gpt2(attn)
    data = token_batches()
    return model, data, L.Problem(model, losses.causal_lm(), data, dtype=torch.float64)


def bert_config(**extra) -> object:
    return transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
        **extra,
    )


def token_batches(seed: int = 0, labels: bool = False) -> list[dict]:
    """Two batches of different lengths, right-padded (attention_mask 0 at the end of some sequences)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n, t, pads in ((3, 7, (0, 2, 3)), (2, 5, (1, 0))):
        ids = torch.randint(1, VOCAB, (n, t), generator=g)
        mask = torch.ones_like(ids)
        for i, p in enumerate(pads):
            if p:
                mask[i, t - p :] = 0
        batch = {"input_ids": ids, "attention_mask": mask}
        if labels:  # masked-LM style: a few positions labelled, the rest ignored
            lab = torch.full_like(ids, -100)
            chosen = (torch.rand(ids.shape, generator=g) < 0.4) & (mask == 1)
            chosen[:, 0] = True
            lab[chosen] = ids[chosen]
            batch["labels"] = lab
        out.append(batch)
    return out


# --------------------------------------------------------------------------------------- independent references
def reference_causal_loss(model: nn.Module, batches: list[dict], params: dict) -> torch.Tensor:
    """Sum over every counted token of -log p(next token), divided by their number: loops over sequences/positions."""
    total, count = 0.0, 0
    for b in batches:
        logits = functional_call(
            model, params, (), {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}
        )
        logp = torch.log_softmax(logits.logits, dim=-1)
        for i in range(b["input_ids"].shape[0]):
            for t in range(b["input_ids"].shape[1] - 1):
                if b["attention_mask"][i, t + 1] == 1:
                    total = total - logp[i, t, b["input_ids"][i, t + 1]]
                    count += 1
    return total / count


def reference_masked_loss(model: nn.Module, batches: list[dict], params: dict) -> torch.Tensor:
    total, count = 0.0, 0
    for b in batches:
        inputs = {k: v for k, v in b.items() if k != "labels"}
        logp = torch.log_softmax(functional_call(model, params, (), inputs).logits, dim=-1)
        for i, t in (b["labels"] != -100).nonzero().tolist():
            total = total - logp[i, t, b["labels"][i, t]]
            count += 1
    return total / count


def float64_params(model: nn.Module, names: list[str] | None = None) -> dict:
    return {n: p.detach().double() for n, p in model.named_parameters() if names is None or n in names}


def reference_hvp(loss, model: nn.Module, params: dict, V: torch.Tensor) -> torch.Tensor:
    """``H V`` by forward-over-reverse of the hand-written loss, every other parameter/buffer fixed in float64."""
    state = [*model.named_parameters(), *model.named_buffers()]  # tied weights once, as named_parameters has them
    fixed = {n: t.detach().double() if t.is_floating_point() else t for n, t in state if n not in params}

    def f(p: dict) -> torch.Tensor:
        return loss({**fixed, **p})

    cols = []
    sizes = [t.numel() for t in params.values()]
    with sdpa_kernel([SDPBackend.MATH]):
        for j in range(V.shape[1]):
            pieces = torch.split(V[:, j], sizes)
            v = {n: piece.view(t.shape) for (n, t), piece in zip(params.items(), pieces, strict=True)}
            out = jvp(grad(f), (params,), (v,))[1]
            cols.append(torch.cat([out[n].reshape(-1) for n in params]))
    return torch.stack(cols, 1)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def probes(n: int, k: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --------------------------------------------------------------------------------------------------- GPT-2
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_gpt2_causal_lm_hessian_products_equal_reference(attn):
    model, data, problem = gpt2_causal_lm(attn)
    params = float64_params(model)
    V = probes(problem.num_params, 3)
    m64 = copy.deepcopy(model).double()
    ref = reference_hvp(lambda p: reference_causal_loss(m64, data, p), model, params, V)
    for engine in ("double_backward", "forward_over_reverse"):
        op = L.hessian(problem, engine=engine)
        assert rel(op @ V, ref) < RTOL, engine  # a block
        assert rel(op @ V[:, 0], ref[:, 0]) < RTOL, engine  # one vector
    assert "math kernel" in problem.describe()["attention"]


def test_gpt2_token_weighted_loss_is_the_token_mean():
    model, data, problem = gpt2_causal_lm()
    ref = reference_causal_loss(copy.deepcopy(model).double(), data, float64_params(model))
    assert problem.num_counted == 20  # (6 + 4 + 3) + (3 + 4) next-token positions
    assert abs(problem.loss() - float(ref)) <= 1e-12 * abs(float(ref))
    # Not the mean of the two batch means:
    means = [L.Problem(model, losses.causal_lm(), [b], dtype=torch.float64).loss() for b in data]
    assert abs(problem.loss() - sum(means) / 2) > 1e-3


def test_gpt2_explicit_labels_and_userdict_batches_equal_plain_dicts():
    model = gpt2()
    data = token_batches()
    labelled = []
    for b in data:
        lab = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
        labelled.append(UserDict({**b, "labels": lab}))
    a = L.Problem(model, losses.causal_lm(), data, dtype=torch.float64)
    b = L.Problem(model, losses.causal_lm(), labelled, dtype=torch.float64)
    assert a.num_counted == b.num_counted
    assert a.loss() == b.loss()
    v = probes(a.num_params, 1)[:, 0]
    assert rel(L.hessian(b, engine="double_backward") @ v, L.hessian(a, engine="double_backward") @ v) < 1e-13


def test_gpt2_parameter_subset_is_the_hessian_block():
    model = gpt2()
    data = token_batches()
    problem = L.Problem(model, losses.causal_lm(), data, params=["transformer.h.0.attn.*"], dtype=torch.float64)
    params = float64_params(model, problem.param_names)
    assert list(params) == problem.param_names
    V = probes(problem.num_params, 2)
    m64 = copy.deepcopy(model).double()
    ref = reference_hvp(lambda p: reference_causal_loss(m64, data, p), model, params, V)
    assert rel(L.hessian(problem) @ V, ref) < RTOL


def test_gpt2_ggn_equals_jacobian_softmax_hessian_reference():
    """``G v = J^T H_out J v`` with ``H_out = (diag p - p p^T) / C`` per counted token, written out."""
    model, data, problem = gpt2_causal_lm()
    m64 = copy.deepcopy(model).double()
    params = float64_params(model)
    v = probes(problem.num_params, 1)[:, 0]
    vd = problem.unflatten(v)
    C = problem.num_counted
    out = torch.zeros_like(v)
    with sdpa_kernel([SDPBackend.MATH]):
        for b in data:

            def logits(p, b=b):
                return functional_call(m64, p, (), {k: b[k] for k in ("input_ids", "attention_mask")}).logits[:, :-1]

            z, pull = vjp(logits, params)
            jv = jvp(logits, (params,), (vd,))[1]
            p = torch.softmax(z, -1)
            u = p * jv - p * (p * jv).sum(-1, keepdim=True)
            u = u * b["attention_mask"][:, 1:, None] / C
            out += problem.flatten(pull(u)[0])
    assert rel(L.ggn(problem) @ v, out) < RTOL


def test_gpt2_empirical_fisher_equals_per_sequence_gradients():
    """``F v = (1/N) sum_i g_i g_i^T v``, ``g_i = N s_i' / C`` with ``s_i`` sequence i's summed token loss."""
    model, data, problem = gpt2_causal_lm()
    m64 = copy.deepcopy(model).double()
    params = {n: t.requires_grad_() for n, t in float64_params(model).items()}
    N, C = problem.num_samples, problem.num_counted
    v = probes(problem.num_params, 1)[:, 0]
    out = torch.zeros_like(v)
    for b in data:
        inputs = {k: b[k] for k in ("input_ids", "attention_mask")}
        logp = torch.log_softmax(functional_call(m64, params, (), inputs).logits, -1)
        for i in range(b["input_ids"].shape[0]):
            s = sum(
                -logp[i, t, b["input_ids"][i, t + 1]]
                for t in range(b["input_ids"].shape[1] - 1)
                if b["attention_mask"][i, t + 1]
            )
            g = problem.flatten(torch.autograd.grad(s, list(params.values()), retain_graph=True)) * N / C
            out += g * (g @ v) / N
    assert rel(L.empirical_fisher(problem) @ v, out) < RTOL


def test_gpt2_analyses_leave_the_model_untouched():
    model = gpt2("sdpa")
    model.train()  # the user's mode, restored after every call
    before = {k: t.clone() for k, t in model.state_dict().items()}
    data = token_batches()
    problem = L.Problem(model, losses.causal_lm(), data, dtype=torch.float64)
    problem.loss()
    problem.loss_and_grad()
    v = probes(problem.num_params, 2)
    L.hessian(problem) @ v
    L.ggn(problem) @ v
    L.top_eigen(L.hessian(problem), k=1, tol=1e-2, max_matvecs=10)
    surf = surface(problem, random_directions(problem, num=1, seed=0), span=(-0.1, 0.1), resolution=3)
    assert surf.accuracy is not None  # token accuracy
    assert model.config._attn_implementation == "sdpa"
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_surface_token_accuracy_and_loss_at_origin():
    model, data, problem = gpt2_causal_lm()
    surf = surface(problem, random_directions(problem, num=1, seed=0), span=(-1, 1), resolution=3)
    assert surf.loss[1] == problem.loss()
    correct = total = 0
    for b in data:
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
        hit = (logits.argmax(-1) == b["input_ids"][:, 1:]) & (b["attention_mask"][:, 1:] == 1)
        correct += int(hit.sum())
        total += int(b["attention_mask"][:, 1:].sum())
    assert surf.accuracy[1] == pytest.approx(correct / total, abs=1e-12)


# --------------------------------------------------------------------------------------------------- BERT, ViT
def test_bert_masked_lm_hessian_equals_reference():
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(bert_config()).eval()
    data = token_batches(labels=True)
    problem = L.Problem(model, losses.masked_lm(), data, dtype=torch.float64)
    params = float64_params(model)
    m64 = copy.deepcopy(model).double()
    V = probes(problem.num_params, 2)
    ref = reference_hvp(lambda p: reference_masked_loss(m64, data, p), model, params, V)
    assert abs(problem.loss() - float(reference_masked_loss(m64, data, float64_params(model)))) < 1e-12
    assert rel(L.hessian(problem) @ V, ref) < RTOL
    # The decoder fused into the loss, 3 tokens at a time (BERT's head transform stays in the model).
    head = model.get_output_embeddings()
    fused = L.Problem(model, losses.masked_lm(chunk=3, head=head), data, dtype=torch.float64)
    assert fused.loss() == pytest.approx(problem.loss(), rel=1e-13)
    assert rel(L.hessian(fused, engine="double_backward") @ V, ref) < RTOL


def test_bert_sequence_classification_and_vit_with_supervised_adapter():
    torch.manual_seed(0)
    bert = transformers.BertForSequenceClassification(bert_config(num_labels=3)).eval()
    g = torch.Generator().manual_seed(3)
    text = []
    for b in token_batches():
        text.append({**b, "labels": torch.randint(0, 3, (b["input_ids"].shape[0],), generator=g)})
    vit_cfg = transformers.ViTConfig(
        image_size=8, patch_size=4, num_channels=1, hidden_size=8, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=16, num_labels=3,
    )  # fmt: skip
    torch.manual_seed(0)
    vit = transformers.ViTForImageClassification(vit_cfg).eval()
    images = [
        {"pixel_values": torch.randn(n, 1, 8, 8, generator=g), "labels": torch.randint(0, 3, (n,), generator=g)}
        for n in (3, 2)
    ]
    cases = [
        (bert, losses.supervised(inputs=("input_ids", "attention_mask")), text, ("input_ids", "attention_mask")),
        (vit, losses.supervised(), images, ("pixel_values",)),
    ]
    for model, loss, data, keys in cases:
        problem = L.Problem(model, loss, data, dtype=torch.float64)
        m64 = copy.deepcopy(model).double()
        n = sum(len(b["labels"]) for b in data)

        def ref_loss(p, m64=m64, data=data, keys=keys, n=n):
            total = 0.0
            for b in data:
                inputs = {k: b[k].double() if b[k].is_floating_point() else b[k] for k in keys}
                logits = functional_call(m64, p, (), inputs).logits
                for i, y in enumerate(b["labels"].tolist()):
                    total = total - torch.log_softmax(logits[i], -1)[y]
            return total / n

        params = float64_params(model)
        V = probes(problem.num_params, 2)
        assert rel(L.hessian(problem) @ V, reference_hvp(ref_loss, model, params, V)) < RTOL
        assert abs(problem.loss() - float(ref_loss(params))) < 1e-12 * 10


# --------------------------------------------------------------------------------------------------- bad input
def test_dict_batches_with_a_criterion_name_the_adapters():
    with pytest.raises(losses.LossError, match="causal_lm"):
        L.Problem(gpt2(), nn.CrossEntropyLoss(), token_batches()).loss()
    with pytest.raises(losses.LossError, match="causal_lm"):
        L.Problem(gpt2(), F.cross_entropy, token_batches()).loss()


def test_model_output_without_logits_or_loss_is_named():
    class Hidden(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(VOCAB, 4)

        def forward(self, input_ids, attention_mask=None):
            return {"hidden_states": self.emb(input_ids)}

    with pytest.raises(losses.LossError, match="without `.logits`.*hidden_states"):
        L.Problem(Hidden(), losses.causal_lm(), token_batches()).loss()
    with pytest.raises(losses.LossError, match="no 'loss'"):
        L.Problem(Hidden(), losses.model_output(), token_batches()).loss()


def test_a_batch_with_no_counted_token_is_an_error():
    data = token_batches(labels=True)
    data[1]["labels"][:] = -100
    with pytest.raises(L.DataError, match="batch 1 has nothing to average"):
        L.Problem(gpt2(), losses.masked_lm(), data).loss()


class _FusedAttentionLM(nn.Module):
    """Calls a fused attention kernel directly (as an external flash-attention package would): switching
    ``scaled_dot_product_attention``'s backend cannot reach it, and torch has no derivative of its backward."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 4)
        self.head = nn.Linear(4, VOCAB)

    def forward(self, input_ids, attention_mask=None):
        h = self.emb(input_ids)[:, None]
        out = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(h, h, h, is_causal=True)[0]
        return self.head(out[:, 0])


def test_a_kernel_without_double_backward_names_eager_attention():
    problem = L.Problem(_FusedAttentionLM(), losses.causal_lm(), token_batches(), dtype=torch.float64)
    assert problem.loss() > 0  # forward passes and gradients work
    problem.loss_and_grad()
    v = torch.ones(problem.num_params, dtype=torch.float64)
    for operator in (L.hessian, L.ggn):
        for engine in ("double_backward", "forward_over_reverse", "auto"):
            if operator is L.ggn and engine == "double_backward":
                continue
            with pytest.raises(AttentionKernelError, match='attn_implementation="eager"'):
                operator(problem, engine=engine) @ v


def test_gpt2_per_example_hessians_average_to_the_hessian_over_uneven_lengths():
    """The examples of batches of different lengths are joined by right padding (attention_mask 0): the
    per-example Hessians (one sequence at a time: the model's mask code does not run under vmap) average to H, and
    the padded pool's token mean is the data's."""
    from landscape.example_pool import Examples
    from landscape.stability import _PerExample

    model = gpt2()
    problem = L.Problem(model, losses.causal_lm(), token_batches(), dtype=torch.float64)
    examples = Examples(problem)
    pooled = examples.problem_of(torch.arange(problem.num_samples))
    assert pooled.num_counted == problem.num_counted
    assert abs(pooled.loss() - problem.loss()) < 1e-12
    per = _PerExample(problem)
    V = probes(problem.num_params, 2)
    HV = L.hessian(problem, engine="double_backward") @ V
    out = per.apply(V, slice(0, per.n))  # (n, m, P)
    assert not per.vmap_examples
    assert rel(out.mean(0).T, HV) < RTOL
    assert rel(per.apply(V[:, 0], slice(0, per.n)).mean(0), HV[:, 0]) < RTOL


def test_gpt2_sgd_stability_and_batch_scaling_run():
    problem = L.Problem(gpt2(), losses.causal_lm(), token_batches(), dtype=torch.float64)
    report = L.stability(problem, optimizer="sgd", lr=0.1, batch_size=2)
    assert report.criteria and all(c.value == c.value for c in report.criteria if c.kind == "exact")
    scaling = L.lr_batch_scaling(problem, batch_sizes=[2, 3], num_batches=2)
    assert list(scaling.batch_sizes) == [2, 3, problem.num_samples]  # the full batch is added


def test_bf16_weights_analysed_in_float64_record_both_dtypes(tmp_path):
    gpt2().to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    model = L.load_hf(tmp_path / "bf16", dtype=torch.float64)
    problem = L.Problem(model, losses.causal_lm(), token_batches())
    settings = problem.describe()
    assert settings["dtype"] == "float64"
    assert settings["loaded"]["saved_dtype"] == "bfloat16" and settings["loaded"]["dtype"] == "float64"
    assert settings["accuracy"].startswith("token accuracy")
    assert problem.num_params == sum(p.numel() for p in model.parameters())  # lm_head tied to wte: counted once
    assert "lm_head.weight" not in problem.param_names


def test_token_batches_are_cached_by_content(tmp_path):
    """A spectrum of dict batches is stored and read back; other token batches (one id changed) miss the cache."""
    cache = tmp_path / "c.h5"
    problem = L.Problem(gpt2(), losses.causal_lm(), token_batches(), dtype=torch.float64)
    first = L.spectrum(problem, k=1, num_probes=2, num_steps=5, seed=0, cache=cache)
    again = L.spectrum(problem, k=1, num_probes=2, num_steps=5, seed=0, cache=cache)
    assert again.wall_time == first.wall_time and np.array_equal(again.eigenvalues, first.eigenvalues)
    other = token_batches()
    other[1]["input_ids"][0, 0] = other[1]["input_ids"][0, 0] % (VOCAB - 1) + 1  # another id in the vocabulary
    changed = L.spectrum(L.Problem(gpt2(), losses.causal_lm(), other, dtype=torch.float64), k=1, num_probes=2,
                         num_steps=5, seed=0, cache=cache)  # fmt: skip
    assert changed.wall_time != first.wall_time


def test_a_custom_loss_callable_weighted_by_its_own_counts():
    """Any ``(model, batch) -> (mean, weight)`` callable is a loss adapter: its weights (known only by evaluating it,
    once per batch) make the same token mean, gradient and Hessian as ``causal_lm``."""
    calls = []

    def next_token(model, batch):
        calls.append(1)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = batch["input_ids"][:, 1:].masked_fill(batch["attention_mask"][:, 1:] == 0, -100)
        counted = int((labels != -100).sum())
        total = F.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1), ignore_index=-100, reduction="sum")
        return total / counted, counted

    model, data = gpt2(), token_batches()
    custom = L.Problem(model, next_token, data, dtype=torch.float64)
    reference = L.Problem(model, losses.causal_lm(), data, dtype=torch.float64)
    assert custom.num_counted == reference.num_counted == 20
    assert abs(custom.loss() - reference.loss()) < 1e-13
    evaluations = len(calls)
    custom.loss()
    assert len(calls) - evaluations == len(data)  # the counts are not re-evaluated on every pass
    v = probes(custom.num_params, 1)[:, 0]
    assert (
        rel(L.hessian(custom, engine="double_backward") @ v, L.hessian(reference, engine="double_backward") @ v) < 1e-12
    )
    with pytest.raises(losses.LossError, match="GGN"):
        L.ggn(custom) @ v


@pytest.mark.parametrize("block", ["loop", "batched"])
def test_gpt2_chunked_head_equals_the_plain_loss_and_its_hessian(block):
    """The head fused into the loss, 3 tokens at a time: the same loss, gradient and Hessian products (double
    backward, one vector and a block), and no (tokens, vocab) logits on the way; the model as it was."""
    model, data, problem = gpt2_causal_lm()
    chunked = L.Problem(model, losses.causal_lm(chunk=3, head=model.lm_head), data, dtype=torch.float64)
    assert chunked.loss() == pytest.approx(problem.loss(), rel=1e-13)
    g0, g1 = problem.loss_and_grad()[1], chunked.loss_and_grad()[1]
    assert rel(g1, g0) < 1e-12
    V = probes(problem.num_params, 3)
    ref = L.hessian(problem, engine="double_backward", block=block) @ V
    op = L.hessian(chunked, engine="double_backward", block=block)
    assert rel(op @ V, ref) < 1e-12 and rel(op @ V[:, 0], ref[:, 0]) < 1e-12
    shapes = []
    handle = model.lm_head.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
    try:
        chunked.loss()
    finally:
        handle.remove()
    assert shapes and all(s[-2] == 0 for s in shapes)  # the head saw empty slices only
    assert not model.lm_head._forward_pre_hooks  # the loss's own hook is gone
    # "auto" finds that forward-over-reverse cannot go through the fused loss and keeps double backward.
    auto = L.hessian(chunked)
    assert rel(auto @ V[:, 0], ref[:, 0]) < 1e-12 and set(auto.chosen.values()) <= {"double_backward"}


def test_gpt2_chunked_head_needs_the_models_head():
    with pytest.raises(ValueError, match="needs head=, the model's output layer"):
        losses.causal_lm(chunk=4)
    with pytest.raises(ValueError, match="chunk must be a positive number of tokens"):
        losses.causal_lm(chunk=0, head=nn.Linear(2, 2))
    model, data, _ = gpt2_causal_lm()
    stray = L.Problem(model, losses.causal_lm(chunk=4, head=nn.Linear(8, VOCAB)), data, dtype=torch.float64)
    with pytest.raises(losses.LossError, match="the head given was not called by the model"):
        stray.loss()
    assert (
        "chunk" not in losses.causal_lm().describe()
        and losses.causal_lm(chunk=4, head=model.lm_head).describe()["chunk"] == 4
    )
